/**
 * Storage volume decisions over hand-made inputs: sysfs texts as the kernel writes them, ext4
 * superblocks built field by field, every refusal with its code and a message naming the
 * problem, and the exact mke2fs and e2fsck command lines.
 */
import { describe, expect, it } from 'vitest';
import type { InstallTarget, StorageItem } from '../../init/trust/formats.ts';
import {
  checkVolumeOwner,
  EXT4_HEAD_BYTES,
  filesystemLabel,
  findVolumeDevice,
  fsckArgv,
  fsckVerdict,
  mkfsArgv,
  parseBlockDevice,
  parseExt4Head,
  planTargetMounts,
  planVolume,
  VOLUME_HEAD_BYTES,
  type BlockDeviceFiles,
  type BlockDeviceInfo,
  type VolumePlan,
} from '../../init/storage/volumes.ts';

const MIB = 1024 * 1024;
const VOLUMES = '/run/mos/volumes';
const OWNER = { uid: 100000, gid: 100000 };
const UUID = '0b5e2a4c-9d31-4f7e-8a62-1c3d5e7f9a0b';

function sysfs(overrides: Partial<BlockDeviceFiles> = {}): BlockDeviceFiles {
  return { dev: '254:16\n', size: '2097152\n', ro: '0\n', serial: null, uevent: 'MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\nDISKSEQ=3\n', partition: null, ...overrides };
}

/** A whole virtio disk `name` with `serial`, `mib` MiB. */
function disk(name: string, serial: string | null, mib = 1024, extra: Partial<BlockDeviceInfo> = {}): BlockDeviceInfo {
  return { name, path: `/dev/${name}`, major: 254, minor: 16, sizeBytes: mib * MIB, readOnly: false, serial, partName: null, isPartition: false, ...extra };
}

/** A partition `name` with GPT name `partName`. */
function part(name: string, partName: string | null, mib = 1024, extra: Partial<BlockDeviceInfo> = {}): BlockDeviceInfo {
  return { name, path: `/dev/${name}`, major: 254, minor: 17, sizeBytes: mib * MIB, readOnly: false, serial: null, partName, isPartition: true, ...extra };
}

interface SuperblockFields {
  label?: string;
  uuid?: string;
  blocks?: number;
  logBlockSize?: number;
  state?: number;
  inodes?: number;
  magic?: number;
  incompat?: number;
}

/** The first 2048 bytes of a device holding an ext4 filesystem with these superblock fields. */
function ext4Head(fields: SuperblockFields = {}, length = EXT4_HEAD_BYTES): Buffer {
  const head = Buffer.alloc(length);
  const sb = 1024;
  const blocks = fields.blocks ?? 262144;
  head.writeUInt32LE(fields.inodes ?? 65536, sb + 0x00);
  head.writeUInt32LE(blocks % 2 ** 32, sb + 0x04);
  head.writeUInt32LE(fields.logBlockSize ?? 2, sb + 0x18);
  head.writeUInt16LE(fields.magic ?? 0xef53, sb + 0x38);
  head.writeUInt16LE(fields.state ?? 1, sb + 0x3a);
  const incompat = fields.incompat ?? 0x2c2; // filetype, extent, 64bit, flex_bg
  head.writeUInt32LE(incompat, sb + 0x60);
  Buffer.from((fields.uuid ?? UUID).replaceAll('-', ''), 'hex').copy(head, sb + 0x68);
  Buffer.from(fields.label ?? 'zot-data', 'utf8').copy(head, sb + 0x78, 0, 16);
  head.writeUInt32LE(Math.floor(blocks / 2 ** 32), sb + 0x150);
  return head;
}

function item(overrides: Partial<StorageItem> = {}): StorageItem {
  return { label: 'zot-data', persistent: true, nsgroup: 'zot', size: 512, ...overrides };
}

