/**
 * Decides how a squashfs layer is mounted through dm-verity: where its data ends, where its
 * hash tree starts, and the exact device-mapper table line the kernel will verify it with.
 * Pure: the caller reads the bytes and the sizes, makes the loop and dm devices, and mounts.
 * The build side (mosb) writes the layer with `mksquashfs` then `veritysetup format` into the
 * same file; test/privileged/storage-verity-oracle.test.ts checks these decisions against both.
 *
 * A layer blob (project-machine/atomfs compatible):
 *
 *   offset 0      squashfs image, padded by mksquashfs to D = bytes_used rounded up to 4096
 *   offset D      the 512-byte cryptsetup verity superblock, alone in the first 4096-byte block
 *   D + 4096      the hash tree, top level first, the level hashing the data blocks last
 *   end           = D + 4096 + 4096 × (hash tree blocks), exactly the blob's size
 *
 * Trust: both superblocks are read from the raw file and are NOT covered by the root hash. They
 * only choose the geometry (data block count, salt, hash start); the root hash comes from the
 * signed layer descriptor, and with any other geometry or salt the kernel's hash of the top
 * block differs from it and every read fails. So the checks below refuse malformed layers
 * early with a clear message; the signature, not these checks, is what makes a layer trusted.
 *
 * The table uses the kernel's defaults on corruption: a corrupted block reads as an I/O error
 * (no `panic_on_corruption`/`restart_on_corruption`), and PID 1 reports it.
 */
import type { DmTableLine } from '../../native/types.ts';
import { parseSquashfsSuperblock, squashfsPaddedBytes, type SquashfsSuperblock } from './squashfs.ts';

/** The layer descriptor annotation (stacker's name) holding the dm-verity root hash. */
export const VERITY_ROOT_HASH_ANNOTATION = 'io.stackeroci.stacker.squashfs_verity_root_hash';
export const SQUASHFS_MEDIA_TYPE_PREFIX = 'application/vnd.stacker.image.layer.squashfs';
export const VERITY_SUFFIX = '+verity';
/** The prefix, optional `+<word>` parts (stacker writes `+gzip`, `+zstd`), then `+verity`. */
const SQUASHFS_VERITY_MEDIA_TYPE = /^application\/vnd\.stacker\.image\.layer\.squashfs(?:\+[a-z0-9]+)*\+verity$/;

/** The root hash form accepted anywhere: a sha256 digest as 64 lowercase hex digits. */
export const ROOT_HASH_PATTERN = /^[0-9a-f]{64}$/;
export const VERITY_SUPERBLOCK_BYTES = 512;
/** Both the data and the hash block size; the only one accepted (the page size on x86-64). */
export const VERITY_BLOCK_BYTES = 4096;
export const VERITY_ALGORITHM = 'sha256';
export const SHA256_DIGEST_BYTES = 32;
export const VERITY_MAX_SALT_BYTES = 256;
const SECTOR_BYTES = 512;
const VERITY_SIGNATURE = Buffer.from('verity\0\0', 'latin1');
/** dm-verity's "normal" format: the salt is hashed before each block (0 is Chrome OS's). */
const HASH_TYPE_NORMAL = 1;
const MEDIA_TYPE_ECHO_CHARS = 200;

export type VerityErrorCode =
  /** The layer descriptor is not a squashfs+verity layer, or its root hash is missing or malformed. */
  | 'E_LAYER_FORMAT'
  /** The blob's squashfs or verity superblock, or the sizes they imply, do not make a valid layout. */
  | 'E_VERITY_LAYOUT';

export interface VerityFailure {
  ok: false;
  code: VerityErrorCode;
  message: string;
}

// ── the verity superblock ───────────────────────────────────────────────────────────────────

/**
 * The cryptsetup verity superblock (512 bytes, little endian):
 *    0 signature "verity\0\0"   8 version u32   12 hash_type u32   16 uuid[16]
 *   32 algorithm[32] NUL-padded   64 data_block_size u32   68 hash_block_size u32
 *   72 data_blocks u64   80 salt_size u16   82 pad[6]   88 salt[256]   344 pad[168]
 * Confirmed against cryptsetup's lib/verity/verity.c and a hexdump of `veritysetup format`.
 */
export interface VeritySuperblock {
  version: 1;
  hashType: 1;
  /** The hash device's UUID, canonical lowercase 8-4-4-4-12 form. */
  uuid: string;
  algorithm: 'sha256';
  dataBlockSize: 4096;
  hashBlockSize: 4096;
  dataBlocks: number;
  /** Lowercase hex, '' when the salt is empty. */
  salt: string;
}

