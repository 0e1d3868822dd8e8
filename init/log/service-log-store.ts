import { closeSync, readSync } from 'node:fs';
import { LineSplitter } from './line-splitter.ts';
import { LogRing } from './ring.ts';
import { RotatingFile } from './rotating-file.ts';
import type { LogLine } from './types.ts';

type StreamName = LogLine['stream'];
type Follower = (line: LogLine) => void;

const STREAMS: readonly StreamName[] = ['stdout', 'stderr'];

/**
 * How many rounds `flush()` spends draining pipes while they keep delivering bytes. One round
 * reads every pipe empty (or `MAX_READS_PER_WAKE` reads); the cap keeps a service that never
 * stops writing from stalling `flush()` forever.
 */
const MAX_DRAIN_TURNS = 16;

/** Reads per readable pipe per wake-up: a chatty service cannot starve the others (2 MiB). */
const MAX_READS_PER_WAKE = 32;
const READ_CHUNK_BYTES = 64 * 1024;

/**
 * File text (UTF-16 code units) a service may have queued before its pipes stop being read until
 * the file catches up. The service then blocks on its full pipe instead of mos buffering a fast
 * writer's output without bound; nothing is dropped either way.
 */
const FILE_BACKLOG_LIMIT = 1024 * 1024;

export interface ServiceLogStoreOptions {
  /** Where `<service>.log` files go; created (recursively, mode 0700) on first use. */
  dir: string;
  /**
   * Makes a pipe: `[readFd, writeFd]`, the read end non-blocking. In mos, the native addon's
   * pipe2(O_CLOEXEC) with O_NONBLOCK set on the read end.
   */
  pipe: () => [number, number];
  /** Calls `onReadable` whenever `fd` is readable (in mos, the addon's libuv poll). */
  watchReadable: (fd: number, onReadable: () => void) => { close(): void };
  /** Wall-clock ms for `LogLine.ts`; `Date.now` by default. */
  now?: () => number;
  /** Per-service ring bounds (UTF-8 bytes of text, and lines). */
  ringBytes?: number;
  ringLines?: number;
  /** Per-service file rotation: size of `<service>.log`, and rotated files kept. */
  fileMaxBytes?: number;
  fileKeep?: number;
  /** Longer lines are cut into several. */
  maxLineBytes?: number;
  /**
   * Told about problems capture survives: file write failures (once per error code and service),
   * pipe read errors, and followers that threw (and were unsubscribed). Must not throw.
   */
  onError?: (err: Error) => void;
}

/** One stream's pipe: the write end handed to every run of the service, and the reading side. */
interface StreamCapture {
  readonly readFd: number;
  readonly writeFd: number;
  /** The poll on the read end; null while paused (backpressure) or after a read error. */
  watch: { close(): void } | null;
  /** The read end failed (not EAGAIN): it is not read again. */
  broken: boolean;
  readonly splitter: LineSplitter;
}

interface ServiceLog {
  readonly ring: LogRing;
  readonly file: RotatingFile;
  readonly followers: Set<Follower>;
  /** Created by the first `open()`, then kept until `close()`. */
  pipes: Record<StreamName, StreamCapture> | null;
  /** Reading is paused until the file has written its backlog. */
  waitingForFile: boolean;
}

/**
 * Captures every service's stdout and stderr, from the first byte, into a ring buffer (for
 * `logs`/`follow`) and a rotated file per service.
 *
 * Each service gets one pipe per stream for its whole life, not per run: the store holds the write
 * ends, so the read side never sees EOF between restarts and nothing written by a dying run (or by
 * its leftover children) is lost. The read ends are polled by epoll on the event loop (a libuv
 * poll each) and read with read(2) into one shared buffer: no thread-pool reads, no syscall per
 * line, and no stream objects per pipe (a net.Socket per pipe cost ~5 KB of PID 1 each).
 *
 * Lines get a per-service `seq` from 1 without gaps, shared by both streams (and by `append`).
 * Order is exact within a stream; between stdout and stderr it is the order the reads happened.
 * All lines completed by one read share that read's `ts`.
 *
 * File format, one line per LogLine (the text is UTF-8 and never holds a `\n`):
 *
 *     <ISO-8601 ts> <stream> <text>\n
 *     2026-11-22T12:00:00.000Z stdout hello
 *
 * Text after a stream's last `\n` waits for the rest of its line (from the same or the next run)
 * and is only written out on its own at `close()`.
 *
 * Followers and the ring share LogLine objects: followers must not mutate them.
 */
