import { describe, expect, it } from 'vitest';
import { LogRing } from '../../init/log/ring.ts';
import type { LogLine } from '../../init/log/types.ts';

const line = (seq: number, text = `line ${seq}`): LogLine => ({ seq, ts: 1000 + seq, stream: 'stdout', text });
const seqs = (lines: LogLine[]): number[] => lines.map((entry) => entry.seq);

describe('LogRing', () => {
  it('returns the last n lines oldest first', () => {
    const ring = new LogRing();
    for (let seq = 1; seq <= 5; seq++) ring.push(line(seq));
    expect(seqs(ring.tail(3))).toEqual([3, 4, 5]);
    expect(seqs(ring.tail(100))).toEqual([1, 2, 3, 4, 5]);
    expect(ring.tail(0)).toEqual([]);
    expect(ring.tail(-1)).toEqual([]);
  });

  it('starts empty with lastSeq 0', () => {
    const ring = new LogRing();
    expect(ring.lastSeq).toBe(0);
    expect(ring.size).toBe(0);
    expect(ring.tail(10)).toEqual([]);
  });

  it('evicts the oldest lines beyond maxLines', () => {
    const ring = new LogRing({ maxLines: 3 });
    for (let seq = 1; seq <= 10; seq++) ring.push(line(seq));
    expect(ring.size).toBe(3);
    expect(seqs(ring.tail(10))).toEqual([8, 9, 10]);
    expect(ring.lastSeq).toBe(10);
  });

  it('evicts the oldest lines beyond maxBytes, counting UTF-8 bytes', () => {
    const ring = new LogRing({ maxBytes: 10 });
    ring.push(line(1, 'aaaa')); // 4 bytes
    ring.push(line(2, '€€')); // 6 bytes: 10 in all, still fits
    expect(seqs(ring.tail(10))).toEqual([1, 2]);
    expect(ring.bytes).toBe(10);
    ring.push(line(3, 'b')); // 11 bytes: line 1 goes
    expect(seqs(ring.tail(10))).toEqual([2, 3]);
    expect(ring.bytes).toBe(7);
  });

  it('always keeps the newest line, even one over the byte bound', () => {
    const ring = new LogRing({ maxBytes: 5 });
    ring.push(line(1, 'abc'));
    ring.push(line(2, 'x'.repeat(50)));
    expect(seqs(ring.tail(10))).toEqual([2]);
    ring.push(line(3, 'de'));
    expect(seqs(ring.tail(10))).toEqual([3]);
  });

  it('stays bounded and correct over many appends', () => {
    const ring = new LogRing({ maxLines: 1000, maxBytes: 1024 * 1024 });
    for (let seq = 1; seq <= 100_000; seq++) ring.push(line(seq));
    expect(ring.size).toBe(1000);
    const tail = ring.tail(1000);
    expect(tail[0]?.seq).toBe(99_001);
    expect(tail.at(-1)?.seq).toBe(100_000);
    expect(seqs(tail)).toEqual(Array.from({ length: 1000 }, (_, i) => 99_001 + i));
  });

  it('refuses bounds that are not positive integers', () => {
    expect(() => new LogRing({ maxLines: 0 })).toThrow(RangeError);
    expect(() => new LogRing({ maxBytes: -1 })).toThrow(RangeError);
  });
});