function target(overrides: Partial<InstallTarget> = {}): InstallTarget {
  return {
    service_name: 'zot',
    version: '1',
    service_type: 'container',
    network: { type: 'none', ipv4: '', ipv6: '', ports: null },
    nsgroup: 'zot',
    digest: `sha256:${'cd'.repeat(32)}`,
    storage: [{ dest: '/zot', label: 'zot-data' }],
    size: 100,
    ...overrides,
  };
}

function plan(overrides: Partial<VolumePlan> = {}): VolumePlan {
  return {
    label: 'zot-data',
    persistent: true,
    nsgroup: 'zot',
    sizeMiB: 512,
    device: '/dev/vdb',
    deviceBytes: 1024 * MIB,
    fsLabel: 'zot-data',
    action: 'check',
    mountDir: `${VOLUMES}/zot-data`,
    owner: OWNER,
    ...overrides,
  };
}

describe('parseBlockDevice', () => {
  it('reads a whole virtio disk: dev, size in sectors, ro, trimmed serial', () => {
    expect(parseBlockDevice('vdb', sysfs({ serial: 'zot-data\n' }))).toEqual({
      name: 'vdb',
      path: '/dev/vdb',
      major: 254,
      minor: 16,
      sizeBytes: 1024 * MIB,
      readOnly: false,
      serial: 'zot-data',
      partName: null,
      isPartition: false,
    });
  });

  it('reads a GPT partition: PARTNAME from uevent, the partition file marks it', () => {
    const uevent = 'MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=1\nPARTNAME=zot-data\n';
    const device = parseBlockDevice('nvme0n1p1', sysfs({ dev: '259:1', size: '1024', ro: '1', uevent, partition: '1\n' }));
    expect(device).toMatchObject({ path: '/dev/nvme0n1p1', major: 259, minor: 1, sizeBytes: 512 * 1024, readOnly: true, partName: 'zot-data', isPartition: true, serial: null });
  });

  it('an empty serial or PARTNAME is none; a "!" in the name is a "/" in /dev', () => {
    const device = parseBlockDevice('cciss!c0d0', sysfs({ serial: '   \n', uevent: 'PARTNAME=\n' }));
    expect(device).toMatchObject({ path: '/dev/cciss/c0d0', serial: null, partName: null });
  });

  it('is null without dev or size, with malformed ones, or a name that is not a block name', () => {
    expect(parseBlockDevice('vdb', sysfs({ dev: null }))).toBeNull();
    expect(parseBlockDevice('vdb', sysfs({ size: null }))).toBeNull();
    expect(parseBlockDevice('vdb', sysfs({ dev: 'x:1' }))).toBeNull();
    expect(parseBlockDevice('vdb', sysfs({ size: '-1' }))).toBeNull();
    expect(parseBlockDevice('vdb', sysfs({ size: '99999999999999999999' }))).toBeNull();
    expect(parseBlockDevice('../sda', sysfs())).toBeNull();
    expect(parseBlockDevice('a/b', sysfs())).toBeNull();
    expect(parseBlockDevice('', sysfs())).toBeNull();
  });

  it('a missing ro file reads as writable', () => {
    expect(parseBlockDevice('vdb', sysfs({ ro: null }))?.readOnly).toBe(false);
  });
});

