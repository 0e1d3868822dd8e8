import fs from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

// The callback API, promisified: node:fs/promises would load its FileHandle machinery (and
// readline with it) into PID 1, ~0.5 MB for the same four syscalls.
const mkdir = promisify(fs.mkdir);
const open = promisify(fs.open);
const write = promisify(fs.write);
const fstat = promisify(fs.fstat);
const closeFd = promisify(fs.close);
const rename = promisify(fs.rename);
const unlink = promisify(fs.unlink);

export const DEFAULT_FILE_MAX_BYTES = 1024 * 1024;
export const DEFAULT_FILE_KEEP = 3;

export interface RotatingFileOptions {
  /** Created (recursively, mode 0700) before the first write. */
  dir: string;
  /** The file is `<dir>/<name>.log`; a name with `/` or `..` is refused. */
  name: string;
  /** Rotate before a line would take the file past this size. */
  maxBytes?: number;
  /** Rotated files kept: `<name>.log.1` (newest) … `<name>.log.<keep>` (oldest). */
  keep?: number;
  /** Told about a failure once per distinct error code; must not throw (it is ignored if it does). */
  onError?: (err: Error) => void;
}

/**
 * An append-only log file with size-based rotation: `name.log` → `name.log.1` → … →
 * `name.log.<keep>`, the oldest deleted.
 *
 * `append()` only queues; one writer drains the queue in order, joining everything queued since its
 * last write into one `write`, so a burst of lines costs a few large writes, not one per line. All
 * I/O is asynchronous: PID 1 must never block its event loop on a slow disk. A line is never split
 * between two files, so a file exceeds `maxBytes` only when a single line is longer than that.
 *
 * Failures (disk full, directory gone, …) never escape: the lines being written are dropped and
 * counted, the file is reopened for the next batch, and `onError` hears about each distinct code
 * once. Whoever holds the same lines in memory keeps working.
 */
export class RotatingFile {
  readonly path: string;
  readonly maxBytes: number;
  readonly keep: number;
  private readonly dir: string;
  private readonly onError: (err: Error) => void;
  /** The open file's descriptor. */
  private handle: number | null = null;
  /** Size of the open file as far as our writes know. */
  private size = 0;
  private queue: string[] = [];
  /** UTF-16 code units in `queue`, and in the batch being written. */
  private queueChars = 0;
  private inFlightChars = 0;
  private draining = false;
  private closed = false;
  /** Lines ever queued, and of those, lines already written or dropped: what `flush()` waits on. */
  private queuedLines = 0;
  private settledLines = 0;
  private flushWaiters: { upTo: number; resolve: () => void }[] = [];
  private readonly reportedCodes = new Set<string>();
  private failures = 0;
  private dropped = 0;

  constructor(options: RotatingFileOptions) {
    assertSafeName(options.name);
    this.dir = options.dir;
    this.path = join(options.dir, `${options.name}.log`);
    this.maxBytes = options.maxBytes ?? DEFAULT_FILE_MAX_BYTES;
    this.keep = options.keep ?? DEFAULT_FILE_KEEP;
    if (!Number.isInteger(this.maxBytes) || this.maxBytes < 1) {
      throw new RangeError(`maxBytes must be a positive integer, got ${this.maxBytes}`);
    }
    if (!Number.isInteger(this.keep) || this.keep < 0) {
      throw new RangeError(`keep must be a non-negative integer, got ${this.keep}`);
    }
    this.onError = options.onError ?? (() => {});
  }

  /** Failed file operations so far (each reported or not). */
  get errorCount(): number {
    return this.failures;
  }

  /** Lines that never reached the file because of a failure or because the file was closed. */
  get droppedLines(): number {
    return this.dropped;
  }

  /**
   * UTF-16 code units of the lines queued or being written: a cheap measure of how far the disk
   * is behind, for callers that want to slow their producer down.
   */
  get pendingChars(): number {
    return this.queueChars + this.inFlightChars;
  }

  /** Queues one complete line, including its trailing `\n`. */
  append(line: string): void {
    if (this.closed) {
      this.dropped++;
      return;
    }
    this.queue.push(line);
    this.queueChars += line.length;
    this.queuedLines++;
    if (!this.draining) {
      this.draining = true;
      // Start on a microtask, not now: the caller usually appends a whole chunk's lines in one go,
      // and they should all go out in the first write.
      queueMicrotask(() => void this.drain());
    }
  }

