/**
 * The dm-verity decisions over hand-made superblocks: the verity superblock parser, the hash
 * tree's shape (golden numbers from `veritysetup format` + `veritysetup dump` runs on this
 * machine, cryptsetup 2.6.1), the layer plan with every refusal and its code, and golden table
 * lines. test/privileged/storage-verity-oracle.test.ts checks the same against the real tools.
 */
import { describe, expect, it } from 'vitest';
import {
  hashTreeBlocks,
  isSquashfsVerityMediaType,
  parseVerityLayerDescriptor,
  parseVeritySuperblock,
  planVerityLayer,
  VERITY_ROOT_HASH_ANNOTATION,
  verityTable,
  VerityTableError,
  type VerityErrorCode,
  type VerityLayerInput,
  type VerityLayout,
  type VeritySuperblockField,
} from '../../init/storage/verity.ts';

const UUID = '12345678-9abc-def0-1122-334455667788';
const SALT = 'ab'.repeat(32);
/** The root hash veritysetup printed for the 700416-byte image below. */
const ROOT = '4acc9fb967a42e3fd1563ae4df347c34fa60b214c14ecb36d7ea1c1fbd6f3570';
const MEDIA_TYPE = 'application/vnd.stacker.image.layer.squashfs+gzip+verity';

/** A real mksquashfs head: bytes_used 700264, so 700416 bytes padded, 171 data blocks. */
const SQUASHFS_HEAD = Buffer.from(
  '6873717303000000be29036b000002000100000001001100c000010004000000' +
    '580000000000000068af0a000000000060af0a0000000000ffffffffffffffff' +
    'c6ae0a000000000008af0a000000000038af0a000000000052af0a0000000000',
  'hex',
);
const DATA_BYTES = 700416;
const DATA_BLOCKS = 171;
/** 700416 + superblock block + 3 hash blocks (2 at level 0, 1 on top). */
const FILE_SIZE = 716800;

interface SuperblockFields {
  signature?: string;
  version?: number;
  hashType?: number;
  uuid?: string;
  algorithm?: Buffer | string;
  dataBlockSize?: number;
  hashBlockSize?: number;
  dataBlocks?: bigint;
  saltSize?: number;
  salt?: Buffer;
}

/** A verity superblock as `veritysetup format` writes it, with fields overridden. */
function veritySuperblock(fields: SuperblockFields = {}): Buffer {
  const sb = Buffer.alloc(512);
  sb.write(fields.signature ?? 'verity\0\0', 0, 'latin1');
  sb.writeUInt32LE(fields.version ?? 1, 8);
  sb.writeUInt32LE(fields.hashType ?? 1, 12);
  Buffer.from((fields.uuid ?? UUID).replaceAll('-', ''), 'hex').copy(sb, 16);
  const algorithm = fields.algorithm ?? 'sha256';
  (typeof algorithm === 'string' ? Buffer.from(algorithm, 'latin1') : algorithm).copy(sb, 32);
  sb.writeUInt32LE(fields.dataBlockSize ?? 4096, 64);
  sb.writeUInt32LE(fields.hashBlockSize ?? 4096, 68);
  sb.writeBigUInt64LE(fields.dataBlocks ?? BigInt(DATA_BLOCKS), 72);
  const salt = fields.salt ?? Buffer.from(SALT, 'hex');
  sb.writeUInt16LE(fields.saltSize ?? salt.length, 80);
  salt.copy(sb, 88);
  return sb;
}

/** The superblock's first 120 bytes as veritysetup wrote them (`xxd -p -s 700416 -l 120`), the rest zero. */
const REAL_VERITY_SUPERBLOCK = Buffer.from(
  '76657269747900000100000001000000123456789abcdef01122334455667788' +
    '7368613235360000000000000000000000000000000000000000000000000000' +
    '0010000000100000ab000000000000002000000000000000' +
    'abababababababababababababababababababababababababababababababab',
  'hex',
);
const REAL_VERITY_HEAD = Buffer.concat([REAL_VERITY_SUPERBLOCK, Buffer.alloc(512 - REAL_VERITY_SUPERBLOCK.length)]);