describe('findVolumeDevice', () => {
  it('finds a GPT partition by its name and a whole disk by its serial', () => {
    const devices = [disk('vda', null), part('vda1', 'esp'), part('vda2', 'zot-data'), disk('vdc', 'logs')];
    expect(findVolumeDevice('zot-data', devices)).toEqual({ ok: true, device: devices[2] });
    expect(findVolumeDevice('logs', devices)).toEqual({ ok: true, device: devices[3] });
  });

  it('ignores a partition serial and a disk PARTNAME (each kind is matched by its own name)', () => {
    const devices = [disk('vdb', null, 1024, { partName: 'zot-data' }), part('vdc1', null, 1024, { serial: 'zot-data' })];
    expect(findVolumeDevice('zot-data', devices)).toMatchObject({ ok: false, code: 'E_VOLUME_MISSING' });
  });

  it('E_VOLUME_MISSING names the label, and says why a long label cannot be a serial', () => {
    const missing = findVolumeDevice('zot-data', [disk('vdb', 'other')]);
    expect(missing).toMatchObject({ ok: false, code: 'E_VOLUME_MISSING' });
    if (!missing.ok) expect(missing.message).toContain('no GPT partition named zot-data and no disk with serial zot-data');
    const long = findVolumeDevice('a-rather-long-volume-label', [disk('vdb', 'a-rather-long-volume')]);
    expect(long).toMatchObject({ ok: false, code: 'E_VOLUME_MISSING' });
    if (!long.ok) expect(long.message).toMatch(/at most 20 bytes.*GPT partition/);
  });

  it('E_VOLUME_AMBIGUOUS when two devices carry the label', () => {
    const result = findVolumeDevice('zot-data', [part('vdb1', 'zot-data'), disk('vdc', 'zot-data')]);
    expect(result).toMatchObject({ ok: false, code: 'E_VOLUME_AMBIGUOUS' });
    if (!result.ok) expect(result.message).toBe('volume zot-data: 2 devices carry this label: /dev/vdb1 (partition), /dev/vdc (disk serial); give it to exactly one');
  });

  it('E_VOLUME_FOREIGN for a whole disk that has partitions', () => {
    const result = findVolumeDevice('zot-data', [disk('vdb', 'zot-data'), part('vdb1', 'other'), part('vdb2', null), part('vdc1', 'x')]);
    expect(result).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
    if (!result.ok) expect(result.message).toContain('disk /dev/vdb (serial zot-data) holds partitions (vdb1, vdb2)');
    // nvme0n1p1 belongs to nvme0n1; loop10 is not loop1's partition.
    expect(findVolumeDevice('x', [disk('nvme0n1', 'x'), part('nvme0n1p1', null)])).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
    expect(findVolumeDevice('x', [disk('loop1', 'x'), disk('loop10', null), part('loop1p', null)])).toMatchObject({ ok: true });
  });
});

describe('parseExt4Head', () => {
  it('reads label, uuid, size and state', () => {
    expect(parseExt4Head(ext4Head())).toEqual({
      ext4: true,
      magic: true,
      label: 'zot-data',
      uuid: UUID,
      sizeBytes: 1024 * MIB,
      blockSize: 4096,
      blocksCount: 262144,
      cleanlyUnmounted: true,
      errors: false,
    });
  });

  it('takes the high half of the block count only with the 64bit feature', () => {
    expect(parseExt4Head(ext4Head({ blocks: 2 ** 32 + 16 })).blocksCount).toBe(2 ** 32 + 16);
    expect(parseExt4Head(ext4Head({ blocks: 2 ** 32 + 16, incompat: 0x42 })).blocksCount).toBe(16);
  });

  it('a full 16-byte label has no NUL; no label and a zero uuid are null', () => {
    expect(parseExt4Head(ext4Head({ label: 'abcdefghijklmnopqrs' })).label).toBe('abcdefghijklmnop');
    const bare = parseExt4Head(ext4Head({ label: '', uuid: '00000000-0000-0000-0000-000000000000' }));
    expect(bare).toMatchObject({ ext4: true, label: null, uuid: null });
  });

  it('s_state: not cleanly unmounted, errors', () => {
    expect(parseExt4Head(ext4Head({ state: 0 }))).toMatchObject({ cleanlyUnmounted: false, errors: false });
    expect(parseExt4Head(ext4Head({ state: 3 }))).toMatchObject({ cleanlyUnmounted: true, errors: true });
  });

  it('no magic, a short head, or a zeroed head is not ext4', () => {
    const none = { ext4: false, magic: false, label: null, uuid: null, sizeBytes: null, cleanlyUnmounted: null };
    expect(parseExt4Head(ext4Head({ magic: 0x1234 }))).toMatchObject(none);
    expect(parseExt4Head(ext4Head().subarray(0, 2047))).toMatchObject(none);
    expect(parseExt4Head(Buffer.alloc(2048))).toMatchObject(none);
  });

  it('magic with an impossible geometry is magic but not ext4', () => {
    for (const fields of [{ logBlockSize: 7 }, { blocks: 0 }, { inodes: 0 }, { blocks: 2 ** 50 }]) {
      expect(parseExt4Head(ext4Head(fields))).toMatchObject({ ext4: false, magic: true, label: null, sizeBytes: null });
    }
  });
});

