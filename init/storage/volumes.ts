/**
 * Storage volumes: what each manifest `storage` item becomes on this machine, decided from the
 * verified install, the block devices /sys shows, and the first bytes of the chosen device. Pure:
 * the effects (reading /sys and the device head, running mke2fs and e2fsck from PID 1, mounting)
 * carry the plan out.
 *
 *   storage item                   device                                     at boot
 *   label, persistent: true        GPT partition named <label>, or a whole     blank → mke2fs (first boot)
 *                                  disk whose virtio serial is <label>         ours  → e2fsck -p, then mount
 *                                                                               anything else → refused
 *   label, persistent: false       the same                                   mke2fs every boot
 *
 * Every volume is ext4, made with its root directory owned by the nsgroup's root ids, and mounted
 * at `<volumesDir>/<label>`; a target's `storage` entries are bind mounts of those directories
 * into the service's root. A volume that cannot be used (missing, too small, read-only, corrupt,
 * foreign data) is refused with a code and a message naming it: only the services that mount it
 * are affected.
 *
 * Decisions worth knowing:
 * - The ext4 label holds at most 16 bytes, the storage label up to 36 characters
 *   (install-schema.ts): the filesystem label is the storage label's first 16 characters
 *   (labels are ASCII, so characters are bytes). The device itself is found by its full label
 *   (GPT name or serial); the filesystem label is the second check, that the filesystem on it
 *   is the one mos made for this volume. Two labels alike in their first 16 characters are
 *   told apart only by their devices.
 * - A persistent volume is never formatted over data: mke2fs runs only on a blank device (the
 *   head read is all zeros). A device holding an ext4 with another label, or any other bytes, is
 *   refused as E_VOLUME_FOREIGN, and the operator decides. The head should be
 *   `VOLUME_HEAD_BYTES` long: filesystems such as btrfs or ISO 9660 write nothing in the first
 *   2 KiB, so a 2 KiB head would call them blank.
 * - A non-persistent volume is recreated at every boot whatever the device holds: the device is
 *   dedicated to the volume by its label, and its contents are by definition not kept.
 */
import path from 'node:path';
import type { InstallTarget, StorageItem } from '../trust/formats.ts';
import { STORAGE_LABEL_PATTERN } from '../trust/install-schema.ts';

const MIB = 1024 * 1024;
/** `s_volume_name` is 16 bytes, NUL-padded. */
export const EXT4_LABEL_BYTES = 16;
/** virtio-blk reports at most 20 bytes of serial (VIRTIO_BLK_ID_BYTES); QEMU cuts longer ones. */
export const VIRTIO_SERIAL_BYTES = 20;
/** What parseExt4Head reads: the superblock is bytes 1024..2047. */
export const EXT4_HEAD_BYTES = 2048;
/**
 * How much of a device the caller should read for planVolume (or the whole device when it is
 * smaller): enough to see the signatures that sit past the first 2 KiB (ISO 9660 and UDF at
 * 32 KiB, btrfs and ReiserFS at 64 KiB) and most tools' leftovers, so that "all zeros" really
 * means a blank device.
 */
export const VOLUME_HEAD_BYTES = MIB;

/** One block device as /sys/class/block shows it. */
export interface BlockDeviceInfo {
  /** 'vdb', 'vdb1' */
  name: string;
  /** '/dev/vdb' */
  path: string;
  major: number;
  minor: number;
  /** /sys/class/block/<name>/size * 512 */
  sizeBytes: number;
  /** /sys/class/block/<name>/ro */
  readOnly: boolean;
  /** Whole disks: /sys/class/block/<name>/serial (virtio), trimmed; null if absent or empty. */
  serial: string | null;
  /** Partitions: PARTNAME= from /sys/class/block/<name>/uevent (GPT partition name); null if none. */
  partName: string | null;
  /** /sys/class/block/<name>/partition exists. */
  isPartition: boolean;
}

export interface BlockDeviceFiles {
  dev: string | null;
  size: string | null;
  ro: string | null;
  serial: string | null;
  uevent: string | null;
  partition: string | null;
}

/** sysfs block names; a '!' stands for a '/' in the /dev name (cciss!c0d0 → /dev/cciss/c0d0). */
const BLOCK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:+!-]{0,63}$/;

