/**
 * `mosctl exec`, client side: the crun command line it builds from mos's exec target, how it
 * decides on a terminal, the exit status it reports, its usage errors, and `runInherited` (the
 * real spawn: exit codes, signals, forwarding, an empty environment). The control request goes
 * through the real server over a unix socket; only crun is replaced.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ControlError, type ExecTarget, type ExecTargetProvider, type SupervisorApi } from '../../init/control/api.ts';
import { startControlServer, type ControlServer } from '../../init/control/server.ts';
import { exitStatusOf, parseExecTarget, planMosctlExec, runInherited, terminalEnv, type ChildExit } from '../../mosctl/exec.ts';
import { main, type CliIo } from '../../mosctl/main.ts';
import type { CrunCommand } from '../../services/crun.ts';
import { loadNative } from '../../native/index.ts';
import type { Credentials } from '../../native/types.ts';
import { makeStatus } from '../helpers/specs.ts';

const sockets = loadNative();

const TARGET: ExecTarget = {
  service: 'web',
  containerId: 'mos-web',
  crunPath: '/usr/bin/crun',
  crunRoot: '/run/mos/crun',
  cgroupManager: 'cgroupfs',
  env: ['PATH=/usr/bin:/bin', 'HOME=/root'],
  cwd: '/srv',
  user: { uid: 70, gid: 71 },
};
const CRUN = ['/usr/bin/crun', '--root=/run/mos/crun', '--cgroup-manager=cgroupfs', 'exec'];
/** What mosctl passes unless told otherwise: crun's exec itself would run as 0:0 in /. */
const SERVICE_DEFAULTS = ['--cwd=/srv', '--user=70:71'];

describe('planMosctlExec', () => {
  const plain = { argv: ['sh', '-c', 'echo hi'], env: {}, tty: false };

  it('without variables passes no --env (crun keeps config.json\'s environment) and never a --', () => {
    expect(planMosctlExec(TARGET, plain)).toEqual({ argv: [...CRUN, 'mos-web', 'sh', '-c', 'echo hi'], env: [] });
  });

  it("with variables passes the whole environment: config.json's merged with them, sorted", () => {
    const command = planMosctlExec(TARGET, { ...plain, env: { HOME: '/tmp', DEBUG: '1' } });
    expect(command.argv).toEqual([...CRUN, '--env=DEBUG=1', '--env=HOME=/tmp', '--env=PATH=/usr/bin:/bin', 'mos-web', 'sh', '-c', 'echo hi']);
  });

  it('passes a working directory, a user and a terminal when asked', () => {
    const command = planMosctlExec(TARGET, { ...plain, cwd: '/tmp', user: { uid: 1000, gid: 100 }, tty: true });
    expect(command.argv).toEqual([...CRUN, '--cwd=/tmp', '--user=1000:100', '--tty', 'mos-web', 'sh', '-c', 'echo hi']);
  });

  it('turns what crun could not be given into a ControlError', () => {
    expect(() => planMosctlExec(TARGET, { ...plain, cwd: 'tmp' })).toThrow(
      expect.objectContaining({ code: 'E_BAD_REQUEST', message: 'cannot exec in web: exec cwd must be an absolute, normalized path: "tmp"' }),
    );
    expect(() => planMosctlExec({ ...TARGET, crunRoot: 'relative' }, plain)).toThrow(expect.objectContaining({ code: 'E_BAD_REQUEST' }));
    expect(() => planMosctlExec({ ...TARGET, containerId: '-x' }, plain)).toThrow(expect.objectContaining({ code: 'E_BAD_REQUEST' }));
  });
});

describe('terminalEnv', () => {
  it("adds the operator's TERM (else xterm) with a terminal, unless set already", () => {
    expect(terminalEnv(TARGET, { env: {}, tty: true }, 'screen-256color')).toEqual({ TERM: 'screen-256color' });
    expect(terminalEnv(TARGET, { env: {}, tty: true }, undefined)).toEqual({ TERM: 'xterm' });
    expect(terminalEnv(TARGET, { env: {}, tty: false }, 'xterm')).toEqual({});
    expect(terminalEnv(TARGET, { env: { TERM: 'vt100' }, tty: true }, 'xterm')).toEqual({});
    expect(terminalEnv({ ...TARGET, env: ['TERM=linux'] }, { env: {}, tty: true }, 'xterm')).toEqual({});
  });
});