describe('planVolume', () => {
  const devices = [disk('vda', null), part('vda1', 'esp', 512), disk('vdb', 'zot-data', 1024)];
  const blank = Buffer.alloc(VOLUME_HEAD_BYTES);

  it('persistent and blank: mkfs (first boot)', () => {
    expect(planVolume(item(), devices, blank, OWNER, VOLUMES)).toEqual({
      ok: true,
      plan: {
        label: 'zot-data',
        persistent: true,
        nsgroup: 'zot',
        sizeMiB: 512,
        device: '/dev/vdb',
        deviceBytes: 1024 * MIB,
        fsLabel: 'zot-data',
        action: 'mkfs',
        mountDir: '/run/mos/volumes/zot-data',
        owner: OWNER,
      },
    });
  });

  it('persistent holding our ext4: check (whatever its state: e2fsck -p decides)', () => {
    for (const state of [0, 1, 3]) {
      const result = planVolume(item(), devices, ext4Head({ state }), OWNER, VOLUMES);
      expect(result).toMatchObject({ ok: true, plan: { action: 'check', device: '/dev/vdb' } });
    }
  });

  it('non-persistent: mkfs every boot, whatever the device holds, and no head is needed', () => {
    for (const head of [null, blank, ext4Head(), ext4Head({ label: 'someone-else' }), Buffer.alloc(2048, 0xaa)]) {
      expect(planVolume(item({ persistent: false }), devices, head, OWNER, VOLUMES)).toMatchObject({ ok: true, plan: { action: 'mkfs', persistent: false } });
    }
  });

  it('a label longer than 16 characters is compared by its first 16', () => {
    const label = 'registry-blob-storage-01';
    expect(filesystemLabel(label)).toBe('registry-blob-st');
    const onPartition = [part('vdb1', label, 1024)];
    const ours = planVolume(item({ label }), onPartition, ext4Head({ label: 'registry-blob-st' }), OWNER, VOLUMES);
    expect(ours).toMatchObject({ ok: true, plan: { action: 'check', fsLabel: 'registry-blob-st', mountDir: `${VOLUMES}/${label}` } });
    const other = planVolume(item({ label }), onPartition, ext4Head({ label: 'registry-blob-xx' }), OWNER, VOLUMES);
    expect(other).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
  });

  it('E_VOLUME_FOREIGN: an ext4 with another label, or without one', () => {
    const other = planVolume(item(), devices, ext4Head({ label: 'old-data' }), OWNER, VOLUMES);
    expect(other).toEqual({
      ok: false,
      code: 'E_VOLUME_FOREIGN',
      message: 'volume zot-data: /dev/vdb holds an ext4 filesystem labelled "old-data", not "zot-data"; mos does not format over it — relabel it (e2label) if it is this volume, or clear it',
    });
    const unlabelled = planVolume(item(), devices, ext4Head({ label: '' }), OWNER, VOLUMES);
    expect(unlabelled).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
    if (!unlabelled.ok) expect(unlabelled.message).toContain('an ext4 filesystem without a label');
  });

  it('E_VOLUME_FOREIGN: any non-zero byte that is not an ext4 superblock, anywhere in the head', () => {
    const xfs = Buffer.alloc(VOLUME_HEAD_BYTES);
    xfs.write('XFSB', 0);
    const btrfs = Buffer.alloc(VOLUME_HEAD_BYTES);
    btrfs.write('_BHRfS_M', 0x10040);
    const gpt = Buffer.alloc(VOLUME_HEAD_BYTES);
    gpt.writeUInt16LE(0xaa55, 510);
    gpt.write('EFI PART', 512);
    for (const head of [xfs, btrfs, gpt]) {
      const result = planVolume(item(), devices, head, OWNER, VOLUMES);
      expect(result).toMatchObject({ ok: false, code: 'E_VOLUME_FOREIGN' });
      if (!result.ok) expect(result.message).toContain('/dev/vdb is neither blank nor an ext4 filesystem labelled "zot-data"');
    }
  });

  it('E_VOLUME_CORRUPT: unreadable, too short a read, or our magic with an impossible geometry', () => {
    const unreadable = planVolume(item(), devices, null, OWNER, VOLUMES);
    expect(unreadable).toEqual({ ok: false, code: 'E_VOLUME_CORRUPT', message: 'volume zot-data: /dev/vdb could not be read' });
    const short = planVolume(item(), devices, Buffer.alloc(512), OWNER, VOLUMES);
    expect(short).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT' });
    if (!short.ok) expect(short.message).toContain('read only 512 bytes of /dev/vdb, need 2048');
    // 2 KiB of zeros cannot tell blank from btrfs: a blank verdict needs the whole head.
    const zeros = planVolume(item(), devices, Buffer.alloc(2048), OWNER, VOLUMES);
    expect(zeros).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT' });
    if (!zeros.ok) expect(zeros.message).toContain(`need ${VOLUME_HEAD_BYTES} to tell a blank device from one holding data`);
    const insane = planVolume(item(), devices, ext4Head({ logBlockSize: 40 }), OWNER, VOLUMES);
    expect(insane).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT' });
    if (!insane.ok) expect(insane.message).toContain('impossible geometry (log block size 40');
    const larger = planVolume(item(), devices, ext4Head({ blocks: 262145 }), OWNER, VOLUMES);
    expect(larger).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT' });
    if (!larger.ok) expect(larger.message).toContain('its filesystem says 1024.00 MiB (1073745920 bytes) but /dev/vdb holds only 1024 MiB');
  });

  it('a device smaller than VOLUME_HEAD_BYTES needs only its own size read to be blank', () => {
    const tiny = [disk('vdb', 'zot-data', 1)];
    expect(planVolume(item({ size: 1 }), tiny, Buffer.alloc(MIB), OWNER, VOLUMES)).toMatchObject({ ok: true, plan: { action: 'mkfs' } });
  });

  it('E_VOLUME_TOO_SMALL names both sizes: the device, or the filesystem already on it', () => {
    const small = planVolume(item({ size: 2048 }), devices, blank, OWNER, VOLUMES);
    expect(small).toEqual({ ok: false, code: 'E_VOLUME_TOO_SMALL', message: 'volume zot-data: /dev/vdb holds 1024 MiB, the manifest asks for 2048 MiB' });
    const odd = planVolume(item({ size: 2 }), [disk('vdb', 'zot-data', 1, { sizeBytes: 1536 * 1024 })], blank, OWNER, VOLUMES);
    expect(odd).toMatchObject({ ok: false, code: 'E_VOLUME_TOO_SMALL', message: 'volume zot-data: /dev/vdb holds 1.50 MiB (1572864 bytes), the manifest asks for 2 MiB' });
    const fs = planVolume(item({ size: 768 }), devices, ext4Head({ blocks: 131072 }), OWNER, VOLUMES);
    expect(fs).toMatchObject({ ok: false, code: 'E_VOLUME_TOO_SMALL' });
    if (!fs.ok) expect(fs.message).toContain('its filesystem on /dev/vdb holds 512 MiB, the manifest asks for 768 MiB');
    // Exactly the size asked for is enough.
    expect(planVolume(item({ size: 1024 }), devices, blank, OWNER, VOLUMES)).toMatchObject({ ok: true });
  });

  it('E_VOLUME_READONLY for a device with ro=1', () => {
    const result = planVolume(item(), [disk('vdb', 'zot-data', 1024, { readOnly: true })], blank, OWNER, VOLUMES);
    expect(result).toEqual({ ok: false, code: 'E_VOLUME_READONLY', message: 'volume zot-data: /dev/vdb is read-only; a volume must be writable' });
  });

  it('passes on findVolumeDevice refusals', () => {
    expect(planVolume(item(), [disk('vdb', 'other')], blank, OWNER, VOLUMES)).toMatchObject({ ok: false, code: 'E_VOLUME_MISSING' });
    expect(planVolume(item(), [disk('vdb', 'zot-data'), part('vdc1', 'zot-data')], blank, OWNER, VOLUMES)).toMatchObject({ ok: false, code: 'E_VOLUME_AMBIGUOUS' });
  });

  it('E_VOLUME_LABEL and E_VOLUME_NSGROUP for inputs the schema should have stopped', () => {
    const dotdot = planVolume(item({ label: '../etc' }), devices, blank, OWNER, VOLUMES);
    expect(dotdot).toMatchObject({ ok: false, code: 'E_VOLUME_LABEL' });
    if (!dotdot.ok) expect(dotdot.message).toContain('volume "../etc": not a storage label');
    const badOwner = planVolume(item(), devices, blank, { uid: -1, gid: 0 }, VOLUMES);
    expect(badOwner).toMatchObject({ ok: false, code: 'E_VOLUME_NSGROUP' });
    if (!badOwner.ok) expect(badOwner.message).toContain('nsgroup "zot" gives owner -1:0');
    expect(planVolume(item(), devices, blank, { uid: 0xffffffff, gid: 0 }, VOLUMES)).toMatchObject({ ok: false, code: 'E_VOLUME_NSGROUP' });
  });
});

