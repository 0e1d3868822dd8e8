/** A connection to mos's control socket: sends requests, matches responses to them by id. */
import net from 'node:net';
import * as v from 'valibot';
import { ControlError } from '../init/control/api.ts';
import {
  CONNECTION_ERROR_ID,
  ErrorCode,
  LineSplitter,
  PROTOCOL_VERSION,
  ServerMessageSchema,
  type CommandResults,
  type ControlCommand,
  type ExecExitEvent,
  type ResultOf,
} from '../init/control/protocol.ts';
import type { LogLine } from '../init/log/types.ts';

export type LogsCommand = Extract<ControlCommand, { cmd: 'logs' }>;
export type ExecRunCommand = Extract<ControlCommand, { cmd: 'exec-run' }>;

/** Where a relayed command's output and exit go (`ControlClient.execRun`). */
export interface ExecRunHandlers {
  output(stream: 'stdout' | 'stderr', data: Buffer): void;
  exit(exit: Pick<ExecExitEvent, 'code' | 'signal' | 'status'>): void;
}

interface Waiter {
  resolve(result: unknown): void;
  reject(error: ControlError): void;
  /** For a follow request: where its backlog and its events go. */
  follower?: (line: LogLine) => void;
}

export class ControlClient {
  /** Settles when the connection is gone, whichever side ended it. */
  readonly closed: Promise<void>;
  private readonly lines = new LineSplitter();
  private readonly waiters = new Map<number, Waiter>();
  private readonly followers = new Map<number, (line: LogLine) => void>();
  private readonly execRuns = new Map<number, ExecRunHandlers>();
  // Ids start at 1: 0 marks errors about the whole connection.
  private nextId = CONNECTION_ERROR_ID + 1;
  /** Why the connection ended or can no longer be used; set once. */
  private failure: ControlError | null = null;

  private constructor(
    private readonly socket: net.Socket,
    path: string,
  ) {
    socket.on('data', (chunk: Buffer) => {
      for (const line of this.lines.push(chunk).lines) this.receive(line);
    });
    socket.on('error', (error) => {
      const message = `lost the connection to mos at ${path}: ${error.message}`;
      this.failure ??= new ControlError(ErrorCode.Unreachable, message);
    });
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.failure ??= new ControlError(ErrorCode.Unreachable, `mos closed the connection at ${path}`);
        this.rejectAll(this.failure);
        this.followers.clear();
        this.execRuns.clear();
        resolve();
      });
    });
  }

  static connect(path: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(path);
      const onError = (error: NodeJS.ErrnoException) => reject(unreachable(path, error));
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(new ControlClient(socket, path));
      });
    });
  }

  /** Sends one request; rejects with the server's `ControlError` when it answers with an error. */
  request<C extends ControlCommand>(command: C): Promise<ResultOf<C>> {
    return this.send(command) as Promise<ResultOf<C>>;
  }

  /**
   * Follows a service's log: `onLine` gets the backlog (the last `n` lines) and then every new
   * line, in order, until the connection closes (`closed`). Resolves once the stream is set up.
   */
  async stream(command: LogsCommand & { follow: true }, onLine: (line: LogLine) => void): Promise<void> {
    await this.send(command, onLine);
  }

  /**
   * Has mos run a command in a container service and relay it (`exec-run`): `handlers` get its
   * output, then its exit. Resolves with the run's id (for `execInput`) once it has started;
   * rejects with mos's refusal. A connection lost meanwhile ends it without an exit (`closed`).
   */
  async execRun(command: ExecRunCommand, handlers: ExecRunHandlers): Promise<{ run: number; started: CommandResults['exec-run'] }> {
    let run = 0;
    const started = (await this.send(command, undefined, (id) => {
      run = id;
      this.execRuns.set(id, handlers);
    })) as CommandResults['exec-run'];
    return { run, started };
  }

  /** Bytes for a relayed command's stdin, or its end; resolves once mos has passed them on. */
  async execInput(run: number, data: Buffer | null, eof = false): Promise<void> {
    await this.send({
      cmd: 'exec-input',
      run,
      ...(data !== null ? { data: data.toString('base64') } : {}),
      ...(eof ? { eof: true as const } : {}),
    });
  }

  /** Stops reading from mos (it then holds, and for exec pauses, what it would send) until resumed. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  /** Closes the connection at once; a follow stream ends and `closed` settles. */
  close(): void {
    this.failure ??= new ControlError(ErrorCode.Unreachable, 'the connection to mos was closed');
    this.socket.destroy();
  }

  private send(command: ControlCommand, follower?: (line: LogLine) => void, register?: (id: number) => void): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiters.set(id, { resolve, reject, follower });
      if (follower) this.followers.set(id, follower);
      register?.(id);
      this.socket.write(`${JSON.stringify({ v: PROTOCOL_VERSION, id, ...command })}\n`);
    });
  }

  private receive(line: string): void {
    let parsed;
    try {
      parsed = v.safeParse(ServerMessageSchema, JSON.parse(line));
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success) {
      this.failure ??= new ControlError(ErrorCode.Internal, 'mos sent a response this mosctl cannot read');
      this.socket.destroy();
      return;
    }
    const message = parsed.output;
    if ('event' in message) {
      switch (message.event) {
        case 'log':
          this.followers.get(message.id)?.(message.line);
          break;
        case 'exec-output':
          this.execRuns.get(message.id)?.output(message.stream, Buffer.from(message.data, 'base64'));
          break;
        case 'exec-exit': {
          const handlers = this.execRuns.get(message.id);
          this.execRuns.delete(message.id);
          handlers?.exit({ code: message.code, signal: message.signal, status: message.status });
          break;
        }
      }
      return;
    }
    if (message.ok === false && message.id === CONNECTION_ERROR_ID) {
      // The server refused the connection or gave up on it; every request shares that fate.
      this.failure ??= new ControlError(message.error.code, message.error.message);
      this.rejectAll(this.failure);
      return;
    }
    const waiter = this.waiters.get(message.id);
    if (!waiter) return;
    this.waiters.delete(message.id);
    if (message.ok) {
      // The backlog is handed over here, synchronously: events that arrived in the same read
      // must not overtake it, as they would if the caller printed it after an await.
      if (waiter.follower) for (const line of (message.result as CommandResults['logs']).lines) waiter.follower(line);
      waiter.resolve(message.result);
    } else {
      this.followers.delete(message.id);
      this.execRuns.delete(message.id);
      waiter.reject(new ControlError(message.error.code, message.error.message));
    }
  }

  private rejectAll(error: ControlError): void {
    for (const waiter of this.waiters.values()) waiter.reject(error);
    this.waiters.clear();
  }
}

function unreachable(path: string, error: NodeJS.ErrnoException): ControlError {
  switch (error.code) {
    case 'ENOENT':
      return new ControlError(ErrorCode.Unreachable, `cannot reach mos: no control socket at ${path}`);
    case 'EACCES':
      return new ControlError(ErrorCode.Permission, `permission denied: ${path} is root-only`);
    case 'ECONNREFUSED':
      return new ControlError(ErrorCode.Unreachable, `cannot reach mos at ${path}: nothing is listening`);
    default:
      return new ControlError(ErrorCode.Unreachable, `cannot reach mos at ${path}: ${error.message}`);
  }
}
