/**
 * The supervisor shell with the fake native port and a fake clock: ordering, reaping,
 * notify attribution and shutdown, with no process ever started.
 */
import { describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import { Supervisor } from '../../init/supervisor/supervisor.ts';
import { parseServiceConfig } from '../../init/supervisor/spec.ts';
import { FakeClock } from '../helpers/fake-clock.ts';
import { MemoryLogs, silentLogger } from '../helpers/memory-logs.ts';

const silent = silentLogger;

function setup(services: unknown[], options: { sessionOf?: (pid: number) => number | null } = {}) {
  const native = new FakeNative();
  const clock = new FakeClock();
  const logs = new MemoryLogs();
  const supervisor = new Supervisor({
    native,
    logs,
    logger: silent,
    clock,
    notifySocketPath: '/run/test/notify',
    isExecutable: (file) => file.startsWith('/bin/'),
    sessionOf: options.sessionOf ?? (() => null),
  });
  supervisor.load(parseServiceConfig({ services }, 'test'));
  supervisor.listenForNotifications();
  const pidOf = (name: string) => supervisor.status(name).pid!;
  const exit = (name: string, code = 0) => {
    native.exit(pidOf(name), { code });
    supervisor.reapChildren();
  };
  const notify = (pid: number, message: string) => {
    const [fd] = [...native.boundSockets.keys()];
    // Delivering also fires the socket's readable watcher, as the kernel would.
    native.deliverDatagram(fd!, message, { pid, uid: 0, gid: 0 });
  };
  return { native, clock, logs, supervisor, pidOf, exit, notify };
}

describe('supervisor', () => {
  it('spawns with the planned fds, env and a new session', () => {
    const { native, supervisor } = setup([{ name: 'web', argv: ['sleep', '1'], readiness: 'notify', watchdog: '2s', env: { A: 'b' } }]);
    supervisor.startAll();
    const { options } = native.spawned[0]!;
    expect(options.file).toBe('/bin/sleep');
    expect(options.setsid).toBe(true);
    expect(options.fds.slice(1)).toEqual([
      { child: 1, parent: 101 },
      { child: 2, parent: 102 },
    ]);
    expect(options.env).toEqual(expect.arrayContaining(['A=b', 'NOTIFY_SOCKET=/run/test/notify', 'WATCHDOG_USEC=2000000']));
    expect(options.env.some((e) => e.startsWith('INVOCATION_ID='))).toBe(true);
    expect(options.pidEnv).toEqual(['WATCHDOG_PID']);
  });

  it('orders starts by readiness and fails dependents of a failed requirement', () => {
    const { supervisor, notify, pidOf } = setup([
      { name: 'db', argv: ['/bin/db'], readiness: 'notify', restart: 'no' },
      { name: 'web', argv: ['/bin/web'], requires: ['db'] },
      { name: 'metrics', argv: ['/bin/metrics'], after: ['web'] },
    ]);
    supervisor.startAll();
    expect(supervisor.list().map((s) => [s.name, s.state])).toEqual([
      ['db', 'starting'],
      ['web', 'waiting'],
      ['metrics', 'waiting'],
    ]);
    notify(pidOf('db'), 'READY=1');
    expect(supervisor.list().map((s) => s.state)).toEqual(['running', 'running', 'running']);

    const second = setup([
      { name: 'db', argv: ['/bin/db'], readiness: 'notify', restart: 'no' },
      { name: 'web', argv: ['/bin/web'], requires: ['db'] },
    ]);
    second.supervisor.startAll();
    second.exit('db', 1);
    expect(second.supervisor.status('web')).toMatchObject({ state: 'failed', errorCode: 'E_DEPENDENCY' });
  });

  it('attributes notify messages by pid, then by session; ignores strangers', () => {
    const { supervisor, notify, pidOf } = setup(
      [
        { name: 'a', argv: ['/bin/a'], readiness: 'notify' },
        { name: 'b', argv: ['/bin/b'], readiness: 'notify' },
      ],
      { sessionOf: (pid) => (pid === 5555 ? 1001 : null) },
    );
    supervisor.startAll();
    expect(pidOf('b')).toBe(1001);
    notify(99999, 'READY=1');
    expect(supervisor.list().map((s) => s.state)).toEqual(['starting', 'starting']);
    notify(5555, 'READY=1\nSTATUS=via helper');
    expect(supervisor.status('b')).toMatchObject({ state: 'running', statusText: 'via helper' });
    notify(pidOf('a'), 'READY=1');
    expect(supervisor.status('a').state).toBe('running');
  });

  it('follows MAINPID= to a forked daemon and ignores the old parent exit', () => {
    const { supervisor, native, notify, pidOf } = setup([{ name: 'forker', argv: ['/bin/forker'], readiness: 'notify' }]);
    supervisor.startAll();
    const parent = pidOf('forker');
    notify(parent, 'MAINPID=4242\nREADY=1');
    native.exit(parent, { code: 0 });
    supervisor.reapChildren();
    expect(supervisor.status('forker')).toMatchObject({ state: 'running', pid: 4242 });
    expect(supervisor.orphanCount).toBe(1);
  });

  it('restarts after the backoff delay on the injected clock', () => {
    const { supervisor, clock, native, exit } = setup([{ name: 'web', argv: ['/bin/web'], backoff: { initial: '1s' } }]);
    supervisor.startAll();
    exit('web', 1);
    expect(supervisor.status('web').state).toBe('backoff');
    clock.advance(999);
    expect(native.spawned).toHaveLength(1);
    clock.advance(1);
    expect(native.spawned).toHaveLength(2);
    expect(supervisor.status('web')).toMatchObject({ state: 'running', restarts: 1 });
  });

  it('records a failed spawn as 203/EXEC with a line in the service log', () => {
    const { supervisor, logs } = setup([{ name: 'ghost', argv: ['/opt/ghost'], restart: 'no' }]);
    supervisor.startAll();
    expect(supervisor.status('ghost')).toMatchObject({ state: 'failed', lastExit: { text: 'status=203/EXEC' } });
    expect(logs.appended).toEqual(['ghost: mos: cannot start ghost: executable not found: /opt/ghost']);
  });

  it('stops in reverse dependency order and SIGKILLs at each deadline', async () => {
    const { supervisor, native, clock, pidOf } = setup([
      { name: 'db', argv: ['/bin/db'], stopTimeout: '2s' },
      { name: 'web', argv: ['/bin/web'], requires: ['db'], stopTimeout: '2s' },
    ]);
    supervisor.startAll();
    const db = pidOf('db');
    const web = pidOf('web');
    const stopping = supervisor.stopAll(60_000);
    await Promise.resolve();
    expect(native.signals).toEqual([{ pgid: web, signal: 'SIGTERM' }]);
    // web ignores SIGTERM: at 2 s it is killed.
    clock.advance(2000);
    expect(native.signals.at(-1)).toEqual({ pgid: web, signal: 'SIGKILL' });
    native.exit(web, { signal: 'SIGKILL' });
    supervisor.reapChildren();
    await new Promise((resolve) => setImmediate(resolve));
    expect(native.signals.filter((s) => 'pgid' in s && s.pgid === db)).toEqual([{ pgid: db, signal: 'SIGTERM' }]);
    native.exit(db, { code: 0 });
    supervisor.reapChildren();
    const report = await stopping;
    expect(report.killed).toEqual(['web']);
    expect(report.unfinished).toEqual([]);
    expect(supervisor.list().map((s) => s.state)).toEqual(['stopped', 'stopped']);
  });

  it('bounds the whole stop by the global deadline, naming what was left', async () => {
    const { supervisor, clock } = setup([{ name: 'stuck', argv: ['/bin/stuck'], stopTimeout: '1h' }]);
    supervisor.startAll();
    const stopping = supervisor.stopAll(5000);
    clock.advance(5000);
    const report = await stopping;
    expect(report.unfinished).toEqual(['stuck']);
  });

  it('answers unknown services with E_UNKNOWN_SERVICE', async () => {
    const { supervisor } = setup([]);
    expect(() => supervisor.status('nope')).toThrow(expect.objectContaining({ code: 'E_UNKNOWN_SERVICE' }));
    await expect(supervisor.start('nope')).rejects.toMatchObject({ code: 'E_UNKNOWN_SERVICE' });
  });
});
