/**
 * The squashfs superblock parser over hand-made 96-byte heads: a real mksquashfs 4.5 head
 * (captured by hexdump) parses field by field, and every refusal names its field.
 */
import { describe, expect, it } from 'vitest';
import { parseSquashfsSuperblock, SQUASHFS_FLAG, squashfsMountBlocks, squashfsPaddedBytes, type SquashfsField } from '../../init/storage/squashfs.ts';

/** `mksquashfs d img -noappend -comp gzip` over a 700000-byte file and a small one (xxd -l 96). */
const REAL_HEAD = Buffer.from(
  '6873717303000000be29036b00000200' +
    '0100000001001100c000010004000000' +
    '580000000000000068af0a0000000000' +
    '60af0a0000000000ffffffffffffffff' +
    'c6ae0a000000000008af0a0000000000' +
    '38af0a000000000052af0a0000000000',
  'hex',
);

/** `mksquashfs emptydir img`: no fragments (the field still holds an offset), one inode. */
const EMPTY_DIR_HEAD = Buffer.from(
  '6873717301000000fb29036b00000200' +
    '0000000001001100c000010004000000' +
    '00000000000000009d00000000000000' +
    '9500000000000000ffffffffffffffff' +
    '60000000000000007d00000000000000' +
    '7d000000000000008700000000000000',
  'hex',
);

type FieldWriter = (head: Buffer) => void;
const u16 = (offset: number, value: number): FieldWriter => (head) => head.writeUInt16LE(value, offset);
const u32 = (offset: number, value: number): FieldWriter => (head) => head.writeUInt32LE(value, offset);
const u64 = (offset: number, value: bigint): FieldWriter => (head) => head.writeBigUInt64LE(value, offset);

function headWith(...writers: FieldWriter[]): Buffer {
  const head = Buffer.from(REAL_HEAD);
  for (const write of writers) write(head);
  return head;
}

const NONE = 0xffff_ffff_ffff_ffffn;

describe('parseSquashfsSuperblock', () => {
  it('parses a real mksquashfs superblock field by field', () => {
    const result = parseSquashfsSuperblock(REAL_HEAD);
    expect(result).toEqual({
      ok: true,
      superblock: {
        inodeCount: 3,
        mkfsTime: 0x6b0329be,
        blockSize: 131072,
        blockLog: 17,
        fragmentCount: 1,
        compressionId: 1,
        compression: 'gzip',
        flags: SQUASHFS_FLAG.duplicates | SQUASHFS_FLAG.exportable,
        idCount: 1,
        versionMajor: 4,
        versionMinor: 0,
        rootInodeRef: 0x58,
        bytesUsed: 700264,
        idTableStart: 0xaaf60,
        xattrIdTableStart: null,
        inodeTableStart: 0xaaec6,
        directoryTableStart: 0xaaf08,
        fragmentTableStart: 0xaaf38,
        exportTableStart: 0xaaf52,
      },
    });
    if (result.ok) expect(squashfsPaddedBytes(result.superblock)).toBe(700416);
  });

  it('parses an empty directory image: no fragments in use, one padded block', () => {
    const result = parseSquashfsSuperblock(EMPTY_DIR_HEAD);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.superblock).toMatchObject({ inodeCount: 1, fragmentCount: 0, fragmentTableStart: null, bytesUsed: 0x9d, rootInodeRef: 0 });
    expect(squashfsPaddedBytes(result.superblock)).toBe(4096);
  });

  it('reads only the first 96 bytes of a longer buffer', () => {
    expect(parseSquashfsSuperblock(Buffer.concat([REAL_HEAD, Buffer.alloc(4000, 0xee)])).ok).toBe(true);
  });

  it('accepts every compressor id, block sizes 4 KiB and 1 MiB, xattr and absent export tables', () => {
    for (const [id, name] of [[1, 'gzip'], [2, 'lzma'], [3, 'lzo'], [4, 'xz'], [5, 'lz4'], [6, 'zstd']] as const) {
      const result = parseSquashfsSuperblock(headWith(u16(20, id)));
      expect(result.ok && result.superblock.compression).toBe(name);
    }
    expect(parseSquashfsSuperblock(headWith(u32(12, 4096), u16(22, 12))).ok).toBe(true);
    expect(parseSquashfsSuperblock(headWith(u32(12, 1 << 20), u16(22, 20))).ok).toBe(true);
    const withXattrs = parseSquashfsSuperblock(headWith(u64(56, 0xaaf00n)));
    expect(withXattrs.ok && withXattrs.superblock.xattrIdTableStart).toBe(0xaaf00);
    // Not exportable: the export table field is ignored, whatever it holds.
    const notExportable = parseSquashfsSuperblock(headWith(u16(24, SQUASHFS_FLAG.duplicates), u64(88, NONE)));
    expect(notExportable.ok && notExportable.superblock.exportTableStart).toBeNull();
  });

  const refusals: [string, Buffer, SquashfsField, RegExp][] = [
    ['a short buffer', REAL_HEAD.subarray(0, 95), 'length', /95 bytes given, 96 needed/],
    ['a wrong magic', headWith(u32(0, 0x73717369)), 'magic', /magic is 0x73717369/],
    ['a big-endian image', headWith((head) => head.write('sqsh', 0, 'latin1')), 'magic', /expected 0x73717368/],
    ['squashfs 3.1', headWith(u16(28, 3), u16(30, 1)), 'version', /version is 3\.1, only 4\.0/],
    ['squashfs 4.1', headWith(u16(30, 1)), 'version', /version is 4\.1/],
    ['no inodes', headWith(u32(4, 0)), 'inode_count', /inode_count is 0/],
    ['a 2 KiB block size', headWith(u32(12, 2048), u16(22, 11)), 'block_size', /block_size 2048 is not a power of two from 4 KiB to 1 MiB/],
    ['a 2 MiB block size', headWith(u32(12, 2 << 20), u16(22, 21)), 'block_size', /block_size 2097152/],
    ['a block size not a power of two', headWith(u32(12, 131073)), 'block_size', /block_size 131073/],
    ['a block_log not matching', headWith(u16(22, 16)), 'block_log', /block_log 16 does not match block_size 131072/],
    ['compressor 0', headWith(u16(20, 0)), 'compression_id', /compression_id 0 is unknown/],
    ['compressor 7', headWith(u16(20, 7)), 'compression_id', /compression_id 7 is unknown/],
    ['an unknown flag', headWith(u16(24, 0x10c0)), 'flags', /flags 0x10c0 has unknown bits 0x1000/],
    ['no ids', headWith(u16(26, 0)), 'id_count', /id_count is 0/],
    ['bytes_used below the superblock', headWith(u64(40, 95n)), 'bytes_used', /bytes_used 95 is outside 96\.\./],
    ['bytes_used beyond 2^53', headWith(u64(40, 1n << 60n)), 'bytes_used', /bytes_used 1152921504606846976 is outside/],
    ['bytes_used all ones', headWith(u64(40, NONE)), 'bytes_used', /bytes_used 18446744073709551615/],
    ['an id table past the end', headWith(u64(48, 700264n)), 'id_table_start', /id_table_start 0xaaf68 is outside the image/],
    ['no id table', headWith(u64(48, NONE)), 'id_table_start', /id_table_start is absent/],
    ['an xattr table inside the superblock', headWith(u64(56, 95n)), 'xattr_id_table_start', /xattr_id_table_start 0x5f is outside/],
    ['no inode table', headWith(u64(64, NONE)), 'inode_table_start', /inode_table_start is absent/],
    ['no directory table', headWith(u64(72, NONE)), 'directory_table_start', /directory_table_start is absent/],
    ['a directory table past the end', headWith(u64(72, 1n << 40n)), 'directory_table_start', /outside the image/],
    ['inode table after the directory table', headWith(u64(64, 0xaaf10n)), 'inode_table_start', /is not before directory_table_start 0xaaf08/],
    ['fragments without a fragment table', headWith(u64(80, NONE)), 'fragment_table_start', /fragment_table_start is absent/],
    ['exportable without an export table', headWith(u64(88, NONE)), 'export_table_start', /export_table_start is absent/],
    ['an export table past the end', headWith(u64(88, 0xfffff0n)), 'export_table_start', /export_table_start 0xfffff0 is outside/],
    ['a root inode beyond the inode table', headWith(u64(32, 0x42n << 16n)), 'root_inode_ref', /root_inode_ref 0x420000 points outside the inode table/],
    ['a root inode offset beyond a metadata block', headWith(u64(32, 0x2000n)), 'root_inode_ref', /root_inode_ref 0x2000/],
    ['a root inode reference wider than 48 bits', headWith(u64(32, 1n << 48n)), 'root_inode_ref', /root_inode_ref 0x1000000000000/],
  ];

  it.each(refusals)('refuses %s, naming the field', (_name, head, field, message) => {
    const result = parseSquashfsSuperblock(head);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.field).toBe(field);
    expect(result.message).toMatch(/^squashfs superblock: /);
    expect(result.message).toMatch(message);
  });
});

