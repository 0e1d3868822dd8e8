import { describe, expect, it } from 'vitest';
import {
  CRUN_PATH,
  SUN_PATH_MAX,
  crunContainerId,
  crunNotifyProxyPaths,
  interpretCrunExit,
  isCrunId,
  parseCrunPidFile,
  planCrunDelete,
  planCrunExec,
  planCrunKill,
  planCrunRun,
  type CrunGlobalInput,
  type CrunPlanResult,
} from '../../services/crun.ts';
import { SERVICE_NAME_PATTERN } from '../../init/supervisor/spec.ts';

const global: CrunGlobalInput = { crunPath: CRUN_PATH, stateRoot: '/run/mos/crun', cgroupManager: 'disabled' };
const head = ['/usr/bin/crun', '--root=/run/mos/crun', '--cgroup-manager=disabled'];

function command(result: CrunPlanResult) {
  if (!result.ok) throw new Error(result.message);
  return result.command;
}

function message(result: CrunPlanResult): string {
  if (result.ok) throw new Error(`expected a failure, got ${JSON.stringify(result.command)}`);
  return result.message;
}

describe('container ids', () => {
  it('prefixes the service name', () => {
    expect(crunContainerId('web')).toBe('mos-web');
    expect(crunContainerId('db.primary_1-a')).toBe('mos-db.primary_1-a');
  });

  it('gives a valid id for the longest service name', () => {
    const name = 'a'.repeat(63);
    expect(SERVICE_NAME_PATTERN.test(name)).toBe(true);
    expect(isCrunId(crunContainerId(name))).toBe(true);
  });

  it('throws for names no service can have', () => {
    for (const name of ['', 'a/b', 'with space', 'a\0b', 'x'.repeat(200)]) expect(() => crunContainerId(name)).toThrow(RangeError);
  });

  it('refuses what crun 1.8 mishandles', () => {
    for (const id of ['', '.', '..', 'a/b', '-x', '.hidden', 'with space', 'a@b', 'a:b', 'x'.repeat(129)]) expect(isCrunId(id)).toBe(false);
    for (const id of ['a', 'mos-web', 'A.b_c-9', 'x'.repeat(128)]) expect(isCrunId(id)).toBe(true);
  });
});