/**
 * Parses one device's sysfs facts (the caller reads the files and passes their text; an absent
 * file is null). Null when the name is not a block device name or `dev`/`size` are missing or
 * malformed: such an entry cannot be used, whatever it is. A missing `ro` reads as writable;
 * writing to it would fail loudly anyway.
 */
export function parseBlockDevice(name: string, files: BlockDeviceFiles): BlockDeviceInfo | null {
  if (!BLOCK_NAME.test(name) || name.includes('..')) return null;
  const dev = /^(\d{1,10}):(\d{1,10})$/.exec(files.dev?.trim() ?? '');
  const sectors = files.size?.trim() ?? '';
  if (!dev || !/^\d{1,20}$/.test(sectors)) return null;
  const sizeBytes = Number(sectors) * 512;
  if (!Number.isSafeInteger(sizeBytes)) return null;
  const serial = files.serial?.trim() ?? '';
  return {
    name,
    path: `/dev/${name.replaceAll('!', '/')}`,
    major: Number(dev[1]),
    minor: Number(dev[2]),
    sizeBytes,
    readOnly: files.ro?.trim() === '1',
    serial: serial === '' ? null : serial,
    partName: ueventValue(files.uevent, 'PARTNAME'),
    isPartition: files.partition !== null,
  };
}

function ueventValue(uevent: string | null, key: string): string | null {
  for (const line of (uevent ?? '').split('\n')) {
    if (line.startsWith(`${key}=`)) {
      const value = line.slice(key.length + 1);
      return value === '' ? null : value;
    }
  }
  return null;
}

/**
 * Whether `part` is a partition of the whole disk `disk`, by the kernel's naming rule: the
 * partition number follows the disk name, after a 'p' when the disk name ends in a digit
 * (vdb → vdb1, nvme0n1 → nvme0n1p1, loop0 → loop0p1).
 */
export function isPartitionOf(part: BlockDeviceInfo, disk: BlockDeviceInfo): boolean {
  if (!part.isPartition || disk.isPartition || !part.name.startsWith(disk.name)) return false;
  const separator = /\d$/.test(disk.name) ? 'p' : '';
  const rest = part.name.slice(disk.name.length);
  return rest.startsWith(separator) && /^\d+$/.test(rest.slice(separator.length));
}

export type FindVolumeDeviceResult =
  | { ok: true; device: BlockDeviceInfo }
  | { ok: false; code: 'E_VOLUME_MISSING' | 'E_VOLUME_AMBIGUOUS' | 'E_VOLUME_FOREIGN'; message: string };

/**
 * The device that holds volume `label`: a partition whose GPT name is the label, or a whole disk
 * whose serial is. Never a guess: two candidates are E_VOLUME_AMBIGUOUS, and a whole disk that
 * has partitions is not dedicated to one volume (formatting it would destroy its partition
 * table), so it is E_VOLUME_FOREIGN.
 */
export function findVolumeDevice(label: string, devices: readonly BlockDeviceInfo[]): FindVolumeDeviceResult {
  const matches = devices.filter((device) => (device.isPartition ? device.partName === label : device.serial === label));
  if (matches.length === 0) {
    const serialNote = label.length > VIRTIO_SERIAL_BYTES ? `; a virtio serial holds at most ${VIRTIO_SERIAL_BYTES} bytes, so a label this long can only name a GPT partition` : '';
    return { ok: false, code: 'E_VOLUME_MISSING', message: `volume ${label}: no GPT partition named ${label} and no disk with serial ${label}${serialNote}` };
  }
  if (matches.length > 1) {
    const names = matches.map((device) => `${device.path} (${device.isPartition ? 'partition' : 'disk serial'})`).join(', ');
    return { ok: false, code: 'E_VOLUME_AMBIGUOUS', message: `volume ${label}: ${matches.length} devices carry this label: ${names}; give it to exactly one` };
  }
  const device = matches[0]!;
  if (!device.isPartition) {
    const partitions = devices.filter((other) => isPartitionOf(other, device));
    if (partitions.length > 0) {
      return {
        ok: false,
        code: 'E_VOLUME_FOREIGN',
        message: `volume ${label}: disk ${device.path} (serial ${label}) holds partitions (${partitions.map((p) => p.name).join(', ')}); a whole disk is used only when nothing else is on it — name one GPT partition ${label} instead, or clear the disk`,
      };
    }
  }
  return { ok: true, device };
}