export class ServiceLogStore {
  private readonly options: ServiceLogStoreOptions;
  private readonly now: () => number;
  private readonly logs = new Map<string, ServiceLog>();
  /** Bytes read from all pipes so far: `flush()` watches it to tell when they are drained. */
  private bytesRead = 0;
  private readonly readBuffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  private closed = false;
  /** The ISO form of the last `ts` formatted: every line of a chunk shares one `ts`. */
  private isoCache = { ts: Number.NaN, iso: '' };

  constructor(options: ServiceLogStoreOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
  }

  /**
   * Returns the write ends of the service's stdout and stderr pipes, creating them on the first
   * call and returning the same fds on every later one. The caller dup2s them into each child and
   * must not close them; the store closes them at `close()`.
   *
   * Throws for a name with `/` or `..`, and after `close()`.
   */
  open(service: string): { stdout: number; stderr: number } {
    if (this.closed) throw new Error('service log store is closed');
    const log = this.logFor(service);
    if (!log.pipes) {
      const stdout = this.capture(log, 'stdout');
      let stderr: StreamCapture;
      try {
        stderr = this.capture(log, 'stderr');
      } catch (err) {
        release(stdout);
        throw err;
      }
      log.pipes = { stdout, stderr };
    }
    return { stdout: log.pipes.stdout.writeFd, stderr: log.pipes.stderr.writeFd };
  }

  /**
   * Adds a line of mos's own (e.g. "exec failed") to a service's log, numbered like captured lines.
   * Each `\n` in `text` starts a new line.
   */
  append(service: string, stream: StreamName, text: string): void {
    const log = this.logFor(service);
    const ts = this.now();
    for (const line of text.split('\n')) this.record(log, stream, line, ts);
  }

  /** The newest `count` lines still in the ring, oldest first; [] for an unknown service. */
  tail(service: string, count: number): LogLine[] {
    return this.logs.get(service)?.ring.tail(count) ?? [];
  }

  /**
   * Calls `onLine` with every line recorded from now on, until the returned function is called.
   * Following a service that has no log yet is allowed: lines arrive once it starts. A follower
   * that throws is unsubscribed and reported to `onError`; capture goes on.
   */
  follow(service: string, onLine: (line: LogLine) => void): () => void {
    const followers = this.logFor(service).followers;
    // Wrapped so that following twice with the same function makes two independent subscriptions.
    const follower: Follower = (line) => onLine(line);
    followers.add(follower);
    return () => {
      followers.delete(follower);
    };
  }

  /** Whether the store holds a log for `service` (`open`, `append` or `follow` was called). */
  has(service: string): boolean {
    return this.logs.has(service);
  }

  /**
   * Best effort: lets the event loop read what the pipes hold (turns until a turn brings no bytes,
   * at most `MAX_DRAIN_TURNS`), then resolves once every line recorded so far is written to its
   * file (not fsynced) or dropped by a write failure. Unterminated text stays pending.
   */
  async flush(): Promise<void> {
    await this.drainPipes();
    await Promise.all([...this.logs.values()].map((log) => log.file.flush()));
  }