describe('exitStatusOf', () => {
  it("is the code, or 128+n for a signal, as a shell reports it", () => {
    expect(exitStatusOf({ code: 0, signal: null })).toBe(0);
    expect(exitStatusOf({ code: 3, signal: null })).toBe(3);
    expect(exitStatusOf({ code: 255, signal: null })).toBe(255);
    expect(exitStatusOf({ code: null, signal: 'SIGKILL' })).toBe(137);
    expect(exitStatusOf({ code: null, signal: 'SIGTERM' })).toBe(143);
  });
});

describe('parseExecTarget', () => {
  it('accepts a target (and fields a newer mos may add) and refuses a malformed one', () => {
    expect(parseExecTarget({ ...TARGET, pid: 5 })).toMatchObject(TARGET);
    expect(() => parseExecTarget({ ...TARGET, env: 'PATH=/bin' })).toThrow(expect.objectContaining({ code: 'E_INTERNAL', message: expect.stringContaining('env:') }));
    expect(() => parseExecTarget({ ...TARGET, cgroupManager: 'systemd' })).toThrow(ControlError);
    expect(() => parseExecTarget({ ...TARGET, user: { uid: -1, gid: 0 } })).toThrow(ControlError);
    expect(() => parseExecTarget(null)).toThrow(ControlError);
  });
});

