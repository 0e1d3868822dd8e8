/**
 * Storage volume decisions against the real tools and kernel: the mke2fs command line from
 * mkfsArgv makes a filesystem that parseExt4Head and dumpe2fs describe alike, whose root belongs
 * to the nsgroup's root once mounted; e2fsck's real exit statuses through fsckVerdict, clean and
 * after a corruption preen refuses to fix; planVolume over real devices (loop devices standing
 * in for virtio disks, their sysfs read as the boot reads it). Needs root, loop devices,
 * e2fsprogs and a built addon (`npm run build:addon`).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../../native/index.ts';
import type { LoopDevice, Native } from '../../native/types.ts';
import type { StorageItem } from '../../init/trust/formats.ts';
import {
  checkVolumeOwner,
  fsckArgv,
  fsckVerdict,
  mkfsArgv,
  parseBlockDevice,
  parseExt4Head,
  planVolume,
  VOLUME_HEAD_BYTES,
  type BlockDeviceInfo,
  type VolumePlan,
} from '../../init/storage/volumes.ts';

const MIB = 1024 * 1024;
const OWNER = { uid: 100000, gid: 100000 };
const TOOL_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };
const isRoot = process.getuid?.() === 0;
const hasTools = ['mke2fs', 'e2fsck', 'dumpe2fs'].every((tool) => spawnSync(tool, ['-V'], { env: TOOL_ENV, stdio: 'ignore' }).status === 0);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function readOptional(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** What the boot would see of a loop device; `serial` stands in for a virtio disk's serial. */
function deviceInfo(loop: LoopDevice, serial: string | null): BlockDeviceInfo {
  const name = `loop${loop.number}`;
  const dir = `/sys/class/block/${name}`;
  const read = (file: string) => readOptional(path.join(dir, file));
  const info = parseBlockDevice(name, { dev: read('dev'), size: read('size'), ro: read('ro'), serial, uevent: read('uevent'), partition: read('partition') });
  if (!info) throw new Error(`sysfs of ${name} did not parse`);
  return info;
}

/** The device's first `length` bytes (fewer when it is smaller). */
function readHead(device: string, length = VOLUME_HEAD_BYTES): Buffer {
  const fd = fs.openSync(device, 'r');
  try {
    const head = Buffer.alloc(length);
    const read = fs.readSync(fd, head, 0, length, 0);
    return head.subarray(0, read);
  } finally {
    fs.closeSync(fd);
  }
}

function run(argv: string[]): { status: number | null; signal: string | null; output: string } {
  const result = spawnSync(argv[0]!, argv.slice(1), { env: TOOL_ENV, encoding: 'utf8' });
  if (result.error) throw result.error;
  return { status: result.status, signal: result.signal, output: `${result.stdout}${result.stderr}` };
}

function mustRun(argv: string[]): string {
  const result = run(argv);
  if (result.status !== 0) throw new Error(`${argv.join(' ')}: exit ${result.status}: ${result.output}`);
  return result.output;
}

