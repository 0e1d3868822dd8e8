/**
 * Service images as the machine mounts them, planned as pure functions: ONE squashfs layer with
 * its dm-verity hash tree appended, the root hash in the layer's annotation. The image manifest
 * names that layer, so the manifest digest signed in install.json covers the root hash, and the
 * root hash covers every byte of the filesystem (docs/service-images.md).
 *
 * The layer blob: `[squashfs (a multiple of 4096 bytes)][verity superblock (512 bytes, padded
 * to a 4096 block)][hash tree]`, as `veritysetup format BLOB BLOB --hash-offset=<squashfs size>`
 * writes it. project-machine/atomfs lays out its verity squashfs layers the same way (hash
 * offset = squashfs size, superblock present), and uses the same media type prefix and the same
 * annotation key.
 *
 * The tools that make it (umoci, mksquashfs, veritysetup) run in squash-tools.ts; this module
 * decides what the image manifest and config say and checks what an already-squashed source
 * claims, so that it can be tested without root or tools.
 */
import { createHash } from 'node:crypto';
import { MEDIA_TYPE } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import { type Blob, type Descriptor, encodeJson, type ImageManifest, sha256Digest } from './oci.ts';

/** Every squashfs layer type atomfs knows starts with this (`…squashfs+zstd+verity` etc.). */
export const SQUASHFS_MEDIA_TYPE_PREFIX = 'application/vnd.stacker.image.layer.squashfs';
/** Any squashfs+verity layer type, as the boot side accepts it: `…squashfs+zstd+verity` and the like. */
const SQUASHFS_VERITY_MEDIA_TYPE_PATTERN = /^application\/vnd\.stacker\.image\.layer\.squashfs(?:\+[a-z0-9]+)*\+verity$/;
/** The layer type mosb writes: squashfs compressed with gzip, the verity tree appended. */
export const SQUASHFS_VERITY_MEDIA_TYPE = `${SQUASHFS_MEDIA_TYPE_PREFIX}+gzip+verity`;
/**
 * The layer annotation holding the dm-verity root hash (64 hex digits). The boot side reads the
 * same key (its own constant in init/storage/verity.ts; the two must stay equal).
 */
export const VERITY_ROOT_HASH_ANNOTATION = 'io.stackeroci.stacker.squashfs_verity_root_hash';
/** Data and hash block size of the verity tree; mksquashfs pads its output to it as well. */
export const VERITY_BLOCK_SIZE = 4096;
/** The `created_by` of the one history entry a squashed image's config has. */
export const SQUASHED_BY = 'mosb image squash';

/** An image config is small JSON; the boot side refuses one above this unread. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

const ROOT_HASH_PATTERN = /^[0-9a-f]{64}$/;

/**
 * Layer types umoci unpacks (tar, tar+gzip, and their non-distributable forms) plus tar+zstd,
 * which squash-tools.ts decompresses with `zstd` first (umoci 0.4 has no zstd).
 */
export const TAR_LAYER_MEDIA_TYPES: readonly string[] = [
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
];

export const isZstdLayer = (mediaType: string): boolean => mediaType.endsWith('+zstd');

/** A source image already in the target shape: kept byte for byte, once its tree verifies. */
export interface SquashedSource {
  kind: 'squashed';
  layer: Descriptor;
  rootHash: string;
}

/** A source image of tar layers: unpacked and squashed. */
export interface LayeredSource {
  kind: 'layers';
}

/**
 * Decides what to do with a source image from its manifest alone. A squashfs layer in any other
 * shape than exactly one verity layer with its root hash is refused: umoci cannot unpack
 * squashfs, and a squashfs without a tree (or several) is not what the machine mounts.
 */