describe('mosctl exec against a control server', () => {
  let dir: string;
  let socketPath: string;
  let server: ControlServer | undefined;
  let ran: CrunCommand[];
  let exit: ChildExit;
  let output: { out: string; err: string };

  const api: SupervisorApi = {
    info: () => ({ mode: 'pid1', pid: 1, startedAt: 0, health: 'ok', reason: null, configPath: null }),
    list: () => [],
    status: (name) => {
      if (name !== 'web' && name !== 'tool') throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
      return makeStatus({ name, state: 'running', pid: 9 });
    },
    start: () => Promise.reject(new Error('unused')),
    stop: () => Promise.reject(new Error('unused')),
    restart: () => Promise.reject(new Error('unused')),
    logs: () => [],
    followLogs: () => () => {},
  };
  const provider: ExecTargetProvider = (name) => {
    api.status(name);
    if (name === 'tool') throw new ControlError('E_NOT_CONTAINER', 'service tool is not a container (it runs as a plain host process)');
    return TARGET;
  };

  async function serve(peer: () => Credentials = () => ({ pid: 1, uid: 0, gid: 0 }), allowedUids?: number[]): Promise<void> {
    server = await startControlServer({ sockets, path: socketPath, api, peerCredentials: peer, execTarget: provider, ...(allowedUids ? { allowedUids } : {}) });
  }

  function io(terminals: { stdin: boolean; stdout: boolean } = { stdin: false, stdout: false }): CliIo {
    return {
      out: (text) => (output.out += text),
      err: (text) => (output.err += text),
      isTTY: terminals.stdout,
      stdinIsTTY: terminals.stdin,
      runCommand: async (command) => {
        ran.push(command);
        return exit;
      },
    };
  }

  const mosctl = (args: string[], cliIo = io()) => main(['node', 'mosctl', '--socket', socketPath, ...args], cliIo);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mos-mosctl-exec-'));
    socketPath = join(dir, 'control.sock');
    ran = [];
    exit = { code: 0, signal: null };
    output = { out: '', err: '' };
  });

  afterEach(async () => {
    await server?.close();
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it("runs crun exec in the service's container, as its user in its cwd, and exits with the command's status", async () => {
    await serve();
    exit = { code: 3, signal: null };
    expect(await mosctl(['exec', 'web', '--', 'sh', '-c', 'exit 3'])).toBe(3);
    expect(ran).toEqual([{ argv: [...CRUN, ...SERVICE_DEFAULTS, 'mos-web', 'sh', '-c', 'exit 3'], env: [] }]);
    expect(output).toEqual({ out: '', err: '' });
    exit = { code: null, signal: 'SIGKILL' };
    expect(await mosctl(['exec', 'web', '--', 'sleep', '100'])).toBe(137);
    exit = { code: 0, signal: null };
    expect(await mosctl(['exec', 'web', '--', 'true'])).toBe(0);
  });

  it("leaves everything after -- to the command, mosctl's own option names included", async () => {
    await serve();
    expect(await mosctl(['exec', 'web', '--', 'ls', '-la', '--json', '--socket', 'x', '--', '-t'])).toBe(0);
    expect(ran[0]!.argv.slice(CRUN.length + SERVICE_DEFAULTS.length)).toEqual(['mos-web', 'ls', '-la', '--json', '--socket', 'x', '--', '-t']);
  });

  it('passes -e, -w and -u on', async () => {
    await serve();
    expect(await mosctl(['exec', '-e', 'A=1', '-e', 'B=x=y', '-w', '/tmp', '-u', '1000:100', 'web', '--', 'env'])).toBe(0);
    expect(ran[0]!.argv).toEqual([...CRUN, '--env=A=1', '--env=B=x=y', '--env=HOME=/root', '--env=PATH=/usr/bin:/bin', '--cwd=/tmp', '--user=1000:100', 'mos-web', 'env']);
    ran = [];
    expect(await mosctl(['exec', '-u', '7:8', 'web', '--', 'id'])).toBe(0);
    expect(ran[0]!.argv).toEqual([...CRUN, '--cwd=/srv', '--user=7:8', 'mos-web', 'id']);
  });

  it('gives the command a terminal when stdin and stdout are terminals, unless -T; -t insists', async () => {
    await serve();
    const saved = process.env.TERM;
    process.env.TERM = 'xterm-256color';
    try {
      expect(await mosctl(['exec', 'web', '--', 'sh'], io({ stdin: true, stdout: true }))).toBe(0);
      expect(ran[0]!.argv).toEqual([...CRUN, '--env=HOME=/root', '--env=PATH=/usr/bin:/bin', '--env=TERM=xterm-256color', ...SERVICE_DEFAULTS, '--tty', 'mos-web', 'sh']);
      expect(await mosctl(['exec', '-T', 'web', '--', 'sh'], io({ stdin: true, stdout: true }))).toBe(0);
      expect(ran[1]!.argv).toEqual([...CRUN, ...SERVICE_DEFAULTS, 'mos-web', 'sh']);
      // Output to a pipe or file: no terminal (crun's would turn \n into \r\n and merge stderr).
      expect(await mosctl(['exec', 'web', '--', 'sh'], io({ stdin: true, stdout: false }))).toBe(0);
      expect(ran[2]!.argv).not.toContain('--tty');
      expect(await mosctl(['exec', '-t', 'web', '--', 'sh'], io({ stdin: true, stdout: false }))).toBe(0);
      expect(ran[3]!.argv).toContain('--tty');
    } finally {
      if (saved === undefined) delete process.env.TERM;
      else process.env.TERM = saved;
    }
  });

  it('refuses -t without a terminal on stdin, and a command without --, as usage errors that run nothing', async () => {
    await serve();
    expect(await mosctl(['exec', '-t', 'web', '--', 'sh'])).toBe(64);
    expect(output.err).toContain('mosctl: --tty needs a terminal on stdin');
    output.err = '';
    expect(await mosctl(['exec', 'web', 'ls'])).toBe(64);
    expect(output.err).toContain('mosctl: put -- between the service and the command: mosctl exec web -- ls');
    output.err = '';
    expect(await mosctl(['exec', 'web', 'ls', '--', '-l'])).toBe(64);
    expect(await mosctl(['exec', 'web', '--'])).toBe(64);
    expect(await mosctl(['exec', '-e', 'NOEQUALS', 'web', '--', 'env'])).toBe(64);
    expect(await mosctl(['exec', '-u', 'root', 'web', '--', 'id'])).toBe(64);
    expect(await mosctl(['exec', '-u', '7', 'web', '--', 'id'])).toBe(64);
    expect(ran).toEqual([]);
  });

  it("reports mos's refusals with mosctl's exit codes and runs nothing", async () => {
    await serve();
    expect(await mosctl(['exec', 'nope', '--', 'true'])).toBe(5);
    expect(output.err).toBe('mosctl: unknown service "nope"\n');
    output.err = '';
    expect(await mosctl(['exec', 'tool', '--', 'true'])).toBe(1);
    expect(output.err).toBe('mosctl: service tool is not a container (it runs as a plain host process)\n');
    expect(ran).toEqual([]);
  });

  it('is refused to a non-root peer (exit 4)', async () => {
    await serve(() => ({ pid: 2, uid: 1000, gid: 1000 }), [0, 1000]);
    expect(await mosctl(['exec', 'web', '--', 'true'])).toBe(4);
    expect(output.err).toBe('mosctl: permission denied: exec needs root (peer uid 1000)\n');
    expect(ran).toEqual([]);
  });

  it('reports a crun that cannot be started', async () => {
    await serve();
    const cliIo = io();
    cliIo.runCommand = () => Promise.reject(new ControlError('E_INTERNAL', 'cannot run /usr/bin/crun: ENOENT'));
    expect(await mosctl(['exec', 'web', '--', 'true'], cliIo)).toBe(1);
    expect(output.err).toBe('mosctl: cannot run /usr/bin/crun: ENOENT\n');
  });
});

