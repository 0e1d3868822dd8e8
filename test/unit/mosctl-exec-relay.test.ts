/**
 * `mosctl exec` where mos is elsewhere: `exec-target` answers `E_NOT_LOCAL` and mosctl falls back
 * to `exec-run` on the same connection, forwarding its stdin in chunks, writing the command's
 * output to its stdout and stderr, and exiting with the command's status. The server is the real
 * control server serving each connection of a unix socket as a stream (as a VM's host socket
 * reaches the virtio-serial port), with a fake runner in place of crun.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ControlError, type ExecRunner, type ExecRunSpec, type ExecSession, type ExecSessionExit, type SupervisorApi } from '../../init/control/api.ts';
import { MAX_EXEC_CHUNK_BYTES } from '../../init/control/protocol.ts';
import { serveControlStream, type ControlAccess } from '../../init/control/server.ts';
import { main, type CliIo } from '../../mosctl/main.ts';
import type { CrunCommand } from '../../services/crun.ts';
import { makeStatus } from '../helpers/specs.ts';

const api: SupervisorApi = {
  info: () => ({ mode: 'pid1', pid: 1, startedAt: 0, health: 'ok', reason: null, configPath: null }),
  list: () => [],
  status: (name) => {
    if (name !== 'web') throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
    return makeStatus({ name, state: 'running', pid: 9 });
  },
  start: () => Promise.reject(new Error('unused')),
  stop: () => Promise.reject(new Error('unused')),
  restart: () => Promise.reject(new Error('unused')),
  logs: () => [],
  followLogs: () => () => {},
};

/**
 * A pretend command: `script` gets its stdin (as it arrives, then its end) and writes output;
 * it exits when `script` says.
 */
interface Script {
  onInput?(data: Buffer, session: Scripted): void;
  onEnd?(session: Scripted): void;
  start?(session: Scripted): void;
}

class Scripted implements ExecSession {
  readonly containerId = 'mos-web';
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly stdin = new PassThrough();
  readonly exited: Promise<ExecSessionExit>;
  terminated = 0;
  input = Buffer.alloc(0);
  private resolveExit!: (exit: ExecSessionExit) => void;

  constructor(script: Script) {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.stdin.on('data', (data: Buffer) => {
      this.input = Buffer.concat([this.input, data]);
      script.onInput?.(data, this);
    });
    this.stdin.on('end', () => script.onEnd?.(this));
    queueMicrotask(() => script.start?.(this));
  }

  terminate(): void {
    this.terminated++;
  }

  exit(exit: ExecSessionExit): void {
    this.stdout.end();
    this.stderr.end();
    this.resolveExit(exit);
  }
}

