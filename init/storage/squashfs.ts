/**
 * The squashfs 4.0 superblock: the first 96 bytes of a layer blob, read from the raw file
 * BEFORE dm-verity protects anything. Its one job at boot is to say where the squashfs ends
 * (`bytes_used`, padded to 4096 by mksquashfs), because that is where the layer's dm-verity
 * superblock and hash tree begin (verity.ts). Nothing read here is trusted: a forged size only
 * moves where the verity superblock is looked for, and the signed root hash then refuses the
 * layer (the hash tree covers every data block). The checks below are the kernel's own sanity
 * checks at mount (fs/squashfs/super.c), done early so a malformed layer is refused with a
 * message naming the field instead of a mount error.
 *
 * Layout (little endian, 96 bytes):
 *   0 magic u32 "hsqs"        4 inode_count u32          8 mkfs_time u32
 *  12 block_size u32         16 fragment_entry_count u32
 *  20 compression_id u16     22 block_log u16           24 flags u16
 *  26 id_count u16           28 version_major u16       30 version_minor u16
 *  32 root_inode_ref u64     40 bytes_used u64          48 id_table_start u64
 *  56 xattr_id_table_start u64  64 inode_table_start u64  72 directory_table_start u64
 *  80 fragment_table_start u64  88 export_table_start u64
 * A table start of all ones (0xffff_ffff_ffff_ffff) means "no such table".
 */

export const SQUASHFS_SUPERBLOCK_BYTES = 96;
/** "hsqs" read as a little-endian u32. */
export const SQUASHFS_MAGIC = 0x73717368;
/** mksquashfs pads the image to this (its default; `-nopad` images are not accepted). */
export const SQUASHFS_PAD_BYTES = 4096;
/** Metadata blocks hold at most 8 KiB uncompressed: an inode offset inside one is below this. */
const METADATA_BLOCK_BYTES = 8192;
const MIN_BLOCK_LOG = 12;
const MAX_BLOCK_LOG = 20;
const NO_TABLE = 0xffff_ffff_ffff_ffffn;
/** The largest bytes_used whose padded size is still a safe integer (2^53 - 4096). */
const MAX_BYTES_USED = Math.floor(Number.MAX_SAFE_INTEGER / SQUASHFS_PAD_BYTES) * SQUASHFS_PAD_BYTES;

export const SQUASHFS_COMPRESSION = {
  1: 'gzip',
  2: 'lzma',
  3: 'lzo',
  4: 'xz',
  5: 'lz4',
  6: 'zstd',
} as const;
export type SquashfsCompression = (typeof SQUASHFS_COMPRESSION)[keyof typeof SQUASHFS_COMPRESSION];

/** The superblock flags squashfs 4.0 defines; any other bit set is refused. */
export const SQUASHFS_FLAG = {
  uncompressedInodes: 0x0001,
  uncompressedData: 0x0002,
  check: 0x0004,
  uncompressedFragments: 0x0008,
  noFragments: 0x0010,
  alwaysFragments: 0x0020,
  duplicates: 0x0040,
  exportable: 0x0080,
  uncompressedXattrs: 0x0100,
  noXattrs: 0x0200,
  compressorOptions: 0x0400,
  uncompressedIds: 0x0800,
} as const;
const KNOWN_FLAGS = Object.values(SQUASHFS_FLAG).reduce((all, bit) => all | bit, 0);

export interface SquashfsSuperblock {
  inodeCount: number;
  /** Seconds since the epoch, as mksquashfs recorded it. */
  mkfsTime: number;
  blockSize: number;
  blockLog: number;
  fragmentCount: number;
  compressionId: keyof typeof SQUASHFS_COMPRESSION;
  compression: SquashfsCompression;
  flags: number;
  idCount: number;
  versionMajor: 4;
  versionMinor: 0;
  rootInodeRef: number;
  /** The image's length in bytes, unpadded. */
  bytesUsed: number;
  idTableStart: number;
  inodeTableStart: number;
  directoryTableStart: number;
  /** null: no xattr table. */
  xattrIdTableStart: number | null;
  /** null: no fragments (the kernel then ignores the field, so it is not reported). */
  fragmentTableStart: number | null;
  /** null: not exportable (the kernel then ignores the field, so it is not reported). */
  exportTableStart: number | null;
}