export function classifySourceImage(manifest: ImageManifest, what: string): SquashedSource | LayeredSource {
  const squashfs = manifest.layers.filter((layer) => layer.mediaType.startsWith(SQUASHFS_MEDIA_TYPE_PREFIX));
  if (squashfs.length === 0) {
    manifest.layers.forEach((layer, i) => {
      if (!TAR_LAYER_MEDIA_TYPES.includes(layer.mediaType)) {
        throw new MosbError('E_SQUASH_FORMAT', `${what}: layers[${i}] has media type ${layer.mediaType}; mosb squashes tar layers (${TAR_LAYER_MEDIA_TYPES.join(', ')})`);
      }
    });
    return { kind: 'layers' };
  }
  if (manifest.layers.length !== 1) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: has ${manifest.layers.length} layers, ${squashfs.length} of them squashfs; a squashfs image must be exactly one layer with its dm-verity tree`);
  }
  const layer = manifest.layers[0]!;
  if (!layer.mediaType.endsWith('+verity')) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its squashfs layer (${layer.mediaType}) has no dm-verity hash tree (the media type must end in +verity)`);
  }
  if (!SQUASHFS_VERITY_MEDIA_TYPE_PATTERN.test(layer.mediaType)) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its layer's media type ${layer.mediaType} is not ${SQUASHFS_MEDIA_TYPE_PREFIX}[+<compression>]+verity`);
  }
  const rootHash = layer.annotations?.[VERITY_ROOT_HASH_ANNOTATION];
  if (rootHash === undefined) throw new MosbError('E_SQUASH_FORMAT', `${what}: its squashfs layer has no ${VERITY_ROOT_HASH_ANNOTATION} annotation`);
  if (!ROOT_HASH_PATTERN.test(rootHash)) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its ${VERITY_ROOT_HASH_ANNOTATION} ${JSON.stringify(rootHash.slice(0, 80))} is not 64 lowercase hex digits`);
  }
  return { kind: 'squashed', layer, rootHash };
}

/** The squashed layer as made: the whole blob (squashfs + tree) and the tree's root hash. */
export interface SquashedLayer {
  digest: string;
  size: number;
  rootHash: string;
}

export interface SquashedImagePlan {
  config: Blob & { descriptor: Descriptor };
  manifest: Blob & { descriptor: Descriptor; parsed: ImageManifest };
  layer: Descriptor;
}

/**
 * The squashed image's config and manifest. The config is the source's with two fields
 * replaced: `rootfs` names the one layer (its diff_id is the blob's digest, as stacker writes
 * for squashfs layers: there is no uncompressed form to name), and `history` is one entry
 * saying mosb squashed it, from which source manifest. Everything else (Entrypoint, Cmd, Env,
 * WorkingDir, User, ExposedPorts, Labels, architecture, os, created, …) stays, in its order.
 */
export function planSquashedImage(input: { sourceConfig: Buffer; sourceManifestDigest: string; layer: SquashedLayer; what: string }): SquashedImagePlan {
  const source = parseSourceConfig(input.sourceConfig, input.what);
  const created = typeof source.created === 'string' ? { created: source.created } : {};
  const config = {
    ...source,
    rootfs: { type: 'layers', diff_ids: [input.layer.digest] },
    history: [{ ...created, created_by: SQUASHED_BY, comment: `squashfs with dm-verity from ${input.sourceManifestDigest}` }],
  };
  const configBytes = encodeJson(config);
  if (configBytes.length > MAX_CONFIG_BYTES) throw new MosbError('E_TOO_LARGE', `${input.what}: its config would be ${configBytes.length} bytes; the boot side accepts at most ${MAX_CONFIG_BYTES}`);
  const configDescriptor: Descriptor = { mediaType: MEDIA_TYPE.imageConfig, digest: sha256Digest(configBytes), size: configBytes.length };
  const layer: Descriptor = {
    mediaType: SQUASHFS_VERITY_MEDIA_TYPE,
    digest: input.layer.digest,
    size: input.layer.size,
    annotations: { [VERITY_ROOT_HASH_ANNOTATION]: input.layer.rootHash },
  };
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPE.imageManifest, config: configDescriptor, layers: [layer] };
  const manifestBytes = encodeJson(manifest);
  return {
    config: { digest: configDescriptor.digest, bytes: configBytes, descriptor: configDescriptor },
    manifest: {
      digest: sha256Digest(manifestBytes),
      bytes: manifestBytes,
      descriptor: { mediaType: MEDIA_TYPE.imageManifest, digest: sha256Digest(manifestBytes), size: manifestBytes.length },
      parsed: manifest,
    },
    layer,
  };
}

/** The source config as an object that is an image config (architecture and os present). */
export function parseSourceConfig(bytes: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new MosbError('E_SOURCE', `${what}: its image config is not JSON (${error instanceof Error ? error.message : String(error)})`, { cause: error });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new MosbError('E_SOURCE', `${what}: its image config is not a JSON object`);
  const config = value as Record<string, unknown>;
  for (const field of ['architecture', 'os']) {
    if (typeof config[field] !== 'string') throw new MosbError('E_SOURCE', `${what}: its image config has no ${field}`);
  }
  return config;
}

/** squashfs stores times as unsigned 32-bit seconds. */
const MAX_SQUASHFS_TIME = 0xffff_ffff;
const RFC3339 = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/**
 * The time every inode and the filesystem itself get (`mksquashfs -all-time -mkfs-time`): the
 * source config's `created`, else 0. Taken from the source, not from the environment, so that
 * the squashed image is a function of the source image alone: two builders (or a builder and
 * an auditor re-squashing) get the same bytes. Flattening the times loses the files' mtimes,
 * which a read-only root filesystem does not need; directories touched by a later layer's
 * whiteouts would otherwise carry the time of the unpack.
 */
export function squashTime(sourceConfig: Record<string, unknown>): number {
  const created = sourceConfig.created;
  if (typeof created !== 'string') return 0;
  const match = RFC3339.exec(created);
  if (!match) return 0;
  const millis = Date.parse(`${match[1]}${match[2]}`);
  if (Number.isNaN(millis)) return 0;
  return Math.min(Math.max(Math.floor(millis / 1000), 0), MAX_SQUASHFS_TIME);
}

/**
 * The verity salt: SHA-256 of the squashfs bytes (64 hex digits, a 32-byte salt). A salt stops
 * work done against one salt from serving against every image that shares it; it need not be
 * secret. Derived from the content it differs between images (no two filesystems share one
 * unless they are the same bytes, and then they have the same tree anyway), and it keeps the
 * layer reproducible, which a random salt would not.
 */
export function veritySalt(squashfsDigest: string): string {
  if (!/^sha256:[0-9a-f]{64}$/.test(squashfsDigest)) throw new MosbError('E_ARGUMENT', `veritySalt: expected sha256:<64 hex digits>, got ${JSON.stringify(squashfsDigest)}`);
  return squashfsDigest.slice('sha256:'.length);
}

/**
 * The verity superblock's UUID: a label only (nothing looks it up), derived so the blob stays
 * reproducible. The first 16 bytes of SHA-256("mosb verity uuid" ‖ salt), shaped as a version 4
 * UUID (version nibble 4, variant bits 10) so tools that parse it accept it.
 */
export function verityUuid(saltHex: string): string {
  const bytes = createHash('sha256').update('mosb verity uuid').update(Buffer.from(saltHex, 'hex')).digest().subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The squashfs superblock's size; `bytes_used` is the little-endian u64 at offset 40. */
export const SQUASHFS_SUPERBLOCK_SIZE = 96;
const SQUASHFS_MAGIC = 0x73717368; // "hsqs" read as little-endian u32
/** The verity superblock veritysetup writes at the hash offset (the tree follows, block-aligned). */
const VERITY_SUPERBLOCK_SIZE = 512;

/** The squashfs superblock's `bytes_used` (little-endian u64 at offset 40), after its magic. */
export function squashfsBytesUsed(superblock: Buffer, what: string): number {
  if (superblock.length < SQUASHFS_SUPERBLOCK_SIZE || superblock.readUInt32LE(0) !== SQUASHFS_MAGIC) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its layer does not start with a squashfs superblock`);
  }
  const bytesUsed = superblock.readBigUInt64LE(40);
  if (bytesUsed < BigInt(SQUASHFS_SUPERBLOCK_SIZE) || bytesUsed > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its squashfs superblock claims ${bytesUsed} bytes used`);
  }
  return Number(bytesUsed);
}

/**
 * Where the verity area of a squashfs+verity blob starts: the squashfs superblock's
 * `bytes_used`, rounded up to the verity block size (mksquashfs pads the file to 4096, and
 * veritysetup was given that file size as the hash offset). `blobSize` must leave room for the
 * verity superblock after it.
 */
export function squashfsDataSize(superblock: Buffer, blobSize: number, what: string): number {
  const bytesUsed = squashfsBytesUsed(superblock, what);
  const dataSize = Math.ceil(bytesUsed / VERITY_BLOCK_SIZE) * VERITY_BLOCK_SIZE;
  if (dataSize + VERITY_SUPERBLOCK_SIZE > blobSize) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its layer is ${blobSize} bytes and the squashfs takes ${dataSize}; there is no dm-verity tree after it`);
  }
  return dataSize;
}