describe('mkfsArgv and fsckArgv', () => {
  it('persistent: journal zeroed, every layout option pinned', () => {
    expect(mkfsArgv(plan({ action: 'mkfs' }))).toEqual([
      'mke2fs', '-t', 'ext4', '-F', '-q',
      '-L', 'zot-data',
      '-E', 'root_owner=100000:100000,lazy_itable_init=1,lazy_journal_init=0',
      '-b', '4096', '-I', '256', '-m', '0', '-e', 'remount-ro',
      '/dev/vdb',
    ]); // prettier-ignore
  });

  it('non-persistent: lazy journal (never replayed); the label is the 16-byte filesystem label', () => {
    const argv = mkfsArgv(plan({ persistent: false, label: 'registry-blob-storage-01', fsLabel: 'registry-blob-st', owner: { uid: 0, gid: 0 }, device: '/dev/vdc1' }));
    expect(argv).toEqual([
      'mke2fs', '-t', 'ext4', '-F', '-q',
      '-L', 'registry-blob-st',
      '-E', 'root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1',
      '-b', '4096', '-I', '256', '-m', '0', '-e', 'remount-ro',
      '/dev/vdc1',
    ]); // prettier-ignore
  });

  it('e2fsck preens', () => {
    expect(fsckArgv(plan())).toEqual(['e2fsck', '-p', '/dev/vdb']);
  });
});