describe('planCrunRun', () => {
  const base = { ...global, bundleDir: '/run/mos/bundles/web', id: 'mos-web' };

  it('runs the bundle in the foreground with an empty environment', () => {
    expect(command(planCrunRun(base))).toEqual({ argv: [...head, 'run', '--bundle=/run/mos/bundles/web', 'mos-web'], env: [] });
  });

  it('adds the pid file, --no-pivot and preserved fds', () => {
    const planned = command(planCrunRun({ ...base, pidFile: '/run/mos/crun-pids/web', noPivot: true, preserveFds: 2, cgroupManager: 'cgroupfs' }));
    expect(planned.argv).toEqual([
      '/usr/bin/crun',
      '--root=/run/mos/crun',
      '--cgroup-manager=cgroupfs',
      'run',
      '--bundle=/run/mos/bundles/web',
      '--pid-file=/run/mos/crun-pids/web',
      '--no-pivot',
      '--preserve-fds=2',
      'mos-web',
    ]);
  });

  it('leaves out --preserve-fds=0 and a false --no-pivot', () => {
    expect(command(planCrunRun({ ...base, preserveFds: 0, noPivot: false })).argv).toEqual([...head, 'run', '--bundle=/run/mos/bundles/web', 'mos-web']);
  });

  it("gives crun the notify socket for its proxy, in crun's own environment only", () => {
    const planned = command(planCrunRun({ ...base, notifySocket: '/run/mos/notify' }));
    expect(planned.env).toEqual(['NOTIFY_SOCKET=/run/mos/notify']);
    expect(planned.argv).not.toContain('NOTIFY_SOCKET=/run/mos/notify');
  });

  it("refuses an abstract notify socket (crun 1.8 gives the container a path that reads as abstract)", () => {
    expect(message(planCrunRun({ ...base, notifySocket: '@mos-notify' }))).toMatch(/absolute socket path/);
  });

  it("refuses a state root too long for crun's proxy socket", () => {
    const stateRoot = `/run/${'s'.repeat(85)}`;
    const { crunSocket } = crunNotifyProxyPaths(stateRoot, 'mos-web', '/run/mos/notify');
    expect(crunSocket).toBe(`${stateRoot}/mos-web/notify/notify`);
    expect(crunSocket.length).toBeGreaterThan(SUN_PATH_MAX);
    expect(message(planCrunRun({ ...base, stateRoot, notifySocket: '/run/mos/notify' }))).toMatch(/shorten the state root or the id/);
    // Without the proxy the same root is fine.
    expect(planCrunRun({ ...base, stateRoot }).ok).toBe(true);
  });

  it('refuses a notify socket path the container could not use', () => {
    const socket = `/run/${'n'.repeat(100)}`;
    expect(message(planCrunRun({ ...base, notifySocket: socket }))).toMatch(/container's notify socket .* longer than 107 bytes/);
  });

  it('refuses bad paths and ids', () => {
    expect(message(planCrunRun({ ...base, crunPath: 'crun' }))).toMatch(/crun path/);
    expect(message(planCrunRun({ ...base, stateRoot: '/' }))).toMatch(/state root/);
    expect(message(planCrunRun({ ...base, stateRoot: '/run/mos/crun/' }))).toMatch(/state root/);
    expect(message(planCrunRun({ ...base, bundleDir: 'bundles/web' }))).toMatch(/bundle directory/);
    expect(message(planCrunRun({ ...base, bundleDir: '/run/../x' }))).toMatch(/bundle directory/);
    expect(message(planCrunRun({ ...base, id: '-x' }))).toMatch(/invalid container id/);
    expect(message(planCrunRun({ ...base, id: 'a/b' }))).toMatch(/invalid container id/);
    expect(message(planCrunRun({ ...base, pidFile: 'pid' }))).toMatch(/pid file/);
    expect(message(planCrunRun({ ...base, preserveFds: -1 }))).toMatch(/preserve-fds/);
    expect(message(planCrunRun({ ...base, preserveFds: 1.5 }))).toMatch(/preserve-fds/);
    expect(message(planCrunRun({ ...base, cgroupManager: 'systemd' as never }))).toMatch(/cgroup manager/);
  });
});

describe('planCrunExec', () => {
  const base = { ...global, id: 'mos-web' };

  it('puts options before the id and the command after it, with no --', () => {
    const planned = command(planCrunExec({ ...base, argv: ['/bin/sh', '-c', 'echo "$A"; exit 7'] }));
    expect(planned).toEqual({ argv: [...head, 'exec', 'mos-web', '/bin/sh', '-c', 'echo "$A"; exit 7'], env: [] });
    expect(planned.argv).not.toContain('--');
  });

  it('adds the merged, sorted environment, cwd, user, tty, pid file and fds', () => {
    const planned = command(
      planCrunExec({
        ...base,
        argv: ['id'],
        env: { B: '2', A: 'x=y' },
        configEnv: ['PATH=/bin', 'B=1', 'C=a=b'],
        cwd: '/tmp',
        user: { uid: 1000, gid: 100 },
        tty: true,
        pidFile: '/run/p',
        preserveFds: 1,
      }),
    );
    expect(planned.argv).toEqual([
      ...head,
      'exec',
      '--env=A=x=y',
      '--env=B=2',
      '--env=C=a=b',
      '--env=PATH=/bin',
      '--cwd=/tmp',
      '--user=1000:100',
      '--tty',
      '--pid-file=/run/p',
      '--preserve-fds=1',
      'mos-web',
      'id',
    ]);
  });

  it("needs the config's environment to add to it (crun's --env replaces it)", () => {
    expect(message(planCrunExec({ ...base, argv: ['id'], env: { A: '1' } }))).toMatch(/configEnv/);
    expect(message(planCrunExec({ ...base, argv: ['id'], env: { A: '1' }, configEnv: ['NOEQUALS'] }))).toMatch(/config environment entry/);
    // Without additions the container's own environment is inherited as it is: no --env at all.
    expect(command(planCrunExec({ ...base, argv: ['id'], env: {}, configEnv: ['PATH=/bin'] })).argv).toEqual([...head, 'exec', 'mos-web', 'id']);
  });

  it('refuses an empty command, bad names and NUL bytes', () => {
    expect(message(planCrunExec({ ...base, argv: [] }))).toMatch(/empty/);
    expect(message(planCrunExec({ ...base, argv: [''] }))).toMatch(/empty/);
    expect(message(planCrunExec({ ...base, argv: ['a\0b'] }))).toMatch(/NUL/);
    expect(message(planCrunExec({ ...base, argv: ['id'], env: { 'A=B': '1' }, configEnv: [] }))).toMatch(/variable name/);
    expect(message(planCrunExec({ ...base, argv: ['id'], cwd: 'tmp' }))).toMatch(/cwd/);
    expect(message(planCrunExec({ ...base, argv: ['id'], user: { uid: -1, gid: 0 } }))).toMatch(/ids/);
  });
});

describe('planCrunKill and planCrunDelete', () => {
  it('sends a named signal to the container', () => {
    expect(command(planCrunKill({ ...global, id: 'mos-web', signal: 'SIGKILL' }))).toEqual({ argv: [...head, 'kill', 'mos-web', 'SIGKILL'], env: [] });
  });

  it('refuses names crun would silently accept', () => {
    for (const signal of ['BOGUS', 'TERM', '15', 'sigterm', '']) expect(message(planCrunKill({ ...global, id: 'mos-web', signal }))).toMatch(/unknown signal/);
  });

  it('deletes with and without --force', () => {
    expect(command(planCrunDelete({ ...global, id: 'mos-web', force: true })).argv).toEqual([...head, 'delete', '--force', 'mos-web']);
    expect(command(planCrunDelete({ ...global, id: 'mos-web', force: false })).argv).toEqual([...head, 'delete', 'mos-web']);
  });
});

describe('interpretCrunExit', () => {
  it('passes exit codes through', () => {
    expect(interpretCrunExit(0, null)).toEqual({ code: 0, signal: null, crunKilled: false });
    expect(interpretCrunExit(3, null)).toEqual({ code: 3, signal: null, crunKilled: false });
    expect(interpretCrunExit(128, null)).toEqual({ code: 128, signal: null, crunKilled: false });
    expect(interpretCrunExit(255, null)).toEqual({ code: 255, signal: null, crunKilled: false });
  });

  it('reads 128+n as the container killed by signal n', () => {
    expect(interpretCrunExit(137, null)).toEqual({ code: null, signal: 'SIGKILL', crunKilled: false });
    expect(interpretCrunExit(143, null)).toEqual({ code: null, signal: 'SIGTERM', crunKilled: false });
    expect(interpretCrunExit(129, null)).toEqual({ code: null, signal: 'SIGHUP', crunKilled: false });
  });

  it('keeps codes above the classic signals as codes', () => {
    expect(interpretCrunExit(128 + 40, null)).toEqual({ code: 168, signal: null, crunKilled: false });
  });

  it('flags crun itself killed by a signal', () => {
    expect(interpretCrunExit(null, 'SIGKILL')).toEqual({ code: null, signal: 'SIGKILL', crunKilled: true });
  });
});

describe('parseCrunPidFile', () => {
  it('reads the digits crun writes', () => {
    expect(parseCrunPidFile('25756')).toBe(25756);
    expect(parseCrunPidFile('25756\n')).toBe(25756);
  });

  it('refuses anything else', () => {
    for (const text of ['', '0', '-1', 'abc', '12 34', '99999999999', String(2 ** 22 + 1)]) expect(parseCrunPidFile(text)).toBeNull();
  });
});