export type VeritySuperblockField =
  | 'length'
  | 'signature'
  | 'version'
  | 'hash_type'
  | 'algorithm'
  | 'data_block_size'
  | 'hash_block_size'
  | 'data_blocks'
  | 'salt_size'
  | 'salt'
  | 'padding';

export type ParseVeritySuperblockResult =
  | { ok: true; superblock: VeritySuperblock }
  | { ok: false; field: VeritySuperblockField; message: string };

const isZero = (bytes: Buffer) => bytes.every((byte) => byte === 0);

/** Parses the first 512 bytes of `bytes` as a verity superblock this project accepts. */
export function parseVeritySuperblock(bytes: Buffer): ParseVeritySuperblockResult {
  const fail = (field: VeritySuperblockField, message: string) => ({ ok: false as const, field, message: `verity superblock: ${message}` });
  if (bytes.length < VERITY_SUPERBLOCK_BYTES) return fail('length', `${bytes.length} bytes given, ${VERITY_SUPERBLOCK_BYTES} needed`);
  const sb = bytes.subarray(0, VERITY_SUPERBLOCK_BYTES);

  if (!sb.subarray(0, 8).equals(VERITY_SIGNATURE)) {
    return fail('signature', `signature is ${JSON.stringify(sb.toString('latin1', 0, 8))}, expected "verity\\0\\0"`);
  }
  const version = sb.readUInt32LE(8);
  if (version !== 1) return fail('version', `version is ${version}, expected 1`);
  const hashType = sb.readUInt32LE(12);
  if (hashType !== HASH_TYPE_NORMAL) return fail('hash_type', `hash_type is ${hashType}, expected 1 (0 is the Chrome OS format)`);

  const algorithmField = sb.subarray(32, 64);
  const nul = algorithmField.indexOf(0);
  const algorithm = algorithmField.toString('latin1', 0, nul === -1 ? 32 : nul);
  if (algorithm !== VERITY_ALGORITHM) return fail('algorithm', `algorithm is ${JSON.stringify(algorithm)}, only "sha256" is accepted`);
  // cryptsetup zero-fills the field: bytes after the name mean another writer or damage.
  if (!isZero(algorithmField.subarray(nul))) return fail('algorithm', 'algorithm has non-zero bytes after its NUL terminator');

  const dataBlockSize = sb.readUInt32LE(64);
  if (dataBlockSize !== VERITY_BLOCK_BYTES) return fail('data_block_size', `data_block_size is ${dataBlockSize}, expected ${VERITY_BLOCK_BYTES}`);
  const hashBlockSize = sb.readUInt32LE(68);
  if (hashBlockSize !== VERITY_BLOCK_BYTES) return fail('hash_block_size', `hash_block_size is ${hashBlockSize}, expected ${VERITY_BLOCK_BYTES}`);

  const dataBlocks = sb.readBigUInt64LE(72);
  if (dataBlocks === 0n || dataBlocks > BigInt(Number.MAX_SAFE_INTEGER)) {
    return fail('data_blocks', `data_blocks is ${dataBlocks}, expected 1..2^53-1`);
  }

  const saltSize = sb.readUInt16LE(80);
  if (saltSize > VERITY_MAX_SALT_BYTES) return fail('salt_size', `salt_size is ${saltSize}, at most ${VERITY_MAX_SALT_BYTES}`);
  const saltArea = sb.subarray(88, 88 + VERITY_MAX_SALT_BYTES);
  if (!isZero(saltArea.subarray(saltSize))) return fail('salt', `the salt area has non-zero bytes after salt_size (${saltSize})`);
  if (!isZero(sb.subarray(82, 88)) || !isZero(sb.subarray(88 + VERITY_MAX_SALT_BYTES))) {
    return fail('padding', 'reserved padding bytes are not zero');
  }

  const uuid = sb.toString('hex', 16, 32);
  return {
    ok: true,
    superblock: {
      version: 1,
      hashType: 1,
      uuid: `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-${uuid.slice(12, 16)}-${uuid.slice(16, 20)}-${uuid.slice(20)}`,
      algorithm: 'sha256',
      dataBlockSize: VERITY_BLOCK_BYTES,
      hashBlockSize: VERITY_BLOCK_BYTES,
      dataBlocks: Number(dataBlocks),
      salt: saltArea.toString('hex', 0, saltSize),
    },
  };
}

