/**
 * The dm-verity layer decisions (init/storage/verity.ts, squashfs.ts) against the real tools:
 * layers made exactly as the build side makes them (`mksquashfs`, then `veritysetup format` into
 * the same file at the padded squashfs size), parsed and planned by our code, then compared with
 * `unsquashfs -s`, `veritysetup dump` and `veritysetup verify`, and with the hash tree recomputed
 * by hand at the offsets the kernel table will use. The host has no device-mapper, so nothing is
 * activated (`veritysetup open` is never run); `verify --no-superblock` with the table's own
 * numbers is the userspace twin of the kernel's check.
 *
 * Cases: an empty directory (one data block: no tree, root = hash of the block; no salt), a few
 * small files (one level) and > 128 blocks of incompressible data (two levels).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSquashfsSuperblock, squashfsPaddedBytes } from '../../init/storage/squashfs.ts';
import { planVerityLayer, verityTable, type VerityLayout } from '../../init/storage/verity.ts';

const isRoot = process.getuid?.() === 0;
const hasTool = (tool: string) => {
  try {
    execFileSync(tool, ['--help'], { stdio: 'ignore' });
    return true;
  } catch (error) {
    // Present but unhappy with --help (mksquashfs exits 1): still present.
    return (error as NodeJS.ErrnoException).code !== 'ENOENT';
  }
};
const toolsReady = ['mksquashfs', 'unsquashfs', 'veritysetup'].every(hasTool);

const BLOCK = 4096;
const MEDIA_TYPE = 'application/vnd.stacker.image.layer.squashfs+gzip+verity';

function run(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Exit status of a command that may fail (0 on success). */
function status(command: string, args: string[]): number {
  try {
    execFileSync(command, args, { stdio: 'ignore' });
    return 0;
  } catch (error) {
    return (error as { status?: number }).status ?? -1;
  }
}

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const read = readSync(fd, buffer, 0, length, offset);
    return buffer.subarray(0, read);
  } finally {
    closeSync(fd);
  }
}

/** `Key:   value` lines (veritysetup dump and format) as a map. */
function fieldsOf(output: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of output.split('\n')) {
    const match = /^([A-Za-z][A-Za-z ]*?):\s+(.*)$/.exec(line);
    if (match) fields.set(match[1]!, match[2]!.trim());
  }
  return fields;
}

const sha256 = (...parts: Buffer[]) => {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
};

interface LayerCase {
  name: string;
  /** Relative path → content. */
  files: Record<string, Buffer | string>;
  /** Hex, '' for none (`--salt=-`). */
  salt: string;
  uuid: string;
  expectedLevels: number;
}

const CASES: LayerCase[] = [
  { name: 'an empty directory (one data block, no tree, no salt)', files: {}, salt: '', uuid: '00000000-0000-4000-8000-000000000001', expectedLevels: 0 },
  {
    name: 'a few small files (one level)',
    files: {
      'etc/hostname': 'machine\n',
      'bin/tool': randomBytes(20_000),
      'srv/data/a.bin': randomBytes(9_000),
      'srv/readme.txt': 'hello\n'.repeat(500),
    },
    salt: randomBytes(32).toString('hex'),
    uuid: '6b1f2a9e-3c4d-4e5f-8a9b-0c1d2e3f4a5b',
    expectedLevels: 1,
  },
  {
    // Random bytes do not compress: ~720 KiB of them give > 128 data blocks, so two levels.
    name: 'incompressible data over 128 blocks (two levels)',
    files: {
      'opt/blob1': randomBytes(300_000),
      'opt/blob2': randomBytes(300_000),
      'opt/nested/deeper/blob3': randomBytes(120_000),
      'opt/nested/small': 'x',
    },
    salt: randomBytes(32).toString('hex'),
    uuid: 'f0e1d2c3-b4a5-4968-8776-655443322110',
    expectedLevels: 2,
  },
];

