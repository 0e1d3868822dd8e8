/**
 * Follows a guest's serial console as it is written (a file QEMU appends to, or any stream) and
 * waits for markers. Never a fixed sleep: a wait ends when its regex matches, when a fatal
 * pattern appears (e.g. "Kernel panic"), when the console ends (QEMU exited), or at its timeout;
 * a rejection carries the console's tail so a failure explains itself.
 */
import { closeSync, existsSync, openSync, readSync, watch, type FSWatcher } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';

export interface MarkerWaitOptions {
  /** Search from this offset in the console text (see `mark()`); default 0, the whole log. */
  since?: number;
  /** Patterns that end the wait at once with a failure. Default: the watcher's `failOn`. */
  failOn?: readonly RegExp[];
}

interface Waiter {
  regex: RegExp;
  since: number;
  failOn: readonly RegExp[];
  resolve(match: RegExpExecArray): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  what: string;
}

export class MarkerTimeoutError extends Error {
  override name = 'MarkerTimeoutError';
}

/** Strips ANSI escapes and carriage returns (OVMF's console is full of them). */
export function cleanConsoleText(raw: string): string {
  // eslint-disable-next-line no-control-regex
  return raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/\x1b[()][0-9A-Za-z]/g, '').replace(/\r/g, '');
}

export function consoleTail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}

export class ConsoleWatcher {
  private text = '';
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<(chunk: string) => void>();
  private ended: string | null = null;
  private stopFollowing: (() => void) | null = null;

  constructor(private readonly defaultFailOn: readonly RegExp[] = [/Kernel panic/]) {}

  /** Follows a file that another process appends to (created later is fine). */
  static followFile(file: string, failOn?: readonly RegExp[]): ConsoleWatcher {
    const watcher = new ConsoleWatcher(failOn);
    let fd: number | null = null;
    let position = 0;
    const buffer = Buffer.alloc(64 * 1024);
    const decoder = new StringDecoder('utf8'); // keeps a split UTF-8 sequence for the next read
    const pump = () => {
      if (fd === null) {
        if (!existsSync(file)) return;
        fd = openSync(file, 'r');
      }
      for (;;) {
        const n = readSync(fd, buffer, 0, buffer.length, position);
        if (n <= 0) break;
        position += n;
        watcher.push(decoder.write(buffer.subarray(0, n)));
      }
    };
    // inotify for promptness, plus a slow poll as a safety net (inotify can miss a file created
    // after the watch); neither is a sleep: waits end on the data.
    let fsWatcher: FSWatcher | null = null;
    const dir = file.slice(0, file.lastIndexOf('/')) || '/';
    try {
      fsWatcher = watch(dir, { persistent: false }, () => pump());
    } catch {
      fsWatcher = null;
    }
    const poll = setInterval(pump, 200);
    poll.unref();
    pump();
    watcher.stopFollowing = () => {
      pump();
      clearInterval(poll);
      fsWatcher?.close();
      if (fd !== null) closeSync(fd);
      fd = null;
    };
    return watcher;
  }

  /** Follows a stream (e.g. a child's stdout); the console ends with the stream. */
  static followStream(stream: Readable, failOn?: readonly RegExp[]): ConsoleWatcher {
    const watcher = new ConsoleWatcher(failOn);
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => watcher.push(chunk));
    stream.on('end', () => watcher.end('the console stream ended'));
    return watcher;
  }

  /** Adds console text (public for tests and for custom sources). */
  push(raw: string): void {
    if (!raw) return;
    const chunk = cleanConsoleText(raw);
    this.text += chunk;
    for (const listener of this.listeners) listener(chunk);
    for (const waiter of [...this.waiters]) this.check(waiter);
  }

  /** Everything read so far, cleaned. */
  get content(): string {
    return this.text;
  }

  /** An offset for `waitForMarker({since})`: only text after this point will match. */
  mark(): number {
    return this.text.length;
  }

  tail(lines = 40): string {
    return consoleTail(this.text, lines);
  }

  onData(listener: (chunk: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Whether `regex` has appeared (after `since`). */
  has(regex: RegExp, since = 0): boolean {
    return new RegExp(regex.source, regex.flags.replace('g', '')).test(this.text.slice(since));
  }

  /**
   * Resolves with the first match of `regex` (after `since`), or rejects at the timeout, when a
   * `failOn` pattern shows up first, or when the console ends without it.
   */
  waitForMarker(regex: RegExp, timeoutMs: number, options: MarkerWaitOptions = {}): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        regex: new RegExp(regex.source, regex.flags.replace('g', '')),
        since: options.since ?? 0,
        failOn: options.failOn ?? this.defaultFailOn,
        resolve,
        reject,
        what: String(regex),
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new MarkerTimeoutError(this.describe(`timed out after ${timeoutMs} ms waiting for ${waiter.what}`)));
        }, timeoutMs),
      };
      this.waiters.add(waiter);
      this.check(waiter);
    });
  }

  /** No more text will come (QEMU exited): pending waits that cannot match now fail. */
  end(reason: string): void {
    this.stopFollowing?.();
    this.stopFollowing = null;
    this.ended ??= reason;
    for (const waiter of [...this.waiters]) this.check(waiter);
  }

  private check(waiter: Waiter): void {
    const text = this.text.slice(waiter.since);
    const match = waiter.regex.exec(text);
    if (match) {
      match.index += waiter.since;
      return this.settle(waiter, () => waiter.resolve(match));
    }
    for (const fatal of waiter.failOn) {
      if (fatal.test(text)) {
        return this.settle(waiter, () => waiter.reject(new Error(this.describe(`${fatal} appeared while waiting for ${waiter.what}`))));
      }
    }
    if (this.ended !== null) {
      this.settle(waiter, () => waiter.reject(new Error(this.describe(`${this.ended} before ${waiter.what} appeared`))));
    }
  }

  private settle(waiter: Waiter, action: () => void): void {
    clearTimeout(waiter.timer);
    this.waiters.delete(waiter);
    action();
  }

  private describe(message: string): string {
    return `${message}\n--- console tail ---\n${this.tail()}\n--- end of console ---`;
  }
}