// ── the hash tree's shape ───────────────────────────────────────────────────────────────────

export interface HashTreeLevel {
  /** 0 hashes the data blocks; each next level hashes the one below; the last is one block. */
  level: number;
  blocks: number;
  /** Where the level starts, in hash blocks after hash_start: the top level is at 0. */
  offsetBlocks: number;
}

export interface HashTree {
  /** Digests in one hash block: blockSize / digestSize rounded down to a power of two. */
  digestsPerBlock: number;
  /** Indexed by level (0 = the level over the data). Empty for a single data block. */
  levels: HashTreeLevel[];
  /** Every level's blocks, the verity superblock not counted (`veritysetup dump`'s "Hash blocks"). */
  totalBlocks: number;
}

/**
 * The shape of dm-verity's hash tree over `dataBlocks` blocks, as the kernel computes it
 * (drivers/md/dm-verity-target.c): the number of levels is the least n with
 * (dataBlocks - 1) >> (n × log2(digestsPerBlock)) = 0, level i has
 * ceil(dataBlocks / digestsPerBlock^(i+1)) blocks, and the levels lie on disk from the top one
 * down. The root hash is the hash of the top block; with one data block there is no tree and the
 * root hash is that block's hash.
 */
export function hashTreeBlocks(dataBlocks: number, hashBlockSize = VERITY_BLOCK_BYTES, digestSize = SHA256_DIGEST_BYTES): HashTree {
  if (!Number.isSafeInteger(dataBlocks) || dataBlocks < 1) throw new RangeError(`dataBlocks must be an integer from 1 to 2^53-1, got ${dataBlocks}`);
  if (!Number.isInteger(hashBlockSize) || hashBlockSize < 512 || hashBlockSize > 1 << 20 || (hashBlockSize & (hashBlockSize - 1)) !== 0) {
    throw new RangeError(`hashBlockSize must be a power of two from 512 to 1 MiB, got ${hashBlockSize}`);
  }
  if (!Number.isInteger(digestSize) || digestSize < 1 || digestSize > hashBlockSize / 2) {
    throw new RangeError(`digestSize must be an integer from 1 to hashBlockSize/2, got ${digestSize}`);
  }
  const bitsPerLevel = 31 - Math.clz32(Math.floor(hashBlockSize / digestSize));
  let levelCount = 0;
  // Divisions by powers of two are exact in doubles, so this is the kernel's shift, to 2^53.
  while (levelCount * bitsPerLevel < 64 && Math.floor((dataBlocks - 1) / 2 ** (levelCount * bitsPerLevel)) > 0) levelCount++;

  const sizes = Array.from({ length: levelCount }, (_, level) => Math.ceil(dataBlocks / 2 ** ((level + 1) * bitsPerLevel)));
  const levels: HashTreeLevel[] = new Array(levelCount);
  let offsetBlocks = 0;
  for (let level = levelCount - 1; level >= 0; level--) {
    const blocks = sizes[level]!;
    levels[level] = { level, blocks, offsetBlocks };
    offsetBlocks += blocks;
  }
  return { digestsPerBlock: 2 ** bitsPerLevel, levels, totalBlocks: offsetBlocks };
}

// ── the layer descriptor ────────────────────────────────────────────────────────────────────

export function isSquashfsVerityMediaType(mediaType: string): boolean {
  return SQUASHFS_VERITY_MEDIA_TYPE.test(mediaType);
}

function echo(value: string): string {
  return JSON.stringify(value.length > MEDIA_TYPE_ECHO_CHARS ? `${value.slice(0, MEDIA_TYPE_ECHO_CHARS)}…` : value);
}

function checkLayerFormat(mediaType: string, rootHash: string | undefined): VerityFailure | null {
  if (!isSquashfsVerityMediaType(mediaType)) {
    return {
      ok: false,
      code: 'E_LAYER_FORMAT',
      message: `layer media type ${echo(mediaType)} is not a squashfs+verity layer (${SQUASHFS_MEDIA_TYPE_PREFIX}[+…]${VERITY_SUFFIX})`,
    };
  }
  if (rootHash === undefined) {
    return { ok: false, code: 'E_LAYER_FORMAT', message: `the layer has no root hash (annotation ${VERITY_ROOT_HASH_ANNOTATION})` };
  }
  if (!ROOT_HASH_PATTERN.test(rootHash)) {
    return { ok: false, code: 'E_LAYER_FORMAT', message: `the layer's root hash ${echo(rootHash)} is not 64 lowercase hex digits` };
  }
  return null;
}

