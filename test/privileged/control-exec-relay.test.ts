/**
 * Exec relayed by mos, end to end with the real crun: a container service runs (crun 1.8, a
 * bundle from planBundleConfig, in a user namespace), and a stand-in for PID 1 serves the control
 * protocol as a *stream* (the virtio-serial port's kind of connection: `exec-target` answers
 * `E_NOT_LOCAL`) on unix sockets, with PID 1's runner (init/control/exec-relay.ts: the addon's
 * spawn and pipes, `crun exec`). mosctl, bundled from the current source, falls back to
 * `exec-run`; stdin, stdout, stderr and the exit status pass through mos.
 *
 * The stand-in is its own process (bundled from the current source, run by Node), because the
 * runner needs a reaper: it reaps with `native.watchChildren` as PID 1's supervisor does and hands
 * exits to the runner's `waitForExit`. In this test process that reaper would also take the exits
 * of the child_process children (crun run, mosctl). It reports every exit it reaps on stdout.
 *
 * crun runs the container as in mosctl-exec-crun.test.ts: `unshare -m` with a fresh cgroup2
 * mount and `--cgroup-manager=disabled`; `crun exec` runs from the host's mount namespace.
 * Nothing here is timed: tests wait for events (a line, an exit, a process gone).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crunContainerId } from '../../services/crun.ts';
import { bundleForNode, bundleMosctl, CRUN, hasCrunTools, makeBusyboxBundle, pidsOf, removeCrunContainer, runCrunContainer, runToEnd } from '../helpers/exec-container.ts';
import { cleanEnv, isRoot, repoRoot, waitFor } from '../helpers/host-mos.ts';

const ADDON = path.join(repoRoot, 'native', 'build', 'Release', 'mos_native.node');

/** Commands in the rootfs besides busybox itself, as busybox links (found through PATH=/bin). */
const APPLETS = ['sh', 'cat', 'echo', 'env', 'id', 'pwd', 'sleep', 'true', 'kill'];
/** The stand-in's SIGTERM → SIGKILL bound for crun (PID 1's is 5 s). */
const KILL_AFTER_MS = 1_000;

/** The stand-in for PID 1: the control protocol as streams on two sockets, with PID 1's runner. */
const STAND_IN = `
import net from 'node:net';
import { ControlError } from './init/control/api.ts';
import { createExecRunner } from './init/control/exec-relay.ts';
import { readBundleProcess, resolveExecTarget } from './init/control/exec-target.ts';
import { serveControlStream } from './init/control/server.ts';
import { loadNative } from './native/index.ts';
import { makeStatus } from './test/helpers/specs.ts';

const config = JSON.parse(process.argv[2]);
const report = (event) => process.stdout.write(JSON.stringify(event) + '\\n');
const native = loadNative();
const waiters = new Map();
// The one reaper, as in PID 1: every exit is reaped here and handed to whoever waits for it.
const watch = native.watchChildren((exits) => {
  for (const exit of exits) {
    report({ event: 'reaped', pid: exit.pid, code: exit.code, signal: exit.signal });
    const waiter = waiters.get(exit.pid);
    waiters.delete(exit.pid);
    waiter?.(exit);
  }
});
const status = (name) => {
  const service = config.services[name];
  if (!service) throw new ControlError('E_UNKNOWN_SERVICE', 'unknown service "' + name + '"');
  return makeStatus({ name, state: service.state, pid: service.pid });
};
const api = {
  info: () => ({ mode: 'pid1', pid: process.pid, startedAt: 0, health: 'ok', reason: null, configPath: null }),
  list: () => Object.keys(config.services).map(status),
  status,
  start: () => Promise.reject(new Error('unused')),
  stop: () => Promise.reject(new Error('unused')),
  restart: () => Promise.reject(new Error('unused')),
  logs: () => [],
  followLogs: () => () => {},
};
const execTarget = (name) => {
  const service = config.services[name];
  return resolveExecTarget({
    status: status(name),
    container: service?.bundleDir
      ? { id: 'mos-' + name, stateRoot: config.stateRoot, crunPath: config.crunPath, cgroupManager: 'disabled', process: () => readBundleProcess(service.bundleDir) }
      : null,
  });
};
const execRunner = createExecRunner({
  native,
  waitForExit: (pid) => new Promise((resolve) => waiters.set(pid, resolve)),
  execTarget,
  killAfterMs: config.killAfterMs,
});
const logger = { info: (message) => report({ event: 'log', message }), warn: (message) => report({ event: 'log', message }) };
let listening = 0;
for (const [socketPath, access] of [[config.rootSocket, 'root'], [config.readOnlySocket, 'read-only']]) {
  net.createServer({ allowHalfOpen: true }, (socket) => serveControlStream(socket, api, { access, execRunner, logger, accessHint: 'boot with mos.debug_control=1' }))
    .listen(socketPath, () => { if (++listening === 2) report({ event: 'ready', watching: watch !== undefined }); });
}
`;

