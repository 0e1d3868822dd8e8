/**
 * The LayoutReader port's fs implementation: only layout names are ever opened, no symlinks,
 * regular files only, the size checked before any byte is read.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createFsLayoutReader,
  createMemoryLayoutReader,
  isLayoutPath,
  LayoutReadError,
  nodeLayoutFs,
  type FileStat,
  type LayoutFs,
} from '../../init/trust/layout-reader.ts';

const HEX = 'ab'.repeat(32);
const BLOB = `blobs/sha256/${HEX}`;
let dirs: string[] = [];

function layoutDir(files: Record<string, string | Buffer> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'mos-layout-reader-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
  for (const [path, content] of Object.entries(files)) writeFileSync(join(dir, path), content);
  return dir;
}

/** Records every fs call the reader makes, and the bytes read per file. */
function spy(dir: string) {
  const calls: string[] = [];
  const bytesRead = new Map<string, number>();
  const fdPath = new Map<number, string>();
  const io: LayoutFs = {
    lstatSync(path) {
      calls.push(`lstat ${relative(dir, path)}`);
      return nodeLayoutFs.lstatSync(path);
    },
    openSync(path, flags) {
      calls.push(`open ${relative(dir, path)}`);
      const fd = nodeLayoutFs.openSync(path, flags);
      fdPath.set(fd, relative(dir, path));
      return fd;
    },
    fstatSync(fd) {
      calls.push('fstat');
      return nodeLayoutFs.fstatSync(fd);
    },
    readSync(fd, buffer, offset, length, position) {
      const got = nodeLayoutFs.readSync(fd, buffer, offset, length, position);
      const path = fdPath.get(fd)!;
      bytesRead.set(path, (bytesRead.get(path) ?? 0) + got);
      return got;
    },
    closeSync(fd) {
      calls.push('close');
      nodeLayoutFs.closeSync(fd);
    },
  };
  return { io, calls, bytesRead };
}

function codeOf(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(LayoutReadError);
    return (error as LayoutReadError).code;
  }
  return 'no error';
}

beforeAll(() => {
  dirs = [];
});
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('names', () => {
  const refused = [
    '../etc/passwd',
    '/etc/passwd',
    'blobs/sha256/../../index.json',
    `blobs/sha256/${HEX.toUpperCase()}`,
    `blobs/sha512/${'a'.repeat(128)}`,
    `blobs/sha256/${HEX}/x`,
    `./index.json`,
    'index.json/',
    'refs/heads/main',
    '',
  ];

  it('accepts exactly oci-layout, index.json and blobs/sha256/<64 hex>', () => {
    expect(['oci-layout', 'index.json', BLOB].every(isLayoutPath)).toBe(true);
    expect(refused.filter(isLayoutPath)).toEqual([]);
  });

  it('refuses every other name before touching the disk', () => {
    const dir = layoutDir();
    const { io, calls } = spy(dir);
    const reader = createFsLayoutReader(dir, io);
    for (const path of refused) {
      expect(codeOf(() => reader.read(path, 1024)), path).toBe('E_NAME_INVALID');
      expect(codeOf(() => reader.size(path)), path).toBe('E_NAME_INVALID');
    }
    expect(calls).toEqual([]);
  });
});