export interface LayerDescriptorLike {
  mediaType: string;
  annotations?: Record<string, string>;
}

/** Checks a (signed) layer descriptor is a squashfs+verity layer and takes its root hash. */
export function parseVerityLayerDescriptor(descriptor: LayerDescriptorLike): { ok: true; mediaType: string; rootHash: string } | VerityFailure {
  const annotations = descriptor.annotations ?? {};
  const rootHash = Object.hasOwn(annotations, VERITY_ROOT_HASH_ANNOTATION) ? annotations[VERITY_ROOT_HASH_ANNOTATION] : undefined;
  const refusal = checkLayerFormat(descriptor.mediaType, rootHash);
  if (refusal) return refusal;
  return { ok: true, mediaType: descriptor.mediaType, rootHash: rootHash! };
}

// ── the plan ────────────────────────────────────────────────────────────────────────────────

export interface VerityLayerInput {
  /** The blob's size in bytes (the signed descriptor's size, equal to the file's). */
  fileSize: number;
  /** The blob's first 96 bytes (or more). */
  squashfsHead: Buffer;
  /** 512 bytes (or more) read at `squashfsPaddedBytes(parsed squashfsHead)`. */
  verityHead: Buffer;
  /** From the signed descriptor's annotation (undefined when it has none). */
  rootHash: string | undefined;
  mediaType: string;
}

export interface VerityLayout {
  /** The squashfs image padded to 4096: what the verity device exposes. */
  dataBytes: number;
  dataBlocks: number;
  /** dataBytes in 512-byte sectors: the dm table's length. */
  dataSectors: number;
  /** Byte offset of the verity superblock (= dataBytes). */
  hashOffset: number;
  /** The hash tree's first block, in 4096-byte blocks from the blob's start (the table's hash_start). */
  hashStartBlock: number;
  /** The hash tree's blocks, the superblock not counted. */
  hashBlocks: number;
  hashTree: HashTree;
  /** Lowercase hex ('' for no salt). */
  salt: string;
  algorithm: 'sha256';
  /** The verity superblock's UUID. */
  uuid: string;
  squashfs: SquashfsSuperblock;
}

export type VerityPlanResult = { ok: true; layout: VerityLayout } | VerityFailure;

const layoutFailure = (message: string): VerityFailure => ({ ok: false, code: 'E_VERITY_LAYOUT', message });

/**
 * Checks a layer blob's geometry and decides its verity layout. The caller reads `squashfsHead`,
 * computes the verity superblock's offset with `squashfsPaddedBytes`, reads `verityHead` there,
 * and passes both (reading the wrong place is refused here: the offsets are re-derived).
 */
export function planVerityLayer(input: VerityLayerInput): VerityPlanResult {
  const refusal = checkLayerFormat(input.mediaType, input.rootHash);
  if (refusal) return refusal;

  const { fileSize } = input;
  if (!Number.isSafeInteger(fileSize) || fileSize <= 0) return layoutFailure(`layer size ${fileSize} is not a positive integer below 2^53`);
  if (fileSize % VERITY_BLOCK_BYTES !== 0) return layoutFailure(`layer size ${fileSize} is not a multiple of ${VERITY_BLOCK_BYTES}`);

  const squashfs = parseSquashfsSuperblock(input.squashfsHead);
  if (!squashfs.ok) return layoutFailure(squashfs.message);
  const dataBytes = squashfsPaddedBytes(squashfs.superblock);
  const dataBlocks = dataBytes / VERITY_BLOCK_BYTES;
  if (dataBytes + VERITY_BLOCK_BYTES > fileSize) {
    return layoutFailure(`the squashfs image (${dataBytes} bytes padded) leaves no room for a verity superblock in the layer's ${fileSize} bytes`);
  }

  const verity = parseVeritySuperblock(input.verityHead);
  if (!verity.ok) return layoutFailure(`${verity.message} (at offset ${dataBytes})`);
  if (verity.superblock.dataBlocks !== dataBlocks) {
    return layoutFailure(
      `verity superblock: data_blocks is ${verity.superblock.dataBlocks} but the squashfs image spans ${dataBlocks} blocks of ${VERITY_BLOCK_BYTES} bytes`,
    );
  }

  // The superblock takes the whole first hash block (cryptsetup rounds 512 bytes up to a block).
  const hashStartBlock = dataBlocks + 1;
  const hashTree = hashTreeBlocks(dataBlocks, VERITY_BLOCK_BYTES, SHA256_DIGEST_BYTES);
  const endBytes = (hashStartBlock + hashTree.totalBlocks) * VERITY_BLOCK_BYTES;
  if (endBytes > fileSize) {
    return layoutFailure(`the hash tree (${hashTree.totalBlocks} blocks from block ${hashStartBlock}) ends at ${endBytes} bytes, beyond the layer's ${fileSize} bytes`);
  }
  if (endBytes < fileSize) {
    return layoutFailure(`${fileSize - endBytes} bytes follow the hash tree (it ends at ${endBytes}, the layer is ${fileSize} bytes)`);
  }

  return {
    ok: true,
    layout: {
      dataBytes,
      dataBlocks,
      dataSectors: dataBytes / SECTOR_BYTES,
      hashOffset: dataBytes,
      hashStartBlock,
      hashBlocks: hashTree.totalBlocks,
      hashTree,
      salt: verity.superblock.salt,
      algorithm: verity.superblock.algorithm,
      uuid: verity.superblock.uuid,
      squashfs: squashfs.superblock,
    },
  };
}