describe('squashfsPaddedBytes', () => {
  it('rounds bytes_used up to 4096', () => {
    expect(squashfsPaddedBytes({ bytesUsed: 96 })).toBe(4096);
    expect(squashfsPaddedBytes({ bytesUsed: 4096 })).toBe(4096);
    expect(squashfsPaddedBytes({ bytesUsed: 4097 })).toBe(8192);
    expect(squashfsPaddedBytes({ bytesUsed: 700264 })).toBe(700416);
  });

  it('stays a safe integer for the largest bytes_used accepted', () => {
    const largest = headWith(u64(40, BigInt(2 ** 53 - 4096)));
    const result = parseSquashfsSuperblock(largest);
    expect(result.ok).toBe(true);
    if (result.ok) expect(Number.isSafeInteger(squashfsPaddedBytes(result.superblock))).toBe(true);
    expect(parseSquashfsSuperblock(headWith(u64(40, BigInt(2 ** 53 - 4095)))).ok).toBe(false);
  });
});

describe('the blocks a mount reads', () => {
  it('are the superblock and the 4 KiB block holding the root inode and the table indexes at the end', () => {
    const result = parseSquashfsSuperblock(REAL_HEAD);
    expect(result.ok).toBe(true);
    // inode table 0xaaec6 (+ root block 0), fragment index 0xaaf38, export 0xaaf52, ids 0xaaf60: all in block 0xaa000.
    if (result.ok) expect(squashfsMountBlocks(result.superblock)).toEqual([0, 0xaa000]);
  });

  it('leave out absent tables and count each block once, in order', () => {
    const result = parseSquashfsSuperblock(REAL_HEAD);
    if (!result.ok) throw new Error(result.message);
    const spread = { ...result.superblock, rootInodeRef: 0x2000 << 16, inodeTableStart: 0x1000, idTableStart: 0x9000, fragmentTableStart: null, exportTableStart: 0x3100, xattrIdTableStart: 0x9ff0 };
    expect(squashfsMountBlocks(spread)).toEqual([0, 0x3000, 0x9000]);
  });
});