describe('files', () => {
  it('reads a regular file and reports its size; an absent one is null / E_BLOB_MISSING', () => {
    const dir = layoutDir({ 'index.json': '{"schemaVersion":2}', [BLOB]: 'blob' });
    const reader = createFsLayoutReader(dir);
    expect(reader.read('index.json', 100).toString()).toBe('{"schemaVersion":2}');
    expect(reader.size(BLOB)).toBe(4);
    expect(reader.read(BLOB, 4).toString()).toBe('blob');
    expect(reader.size(`blobs/sha256/${'cd'.repeat(32)}`)).toBeNull();
    expect(codeOf(() => reader.read(`blobs/sha256/${'cd'.repeat(32)}`, 10))).toBe('E_BLOB_MISSING');
    expect(codeOf(() => reader.read('oci-layout', 10))).toBe('E_BLOB_MISSING');
  });

  it('refuses a file over the limit after fstat, without reading a byte of it', () => {
    const dir = layoutDir({ [BLOB]: Buffer.alloc(1001, 'x') });
    const { io, bytesRead } = spy(dir);
    const reader = createFsLayoutReader(dir, io);
    expect(codeOf(() => reader.read(BLOB, 1000))).toBe('E_TOO_LARGE');
    expect(bytesRead.get(BLOB) ?? 0).toBe(0);
    expect(reader.read(BLOB, 1001)).toHaveLength(1001);
    expect(bytesRead.get(BLOB)).toBe(1001);
  });

  it('follows no symlink: not the file, not blobs/ or blobs/sha256/', () => {
    const target = layoutDir({ 'index.json': '{}', [BLOB]: 'blob' });
    const linked = layoutDir();
    symlinkSync(join(target, 'index.json'), join(linked, 'index.json'));
    symlinkSync(join(target, BLOB), join(linked, BLOB));
    const reader = createFsLayoutReader(linked);
    expect(codeOf(() => reader.read('index.json', 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.read(BLOB, 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.size(BLOB))).toBe('E_LAYOUT_INVALID');

    const linkedDir = mkdtempSync(join(tmpdir(), 'mos-layout-reader-'));
    dirs.push(linkedDir);
    symlinkSync(join(target, 'blobs'), join(linkedDir, 'blobs'));
    expect(codeOf(() => createFsLayoutReader(linkedDir).read(BLOB, 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => createFsLayoutReader(linkedDir).size(BLOB))).toBe('E_LAYOUT_INVALID');

    const linkedSha = mkdtempSync(join(tmpdir(), 'mos-layout-reader-'));
    dirs.push(linkedSha);
    mkdirSync(join(linkedSha, 'blobs'));
    symlinkSync(join(target, 'blobs/sha256'), join(linkedSha, 'blobs/sha256'));
    expect(codeOf(() => createFsLayoutReader(linkedSha).read(BLOB, 100))).toBe('E_LAYOUT_INVALID');
  });

  it('refuses a directory or a FIFO under a blob name (and does not block on the FIFO)', () => {
    const dir = layoutDir();
    mkdirSync(join(dir, BLOB));
    const fifo = `blobs/sha256/${'ef'.repeat(32)}`;
    execFileSync('mkfifo', [join(dir, fifo)]);
    const reader = createFsLayoutReader(dir);
    expect(codeOf(() => reader.read(BLOB, 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.size(BLOB))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.read(fifo, 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.size(fifo))).toBe('E_LAYOUT_INVALID');
  });

  it('never opens a device node planted as index.json or a blob (lstat refuses it first)', () => {
    const dir = layoutDir();
    const { io, calls } = spy(dir);
    // A character device as index.json (root can mknod it; else the spy reports one).
    const device = (path: string) => path.endsWith('index.json') || path.endsWith(BLOB);
    const faking: LayoutFs = {
      ...io,
      lstatSync(path) {
        if (!device(path)) return io.lstatSync(path);
        calls.push(`lstat ${relative(dir, path)}`);
        return { size: 0, isFile: () => false, isDirectory: () => false, isSymbolicLink: () => false } satisfies FileStat;
      },
    };
    const reader = createFsLayoutReader(dir, faking);
    expect(codeOf(() => reader.read('index.json', 100))).toBe('E_LAYOUT_INVALID');
    expect(codeOf(() => reader.read(BLOB, 100))).toBe('E_LAYOUT_INVALID');
    expect(calls.filter((call) => call.startsWith('open'))).toEqual([]);
  });

  it('refuses a real device node as index.json without opening it', () => {
    if (process.getuid?.() !== 0) return; // mknod needs root
    const dir = layoutDir();
    execFileSync('mknod', [join(dir, 'index.json'), 'c', '1', '3']); // /dev/null's numbers
    const { io, calls } = spy(dir);
    expect(codeOf(() => createFsLayoutReader(dir, io).read('index.json', 100))).toBe('E_LAYOUT_INVALID');
    expect(calls.filter((call) => call.startsWith('open'))).toEqual([]);
  });

  it('refuses a file whose size changes while it is read, reading nothing past the size checked', () => {
    const dir = layoutDir({ [BLOB]: Buffer.alloc(20, 'x') });
    const { io, bytesRead } = spy(dir);
    let fstats = 0;
    // The first fstat sees 10 bytes (the file then "grows" to its real 20).
    const growing: LayoutFs = {
      ...io,
      fstatSync(fd) {
        const real = io.fstatSync(fd);
        if (fstats++ > 0) return real;
        return { size: 10, isFile: () => real.isFile(), isDirectory: () => false, isSymbolicLink: () => false } satisfies FileStat;
      },
    };
    expect(codeOf(() => createFsLayoutReader(dir, growing).read(BLOB, 15))).toBe('E_LAYOUT_INVALID');
    expect(bytesRead.get(BLOB)).toBe(10);
  });
});

describe('memory reader', () => {
  it('applies the same names and limits', () => {
    const reader = createMemoryLayoutReader(new Map([[BLOB, Buffer.from('12345')]]));
    expect(reader.size(BLOB)).toBe(5);
    expect(reader.read(BLOB, 5).toString()).toBe('12345');
    expect(codeOf(() => reader.read(BLOB, 4))).toBe('E_TOO_LARGE');
    expect(codeOf(() => reader.read('../x', 4))).toBe('E_NAME_INVALID');
    expect(reader.size('index.json')).toBeNull();
    expect(codeOf(() => reader.read('index.json', 4))).toBe('E_BLOB_MISSING');
  });
});