// ── the device-mapper table ─────────────────────────────────────────────────────────────────

/** A programming error in the table's inputs (they come from planVerityLayer and the addon). */
export class VerityTableError extends Error {
  readonly code = 'E_VERITY_TABLE';
}

/** `major:minor` (the kernel's limits: 12-bit major, 20-bit minor) or an absolute path. */
const DEVICE_NUMBERS = /^(\d{1,4}):(\d{1,7})$/;
const DEVICE_PATH = /^\/[^\s\0]{1,4095}$/;

function checkDevice(role: string, device: string): void {
  const numbers = DEVICE_NUMBERS.exec(device);
  if (numbers) {
    if (Number(numbers[1]) < 4096 && Number(numbers[2]) < 1 << 20) return;
  } else if (DEVICE_PATH.test(device)) {
    return;
  }
  throw new VerityTableError(`${role} device ${JSON.stringify(device)} is neither major:minor nor an absolute path without spaces`);
}

/**
 * The dm-verity table line for a planned layer:
 * `1 <data_dev> <hash_dev> 4096 4096 <data_blocks> <hash_start> sha256 <root> <salt|->`, over
 * sectors 0..dataSectors. Data and hash device are usually the same loop device.
 */
export function verityTable(
  layout: Pick<VerityLayout, 'dataBlocks' | 'dataSectors' | 'hashStartBlock' | 'salt' | 'algorithm'>,
  dataDevice: string,
  hashDevice: string,
  rootHash: string,
): DmTableLine {
  if (!ROOT_HASH_PATTERN.test(rootHash)) throw new VerityTableError(`root hash ${echo(rootHash)} is not 64 lowercase hex digits`);
  checkDevice('data', dataDevice);
  checkDevice('hash', hashDevice);
  const { dataBlocks, dataSectors, hashStartBlock, salt, algorithm } = layout;
  if (!Number.isSafeInteger(dataBlocks) || dataBlocks < 1 || dataSectors !== dataBlocks * (VERITY_BLOCK_BYTES / SECTOR_BYTES)) {
    throw new VerityTableError(`dataBlocks ${dataBlocks} and dataSectors ${dataSectors} do not describe the same data area`);
  }
  if (!Number.isSafeInteger(hashStartBlock) || hashStartBlock < 1) throw new VerityTableError(`hashStartBlock ${hashStartBlock} is not a positive integer`);
  if (!/^(?:[0-9a-f]{2}){0,256}$/.test(salt)) throw new VerityTableError(`salt ${echo(salt)} is not at most 256 bytes of lowercase hex`);
  if (algorithm !== VERITY_ALGORITHM) throw new VerityTableError(`algorithm ${echo(algorithm)} is not sha256`);
  return {
    start: 0,
    length: dataSectors,
    type: 'verity',
    params: `1 ${dataDevice} ${hashDevice} ${VERITY_BLOCK_BYTES} ${VERITY_BLOCK_BYTES} ${dataBlocks} ${hashStartBlock} ${algorithm} ${rootHash} ${salt === '' ? '-' : salt}`,
  };
}