describe.skipIf(!isRoot || !toolsReady)('dm-verity layer plan against veritysetup (root, no device-mapper)', () => {
  let work: string;
  beforeAll(() => {
    work = mkdtempSync(path.join(tmpdir(), 'mos-verity-oracle-'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  describe.each(CASES)('$name', (layerCase) => {
    let dir: string;
    let image: string;
    let squashfsBytes: number;
    let rootHash: string;
    let layout: VerityLayout;

    beforeAll(() => {
      dir = path.join(work, layerCase.uuid);
      image = path.join(dir, 'layer.img');
      const tree = path.join(dir, 'tree');
      mkdirSync(tree, { recursive: true });
      for (const [name, content] of Object.entries(layerCase.files)) {
        mkdirSync(path.dirname(path.join(tree, name)), { recursive: true });
        writeFileSync(path.join(tree, name), content);
      }
      run('mksquashfs', [tree, image, '-noappend', '-comp', 'gzip', '-quiet', '-no-progress']);
      squashfsBytes = statSync(image).size;
      const dataBlocks = squashfsBytes / BLOCK;
      const formatted = run('veritysetup', [
        'format', image, image,
        `--hash-offset=${squashfsBytes}`, `--data-blocks=${dataBlocks}`,
        '--data-block-size=4096', '--hash-block-size=4096', '--hash=sha256',
        `--salt=${layerCase.salt === '' ? '-' : layerCase.salt}`, `--uuid=${layerCase.uuid}`,
      ]);
      rootHash = fieldsOf(formatted).get('Root hash') ?? '';
      expect(rootHash).toMatch(/^[0-9a-f]{64}$/);

      // What the boot side does: the squashfs head, the padded size, the verity head there.
      const fileSize = statSync(image).size;
      const squashfsHead = readAt(image, 0, 96);
      const squashfs = parseSquashfsSuperblock(squashfsHead);
      if (!squashfs.ok) throw new Error(squashfs.message);
      const verityHead = readAt(image, squashfsPaddedBytes(squashfs.superblock), 512);
      const plan = planVerityLayer({ fileSize, squashfsHead, verityHead, rootHash, mediaType: MEDIA_TYPE });
      if (!plan.ok) throw new Error(`${plan.code}: ${plan.message}`);
      layout = plan.layout;
    });

    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('mksquashfs padded the image to 4096 and the plan agrees', () => {
      expect(squashfsBytes % BLOCK).toBe(0);
      expect(layout.dataBytes).toBe(squashfsBytes);
      expect(layout.hashOffset).toBe(squashfsBytes);
      expect(layout.hashTree.levels).toHaveLength(layerCase.expectedLevels);
    });

    it('reads the squashfs superblock as unsquashfs does', () => {
      // unsquashfs prints "Name value" lines, no colon.
      const summary = run('unsquashfs', ['-s', image]);
      const value = (name: string) => new RegExp(`^${name} (.+)$`, 'm').exec(summary)?.[1];
      expect(summary).toMatch(/^Found a valid SQUASHFS 4:0 superblock/);
      expect(value('Filesystem size')).toMatch(new RegExp(`^${layout.squashfs.bytesUsed} bytes `));
      expect(value('Compression')).toBe(layout.squashfs.compression);
      expect(Number(value('Block size'))).toBe(layout.squashfs.blockSize);
      expect(Number(value('Number of fragments'))).toBe(layout.squashfs.fragmentCount);
      expect(Number(value('Number of inodes'))).toBe(layout.squashfs.inodeCount);
      expect(Number(value('Number of ids'))).toBe(layout.squashfs.idCount);
      expect(summary.includes('Filesystem is exportable via NFS')).toBe(layout.squashfs.exportTableStart !== null);
    });

    it('reads the verity superblock as veritysetup dump does', () => {
      const dump = fieldsOf(run('veritysetup', ['dump', image, `--hash-offset=${layout.hashOffset}`]));
      expect(dump.get('UUID')).toBe(layerCase.uuid);
      expect(dump.get('UUID')).toBe(layout.uuid);
      expect(dump.get('Hash type')).toBe('1');
      expect(Number(dump.get('Data blocks'))).toBe(layout.dataBlocks);
      expect(Number(dump.get('Data block size'))).toBe(BLOCK);
      expect(Number(dump.get('Hash blocks'))).toBe(layout.hashBlocks);
      expect(Number(dump.get('Hash block size'))).toBe(BLOCK);
      expect(dump.get('Hash algorithm')).toBe(layout.algorithm);
      expect(dump.get('Salt')).toBe(layout.salt === '' ? '-' : layout.salt);
      expect(layout.salt).toBe(layerCase.salt);
      // The blob ends exactly after the tree (planVerityLayer refuses anything else).
      expect(statSync(image).size).toBe((layout.hashStartBlock + layout.hashBlocks) * BLOCK);
    });

    it('veritysetup verifies it with the superblock and with the table\'s own numbers', () => {
      expect(status('veritysetup', ['verify', image, image, rootHash, `--hash-offset=${layout.hashOffset}`])).toBe(0);

      // The kernel table's parameters, given to veritysetup without its superblock.
      const params = verityTable(layout, '7:0', '7:0', rootHash).params.split(' ');
      const [version, , , dataBlockSize, hashBlockSize, dataBlocks, hashStart, algorithm, root, salt] = params;
      expect(params).toHaveLength(10);
      expect(version).toBe('1');
      const withTableNumbers = [
        'verify', image, image, root!, '--no-superblock', '--format=1',
        `--data-block-size=${dataBlockSize}`, `--hash-block-size=${hashBlockSize}`,
        `--data-blocks=${dataBlocks}`, `--hash-offset=${Number(hashStart) * BLOCK}`,
        `--hash=${algorithm}`, `--salt=${salt}`,
      ];
      expect(status('veritysetup', withTableNumbers)).toBe(0);
      // Sanity of the oracle: an off-by-one hash start or another root hash fails.
      const offByOne = withTableNumbers.map((arg) => (arg.startsWith('--hash-offset=') ? `--hash-offset=${(Number(hashStart) + 1) * BLOCK}` : arg));
      if (layout.hashBlocks > 0) expect(status('veritysetup', offByOne)).not.toBe(0);
      const otherRoot = withTableNumbers.map((arg) => (arg === root ? createHash('sha256').update(arg).digest('hex') : arg));
      expect(status('veritysetup', otherRoot)).not.toBe(0);
    });

    it('the tree is where the table says: recomputed block by block', () => {
      const file = readFileSync(image);
      const salt = Buffer.from(layout.salt, 'hex');
      const block = (index: number) => file.subarray(index * BLOCK, (index + 1) * BLOCK);
      const dataBlock = (index: number) => block(index);
      const hashBlock = (level: number, index: number) => block(layout.hashStartBlock + layout.hashTree.levels[level]!.offsetBlocks + index);
      const levels = layout.hashTree.levels;

      if (levels.length === 0) {
        expect(sha256(salt, dataBlock(0)).toString('hex')).toBe(rootHash);
        return;
      }
      // Level 0 (last on disk) holds each data block's digest, in order, 128 per block.
      const level0 = levels[0]!;
      expect(hashBlock(0, 0).subarray(0, 32).equals(sha256(salt, dataBlock(0)))).toBe(true);
      const last = layout.dataBlocks - 1;
      const lastSlot = hashBlock(0, Math.floor(last / 128)).subarray((last % 128) * 32, (last % 128) * 32 + 32);
      expect(lastSlot.equals(sha256(salt, dataBlock(last)))).toBe(true);
      expect(layout.hashStartBlock + level0.offsetBlocks + level0.blocks).toBe(layout.hashStartBlock + layout.hashBlocks);
      // Each level above holds the digests of the one below.
      for (let level = 1; level < levels.length; level++) {
        for (let index = 0; index < levels[level - 1]!.blocks; index++) {
          const slot = hashBlock(level, Math.floor(index / 128)).subarray((index % 128) * 32, (index % 128) * 32 + 32);
          expect(slot.equals(sha256(salt, hashBlock(level - 1, index)))).toBe(true);
        }
      }
      // The top level is the first block after the superblock, and the root hash is its digest.
      expect(levels.at(-1)!.offsetBlocks).toBe(0);
      expect(sha256(salt, hashBlock(levels.length - 1, 0)).toString('hex')).toBe(rootHash);
    });

    it('a flipped byte in the squashfs area fails veritysetup verify', () => {
      const corrupt = path.join(dir, 'corrupt.img');
      const offsets = [Math.floor(layout.dataBytes / 2)];
      // The padding after bytes_used is data too: the tree covers it.
      if (layout.squashfs.bytesUsed < layout.dataBytes) offsets.push(layout.dataBytes - 1);
      for (const offset of offsets) {
        copyFileSync(image, corrupt);
        const fd = openSync(corrupt, 'r+');
        try {
          const byte = Buffer.alloc(1);
          readSync(fd, byte, 0, 1, offset);
          byte[0]! ^= 0x01;
          writeSync(fd, byte, 0, 1, offset);
        } finally {
          closeSync(fd);
        }
        expect(readAt(corrupt, offset, 1).equals(readAt(image, offset, 1))).toBe(false);
        expect(status('veritysetup', ['verify', corrupt, corrupt, rootHash, `--hash-offset=${layout.hashOffset}`])).not.toBe(0);
      }
      expect(status('veritysetup', ['verify', image, image, rootHash, `--hash-offset=${layout.hashOffset}`])).toBe(0);
    });
  });
});
