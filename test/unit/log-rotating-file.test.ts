import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RotatingFile } from '../../init/log/rotating-file.ts';

let tmp: string;

beforeEach(() => {
  tmp = fs.mkdtempSync(`${os.tmpdir()}/mos-`);
});

afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** `line-0001\n`: every line is 10 bytes. */
const numbered = (n: number): string => `line-${String(n).padStart(4, '0')}\n`;

const read = (file: string): string => fs.readFileSync(file, 'utf8');

describe('RotatingFile', () => {
  it('creates the directory (mode 0700) and appends lines in order', async () => {
    const dir = path.join(tmp, 'deep', 'logs');
    const file = new RotatingFile({ dir, name: 'web' });
    for (let n = 1; n <= 3; n++) file.append(numbered(n));
    await file.flush();
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(read(path.join(dir, 'web.log'))).toBe(numbered(1) + numbered(2) + numbered(3));
    await file.close();
  });

  it('keeps order across appends made while a write is in flight', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc' });
    let expected = '';
    for (let n = 1; n <= 200; n++) {
      file.append(numbered(n));
      expected += numbered(n);
      if (n % 7 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    await file.flush();
    expect(read(path.join(tmp, 'svc.log'))).toBe(expected);
    await file.close();
  });

  it('reports how much text waits to be written', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc' });
    file.append(numbered(1));
    file.append(numbered(2));
    expect(file.pendingChars).toBe(20);
    await file.flush();
    expect(file.pendingChars).toBe(0);
    await file.close();
  });

  it('rotates name.log → .1 → … → .<keep>, deleting the oldest', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc', maxBytes: 50, keep: 2 });
    for (let n = 1; n <= 23; n++) file.append(numbered(n));
    await file.flush();
    const names = fs.readdirSync(tmp).sort();
    expect(names).toEqual(['svc.log', 'svc.log.1', 'svc.log.2']);
    // 5 lines of 10 bytes fill a file; lines 1–10 were rotated out and deleted.
    const lines = (from: number, to: number): string =>
      Array.from({ length: to - from + 1 }, (_, i) => numbered(from + i)).join('');
    expect(read(path.join(tmp, 'svc.log.2'))).toBe(lines(11, 15));
    expect(read(path.join(tmp, 'svc.log.1'))).toBe(lines(16, 20));
    expect(read(path.join(tmp, 'svc.log'))).toBe(lines(21, 23));
    await file.close();
  });

  it('with keep 0 starts the file afresh instead of keeping old ones', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc', maxBytes: 20, keep: 0 });
    for (let n = 1; n <= 5; n++) file.append(numbered(n));
    await file.flush();
    expect(fs.readdirSync(tmp)).toEqual(['svc.log']);
    expect(read(path.join(tmp, 'svc.log'))).toBe(numbered(5));
    await file.close();
  });

  it('counts what an existing file already holds', async () => {
    fs.writeFileSync(path.join(tmp, 'svc.log'), numbered(1) + numbered(2));
    const file = new RotatingFile({ dir: tmp, name: 'svc', maxBytes: 25 });
    file.append(numbered(3));
    await file.flush();
    expect(read(path.join(tmp, 'svc.log.1'))).toBe(numbered(1) + numbered(2));
    expect(read(path.join(tmp, 'svc.log'))).toBe(numbered(3));
    await file.close();
  });

  it('gives a line longer than maxBytes a file of its own', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc', maxBytes: 15 });
    const long = `${'x'.repeat(40)}\n`;
    file.append(numbered(1));
    file.append(long);
    file.append(numbered(2));
    await file.flush();
    expect(read(path.join(tmp, 'svc.log.2'))).toBe(numbered(1));
    expect(read(path.join(tmp, 'svc.log.1'))).toBe(long);
    expect(read(path.join(tmp, 'svc.log'))).toBe(numbered(2));
    await file.close();
  });

  it('survives a full disk: counts, drops, reports each error code once', async () => {
    // A log file that is really /dev/full fails every write with ENOSPC.
    fs.symlinkSync('/dev/full', path.join(tmp, 'svc.log'));
    const errors: Error[] = [];
    const file = new RotatingFile({ dir: tmp, name: 'svc', onError: (err) => errors.push(err) });
    file.append(numbered(1));
    file.append(numbered(2));
    await file.flush();
    file.append(numbered(3));
    await file.flush();
    expect(errors).toHaveLength(1);
    expect((errors[0] as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(errors[0]?.message).toContain(path.join(tmp, 'svc.log'));
    expect(file.errorCount).toBe(2);
    expect(file.droppedLines).toBe(3);
    await file.close();
  });

  it('reports a directory it cannot create, and a throwing onError does not escape', async () => {
    fs.writeFileSync(path.join(tmp, 'not-a-dir'), '');
    const codes: (string | undefined)[] = [];
    const file = new RotatingFile({
      dir: path.join(tmp, 'not-a-dir', 'logs'),
      name: 'svc',
      onError: (err) => {
        codes.push((err as NodeJS.ErrnoException).code);
        throw new Error('reporter is broken too');
      },
    });
    file.append(numbered(1));
    await file.flush();
    file.append(numbered(2));
    await file.flush();
    expect(codes).toEqual(['ENOTDIR']);
    expect(file.droppedLines).toBe(2);
    await file.close();
  });

  it('resumes writing once the cause of a failure is gone', async () => {
    const dir = path.join(tmp, 'logs');
    const file = new RotatingFile({ dir, name: 'svc', onError: () => {} });
    fs.writeFileSync(dir, ''); // a file where the directory should be
    file.append(numbered(1));
    await file.flush();
    fs.rmSync(dir);
    file.append(numbered(2));
    await file.flush();
    expect(read(path.join(dir, 'svc.log'))).toBe(numbered(2));
    expect(file.droppedLines).toBe(1);
    await file.close();
  });

  it('writes what is queued on close and drops later appends', async () => {
    const file = new RotatingFile({ dir: tmp, name: 'svc' });
    file.append(numbered(1));
    await file.close();
    file.append(numbered(2));
    await file.flush();
    expect(read(path.join(tmp, 'svc.log'))).toBe(numbered(1));
    expect(file.droppedLines).toBe(1);
  });

  it('refuses names that would leave the directory', () => {
    for (const name of ['../escape', 'a/b', '..', '/abs', '']) {
      expect(() => new RotatingFile({ dir: tmp, name })).toThrow(/invalid log name/);
    }
  });
});
