import { describe, expect, it } from 'vitest';
import { makeStatus } from '../helpers/specs.ts';
import type { SupervisorInfo } from '../../init/control/api.ts';
import type { LogLine } from '../../init/log/types.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import {
  describeResources,
  formatBytes,
  formatDuration,
  formatTimestamp,
  renderInfo,
  renderList,
  renderLogLine,
  renderStatus,
  renderStatusLine,
} from '../../mosctl/render.ts';

const at = (time: string) => Date.parse(`2026-11-22T${time}Z`);
const NOW = at('12:00:06');

function status(overrides: Partial<ServiceStatus>): ServiceStatus {
  return makeStatus(overrides, at('11:00:00'));
}

const web = status({
  state: 'running',
  since: at('12:00:01'),
  pid: 1234,
  startedAt: at('12:00:01') - 120,
  readyAt: at('12:00:01'),
  readiness: 'notify',
  restarts: 2,
  lastExit: { code: 1, signal: null, text: 'status=1/FAILURE', at: at('11:59:58') },
  statusText: 'Serving on :8080',
});

const failedWorker = status({
  name: 'worker',
  state: 'failed',
  since: at('11:57:00'),
  restarts: 5,
  failures: 6,
  lastExit: { code: null, signal: 'SIGKILL', text: 'signal=SIGKILL', at: at('11:56:59'), cause: 'watchdog' },
  reason: '6 starts within 10s',
  errorCode: 'E_START_LIMIT',
});

const lines: LogLine[] = [
  { seq: 1, ts: at('12:00:01') + 250, stream: 'stdout', text: 'listening' },
  { seq: 2, ts: at('12:00:05'), stream: 'stderr', text: 'warning: slow request' },
];