/** The root hash `veritysetup format` prints (`Root hash: <hex>`, with LC_ALL=C). */
export function parseVerityRootHash(formatOutput: string): string | undefined {
  return /^Root hash:\s+([0-9a-f]{64})\s*$/m.exec(formatOutput)?.[1];
}

export interface VerityHeader {
  hashType: number;
  dataBlocks: number;
  dataBlockSize: number;
  hashBlockSize: number;
  hashAlgorithm: string;
}

/** The fields of `veritysetup dump` (LC_ALL=C) that fix the tree's shape. */
export function parseVerityDump(dumpOutput: string): VerityHeader | undefined {
  const field = (name: string) => new RegExp(`^${name}:\\s+(\\S+)\\s*$`, 'm').exec(dumpOutput)?.[1];
  const [hashType, dataBlocks, dataBlockSize, hashBlockSize, hashAlgorithm] = ['Hash type', 'Data blocks', 'Data block size', 'Hash block size', 'Hash algorithm'].map(field);
  if ([hashType, dataBlocks, dataBlockSize, hashBlockSize, hashAlgorithm].some((value) => value === undefined)) return undefined;
  return { hashType: Number(hashType), dataBlocks: Number(dataBlocks), dataBlockSize: Number(dataBlockSize), hashBlockSize: Number(hashBlockSize), hashAlgorithm: hashAlgorithm! };
}

/**
 * Checks a kept layer's verity superblock describes the tree the boot side expects: format 1,
 * sha256, 4096-byte blocks, and exactly the squashfs's blocks as data (a superblock claiming
 * fewer would leave the end of the filesystem unverified).
 */
export function checkVerityHeader(header: VerityHeader | undefined, dataSize: number, what: string): void {
  if (!header) throw new MosbError('E_SQUASH_FORMAT', `${what}: veritysetup dump did not show a verity header`);
  const expected: VerityHeader = { hashType: 1, dataBlocks: dataSize / VERITY_BLOCK_SIZE, dataBlockSize: VERITY_BLOCK_SIZE, hashBlockSize: VERITY_BLOCK_SIZE, hashAlgorithm: 'sha256' };
  for (const key of Object.keys(expected) as (keyof VerityHeader)[]) {
    if (header[key] !== expected[key]) throw new MosbError('E_SQUASH_FORMAT', `${what}: its verity superblock says ${key} ${header[key]}, expected ${expected[key]}`);
  }
}