  /**
   * Drains the pipes as `flush()` does, stops reading, closes both ends of every pipe, records each
   * stream's unterminated text as a last line, and closes the files once written. Lines appended
   * later still reach the ring and followers but not the files.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // What a paused socket has buffered, and what its pipe holds, must still be read.
    for (const log of this.logs.values()) this.resumeReading(log);
    await this.drainPipes();
    for (const log of this.logs.values()) {
      if (!log.pipes) continue;
      for (const stream of STREAMS) {
        const capture = log.pipes[stream];
        release(capture);
        this.recordLines(log, stream, capture.splitter.flush());
      }
      log.pipes = null;
    }
    await Promise.all([...this.logs.values()].map((log) => log.file.close()));
  }

  private logFor(service: string): ServiceLog {
    let log = this.logs.get(service);
    if (!log) {
      const { options } = this;
      log = {
        // Constructed first: it refuses names that would leave `dir`, before anything is created.
        file: new RotatingFile({
          dir: options.dir,
          name: service,
          maxBytes: options.fileMaxBytes,
          keep: options.fileKeep,
          onError: (err) => this.report(err),
        }),
        ring: new LogRing({ maxBytes: options.ringBytes, maxLines: options.ringLines }),
        followers: new Set(),
        pipes: null,
        waitingForFile: false,
      };
      this.logs.set(service, log);
    }
    return log;
  }

  private capture(log: ServiceLog, stream: StreamName): StreamCapture {
    const [readFd, writeFd] = this.options.pipe();
    const capture: StreamCapture = {
      readFd,
      writeFd,
      watch: null,
      broken: false,
      splitter: new LineSplitter({ maxLineBytes: this.options.maxLineBytes }),
    };
    try {
      this.watch(log, stream, capture);
    } catch (err) {
      closeQuietly(readFd);
      closeQuietly(writeFd);
      throw err;
    }
    return capture;
  }

  private watch(log: ServiceLog, stream: StreamName, capture: StreamCapture): void {
    if (capture.watch || capture.broken) return;
    capture.watch = this.options.watchReadable(capture.readFd, () => this.readAvailable(log, stream, capture, MAX_READS_PER_WAKE));
  }

  private unwatch(capture: StreamCapture): void {
    capture.watch?.close();
    capture.watch = null;
  }

  /** Reads what the pipe holds (at most `maxReads` chunks); returns the bytes read. */
  private readAvailable(log: ServiceLog, stream: StreamName, capture: StreamCapture, maxReads: number): number {
    let total = 0;
    for (let reads = 0; reads < maxReads && !capture.broken; reads++) {
      let count: number;
      try {
        count = readSync(capture.readFd, this.readBuffer, 0, READ_CHUNK_BYTES, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
        // Level-triggered: a read end that keeps failing would wake us forever. Stop reading it.
        capture.broken = true;
        this.unwatch(capture);
        this.report(err as Error);
        break;
      }
      if (count === 0) {
        // EOF: every write end is closed (only at close()): nothing more will come.
        this.unwatch(capture);
        break;
      }
      total += count;
      this.bytesRead += count;
      this.recordLines(log, stream, capture.splitter.push(this.readBuffer.subarray(0, count)));
      if (log.file.pendingChars > FILE_BACKLOG_LIMIT) {
        this.pauseUntilWritten(log);
        break;
      }
    }
    return total;
  }

  private pauseUntilWritten(log: ServiceLog): void {
    if (log.waitingForFile || !log.pipes || this.closed) return;
    log.waitingForFile = true;
    // Unread, the kernel pipe fills up and the service's writes block: backpressure all the way
    // to the writer.
    for (const stream of STREAMS) this.unwatch(log.pipes[stream]);
    void log.file.flush().then(() => this.resumeReading(log));
  }

  private resumeReading(log: ServiceLog): void {
    if (!log.waitingForFile) return;
    log.waitingForFile = false;
    if (log.pipes && !this.closed) for (const stream of STREAMS) this.watch(log, stream, log.pipes[stream]);
  }

  private recordLines(log: ServiceLog, stream: StreamName, texts: string[]): void {
    if (texts.length === 0) return;
    const ts = this.now();
    for (const text of texts) this.record(log, stream, text, ts);
  }

  private record(log: ServiceLog, stream: StreamName, text: string, ts: number): void {
    const line: LogLine = { seq: log.ring.lastSeq + 1, ts, stream, text };
    log.ring.push(line);
    log.file.append(`${this.isoTime(ts)} ${stream} ${text}\n`);
    for (const follower of log.followers) {
      try {
        follower(line);
      } catch (err) {
        log.followers.delete(follower);
        this.report(new Error(`log follower threw and was unsubscribed: ${String(err)}`, { cause: err }));
      }
    }
  }

  private isoTime(ts: number): string {
    if (this.isoCache.ts !== ts) this.isoCache = { ts, iso: new Date(ts).toISOString() };
    return this.isoCache.iso;
  }

  /** Reads every pipe until a round brings nothing new, letting file writes run in between. */
  private async drainPipes(): Promise<void> {
    for (let turn = 0; turn < MAX_DRAIN_TURNS; turn++) {
      let read = 0;
      for (const log of this.logs.values()) {
        if (!log.pipes) continue;
        for (const stream of STREAMS) read += this.readAvailable(log, stream, log.pipes[stream], Number.POSITIVE_INFINITY);
      }
      if (read === 0) return;
      await nextLoopTurn();
    }
  }

  private report(err: Error): void {
    try {
      this.options.onError?.(err);
    } catch {
      // A broken error reporter must not break capture.
    }
  }
}

function nextLoopTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A log pipe from the addon: close-on-exec both ends, the read end non-blocking. */
export function logPipe(native: { pipe(): [number, number]; setNonBlocking(fd: number, on: boolean): void; close(fd: number): void }): [number, number] {
  const fds = native.pipe();
  try {
    native.setNonBlocking(fds[0], true);
  } catch (err) {
    native.close(fds[0]);
    native.close(fds[1]);
    throw err;
  }
  return fds;
}

/** Stops reading and closes both ends. */
function release(capture: StreamCapture): void {
  capture.watch?.close();
  capture.watch = null;
  closeQuietly(capture.readFd);
  closeQuietly(capture.writeFd);
}

/** close(2) where nothing useful can be done on failure: on Linux the fd is gone either way. */
function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // EBADF/EIO: nothing to undo.
  }
}
