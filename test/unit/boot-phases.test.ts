import { describe, expect, it } from 'vitest';
import { phaseVerdict, runPhases, type Phase, type PhaseRecord } from '../../init/boot/phases.ts';
import { EmergencyState, guardProcessExit, testCrashPoint } from '../../init/boot/emergency.ts';

function clock() {
  let t = 100;
  return () => (t += 10);
}

describe('phaseVerdict', () => {
  it('only a failed fatal phase stops the boot', () => {
    expect(phaseVerdict('fatal', true)).toBe('emergency');
    expect(phaseVerdict('fatal', false)).toBe('continue');
    expect(phaseVerdict('warn', true)).toBe('continue');
    expect(phaseVerdict('ignore', true)).toBe('continue');
  });
});

describe('runPhases', () => {
  it('runs every phase in order; warn and ignore failures go on', async () => {
    const ran: string[] = [];
    const phases: Phase[] = [
      { name: 'mounts', policy: 'fatal', run: () => void ran.push('mounts') },
      { name: 'modules', policy: 'warn', run: async () => { ran.push('modules'); throw new Error('finit_module ENOENT /x.ko'); } },
      { name: 'extra', policy: 'ignore', run: () => { ran.push('extra'); throw new Error('nope'); } },
      { name: 'late', policy: 'warn', run: (context) => { ran.push('late'); context.skip('no EFI'); } },
      { name: 'services', policy: 'fatal', run: (context) => { ran.push('services'); context.note('3 services'); } },
    ];
    const ended: string[] = [];
    const result = await runPhases(phases, { now: clock(), onEnd: (r) => ended.push(`${r.name}:${r.status}`) });
    expect(ran).toEqual(['mounts', 'modules', 'extra', 'late', 'services']);
    expect(ended).toEqual(['mounts:ok', 'modules:failed', 'extra:failed', 'late:skipped', 'services:ok']);
    expect(result.emergency).toBeNull();
    expect(result.records[1]).toMatchObject({ status: 'failed', detail: 'finit_module ENOENT /x.ko', policy: 'warn' });
    expect(result.records[3]).toMatchObject({ status: 'skipped', detail: 'no EFI' });
    expect(result.records[4]).toMatchObject({ status: 'ok', detail: '3 services' });
    const first = result.records[0]!;
    expect(first.endMs! - first.startMs!).toBe(10);
  });

  it('a fatal failure is an emergency with the reason; later phases do not run', async () => {
    const ran: string[] = [];
    const phases: Phase[] = [
      { name: 'mounts', policy: 'fatal', run: () => Promise.reject(new Error('mount proc on /proc: mount EPERM /proc')) },
      { name: 'services', policy: 'fatal', run: () => void ran.push('services') },
    ];
    const result = await runPhases(phases, { now: clock() });
    expect(ran).toEqual([]);
    expect(result.emergency).toEqual({ phase: 'mounts', reason: 'boot phase mounts failed: mount proc on /proc: mount EPERM /proc' });
    expect(result.records.map((r: PhaseRecord) => r.status)).toEqual(['failed', 'not-run']);
  });

  it('stops when the machine is already in emergency (an uncaught error), and survives a throwing observer', async () => {
    let stopped = false;
    const phases: Phase[] = [
      { name: 'a', policy: 'warn', run: () => { stopped = true; } },
      { name: 'b', policy: 'warn', run: () => {} },
    ];
    const result = await runPhases(phases, { now: clock(), stopped: () => stopped, onEnd: () => { throw new Error('bad logger'); } });
    expect(result.records.map((r) => r.status)).toEqual(['ok', 'not-run']);
  });
});

describe('the emergency state', () => {
  function make() {
    const lines: string[] = [];
    const health: string[] = [];
    let controlStarts = 0;
    const state = new EmergencyState({
      now: () => 4242,
      console: (line) => lines.push(line),
      log: () => {},
      setHealth: (reason) => health.push(reason),
      ensureControl: async () => {
        controlStarts++;
      },
    });
    return { state, lines, health, controlStarts: () => controlStarts };
  }

  it('prints the reason, sets health, brings the control API up; the first reason stays', () => {
    const e = make();
    e.state.enter('boot phase services failed: EACCES');
    e.state.enter('unexpected exception: later');
    expect(e.state.info).toEqual({ atMs: 4242, reason: 'boot phase services failed: EACCES' });
    expect(e.lines[0]).toBe('mos: emergency: boot phase services failed: EACCES');
    expect(e.lines.at(-1)).toBe('mos: emergency (again): unexpected exception: later');
    expect(e.health).toEqual(['boot phase services failed: EACCES']);
    expect(e.controlStarts()).toBe(1);
    expect(e.state.laterProblems).toEqual(['unexpected exception: later']);
  });

  it('never throws, even when its effects do', () => {
    const state = new EmergencyState({
      now: () => 0,
      console: () => {
        throw new Error('console gone');
      },
      log: () => {},
      setHealth: () => {},
      ensureControl: async () => {},
    });
    expect(() => state.enter('x')).not.toThrow();
  });

  it('guards process.exit and process.abort', () => {
    const attempts: string[] = [];
    const restore = guardProcessExit((what) => attempts.push(what));
    try {
      expect(() => process.exit(3)).toThrow('process.exit(3) called in PID 1: blocked, PID 1 never exits');
      expect(() => process.abort()).toThrow(/blocked/);
    } finally {
      restore();
    }
    expect(attempts).toEqual(['process.exit(3) called in PID 1', 'process.abort() called in PID 1']);
  });

  it('honours the test crash point only in a test-hooks build', () => {
    expect(testCrashPoint(false, 'services')).toBeNull();
    expect(testCrashPoint(true, 'services')).toBe('services');
    expect(testCrashPoint(true, null)).toBeNull();
  });
});