  /** Resolves once every line queued so far has been written (not fsynced) or dropped. */
  flush(): Promise<void> {
    if (this.settledLines === this.queuedLines) return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push({ upTo: this.queuedLines, resolve }));
  }

  /** Writes what is queued, then closes the file; later appends are dropped. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
    try {
      await this.closeHandle();
    } catch (err) {
      this.fail(err);
    }
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      this.inFlightChars = this.queueChars;
      this.queueChars = 0;
      await this.writeBatch(batch);
      this.inFlightChars = 0;
      this.settledLines += batch.length;
      while (this.flushWaiters[0] !== undefined && this.flushWaiters[0].upTo <= this.settledLines) {
        this.flushWaiters.shift()?.resolve();
      }
    }
    this.draining = false;
  }

  /** Writes `lines` in as few writes as rotation allows; never throws. */
  private async writeBatch(lines: string[]): Promise<void> {
    let written = 0;
    try {
      while (written < lines.length) {
        const handle = await this.openHandle();
        const end = this.endOfLinesThatFit(lines, written);
        if (end > written) await this.writeSegment(handle, lines.slice(written, end));
        written = end;
        if (written < lines.length) await this.rotate();
      }
    } catch (err) {
      this.dropped += lines.length - written;
      this.fail(err);
      await this.closeHandle().catch(() => {});
    }
  }

  /**
   * Index just past the lines from `start` on that fit in the open file. An empty file takes at
   * least one line, however long, so every rotation makes progress.
   */
  private endOfLinesThatFit(lines: string[], start: number): number {
    let size = this.size;
    let end = start;
    while (end < lines.length) {
      const sizeWithLine = size + Buffer.byteLength(lines[end] as string, 'utf8');
      if (size > 0 && sizeWithLine > this.maxBytes) break;
      size = sizeWithLine;
      end++;
    }
    return end;
  }

  private async writeSegment(fd: number, lines: string[]): Promise<void> {
    const bytes = Buffer.from(lines.join(''), 'utf8');
    let offset = 0;
    while (offset < bytes.length) {
      const { bytesWritten } = await write(fd, bytes, offset, bytes.length - offset);
      offset += bytesWritten;
      this.size += bytesWritten;
    }
  }

  private async openHandle(): Promise<number> {
    if (this.handle !== null) return this.handle;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const fd = await open(this.path, 'a', 0o600);
    try {
      this.size = (await fstat(fd)).size;
    } catch (err) {
      await closeFd(fd).catch(() => {});
      throw err;
    }
    this.handle = fd;
    return fd;
  }

  private async closeHandle(): Promise<void> {
    const fd = this.handle;
    this.handle = null;
    if (fd !== null) await closeFd(fd);
  }

  /** Shifts every file up one number, dropping the one past `keep`; the next write starts afresh. */
  private async rotate(): Promise<void> {
    await this.closeHandle();
    if (this.keep === 0) {
      await ignoreMissing(unlink(this.path));
      return;
    }
    // Renaming over `.<keep>` is what deletes the oldest file.
    for (let n = this.keep; n > 1; n--) await ignoreMissing(rename(`${this.path}.${n - 1}`, `${this.path}.${n}`));
    await rename(this.path, `${this.path}.1`);
  }

  private fail(err: unknown): void {
    this.failures++;
    const cause = err instanceof Error ? err : new Error(String(err));
    const code = (cause as NodeJS.ErrnoException).code ?? 'UNKNOWN';
    if (this.reportedCodes.has(code)) return;
    this.reportedCodes.add(code);
    // Write errors carry no path; the operator needs to know which log is failing.
    const report = Object.assign(new Error(`log file ${this.path}: ${cause.message}`, { cause }), { code });
    try {
      this.onError(report);
    } catch {
      // A broken error reporter must not take the writer (and so PID 1) down with it.
    }
  }
}

/** Refuses names that could leave the log directory. */
function assertSafeName(name: string): void {
  if (name === '' || name.includes('/') || name.includes('..') || name.includes('\0')) {
    throw new Error(`invalid log name ${JSON.stringify(name)}`);
  }
}

async function ignoreMissing(operation: Promise<void>): Promise<void> {
  try {
    await operation;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
