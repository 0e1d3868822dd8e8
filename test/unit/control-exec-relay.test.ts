/**
 * Exec relayed by mos (`exec-run`, `exec-input`), server side: the requests' schemas, the control
 * server relaying a fake `ExecRunner`'s session over an in-memory stream (ordering, stdin, exit
 * status, permissions, termination when the client leaves, backpressure), and PID 1's runner
 * (init/control/exec-relay.ts) with the addon's real pipes but a pretend spawn, the test playing
 * the child.
 */
import { closeSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import * as v from 'valibot';
import { afterEach, describe, expect, it } from 'vitest';
import { ControlError, type ExecRunner, type ExecRunSpec, type ExecSession, type ExecSessionExit, type ExecTarget, type SupervisorApi } from '../../init/control/api.ts';
import { createExecRunner } from '../../init/control/exec-relay.ts';
import {
  BadRequestError,
  MAX_EXEC_CHUNK_BYTES,
  MAX_LINE_BYTES,
  READ_ONLY_COMMANDS,
  ServerMessageSchema,
  exitStatus,
  parseRequest,
} from '../../init/control/protocol.ts';
import { serveControlStream, startControlServer, type ControlAccess, type ControlServer } from '../../init/control/server.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import { ControlClient } from '../../mosctl/client.ts';
import { loadNative } from '../../native/index.ts';
import type { SpawnOptions } from '../../native/types.ts';
import { makeStatus } from '../helpers/specs.ts';

const native = loadNative();

function fakeApi(): SupervisorApi {
  const statuses = new Map<string, ServiceStatus>([['web', makeStatus({ name: 'web', state: 'running', pid: 4242 })]]);
  const never = () => Promise.reject(new Error('not used'));
  return {
    info: () => ({ mode: 'pid1', pid: 1, startedAt: 0, health: 'ok', reason: null, configPath: null }),
    list: () => [...statuses.values()],
    status: (name) => {
      const found = statuses.get(name);
      if (!found) throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
      return found;
    },
    start: never,
    stop: never,
    restart: never,
    logs: () => [],
    followLogs: () => () => {},
  };
}

/** A command as the fake runner starts it: the test writes its output and decides its exit. */
class FakeSession implements ExecSession {
  readonly containerId = 'mos-web';
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly stdin = new PassThrough();
  readonly exited: Promise<ExecSessionExit>;
  terminated = 0;
  /** What reached the command's stdin, and whether it ended. */
  input = '';
  stdinEnded = false;
  private resolveExit!: (exit: ExecSessionExit) => void;

  constructor() {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.stdin.setEncoding('utf8');
    this.stdin.on('data', (text: string) => (this.input += text));
    this.stdin.on('end', () => (this.stdinEnded = true));
  }

  terminate(): void {
    this.terminated++;
  }

  /** Output to both streams ends, then the command exits. */
  finish(exit: ExecSessionExit): void {
    this.stdout.end();
    this.stderr.end();
    this.resolveExit(exit);
  }

  exit(exit: ExecSessionExit): void {
    this.resolveExit(exit);
  }
}

/** A fake runner: records what it was asked, starts FakeSessions (or refuses, as told). */
class FakeRunner {
  readonly asked: { service: string; spec: ExecRunSpec }[] = [];
  readonly sessions: FakeSession[] = [];
  refuse: ControlError | null = null;
  /** Called with each session before it is returned, e.g. to write output early. */
  onStart: (session: FakeSession) => void = () => {};

  readonly run: ExecRunner = async (service, spec) => {
    this.asked.push({ service, spec });
    if (this.refuse) throw this.refuse;
    const session = new FakeSession();
    this.sessions.push(session);
    this.onStart(session);
    return session;
  };
}

/**
 * The client's end of an in-memory connection (a virtio-serial port stand-in): it parses what the
 * server writes, and can stop reading (`hold`) so that the server's writes pile up unsent.
 */
class Port extends Duplex {
  readonly received: any[] = [];
  private partial = '';
  private holding = false;
  private readonly held: (() => void)[] = [];
  private wake: (() => void) | null = null;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {}

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    const lines = (this.partial + chunk.toString()).split('\n');
    this.partial = lines.pop()!;
    for (const line of lines) this.received.push(JSON.parse(line));
    this.wake?.();
    if (this.holding) this.held.push(done);
    else done();
  }

  /** A request line from the client. */
  request(request: Record<string, unknown>): void {
    this.push(`${JSON.stringify({ v: 1, ...request })}\n`);
  }

  hold(): void {
    this.holding = true;
  }

  release(): void {
    this.holding = false;
    for (const done of this.held.splice(0)) done();
  }

  /** Waits until `condition` holds over what has been received. */
  async until(condition: (received: any[]) => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5_000;
    while (!condition(this.received)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(this.received).slice(0, 500)}`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 10);
      });
    }
  }

  ofId(id: number): any[] {
    return this.received.filter((message) => message.id === id);
  }

  output(id: number, stream: 'stdout' | 'stderr'): string {
    return Buffer.concat(this.ofId(id).filter((m) => m.event === 'exec-output' && m.stream === stream).map((m) => Buffer.from(m.data, 'base64'))).toString();
  }
}

function serveStream(runner: FakeRunner | null, access: ControlAccess = 'root'): Port {
  const port = new Port();
  serveControlStream(port, fakeApi(), { access, ...(runner ? { execRunner: runner.run } : {}) });
  return port;
}

const RUN = { id: 7, cmd: 'exec-run', service: 'web', argv: ['sh', '-c', 'cat'], env: {} };
const b64 = (text: string) => Buffer.from(text).toString('base64');

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('the exec-run and exec-input requests', () => {
  it('parse strictly: argv, env, an absolute cwd, container ids', () => {
    expect(parseRequest(JSON.stringify({ v: 1, ...RUN, cwd: '/srv', user: { uid: 70, gid: 71 }, env: { A: '1' } }))).toEqual({
      v: 1,
      id: 7,
      cmd: 'exec-run',
      service: 'web',
      argv: ['sh', '-c', 'cat'],
      env: { A: '1' },
      cwd: '/srv',
      user: { uid: 70, gid: 71 },
    });
    const refused = (request: Record<string, unknown>) => {
      const result = parseRequest(JSON.stringify({ v: 1, ...request }));
      if (!(result instanceof BadRequestError)) throw new Error(`accepted ${JSON.stringify(request)}`);
      return result.message;
    };
    expect(refused({ ...RUN, argv: [] })).toBe('argv: expected a command');
    expect(refused({ ...RUN, argv: [''] })).toBe('argv: expected a command name, not an empty string');
    expect(refused({ ...RUN, argv: ['sh', 'a\0b'] })).toBe('argv.1: contains a NUL byte');
    expect(refused({ ...RUN, argv: 'sh' })).toBe('argv: expected the command and its arguments as a list of strings');
    expect(refused({ ...RUN, env: undefined })).toBe('env: required');
    expect(refused({ ...RUN, env: { 'A=B': '1' } })).toContain('expected variable names without "=" or NUL');
    expect(refused({ ...RUN, env: { A: 1 } })).toBe('env.A: expected a string');
    expect(refused({ ...RUN, cwd: 'srv' })).toBe('cwd: expected an absolute path');
    expect(refused({ ...RUN, user: { uid: -1, gid: 0 } })).toBe('user.uid: expected a container id 0..4294967294');
    expect(refused({ ...RUN, tty: true })).toBe('unknown field "tty"');
    // Its events carry its id: 0 would read as an error about the whole connection.
    expect(refused({ ...RUN, id: 0 })).toBe('id: exec-run needs an id above 0');

    expect(parseRequest('{"v":1,"id":8,"cmd":"exec-input","run":7,"data":"aGk=","eof":true}')).toEqual({ v: 1, id: 8, cmd: 'exec-input', run: 7, data: 'aGk=', eof: true });
    expect(parseRequest('{"v":1,"id":8,"cmd":"exec-input","run":7,"eof":true}')).toMatchObject({ eof: true });
    expect(refused({ id: 8, cmd: 'exec-input', run: 7 })).toBe('expected data or eof');
    expect(refused({ id: 8, cmd: 'exec-input', run: 7, data: 'not base64!' })).toBe('data: expected base64');
    expect(refused({ id: 8, cmd: 'exec-input', run: 7, eof: false })).toBe('eof: expected true');
    expect(refused({ id: 8, cmd: 'exec-input', run: 7, data: 'A'.repeat(4 * Math.ceil(MAX_EXEC_CHUNK_BYTES / 3) + 4) })).toBe(`data: expected at most ${MAX_EXEC_CHUNK_BYTES} bytes`);
    expect(refused({ id: 8, cmd: 'exec-input', run: 7, data: Buffer.alloc(MAX_EXEC_CHUNK_BYTES + 1).toString('base64') })).toBe(`data: expected at most ${MAX_EXEC_CHUNK_BYTES} bytes`);
    // A full chunk, base64, fits in a line.
    const full = JSON.stringify({ v: 1, id: 8, cmd: 'exec-input', run: 7, data: Buffer.alloc(MAX_EXEC_CHUNK_BYTES, 0xff).toString('base64') });
    expect(Buffer.byteLength(full)).toBeLessThan(MAX_LINE_BYTES);
    expect(parseRequest(full)).not.toBeInstanceOf(BadRequestError);

    expect(READ_ONLY_COMMANDS.has('exec-run')).toBe(false);
    expect(READ_ONLY_COMMANDS.has('exec-input')).toBe(false);
  });

  it('their events are what the client accepts; the status follows the shell', () => {
    expect(v.is(ServerMessageSchema, { v: 1, id: 7, event: 'exec-output', stream: 'stderr', data: 'aGk=' })).toBe(true);
    expect(v.is(ServerMessageSchema, { v: 1, id: 7, event: 'exec-exit', code: null, signal: 'SIGKILL', status: 137 })).toBe(true);
    expect(v.is(ServerMessageSchema, { v: 1, id: 7, event: 'exec-output', stream: 'stdin', data: '' })).toBe(false);
    expect(exitStatus(3, null)).toBe(3);
    expect(exitStatus(null, 'SIGKILL')).toBe(137);
    expect(exitStatus(null, 'SIGTERM')).toBe(143);
    expect(exitStatus(null, null)).toBe(1);
    expect(exitStatus(null, 'SIGNOPE')).toBe(1);
  });
});

describe('exec relayed over a stream', () => {
  it('answers first, then the output in order, then the exit after all of it', async () => {
    const runner = new FakeRunner();
    // Output written before the answer is even sent still comes after it.
    runner.onStart = (session) => session.stdout.write('early ');
    const port = serveStream(runner);
    port.request({ ...RUN, argv: ['sh', '-c', 'x'], env: { A: '1' }, cwd: '/tmp', user: { uid: 1, gid: 2 } });
    await port.until((r) => r.length >= 2, 'the answer and the first output');
    expect(runner.asked).toEqual([{ service: 'web', spec: { argv: ['sh', '-c', 'x'], env: { A: '1' }, cwd: '/tmp', user: { uid: 1, gid: 2 } } }]);
    expect(port.received[0]).toEqual({ v: 1, id: 7, ok: true, result: { service: 'web', containerId: 'mos-web' } });
    const session = runner.sessions[0]!;
    session.stderr.write('oops\n');
    session.stdout.write('late\n');
    // The exit is known before the output has ended: it waits for the output.
    session.exit({ code: 3, signal: null });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(port.received.some((m) => m.event === 'exec-exit')).toBe(false);
    session.stdout.end('last\n');
    session.stderr.end();
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    expect(port.received.at(-1)).toEqual({ v: 1, id: 7, event: 'exec-exit', code: 3, signal: null, status: 3 });
    expect(port.output(7, 'stdout')).toBe('early late\nlast\n');
    expect(port.output(7, 'stderr')).toBe('oops\n');
    // Every event carries the run's id and the answer came first.
    expect(port.received.every((m) => m.id === 7)).toBe(true);
    expect(port.received.findIndex((m) => m.ok === true)).toBe(0);
    // The run is over: its pipes are closed and its id is free again.
    expect(session.stdout.destroyed && session.stderr.destroyed && session.stdin.destroyed).toBe(true);
    expect(session.terminated).toBe(0);
    port.request({ id: 9, cmd: 'exec-input', run: 7, data: b64('x') });
    await port.until((r) => r.some((m) => m.id === 9), 'the answer to a late input');
    expect(port.ofId(9)[0]).toMatchObject({ ok: false, error: { code: 'E_BAD_REQUEST', message: 'no command runs with id 7 on this connection (unknown, or it has exited)' } });
    port.destroy();
  });

  it('reports a death by signal as 128+n', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    runner.sessions[0]!.finish({ code: null, signal: 'SIGKILL' });
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    expect(port.received.at(-1)).toEqual({ v: 1, id: 7, event: 'exec-exit', code: null, signal: 'SIGKILL', status: 137 });
    port.destroy();
  });

  it('splits output into chunks of at most 32 KiB, each line under the limit', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    const big = Buffer.alloc(100_000, 'y');
    runner.sessions[0]!.stdout.write(big);
    runner.sessions[0]!.finish({ code: 0, signal: null });
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    const chunks = port.ofId(7).filter((m) => m.event === 'exec-output').map((m) => Buffer.from(m.data, 'base64'));
    expect(Math.max(...chunks.map((chunk) => chunk.length))).toBeLessThanOrEqual(MAX_EXEC_CHUNK_BYTES);
    expect(Buffer.concat(chunks).equals(big)).toBe(true);
    for (const message of port.received) expect(Buffer.byteLength(JSON.stringify(message))).toBeLessThan(MAX_LINE_BYTES);
    port.destroy();
  });

  it("relays stdin, answers each input, and closes the command's stdin at eof", async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    port.request({ id: 8, cmd: 'exec-input', run: 7, data: b64('hello ') });
    port.request({ id: 9, cmd: 'exec-input', run: 7, data: b64('world\n'), eof: true });
    await port.until((r) => r.some((m) => m.id === 9), 'the answers');
    expect(port.ofId(8)).toEqual([{ v: 1, id: 8, ok: true, result: null }]);
    expect(port.ofId(9)).toEqual([{ v: 1, id: 9, ok: true, result: null }]);
    const session = runner.sessions[0]!;
    await waitFor(() => session.stdinEnded, 'the end of stdin');
    expect(session.input).toBe('hello world\n');
    // More data after the end is an error; another end is harmless.
    port.request({ id: 10, cmd: 'exec-input', run: 7, data: b64('more') });
    port.request({ id: 11, cmd: 'exec-input', run: 7, eof: true });
    port.request({ id: 12, cmd: 'exec-input', run: 99, eof: true });
    await port.until((r) => r.some((m) => m.id === 12), 'the answers');
    expect(port.ofId(10)[0]).toMatchObject({ ok: false, error: { code: 'E_BAD_REQUEST', message: 'the stdin of command 7 is closed already' } });
    expect(port.ofId(11)[0]).toMatchObject({ ok: true, result: null });
    expect(port.ofId(12)[0]).toMatchObject({ ok: false, error: { code: 'E_BAD_REQUEST' } });
    port.destroy();
  });

  it("answers an input only once the command's stdin takes it (stdin backpressure)", async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    const session = runner.sessions[0]!;
    // The command stops reading its stdin.
    session.stdin.removeAllListeners('data');
    session.stdin.pause();
    const chunk = Buffer.alloc(MAX_EXEC_CHUNK_BYTES, 'z').toString('base64');
    for (let id = 100; id < 104; id++) port.request({ id, cmd: 'exec-input', run: 7, data: chunk });
    port.request({ id: 104, cmd: 'list' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    // A chunk over the pipe's mark waits there: its answer (and those after it) with it.
    expect(port.received.filter((m) => m.id >= 100)).toEqual([]);
    // Reading again lets the rest through.
    session.stdin.resume();
    await port.until((r) => r.some((m) => m.id === 104), 'the last answer');
    expect(port.received.filter((m) => m.id >= 100).map((m) => m.id)).toEqual([100, 101, 102, 103, 104]);
    expect(port.received.filter((m) => m.id >= 100).every((m) => m.ok === true)).toBe(true);
    port.destroy();
  });

  it('pauses reading output while the client does not read, and loses none of it', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    const session = runner.sessions[0]!;
    port.hold();
    // 2 MiB in 64 KiB writes, as far as the command's pipe takes them.
    const total = 2 * 1024 * 1024;
    let written = 0;
    const writeMore = () => {
      while (written < total) {
        const chunk = Buffer.alloc(64 * 1024, written / (64 * 1024));
        written += chunk.length;
        if (!session.stdout.write(chunk)) return;
      }
    };
    session.stdout.on('drain', writeMore);
    writeMore();
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The server stopped reading: the command's pipe is full, and mos holds a bounded amount.
    expect(session.stdout.readableFlowing).toBe(false);
    expect(written).toBeLessThan(total);
    expect(port.writableLength).toBeLessThan(512 * 1024);
    port.release();
    await waitFor(() => written >= total, 'all output written');
    session.finish({ code: 0, signal: null });
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    const data = Buffer.from(port.output(7, 'stdout'), 'latin1');
    expect(data.length).toBe(total);
    const expected = Buffer.concat(Array.from({ length: total / (64 * 1024) }, (_, i) => Buffer.alloc(64 * 1024, i)));
    expect(Buffer.concat(port.ofId(7).filter((m) => m.event === 'exec-output').map((m) => Buffer.from(m.data, 'base64'))).equals(expected)).toBe(true);
    port.destroy();
  });

  it('does not count time the client spends not reading against the grace after the exit', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    const session = runner.sessions[0]!;
    port.hold();
    // 1 MiB left in the command's pipe (PassThrough buffers it), read as the client takes it.
    const big = Buffer.alloc(1024 * 1024, 'q');
    for (let offset = 0; offset < big.length; offset += 64 * 1024) session.stdout.write(big.subarray(offset, offset + 64 * 1024));
    session.stdout.end();
    session.stderr.end();
    session.exit({ code: 0, signal: null });
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(port.received.some((m) => m.event === 'exec-exit')).toBe(false);
    port.release();
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    expect(port.output(7, 'stdout').length).toBe(big.length);
    port.destroy();
  });

  it('terminates the command when the client disconnects, or ends its side', async () => {
    for (const leave of [(port: Port) => port.destroy(), (port: Port) => port.push(null)]) {
      const runner = new FakeRunner();
      const port = serveStream(runner);
      port.request(RUN);
      port.request({ ...RUN, id: 8 });
      await port.until((r) => r.length >= 2, 'both answers');
      leave(port);
      await waitFor(() => runner.sessions.every((session) => session.terminated === 1), 'termination');
      for (const session of runner.sessions) expect(session.stdout.destroyed && session.stdin.destroyed).toBe(true);
      // Its exit, later, is sent nowhere.
      runner.sessions[0]!.finish({ code: null, signal: 'SIGTERM' });
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(port.received.some((m) => m.event === 'exec-exit')).toBe(false);
    }
  });

  it('does not start a command the client left before its turn', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    port.push(null);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(runner.sessions.every((session) => session.terminated === 1)).toBe(true);
    port.destroy();
  });

  it("gives up on output a daemon holds open 2 s after the command's exit", async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    await port.until((r) => r.length >= 1, 'the answer');
    const session = runner.sessions[0]!;
    session.stdout.write('before\n');
    session.stderr.end();
    const exitedAt = Date.now();
    session.exit({ code: 0, signal: null });
    await port.until((r) => r.some((m) => m.event === 'exec-exit'), 'the exit');
    expect(Date.now() - exitedAt).toBeGreaterThanOrEqual(1_900);
    expect(port.output(7, 'stdout')).toBe('before\n');
    expect(session.stdout.destroyed).toBe(true);
    port.destroy();
  });

  it('refuses a run id in use, and commands beyond 8 at once', async () => {
    const runner = new FakeRunner();
    const port = serveStream(runner);
    port.request(RUN);
    port.request(RUN);
    for (let id = 20; id < 28; id++) port.request({ ...RUN, id });
    await port.until((r) => r.some((m) => m.id === 27), 'all answers');
    expect(port.received.filter((m) => m.id === 7)[1]).toMatchObject({ ok: false, error: { code: 'E_BAD_REQUEST', message: 'a command with id 7 still runs on this connection: use another id' } });
    expect(port.ofId(27)[0]).toMatchObject({ ok: false, error: { code: 'E_BAD_REQUEST', message: 'at most 8 commands may run at once on one connection' } });
    expect(runner.sessions.length).toBe(8);
    port.destroy();
  });

  it("passes the runner's refusals on, and keeps serving", async () => {
    const runner = new FakeRunner();
    runner.refuse = new ControlError('E_NOT_RUNNING', 'service web is not running (stopped): there is no container to run a command in');
    const port = serveStream(runner);
    port.request(RUN);
    port.request({ id: 8, cmd: 'list' });
    await port.until((r) => r.length >= 2, 'both answers');
    expect(port.received[0]).toEqual({ v: 1, id: 7, ok: false, error: { code: 'E_NOT_RUNNING', message: 'service web is not running (stopped): there is no container to run a command in' } });
    expect(port.received[1]).toMatchObject({ id: 8, ok: true });
    port.destroy();
  });

  it('is refused on a read-only stream, and answers E_UNSUPPORTED without a runner', async () => {
    const runner = new FakeRunner();
    const readOnly = serveStream(runner, 'read-only');
    readOnly.request(RUN);
    readOnly.request({ id: 8, cmd: 'exec-input', run: 7, eof: true });
    await readOnly.until((r) => r.length >= 2, 'both answers');
    expect(readOnly.received.map((m) => m.error?.code)).toEqual(['E_PERMISSION', 'E_PERMISSION']);
    expect(runner.asked).toEqual([]);
    readOnly.destroy();

    const without = serveStream(null);
    without.request(RUN);
    await without.until((r) => r.length >= 1, 'the answer');
    expect(without.received[0]).toMatchObject({ id: 7, ok: false, error: { code: 'E_UNSUPPORTED', message: 'exec is not available: this mos (pid1 mode) runs no containers' } });
    without.destroy();
  });
});

describe('exec relayed on the unix socket', () => {
  let dir: string | undefined;
  let server: ControlServer | undefined;

  afterEach(async () => {
    await server?.close();
    server = undefined;
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function serve(uid: number, runner: FakeRunner): Promise<string> {
    dir = await mkdtemp(join(tmpdir(), 'mos-exec-relay-'));
    const socketPath = join(dir, 'control.sock');
    server = await startControlServer({ sockets: native, path: socketPath, api: fakeApi(), peerCredentials: () => ({ pid: 2, uid, gid: uid }), allowedUids: [0, 1000], execRunner: runner.run });
    return socketPath;
  }

  it('serves a root peer (ControlClient.execRun and execInput)', async () => {
    const runner = new FakeRunner();
    const client = await ControlClient.connect(await serve(0, runner));
    const output: string[] = [];
    let exit: unknown = null;
    const { run, started } = await client.execRun({ cmd: 'exec-run', service: 'web', argv: ['cat'], env: {} }, {
      output: (stream, data) => output.push(`${stream}:${data.toString()}`),
      exit: (result) => (exit = result),
    });
    expect(started).toEqual({ service: 'web', containerId: 'mos-web' });
    await client.execInput(run, Buffer.from('ping'), true);
    const session = runner.sessions[0]!;
    await waitFor(() => session.stdinEnded, 'the end of stdin');
    expect(session.input).toBe('ping');
    session.stdout.write('pong');
    session.finish({ code: 0, signal: null });
    await waitFor(() => exit !== null, 'the exit');
    expect(output).toEqual(['stdout:pong']);
    expect(exit).toEqual({ code: 0, signal: null, status: 0 });
    client.close();
  });

  it('refuses a peer that is not root, without asking the runner', async () => {
    const runner = new FakeRunner();
    const client = await ControlClient.connect(await serve(1000, runner));
    await expect(client.execRun({ cmd: 'exec-run', service: 'web', argv: ['true'], env: {} }, { output: () => {}, exit: () => {} })).rejects.toMatchObject({
      code: 'E_PERMISSION',
      message: 'permission denied: exec needs root (peer uid 1000)',
    });
    expect(runner.asked).toEqual([]);
    client.close();
  });
});

describe("PID 1's runner (createExecRunner)", () => {
  const TARGET: ExecTarget = {
    service: 'web',
    containerId: 'mos-web',
    crunPath: '/usr/bin/crun',
    crunRoot: '/run/mos/crun',
    cgroupManager: 'cgroupfs',
    env: ['PATH=/bin', 'HOME=/root'],
    cwd: '/srv',
    user: { uid: 70, gid: 71 },
  };

  /**
   * The addon's real pipes, a pretend spawn: the child's ends that the runner would close after
   * spawning are kept for the test, which plays the child with them.
   */
  function harness(options: { spawnError?: Error } = {}) {
    const spawned: SpawnOptions[] = [];
    const kills: string[] = [];
    const closed: number[] = [];
    const opened: number[] = [];
    let childEnds: number[] = [];
    let resolveExit!: (exit: { code: number | null; signal: string | null }) => void;
    const fakeNative = {
      pipe: () => {
        const fds = native.pipe();
        opened.push(...fds);
        return fds;
      },
      close: (fd: number) => {
        closed.push(fd);
        if (!childEnds.includes(fd)) native.close(fd);
      },
      spawn: (spawnOptions: SpawnOptions) => {
        spawned.push(spawnOptions);
        if (options.spawnError) throw options.spawnError;
        childEnds = spawnOptions.fds.map((mapping) => mapping.parent);
        return 4321;
      },
      kill: (pid: number, signal: string) => {
        kills.push(`${pid}:${signal}`);
        return true;
      },
    };
    const waited: number[] = [];
    const runner = createExecRunner({
      native: fakeNative,
      waitForExit: (pid) => {
        waited.push(pid);
        return new Promise((resolve) => (resolveExit = resolve));
      },
      execTarget: (service) => {
        if (service !== 'web') throw new ControlError('E_NOT_RUNNING', `service ${service} is not running`);
        return TARGET;
      },
      killAfterMs: 50,
    });
    return { runner, spawned, kills, closed, opened, waited, childEnds: () => childEnds, exit: (exit: { code: number | null; signal: string | null }) => resolveExit(exit) };
  }

  it("plans crun exec as mosctl does (the service's user and cwd, env merged) and wires three pipes", async () => {
    const h = harness();
    const session = await h.runner('web', { argv: ['sh', '-c', 'cat'], env: { EXTRA: '1' } });
    expect(h.spawned).toHaveLength(1);
    const spawned = h.spawned[0]!;
    expect(spawned.file).toBe('/usr/bin/crun');
    expect(spawned.argv).toEqual(['/usr/bin/crun', '--root=/run/mos/crun', '--cgroup-manager=cgroupfs', 'exec', '--env=EXTRA=1', '--env=HOME=/root', '--env=PATH=/bin', '--cwd=/srv', '--user=70:71', 'mos-web', 'sh', '-c', 'cat']);
    expect(spawned.env).toEqual([]);
    expect(spawned.setsid).toBe(true);
    expect(spawned.fds.map((mapping) => mapping.child)).toEqual([0, 1, 2]);
    expect(h.waited).toEqual([4321]);
    expect(session.containerId).toBe('mos-web');
    // The child's ends were closed in the parent right after the spawn.
    const [stdinRead, stdoutWrite, stderrWrite] = h.childEnds();
    expect(h.closed).toEqual([stdinRead, stdoutWrite, stderrWrite]);

    // Playing the child: what it writes comes out of the session, what the session writes reaches it.
    const collect = (stream: NodeJS.ReadableStream) => new Promise<string>((resolve) => {
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => (text += chunk));
      stream.on('end', () => resolve(text));
    });
    const stdout = collect(session.stdout);
    const stderr = collect(session.stderr);
    const childStdin = new net.Socket({ fd: stdinRead!, readable: true, writable: false });
    const childInput = collect(childStdin);
    writeSync(stdoutWrite!, 'out\n');
    writeSync(stderrWrite!, 'err\n');
    closeSync(stdoutWrite!);
    closeSync(stderrWrite!);
    session.stdin.end('in\n');
    expect(await stdout).toBe('out\n');
    expect(await stderr).toBe('err\n');
    expect(await childInput).toBe('in\n');
    h.exit({ code: 0, signal: null });
    expect(await session.exited).toEqual({ code: 0, signal: null });
    // After its exit, terminating is a no-op.
    session.terminate();
    expect(h.kills).toEqual([]);
  });

  it('keeps -w and -u of the request over the service defaults', async () => {
    const h = harness();
    const session = await h.runner('web', { argv: ['id'], env: {}, cwd: '/tmp', user: { uid: 0, gid: 0 } });
    expect(h.spawned[0]!.argv).toEqual(['/usr/bin/crun', '--root=/run/mos/crun', '--cgroup-manager=cgroupfs', 'exec', '--cwd=/tmp', '--user=0:0', 'mos-web', 'id']);
    for (const fd of h.childEnds()) closeSync(fd);
    session.stdout.destroy();
    session.stderr.destroy();
    session.stdin.destroy();
  });

  it('terminates with SIGTERM to crun, then SIGKILL after the bound', async () => {
    const h = harness();
    const session = await h.runner('web', { argv: ['sleep', '100'], env: {} });
    session.terminate();
    expect(h.kills).toEqual(['4321:SIGTERM']);
    await waitFor(() => h.kills.length === 2, 'SIGKILL');
    expect(h.kills).toEqual(['4321:SIGTERM', '4321:SIGKILL']);
    h.exit({ code: null, signal: 'SIGKILL' });
    expect(await session.exited).toEqual({ code: null, signal: 'SIGKILL' });
    for (const fd of h.childEnds()) closeSync(fd);
    session.stdout.destroy();
    session.stderr.destroy();
    session.stdin.destroy();
  });

  it('no SIGKILL when crun exits after SIGTERM', async () => {
    const h = harness();
    const session = await h.runner('web', { argv: ['sleep', '100'], env: {} });
    session.terminate();
    h.exit({ code: 143, signal: null });
    await session.exited;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(h.kills).toEqual(['4321:SIGTERM']);
    for (const fd of h.childEnds()) closeSync(fd);
    session.stdout.destroy();
    session.stderr.destroy();
    session.stdin.destroy();
  });

  it("refuses what the target refuses or crun cannot be given, spawning nothing; a failed spawn closes every pipe", async () => {
    const h = harness();
    await expect(h.runner('db', { argv: ['true'], env: {} })).rejects.toMatchObject({ code: 'E_NOT_RUNNING' });
    await expect(h.runner('web', { argv: ['true'], env: {}, cwd: '/a/../b' })).rejects.toMatchObject({ code: 'E_BAD_REQUEST', message: expect.stringContaining('cannot exec in web: exec cwd must be an absolute, normalized path') });
    expect(h.spawned).toEqual([]);
    expect(h.opened).toEqual([]);

    const failing = harness({ spawnError: Object.assign(new Error('execve: ENOENT'), { syscall: 'execve' }) });
    await expect(failing.runner('web', { argv: ['true'], env: {} })).rejects.toMatchObject({ code: 'E_INTERNAL', message: 'cannot run /usr/bin/crun: execve: ENOENT' });
    expect(failing.opened).toHaveLength(6);
    expect([...failing.closed].sort()).toEqual([...failing.opened].sort());
    expect(failing.waited).toEqual([]);
  });
});