export type SquashfsField =
  | 'length'
  | 'magic'
  | 'inode_count'
  | 'block_size'
  | 'block_log'
  | 'compression_id'
  | 'flags'
  | 'id_count'
  | 'version'
  | 'bytes_used'
  | 'root_inode_ref'
  | 'id_table_start'
  | 'xattr_id_table_start'
  | 'inode_table_start'
  | 'directory_table_start'
  | 'fragment_table_start'
  | 'export_table_start';

export type ParseSquashfsResult =
  | { ok: true; superblock: SquashfsSuperblock }
  | { ok: false; field: SquashfsField; message: string };

class BadField extends Error {
  constructor(
    readonly field: SquashfsField,
    message: string,
  ) {
    super(message);
  }
}

const hex = (value: bigint | number) => `0x${value.toString(16)}`;

/** Parses the first 96 bytes of a squashfs 4.0 image (a longer buffer is fine: the rest is ignored). */
export function parseSquashfsSuperblock(head: Buffer): ParseSquashfsResult {
  try {
    return { ok: true, superblock: readSuperblock(head) };
  } catch (error) {
    if (error instanceof BadField) return { ok: false, field: error.field, message: `squashfs superblock: ${error.message}` };
    throw error;
  }
}

function readSuperblock(head: Buffer): SquashfsSuperblock {
  if (head.length < SQUASHFS_SUPERBLOCK_BYTES) {
    throw new BadField('length', `${head.length} bytes given, ${SQUASHFS_SUPERBLOCK_BYTES} needed`);
  }
  const magic = head.readUInt32LE(0);
  if (magic !== SQUASHFS_MAGIC) throw new BadField('magic', `magic is ${hex(magic)}, expected ${hex(SQUASHFS_MAGIC)} ("hsqs")`);

  const versionMajor = head.readUInt16LE(28);
  const versionMinor = head.readUInt16LE(30);
  // Checked right after the magic: in a squashfs 3.x or older image every other field moves.
  if (versionMajor !== 4 || versionMinor !== 0) {
    throw new BadField('version', `version is ${versionMajor}.${versionMinor}, only 4.0 is supported`);
  }

  const inodeCount = head.readUInt32LE(4);
  if (inodeCount === 0) throw new BadField('inode_count', 'inode_count is 0 (the root directory is an inode)');
  const mkfsTime = head.readUInt32LE(8);
  const blockSize = head.readUInt32LE(12);
  const fragmentCount = head.readUInt32LE(16);
  const compressionId = head.readUInt16LE(20);
  const blockLog = head.readUInt16LE(22);
  const flags = head.readUInt16LE(24);
  const idCount = head.readUInt16LE(26);

  if (blockSize < 1 << MIN_BLOCK_LOG || blockSize > 1 << MAX_BLOCK_LOG || (blockSize & (blockSize - 1)) !== 0) {
    throw new BadField('block_size', `block_size ${blockSize} is not a power of two from 4 KiB to 1 MiB`);
  }
  if (blockSize !== 2 ** blockLog) throw new BadField('block_log', `block_log ${blockLog} does not match block_size ${blockSize}`);
  if (!Object.hasOwn(SQUASHFS_COMPRESSION, compressionId)) {
    throw new BadField('compression_id', `compression_id ${compressionId} is unknown (1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd)`);
  }
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new BadField('flags', `flags ${hex(flags)} has unknown bits ${hex(flags & ~KNOWN_FLAGS)}`);
  if (idCount === 0) throw new BadField('id_count', 'id_count is 0 (every inode names an owner id)');

  const bytesUsedRaw = head.readBigUInt64LE(40);
  if (bytesUsedRaw < BigInt(SQUASHFS_SUPERBLOCK_BYTES) || bytesUsedRaw > BigInt(MAX_BYTES_USED)) {
    throw new BadField('bytes_used', `bytes_used ${bytesUsedRaw} is outside ${SQUASHFS_SUPERBLOCK_BYTES}..${MAX_BYTES_USED}`);
  }
  const bytesUsed = Number(bytesUsedRaw);

  // A table lies after the superblock and starts before the image's end.
  const requiredTable = (field: SquashfsField, offset: number): number => {
    const value = head.readBigUInt64LE(offset);
    if (value === NO_TABLE) throw new BadField(field, `${field} is absent (all ones) but the table is required`);
    if (value < BigInt(SQUASHFS_SUPERBLOCK_BYTES) || value >= bytesUsedRaw) {
      throw new BadField(field, `${field} ${hex(value)} is outside the image (${SQUASHFS_SUPERBLOCK_BYTES}..${bytesUsed - 1})`);
    }
    return Number(value);
  };
  const optionalTable = (field: SquashfsField, offset: number): number | null =>
    head.readBigUInt64LE(offset) === NO_TABLE ? null : requiredTable(field, offset);

  const idTableStart = requiredTable('id_table_start', 48);
  const xattrIdTableStart = optionalTable('xattr_id_table_start', 56);
  const inodeTableStart = requiredTable('inode_table_start', 64);
  const directoryTableStart = requiredTable('directory_table_start', 72);
  if (inodeTableStart >= directoryTableStart) {
    throw new BadField('inode_table_start', `inode_table_start ${hex(inodeTableStart)} is not before directory_table_start ${hex(directoryTableStart)}`);
  }
  // The kernel reads these two only when they are in use; their value is otherwise meaningless.
  const fragmentTableStart = fragmentCount > 0 ? requiredTable('fragment_table_start', 80) : null;
  const exportTableStart = (flags & SQUASHFS_FLAG.exportable) !== 0 ? requiredTable('export_table_start', 88) : null;

  // A reference is (metadata block start relative to the inode table) << 16 | offset in it,
  // 48 bits in all.
  const rootInodeRefRaw = head.readBigUInt64LE(32);
  const rootBlock = rootInodeRefRaw >> 16n;
  const rootOffset = Number(rootInodeRefRaw & 0xffffn);
  if (rootInodeRefRaw >= 1n << 48n || rootBlock >= BigInt(directoryTableStart - inodeTableStart) || rootOffset >= METADATA_BLOCK_BYTES) {
    throw new BadField('root_inode_ref', `root_inode_ref ${hex(rootInodeRefRaw)} points outside the inode table`);
  }

  return {
    inodeCount,
    mkfsTime,
    blockSize,
    blockLog,
    fragmentCount,
    compressionId: compressionId as keyof typeof SQUASHFS_COMPRESSION,
    compression: SQUASHFS_COMPRESSION[compressionId as keyof typeof SQUASHFS_COMPRESSION],
    flags,
    idCount,
    versionMajor: 4,
    versionMinor: 0,
    rootInodeRef: Number(rootInodeRefRaw),
    bytesUsed,
    idTableStart,
    inodeTableStart,
    directoryTableStart,
    xattrIdTableStart,
    fragmentTableStart,
    exportTableStart,
  };
}

