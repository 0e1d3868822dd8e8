/**
 * The addon's block-device port against the real kernel: loop devices over squashfs images,
 * device-mapper's argument checks and its absence on the host, and spawn's chroot. Needs root,
 * mksquashfs, and a built addon (`npm run build:addon`).
 *
 * The host has loop and squashfs but no device-mapper: dmCreate/dmStatus/dmRemove themselves are
 * exercised in the VM tests.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../../native/index.ts';
import { MountFlags } from '../../native/types.ts';
import type { ChildExit, LoopDevice, Native, NativeError, SpawnOptions } from '../../native/types.ts';

const isRoot = process.getuid?.() === 0;
const hasMksquashfs = (() => {
  try {
    execFileSync('mksquashfs', ['-version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const ENV = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C'];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface LoopSysfs {
  backingFile: string | null;
  ro: string;
  offset: string | null;
  sizeLimit: string | null;
  sectors: number;
}

/** What /sys says about loopN: its backing file (null when nothing is bound) and attributes. */
function loopSysfs(number: number): LoopSysfs {
  const dir = `/sys/block/loop${number}`;
  const read = (file: string) => {
    try {
      return fs.readFileSync(path.join(dir, file), 'utf8').trim();
    } catch {
      return null;
    }
  };
  return {
    backingFile: read('loop/backing_file'),
    ro: read('ro') ?? '',
    offset: read('loop/offset'),
    sizeLimit: read('loop/sizelimit'),
    sectors: Number(read('size') ?? 0),
  };
}

