/**
 * PID 1's console lines (the human view, and the stable markers the VM harness waits for) without
 * ever blocking the event loop.
 *
 * Node writes to a TTY synchronously (process.stdout/stderr block on a slow serial console), so
 * PID 1 never uses them. This sink opens the console itself with O_NONBLOCK and writes with
 * `writeSync`: a full TTY buffer answers EAGAIN instead of blocking, the line waits in a bounded
 * queue and is retried on a timer; past the bound the oldest lines are dropped and counted.
 *
 * Where the lines go: `/dev/console` on a machine; any path (a file is appended to) or `-`
 * (fd 2) for tests. When the console cannot be opened, `/dev/kmsg` is the fallback, as
 * `<5>mos: ...` records (they show on the console at the default log level and in dmesg). The
 * structured (JSON lines) log is separate: a file under /run/mos (see pid1.ts).
 */
import { closeSync, constants, openSync, writeSync } from 'node:fs';

/** Bytes of console output that may wait for a slow console before the oldest is dropped. */
const MAX_QUEUED_BYTES = 256 * 1024;
/** The kernel's limit for one /dev/kmsg record is about 1 KiB. */
const MAX_KMSG_LINE = 900;
const RETRY_MS = 20;

export interface ConsoleTarget {
  /** `/dev/console`, a file, or `-` for fd 2. */
  path: string;
  /** Try `/dev/kmsg` when `path` cannot be opened. */
  kmsgFallback: boolean;
}

export class ConsoleSink {
  private fd: number | null = null;
  private kmsg = false;
  private ownsFd = false;
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  private dropped = 0;
  private retry: NodeJS.Timeout | null = null;

  constructor(
    private readonly target: ConsoleTarget,
    private readonly setNonBlocking?: (fd: number) => void,
  ) {
    this.open();
  }

  /** (Re)opens the target if it is not open, e.g. once devtmpfs provides /dev/console. */
  open(): boolean {
    if (this.fd !== null && !this.kmsg) return true;
    const { path } = this.target;
    try {
      if (path === '-') {
        this.setNonBlocking?.(2);
        this.replaceFd(2, false, false);
      } else {
        const flags = constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOCTTY | constants.O_APPEND;
        const isDevice = path.startsWith('/dev/');
        this.replaceFd(openSync(path, isDevice ? flags : flags | constants.O_CREAT, 0o600), true, false);
      }
      return true;
    } catch {
      if (this.fd === null && this.target.kmsgFallback) {
        try {
          this.replaceFd(openSync('/dev/kmsg', constants.O_WRONLY | constants.O_NONBLOCK), true, true);
        } catch {
          // Nowhere to write; lines are dropped (and counted) until a later open() works.
        }
      }
      return false;
    }
  }

  private replaceFd(fd: number, owns: boolean, kmsg: boolean): void {
    if (this.fd !== null && this.ownsFd) closeSync(this.fd);
    this.fd = fd;
    this.ownsFd = owns;
    this.kmsg = kmsg;
  }

  /** Queues one line (a newline is added) and writes as much as the console takes now. */
  line(text: string): void {
    const oneLine = text.replace(/[\r\n]+/g, ' ');
    const record = this.kmsg ? `<5>${oneLine.slice(0, MAX_KMSG_LINE)}\n` : `${oneLine}\n`;
    const buffer = Buffer.from(record);
    this.queue.push(buffer);
    this.queuedBytes += buffer.length;
    while (this.queuedBytes > MAX_QUEUED_BYTES && this.queue.length > 1) {
      this.queuedBytes -= this.queue.shift()!.length;
      this.dropped++;
    }
    this.drain();
  }

  /** Lines dropped because the console was too slow or missing. */
  get droppedLines(): number {
    return this.dropped;
  }

  /** Writes what the console takes without blocking; true when the queue is empty. */
  private drain(): boolean {
    if (this.fd === null) {
      this.scheduleRetry();
      return false;
    }
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      let written: number;
      try {
        written = writeSync(this.fd, head);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') {
          this.scheduleRetry();
          return false;
        }
        // EIO (hung-up console) and the like: drop the line rather than spin on it.
        this.queue.shift();
        this.queuedBytes -= head.length;
        this.dropped++;
        continue;
      }
      if (written >= head.length) {
        this.queue.shift();
        this.queuedBytes -= head.length;
      } else {
        // kmsg records must not be split: a partial write of one is dropped instead.
        this.queue[0] = head.subarray(written);
        this.queuedBytes -= written;
      }
    }
    return true;
  }

  private scheduleRetry(): void {
    if (this.retry !== null) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.drain();
    }, RETRY_MS);
    this.retry.unref();
  }

  /** Keeps trying for up to `timeoutMs` (before reboot(2), the last lines matter). */
  async flush(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.drain() && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}