/** A raw protocol client: sends lines, collects every message. */
class RawClient {
  readonly messages: any[] = [];
  private partial = '';

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      const lines = (this.partial + chunk.toString()).split('\n');
      this.partial = lines.pop()!;
      for (const line of lines) this.messages.push(JSON.parse(line));
    });
    socket.on('error', () => {});
  }

  static connect(socketPath: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(socketPath, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(request: Record<string, unknown>): void {
    this.socket.write(`${JSON.stringify({ v: 1, ...request })}\n`);
  }

  output(id: number, stream: string): string {
    return Buffer.concat(this.messages.filter((m) => m.id === id && m.event === 'exec-output' && m.stream === stream).map((m) => Buffer.from(m.data, 'base64'))).toString();
  }
}

describe.skipIf(!isRoot || !hasCrunTools || !existsSync(ADDON))('exec relayed by mos into a crun container', () => {
  let work: string;
  let mosctlBundle: string;
  let rootSocket: string;
  let readOnlySocket: string;
  let stateRoot: string;
  let crunRun: ChildProcess | undefined;
  let standIn: ChildProcess | undefined;
  const events: any[] = [];

  const makeBundle = (name: string, script: string) => makeBusyboxBundle({ work, name, script, applets: APPLETS });

  const mosctl = (args: string[], input?: string, socketPath = rootSocket) => runToEnd(process.execPath, [mosctlBundle, '--socket', socketPath, ...args], input);

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-exec-relay-'));
    chmodSync(work, 0o755);
    stateRoot = path.join(work, 'crun');
    rootSocket = path.join(work, 'root.sock');
    readOnlySocket = path.join(work, 'read-only.sock');

    mosctlBundle = path.join(work, 'mosctl.mjs');
    await bundleMosctl(mosctlBundle);
    const standInBundle = path.join(work, 'stand-in.mjs');
    await bundleForNode(standInBundle, { stdin: { contents: STAND_IN, resolveDir: repoRoot, loader: 'ts' } });

    // The container service `app`: running, its init printing `up` and sleeping.
    const bundleDir = makeBundle('app', 'echo up; exec /bin/busybox sleep 100000');
    const container = runCrunContainer({ stateRoot, bundleDir, id: crunContainerId('app'), pidFile: path.join(work, 'app.pid') });
    crunRun = container.child;
    await container.started;

    const config = {
      rootSocket,
      readOnlySocket,
      stateRoot,
      crunPath: CRUN,
      killAfterMs: KILL_AFTER_MS,
      services: {
        app: { state: 'running', pid: crunRun.pid, bundleDir },
        idle: { state: 'stopped', pid: null, bundleDir: makeBundle('idle', 'true') },
        tool: { state: 'running', pid: process.pid, bundleDir: null },
      },
    };
    standIn = spawn(process.execPath, [standInBundle, JSON.stringify(config)], { env: cleanEnv({ MOS_NATIVE_ADDON: ADDON }), stdio: ['ignore', 'pipe', 'inherit'] });
    let partial = '';
    standIn.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop()!;
      for (const line of lines) events.push(JSON.parse(line));
    });
    await waitFor(() => events.some((event) => event.event === 'ready'), 30_000, 'the stand-in to listen');
  });

  afterAll(async () => {
    standIn?.kill('SIGKILL');
    if (stateRoot) await removeCrunContainer({ stateRoot, id: crunContainerId('app'), child: crunRun });
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('on the wire: exec-target is E_NOT_LOCAL; exec-run answers, streams the output, then the exit; exec-input feeds stdin', async () => {
    const client = await RawClient.connect(rootSocket);
    client.send({ id: 1, cmd: 'exec-target', service: 'app' });
    client.send({ id: 2, cmd: 'exec-run', service: 'app', argv: ['sh', '-c', 'read line; echo "got [$line]"; pwd; id -u; id -g; echo "FROM_CONFIG=$FROM_CONFIG"; echo oops >&2; exit 3'], env: {} });
    client.send({ id: 3, cmd: 'exec-input', run: 2, data: Buffer.from('hello\n').toString('base64'), eof: true });
    await waitFor(() => client.messages.some((m) => m.event === 'exec-exit'), 30_000, () => `the exit: ${JSON.stringify(client.messages)}`);
    expect(client.messages[0]).toMatchObject({ id: 1, ok: false, error: { code: 'E_NOT_LOCAL' } });
    const run = client.messages.filter((m) => m.id === 2);
    expect(run[0]).toEqual({ v: 1, id: 2, ok: true, result: { service: 'app', containerId: 'mos-app' } });
    expect(run.at(-1)).toEqual({ v: 1, id: 2, event: 'exec-exit', code: 3, signal: null, status: 3 });
    expect(client.messages.find((m) => m.id === 3)).toEqual({ v: 1, id: 3, ok: true, result: null });
    expect(client.output(2, 'stdout')).toBe('got [hello]\n/srv\n70\n71\nFROM_CONFIG=yes\n');
    expect(client.output(2, 'stderr')).toBe('oops\n');
    client.socket.destroy();
  });

  it("mosctl falls back to the relay: output and stdin pass, as config.json's user, in its cwd and environment", async () => {
    const result = await mosctl(['exec', 'app', '--', 'sh', '-c', 'read line; echo "got [$line]"; pwd; id -u; id -g; echo "FROM_CONFIG=$FROM_CONFIG"; echo oops >&2'], 'hello\n');
    expect(result).toEqual({ code: 0, signal: null, stdout: 'got [hello]\n/srv\n70\n71\nFROM_CONFIG=yes\n', stderr: 'oops\n' });
  });

  it("exits with the command's status: 0, 3, 255 for a program not found, 128+n for a signal", async () => {
    expect((await mosctl(['exec', 'app', '--', 'true'])).code).toBe(0);
    expect((await mosctl(['exec', 'app', '--', 'sh', '-c', 'exit 3'])).code).toBe(3);
    const missing = await mosctl(['exec', 'app', '--', 'no-such-program']);
    expect(missing.code).toBe(255);
    expect(missing.stderr).toContain('no-such-program');
    expect((await mosctl(['exec', 'app', '--', 'sh', '-c', 'kill -KILL $$'])).code).toBe(137);
  });

  it('passes -e, -w and -u on', async () => {
    const env = await mosctl(['exec', '-e', 'EXTRA=1', '-e', 'FROM_CONFIG=overridden', 'app', '--', 'env']);
    expect(env.code).toBe(0);
    const vars = env.stdout.trim().split('\n');
    expect(vars).toContain('EXTRA=1');
    expect(vars).toContain('FROM_CONFIG=overridden');
    expect(vars).toContain('PATH=/bin');
    expect(await mosctl(['exec', '-w', '/tmp', '-u', '0:0', 'app', '--', 'sh', '-c', 'pwd; id -u; id -g'])).toMatchObject({ code: 0, stdout: '/tmp\n0\n0\n' });
  });

  it('carries a MiB each way intact (chunked, with backpressure)', async () => {
    let input = '';
    for (let i = 0; input.length < 1024 * 1024; i++) input += `line ${i} ${'x'.repeat(i % 97)}\n`;
    const result = await mosctl(['exec', 'app', '--', 'cat'], input);
    expect(result.code).toBe(0);
    expect(result.stdout.length).toBe(input.length);
    expect(result.stdout === input).toBe(true);
  });

  it('returns when the command ends even though its stdin never does', async () => {
    const child = spawn(process.execPath, [mosctlBundle, '--socket', rootSocket, 'exec', 'app', '--', 'sh', '-c', 'echo done'], { env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (exitCode) => resolve(exitCode)));
    child.stdin!.destroy();
    expect(code).toBe(0);
    expect(stdout).toBe('done\n');
  });

  it('refuses what it cannot do: --tty, a read-only port, a host process, a stopped service, an unknown one', async () => {
    const tty = await mosctl(['exec', '-t', 'app', '--', 'true']);
    expect(tty.code).toBe(64);
    const readOnly = await mosctl(['exec', 'app', '--', 'true'], undefined, readOnlySocket);
    expect(readOnly.code).toBe(4);
    expect(readOnly.stderr).toContain('mos.debug_control=1');
    expect(await mosctl(['exec', 'tool', '--', 'true'])).toMatchObject({ code: 1, stderr: expect.stringContaining('service tool is not a container') });
    expect(await mosctl(['exec', 'idle', '--', 'true'])).toMatchObject({ code: 1, stderr: 'mosctl: service idle is not running (stopped): there is no container to run a command in\n' });
    expect(await mosctl(['exec', 'nope', '--', 'true'])).toMatchObject({ code: 5, stderr: 'mosctl: unknown service "nope"\n' });
  });

  it('a client that disconnects ends its command: SIGTERM to crun, which passes it on', async () => {
    const client = await RawClient.connect(rootSocket);
    client.send({ id: 5, cmd: 'exec-run', service: 'app', argv: ['sleep', '31337'], env: {} });
    await waitFor(() => pidsOf(['sleep', '31337']).length === 1, 30_000, 'the command to run');
    expect(client.messages[0]).toMatchObject({ id: 5, ok: true });
    const reapedBefore = events.filter((event) => event.event === 'reaped').length;
    client.socket.destroy();
    await waitFor(() => pidsOf(['sleep', '31337']).length === 0, 30_000, 'the command to end');
    await waitFor(() => events.filter((event) => event.event === 'reaped').length > reapedBefore, 30_000, 'crun to be reaped');
    // crun reports the command's death by SIGTERM as 128+15, and was not killed itself.
    expect(events.filter((event) => event.event === 'reaped').slice(reapedBefore)[0]).toMatchObject({ code: 143, signal: null });
  });

  it('a command that ignores SIGTERM: crun is killed after the bound, the command stays (crun exec\'s own behaviour)', async () => {
    const client = await RawClient.connect(rootSocket);
    client.send({ id: 6, cmd: 'exec-run', service: 'app', argv: ['sh', '-c', "trap '' TERM; exec sleep 31338"], env: {} });
    await waitFor(() => pidsOf(['sleep', '31338']).length === 1, 30_000, 'the command to run');
    const [sleeper] = pidsOf(['sleep', '31338']);
    const reapedBefore = events.filter((event) => event.event === 'reaped').length;
    client.socket.destroy();
    try {
      await waitFor(() => events.filter((event) => event.event === 'reaped').length > reapedBefore, 30_000, 'crun to be reaped');
      expect(events.filter((event) => event.event === 'reaped').slice(reapedBefore)[0]).toMatchObject({ code: null, signal: 'SIGKILL' });
      expect(existsSync(`/proc/${sleeper}`)).toBe(true);
    } finally {
      if (sleeper !== undefined) process.kill(sleeper, 'SIGKILL');
    }
    await waitFor(() => pidsOf(['sleep', '31338']).length === 0, 30_000, 'the command to be gone');
  });

  it('the container is still the one it was: exec left it running', () => {
    expect(crunRun!.exitCode).toBeNull();
  });
});