describe('parseVeritySuperblock', () => {
  it('parses the superblock veritysetup wrote (hexdump), field by field', () => {
    expect(REAL_VERITY_HEAD.equals(veritySuperblock())).toBe(true);
    expect(parseVeritySuperblock(REAL_VERITY_HEAD)).toEqual({
      ok: true,
      superblock: {
        version: 1,
        hashType: 1,
        uuid: UUID,
        algorithm: 'sha256',
        dataBlockSize: 4096,
        hashBlockSize: 4096,
        dataBlocks: 171,
        salt: SALT,
      },
    });
  });

  it('accepts an empty salt, a 256-byte salt, and reads only the first 512 bytes', () => {
    const empty = parseVeritySuperblock(veritySuperblock({ salt: Buffer.alloc(0) }));
    expect(empty.ok && empty.superblock.salt).toBe('');
    const longest = parseVeritySuperblock(veritySuperblock({ salt: Buffer.alloc(256, 0x5a) }));
    expect(longest.ok && longest.superblock.salt).toBe('5a'.repeat(256));
    expect(parseVeritySuperblock(Buffer.concat([veritySuperblock(), Buffer.alloc(3584, 0xff)])).ok).toBe(true);
  });

  const withByte = (offset: number, value: number) => {
    const sb = veritySuperblock();
    sb[offset] = value;
    return sb;
  };

  const refusals: [string, Buffer, VeritySuperblockField, RegExp][] = [
    ['a short buffer', veritySuperblock().subarray(0, 511), 'length', /511 bytes given, 512 needed/],
    ['a zeroed block (no superblock)', Buffer.alloc(512), 'signature', /signature is .*expected "verity\\0\\0"/],
    ['a squashfs where the superblock should be', Buffer.concat([SQUASHFS_HEAD, Buffer.alloc(416)]), 'signature', /signature is "hsqs/],
    ['version 2', veritySuperblock({ version: 2 }), 'version', /version is 2, expected 1/],
    ['the Chrome OS hash type', veritySuperblock({ hashType: 0 }), 'hash_type', /hash_type is 0, expected 1 \(0 is the Chrome OS format\)/],
    ['sha1', veritySuperblock({ algorithm: 'sha1' }), 'algorithm', /algorithm is "sha1", only "sha256"/],
    ['sha512', veritySuperblock({ algorithm: 'sha512' }), 'algorithm', /algorithm is "sha512"/],
    ['SHA256 in capitals', veritySuperblock({ algorithm: 'SHA256' }), 'algorithm', /algorithm is "SHA256"/],
    ['an unterminated algorithm', veritySuperblock({ algorithm: 'x'.repeat(32) }), 'algorithm', /algorithm is "x{32}"/],
    ['bytes after the algorithm name', veritySuperblock({ algorithm: Buffer.from('sha256\0junk') }), 'algorithm', /non-zero bytes after its NUL/],
    ['512-byte data blocks', veritySuperblock({ dataBlockSize: 512 }), 'data_block_size', /data_block_size is 512, expected 4096/],
    ['1 KiB hash blocks', veritySuperblock({ hashBlockSize: 1024 }), 'hash_block_size', /hash_block_size is 1024, expected 4096/],
    ['zero data blocks', veritySuperblock({ dataBlocks: 0n }), 'data_blocks', /data_blocks is 0, expected 1\.\.2\^53-1/],
    ['2^53 data blocks', veritySuperblock({ dataBlocks: 1n << 53n }), 'data_blocks', /data_blocks is 9007199254740992/],
    ['salt_size 257', veritySuperblock({ saltSize: 257 }), 'salt_size', /salt_size is 257, at most 256/],
    ['salt bytes beyond salt_size', veritySuperblock({ saltSize: 16 }), 'salt', /non-zero bytes after salt_size \(16\)/],
    ['a non-zero first padding', withByte(82, 1), 'padding', /padding bytes are not zero/],
    ['a non-zero last padding', withByte(511, 1), 'padding', /padding bytes are not zero/],
  ];

  it.each(refusals)('refuses %s, naming the field', (_name, bytes, field, message) => {
    const result = parseVeritySuperblock(bytes);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.field).toBe(field);
    expect(result.message).toMatch(/^verity superblock: /);
    expect(result.message).toMatch(message);
  });
});

