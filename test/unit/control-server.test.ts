import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fstatSync } from 'node:fs';
import { lstat, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeStatus as makeStatusFor } from '../helpers/specs.ts';
import { ControlError, type SupervisorApi, type SupervisorInfo } from '../../init/control/api.ts';
import { serveControlStream, startControlServer, type ControlServer } from '../../init/control/server.ts';
import type { BootTimeline } from '../../init/boot/timeline.ts';
import { PassThrough, Duplex } from 'node:stream';
import type { LogLine } from '../../init/log/types.ts';
import { loadNative } from '../../native/index.ts';
import type { Credentials } from '../../native/types.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import { ControlClient } from '../../mosctl/client.ts';
import { main } from '../../mosctl/main.ts';

/** The listening socket comes from the addon (no root needed for unix sockets). */
const sockets = loadNative();

/** An in-memory supervisor: services `web` and `broken`; `explode` makes the API throw a plain Error. */
class FakeSupervisor implements SupervisorApi {
  readonly statuses = new Map<string, ServiceStatus>();
  readonly lines = new Map<string, LogLine[]>();
  readonly followers = new Map<string, Set<(line: LogLine) => void>>();
  /** How long start/stop/restart take, to test ordering and disconnects mid-request. */
  actionDelayMs = 0;
  actionsCompleted = 0;

  constructor() {
    for (const name of ['web', 'broken']) {
      this.statuses.set(name, makeStatus(name));
      this.lines.set(name, []);
      this.followers.set(name, new Set());
    }
    this.emit('web', 'booting');
    this.emit('web', 'listening on :8080');
  }

  info(): SupervisorInfo {
    return { mode: 'host', pid: process.pid, startedAt: Date.now() - 60_000, health: 'ok', reason: null, configPath: null };
  }
  list(): ServiceStatus[] {
    return [...this.statuses.values()];
  }
  status(name: string): ServiceStatus {
    if (name === 'explode') throw new Error('boom');
    const status = this.statuses.get(name);
    if (!status) throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
    return status;
  }
  start(name: string): Promise<ServiceStatus> {
    return this.act(name, (status) =>
      name === 'broken'
        ? { ...status, state: 'failed', reason: '6 starts within 10s', errorCode: 'E_START_LIMIT' }
        : { ...status, state: 'running', pid: 4242, startedAt: Date.now(), since: Date.now() },
    );
  }
  stop(name: string): Promise<ServiceStatus> {
    return this.act(name, (status) => ({ ...status, state: 'stopped', pid: null, startedAt: null, since: Date.now() }));
  }
  restart(name: string): Promise<ServiceStatus> {
    return this.start(name);
  }
  logs(name: string, count: number): LogLine[] {
    this.status(name);
    return count === 0 ? [] : this.lines.get(name)!.slice(-count);
  }
  followLogs(name: string, onLine: (line: LogLine) => void): () => void {
    this.status(name);
    const followers = this.followers.get(name)!;
    followers.add(onLine);
    return () => followers.delete(onLine);
  }

  emit(name: string, text: string): void {
    const lines = this.lines.get(name)!;
    const line: LogLine = { seq: lines.length + 1, ts: Date.now(), stream: 'stdout', text };
    lines.push(line);
    for (const follower of this.followers.get(name)!) follower(line);
  }

  private async act(name: string, change: (status: ServiceStatus) => ServiceStatus): Promise<ServiceStatus> {
    const next = change(this.status(name));
    await new Promise((resolve) => setTimeout(resolve, this.actionDelayMs));
    this.statuses.set(name, next);
    this.actionsCompleted++;
    return next;
  }
}

function makeStatus(name: string): ServiceStatus {
  return makeStatusFor({ name });
}

