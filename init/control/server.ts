/**
 * The control socket: serves `SupervisorApi` to `mosctl` over a root-only unix stream socket.
 *
 * The server runs inside PID 1, so no client may bring it down: every line is validated, every
 * API failure becomes an error response, and a client that disconnects, floods or stops reading
 * costs at most its own connection.
 *
 * A connection may also carry commands mos runs in containers for its client (`exec-run`, the
 * relay: `RelayedRun`): their output is paused rather than dropped when the client reads slowly,
 * and they are terminated when the connection goes.
 */
import { chmodSync, lstatSync, mkdirSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { dirname } from 'node:path';
import { ControlError, type ExecRunner, type ExecSession, type ExecSessionExit, type ExecTargetProvider, type SupervisorApi } from './api.ts';
import {
  BadRequestError,
  CONNECTION_ERROR_ID,
  ErrorCode,
  LineSplitter,
  MAX_EXEC_CHUNK_BYTES,
  MAX_LINE_BYTES,
  PROTOCOL_VERSION,
  READ_ONLY_COMMANDS,
  exitStatus,
  lineTooLongError,
  parseRequest,
  type ControlRequest,
  type ExecInputRequest,
  type ExecRunRequest,
  type LogsRequest,
  type ServerMessage,
} from './protocol.ts';
import type { Credentials } from '../../native/types.ts';

export interface ControlServerLogger {
  info(message: string): void;
  warn(message: string): void;
}

/**
 * The listening socket's syscalls (the `Native` port). Not net.Server: its listen() loads Node's
 * cluster module and with it child_process and dgram, ~2 MB of PID 1 for nothing used here.
 */
export interface ControlSockets {
  listenUnixStream(path: string, backlog: number): number;
  acceptConnection(fd: number): number | null;
  watchReadable(fd: number, onReadable: () => void): { close(): void };
  close(fd: number): void;
}

export interface ControlServerOptions {
  /** Filesystem path of the socket, e.g. `/run/mos/control.sock`. */
  path: string;
  api: SupervisorApi;
  sockets: ControlSockets;
  /** SO_PEERCRED of an accepted connection's fd (`native.peerCredentials`). */
  peerCredentials: (fd: number) => Credentials;
  /** Peers allowed to connect; default root and the uid mos runs as. */
  allowedUids?: number[];
  /**
   * Answers `exec-target` (`mosctl exec`), for root peers of this socket only. Without it the
   * request answers `E_UNSUPPORTED`. Never offered over `serveControlStream`: the answer is for a
   * crun on mos's own machine, and a stream's peer (a VM's host) is elsewhere (`E_NOT_LOCAL`).
   */
  execTarget?: ExecTargetProvider;
  /**
   * Runs `exec-run` requests (the relay: mos runs the command and streams it over the
   * connection), for root peers only. Without it the request answers `E_UNSUPPORTED`.
   */
  execRunner?: ExecRunner;
  logger?: ControlServerLogger;
}

/**
 * What a connection may do: `root` everything, `read-only` only the commands that change nothing
 * (`READ_ONLY_COMMANDS`); others answer `E_PERMISSION`.
 */
export type ControlAccess = 'root' | 'read-only';

export interface ControlStreamOptions {
  access: ControlAccess;
  logger?: ControlServerLogger;
  /** Appended to the `E_PERMISSION` message of a read-only connection, e.g. how to get more. */
  accessHint?: string;
  /** Runs `exec-run` requests when the access is `root` (see `ControlServerOptions`). */
  execRunner?: ExecRunner;
}

/**
 * Serves the protocol over any byte stream whose peer is already admitted, e.g. a virtio-serial
 * port (init/boot/virtio-control.ts). The stream's end ends the session, as a socket's would.
 */
export function serveControlStream(stream: Duplex, api: SupervisorApi, options: ControlStreamOptions): void {
  new ControlConnection(stream, api, options.logger, {
    access: options.access,
    accessHint: options.accessHint,
    local: null,
    execRunner: options.execRunner,
  }).serve();
}

export interface ControlServer {
  /** Stops accepting, drops open connections (ending their follow streams); idempotent. */
  close(): Promise<void>;
}

/**
 * A follower that lets this much output pile up unread is dropped, so a stuck client cannot make
 * PID 1 buffer a chatty service's logs without bound.
 */
const MAX_UNREAD_FOLLOW_BYTES = 4 * 1024 * 1024;

/**
 * Unsent bytes a connection may hold before the output of its relayed commands is paused (read no
 * more from their pipes, so they block in write) until it drains. Exec output is never dropped.
 */
const EXEC_OUTPUT_HIGH_WATER_BYTES = 256 * 1024;
/**
 * After a relayed command has exited, how long its output pipes may stay open (time the client
 * spends not reading does not count). A daemon it started may hold them forever; past this the
 * pipes are closed and `exec-exit` is sent.
 */
const EXEC_OUTPUT_GRACE_MS = 2_000;
/** Relayed commands one connection may run at once. */
const MAX_EXEC_RUNS_PER_CONNECTION = 8;

/** Connections waiting to be accepted; more wait in the kernel's SYN-less unix queue as EAGAIN. */
const LISTEN_BACKLOG = 64;
/** After accept4 fails (EMFILE, ENOMEM, …) the socket stays readable: pause instead of spinning. */
const ACCEPT_RETRY_MS = 100;

export async function startControlServer(options: ControlServerOptions): Promise<ControlServer> {
  const { path: socketPath, logger, sockets } = options;
  const allowedUids = new Set(options.allowedUids ?? defaultAllowedUids());

  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
  await removeStaleSocket(socketPath);
  const listenFd = listenRootOnly(sockets, socketPath);

  const connections = new Set<net.Socket>();
  const accept = (fd: number) => {
    // Checked on the raw fd, before Node wraps it: a refused peer gets one answer and nothing else.
    const { refusal, uid } = admit(fd, options.peerCredentials, allowedUids);
    // Half-open: a client may send its requests and shut its side; it still gets every answer.
    const socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
    if (refusal === null) {
      const local: LocalPeer = { uid, execTarget: options.execTarget };
      new ControlConnection(socket, options.api, logger, { access: 'root', local, execRunner: options.execRunner }).serve();
    } else {
      refuse(socket, refusal, logger);
    }
  };

  let watch: { close(): void } | null = null;
  let retry: NodeJS.Timeout | null = null;
  let closed = false;
  const onReadable = () => {
    for (;;) {
      let fd: number | null;
      try {
        fd = sockets.acceptConnection(listenFd);
      } catch (error) {
        // Accept failures must not take PID 1 down, nor spin it: try again in a moment.
        logger?.warn(`control socket ${socketPath}: ${errorMessage(error)}`);
        watch?.close();
        watch = null;
        retry = setTimeout(() => {
          retry = null;
          if (!closed) watch = sockets.watchReadable(listenFd, onReadable);
        }, ACCEPT_RETRY_MS);
        return;
      }
      if (fd === null) return;
      try {
        accept(fd);
      } catch (error) {
        logger?.warn(`control socket ${socketPath}: ${errorMessage(error)}`);
        sockets.close(fd);
      }
    }
  };
  watch = sockets.watchReadable(listenFd, onReadable);
  logger?.info(`control socket listening on ${socketPath}`);

  return {
    close() {
      if (!closed) {
        closed = true;
        watch?.close();
        if (retry) clearTimeout(retry);
        sockets.close(listenFd);
        // Like net.Server: the path goes with the socket (the next start finds nothing stale).
        try {
          unlinkSync(socketPath);
        } catch {
          // Already gone, or replaced by someone else's file we should not touch anyway.
        }
        for (const socket of connections) socket.destroy();
      }
      return Promise.resolve();
    },
  };
}

function defaultAllowedUids(): number[] {
  const ownUid = process.getuid?.();
  return ownUid === undefined ? [0] : [0, ownUid];
}

/**
 * A socket file left by a previous run blocks bind(2). Remove it only when it is a socket nobody
 * answers on: anything else at the path is someone's data, and a live socket is another server.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stats;
  try {
    stats = lstatSync(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!stats.isSocket()) {
    throw new Error(`control socket path ${socketPath} exists and is not a socket; refusing to replace it`);
  }
  if (await isServing(socketPath)) {
    throw new Error(`control socket ${socketPath} is in use by another process`);
  }
  unlinkSync(socketPath);
}

function isServing(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** sun_path holds 108 bytes with the terminating NUL. */
const SUN_PATH_MAX = 107;

function listenRootOnly(sockets: ControlSockets, socketPath: string): number {
  // The socket appears under its name only once it listens (and has its mode): bound under a
  // temporary name and renamed, so a client that sees the file never meets ECONNREFUSED from
  // the instant between bind(2) and listen(2). A path too long for the suffix is bound directly.
  const staging = Buffer.byteLength(`${socketPath}.new`) <= SUN_PATH_MAX ? `${socketPath}.new` : socketPath;
  rmSync(staging === socketPath ? `${socketPath}.new` : staging, { force: true });
  // bind(2) creates the socket file with 0777 & ~umask: the temporary umask makes it 0600 from
  // its first moment instead of after a chmod.
  const previousUmask = process.umask(0o177);
  let fd: number;
  try {
    fd = sockets.listenUnixStream(staging, LISTEN_BACKLOG);
  } finally {
    process.umask(previousUmask);
  }
  try {
    // A default ACL on the directory overrides the umask; the mode must be exact regardless.
    chmodSync(staging, 0o600);
    if (staging !== socketPath) renameSync(staging, socketPath);
  } catch (error) {
    sockets.close(fd);
    rmSync(staging, { force: true });
    throw error;
  }
  return fd;
}

/** Why a peer may not use the socket (SO_PEERCRED's uid), or null when it may; and its uid. */
function admit(fd: number, peerCredentials: (fd: number) => Credentials, allowedUids: ReadonlySet<number>): { refusal: string | null; uid: number } {
  try {
    const peer = peerCredentials(fd);
    if (allowedUids.has(peer.uid)) return { refusal: null, uid: peer.uid };
    return { refusal: `permission denied: the control socket is root-only (peer uid ${peer.uid})`, uid: peer.uid };
  } catch (error) {
    return { refusal: `permission denied: cannot read the peer's credentials (${errorMessage(error)})`, uid: -1 };
  }
}

/** A peer on mos's own unix socket: its uid (SO_PEERCRED) and what only such a peer may ask. */
interface LocalPeer {
  uid: number;
  execTarget: ExecTargetProvider | undefined;
}

/** Who a connection's peer is, and so what it may do. */
interface ConnectionSettings {
  access: ControlAccess;
  accessHint?: string | undefined;
  /** Set for connections on mos's own unix socket; null for streams (a virtio-serial port). */
  local: LocalPeer | null;
  execRunner: ExecRunner | undefined;
}

/** A refused peer gets one `E_PERMISSION` response and is disconnected. */
function refuse(socket: net.Socket, refusal: string, logger: ControlServerLogger | undefined): void {
  logger?.warn(`control socket: refused a connection: ${refusal}`);
  socket.on('error', () => {});
  const response: ServerMessage = {
    v: PROTOCOL_VERSION,
    id: CONNECTION_ERROR_ID,
    ok: false,
    error: { code: ErrorCode.Permission, message: refusal },
  };
  endAfterFlush(socket, `${JSON.stringify(response)}\n`);
}

/** Ends our side after the last bytes are out, then closes fully even if the peer never does. */
function endAfterFlush(socket: Duplex, lastWords?: string): void {
  if (lastWords !== undefined) socket.write(lastWords);
  socket.end(() => socket.destroy());
}

/** One admitted client: reads its requests and answers them strictly in arrival order. */
class ControlConnection {
  private readonly lines = new LineSplitter(MAX_LINE_BYTES);
  /** Each request's handling is chained here, so answers leave in the order requests came. */
  private queue: Promise<void> = Promise.resolve();
  private readonly unsubscribers = new Set<() => void>();
  /** Set once we have decided to end the connection; later input is ignored. */
  private ending = false;
  /** Relayed commands (`exec-run`) still running, by their request id. */
  private readonly runs = new Map<number, RelayedRun>();
  /** Set once the client has ended its side or the connection has closed: no new commands. */
  private departed = false;
  private readonly access: ControlAccess;
  private readonly accessHint: string | undefined;
  private readonly local: LocalPeer | null;

  constructor(
    private readonly socket: Duplex,
    private readonly api: SupervisorApi,
    private readonly logger: ControlServerLogger | undefined,
    private readonly settings: ConnectionSettings,
  ) {
    this.access = settings.access;
    this.accessHint = settings.accessHint;
    this.local = settings.local;
  }

  serve(): void {
    const { socket } = this;
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    // The client is done sending: answer what it sent, then end. That includes a follower, since
    // on a unix socket a client that has gone away completely looks exactly the same until we
    // write, and a quiet service might never give us a reason to.
    // Relayed commands end with it: a virtio-serial port's host leaving looks like this 'end'
    // (the port cannot tell a half-close from a disconnect), and nobody can feed their stdin any
    // more.
    socket.on('end', () => {
      this.abandonRuns();
      this.enqueue(() => endAfterFlush(socket));
    });
    // Resets and broken pipes are how clients often leave; 'close' follows and cleans up.
    socket.on('error', () => {});
    socket.on('close', () => {
      for (const unsubscribe of this.unsubscribers) unsubscribe();
      this.unsubscribers.clear();
      this.abandonRuns();
    });
  }

  /** The client is gone: its commands are terminated and nothing more is relayed. */
  private abandonRuns(): void {
    this.departed = true;
    for (const run of [...this.runs.values()]) run.abandon();
    this.runs.clear();
  }

  private receive(chunk: Buffer): void {
    if (this.ending) return;
    const { lines, overflow } = this.lines.push(chunk);
    for (const line of lines) {
      if (line.trim() !== '') this.enqueue(() => this.answer(line));
    }
    if (overflow) {
      this.ending = true;
      this.enqueue(() => {
        this.sendError(CONNECTION_ERROR_ID, lineTooLongError());
        endAfterFlush(this.socket);
      });
    }
  }

  private enqueue(task: () => void | Promise<void>): void {
    this.queue = this.queue.then(task).catch((error: unknown) => {
      this.logger?.warn(`control connection: ${errorMessage(error)}`);
      this.socket.destroy();
    });
  }

  private async answer(line: string): Promise<void> {
    const request = parseRequest(line);
    if (request instanceof BadRequestError) {
      this.sendError(request.requestId, request);
      return;
    }
    if (this.access === 'read-only' && !READ_ONLY_COMMANDS.has(request.cmd)) {
      const hint = this.accessHint ? `; ${this.accessHint}` : '';
      this.sendError(request.id, new ControlError(ErrorCode.Permission, `permission denied: ${request.cmd} needs root access; this connection is read-only${hint}`));
      return;
    }
    try {
      if (request.cmd === 'logs' && request.follow) {
        this.follow(request);
      } else if (request.cmd === 'exec-run') {
        await this.execRun(request);
      } else {
        const result =
          request.cmd === 'exec-target' ? await this.execTarget(request.service)
          : request.cmd === 'exec-input' ? await this.execInput(request)
          : await execute(this.api, request);
        this.send({ v: PROTOCOL_VERSION, id: request.id, ok: true, result });
      }
    } catch (error) {
      this.sendError(request.id, this.asControlError(request, error));
    }
  }

  /**
   * `exec-target`: root peers of mos's own socket only. The answer lets the peer run crun in a
   * container's namespaces and carries the container's environment (secrets, often), so it needs
   * root even where the socket also admits mos's own non-root uid (host mode), and it is refused
   * over a stream, whose peer is not on this machine (`E_NOT_LOCAL`: mosctl then asks mos to run
   * the command, `exec-run`).
   */
  private execTarget(service: string): ReturnType<ExecTargetProvider> {
    if (this.local === null) {
      throw new ControlError(ErrorCode.NotLocal, "exec-target is served only on mos's own control socket, for a crun on mos's machine; over this connection mos runs the command itself (exec-run)");
    }
    if (this.local.uid !== 0) throw new ControlError(ErrorCode.Permission, `permission denied: exec needs root (peer uid ${this.local.uid})`);
    if (!this.local.execTarget) throw new ControlError(ErrorCode.Unsupported, `exec is not available: this mos (${this.api.info().mode} mode) runs no containers`);
    return this.local.execTarget(service);
  }

  /**
   * `exec-run`: mos runs the command (crun exec, through the runner) and relays it over this
   * connection. Root only: a root stream, or a root peer of the unix socket. The answer goes out
   * before the first output event, since the streams are read only once it is sent.
   */
  private async execRun(request: ExecRunRequest): Promise<void> {
    if (this.local !== null && this.local.uid !== 0) throw new ControlError(ErrorCode.Permission, `permission denied: exec needs root (peer uid ${this.local.uid})`);
    const runner = this.settings.execRunner;
    if (!runner) throw new ControlError(ErrorCode.Unsupported, `exec is not available: this mos (${this.api.info().mode} mode) runs no containers`);
    if (this.runs.has(request.id)) throw new ControlError(ErrorCode.BadRequest, `a command with id ${request.id} still runs on this connection: use another id`);
    if (this.runs.size >= MAX_EXEC_RUNS_PER_CONNECTION) {
      throw new ControlError(ErrorCode.BadRequest, `at most ${MAX_EXEC_RUNS_PER_CONNECTION} commands may run at once on one connection`);
    }
    // The client may have left while this request waited its turn.
    if (this.departed) return;
    const session = await runner(request.service, {
      argv: request.argv,
      env: request.env,
      ...(request.cwd !== undefined ? { cwd: request.cwd } : {}),
      ...(request.user !== undefined ? { user: request.user } : {}),
    });
    const run = new RelayedRun(request.id, session, this.socket, (message) => this.send(message), () => this.runs.delete(request.id));
    if (this.departed) {
      // ... or while the command was being started.
      run.abandon();
      return;
    }
    this.logger?.info(`control: exec in ${request.service} (${session.containerId}): ${request.argv[0]} started (request ${request.id})`);
    this.send({ v: PROTOCOL_VERSION, id: request.id, ok: true, result: { service: request.service, containerId: session.containerId } });
    this.runs.set(request.id, run);
    run.start();
  }

  /** `exec-input`: bytes for (or the end of) a relayed command's stdin. */
  private async execInput(request: ExecInputRequest): Promise<null> {
    const run = this.runs.get(request.run);
    if (!run) throw new ControlError(ErrorCode.BadRequest, `no command runs with id ${request.run} on this connection (unknown, or it has exited)`);
    await run.input(request.data !== undefined ? Buffer.from(request.data, 'base64') : null, request.eof === true);
    return null;
  }

  private follow(request: LogsRequest): void {
    // The client may have left while this request waited its turn.
    if (this.socket.destroyed) return;
    const backlog = this.api.logs(request.service, request.n);
    // followLogs reports only lines newer than the backlog, and none before this tick ends, so
    // the response below reaches the client ahead of every event.
    const unsubscribe = this.api.followLogs(request.service, (line) => {
      if (this.socket.writableLength > MAX_UNREAD_FOLLOW_BYTES) {
        this.logger?.warn(`control socket: dropping a log follower of ${request.service} that stopped reading`);
        this.socket.destroy();
        return;
      }
      this.send({ v: PROTOCOL_VERSION, id: request.id, event: 'log', line });
    });
    this.unsubscribers.add(unsubscribe);
    this.send({ v: PROTOCOL_VERSION, id: request.id, ok: true, result: { lines: backlog } });
  }

  private asControlError(request: ControlRequest, error: unknown): ControlError {
    if (error instanceof ControlError) return error;
    this.logger?.warn(`control request ${request.cmd} failed: ${errorMessage(error)}`);
    return new ControlError(ErrorCode.Internal, errorMessage(error));
  }

  private sendError(id: number, error: ControlError): void {
    this.send({ v: PROTOCOL_VERSION, id, ok: false, error: { code: error.code, message: error.message } });
  }

  private send(message: ServerMessage): void {
    if (this.socket.writable) this.socket.write(`${JSON.stringify(message)}\n`);
  }
}

/**
 * One relayed command (`exec-run`) on a connection: its output, read from its pipes, goes out as
 * `exec-output` events in the order it was read; once crun has exited and both pipes have ended
 * (or the grace after the exit is over), `exec-exit` follows, as the run's last message.
 */
class RelayedRun {
  /** Output pipes not ended yet. */
  private readonly open = new Set<'stdout' | 'stderr'>(['stdout', 'stderr']);
  private exit: ExecSessionExit | null = null;
  /** Reading paused because the connection holds too much unsent output. */
  private paused = false;
  private graceLeftMs = EXEC_OUTPUT_GRACE_MS;
  private graceTimer: NodeJS.Timeout | null = null;
  private graceSince = 0;
  private stdinClosed = false;
  /** Exited and reported, or abandoned: nothing more is sent. */
  private over = false;

  constructor(
    private readonly id: number,
    private readonly session: ExecSession,
    private readonly socket: Duplex,
    private readonly send: (message: ServerMessage) => void,
    private readonly onOver: () => void,
  ) {}

  start(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      const readable = this.session[stream];
      const ended = () => {
        this.open.delete(stream);
        this.settle();
      };
      readable.on('data', (chunk: Buffer) => this.output(stream, chunk));
      readable.once('end', ended);
      // Destroyed (or failed) without an end: nothing more will come either.
      readable.once('close', ended);
      readable.on('error', () => {});
    }
    // EPIPE once the command has closed its stdin or ended: what was not read is lost, as in a pipe.
    this.session.stdin.on('error', () => {});
    const onExit = (exit: ExecSessionExit) => {
      this.exit = exit;
      this.startGraceClock();
      this.settle();
    };
    // `exited` never rejects (ExecSession); were a runner's to, PID 1 must not see it unhandled.
    this.session.exited.then(onExit, () => onExit({ code: null, signal: null }));
  }

  /** Bytes for the command's stdin; resolves once they are written or buffered below its mark. */
  async input(data: Buffer | null, eof: boolean): Promise<void> {
    if (this.stdinClosed) {
      if (data !== null && data.length > 0) throw new ControlError(ErrorCode.BadRequest, `the stdin of command ${this.id} is closed already`);
      return;
    }
    if (eof) this.stdinClosed = true;
    const { stdin } = this.session;
    // The command is over (its exit is on its way): nothing reads stdin any more.
    if (this.over || stdin.destroyed || !stdin.writable) return;
    if (data !== null && data.length > 0 && !stdin.write(data)) await settled(stdin);
    if (eof && !stdin.destroyed) stdin.end();
  }

  /** The client is gone: terminate the command, close its pipes, report nothing. */
  abandon(): void {
    if (this.over) return;
    this.over = true;
    this.stopTimers();
    this.session.terminate();
    this.release();
    this.onOver();
  }

  private output(stream: 'stdout' | 'stderr', chunk: Buffer): void {
    if (this.over) return;
    for (let offset = 0; offset < chunk.length; offset += MAX_EXEC_CHUNK_BYTES) {
      this.send({ v: PROTOCOL_VERSION, id: this.id, event: 'exec-output', stream, data: chunk.subarray(offset, offset + MAX_EXEC_CHUNK_BYTES).toString('base64') });
    }
    // Over the mark, the connection has asked for a 'drain' (writableNeedDrain): it will come.
    if (!this.paused && this.socket.writableLength > EXEC_OUTPUT_HIGH_WATER_BYTES && this.socket.writableNeedDrain) this.pause();
  }

  private pause(): void {
    this.paused = true;
    this.session.stdout.pause();
    this.session.stderr.pause();
    this.stopGraceClock();
    this.socket.once('drain', this.resume);
  }

  private readonly resume = (): void => {
    if (this.over || !this.paused) return;
    this.paused = false;
    this.session.stdout.resume();
    this.session.stderr.resume();
    this.startGraceClock();
  };

  /** After the exit, while output flows: a daemon holding the pipes must not hold the run. */
  private startGraceClock(): void {
    if (this.exit === null || this.paused || this.over || this.graceTimer !== null || this.open.size === 0) return;
    this.graceSince = performance.now();
    this.graceTimer = setTimeout(() => {
      this.graceTimer = null;
      this.finish();
    }, this.graceLeftMs);
  }

  private stopGraceClock(): void {
    if (this.graceTimer === null) return;
    clearTimeout(this.graceTimer);
    this.graceTimer = null;
    this.graceLeftMs = Math.max(0, this.graceLeftMs - (performance.now() - this.graceSince));
  }

  private stopTimers(): void {
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    this.socket.off('drain', this.resume);
  }

  private settle(): void {
    if (this.exit !== null && this.open.size === 0) this.finish();
  }

  private finish(): void {
    if (this.over || this.exit === null) return;
    this.over = true;
    this.stopTimers();
    this.release();
    const { code, signal } = this.exit;
    this.send({ v: PROTOCOL_VERSION, id: this.id, event: 'exec-exit', code, signal, status: exitStatus(code, signal) });
    this.onOver();
  }

  /** Closes the parent's ends of the command's pipes. */
  private release(): void {
    this.session.stdout.destroy();
    this.session.stderr.destroy();
    this.session.stdin.destroy();
  }
}