describe('hashTreeBlocks', () => {
  // Data blocks → "Hash blocks" in `veritysetup dump` after `veritysetup format` (4096/4096, sha256).
  const VERITYSETUP_HASH_BLOCKS: [number, number][] = [
    [1, 0],
    [2, 1],
    [127, 1],
    [128, 1],
    [129, 3],
    [171, 3],
    [256, 3],
    [257, 4],
    [16384, 129],
    [16385, 132],
    [32769, 261],
  ];

  it.each(VERITYSETUP_HASH_BLOCKS)('%i data blocks need %i hash blocks, as veritysetup wrote', (dataBlocks, hashBlocks) => {
    expect(hashTreeBlocks(dataBlocks).totalBlocks).toBe(hashBlocks);
  });

  it('stores the top level first and the level over the data last', () => {
    expect(hashTreeBlocks(1)).toEqual({ digestsPerBlock: 128, levels: [], totalBlocks: 0 });
    expect(hashTreeBlocks(128)).toEqual({ digestsPerBlock: 128, levels: [{ level: 0, blocks: 1, offsetBlocks: 0 }], totalBlocks: 1 });
    expect(hashTreeBlocks(256)).toEqual({
      digestsPerBlock: 128,
      levels: [
        { level: 0, blocks: 2, offsetBlocks: 1 },
        { level: 1, blocks: 1, offsetBlocks: 0 },
      ],
      totalBlocks: 3,
    });
    expect(hashTreeBlocks(16385).levels).toEqual([
      { level: 0, blocks: 129, offsetBlocks: 3 },
      { level: 1, blocks: 2, offsetBlocks: 1 },
      { level: 2, blocks: 1, offsetBlocks: 0 },
    ]);
  });

  it('rounds the digests per block down to a power of two and handles other block sizes', () => {
    // sha1 (20 bytes) in 4096: 204 digests fit, 128 are used, as in the kernel.
    expect(hashTreeBlocks(129, 4096, 20)).toMatchObject({ digestsPerBlock: 128, totalBlocks: 3 });
    expect(hashTreeBlocks(129, 8192, 32)).toMatchObject({ digestsPerBlock: 256, totalBlocks: 1 });
    expect(hashTreeBlocks(129, 512, 32)).toMatchObject({ digestsPerBlock: 16, totalBlocks: 9 + 1 });
  });

  it('stays exact up to 2^53 - 1 data blocks', () => {
    const tree = hashTreeBlocks(Number.MAX_SAFE_INTEGER);
    expect(tree.levels).toHaveLength(8); // 7 bits per level: ceil(53 / 7)
    expect(tree.levels[0]!.blocks).toBe(2 ** 46);
    expect(tree.levels.at(-1)).toEqual({ level: 7, blocks: 1, offsetBlocks: 0 });
    expect(Number.isSafeInteger(tree.totalBlocks)).toBe(true);
  });

  it('refuses nonsense arguments', () => {
    for (const dataBlocks of [0, -1, 1.5, Number.NaN, Infinity, 2 ** 53]) expect(() => hashTreeBlocks(dataBlocks)).toThrow(RangeError);
    for (const size of [0, 256, 3000, 4097, 2 ** 21, Number.NaN]) expect(() => hashTreeBlocks(8, size)).toThrow(/hashBlockSize/);
    for (const digest of [0, 2049, 1.5, Number.NaN]) expect(() => hashTreeBlocks(8, 4096, digest)).toThrow(/digestSize/);
  });
});

