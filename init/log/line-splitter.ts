import { StringDecoder } from 'node:string_decoder';

/** Long enough for any reasonable log line, short enough that one runaway line cannot fill a ring. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024;

/** A cut must always make progress: one UTF-8 character is at most 4 bytes. */
const MIN_MAX_LINE_BYTES = 4;

/**
 * Turns the byte chunks read from a pipe into lines of text.
 *
 * - Lines end at `\n`, which is removed; everything else (a `\r` before it, too) is kept.
 * - UTF-8 is decoded across chunk boundaries: a character split between two reads comes out whole.
 *   Invalid bytes become U+FFFD.
 * - A line longer than `maxLineBytes` (UTF-8 bytes, not counting the `\n`) is cut into several
 *   lines, each at most that long and cut only between characters. The cut happens as soon as the
 *   bytes arrive, so a writer that never sends `\n` cannot make the splitter hold more than one
 *   line's worth of text.
 * - The text after the last `\n` is kept for the next chunk; `flush()` hands it out.
 */
export class LineSplitter {
  readonly maxLineBytes: number;
  private readonly decoder = new StringDecoder('utf8');
  /** Text after the last `\n`, never more than `maxLineBytes` bytes. */
  private partial = '';

  constructor(options: { maxLineBytes?: number } = {}) {
    const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < MIN_MAX_LINE_BYTES) {
      throw new RangeError(`maxLineBytes must be an integer >= ${MIN_MAX_LINE_BYTES}, got ${maxLineBytes}`);
    }
    this.maxLineBytes = maxLineBytes;
  }

  /** Consumes one chunk and returns the lines it completed (or cut), oldest first. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    // No UTF-8 multi-byte sequence contains the byte 0x0A, so splitting decoded text on '\n' is
    // the same as splitting the bytes.
    const pieces = this.decoder.write(chunk).split('\n');
    const lastIndex = pieces.length - 1;
    for (let i = 0; i < lastIndex; i++) {
      const piece = pieces[i] as string;
      const line = i === 0 ? this.partial + piece : piece;
      lines.push(this.cutOversized(line, lines));
    }
    const unterminated = pieces[lastIndex] as string;
    this.partial = this.cutOversized(lastIndex === 0 ? this.partial + unterminated : unterminated, lines);
    return lines;
  }

  /**
   * Returns the unterminated text after the last `\n` (plus U+FFFD for an incomplete trailing
   * character) as lines — none when there is none — and starts afresh.
   */
  flush(): string[] {
    const rest = this.partial + this.decoder.end();
    this.partial = '';
    if (rest === '') return [];
    const lines: string[] = [];
    lines.push(this.cutOversized(rest, lines));
    return lines;
  }

  /**
   * Appends to `lines` as many leading pieces of `text` as needed, each at most `maxLineBytes`
   * bytes, to leave a remainder that fits; returns that remainder (`text` itself when it fits).
   */
  private cutOversized(text: string, lines: string[]): string {
    // A UTF-16 code unit never takes more than 3 UTF-8 bytes, so most lines need no byte count.
    if (text.length * 3 <= this.maxLineBytes) return text;
    if (Buffer.byteLength(text, 'utf8') <= this.maxLineBytes) return text;
    const bytes = Buffer.from(text, 'utf8');
    let start = 0;
    while (bytes.length - start > this.maxLineBytes) {
      let end = start + this.maxLineBytes;
      // Back up to the first byte of the character at `end` (continuation bytes are 10xxxxxx).
      while (((bytes[end] as number) & 0xc0) === 0x80) end--;
      lines.push(bytes.toString('utf8', start, end));
      start = end;
    }
    return bytes.toString('utf8', start);
  }
}