/** Resolves when a writable may take more (drain), or never will (close, error). */
function settled(stream: NodeJS.WritableStream & { destroyed: boolean }): Promise<void> {
  if (stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      stream.off('error', done);
      resolve();
    };
    stream.once('drain', done);
    stream.once('close', done);
    stream.once('error', done);
  });
}

async function execute(api: SupervisorApi, request: ControlRequest): Promise<unknown> {
  switch (request.cmd) {
    case 'info':
      return api.info();
    case 'list':
      return api.list();
    case 'status':
      return api.status(request.service);
    case 'logs':
      return { lines: api.logs(request.service, request.n) };
    case 'start':
      return api.start(request.service);
    case 'stop':
      return api.stop(request.service);
    case 'restart':
      return api.restart(request.service);
    case 'analyze':
      return api.timeline ? api.timeline() : null;
    case 'poweroff':
    case 'reboot':
    case 'halt':
      if (!api.requestShutdown) {
        throw new ControlError(ErrorCode.Unsupported, `${request.cmd} needs mos to be PID 1 (this is ${api.info().mode} mode)`);
      }
      return api.requestShutdown(request.cmd);
    case 'exec-target':
    case 'exec-run':
    case 'exec-input':
      // Answered by the connection (ControlConnection.execTarget, …): they depend on the peer.
      throw new ControlError(ErrorCode.Internal, `${request.cmd} reached the shared command table`);
    case 'provision':
      if (!api.provision) {
        throw new ControlError(ErrorCode.Unsupported, `provision needs mos to be PID 1 (this is ${api.info().mode} mode)`);
      }
      return api.provision({
        ...(request.ca !== undefined ? { ca: request.ca } : {}),
        ...(request.pcrs !== undefined ? { pcrs: request.pcrs } : {}),
        ...(request.reset !== undefined ? { reset: request.reset } : {}),
      });
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