/** The image's size on disk as mksquashfs writes it: bytes_used rounded up to 4096. */
export function squashfsPaddedBytes(superblock: Pick<SquashfsSuperblock, 'bytesUsed'>): number {
  return Math.ceil(superblock.bytesUsed / SQUASHFS_PAD_BYTES) * SQUASHFS_PAD_BYTES;
}

/**
 * The 4 KiB blocks (byte offsets, ascending, distinct) the kernel reads when it mounts the image:
 * the superblock, the metadata block holding the root inode, and the index of each table
 * (ids, fragments, export, xattr ids), which mksquashfs writes at the image's end. Read
 * through dm-verity before the mount, these verify the hash-tree paths of both ends of the image
 * at once instead of one after the other, and a corrupted table is reported as corruption rather
 * than as a failed mount.
 */
export function squashfsMountBlocks(superblock: SquashfsSuperblock, blockBytes = SQUASHFS_PAD_BYTES): number[] {
  const rootInodeBlock = superblock.inodeTableStart + Math.floor(superblock.rootInodeRef / 0x1_0000);
  const offsets = [0, rootInodeBlock, superblock.idTableStart, superblock.fragmentTableStart, superblock.exportTableStart, superblock.xattrIdTableStart]
    .filter((offset): offset is number => offset !== null)
    .map((offset) => Math.floor(offset / blockBytes) * blockBytes);
  return [...new Set(offsets)].sort((a, b) => a - b);
}