/** Loop devices bound to a file under `dir` (the kernel appends ` (deleted)` to unlinked ones). */
function loopsBackedUnder(dir: string): string[] {
  return fs
    .readdirSync('/sys/block')
    .filter((name) => /^loop\d+$/.test(name))
    .filter((name) => loopSysfs(Number(name.slice(4))).backingFile?.startsWith(dir + '/'));
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe.skipIf(!isRoot)('native block devices and chroot (root)', () => {
  let native: Native;
  let scratchDir: string;
  /** Devices a test attached: detached after each test whatever happened. */
  const attached: LoopDevice[] = [];
  /** Mount points a test mounted: unmounted (lazily) after each test. */
  const mounted: string[] = [];

  beforeAll(() => {
    native = loadNative();
    scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-block-'));
  });

  afterEach(async () => {
    for (const target of mounted.splice(0).reverse()) {
      await native.umount(target, 2 /* MNT_DETACH */).catch(() => undefined);
    }
    for (const device of attached.splice(0)) await native.loopDetach(device.path).catch(() => undefined);
  });

  afterAll(async () => {
    try {
      // Every device this file bound is free again (lazy detaches included).
      if (scratchDir) await waitFor(() => loopsBackedUnder(scratchDir).length === 0, 'our loop devices to be freed');
    } finally {
      if (scratchDir) fs.rmSync(scratchDir, { recursive: true, force: true });
    }
  });

  async function attach(options: Parameters<Native['loopAttach']>[0]): Promise<LoopDevice> {
    const device = await native.loopAttach(options);
    attached.push(device);
    return device;
  }

  async function mountSquashfs(device: string): Promise<string> {
    const target = fs.mkdtempSync(path.join(scratchDir, 'mnt-'));
    await native.mount({ source: device, target, fstype: 'squashfs', flags: MountFlags.RDONLY });
    mounted.push(target);
    return target;
  }

  async function umount(target: string): Promise<void> {
    await native.umount(target, 0);
    mounted.splice(mounted.indexOf(target), 1);
  }

  /** A squashfs image holding hello.txt, preceded by `before` and followed by `after` junk bytes. */
  function makeImage(name: string, before = 0, after = 0): { file: string; imageBytes: number } {
    const source = fs.mkdtempSync(path.join(scratchDir, 'src-'));
    fs.writeFileSync(path.join(source, 'hello.txt'), `hello from ${name}\n`);
    const image = path.join(scratchDir, `${name}.sqfs`);
    execFileSync('mksquashfs', [source, image, '-noappend', '-quiet', '-no-progress'], { stdio: 'ignore' });
    const imageBytes = fs.statSync(image).size;
    if (before === 0 && after === 0) return { file: image, imageBytes };
    const file = path.join(scratchDir, `${name}.padded`);
    const padded = [Buffer.alloc(before, 0xaa), fs.readFileSync(image), Buffer.alloc(after, 0xbb)];
    fs.writeFileSync(file, Buffer.concat(padded));
    return { file, imageBytes };
  }

  describe.skipIf(!hasMksquashfs)('loop devices', () => {
    it('attaches a squashfs image read-only, mounts it, and detaches it again', async () => {
      const { file } = makeImage('plain');
      const device = await attach({ file, readOnly: true });
      expect(device.path).toBe(`/dev/loop${device.number}`);
      expect(fs.statSync(device.path).isBlockDevice()).toBe(true);
      const sysfs = loopSysfs(device.number);
      expect(sysfs.backingFile).toBe(file);
      expect(sysfs.ro).toBe('1');
      expect(execFileSync('blockdev', ['--getro', device.path], { encoding: 'utf8' }).trim()).toBe('1');

      const target = await mountSquashfs(device.path);
      expect(fs.readFileSync(path.join(target, 'hello.txt'), 'utf8')).toBe('hello from plain\n');
      await umount(target);

      await expect(native.loopDetach(device.path)).resolves.toBeUndefined();
      await waitFor(() => loopSysfs(device.number).backingFile === null, 'the device to be free');
    });

    it('honours offset and sizeLimit', async () => {
      const before = 8192;
      const { file, imageBytes } = makeImage('window', before, 16384);
      const sizeLimit = Math.ceil(imageBytes / 512) * 512;
      const device = await attach({ file, readOnly: true, offset: before, sizeLimit });
      const sysfs = loopSysfs(device.number);
      expect(sysfs).toMatchObject({ backingFile: file, offset: String(before), sizeLimit: String(sizeLimit) });
      expect(sysfs.sectors).toBe(sizeLimit / 512);

      const target = await mountSquashfs(device.path);
      expect(fs.readFileSync(path.join(target, 'hello.txt'), 'utf8')).toBe('hello from window\n');
    });

    it('attaches read-write when not readOnly', async () => {
      const file = path.join(scratchDir, 'blank.img');
      fs.writeFileSync(file, Buffer.alloc(1 << 20));
      const device = await attach({ file, readOnly: false, directIo: true });
      expect(loopSysfs(device.number)).toMatchObject({ backingFile: file, ro: '0', sectors: 2048 });
      // Written through the device, seen in the file.
      const fd = fs.openSync(device.path, 'r+');
      try {
        fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 4096);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      await native.loopDetach(device.path);
      expect(fs.readFileSync(file).subarray(4096, 4096 + 4096).every((byte) => byte === 0x5a)).toBe(true);
    });

    it('a detach while mounted is lazy: the kernel frees the device at umount', async () => {
      const { file } = makeImage('lazy');
      const device = await attach({ file, readOnly: true });
      const target = await mountSquashfs(device.path);
      await expect(native.loopDetach(device.path)).resolves.toBeUndefined();
      // Still bound and readable while the mount holds it.
      expect(loopSysfs(device.number).backingFile).toBe(file);
      expect(fs.readFileSync(path.join(target, 'hello.txt'), 'utf8')).toBe('hello from lazy\n');
      await umount(target);
      await waitFor(() => loopSysfs(device.number).backingFile === null, 'the kernel to free the device');
    });

    it('autoclear: the kernel frees the device at its last close, and loopAttach closes its own fd', async () => {
      // With no other user, the last close is loopAttach's own: the device is already free when the
      // promise resolves. Autoclear only outlives the call for a device opened meanwhile; mount
      // first and loopDetach (lazy, above) to have the kernel free a device at umount.
      const { file } = makeImage('autoclear');
      const device = await attach({ file, readOnly: true, autoclear: true });
      await waitFor(() => loopSysfs(device.number).backingFile === null, 'the kernel to free the device');
    });

    it('rejects a missing file with open ENOENT <file>, before taking a device', async () => {
      const file = path.join(scratchDir, 'missing.img');
      const error = (await native.loopAttach({ file, readOnly: true }).catch((e: unknown) => e)) as NativeError;
      expect(error.message).toBe(`open ENOENT ${file}`);
      expect(error).toMatchObject({ code: 'ENOENT', syscall: 'open', path: file });
    });

    it('loopDetach of a free device resolves (ENXIO is success)', async () => {
      const { file } = makeImage('free');
      const device = await attach({ file, readOnly: true });
      await native.loopDetach(device.path);
      await expect(native.loopDetach(device.path)).resolves.toBeUndefined();
    });

    it('attaches several devices at once, each its own', async () => {
      const { file } = makeImage('many');
      const devices = await Promise.all([1, 2, 3, 4].map(() => attach({ file, readOnly: true })));
      expect(new Set(devices.map((device) => device.number)).size).toBe(4);
      for (const device of devices) expect(loopSysfs(device.number).backingFile).toBe(file);
    });

    it('checks its arguments synchronously', () => {
      const file = path.join(scratchDir, 'unused.img');
      expect(() => native.loopAttach({ file, readOnly: true, offset: 100 })).toThrow(TypeError);
      expect(() => native.loopAttach({ file, readOnly: true, sizeLimit: -512 })).toThrow(TypeError);
      expect(() => native.loopAttach({ file } as never)).toThrow(TypeError);
      expect(() => native.loopAttach({ file: '', readOnly: true })).toThrow(TypeError);
      expect(() => native.loopDetach(7 as never)).toThrow(TypeError);
    });
  });

  describe('device-mapper', () => {
    const table = [{ start: 0, length: 8, type: 'zero', params: '' }];

    it.skipIf(fs.existsSync('/dev/mapper/control'))('rejects with open ENOENT /dev/mapper/control on this host', async () => {
      // One at a time: a promise that rejects before anything awaits it is an unhandled rejection.
      for (const call of [
        () => native.dmCreate({ name: 'mos-test', readOnly: true, table }),
        () => native.dmStatus('mos-test'),
        () => native.dmRemove('mos-test'),
      ]) {
        const error = (await call().catch((e: unknown) => e)) as NativeError;
        expect(error.message).toBe('open ENOENT /dev/mapper/control');
        expect(error).toMatchObject({ code: 'ENOENT', syscall: 'open', path: '/dev/mapper/control' });
      }
    });

    it('checks names, uuids and tables synchronously', () => {
      const bad: Parameters<Native['dmCreate']>[0][] = [
        { name: '', readOnly: true, table },
        { name: 'a/b', readOnly: true, table },
        { name: 'x'.repeat(128), readOnly: true, table },
        { name: 'ok', uuid: 'u'.repeat(129), readOnly: true, table },
        { name: 'ok', readOnly: 'yes' as never, table },
        { name: 'ok', readOnly: true, table: [{ start: -1, length: 8, type: 'zero', params: '' }] },
        { name: 'ok', readOnly: true, table: [{ start: 0, length: 8, type: 'x'.repeat(16), params: '' }] },
        { name: 'ok', readOnly: true, table: [{ start: 0, length: 8, type: 'zero', params: 'a\0b' }] },
      ];
      for (const options of bad) expect(() => native.dmCreate(options), JSON.stringify(options)).toThrow(TypeError);
      expect(() => native.dmStatus('a/b')).toThrow(TypeError);
      expect(() => native.dmRemove('')).toThrow(TypeError);
      // At the limits: accepted (and then refused by the missing control node, or run for real).
      const atLimits = native.dmStatus('x'.repeat(127));
      expect(atLimits).toBeInstanceOf(Promise);
      return atLimits.catch(() => undefined);
    });
  });

  describe('spawn with root (chroot)', () => {
    let rootDir: string;
    let devNull: number;
    const reaped = new Map<number, ChildExit>();

    beforeAll(() => {
      devNull = fs.openSync('/dev/null', 'r+');
      // A root with /bin/sh and its ldd closure (the loader included), and a marker file.
      rootDir = fs.mkdtempSync(path.join(scratchDir, 'root-'));
      const shell = fs.realpathSync('/bin/sh');
      const closure = execFileSync('ldd', [shell], { encoding: 'utf8' })
        .split('\n')
        .flatMap((line) => [...line.matchAll(/(\/[^\s)]+)/g)].map((match) => match[1]!));
      for (const file of [...closure, '/bin/sh']) {
        const copy = path.join(rootDir, file);
        fs.mkdirSync(path.dirname(copy), { recursive: true });
        fs.copyFileSync(file, copy);
        fs.chmodSync(copy, 0o755);
      }
      fs.writeFileSync(path.join(rootDir, 'marker'), '');
      fs.mkdirSync(path.join(rootDir, 'srv'));
    });

    afterAll(() => {
      if (devNull !== undefined) fs.closeSync(devNull);
    });

    async function waitForExit(pid: number, timeoutMs = 10_000): Promise<ChildExit> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        for (const exit of native.reap()) reaped.set(exit.pid, exit);
        const exit = reaped.get(pid);
        if (exit) {
          reaped.delete(pid);
          return exit;
        }
        if (Date.now() > deadline) throw new Error(`pid ${pid} did not exit within ${timeoutMs} ms`);
        await sleep(5);
      }
    }

    function readToEnd(fd: number): Promise<string> {
      return new Promise((resolve, reject) => {
        const socket = new net.Socket({ fd, readable: true, writable: false });
        let text = '';
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => (text += chunk));
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
    }

    type RunOptions = Partial<SpawnOptions> & Pick<SpawnOptions, 'file' | 'argv'>;

    async function run(options: RunOptions) {
      const [readFd, writeFd] = native.pipe();
      let pid: number;
      try {
        pid = native.spawn({
          env: ENV,
          fds: [
            { child: 0, parent: devNull },
            { child: 1, parent: writeFd },
            { child: 2, parent: writeFd },
          ],
          ...options,
        });
      } catch (error) {
        native.close(readFd);
        throw error;
      } finally {
        native.close(writeFd);
      }
      const output = await readToEnd(readFd);
      return { output, exit: await waitForExit(pid) };
    }

    async function spawnError(options: RunOptions): Promise<NativeError> {
      let error: NativeError | undefined;
      try {
        native.spawn({ env: ENV, fds: [], ...options });
      } catch (caught) {
        error = caught as NativeError;
      }
      if (!error) throw new Error('spawn did not throw');
      // The child that failed before exec exits 127 and is ours to reap.
      expect((await waitForExit(error.pid!)).code).toBe(127);
      return error;
    }

    const script = 'echo "$PWD"; test -e /marker && echo inside; test -e /proc/self && echo proc; exit 0';

    it('runs the program inside the root, in / by default', async () => {
      const { output, exit } = await run({ root: rootDir, file: '/bin/sh', argv: ['sh', '-c', script] });
      expect(exit.code).toBe(0);
      // /marker exists only in the new root, /proc only outside it.
      expect(output).toBe('/\ninside\n');
    });

    it('takes cwd inside the root', async () => {
      const { output } = await run({ root: rootDir, cwd: '/srv', file: '/bin/sh', argv: ['sh', '-c', 'pwd'] });
      expect(output).toBe('/srv\n');
    });

    it('fails at stage chroot for a missing root', async () => {
      const missing = path.join(scratchDir, 'no-such-root');
      const error = await spawnError({ root: missing, file: '/bin/sh', argv: ['sh'] });
      expect(error.message).toBe(`chroot ENOENT ${missing}`);
      expect(error).toMatchObject({ code: 'ENOENT', syscall: 'chroot', path: missing });
    });

    it('fails at chdir for a cwd missing inside the root, and execve for a file missing there', async () => {
      const chdirError = await spawnError({ root: rootDir, cwd: '/nope', file: '/bin/sh', argv: ['sh'] });
      expect(chdirError.message).toBe('chdir ENOENT /nope');
      const execError = await spawnError({ root: rootDir, file: '/usr/bin/env', argv: ['env'] });
      expect(execError.message).toBe('execve ENOENT /usr/bin/env');
    });

    it('checks root synchronously', () => {
      expect(() => native.spawn({ root: 5 as never, file: '/bin/sh', argv: ['sh'], env: ENV, fds: [] })).toThrow(TypeError);
    });
  });
});