describe('layer descriptors', () => {
  it('recognises squashfs+verity media types only', () => {
    for (const ok of [
      'application/vnd.stacker.image.layer.squashfs+verity',
      'application/vnd.stacker.image.layer.squashfs+gzip+verity',
      'application/vnd.stacker.image.layer.squashfs+zstd+verity',
    ]) {
      expect(isSquashfsVerityMediaType(ok)).toBe(true);
    }
    for (const bad of [
      'application/vnd.stacker.image.layer.squashfs',
      'application/vnd.stacker.image.layer.squashfs+zstd',
      'application/vnd.stacker.image.layer.squashfsx+verity',
      'application/vnd.stacker.image.layer.squashfs++verity',
      'application/vnd.stacker.image.layer.squashfs+verity+gzip',
      'application/vnd.oci.image.layer.v1.tar+gzip',
      'application/vnd.stacker.image.layer.squashfs+verity\n',
    ]) {
      expect(isSquashfsVerityMediaType(bad)).toBe(false);
    }
  });

  it('takes the root hash from the annotation', () => {
    expect(parseVerityLayerDescriptor({ mediaType: MEDIA_TYPE, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: ROOT } })).toEqual({
      ok: true,
      mediaType: MEDIA_TYPE,
      rootHash: ROOT,
    });
  });

  const refusals: [string, { mediaType: string; annotations?: Record<string, string> }, RegExp][] = [
    ['a tar layer', { mediaType: 'application/vnd.oci.image.layer.v1.tar', annotations: { [VERITY_ROOT_HASH_ANNOTATION]: ROOT } }, /is not a squashfs\+verity layer/],
    ['no annotations', { mediaType: MEDIA_TYPE }, /has no root hash \(annotation io\.stackeroci\.stacker\.squashfs_verity_root_hash\)/],
    ['another annotation only', { mediaType: MEDIA_TYPE, annotations: { 'org.opencontainers.image.title': 'x' } }, /has no root hash/],
    ['an upper-case root hash', { mediaType: MEDIA_TYPE, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: ROOT.toUpperCase() } }, /is not 64 lowercase hex digits/],
    ['a sha256: prefixed root hash', { mediaType: MEDIA_TYPE, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: `sha256:${ROOT}` } }, /is not 64 lowercase hex/],
  ];

  it.each(refusals)('refuses %s with E_LAYER_FORMAT', (_name, descriptor, message) => {
    const result = parseVerityLayerDescriptor(descriptor);
    expect(result).toMatchObject({ ok: false, code: 'E_LAYER_FORMAT' });
    if (!result.ok) expect(result.message).toMatch(message);
  });
});

const input = (overrides: Partial<VerityLayerInput> = {}): VerityLayerInput => ({
  fileSize: FILE_SIZE,
  squashfsHead: SQUASHFS_HEAD,
  verityHead: REAL_VERITY_HEAD,
  rootHash: ROOT,
  mediaType: MEDIA_TYPE,
  ...overrides,
});

/** The same squashfs head with another bytes_used (tables kept inside the image). */
function squashfsHeadOfSize(bytesUsed: number): Buffer {
  const head = Buffer.from(SQUASHFS_HEAD);
  head.writeBigUInt64LE(BigInt(bytesUsed), 40);
  return head;
}