describe('fsckVerdict', () => {
  it('0 is clean, 1 and 2 are corrected (the volume is not mounted, so nothing to reboot for)', () => {
    expect(fsckVerdict(plan(), 0, null, 'zot-data: clean, 11/65536 files')).toEqual({ ok: true, corrected: false });
    expect(fsckVerdict(plan(), 1, null, '')).toEqual({ ok: true, corrected: true });
    expect(fsckVerdict(plan(), 2, null, '')).toEqual({ ok: true, corrected: true });
    expect(fsckVerdict(plan(), 3, null, '')).toEqual({ ok: true, corrected: true });
  });

  it('4: E_VOLUME_CORRUPT naming the volume, the status and what e2fsck said', () => {
    const output = 'zot-data: Root inode is not a directory.  \n\nzot-data: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.\n\t(i.e., without -a or -p options)\n';
    expect(fsckVerdict(plan(), 4, null, output)).toEqual({
      ok: false,
      code: 'E_VOLUME_CORRUPT',
      message:
        'volume zot-data (/dev/vdb): e2fsck -p exit 4 (errors left uncorrected): zot-data: Root inode is not a directory. | zot-data: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY. | (i.e., without -a or -p options); not mounted — run e2fsck /dev/vdb by hand',
    });
  });

  it('8, 12, 16, 32, 128 and unknown bits are refused with their meanings', () => {
    const message = (code: number) => {
      const verdict = fsckVerdict(plan(), code, null, '');
      expect(verdict.ok).toBe(false);
      return verdict.ok ? '' : verdict.message;
    };
    expect(message(8)).toBe('volume zot-data (/dev/vdb): e2fsck -p exit 8 (operational error); not mounted — run e2fsck /dev/vdb by hand');
    expect(message(12)).toContain('exit 12 (errors left uncorrected, operational error)');
    expect(message(16)).toContain('usage or syntax error');
    expect(message(32)).toContain('canceled by user request');
    expect(message(128)).toContain('shared-library error');
    expect(message(64)).toContain('exit 64 (unknown status)');
  });

  it('killed, or never started: E_VOLUME_CORRUPT', () => {
    expect(fsckVerdict(plan(), null, 'SIGKILL', 'Pass 1: Checking inodes')).toEqual({
      ok: false,
      code: 'E_VOLUME_CORRUPT',
      message: 'volume zot-data (/dev/vdb): e2fsck was killed by SIGKILL: Pass 1: Checking inodes; not mounted',
    });
    expect(fsckVerdict(plan(), null, null, 'spawn ENOENT /usr/sbin/e2fsck')).toMatchObject({ ok: false, code: 'E_VOLUME_CORRUPT', message: 'volume zot-data (/dev/vdb): e2fsck did not run: spawn ENOENT /usr/sbin/e2fsck; not mounted' });
  });

  it('keeps the message short and on one line', () => {
    const noisy = Array.from({ length: 200 }, (_, i) => `line ${i}\u001b[0m`).join('\n');
    const verdict = fsckVerdict(plan(), 4, null, noisy);
    expect(verdict.ok).toBe(false);
    if (!verdict.ok) {
      expect(verdict.message).not.toMatch(/[\u0000-\u001f]/);
      expect(verdict.message).toContain('line 199');
      expect(verdict.message).not.toContain('line 191');
    }
  });
});