/** A bare socket speaking the protocol by hand, to send what `ControlClient` never would. */
class RawClient {
  private readonly received: unknown[] = [];
  private wake: (() => void) | null = null;
  private buffered = '';
  readonly ended: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buffered += text;
      const lines = this.buffered.split('\n');
      this.buffered = lines.pop()!;
      for (const line of lines) this.received.push(JSON.parse(line));
      this.wake?.();
    });
    socket.on('error', () => {});
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(path, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(text: string): void {
    this.socket.write(text);
  }

  /** The next message from the server, in arrival order. */
  async next(): Promise<any> {
    while (this.received.length === 0) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    return this.received.shift();
  }
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Leaves a socket file behind with nobody listening, as a crashed mos would. */
function makeStaleSocket(path: string): void {
  const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`;
  const child = spawnSync(process.execPath, ['-e', script]);
  if (child.status !== 0) throw new Error(`could not create a stale socket: ${child.stderr}`);
}

const asRoot = () => ({ pid: 1, uid: 0, gid: 0 });
const asNobody = () => ({ pid: 77, uid: 65534, gid: 65534 });

let dir: string;
let socketPath: string;
let fake: FakeSupervisor;
let server: ControlServer | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mos-control-'));
  // A missing parent: the server creates it.
  socketPath = join(dir, 'run', 'control.sock');
  fake = new FakeSupervisor();
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function serve(peerCredentials: (fd: number) => Credentials = asRoot): Promise<void> {
  server = await startControlServer({ sockets, path: socketPath, api: fake, peerCredentials });
}

describe('control server', () => {
  it('answers list, status and start', async () => {
    await serve();
    const client = await ControlClient.connect(socketPath);
    expect((await client.request({ cmd: 'list' })).map((status) => status.name)).toEqual(['web', 'broken']);
    expect((await client.request({ cmd: 'status', service: 'web' })).state).toBe('stopped');
    const started = await client.request({ cmd: 'start', service: 'web' });
    expect(started).toMatchObject({ name: 'web', state: 'running', pid: 4242 });
    expect((await client.request({ cmd: 'logs', service: 'web', n: 1, follow: false })).lines.map((line) => line.text)).toEqual([
      'listening on :8080',
    ]);
    client.close();
  });

  it('reports an unknown service with the code the API threw', async () => {
    await serve();
    const client = await ControlClient.connect(socketPath);
    const failure = client.request({ cmd: 'stop', service: 'nope' });
    await expect(failure).rejects.toBeInstanceOf(ControlError);
    await expect(failure).rejects.toMatchObject({ code: 'E_UNKNOWN_SERVICE', message: 'unknown service "nope"' });
    client.close();
  });

  it('turns any other API failure into E_INTERNAL and keeps serving', async () => {
    await serve();
    const raw = await RawClient.connect(socketPath);
    raw.send('{"v":1,"id":1,"cmd":"status","service":"explode"}\n{"v":1,"id":2,"cmd":"status","service":"web"}\n');
    expect(await raw.next()).toEqual({ v: 1, id: 1, ok: false, error: { code: 'E_INTERNAL', message: 'boom' } });
    expect(await raw.next()).toMatchObject({ v: 1, id: 2, ok: true, result: { name: 'web' } });
    raw.socket.destroy();
  });

  it('answers bad JSON and an invalid request, then a good one on the same connection', async () => {
    await serve();
    const raw = await RawClient.connect(socketPath);
    raw.send('{oops\n');
    expect(await raw.next()).toEqual({ v: 1, id: 0, ok: false, error: { code: 'E_BAD_REQUEST', message: 'not JSON' } });
    raw.send('{"v":1,"id":7,"cmd":"list","foo":true}\n');
    expect(await raw.next()).toEqual({
      v: 1,
      id: 7,
      ok: false,
      error: { code: 'E_BAD_REQUEST', message: 'unknown field "foo"' },
    });
    raw.send('\n{"v":1,"id":8,"cmd":"info"}\n');
    expect(await raw.next()).toMatchObject({ v: 1, id: 8, ok: true, result: { mode: 'host', health: 'ok' } });
    raw.socket.destroy();
  });

  it('answers requests in arrival order even when an earlier one is slower', async () => {
    await serve();
    fake.actionDelayMs = 50;
    const raw = await RawClient.connect(socketPath);
    raw.send('{"v":1,"id":1,"cmd":"restart","service":"web"}\n{"v":1,"id":2,"cmd":"info"}\n');
    expect((await raw.next()).id).toBe(1);
    expect((await raw.next()).id).toBe(2);
    raw.socket.destroy();
  });

  it('answers a client that shut its sending side, then ends the connection', async () => {
    await serve();
    const raw = await RawClient.connect(socketPath);
    raw.socket.end('{"v":1,"id":3,"cmd":"list"}\n');
    expect(await raw.next()).toMatchObject({ id: 3, ok: true });
    await raw.ended;
  });

  it('refuses a line over 64 KiB, closes that connection, and serves the next', async () => {
    await serve();
    const raw = await RawClient.connect(socketPath);
    raw.send('x'.repeat(70_000));
    expect(await raw.next()).toEqual({
      v: 1,
      id: 0,
      ok: false,
      error: { code: 'E_BAD_REQUEST', message: 'request line exceeds 65536 bytes' },
    });
    await raw.ended;
    const client = await ControlClient.connect(socketPath);
    expect((await client.request({ cmd: 'info' })).health).toBe('ok');
    client.close();
  });

  it('survives a client that disconnects while its request is running', async () => {
    await serve();
    fake.actionDelayMs = 30;
    const raw = await RawClient.connect(socketPath);
    raw.send('{"v":1,"id":1,"cmd":"start","service":"web"}\n');
    await waitFor(() => fake.statuses.get('web')!.state === 'stopped', 'the request to arrive');
    raw.socket.destroy();
    await waitFor(() => fake.actionsCompleted === 1, 'the start to complete');
    const client = await ControlClient.connect(socketPath);
    expect((await client.request({ cmd: 'status', service: 'web' })).state).toBe('running');
    client.close();
  });

  it('streams the backlog then new lines to a follower, and unsubscribes when it leaves', async () => {
    await serve();
    const client = await ControlClient.connect(socketPath);
    const seen: string[] = [];
    await client.stream({ cmd: 'logs', service: 'web', n: 1, follow: true }, (line) => seen.push(line.text));
    expect(seen).toEqual(['listening on :8080']);
    expect(fake.followers.get('web')!.size).toBe(1);
    fake.emit('web', 'GET /');
    fake.emit('web', 'GET /health');
    await waitFor(() => seen.length === 3, 'the streamed lines');
    expect(seen).toEqual(['listening on :8080', 'GET /', 'GET /health']);
    client.close();
    await client.closed;
    await waitFor(() => fake.followers.get('web')!.size === 0, 'the follower to be unsubscribed');
  });

  it('drops a follower that stops reading instead of buffering its stream without bound', async () => {
    await serve();
    const raw = await RawClient.connect(socketPath);
    raw.send('{"v":1,"id":1,"cmd":"logs","service":"web","n":0,"follow":true}\n');
    expect(await raw.next()).toMatchObject({ id: 1, ok: true, result: { lines: [] } });
    raw.socket.pause();
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 128 && fake.followers.get('web')!.size > 0; i++) fake.emit('web', chunk);
    await waitFor(() => fake.followers.get('web')!.size === 0, 'the stuck follower to be dropped');
    raw.socket.destroy();
  });

  it('refuses a peer whose uid is not allowed, with one E_PERMISSION response', async () => {
    const peerFdIsSocket: boolean[] = [];
    await serve((fd) => {
      peerFdIsSocket.push(fstatSync(fd).isSocket());
      return asNobody();
    });
    const raw = await RawClient.connect(socketPath);
    expect(await raw.next()).toEqual({
      v: 1,
      id: 0,
      ok: false,
      error: {
        code: 'E_PERMISSION',
        message: 'permission denied: the control socket is root-only (peer uid 65534)',
      },
    });
    await raw.ended;
    // The credentials were asked of the accepted connection's own fd.
    expect(peerFdIsSocket).toEqual([true]);
  });

  it('creates the socket 0600 in a 0700 directory', async () => {
    await serve();
    const socketStats = await lstat(socketPath);
    expect(socketStats.isSocket()).toBe(true);
    expect(socketStats.mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'run'))).mode & 0o777).toBe(0o700);
  });

  it('shows the socket under its name only once it listens (bound under a staging name, then renamed)', async () => {
    const bound: string[] = [];
    const watching = {
      ...sockets,
      listenUnixStream(path: string, backlog: number) {
        bound.push(path);
        // At bind time the final name must not exist yet: a client seeing it would get ECONNREFUSED.
        expect(existsSync(socketPath)).toBe(false);
        return sockets.listenUnixStream(path, backlog);
      },
    };
    server = await startControlServer({ sockets: watching, path: socketPath, api: fake, peerCredentials: asRoot });
    expect(bound).toEqual([`${socketPath}.new`]);
    expect(existsSync(`${socketPath}.new`)).toBe(false);
    const client = await ControlClient.connect(socketPath);
    expect((await client.request({ cmd: 'list' })).length).toBe(2);
    client.close();
  });

  it('replaces a stale socket file', async () => {
    await serve();
    await server!.close();
    makeStaleSocket(socketPath);
    expect((await lstat(socketPath)).isSocket()).toBe(true);
    await serve();
    const client = await ControlClient.connect(socketPath);
    expect((await client.request({ cmd: 'info' })).health).toBe('ok');
    client.close();
  });

  it('will not delete a regular file at the socket path, nor take over a live socket', async () => {
    await serve();
    await expect(startControlServer({ sockets, path: socketPath, api: fake, peerCredentials: asRoot })).rejects.toThrow(
      `control socket ${socketPath} is in use by another process`,
    );
    await server!.close();
    await writeFile(socketPath, 'precious');
    await expect(startControlServer({ sockets, path: socketPath, api: fake, peerCredentials: asRoot })).rejects.toThrow(
      `control socket path ${socketPath} exists and is not a socket; refusing to replace it`,
    );
    expect(await readFile(socketPath, 'utf8')).toBe('precious');
  });
});

describe('ControlClient connection errors', () => {
  it('names a missing socket and one nobody listens on', async () => {
    const missing = join(dir, 'missing.sock');
    await expect(ControlClient.connect(missing)).rejects.toMatchObject({
      code: 'E_UNREACHABLE',
      message: `cannot reach mos: no control socket at ${missing}`,
    });
    const stale = join(dir, 'stale.sock');
    makeStaleSocket(stale);
    await expect(ControlClient.connect(stale)).rejects.toMatchObject({
      code: 'E_UNREACHABLE',
      message: `cannot reach mos at ${stale}: nothing is listening`,
    });
  });
});

describe('mosctl main()', () => {
  async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
    const output = { out: '', err: '' };
    const code = await main(['node', 'mosctl', '--socket', socketPath, ...args], {
      out: (text) => (output.out += text),
      err: (text) => (output.err += text),
      isTTY: false,
    });
    return { code, ...output };
  }

  it('lists services and shows mos itself with `status` (exit 0)', async () => {
    await serve();
    const list = await run('list');
    expect(list).toMatchObject({ code: 0, err: '' });
    expect(list.out.split('\n')[0]).toBe('NAME    STATE    PID  UPTIME  RESTARTS  LAST-EXIT');
    const overview = await run('status');
    expect(overview.code).toBe(0);
    expect(overview.out).toMatch(/^mode: host \(pid \d+\)\nuptime: 1m0\ds .*\nhealth: ok\n\nNAME /);
  });

  it('shows one service with its last lines', async () => {
    await serve();
    const { code, out } = await run('status', 'web');
    expect(code).toBe(0);
    expect(out).toMatch(/^● web - stopped\n {5}State: stopped since .*\n[\s\S]*\n\n\d\d:\d\d:\d\d stdout booting\n\d\d:\d\d:\d\d stdout listening on :8080\n$/);
  });

  it('prints the raw result with --json, before or after the command', async () => {
    await serve();
    expect(JSON.parse((await run('--json', 'list')).out)).toEqual(fake.list());
    expect(JSON.parse((await run('status', 'web', '--json')).out)).toEqual(fake.status('web'));
    const logs = await run('--json', 'logs', '-n', '1', 'web');
    expect(JSON.parse(logs.out)).toEqual({ lines: [fake.lines.get('web')![1]] });
  });

  it('starts a service and prints its status line; a start that ends failed exits 1', async () => {
    await serve();
    expect(await run('start', 'web')).toEqual({ code: 0, out: '● web - running (pid 4242)\n', err: '' });
    expect(await run('restart', 'broken')).toEqual({
      code: 1,
      out: '● broken - failed: E_START_LIMIT: 6 starts within 10s\n',
      err: '',
    });
  });

  it('exits 5 for an unknown service', async () => {
    await serve();
    expect(await run('stop', 'nope')).toEqual({ code: 5, out: '', err: 'mosctl: unknown service "nope"\n' });
  });

  it('exits 69 when mos cannot be reached', async () => {
    expect(await run('list')).toEqual({
      code: 69,
      out: '',
      err: `mosctl: cannot reach mos: no control socket at ${socketPath}\n`,
    });
  });

  it('exits 4 when the server refuses the peer', async () => {
    await serve(asNobody);
    expect(await run('list')).toEqual({
      code: 4,
      out: '',
      err: 'mosctl: permission denied: the control socket is root-only (peer uid 65534)\n',
    });
  });

  it.each([
    [['logs', '-n', 'abc', 'web'], "option '-n, --lines <N>' argument 'abc' is invalid. expected an integer 0..100000"],
    [['logs', '-n', '100001', 'web'], 'expected an integer 0..100000'],
    [['start', 'Web'], 'expected a service name matching'],
    [['frobnicate'], "unknown command 'frobnicate'"],
    [['logs'], "missing required argument 'service'"],
    [['--bogus', 'list'], "unknown option '--bogus'"],
  ])('exits 64 on a usage error: %j', async (args, message) => {
    const { code, out, err } = await run(...args);
    expect(code).toBe(64);
    expect(out).toBe('');
    expect(err).toMatch(/^mosctl: /);
    expect(err).toContain(message);
  });

  it('exits 64 with the usage on stderr when no command is given', async () => {
    const { code, out, err } = await run();
    expect(code).toBe(64);
    expect(out).toBe('');
    expect(err).toMatch(/^Usage: mosctl \[options\] \[command\]\n/);
  });

  it('follows a log until interrupted, then exits 0 and lets go of the stream', async () => {
    await serve();
    let out = '';
    const following = main(['node', 'mosctl', '--socket', socketPath, 'logs', '-f', '-n', '1', 'web'], {
      out: (text) => (out += text),
      err: (text) => (out += text),
      isTTY: false,
    });
    await waitFor(() => fake.followers.get('web')!.size === 1, 'mosctl to follow');
    fake.emit('web', 'GET /');
    await waitFor(() => out.includes('GET /'), 'the line to be printed');
    process.emit('SIGINT');
    expect(await following).toBe(0);
    expect(out).toMatch(/^\d\d:\d\d:\d\d stdout listening on :8080\n\d\d:\d\d:\d\d stdout GET \/\n$/);
    await waitFor(() => fake.followers.get('web')!.size === 0, 'the follower to be unsubscribed');
  });

  it('follows as JSON lines and ends cleanly when mos goes away', async () => {
    await serve();
    const lines: string[] = [];
    const following = main(['node', 'mosctl', '--socket', socketPath, '--json', 'logs', '--follow', 'web'], {
      out: (text) => lines.push(text),
      err: (text) => lines.push(text),
      isTTY: false,
    });
    await waitFor(() => fake.followers.get('web')!.size === 1, 'mosctl to follow');
    fake.emit('web', 'GET /');
    await waitFor(() => lines.length === 3, 'the backlog and the new line');
    await server!.close();
    expect(await following).toBe(0);
    expect(lines.map((line) => JSON.parse(line).text)).toEqual(['booting', 'listening on :8080', 'GET /']);
  });
});

describe('PID-1 commands over the control protocol', () => {
  const timeline: BootTimeline = {
    clock: 'boottime',
    initExecMs: 2500,
    initMainMs: 2600,
    phases: [{ name: 'mounts', policy: 'fatal', status: 'ok', startMs: 2601, endMs: 2613, detail: null }],
    firstServiceExec: { atMs: 2700, service: 'web' },
    servicesReadyMs: 2800,
    emergency: null,
    shutdown: null,
  };

  it('host mode: analyze answers null and a shutdown request E_UNSUPPORTED', async () => {
    await serve();
    const client = await ControlClient.connect(socketPath);
    expect(await client.request({ cmd: 'analyze' })).toBeNull();
    await expect(client.request({ cmd: 'poweroff' })).rejects.toMatchObject({ code: 'E_UNSUPPORTED' });
    client.close();
  });

  it('PID 1: analyze returns the timeline, poweroff is answered before it begins', async () => {
    const requested: string[] = [];
    const pid1 = Object.assign(fake, {
      timeline: () => timeline,
      requestShutdown: (action: 'halt' | 'poweroff' | 'reboot') => {
        requested.push(action);
        return { action, accepted: true as const };
      },
    });
    server = await startControlServer({ sockets, path: socketPath, api: pid1, peerCredentials: asRoot });
    const client = await ControlClient.connect(socketPath);
    expect(await client.request({ cmd: 'analyze' })).toEqual(timeline);
    expect(await client.request({ cmd: 'reboot' })).toEqual({ action: 'reboot', accepted: true });
    expect(requested).toEqual(['reboot']);
    client.close();
  });

  it('a read-only stream may look but not change anything', async () => {
    // A Duplex pair standing in for a virtio-serial port: what the client writes, the server reads.
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const port = Duplex.from({ readable: toServer, writable: toClient });
    serveControlStream(port, fake, { access: 'read-only', accessHint: 'boot with mos.debug_control=1' });
    const answers: any[] = [];
    toClient.on('data', (chunk: Buffer) => answers.push(...chunk.toString().trim().split('\n').map((line) => JSON.parse(line))));
    toServer.write('{"v":1,"id":1,"cmd":"list"}\n{"v":1,"id":2,"cmd":"stop","service":"web"}\n{"v":1,"id":3,"cmd":"poweroff"}\n');
    await waitFor(() => answers.length === 3, 'three answers');
    expect(answers[0]).toMatchObject({ id: 1, ok: true });
    expect(answers[1]).toMatchObject({ id: 2, ok: false, error: { code: 'E_PERMISSION' } });
    expect(answers[1].error.message).toContain('mos.debug_control=1');
    expect(answers[2]).toMatchObject({ id: 3, ok: false, error: { code: 'E_PERMISSION' } });
    expect(fake.actionsCompleted).toBe(0);
    port.destroy();
  });

  it('mosctl analyze prints the table, and poweroff says it was requested', async () => {
    const pid1 = Object.assign(fake, {
      timeline: () => timeline,
      requestShutdown: (action: 'halt' | 'poweroff' | 'reboot') => ({ action, accepted: true as const }),
    });
    server = await startControlServer({ sockets, path: socketPath, api: pid1, peerCredentials: asRoot });
    const output = { out: '', err: '' };
    const io = { out: (text: string) => (output.out += text), err: (text: string) => (output.err += text), isTTY: false };
    expect(await main(['node', 'mosctl', '--socket', socketPath, 'analyze'], io)).toBe(0);
    expect(output.out).toContain('phase mounts');
    expect(output.out).toContain('all services ready');
    output.out = '';
    expect(await main(['node', 'mosctl', '--socket', socketPath, '--json', 'analyze'], io)).toBe(0);
    expect(JSON.parse(output.out)).toEqual(timeline);
    output.out = '';
    expect(await main(['node', 'mosctl', '--socket', socketPath, 'poweroff'], io)).toBe(0);
    expect(output.out).toBe('mos: poweroff requested; shutting down\n');
  });
});