describe('planVerityLayer', () => {
  it('plans the layer veritysetup formatted', () => {
    const result = planVerityLayer(input());
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const { squashfs, ...layout } = result.layout;
    expect(layout).toEqual({
      dataBytes: DATA_BYTES,
      dataBlocks: DATA_BLOCKS,
      dataSectors: 1368,
      hashOffset: DATA_BYTES,
      hashStartBlock: 172,
      hashBlocks: 3,
      hashTree: {
        digestsPerBlock: 128,
        levels: [
          { level: 0, blocks: 2, offsetBlocks: 1 },
          { level: 1, blocks: 1, offsetBlocks: 0 },
        ],
        totalBlocks: 3,
      },
      salt: SALT,
      algorithm: 'sha256',
      uuid: UUID,
    });
    expect(squashfs.bytesUsed).toBe(700264);
  });

  it('plans a one-block image (no hash tree) with no salt', () => {
    // `mksquashfs emptydir img`: 0x9d bytes used, one block padded.
    const oneBlock = Buffer.from(
      '6873717301000000fb29036b000002000000000001001100c000010004000000' +
        '00000000000000009d000000000000009500000000000000ffffffffffffffff' +
        '60000000000000007d000000000000007d000000000000008700000000000000',
      'hex',
    );
    const tiny = planVerityLayer(
      input({ squashfsHead: oneBlock, verityHead: veritySuperblock({ dataBlocks: 1n, salt: Buffer.alloc(0) }), fileSize: 8192 }),
    );
    expect(tiny).toMatchObject({ ok: true, layout: { dataBlocks: 1, dataSectors: 8, hashStartBlock: 2, hashBlocks: 0, salt: '' } });
  });

  type Case = [string, Partial<VerityLayerInput>, VerityErrorCode, RegExp];
  const refusals: Case[] = [
    ['a tar layer', { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, 'E_LAYER_FORMAT', /media type "application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip" is not a squashfs\+verity layer/],
    ['a squashfs layer without verity', { mediaType: 'application/vnd.stacker.image.layer.squashfs+zstd' }, 'E_LAYER_FORMAT', /is not a squashfs\+verity layer/],
    ['a missing root hash', { rootHash: undefined }, 'E_LAYER_FORMAT', /has no root hash/],
    ['a short root hash', { rootHash: ROOT.slice(1) }, 'E_LAYER_FORMAT', /root hash "[0-9a-f]{63}" is not 64 lowercase hex digits/],
    ['an upper-case root hash', { rootHash: ROOT.toUpperCase() }, 'E_LAYER_FORMAT', /is not 64 lowercase hex/],
    ['an empty root hash', { rootHash: '' }, 'E_LAYER_FORMAT', /root hash "" is not/],
    ['a zero size', { fileSize: 0 }, 'E_VERITY_LAYOUT', /layer size 0 is not a positive integer/],
    ['a NaN size', { fileSize: Number.NaN }, 'E_VERITY_LAYOUT', /layer size NaN is not a positive integer/],
    ['a size beyond 2^53', { fileSize: 2 ** 60 }, 'E_VERITY_LAYOUT', /is not a positive integer below 2\^53/],
    ['a fractional size', { fileSize: 4096.5 }, 'E_VERITY_LAYOUT', /not a positive integer/],
    ['a size not a multiple of 4096', { fileSize: FILE_SIZE + 512 }, 'E_VERITY_LAYOUT', /layer size 717312 is not a multiple of 4096/],
    ['a bad squashfs superblock', { squashfsHead: Buffer.alloc(96) }, 'E_VERITY_LAYOUT', /squashfs superblock: magic is 0x0/],
    ['a squashfs filling the whole layer', { fileSize: DATA_BYTES }, 'E_VERITY_LAYOUT', /leaves no room for a verity superblock in the layer's 700416 bytes/],
    ['no verity superblock', { verityHead: Buffer.alloc(512) }, 'E_VERITY_LAYOUT', /verity superblock: signature is .* \(at offset 700416\)/],
    ['a sha1 verity superblock', { verityHead: veritySuperblock({ algorithm: 'sha1' }) }, 'E_VERITY_LAYOUT', /verity superblock: algorithm is "sha1"/],
    ['data_blocks fewer than the squashfs', { verityHead: veritySuperblock({ dataBlocks: 170n }) }, 'E_VERITY_LAYOUT', /data_blocks is 170 but the squashfs image spans 171 blocks/],
    ['data_blocks more than the squashfs', { verityHead: veritySuperblock({ dataBlocks: 172n }) }, 'E_VERITY_LAYOUT', /data_blocks is 172 but/],
    ['a truncated hash tree', { fileSize: FILE_SIZE - 4096 }, 'E_VERITY_LAYOUT', /hash tree \(3 blocks from block 172\) ends at 716800 bytes, beyond the layer's 712704 bytes/],
    ['bytes after the hash tree', { fileSize: FILE_SIZE + 4096 }, 'E_VERITY_LAYOUT', /4096 bytes follow the hash tree \(it ends at 716800, the layer is 720896 bytes\)/],
    [
      'a squashfs bytes_used larger than the layer',
      { squashfsHead: squashfsHeadOfSize(2 ** 40) },
      'E_VERITY_LAYOUT',
      /leaves no room for a verity superblock/,
    ],
  ];

  it.each(refusals)('refuses %s', (_name, overrides, code, message) => {
    const result = planVerityLayer(input(overrides));
    expect(result).toMatchObject({ ok: false, code });
    if (!result.ok) expect(result.message).toMatch(message);
  });

  it('checks the layer format before reading any superblock', () => {
    expect(planVerityLayer(input({ mediaType: 'text/plain', squashfsHead: Buffer.alloc(0), verityHead: Buffer.alloc(0) }))).toMatchObject({
      code: 'E_LAYER_FORMAT',
    });
  });

  it('caps a long media type in the message', () => {
    const result = planVerityLayer(input({ mediaType: 'x'.repeat(10_000) }));
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.message.length).toBeLessThan(400);
  });
});

describe('verityTable', () => {
  const layout = (): VerityLayout => {
    const result = planVerityLayer(input());
    if (!result.ok) throw new Error(result.message);
    return result.layout;
  };

  it('writes the golden table line over major:minor devices', () => {
    expect(verityTable(layout(), '7:0', '7:0', ROOT)).toEqual({
      start: 0,
      length: 1368,
      type: 'verity',
      params: `1 7:0 7:0 4096 4096 171 172 sha256 ${ROOT} ${SALT}`,
    });
  });

  it('accepts device paths and writes "-" for an empty salt', () => {
    expect(verityTable({ ...layout(), salt: '' }, '/dev/loop3', '/dev/loop4', ROOT).params).toBe(
      `1 /dev/loop3 /dev/loop4 4096 4096 171 172 sha256 ${ROOT} -`,
    );
    expect(verityTable({ dataBlocks: 1, dataSectors: 8, hashStartBlock: 2, salt: 'cd'.repeat(32), algorithm: 'sha256' }, '259:0', '259:0', ROOT)).toEqual({
      start: 0,
      length: 8,
      type: 'verity',
      params: `1 259:0 259:0 4096 4096 1 2 sha256 ${ROOT} ${'cd'.repeat(32)}`,
    });
  });

  const refusals: [string, () => unknown, RegExp][] = [
    ['an upper-case root hash', () => verityTable(layout(), '7:0', '7:0', ROOT.toUpperCase()), /root hash .* is not 64 lowercase hex/],
    ['a root hash with a space', () => verityTable(layout(), '7:0', '7:0', `${ROOT.slice(0, 63)} `), /root hash/],
    ['a relative device path', () => verityTable(layout(), 'loop0', '7:0', ROOT), /data device "loop0" is neither major:minor nor an absolute path/],
    ['a device path with a space', () => verityTable(layout(), '7:0', '/dev/loop0 1', ROOT), /hash device "\/dev\/loop0 1"/],
    ['a major beyond 12 bits', () => verityTable(layout(), '4096:0', '7:0', ROOT), /data device "4096:0"/],
    ['a minor beyond 20 bits', () => verityTable(layout(), '7:1048576', '7:0', ROOT), /data device "7:1048576"/],
    ['an empty device', () => verityTable(layout(), '', '7:0', ROOT), /data device ""/],
    ['sectors not matching blocks', () => verityTable({ ...layout(), dataSectors: 1367 }, '7:0', '7:0', ROOT), /dataBlocks 171 and dataSectors 1367/],
    ['a NaN data block count', () => verityTable({ ...layout(), dataBlocks: Number.NaN }, '7:0', '7:0', ROOT), /dataBlocks NaN/],
    ['a hash start of 0', () => verityTable({ ...layout(), hashStartBlock: 0 }, '7:0', '7:0', ROOT), /hashStartBlock 0/],
    ['an odd-length salt', () => verityTable({ ...layout(), salt: 'abc' }, '7:0', '7:0', ROOT), /salt "abc"/],
    ['a salt with a space', () => verityTable({ ...layout(), salt: 'ab cd' }, '7:0', '7:0', ROOT), /salt "ab cd"/],
  ];

  it.each(refusals)('refuses %s', (_name, call, message) => {
    expect(call).toThrow(VerityTableError);
    expect(call).toThrow(message);
    try {
      call();
    } catch (error) {
      expect((error as VerityTableError).code).toBe('E_VERITY_TABLE');
    }
  });
});