describe('mosctl exec relayed by mos (E_NOT_LOCAL)', () => {
  let dir: string;
  let socketPath: string;
  let server: net.Server | undefined;
  let asked: { service: string; spec: ExecRunSpec }[];
  let sessions: Scripted[];
  let script: Script;
  let refusal: ControlError | null;
  /** exec-input lines the server received: their decoded sizes and eofs. */
  let inputs: { bytes: number; eof: boolean }[];
  let connections: net.Socket[];
  let output: { out: string; err: string; stdout: Buffer; stderr: Buffer };
  let ran: CrunCommand[];

  const runner: ExecRunner = async (service, spec) => {
    asked.push({ service, spec });
    if (refusal) throw refusal;
    const session = new Scripted(script);
    sessions.push(session);
    return session;
  };

  /** A unix socket whose connections are served as streams, as QEMU's host socket is. */
  async function serve(access: ControlAccess = 'root'): Promise<void> {
    server = net.createServer({ allowHalfOpen: true }, (socket) => {
      connections.push(socket);
      let partial = '';
      socket.on('data', (chunk: Buffer) => {
        const lines = (partial + chunk.toString()).split('\n');
        partial = lines.pop()!;
        for (const line of lines) {
          const request = JSON.parse(line);
          if (request.cmd === 'exec-input') inputs.push({ bytes: request.data ? Buffer.from(request.data, 'base64').length : 0, eof: request.eof === true });
        }
      });
      serveControlStream(socket, api, { access, execRunner: runner, accessHint: 'boot with mos.debug_control=1' });
    });
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
  }

  function io(stdin: NodeJS.ReadableStream, terminals = { stdin: false, stdout: false }): CliIo {
    return {
      out: (text) => (output.out += text),
      err: (text) => (output.err += text),
      isTTY: terminals.stdout,
      stdinIsTTY: terminals.stdin,
      runCommand: async (command) => {
        ran.push(command);
        return { code: 0, signal: null };
      },
      relayStdio: { stdin, stdout: sink('stdout'), stderr: sink('stderr') },
    };
  }

  /** mosctl's stdout or stderr: collects into `output`. */
  function sink(name: 'stdout' | 'stderr'): Writable {
    return new Writable({
      write(chunk: Buffer, _encoding, done) {
        output[name] = Buffer.concat([output[name], chunk]);
        done();
      },
    });
  }

  /** stdin that ends after `text` (or never, with null). */
  function stdinOf(data: string | Buffer | null): PassThrough {
    const stream = new PassThrough();
    if (data !== null) stream.end(data);
    return stream;
  }

  const mosctl = (args: string[], cliIo: CliIo) => main(['node', 'mosctl', '--socket', socketPath, ...args], cliIo);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mos-mosctl-relay-'));
    socketPath = join(dir, 'host.sock');
    asked = [];
    sessions = [];
    inputs = [];
    connections = [];
    refusal = null;
    ran = [];
    script = {};
    output = { out: '', err: '', stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
  });

  afterEach(async () => {
    for (const socket of connections) socket.destroy();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it("runs the command through mos: stdin in, stdout and stderr out, the command's status as mosctl's", async () => {
    await serve();
    // `read line; echo "got [$line]"; echo oops >&2; exit 3`
    let line = '';
    script = {
      onInput: (data, session) => {
        line += data.toString();
        if (line.endsWith('\n')) {
          session.stdout.write(`got [${line.trim()}]\n`);
          session.stderr.write('oops\n');
          session.exit({ code: 3, signal: null });
        }
      },
    };
    expect(await mosctl(['exec', 'web', '--', 'sh', '-c', 'read line'], io(stdinOf('hello\n')))).toBe(3);
    expect(output.stdout.toString()).toBe('got [hello]\n');
    expect(output.stderr.toString()).toBe('oops\n');
    expect(output.out + output.err).toBe('');
    // mos planned it: the service's user and cwd are its defaults, nothing was run locally.
    expect(asked).toEqual([{ service: 'web', spec: { argv: ['sh', '-c', 'read line'], env: {} } }]);
    expect(ran).toEqual([]);
    // One connection for both requests: a virtio-serial port carries one at a time.
    expect(connections).toHaveLength(1);
  });

  it('passes -e, -w and -u on to mos; exits 128+n for a signal', async () => {
    await serve();
    script = { start: (session) => session.exit({ code: null, signal: 'SIGKILL' }) };
    expect(await mosctl(['exec', '-e', 'A=1', '-w', '/tmp', '-u', '7:8', 'web', '--', 'env'], io(stdinOf('')))).toBe(137);
    expect(asked[0]!.spec).toEqual({ argv: ['env'], env: { A: '1' }, cwd: '/tmp', user: { uid: 7, gid: 8 } });
  });

  it('forwards stdin in chunks of at most 32 KiB, then its end', async () => {
    await serve();
    const data = Buffer.alloc(200_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    script = {
      onEnd: (session) => {
        session.stdout.write(session.input);
        session.exit({ code: 0, signal: null });
      },
    };
    expect(await mosctl(['exec', 'web', '--', 'cat'], io(stdinOf(data)))).toBe(0);
    expect(sessions[0]!.input.equals(data)).toBe(true);
    expect(output.stdout.equals(data)).toBe(true);
    expect(Math.max(...inputs.map((input) => input.bytes))).toBeLessThanOrEqual(MAX_EXEC_CHUNK_BYTES);
    expect(inputs.filter((input) => input.eof)).toHaveLength(1);
    expect(inputs.at(-1)!.eof).toBe(true);
  });

  it("stops reading from mos while its stdout cannot take more, and mos then pauses the command's output", async () => {
    await serve();
    const total = 4 * 1024 * 1024;
    let written = 0;
    script = {
      start: (session) => {
        const writeMore = () => {
          while (written < total) {
            const chunk = Buffer.alloc(64 * 1024, written / (64 * 1024));
            written += chunk.length;
            if (!session.stdout.write(chunk)) return;
          }
          session.exit({ code: 0, signal: null });
        };
        session.stdout.on('drain', writeMore);
        writeMore();
      },
    };
    // mosctl's stdout takes nothing until released.
    let held: (() => void)[] | null = [];
    const received: Buffer[] = [];
    const slow = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _encoding, done) {
        received.push(chunk);
        if (held) held.push(done);
        else done();
      },
    });
    const cliIo = io(stdinOf(''));
    cliIo.relayStdio = { ...cliIo.relayStdio!, stdout: slow };
    const exitCode = mosctl(['exec', 'web', '--', 'cat', '/big'], cliIo);
    const deadline = Date.now() + 5_000;
    while (sessions.length === 0 || sessions[0]!.stdout.readableFlowing !== false) {
      if (Date.now() > deadline) throw new Error('mos never paused the output');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // Everything stalls (mosctl's stdout, mosctl reading, mos reading, the command writing)
    // well before the end.
    for (let before = -1; before !== written; ) {
      before = written;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(written).toBeLessThan(total);
    const release = held;
    held = null;
    for (const done of release) done();
    expect(await exitCode).toBe(0);
    const expected = Buffer.concat(Array.from({ length: total / (64 * 1024) }, (_, i) => Buffer.alloc(64 * 1024, i)));
    expect(Buffer.concat(received).equals(expected)).toBe(true);
  });

  it('returns when the command exits, whether or not stdin has ended, and lets go of stdin', async () => {
    await serve();
    script = { start: (session) => session.exit({ code: 0, signal: null }) };
    const stdin = stdinOf(null);
    expect(await mosctl(['exec', 'web', '--', 'true'], io(stdin))).toBe(0);
    expect(stdin.listenerCount('data')).toBe(0);
    expect(stdin.isPaused()).toBe(true);
  });

  it('refuses --tty over a relay as a usage error, running nothing; without -t there is no terminal', async () => {
    await serve();
    expect(await mosctl(['exec', '-t', 'web', '--', 'sh'], io(stdinOf(''), { stdin: true, stdout: true }))).toBe(64);
    expect(output.err).toContain('mosctl: --tty is not available here: mos is on another machine and relays the command over plain pipes, without a terminal');
    expect(asked).toEqual([]);
    // Terminals on both sides would give one locally; relayed, the command just runs without.
    script = { start: (session) => session.exit({ code: 0, signal: null }) };
    expect(await mosctl(['exec', 'web', '--', 'sh'], io(stdinOf(''), { stdin: true, stdout: true }))).toBe(0);
    expect(asked).toHaveLength(1);
  });

  it("reports mos's refusals with mosctl's exit codes", async () => {
    await serve();
    refusal = new ControlError('E_NOT_RUNNING', 'service web is not running (stopped): there is no container to run a command in');
    expect(await mosctl(['exec', 'web', '--', 'true'], io(stdinOf('')))).toBe(1);
    expect(output.err).toBe('mosctl: service web is not running (stopped): there is no container to run a command in\n');
  });

  it('is refused on a read-only port (exit 4), before any fallback', async () => {
    await serve('read-only');
    expect(await mosctl(['exec', 'web', '--', 'true'], io(stdinOf('')))).toBe(4);
    expect(output.err).toContain('permission denied: exec-target needs root access; this connection is read-only; boot with mos.debug_control=1');
    expect(asked).toEqual([]);
  });

  it('exits 69 when the connection is lost while the command runs, and mos terminates it', async () => {
    await serve();
    script = { start: () => setTimeout(() => connections[0]!.destroy(), 20) };
    expect(await mosctl(['exec', 'web', '--', 'sleep', '100'], io(stdinOf(null)))).toBe(69);
    expect(output.err).toContain('lost the connection to mos while the command ran');
    const deadline = Date.now() + 5_000;
    while (sessions[0]!.terminated === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(sessions[0]!.terminated).toBe(1);
  });
});
