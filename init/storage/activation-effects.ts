/**
 * The real `ActivationEffects`: node:fs for reads and directories (libuv's thread pool, never
 * the main thread for a read that may hit a slow or failing disk), the addon for the rest.
 */
import { chownSync, close, closeSync, constants as fsConstants, existsSync, fstat, lstatSync, mkdirSync, open, openSync, read, readdirSync, readFileSync, rm } from 'node:fs';
import path from 'node:path';
import { runTool, type ToolRunner } from '../boot/run-tool.ts';
import type { VolumeEffects } from './volume-phase.ts';
import { parseBlockDevice, type BlockDeviceInfo } from './volumes.ts';
import type { Native } from '../../native/types.ts';
import type { ActivationEffects } from './activate.ts';

function openReadOnly(file: string): Promise<number> {
  return new Promise((resolve, reject) => open(file, 'r', (error, fd) => (error ? reject(error) : resolve(fd))));
}

function closeQuietly(fd: number): void {
  close(fd, () => {});
}

/** See `ActivationEffects.dirInside`: component by component, lstat, never following a symlink. */
export function dirInside(root: string, relative: string): string {
  const parts = relative.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) throw new Error(`${relative}: ".." is not allowed inside a service root`);
  let current = root;
  for (const part of parts) {
    current = `${current}/${part}`;
    let stats;
    try {
      stats = lstatSync(current);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      mkdirSync(current, { mode: 0o755 });
      continue;
    }
    if (stats.isSymbolicLink()) throw new Error(`${current.slice(root.length)} is a symlink in the image: a mount there could land outside the service root`);
    if (!stats.isDirectory()) throw new Error(`${current.slice(root.length)} is not a directory in the image`);
  }
  return current;
}

/** An empty file inside a service root, for a bind mount of a file (the notify socket): never through a symlink of the image. */
export function fileInside(root: string, relative: string): void {
  const dir = dirInside(root, path.posix.dirname(relative));
  const file = `${dir}/${path.posix.basename(relative)}`;
  closeSync(openSync(file, fsConstants.O_CREAT | fsConstants.O_WRONLY | fsConstants.O_NOFOLLOW, 0o644));
}

export function createActivationEffects(native: Native): ActivationEffects {
  return {
    native,
    fileSize: async (file) => {
      const fd = await openReadOnly(file);
      try {
        return await new Promise<number>((resolve, reject) => fstat(fd, (error, stats) => (error ? reject(error) : resolve(stats.size))));
      } finally {
        closeQuietly(fd);
      }
    },
    readAt: async (file, offset, length) => {
      const fd = await openReadOnly(file);
      try {
        const buffer = Buffer.alloc(length);
        let filled = 0;
        while (filled < length) {
          const count = await new Promise<number>((resolve, reject) =>
            read(fd, buffer, filled, length - filled, offset + filled, (error, bytes) => (error ? reject(error) : resolve(bytes))),
          );
          if (count === 0) throw Object.assign(new Error(`short read of ${file}: ${filled} of ${length} bytes at ${offset}`), { code: 'ESHORT' });
          filled += count;
        }
        return buffer;
      } finally {
        closeQuietly(fd);
      }
    },
    exists: (file) => existsSync(file),
    dirInside,
    fileInside,
    chown: (file, uid, gid) => chownSync(file, uid, gid),
    mkdirp: (dir) => void mkdirSync(dir, { recursive: true, mode: 0o755 }),
    removeTree: (dir) => new Promise((resolve, reject) => rm(dir, { recursive: true, force: true }, (error) => (error ? reject(error) : resolve()))),
  };
}

/** Loop devices with a backing file and dm devices, as the kernel lists them in /sys/block. */
export function countBlockDevices(sysBlock = '/sys/block'): { loop: number; dm: number } {
  let loop = 0;
  let dm = 0;
  let names: string[] = [];
  try {
    names = readdirSync(sysBlock);
  } catch {
    return { loop, dm };
  }
  for (const name of names) {
    if (name.startsWith('dm-')) dm++;
    else if (name.startsWith('loop') && existsSync(`${sysBlock}/${name}/loop/backing_file`)) loop++;
  }
  return { loop, dm };
}

/** The real `VolumeEffects`: /sys/class/block, device reads on the thread pool, tools through PID 1's reaper. */
export function createVolumeEffects(
  native: Native,
  tools: ToolRunner,
  report: { say(line: string): void; log(fields: object, message: string): void },
  sysClassBlock = '/sys/class/block',
): VolumeEffects {
  const readText = (file: string): string | null => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return null;
    }
  };
  return {
    native,
    listBlockDevices: () => {
      let names: string[] = [];
      try {
        names = readdirSync(sysClassBlock);
      } catch {
        return [];
      }
      const devices: BlockDeviceInfo[] = [];
      for (const name of names) {
        const dir = `${sysClassBlock}/${name}`;
        // A partition's serial is its disk's; the disk is the parent directory of its sysfs node.
        const device = parseBlockDevice(name, {
          dev: readText(`${dir}/dev`),
          size: readText(`${dir}/size`),
          ro: readText(`${dir}/ro`),
          serial: readText(`${dir}/serial`) ?? readText(`${dir}/device/serial`),
          uevent: readText(`${dir}/uevent`),
          partition: readText(`${dir}/partition`),
        });
        if (device) devices.push(device);
      }
      return devices;
    },
    readHead: async (device, length) => {
      try {
        const fd = await openReadOnly(device);
        try {
          const head = Buffer.alloc(length);
          let filled = 0;
          while (filled < length) {
            const count = await new Promise<number>((resolve, reject) => read(fd, head, filled, length - filled, filled, (error, bytes) => (error ? reject(error) : resolve(bytes))));
            if (count === 0) return null;
            filled += count;
          }
          return head;
        } finally {
          closeQuietly(fd);
        }
      } catch {
        return null;
      }
    },
    runTool: (argv, timeoutMs) => runTool(tools, `/usr/sbin/${argv[0]}`, argv, timeoutMs),
    mkdirp: (dir) => void mkdirSync(dir, { recursive: true, mode: 0o755 }),
    say: report.say,
    log: report.log,
  };
}
