/**
 * The one port through which the install verifier reads an OCI image layout, and its node:fs
 * implementation.
 *
 * The layout is untrusted input (anyone holding the disk can write it), so the reader opens
 * nothing but the three kinds of file a layout holds — `oci-layout`, `index.json` and
 * `blobs/sha256/<64 hex>` — and refuses every other name before touching the disk. It follows
 * no symlink (O_NOFOLLOW on the file; `blobs` and `blobs/sha256` must be real directories),
 * opens regular files only (lstat before open, so no device node is ever opened; O_NONBLOCK and
 * fstat after it, so a FIFO swapped in meanwhile cannot block boot), and checks a file's size
 * against the caller's limit before reading any of it: an oversized file is refused without
 * being read, and no read goes past the size checked.
 *
 * Limits of the fs implementation: the intermediate directories are checked with lstat and then
 * the file opened by path, so an attacker who can change the layout *while* it is being read
 * could swap a directory between the two; at boot the layout is on a disk nobody else writes.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';

export interface LayoutReader {
  /** Byte size of a regular file in the layout; null when there is no such file. */
  size(relPath: string): number | null;
  /** A file's bytes; refuses (E_TOO_LARGE) a file larger than `maxBytes` before reading it. */
  read(relPath: string, maxBytes: number): Buffer;
}

export type LayoutReadErrorCode =
  /** The path is not one a layout may hold (refused before touching the disk). */
  | 'E_NAME_INVALID'
  /** No such file. */
  | 'E_BLOB_MISSING'
  /** The file is larger than the caller's limit (nothing of it was read). */
  | 'E_TOO_LARGE'
  /** A symlink, a directory, a device or FIFO, or a file that changed while read. */
  | 'E_LAYOUT_INVALID'
  /** Any other I/O failure (see `cause`). */
  | 'E_LAYOUT_IO';

export class LayoutReadError extends Error {
  constructor(
    readonly code: LayoutReadErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'LayoutReadError';
  }
}

const BLOB_PATH = /^blobs\/sha256\/[0-9a-f]{64}$/;

/** Whether `relPath` names a file an OCI layout holds: the only paths a reader opens. */
export function isLayoutPath(relPath: string): boolean {
  return relPath === 'oci-layout' || relPath === 'index.json' || BLOB_PATH.test(relPath);
}

/** `blobs/sha256/<hex>` for a `sha256:<hex>` digest (validated by the caller). */
export function blobPath(digest: string): string {
  return `blobs/sha256/${digest.slice('sha256:'.length)}`;
}

function checkPath(relPath: string): void {
  if (!isLayoutPath(relPath)) {
    throw new LayoutReadError('E_NAME_INVALID', `refusing to open ${JSON.stringify(relPath.slice(0, 200))}: not a file of an OCI layout`);
  }
}

function checkLimit(maxBytes: number): void {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`maxBytes must be a non-negative integer, not ${maxBytes}`);
}

/** What the fs reader needs from node:fs; tests pass a spy. */
export interface LayoutFs {
  lstatSync(path: string): FileStat;
  openSync(path: string, flags: number): number;
  fstatSync(fd: number): FileStat;
  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number | null): number;
  closeSync(fd: number): void;
}

