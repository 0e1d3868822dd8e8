import type { LogLine } from './types.ts';

export const DEFAULT_RING_BYTES = 1024 * 1024;
/** About what 1 MiB holds at a typical 100 bytes a line. */
export const DEFAULT_RING_LINES = 10_000;

/**
 * The newest lines of one service, bounded by the UTF-8 bytes of their text and by their number;
 * the oldest lines are evicted first. The newest line is always kept, even when it alone is over
 * the byte bound.
 *
 * Stored as a queue in an array: `lines[head..]` are retained, the slots before `head` were evicted
 * (cleared so their text can be collected). The array is compacted once the evicted prefix is as
 * long as the retained part, which keeps append amortised O(1) and the array at most twice the
 * line bound.
 */
export class LogRing {
  readonly maxBytes: number;
  readonly maxLines: number;
  private lines: (LogLine | undefined)[] = [];
  /** UTF-8 byte length of each entry of `lines`, so eviction need not measure again. */
  private sizes: number[] = [];
  private head = 0;
  private retainedBytes = 0;
  private newestSeq = 0;

  constructor(options: { maxBytes?: number; maxLines?: number } = {}) {
    this.maxBytes = positiveInteger('maxBytes', options.maxBytes ?? DEFAULT_RING_BYTES);
    this.maxLines = positiveInteger('maxLines', options.maxLines ?? DEFAULT_RING_LINES);
  }

  /** Seq of the newest line ever pushed (0 before the first), whether or not it is still retained. */
  get lastSeq(): number {
    return this.newestSeq;
  }

  /** Number of retained lines. */
  get size(): number {
    return this.lines.length - this.head;
  }

  /** UTF-8 bytes of the retained lines' text. */
  get bytes(): number {
    return this.retainedBytes;
  }

  push(line: LogLine): void {
    const size = Buffer.byteLength(line.text, 'utf8');
    this.lines.push(line);
    this.sizes.push(size);
    this.retainedBytes += size;
    this.newestSeq = line.seq;
    while (this.size > this.maxLines || (this.retainedBytes > this.maxBytes && this.size > 1)) {
      this.evictOldest();
    }
    if (this.head * 2 >= this.lines.length) this.compact();
  }

  /** The newest `count` retained lines, oldest first. */
  tail(count: number): LogLine[] {
    if (count <= 0) return [];
    const from = Math.max(this.head, this.lines.length - Math.floor(count));
    // Every slot from `head` on holds a line; only evicted slots are undefined.
    return this.lines.slice(from) as LogLine[];
  }

  private evictOldest(): void {
    this.retainedBytes -= this.sizes[this.head] as number;
    this.lines[this.head] = undefined;
    this.head++;
  }

  private compact(): void {
    this.lines = this.lines.slice(this.head);
    this.sizes = this.sizes.slice(this.head);
    this.head = 0;
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
  return value;
}
