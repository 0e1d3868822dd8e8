/**
 * Container services in the supervisor (crun is the main pid): the stop signal goes to crun,
 * which forwards it; SIGKILL goes to the container's init (crun killed would leave the container
 * running); crun's 128+n is the run's signal; crun killed by a signal has its container killed
 * and its state removed; notify messages from the container's processes count as the service's.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import { Supervisor } from '../../init/supervisor/supervisor.ts';
import { parseServiceConfig } from '../../init/supervisor/spec.ts';
import { FakeClock } from '../helpers/fake-clock.ts';
import { MemoryLogs, silentLogger } from '../helpers/memory-logs.ts';

let dir: string;
beforeEach(() => void (dir = mkdtempSync(path.join(os.tmpdir(), 'supervisor-container-'))));
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function setup(fields: Record<string, unknown> = {}, sessions: Record<number, number> = {}) {
  const native = new FakeNative();
  const clock = new FakeClock();
  const supervisor = new Supervisor({
    native,
    logs: new MemoryLogs(),
    logger: silentLogger,
    clock,
    notifySocketPath: path.join(dir, 'notify'),
    isExecutable: (file) => file === '/usr/bin/crun',
    sessionOf: (pid) => sessions[pid] ?? null,
  });
  const [spec] = parseServiceConfig({ services: [{ name: 'web', argv: ['/usr/bin/crun', 'run', 'mos-web'], stopTimeout: '5s', ...fields }] }, 'test');
  const container = { id: 'mos-web', stateRoot: path.join(dir, 'crun'), pidFile: path.join(dir, 'init.pid') };
  supervisor.load([{ ...spec!, container }]);
  supervisor.listenForNotifications();
  const crunPid = () => supervisor.status('web').pid!;
  /** crun has set the container up: its init's host pid is in the pid file. */
  const containerStarted = (init: number) => writeFileSync(container.pidFile, `${init}`);
  const notify = (pid: number, message: string) => {
    const [fd] = [...native.boundSockets.keys()];
    native.deliverDatagram(fd!, message, { pid, uid: 200000, gid: 200000 });
  };
  return { native, clock, supervisor, container, crunPid, containerStarted, notify };
}

describe('container services', () => {
  it('run crun without a notify socket in its environment, with a fresh pid file each run', () => {
    const { native, supervisor, container } = setup({ readiness: 'notify' });
    writeFileSync(container.pidFile, '999');
    supervisor.startAll();
    expect(native.spawned[0]!.options.file).toBe('/usr/bin/crun');
    expect(native.spawned[0]!.options.env.some((entry) => entry.startsWith('NOTIFY_SOCKET='))).toBe(false);
    expect(existsSync(container.pidFile)).toBe(false);
  });

  it('attribute notify messages from the container\'s init and its session to the service', () => {
    const { supervisor, containerStarted, notify } = setup({ readiness: 'notify' }, { 7001: 7000 });
    supervisor.startAll();
    expect(supervisor.status('web').state).toBe('starting');
    notify(7001, 'READY=1'); // before crun wrote the pid file: nobody's
    expect(supervisor.status('web').state).toBe('starting');
    containerStarted(7000);
    notify(7001, 'READY=1'); // a process in the init's session
    expect(supervisor.status('web').state).toBe('running');
    notify(7000, 'STATUS=serving');
    expect(supervisor.status('web').statusText).toBe('serving');
  });

  it('stop: the stop signal to crun\'s group, then SIGKILL to the container\'s init, not to crun', async () => {
    const { native, clock, supervisor, crunPid, containerStarted } = setup();
    supervisor.startAll();
    const crun = crunPid();
    containerStarted(7000);
    native.signals.length = 0;
    supervisor.stop('web');
    expect(native.signals).toEqual([{ pgid: crun, signal: 'SIGTERM' }]);
    clock.advance(5000);
    expect(native.signals.slice(1)).toEqual([{ pid: 7000, signal: 'SIGKILL' }]);
    native.exit(crun, { code: 137 });
    supervisor.reapChildren();
    expect(supervisor.status('web')).toMatchObject({ state: 'stopped', lastExit: { code: null, signal: 'SIGKILL' } });
  });

  it('before crun wrote the pid file, SIGKILL goes to crun\'s group as for any service', () => {
    const { native, clock, supervisor, crunPid } = setup();
    supervisor.startAll();
    const crun = crunPid();
    supervisor.stop('web');
    clock.advance(5000);
    expect(native.signals.at(-1)).toEqual({ pgid: crun, signal: 'SIGKILL' });
  });

  it('crun killed by a signal: its container\'s init is killed and crun\'s state removed', () => {
    const { native, supervisor, crunPid, containerStarted, container } = setup({ restart: 'no' });
    supervisor.startAll();
    containerStarted(7000);
    mkdirSync(path.join(container.stateRoot, container.id), { recursive: true });
    native.exit(crunPid(), { signal: 'SIGKILL' });
    supervisor.reapChildren();
    expect(native.signals).toContainEqual({ pid: 7000, signal: 'SIGKILL' });
    expect(existsSync(path.join(container.stateRoot, container.id))).toBe(false);
    expect(supervisor.status('web').lastExit).toMatchObject({ signal: 'SIGKILL' });
  });

  it('an ordinary exit code of the container passes through', () => {
    const { native, supervisor, crunPid } = setup({ restart: 'no' });
    supervisor.startAll();
    native.exit(crunPid(), { code: 3 });
    supervisor.reapChildren();
    expect(supervisor.status('web')).toMatchObject({ state: 'failed', lastExit: { code: 3, signal: null } });
  });
});
