/**
 * The control socket: serves `SupervisorApi` to `mosctl` over a root-only unix stream socket.
 *
 * The server runs inside PID 1, so no client may bring it down: every line is validated, every
 * API failure becomes an error response, and a client that disconnects, floods or stops reading
 * costs at most its own connection.
 */
import { chmodSync, lstatSync, mkdirSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { dirname } from 'node:path';
import { ControlError, type ExecTargetProvider, type SupervisorApi } from './api.ts';
import {
  BadRequestError,
  CONNECTION_ERROR_ID,
  ErrorCode,
  LineSplitter,
  MAX_LINE_BYTES,
  PROTOCOL_VERSION,
  READ_ONLY_COMMANDS,
  lineTooLongError,
  parseRequest,
  type ControlRequest,
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
   * crun on mos's own machine, and a stream's peer (a VM's host) is elsewhere.
   */
  execTarget?: ExecTargetProvider;
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
}

/**
 * Serves the protocol over any byte stream whose peer is already admitted, e.g. a virtio-serial
 * port (init/boot/virtio-control.ts). The stream's end ends the session, as a socket's would.
 */
export function serveControlStream(stream: Duplex, api: SupervisorApi, options: ControlStreamOptions): void {
  new ControlConnection(stream, api, options.logger, options.access, options.accessHint).serve();
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
      new ControlConnection(socket, options.api, logger, 'root', undefined, local).serve();
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

  constructor(
    private readonly socket: Duplex,
    private readonly api: SupervisorApi,
    private readonly logger: ControlServerLogger | undefined,
    private readonly access: ControlAccess = 'root',
    private readonly accessHint?: string,
    /** Set for connections on mos's own unix socket; null for streams (a virtio-serial port). */
    private readonly local: LocalPeer | null = null,
  ) {}

  serve(): void {
    const { socket } = this;
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    // The client is done sending: answer what it sent, then end. That includes a follower, since
    // on a unix socket a client that has gone away completely looks exactly the same until we
    // write, and a quiet service might never give us a reason to.
    socket.on('end', () => this.enqueue(() => endAfterFlush(socket)));
    // Resets and broken pipes are how clients often leave; 'close' follows and cleans up.
    socket.on('error', () => {});
    socket.on('close', () => {
      for (const unsubscribe of this.unsubscribers) unsubscribe();
      this.unsubscribers.clear();
    });
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
      } else {
        const result = request.cmd === 'exec-target' ? await this.execTarget(request.service) : await execute(this.api, request);
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
   * over a stream, whose peer is not on this machine.
   */
  private execTarget(service: string): ReturnType<ExecTargetProvider> {
    if (this.local === null) {
      throw new ControlError(ErrorCode.Unsupported, "exec-target is served only on mos's own control socket: the command runs on mos's machine, with crun there");
    }
    if (this.local.uid !== 0) throw new ControlError(ErrorCode.Permission, `permission denied: exec needs root (peer uid ${this.local.uid})`);
    if (!this.local.execTarget) throw new ControlError(ErrorCode.Unsupported, `exec is not available: this mos (${this.api.info().mode} mode) runs no containers`);
    return this.local.execTarget(service);
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
      // Answered by the connection (ControlConnection.execTarget): it depends on the peer.
      throw new ControlError(ErrorCode.Internal, 'exec-target reached the shared command table');
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