/** What the first 2048 bytes of a device say about an ext2/3/4 filesystem on it. */
export interface Ext4Facts {
  /** An ext2/3/4 superblock with a sane geometry (block size 1–64 KiB, blocks and inodes > 0). */
  ext4: boolean;
  /** `s_volume_name` up to its first NUL; null when not ext4 or empty. */
  label: string | null;
  /** `s_uuid` as dumpe2fs prints it; null when not ext4 or all zeros. */
  uuid: string | null;
  /** blocks × block size. */
  sizeBytes: number | null;
  /** `s_state` has EXT2_VALID_FS (what e2fsck -p trusts to skip a full check). */
  cleanlyUnmounted: boolean | null;
  /** The superblock magic 0xEF53 is there (even when the rest is not sane). */
  magic: boolean;
  blockSize: number | null;
  blocksCount: number | null;
  /** `s_state` has EXT2_ERROR_FS: the kernel saw an inconsistency. */
  errors: boolean | null;
}

/** Superblock fields, as offsets from its start (byte 1024 of the device). */
const SB = 1024;
const SB_INODES_COUNT = 0x00;
const SB_BLOCKS_COUNT_LO = 0x04;
const SB_LOG_BLOCK_SIZE = 0x18;
const SB_MAGIC = 0x38;
const SB_STATE = 0x3a;
const SB_FEATURE_INCOMPAT = 0x60;
const SB_UUID = 0x68;
const SB_VOLUME_NAME = 0x78;
const SB_BLOCKS_COUNT_HI = 0x150;
const EXT4_MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;
const STATE_VALID = 0x1;
const STATE_ERROR = 0x2;
/** 64 KiB, the largest block size ext4 supports. */
const MAX_LOG_BLOCK_SIZE = 6;

const NOT_EXT4: Ext4Facts = { ext4: false, label: null, uuid: null, sizeBytes: null, cleanlyUnmounted: null, magic: false, blockSize: null, blocksCount: null, errors: null };