export interface FileStat {
  size: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

export const nodeLayoutFs: LayoutFs = {
  lstatSync: (path) => fs.lstatSync(path),
  openSync: (path, flags) => fs.openSync(path, flags),
  fstatSync: (fd) => fs.fstatSync(fd),
  readSync: (fd, buffer, offset, length, position) => fs.readSync(fd, buffer, offset, length, position),
  closeSync: (fd) => fs.closeSync(fd),
};

const errno = (error: unknown) => (error as NodeJS.ErrnoException).code;

function describeKind(stat: FileStat): string {
  if (stat.isSymbolicLink()) return 'a symlink';
  if (stat.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/**
 * A LayoutReader over the directory `root` (trusted: where the caller mounted the store).
 * Every error is a LayoutReadError.
 */
export function createFsLayoutReader(root: string, io: LayoutFs = nodeLayoutFs): LayoutReader {
  const ioError = (what: string, relPath: string, cause: unknown) =>
    new LayoutReadError('E_LAYOUT_IO', `${what} ${relPath}: ${(cause as Error).message}`, { cause });

  /** `blobs` and `blobs/sha256` must be real directories (O_NOFOLLOW covers the last component only). */
  const checkDirectories = (relPath: string): 'ok' | 'absent' => {
    if (!relPath.startsWith('blobs/')) return 'ok';
    for (const dir of ['blobs', 'blobs/sha256']) {
      let stat: FileStat;
      try {
        stat = io.lstatSync(join(root, dir));
      } catch (cause) {
        if (errno(cause) === 'ENOENT') return 'absent';
        throw ioError('cannot inspect', dir, cause);
      }
      if (!stat.isDirectory() || stat.isSymbolicLink()) {
        throw new LayoutReadError('E_LAYOUT_INVALID', `${dir} is ${stat.isSymbolicLink() ? 'a symlink' : 'not a directory'}: refusing the layout`);
      }
    }
    return 'ok';
  };

  return {
    size(relPath) {
      checkPath(relPath);
      if (checkDirectories(relPath) === 'absent') return null;
      let stat: FileStat;
      try {
        stat = io.lstatSync(join(root, relPath));
      } catch (cause) {
        if (errno(cause) === 'ENOENT') return null;
        throw ioError('cannot inspect', relPath, cause);
      }
      if (!stat.isFile()) throw new LayoutReadError('E_LAYOUT_INVALID', `${relPath} is ${describeKind(stat)}: refusing it`);
      return stat.size;
    },

    read(relPath, maxBytes) {
      checkPath(relPath);
      checkLimit(maxBytes);
      if (checkDirectories(relPath) === 'absent') throw new LayoutReadError('E_BLOB_MISSING', `${relPath} does not exist`);
      // Before open(): opening a device node can act on the device (a watchdog starts, a tape
      // rewinds), O_NONBLOCK or not. The fstat after open still decides what is read.
      let before: FileStat;
      try {
        before = io.lstatSync(join(root, relPath));
      } catch (cause) {
        if (errno(cause) === 'ENOENT') throw new LayoutReadError('E_BLOB_MISSING', `${relPath} does not exist`, { cause });
        throw ioError('cannot inspect', relPath, cause);
      }
      if (!before.isFile()) throw new LayoutReadError('E_LAYOUT_INVALID', `${relPath} is ${describeKind(before)}: refusing it`);
      let fd: number;
      try {
        fd = io.openSync(join(root, relPath), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      } catch (cause) {
        if (errno(cause) === 'ENOENT') throw new LayoutReadError('E_BLOB_MISSING', `${relPath} does not exist`, { cause });
        if (errno(cause) === 'ELOOP') throw new LayoutReadError('E_LAYOUT_INVALID', `${relPath} is a symlink: refusing it`, { cause });
        throw ioError('cannot open', relPath, cause);
      }
      try {
        let stat: FileStat;
        try {
          stat = io.fstatSync(fd);
        } catch (cause) {
          throw ioError('cannot inspect', relPath, cause);
        }
        if (!stat.isFile()) throw new LayoutReadError('E_LAYOUT_INVALID', `${relPath} is ${describeKind(stat)}: refusing it`);
        if (stat.size > maxBytes) {
          throw new LayoutReadError('E_TOO_LARGE', `${relPath} has ${stat.size} bytes, more than the ${maxBytes} allowed: not reading it`);
        }
        const buffer = Buffer.alloc(stat.size);
        let filled = 0;
        let after: FileStat;
        try {
          while (filled < buffer.length) {
            const got = io.readSync(fd, buffer, filled, buffer.length - filled, filled);
            if (got === 0) break;
            filled += got;
          }
          // Never a byte past the size checked: a file that grew or shrank meanwhile is refused.
          after = io.fstatSync(fd);
        } catch (cause) {
          throw ioError('cannot read', relPath, cause);
        }
        if (filled !== buffer.length || after.size !== stat.size) {
          throw new LayoutReadError('E_LAYOUT_INVALID', `${relPath} changed size while being read: refusing it`);
        }
        return buffer;
      } finally {
        io.closeSync(fd);
      }
    },
  };
}

/**
 * A LayoutReader over files held in memory (relative path → bytes), with the same name rule and
 * limits; for layouts fetched by other means and for tests.
 */
export function createMemoryLayoutReader(files: ReadonlyMap<string, Buffer>): LayoutReader {
  return {
    size(relPath) {
      checkPath(relPath);
      return files.get(relPath)?.length ?? null;
    },
    read(relPath, maxBytes) {
      checkPath(relPath);
      checkLimit(maxBytes);
      const data = files.get(relPath);
      if (!data) throw new LayoutReadError('E_BLOB_MISSING', `${relPath} does not exist`);
      if (data.length > maxBytes) {
        throw new LayoutReadError('E_TOO_LARGE', `${relPath} has ${data.length} bytes, more than the ${maxBytes} allowed: not reading it`);
      }
      return Buffer.from(data);
    },
  };
}