describe('checkVolumeOwner', () => {
  it('accepts the nsgroup root and names both owners otherwise', () => {
    expect(checkVolumeOwner(plan(), OWNER)).toEqual({ ok: true });
    expect(checkVolumeOwner(plan(), { uid: 200000, gid: 200000 })).toEqual({
      ok: false,
      code: 'E_VOLUME_NSGROUP',
      message: 'volume zot-data: its root is owned by 200000:200000, but nsgroup "zot"\'s root is 100000:100000 (did the nsgroup\'s id range change?)',
    });
  });
});

describe('planTargetMounts', () => {
  const volumes = new Map<string, VolumePlan>([
    ['zot-data', plan()],
    ['zot-cache', plan({ label: 'zot-cache', persistent: false, mountDir: `${VOLUMES}/zot-cache` })],
    ['other-data', plan({ label: 'other-data', nsgroup: 'other', mountDir: `${VOLUMES}/other-data` })],
    ['plain', plan({ label: 'plain', nsgroup: '', owner: { uid: 0, gid: 0 }, mountDir: `${VOLUMES}/plain` })],
  ]);

  it('binds each volume at its dest, parents before children', () => {
    const storage = [
      { dest: '/zot/cache', label: 'zot-cache' },
      { dest: '/zot', label: 'zot-data' },
    ];
    expect(planTargetMounts(target({ storage }), volumes)).toEqual({
      ok: true,
      mounts: [
        { source: `${VOLUMES}/zot-data`, dest: '/zot', label: 'zot-data' },
        { source: `${VOLUMES}/zot-cache`, dest: '/zot/cache', label: 'zot-cache' },
      ],
    });
  });

  it('no storage: no mounts', () => {
    expect(planTargetMounts(target({ storage: null }), volumes)).toEqual({ ok: true, mounts: [] });
  });

  it('E_VOLUME_NSGROUP: another nsgroup\'s volume; "" and "none" match each other only', () => {
    const other = planTargetMounts(target({ storage: [{ dest: '/data', label: 'other-data' }] }), volumes);
    expect(other).toEqual({
      ok: false,
      code: 'E_VOLUME_NSGROUP',
      message: 'zot: volume other-data belongs to nsgroup other, the service runs in nsgroup zot; a service reaches only its own nsgroup\'s volumes',
    });
    expect(planTargetMounts(target({ nsgroup: 'none', storage: [{ dest: '/data', label: 'plain' }] }), volumes)).toMatchObject({ ok: true });
    expect(planTargetMounts(target({ nsgroup: '', storage: [{ dest: '/data', label: 'plain' }] }), volumes)).toMatchObject({ ok: true });
    expect(planTargetMounts(target({ nsgroup: 'none', storage: [{ dest: '/data', label: 'zot-data' }] }), volumes)).toMatchObject({ ok: false, code: 'E_VOLUME_NSGROUP' });
    expect(planTargetMounts(target({ nsgroup: 'zot', storage: [{ dest: '/data', label: 'plain' }] }), volumes)).toMatchObject({ ok: false, code: 'E_VOLUME_NSGROUP' });
  });

  it('E_VOLUME_DEST: relative, "..", NUL, "/", not normalised, twice', () => {
    const cases: [string, string][] = [
      ['data', 'is not an absolute path'],
      ['/zot/../etc', 'contains ".."'],
      ['/..', 'contains ".."'],
      ['/zot\0x', 'contains a NUL byte'],
      ['/', 'is the service root itself'],
      ['/zot//x', 'is not a normalised path'],
      ['/zot/./x', 'is not a normalised path'],
      ['/zot/', 'is not a normalised path'],
    ];
    for (const [dest, problem] of cases) {
      const result = planTargetMounts(target({ storage: [{ dest, label: 'zot-data' }] }), volumes);
      expect(result).toMatchObject({ ok: false, code: 'E_VOLUME_DEST' });
      if (!result.ok) expect(result.message).toContain(`zot: storage zot-data at ${JSON.stringify(dest)}: the destination ${problem}`);
    }
    // A name that merely contains dots is fine.
    expect(planTargetMounts(target({ storage: [{ dest: '/zot..d/.x', label: 'zot-data' }] }), volumes)).toMatchObject({ ok: true });
    const twice = planTargetMounts(target({ storage: [{ dest: '/zot', label: 'zot-data' }, { dest: '/zot', label: 'zot-cache' }] }), volumes);
    expect(twice).toEqual({ ok: false, code: 'E_VOLUME_DEST', message: 'zot: two volumes are mounted at /zot' });
  });

  it('E_VOLUME_MISSING when the volume has no plan (it was refused itself)', () => {
    const result = planTargetMounts(target({ storage: [{ dest: '/zot', label: 'gone' }] }), volumes);
    expect(result).toEqual({ ok: false, code: 'E_VOLUME_MISSING', message: 'zot: volume gone (for /zot) is not available' });
  });
});