export function parseExt4Head(head: Buffer): Ext4Facts {
  if (head.length < EXT4_HEAD_BYTES || head.readUInt16LE(SB + SB_MAGIC) !== EXT4_MAGIC) return { ...NOT_EXT4 };
  const logBlockSize = head.readUInt32LE(SB + SB_LOG_BLOCK_SIZE);
  const incompat = head.readUInt32LE(SB + SB_FEATURE_INCOMPAT);
  // The high half of the block count is meaningful only with the 64bit feature.
  const blocksHi = incompat & INCOMPAT_64BIT ? head.readUInt32LE(SB + SB_BLOCKS_COUNT_HI) : 0;
  const blocksCount = blocksHi * 2 ** 32 + head.readUInt32LE(SB + SB_BLOCKS_COUNT_LO);
  const blockSize = logBlockSize <= MAX_LOG_BLOCK_SIZE ? 1024 * 2 ** logBlockSize : null;
  const sizeBytes = blockSize === null ? null : blocksCount * blockSize;
  const sane = blockSize !== null && blocksCount > 0 && head.readUInt32LE(SB + SB_INODES_COUNT) > 0 && sizeBytes !== null && Number.isSafeInteger(sizeBytes);
  const state = head.readUInt16LE(SB + SB_STATE);
  const facts = { magic: true, cleanlyUnmounted: (state & STATE_VALID) !== 0, errors: (state & STATE_ERROR) !== 0 };
  if (!sane) return { ...NOT_EXT4, ...facts };
  const nameBytes = head.subarray(SB + SB_VOLUME_NAME, SB + SB_VOLUME_NAME + EXT4_LABEL_BYTES);
  const end = nameBytes.indexOf(0);
  const label = nameBytes.subarray(0, end === -1 ? nameBytes.length : end).toString('utf8');
  const uuidBytes = head.subarray(SB + SB_UUID, SB + SB_UUID + 16);
  const hex = uuidBytes.toString('hex');
  const uuid = /^0+$/.test(hex) ? null : `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { ...facts, ext4: true, label: label === '' ? null : label, uuid, sizeBytes, blockSize, blocksCount };
}

/** The ext4 label mos gives the filesystem of volume `label`: its first 16 characters. */
export function filesystemLabel(label: string): string {
  return label.slice(0, EXT4_LABEL_BYTES);
}

export type VolumeProblemCode =
  | 'E_VOLUME_MISSING'
  | 'E_VOLUME_AMBIGUOUS'
  | 'E_VOLUME_TOO_SMALL'
  | 'E_VOLUME_READONLY'
  | 'E_VOLUME_CORRUPT'
  | 'E_VOLUME_NSGROUP'
  | 'E_VOLUME_DEST'
  /** The device holds data that is not this volume's filesystem: never formatted over. */
  | 'E_VOLUME_FOREIGN'
  /** The label is not a storage label (install-schema.ts refuses it first; checked again because it names a directory). */
  | 'E_VOLUME_LABEL';

export interface VolumePlan {
  label: string;
  persistent: boolean;
  nsgroup: string;
  sizeMiB: number;
  /** /dev/vdb */
  device: string;
  /** The device's size in bytes: mke2fs fills the device, which is dedicated to the volume. */
  deviceBytes: number;
  /** The ext4 label (`filesystemLabel(label)`). */
  fsLabel: string;
  /**
   * 'mkfs': make a fresh ext4 (every boot for a non-persistent volume; the first boot, when the
   * device is blank, for a persistent one). 'check': e2fsck it, then mount.
   */
  action: 'mkfs' | 'check';
  /** <volumesDir>/<label> */
  mountDir: string;
  /** The nsgroup's root ids: the owner of the filesystem's root directory. */
  owner: { uid: number; gid: number };
}

export type VolumePlanResult = { ok: true; plan: VolumePlan } | { ok: false; code: VolumeProblemCode; message: string };

const MAX_ID = 0xfffffffe; // (uid_t)-1 means "no change" to chown and is never an owner

/** '' and 'none' both mean "no user namespace" (project-machine's meaning). */
export function sameNsgroup(a: string, b: string): boolean {
  const none = (group: string) => group === '' || group === 'none';
  return none(a) ? none(b) : a === b;
}

function describeMiB(bytes: number): string {
  const mib = bytes / MIB;
  return Number.isInteger(mib) ? `${mib} MiB` : `${mib.toFixed(2)} MiB (${bytes} bytes)`;
}

function isAllZero(bytes: Buffer): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * Decides one manifest storage item. `head` = the device's first bytes, at least 2048 and
 * ideally `min(VOLUME_HEAD_BYTES, device size)` (null when unreadable; only a persistent volume
 * needs it). `owner` = the nsgroup's root ids (the caller supplies them; `none`/'' → 0:0).
 */
export function planVolume(item: StorageItem, devices: readonly BlockDeviceInfo[], head: Buffer | null, owner: { uid: number; gid: number }, volumesDir: string): VolumePlanResult {
  const { label } = item;
  const refuse = (code: VolumeProblemCode, message: string): VolumePlanResult => ({ ok: false, code, message });
  if (!STORAGE_LABEL_PATTERN.test(label)) return refuse('E_VOLUME_LABEL', `volume ${JSON.stringify(label.slice(0, 64))}: not a storage label (${STORAGE_LABEL_PATTERN.source})`);
  if (!Number.isSafeInteger(item.size) || item.size < 1) return refuse('E_VOLUME_TOO_SMALL', `volume ${label}: size ${item.size} is not a positive number of MiB`);
  const validId = (id: number) => Number.isInteger(id) && id >= 0 && id <= MAX_ID;
  if (!validId(owner.uid) || !validId(owner.gid)) {
    return refuse('E_VOLUME_NSGROUP', `volume ${label}: nsgroup ${JSON.stringify(item.nsgroup)} gives owner ${owner.uid}:${owner.gid}, which are not valid ids`);
  }

  const found = findVolumeDevice(label, devices);
  if (!found.ok) return found;
  const { device } = found;
  if (device.readOnly) return refuse('E_VOLUME_READONLY', `volume ${label}: ${device.path} is read-only; a volume must be writable`);
  // Divide rather than multiply: sizes near 2^53 MiB stay exact.
  if (device.sizeBytes / MIB < item.size) {
    return refuse('E_VOLUME_TOO_SMALL', `volume ${label}: ${device.path} holds ${describeMiB(device.sizeBytes)}, the manifest asks for ${item.size} MiB`);
  }

  const plan: VolumePlan = {
    label,
    persistent: item.persistent,
    nsgroup: item.nsgroup,
    sizeMiB: item.size,
    device: device.path,
    deviceBytes: device.sizeBytes,
    fsLabel: filesystemLabel(label),
    action: 'mkfs',
    mountDir: path.join(volumesDir, label),
    owner: { uid: owner.uid, gid: owner.gid },
  };
  // Recreated at every boot: what the device holds is by definition not kept.
  if (!item.persistent) return { ok: true, plan };

  if (head === null) return refuse('E_VOLUME_CORRUPT', `volume ${label}: ${device.path} could not be read`);
  if (head.length < EXT4_HEAD_BYTES) return refuse('E_VOLUME_CORRUPT', `volume ${label}: read only ${head.length} bytes of ${device.path}, need ${EXT4_HEAD_BYTES}`);
  const facts = parseExt4Head(head);
  if (facts.magic) {
    const foundLabel = facts.ext4 ? facts.label : null;
    if (facts.ext4 && foundLabel !== plan.fsLabel) {
      const what = foundLabel === null ? 'an ext4 filesystem without a label' : `an ext4 filesystem labelled ${JSON.stringify(foundLabel)}`;
      return refuse('E_VOLUME_FOREIGN', `volume ${label}: ${device.path} holds ${what}, not ${JSON.stringify(plan.fsLabel)}; mos does not format over it — relabel it (e2label) if it is this volume, or clear it`);
    }
    if (!facts.ext4) {
      // Our magic, but a block size or count no filesystem has: most likely ours, damaged.
      const geometry = `log block size ${head.readUInt32LE(SB + SB_LOG_BLOCK_SIZE)}, ${head.readUInt32LE(SB + SB_BLOCKS_COUNT_LO)} blocks, ${head.readUInt32LE(SB + SB_INODES_COUNT)} inodes`;
      return refuse('E_VOLUME_CORRUPT', `volume ${label}: ${device.path} has an ext4 superblock with an impossible geometry (${geometry}); repair it with e2fsck by hand`);
    }
    const fsBytes = facts.sizeBytes!;
    if (fsBytes > device.sizeBytes) {
      return refuse('E_VOLUME_CORRUPT', `volume ${label}: its filesystem says ${describeMiB(fsBytes)} but ${device.path} holds only ${describeMiB(device.sizeBytes)} (was the device shrunk?)`);
    }
    if (fsBytes / MIB < item.size) {
      return refuse('E_VOLUME_TOO_SMALL', `volume ${label}: its filesystem on ${device.path} holds ${describeMiB(fsBytes)}, the manifest asks for ${item.size} MiB; grow it (resize2fs) — mos does not resize persistent volumes`);
    }
    return { ok: true, plan: { ...plan, action: 'check' } };
  }

  if (!isAllZero(head)) {
    return refuse('E_VOLUME_FOREIGN', `volume ${label}: ${device.path} is neither blank nor an ext4 filesystem labelled ${JSON.stringify(plan.fsLabel)}; mos formats a persistent volume only on a blank device — if this is the volume with a damaged superblock, repair it (e2fsck -b <backup>), else zero its first MiB`);
  }
  const needed = Math.min(VOLUME_HEAD_BYTES, device.sizeBytes);
  if (head.length < needed) {
    // Too little was read to call the device blank (btrfs, ISO 9660 leave the first KiBs zero).
    return refuse('E_VOLUME_CORRUPT', `volume ${label}: read only ${head.length} bytes of ${device.path}; need ${needed} to tell a blank device from one holding data`);
  }
  return { ok: true, plan };
}

/**
 * mke2fs argv for a plan. Every option that changes the result is pinned, so the filesystem is
 * the same whatever mke2fs.conf (the initramfs has none) or the state of /sys:
 * - `-E root_owner=uid:gid`: the root directory belongs to the nsgroup's root, so the service's
 *   root can write it through its id mapping. mke2fs keeps only the last `-E`, so every
 *   extended option shares this one;
 * - `lazy_itable_init=1`: inode tables are zeroed by the kernel in the background after mount,
 *   not by mke2fs before it (a large volume would otherwise delay the boot by its size). mke2fs's
 *   own default depends on /sys/fs/ext4/features, which may not be there yet;
 * - `lazy_journal_init`: 1 for a non-persistent volume, whose journal is never replayed (the
 *   next boot formats it again); 0 for a persistent one, made once on a device whose old bytes
 *   past the head are unknown, so a crash can never replay them as journal blocks;
 * - `-b 4096 -I 256`: the "small" type would pick 1 KiB blocks for volumes under 512 MiB, and
 *   256-byte inodes keep timestamps past 2038;
 * - `-m 0`: reserved blocks are for host uid 0, which never writes a service's volume;
 * - `-e remount-ro`: on an inconsistency the kernel stops writing instead of spreading it; the
 *   next boot's e2fsck sees the error flag.
 * The device is dedicated to the volume, so the filesystem fills it.
 */
export function mkfsArgv(plan: VolumePlan): string[] {
  const extended = [`root_owner=${plan.owner.uid}:${plan.owner.gid}`, 'lazy_itable_init=1', `lazy_journal_init=${plan.persistent ? 0 : 1}`].join(',');
  return ['mke2fs', '-t', 'ext4', '-F', '-q', '-L', plan.fsLabel, '-E', extended, '-b', '4096', '-I', '256', '-m', '0', '-e', 'remount-ro', plan.device];
}

/**
 * e2fsck argv: preen (fixes only what is safe without a human). Without `-f`: a filesystem the
 * kernel unmounted cleanly and never flagged is not walked again at every boot; one with the
 * error flag, or not cleanly unmounted, is checked in full.
 */
export function fsckArgv(plan: VolumePlan): string[] {
  return ['e2fsck', '-p', plan.device];
}

/** e2fsck's exit status bits (e2fsck(8)). */
const FSCK_EXIT: readonly [bit: number, meaning: string][] = [
  [1, 'errors corrected'],
  [2, 'errors corrected, reboot requested'],
  [4, 'errors left uncorrected'],
  [8, 'operational error'],
  [16, 'usage or syntax error'],
  [32, 'canceled by user request'],
  [128, 'shared-library error'],
];

/** The last lines of a tool's output on one line, without control characters. */
export function outputSummary(output: string, maxLines = 8, maxChars = 600): string {
  const lines = output
    .split('\n')
    .map((line) => line.replace(/[\u0000-\u001f\u007f]/g, ' ').trim())
    .filter((line) => line !== '');
  const tail = lines.slice(-maxLines).join(' | ');
  return tail.length > maxChars ? `…${tail.slice(-maxChars)}` : tail;
}

/**
 * e2fsck's exit status → ok (0; 1: errors corrected) or E_VOLUME_CORRUPT with a message naming
 * the volume. Exit 2 (corrected, reboot requested) is ok here: e2fsck asks for a reboot when the
 * filesystem it fixed is mounted (the root), because the kernel may still cache the old
 * metadata. A volume is checked before it is mounted, so nothing cached the old state. Any of
 * 4, 8, 16, 32, 128, a signal (e.g. a timeout's SIGKILL) or no exit at all (the tool did not
 * start) leaves the volume unusable.
 */
export function fsckVerdict(plan: VolumePlan, exitCode: number | null, signal: string | null, outputTail: string): { ok: true; corrected: boolean } | { ok: false; code: 'E_VOLUME_CORRUPT'; message: string } {
  const where = `volume ${plan.label} (${plan.device})`;
  const said = outputSummary(outputTail);
  const output = said === '' ? '' : `: ${said}`;
  if (signal !== null) return { ok: false, code: 'E_VOLUME_CORRUPT', message: `${where}: e2fsck was killed by ${signal}${output}; not mounted` };
  if (exitCode === null || !Number.isInteger(exitCode) || exitCode < 0) {
    return { ok: false, code: 'E_VOLUME_CORRUPT', message: `${where}: e2fsck did not run${output}; not mounted` };
  }
  if ((exitCode & ~3) === 0) return { ok: true, corrected: exitCode !== 0 };
  const meanings = FSCK_EXIT.filter(([bit]) => exitCode & bit).map(([, meaning]) => meaning);
  const known = meanings.length > 0 ? meanings.join(', ') : 'unknown status';
  return {
    ok: false,
    code: 'E_VOLUME_CORRUPT',
    message: `${where}: e2fsck -p exit ${exitCode} (${known})${output}; not mounted — run e2fsck ${plan.device} by hand`,
  };
}

/**
 * After mounting a persistent volume: its root must still belong to the nsgroup's root. It was
 * made so, but an nsgroup's id range can change between installs, and mos does not shift the
 * ownership of existing files; the service would then see its own data as nobody's.
 */
export function checkVolumeOwner(plan: VolumePlan, root: { uid: number; gid: number }): { ok: true } | { ok: false; code: 'E_VOLUME_NSGROUP'; message: string } {
  if (root.uid === plan.owner.uid && root.gid === plan.owner.gid) return { ok: true };
  return {
    ok: false,
    code: 'E_VOLUME_NSGROUP',
    message: `volume ${plan.label}: its root is owned by ${root.uid}:${root.gid}, but nsgroup ${JSON.stringify(plan.nsgroup)}'s root is ${plan.owner.uid}:${plan.owner.gid} (did the nsgroup's id range change?)`,
  };
}

export interface VolumeMount {
  /** The volume's mountDir. */
  source: string;
  /** The path inside the service root. */
  dest: string;
  label: string;
}

function destProblem(dest: string): string | null {
  if (dest.includes('\0')) return 'contains a NUL byte';
  if (!dest.startsWith('/')) return 'is not an absolute path';
  if (dest === '/') return 'is the service root itself';
  const parts = dest.slice(1).split('/');
  if (parts.includes('..')) return 'contains ".."';
  if (parts.some((part) => part === '' || part === '.')) return 'is not a normalised path';
  return null;
}

/**
 * The bind mounts a target needs: each `storage` entry → source = the volume's mountDir, dest =
 * the path inside the service root, parents before children (so /data/cache lands on top of
 * /data, whatever their order in the manifest). Refuses a dest that is not absolute, contains
 * '..' or NUL, or is '/' (E_VOLUME_DEST), a volume that has no plan (E_VOLUME_MISSING: it was
 * refused itself), and a volume of another nsgroup (E_VOLUME_NSGROUP: a service must never reach
 * another nsgroup's data; '' and 'none' match only each other).
 */
export function planTargetMounts(target: InstallTarget, volumes: ReadonlyMap<string, VolumePlan>): { ok: true; mounts: VolumeMount[] } | { ok: false; code: VolumeProblemCode; message: string } {
  const name = target.service_name;
  const mounts: VolumeMount[] = [];
  const dests = new Set<string>();
  for (const entry of target.storage ?? []) {
    const problem = destProblem(entry.dest);
    if (problem !== null) return { ok: false, code: 'E_VOLUME_DEST', message: `${name}: storage ${entry.label} at ${JSON.stringify(entry.dest.slice(0, 256))}: the destination ${problem}` };
    if (dests.has(entry.dest)) return { ok: false, code: 'E_VOLUME_DEST', message: `${name}: two volumes are mounted at ${entry.dest}` };
    dests.add(entry.dest);
    const volume = volumes.get(entry.label);
    if (volume === undefined) return { ok: false, code: 'E_VOLUME_MISSING', message: `${name}: volume ${entry.label} (for ${entry.dest}) is not available` };
    if (!sameNsgroup(volume.nsgroup, target.nsgroup)) {
      const show = (group: string) => (group === '' ? '"" (none)' : group);
      return {
        ok: false,
        code: 'E_VOLUME_NSGROUP',
        message: `${name}: volume ${entry.label} belongs to nsgroup ${show(volume.nsgroup)}, the service runs in nsgroup ${show(target.nsgroup)}; a service reaches only its own nsgroup's volumes`,
      };
    }
    mounts.push({ source: volume.mountDir, dest: entry.dest, label: entry.label });
  }
  const depth = (dest: string) => dest.split('/').length;
  // Array.prototype.sort is stable: same-depth mounts keep the manifest's order.
  mounts.sort((a, b) => depth(a.dest) - depth(b.dest));
  return { ok: true, mounts };
}