/** `dumpe2fs -h` fields by name ("Block count" → "16384"). */
function dumpe2fsHeader(device: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of execFileSync('dumpe2fs', ['-h', device], { env: TOOL_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')) {
    const match = /^([^:]+):\s*(.*)$/.exec(line);
    if (match) fields.set(match[1]!.trim(), match[2]!.trim());
  }
  return fields;
}

function item(overrides: Partial<StorageItem> = {}): StorageItem {
  return { label: 'zot-data', persistent: true, nsgroup: 'zot', size: 64, ...overrides };
}

describe.skipIf(!isRoot || !hasTools)('storage volumes with mke2fs, e2fsck and the kernel (root)', () => {
  let native: Native;
  let scratchDir: string;
  let volumesDir: string;
  const attached: LoopDevice[] = [];
  const mounted: string[] = [];

  beforeAll(() => {
    native = loadNative();
    scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-volumes-'));
    volumesDir = path.join(scratchDir, 'volumes');
  });

  afterEach(async () => {
    for (const target of mounted.splice(0).reverse()) await native.umount(target, 2 /* MNT_DETACH */).catch(() => undefined);
    for (const device of attached.splice(0)) await native.loopDetach(device.path).catch(() => undefined);
  });

  afterAll(async () => {
    if (!scratchDir) return;
    try {
      // Every loop device this file bound is free again before its backing files go.
      const deadline = Date.now() + 5_000;
      const ours = () =>
        fs
          .readdirSync('/sys/block')
          .filter((name) => /^loop\d+$/.test(name))
          .filter((name) => readOptional(`/sys/block/${name}/loop/backing_file`)?.startsWith(scratchDir + '/'));
      while (ours().length > 0 && Date.now() < deadline) await sleep(20);
      expect(ours()).toEqual([]);
    } finally {
      fs.rmSync(scratchDir, { recursive: true, force: true });
    }
  });

  /** A sparse file of `mib` MiB (all zeros: a blank disk) on a loop device. */
  async function blankDevice(name: string, mib: number, readOnly = false): Promise<LoopDevice> {
    const file = path.join(scratchDir, `${name}.img`);
    fs.closeSync(fs.openSync(file, 'w'));
    fs.truncateSync(file, mib * MIB);
    const loop = await native.loopAttach({ file, readOnly });
    attached.push(loop);
    return loop;
  }

  async function mount(plan: VolumePlan): Promise<void> {
    fs.mkdirSync(plan.mountDir, { recursive: true });
    await native.mount({ source: plan.device, target: plan.mountDir, fstype: 'ext4', flags: 0, data: '' });
    mounted.push(plan.mountDir);
  }

  async function umount(dir: string): Promise<void> {
    await native.umount(dir, 0);
    mounted.splice(mounted.indexOf(dir), 1);
  }

  /** planVolume over one device as the boot would call it: head read, then planned. */
  function planOn(loop: LoopDevice, storage: StorageItem, serial = storage.label) {
    return planVolume(storage, [deviceInfo(loop, serial)], readHead(loop.path), OWNER, volumesDir);
  }

  it('a blank device: mkfs; the filesystem is what parseExt4Head and dumpe2fs say; then check', async () => {
    const loop = await blankDevice('fresh', 64);
    const first = planOn(loop, item());
    expect(first).toMatchObject({ ok: true, plan: { action: 'mkfs', device: loop.path, deviceBytes: 64 * MIB } });
    if (!first.ok) return;
    mustRun(mkfsArgv(first.plan));

    const facts = parseExt4Head(readHead(loop.path, 2048));
    expect(facts).toMatchObject({ ext4: true, label: 'zot-data', sizeBytes: 64 * MIB, blockSize: 4096, cleanlyUnmounted: true, errors: false });
    const dumped = dumpe2fsHeader(loop.path);
    expect(dumped.get('Filesystem volume name')).toBe(facts.label);
    expect(dumped.get('Filesystem UUID')).toBe(facts.uuid);
    expect(Number(dumped.get('Block count'))).toBe(facts.blocksCount);
    expect(Number(dumped.get('Block size'))).toBe(facts.blockSize);
    expect(dumped.get('Reserved block count')).toBe('0');
    expect(dumped.get('Errors behavior')).toBe('Remount read-only');
    expect(dumped.get('Inode size')).toBe('256');

    // The next boot finds its own filesystem: check, never mkfs.
    expect(planOn(loop, item())).toMatchObject({ ok: true, plan: { action: 'check' } });
  });

  it('mounted, the root belongs to the nsgroup root; e2fsck -p passes a clean volume', async () => {
    const loop = await blankDevice('owned', 64);
    const planned = planOn(loop, item());
    if (!planned.ok) throw new Error(planned.message);
    mustRun(mkfsArgv(planned.plan));

    await mount(planned.plan);
    const root = fs.statSync(planned.plan.mountDir);
    expect({ uid: root.uid, gid: root.gid }).toEqual(OWNER);
    expect(checkVolumeOwner(planned.plan, root)).toEqual({ ok: true });
    fs.writeFileSync(path.join(planned.plan.mountDir, 'kept.txt'), 'survives a reboot\n');
    await umount(planned.plan.mountDir);

    const checked = planOn(loop, item());
    expect(checked).toMatchObject({ ok: true, plan: { action: 'check' } });
    if (!checked.ok) return;
    const fsck = run(fsckArgv(checked.plan));
    expect(fsck.status).toBe(0);
    expect(fsckVerdict(checked.plan, fsck.status, fsck.signal, fsck.output)).toEqual({ ok: true, corrected: false });

    await mount(checked.plan);
    expect(fs.readFileSync(path.join(checked.plan.mountDir, 'kept.txt'), 'utf8')).toBe('survives a reboot\n');
  });

  it('a corruption preen will not fix: e2fsck -p exits 4 and fsckVerdict refuses with E_VOLUME_CORRUPT', async () => {
    const loop = await blankDevice('broken', 64);
    const planned = planOn(loop, item());
    if (!planned.ok) throw new Error(planned.message);
    mustRun(mkfsArgv(planned.plan));

    // Garbage over group 0's first inode-table block: the bad-blocks inode (1), the root (2)
    // and the journal inode (8) are all in it, and e2fsck reads them even on a clean volume.
    const groups = execFileSync('dumpe2fs', [loop.path], { env: TOOL_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const inodeTable = /Inode table at (\d+)-/.exec(groups);
    expect(inodeTable).not.toBeNull();
    const blockSize = Number(dumpe2fsHeader(loop.path).get('Block size'));
    const garbage = Buffer.alloc(blockSize);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 131 + 7) & 0xff;
    const fd = fs.openSync(loop.path, 'r+');
    try {
      fs.writeSync(fd, garbage, 0, garbage.length, Number(inodeTable![1]) * blockSize);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }

    // The superblock is untouched: still ours, so the boot checks it...
    const checked = planOn(loop, item());
    expect(checked).toMatchObject({ ok: true, plan: { action: 'check' } });
    if (!checked.ok) return;
    // ...and e2fsck refuses to guess.
    const fsck = run(fsckArgv(checked.plan));
    expect(fsck.status).toBe(4);
    const verdict = fsckVerdict(checked.plan, fsck.status, fsck.signal, fsck.output);
    expect(verdict).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT' });
    if (!verdict.ok) {
      expect(verdict.message).toContain(`volume zot-data (${loop.path}): e2fsck -p exit 4 (errors left uncorrected)`);
      expect(verdict.message).toContain('UNEXPECTED INCONSISTENCY');
    }
  });

  it('a device holding an ext4 with another label is E_VOLUME_FOREIGN for a persistent volume, and left as it is', async () => {
    const loop = await blankDevice('foreign', 64);
    mustRun(['mke2fs', '-t', 'ext4', '-F', '-q', '-L', 'someone-else', loop.path]);
    const before = dumpe2fsHeader(loop.path).get('Filesystem UUID');
    const result = planOn(loop, item());
    expect(result).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
    if (!result.ok) expect(result.message).toContain(`${loop.path} holds an ext4 filesystem labelled "someone-else", not "zot-data"`);
    expect(dumpe2fsHeader(loop.path).get('Filesystem UUID')).toBe(before);
  });

  it('a non-persistent volume is made anew every boot: yesterday\'s files are gone', async () => {
    const loop = await blankDevice('scratch', 64);
    const first = planOn(loop, item({ label: 'zot-cache', persistent: false }));
    if (!first.ok) throw new Error(first.message);
    expect(first.plan.action).toBe('mkfs');
    mustRun(mkfsArgv(first.plan));
    const firstUuid = parseExt4Head(readHead(loop.path, 2048)).uuid;
    await mount(first.plan);
    fs.writeFileSync(path.join(first.plan.mountDir, 'temp.txt'), 'gone after reboot\n');
    await umount(first.plan.mountDir);

    const second = planOn(loop, item({ label: 'zot-cache', persistent: false }));
    if (!second.ok) throw new Error(second.message);
    expect(second.plan.action).toBe('mkfs');
    mustRun(mkfsArgv(second.plan));
    expect(parseExt4Head(readHead(loop.path, 2048)).uuid).not.toBe(firstUuid);
    await mount(second.plan);
    expect(fs.readdirSync(second.plan.mountDir)).toEqual(['lost+found']);
    expect(fs.statSync(second.plan.mountDir).uid).toBe(OWNER.uid);
  });

  it('a read-only device is E_VOLUME_READONLY; a small one E_VOLUME_TOO_SMALL; a missing one E_VOLUME_MISSING', async () => {
    const readOnly = await blankDevice('readonly', 16, true);
    expect(planOn(readOnly, item({ size: 16 }))).toMatchObject({ ok: false, code: 'E_VOLUME_READONLY' });

    const small = await blankDevice('small', 16);
    const tooSmall = planOn(small, item({ size: 64 }));
    expect(tooSmall).toEqual({ ok: false, code: 'E_VOLUME_TOO_SMALL', message: `volume zot-data: ${small.path} holds 16 MiB, the manifest asks for 64 MiB` });

    expect(planOn(small, item(), 'not-it')).toMatchObject({ ok: false, code: 'E_VOLUME_MISSING' });
  });
});
