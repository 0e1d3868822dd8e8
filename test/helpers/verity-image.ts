/**
 * A squashfs-plus-verity layer made in memory, consistent the way mosb makes real ones (squashfs
 * padded to 4096, a verity superblock after it, the hash tree after that): for unit tests of the
 * boot side without mksquashfs or veritysetup. Only the superblocks and the tree are real; the
 * squashfs "content" is filler that no test mounts.
 */
import { createHash } from 'node:crypto';

const BLOCK = 4096;

function squashfsSuperblock(bytesUsed: number): Buffer {
  const head = Buffer.alloc(96);
  head.writeUInt32LE(0x73717368, 0); // magic "hsqs"
  head.writeUInt32LE(3, 4); // inodes
  head.writeUInt32LE(0, 8); // mkfs time
  head.writeUInt32LE(131072, 12); // block size
  head.writeUInt32LE(0, 16); // fragments
  head.writeUInt16LE(1, 20); // gzip
  head.writeUInt16LE(17, 22); // block_log
  head.writeUInt16LE(0, 24); // flags
  head.writeUInt16LE(1, 26); // id count
  head.writeUInt16LE(4, 28);
  head.writeUInt16LE(0, 30);
  head.writeBigUInt64LE(0n, 32); // root inode
  head.writeBigUInt64LE(BigInt(bytesUsed), 40);
  const none = 0xffffffffffffffffn;
  head.writeBigUInt64LE(BigInt(bytesUsed - 16), 48); // id table
  head.writeBigUInt64LE(none, 56); // xattr ids
  head.writeBigUInt64LE(96n, 64); // inode table
  head.writeBigUInt64LE(160n, 72); // directory table
  head.writeBigUInt64LE(BigInt(bytesUsed - 32), 80); // fragment table
  head.writeBigUInt64LE(BigInt(bytesUsed - 24), 88); // export table
  return head;
}

export interface VerityImage {
  blob: Buffer;
  rootHash: string;
  salt: string;
  dataBlocks: number;
  hashOffset: number;
}

/** `dataBlocks` 4 KiB data blocks (at most 128: one tree level), then the verity area. */
export function makeVerityImage(options: { dataBlocks?: number; salt?: Buffer } = {}): VerityImage {
  const dataBlocks = options.dataBlocks ?? 1;
  if (dataBlocks < 1 || dataBlocks > 128) throw new Error('makeVerityImage: 1..128 data blocks (one tree level)');
  const salt = options.salt ?? createHash('sha256').update('mos test salt').digest();
  const hashOffset = dataBlocks * BLOCK;
  const data = Buffer.alloc(hashOffset, 0x5a);
  squashfsSuperblock(hashOffset - 100).copy(data, 0);

  const superblock = Buffer.alloc(BLOCK);
  superblock.write('verity\0\0', 0, 'latin1');
  superblock.writeUInt32LE(1, 8); // version
  superblock.writeUInt32LE(1, 12); // hash type
  Buffer.from('0123456789abcdef0123456789abcdef', 'hex').copy(superblock, 16); // uuid
  superblock.write('sha256', 32, 'latin1');
  superblock.writeUInt32LE(BLOCK, 64);
  superblock.writeUInt32LE(BLOCK, 68);
  superblock.writeBigUInt64LE(BigInt(dataBlocks), 72);
  superblock.writeUInt16LE(salt.length, 80);
  salt.copy(superblock, 88);

  const level = Buffer.alloc(BLOCK);
  for (let block = 0; block < dataBlocks; block++) {
    createHash('sha256').update(salt).update(data.subarray(block * BLOCK, (block + 1) * BLOCK)).digest().copy(level, block * 32);
  }
  const rootHash = createHash('sha256').update(salt).update(level).digest('hex');
  return { blob: Buffer.concat([data, superblock, level]), rootHash, salt: salt.toString('hex'), dataBlocks, hashOffset };
}
