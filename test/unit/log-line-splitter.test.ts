import { describe, expect, it } from 'vitest';
import { DEFAULT_MAX_LINE_BYTES, LineSplitter } from '../../init/log/line-splitter.ts';

const bytes = (text: string): Buffer => Buffer.from(text, 'utf8');

describe('LineSplitter', () => {
  it('splits on \\n and carries a partial line to the next chunk', () => {
    const splitter = new LineSplitter();
    expect(splitter.push(bytes('one\ntw'))).toEqual(['one']);
    expect(splitter.push(bytes('o\nthr'))).toEqual(['two']);
    expect(splitter.push(bytes('ee'))).toEqual([]);
    expect(splitter.push(bytes('\n'))).toEqual(['three']);
  });

  it('keeps empty lines', () => {
    expect(new LineSplitter().push(bytes('\n\na\n\n'))).toEqual(['', '', 'a', '']);
  });

  it('keeps a \\r before the \\n (CRLF) as text', () => {
    const splitter = new LineSplitter();
    expect(splitter.push(bytes('dos\r\nline\r'))).toEqual(['dos\r']);
    expect(splitter.push(bytes('\n'))).toEqual(['line\r']);
  });

  it('decodes multi-byte UTF-8 characters split across chunks', () => {
    const text = 'é€😀 done\n';
    const encoded = bytes(text);
    const splitter = new LineSplitter();
    const lines: string[] = [];
    // One byte at a time splits every multi-byte character (2, 3 and 4 bytes long).
    for (const byte of encoded) lines.push(...splitter.push(Buffer.from([byte])));
    expect(lines).toEqual(['é€😀 done']);
  });

  it('replaces invalid UTF-8 with U+FFFD', () => {
    expect(new LineSplitter().push(Buffer.from([0x61, 0xff, 0x62, 0x0a]))).toEqual(['a\ufffdb']);
  });

  it('cuts a line longer than maxLineBytes into several lines', () => {
    const splitter = new LineSplitter({ maxLineBytes: 10 });
    expect(splitter.push(bytes(`${'a'.repeat(25)}\n`))).toEqual(['a'.repeat(10), 'a'.repeat(10), 'a'.repeat(5)]);
  });

  it('keeps a line of exactly maxLineBytes whole', () => {
    const splitter = new LineSplitter({ maxLineBytes: 10 });
    expect(splitter.push(bytes(`${'b'.repeat(10)}\n${'c'.repeat(20)}\n`))).toEqual([
      'b'.repeat(10),
      'c'.repeat(10),
      'c'.repeat(10),
    ]);
  });

  it('cuts only between characters and never over the byte cap', () => {
    const splitter = new LineSplitter({ maxLineBytes: 10 });
    const line = '€'.repeat(7); // 21 bytes, 3 per character
    const lines = splitter.push(bytes(`${line}\n`));
    expect(lines.join('')).toBe(line);
    expect(lines).toEqual(['€€€', '€€€', '€']);
    for (const piece of lines) expect(Buffer.byteLength(piece)).toBeLessThanOrEqual(10);
  });

  it('cuts an unterminated line as it grows instead of holding it', () => {
    const splitter = new LineSplitter({ maxLineBytes: 8 });
    expect(splitter.push(bytes('x'.repeat(5)))).toEqual([]);
    expect(splitter.push(bytes('x'.repeat(5)))).toEqual(['x'.repeat(8)]);
    expect(splitter.push(bytes('x'.repeat(20)))).toEqual(['x'.repeat(8), 'x'.repeat(8)]);
    expect(splitter.flush()).toEqual(['x'.repeat(6)]);
  });

  it('cuts at the default of 16 KiB', () => {
    const lines = new LineSplitter().push(bytes(`${'z'.repeat(DEFAULT_MAX_LINE_BYTES + 1)}\n`));
    expect(lines.map((line) => line.length)).toEqual([DEFAULT_MAX_LINE_BYTES, 1]);
  });

  it('flush returns the partial last line once, then nothing', () => {
    const splitter = new LineSplitter();
    expect(splitter.push(bytes('complete\npartial'))).toEqual(['complete']);
    expect(splitter.flush()).toEqual(['partial']);
    expect(splitter.flush()).toEqual([]);
    expect(splitter.push(bytes('next\n'))).toEqual(['next']);
  });

  it('flush turns an incomplete trailing character into U+FFFD', () => {
    const splitter = new LineSplitter();
    splitter.push(Buffer.from([0x61, 0xe2, 0x82]));
    expect(splitter.flush()).toEqual(['a\ufffd']);
  });

  it('refuses a maxLineBytes too small to hold any character', () => {
    expect(() => new LineSplitter({ maxLineBytes: 3 })).toThrow(RangeError);
    expect(() => new LineSplitter({ maxLineBytes: 4.5 })).toThrow(RangeError);
  });
});