describe('runInherited', () => {
  const node = process.execPath;

  it("reports the child's exit code or signal", async () => {
    expect(await runInherited({ argv: [node, '-e', 'process.exit(3)'], env: [] })).toEqual({ code: 3, signal: null });
    expect(await runInherited({ argv: [node, '-e', "process.kill(process.pid, 'SIGKILL')"], env: [] })).toEqual({ code: null, signal: 'SIGKILL' });
  });

  it('gives the child exactly the planned environment', async () => {
    const check = "process.exit(JSON.stringify(process.env) === JSON.stringify({ONLY: 'this'}) ? 0 : 1)";
    expect(await runInherited({ argv: [node, '-e', check], env: ['ONLY=this'] })).toEqual({ code: 0, signal: null });
  });

  it('rejects with a ControlError when the program cannot be started', async () => {
    await expect(runInherited({ argv: ['/nonexistent/crun'], env: [] })).rejects.toMatchObject({ code: 'E_INTERNAL', message: 'cannot run /nonexistent/crun: ENOENT' });
  });

  it('forwards SIGTERM sent to mosctl alone, ignores SIGINT meanwhile, and removes its handlers after', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mos-run-inherited-'));
    const ready = join(dir, 'ready');
    const listenersBefore: Record<string, number> = Object.fromEntries(['SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGTERM'].map((signal) => [signal, process.listenerCount(signal)]));
    try {
      const script = `process.on('SIGTERM', () => process.exit(42)); process.on('SIGINT', () => process.exit(7)); require('fs').writeFileSync(${JSON.stringify(ready)}, ''); setInterval(() => {}, 1000);`;
      const running = runInherited({ argv: [node, '-e', script], env: [] });
      const deadline = Date.now() + 15_000;
      while (!existsSync(ready)) {
        if (Date.now() > deadline) throw new Error('the child never became ready');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // While the command runs mosctl has a handler for each: none of them may end mosctl.
      expect(['SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGTERM'].map((signal) => process.listenerCount(signal))).toEqual(
        ['SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGTERM'].map((signal) => listenersBefore[signal]! + 1),
      );
      // To this process only (not its group; a terminal's ^C would reach the child itself). The
      // child exits 7 if a SIGINT reaches it, 42 on SIGTERM: the SIGINT is handled first.
      const interrupted = new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
      process.kill(process.pid, 'SIGINT');
      await interrupted;
      process.kill(process.pid, 'SIGTERM');
      expect(await running).toEqual({ code: 42, signal: null });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    expect(Object.fromEntries(Object.keys(listenersBefore).map((signal) => [signal, process.listenerCount(signal)]))).toEqual(listenersBefore);
  });
});