describe('formatDuration', () => {
  it.each([
    [0, '0s'],
    [5_999, '5s'],
    [59_000, '59s'],
    [192_000, '3m12s'],
    [65_000, '1m05s'],
    [2 * 3600_000 + 4 * 60_000 + 59_000, '2h04m'],
    [3 * 86400_000 + 7 * 3600_000, '3d07h'],
    [-5_000, '0s'],
  ])('%i ms is %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });
});

it('formatTimestamp shows UTC to the second', () => {
  expect(formatTimestamp(at('12:00:01') + 999)).toBe('2026-11-22 12:00:01 UTC');
});

describe('renderList', () => {
  it('aligns the columns and shows - for what does not apply', () => {
    const idle = status({ name: 'cron-nightly', kind: 'oneshot', state: 'done' });
    expect(renderList([web, failedWorker, idle], NOW)).toBe(
      [
        'NAME          STATE    PID   UPTIME  RESTARTS  LAST-EXIT',
        'web           running  1234  5s      2         status=1/FAILURE',
        'worker        failed   -     -       5         signal=SIGKILL (watchdog)',
        'cron-nightly  done     -     -       0         -',
      ].join('\n'),
    );
  });

  it('colors only the state, keeping the columns aligned', () => {
    const [, running, failed] = renderList([web, failedWorker], NOW, { color: true }).split('\n');
    expect(running).toBe('web     \x1b[32mrunning\x1b[0m  1234  5s      2         status=1/FAILURE');
    expect(failed).toBe('worker  \x1b[1;31mfailed \x1b[0m  -     -       5         signal=SIGKILL (watchdog)');
  });

  it('shows only the header when there are no services', () => {
    expect(renderList([], NOW)).toBe('NAME  STATE  PID  UPTIME  RESTARTS  LAST-EXIT');
    const hostIds = makeStatus({ name: 'tools', state: 'running', pid: 7, warnings: ['nsgroup "none": runs with the host\'s user ids'] });
    expect(renderList([hostIds], NOW).split('\n').at(-1)).toBe('! tools: nsgroup "none": runs with the host\'s user ids');
    expect(renderStatus(hostIds, [], NOW)).toMatch(/Warning: nsgroup "none": runs with the host's user ids/);
  });
});

describe('resources of a container', () => {
  const limited = { limits: { memoryBytes: 64 * 1024 * 1024, pids: 64 } };
  it('shows use against each limit, with OOM kills standing out', () => {
    const text = renderStatus(status({ ...limited, state: 'running', pid: 7, usage: { memoryBytes: 12_900_000, pids: 3, oomKills: 1 } }), [], NOW);
    expect(text).toMatch(/ Memory: 12 MiB of 64 MiB; 1 OOM kill\n/);
    expect(text).toMatch(/ Tasks: 3 of 64(\n|$)/);
    const colored = describeResources(status({ ...limited, usage: { memoryBytes: 1024, pids: 1, oomKills: 2 } }), { color: true });
    expect(colored[0]).toEqual(['Memory', '1 KiB of 64 MiB; \x1b[1;31m2 OOM kills\x1b[0m']);
  });

  it('the limits alone when not running, the use alone without limits, nothing for a plain process', () => {
    expect(describeResources(status(limited))).toEqual([
      ['Memory', 'limit 64 MiB'],
      ['Tasks', 'limit 64'],
    ]);
    expect(describeResources(status({ usage: { memoryBytes: 3 * 1024 * 1024 * 1024 / 2, pids: null, oomKills: 0 } }))).toEqual([['Memory', '1.5 GiB']]);
    expect(describeResources(status({}))).toEqual([]);
  });

  it('formats bytes in binary units', () => {
    expect([0, 512, 1024, 1536, 64 * 1024 * 1024, 100.4 * 1024 * 1024, 5 * 1024 ** 4].map(formatBytes)).toEqual(['0 B', '512 B', '1 KiB', '1.5 KiB', '64 MiB', '100 MiB', '5 TiB']);
  });
});

describe('renderStatus', () => {
  it('shows the facts of a running service and its last lines', () => {
    expect(renderStatus(web, lines, NOW)).toBe(
      [
        '● web - running',
        '     State: running since 2026-11-22 12:00:01 UTC (5s ago)',
        '       PID: 1234',
        ' Readiness: notify (ready after 120ms)',
        '  Restarts: 2',
        ' Last exit: status=1/FAILURE at 2026-11-22 11:59:58 UTC (8s ago)',
        '    Status: "Serving on :8080"',
        '',
        '12:00:01 stdout listening',
        '12:00:05 stderr warning: slow request',
      ].join('\n'),
    );
  });

  it('gives a failed service its reason with the error code, and no log section without lines', () => {
    expect(renderStatus(failedWorker, [], NOW)).toBe(
      [
        '● worker - failed',
        '     State: failed since 2026-11-22 11:57:00 UTC (3m06s ago)',
        ' Readiness: none',
        '  Restarts: 5 (6 consecutive failures)',
        ' Last exit: signal=SIGKILL (watchdog) at 2026-11-22 11:56:59 UTC (3m07s ago)',
        '    Reason: E_START_LIMIT: 6 starts within 10s',
      ].join('\n'),
    );
  });

  it('shows when a service in backoff starts next, and its watchdog', () => {
    const text = renderStatus(
      status({ state: 'backoff', since: at('12:00:04'), nextStartAt: at('12:00:08'), watchdogMs: 1500, reason: 'exited' }),
      [],
      NOW,
    );
    expect(text.split('\n')).toEqual([
      '● web - backoff',
      '      State: backoff since 2026-11-22 12:00:04 UTC (2s ago)',
      ' Next start: 2026-11-22 12:00:08 UTC (in 2s)',
      '  Readiness: none',
      '   Watchdog: 1.5s',
      '   Restarts: 0',
      '     Reason: exited',
    ]);
  });

  it('colors the bullet and the state on a terminal; failed in bold red', () => {
    const [headline] = renderStatus(failedWorker, [], NOW, { color: true }).split('\n');
    expect(headline).toBe('\x1b[1;31m●\x1b[0m worker - \x1b[1;31mfailed\x1b[0m');
    expect(renderStatus(web, [], NOW, { color: true })).toContain('\x1b[32m●\x1b[0m web - \x1b[32mrunning\x1b[0m');
    expect(renderStatus(web, [], NOW)).not.toContain('\x1b[');
  });
});

it('renderStatusLine sums up the result of an action', () => {
  expect(renderStatusLine(web)).toBe('● web - running (pid 1234)');
  expect(renderStatusLine(failedWorker)).toBe('● worker - failed: E_START_LIMIT: 6 starts within 10s');
  expect(renderStatusLine(status({}))).toBe('● web - stopped');
});

it('renderLogLine prefixes the UTC time and the stream', () => {
  expect(renderLogLine(lines[1]!)).toBe('12:00:05 stderr warning: slow request');
});

describe('renderInfo', () => {
  const info: SupervisorInfo = {
    mode: 'pid1',
    pid: 1,
    startedAt: at('09:55:30'),
    health: 'ok',
    reason: null,
    configPath: '/etc/mos/services.yaml',
  };

  it('shows mode, pid, uptime, health and config', () => {
    expect(renderInfo(info, NOW)).toBe(
      [
        'mode: pid1 (pid 1)',
        'uptime: 2h04m (since 2026-11-22 09:55:30 UTC)',
        'health: ok',
        'config: /etc/mos/services.yaml',
      ].join('\n'),
    );
  });

  it('explains a health problem', () => {
    const broken = renderInfo(
      { ...info, mode: 'host', health: 'config-error', reason: 'services.yaml: services[0].restart: expected always|on-failure|no', configPath: null },
      NOW,
    );
    expect(broken.split('\n')).toEqual([
      'mode: host (pid 1)',
      'uptime: 2h04m (since 2026-11-22 09:55:30 UTC)',
      'health: config-error — services.yaml: services[0].restart: expected always|on-failure|no',
    ]);
  });
});
