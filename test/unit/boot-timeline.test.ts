import { describe, expect, it } from 'vitest';
import { computeTimelineRows, formatBootMs, summarizeTimeline, type BootTimeline } from '../../init/boot/timeline.ts';
import { renderInfo, renderTimeline } from '../../mosctl/render.ts';

const timeline: BootTimeline = {
  clock: 'boottime',
  initExecMs: 2512.4,
  initMainMs: 2601,
  phases: [
    { name: 'mounts', policy: 'fatal', status: 'ok', startMs: 2602, endMs: 2614, detail: '9 mounted' },
    { name: 'modules', policy: 'warn', status: 'failed', startMs: 2614, endMs: 3014, detail: 'dm_verity: not in modules.dep' },
    { name: 'mounts-late', policy: 'warn', status: 'skipped', startMs: 3014, endMs: 3015, detail: '/sys/firmware/efi does not exist' },
    { name: 'services', policy: 'fatal', status: 'ok', startMs: 3015, endMs: 3040, detail: '2 services' },
    { name: 'never', policy: 'warn', status: 'not-run', startMs: null, endMs: null, detail: null },
  ],
  firstServiceExec: { atMs: 3030, service: 'web' },
  servicesReadyMs: 3200,
  emergency: null,
  shutdown: null,
};

describe('computeTimelineRows', () => {
  it('lists the points in time order with the time since the previous one', () => {
    const rows = computeTimelineRows(timeline);
    expect(rows.map((r) => r.event)).toEqual([
      'kernel start',
      '/init exec',
      'mos-init main',
      'phase mounts',
      'phase modules',
      'phase mounts-late',
      'phase services',
      'first service exec',
      'all services ready',
    ]);
    expect(rows[1]).toMatchObject({ atMs: 2512.4, deltaMs: 2512.4 });
    expect(rows[4]).toMatchObject({ durationMs: 400, policy: 'warn', status: 'failed', deltaMs: 12 });
    expect(rows[7]).toMatchObject({ atMs: 3030, detail: 'web', deltaMs: 15 });
  });

  it('adds the emergency and the shutdown', () => {
    const rows = computeTimelineRows({ ...timeline, servicesReadyMs: null, emergency: { atMs: 3100, reason: 'boom' }, shutdown: { atMs: 5000, action: 'poweroff', cause: 'SIGUSR2 (busybox)' } });
    expect(rows.slice(-2).map((r) => [r.event, r.detail])).toEqual([
      ['emergency', 'boom'],
      ['shutdown (poweroff)', 'SIGUSR2 (busybox)'],
    ]);
  });
});

describe('rendering', () => {
  it('formats boot times', () => {
    expect(formatBootMs(12.4)).toBe('12ms');
    expect(formatBootMs(2512.4)).toBe('2.512s');
  });

  it('summarises the boot for mosctl status', () => {
    expect(summarizeTimeline(timeline)).toBe('kernel 2.512s, init 518ms to first exec, services ready at 3.200s');
    const booting = { ...timeline, servicesReadyMs: null, firstServiceExec: null, phases: [{ ...timeline.phases[1]!, endMs: null }] };
    expect(summarizeTimeline(booting)).toBe('kernel 2.512s, booting (phase modules)');
    expect(summarizeTimeline({ ...timeline, servicesReadyMs: null, emergency: { atMs: 3100, reason: 'x' } })).toBe(
      'kernel 2.512s, init 518ms to first exec, emergency at 3.100s',
    );
  });

  it('renders the analyze table', () => {
    const text = renderTimeline(timeline);
    const lines = text.split('\n');
    expect(lines[0]).toMatch(/^EVENT\s+AT\s+SINCE-PREV\s+TOOK\s+POLICY\s+RESULT$/);
    expect(lines[1]).toMatch(/^kernel start\s+0ms\s+\+0ms$/);
    expect(lines.find((l) => l.startsWith('phase modules'))).toMatch(/2\.614s\s+\+12ms\s+400ms\s+warn\s+failed: dm_verity: not in modules\.dep$/);
    expect(lines.at(-1)).toBe('kernel 2.512s, init 518ms to first exec, services ready at 3.200s');
    expect(renderTimeline(null)).toBe('no boot timeline: mos is not PID 1 (host mode)');
  });

  it('shows the emergency reason and the boot line in the info header', () => {
    const text = renderInfo(
      { mode: 'pid1', pid: 1, startedAt: 0, health: 'emergency', reason: 'unexpected exception: boom', configPath: '/etc/mos/services.yaml', boot: timeline },
      60_000,
    );
    expect(text).toContain('health: emergency — unexpected exception: boom');
    expect(text).toContain('boot: kernel 2.512s, init 518ms to first exec, services ready at 3.200s');
  });
});
