/**
 * The initramfs build for real (root: chroot smoke test, apt when tools are missing): two
 * builds of the test image from the same inputs give the same bytes, and the cpio holds the
 * layout the PID-1 code expects (docs/images.md). Downloads are cached in build/cache, so only
 * the very first run fetches Node and the kernel package (~80 MB); later runs take seconds.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const isRoot = process.getuid?.() === 0;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const distReady = ['mos-init.cjs', 'mosctl.mjs', 'mos_native.node'].every((file) => existsSync(path.join(root, 'dist', file)));

interface CpioEntry {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  data: Buffer;
}

/** Reads a newc ("070701") archive: the format the kernel unpacks. */
function readNewc(archive: Buffer): CpioEntry[] {
  const entries: CpioEntry[] = [];
  let offset = 0;
  const align4 = (n: number) => (n + 3) & ~3;
  for (;;) {
    const magic = archive.toString('latin1', offset, offset + 6);
    if (magic !== '070701') throw new Error(`bad cpio magic at ${offset}: ${magic}`);
    const field = (i: number) => parseInt(archive.toString('latin1', offset + 6 + i * 8, offset + 14 + i * 8), 16);
    const [mode, uid, gid, mtime, fileSize, nameSize] = [field(1), field(2), field(3), field(5), field(6), field(11)];
    const nameStart = offset + 110;
    const name = archive.toString('utf8', nameStart, nameStart + nameSize - 1);
    const dataStart = align4(nameStart + nameSize);
    if (name === 'TRAILER!!!') return entries;
    entries.push({ name, mode, uid, gid, mtime, data: archive.subarray(dataStart, dataStart + fileSize) });
    offset = align4(dataStart + fileSize);
  }
}

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe.skipIf(!isRoot || !distReady)('initramfs build (root)', () => {
  const work = path.join(root, 'build', `.test-initramfs-${process.pid}`);
  const outs = [path.join(work, 'a'), path.join(work, 'b')];
  let entries: CpioEntry[];
  let byName: Map<string, CpioEntry>;

  beforeAll(() => {
    // A private copy of dist/: a colleague rebuilding the bundle mid-test must not look like
    // an irreproducible build.
    const dist = path.join(work, 'dist');
    mkdirSync(work, { recursive: true });
    cpSync(path.join(root, 'dist'), dist, { recursive: true });
    const env = { ...process.env };
    delete env.SOURCE_DATE_EPOCH;
    delete env.NODE_EXTRA_CA_CERTS;
    for (const out of outs) {
      execFileSync(process.execPath, [path.join(root, 'initramfs', 'build.mjs'), '--variant', 'test', '--only', 'cpio', '--dist', dist, '--out', out], {
        cwd: root,
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    }
    entries = readNewc(readFileSync(path.join(outs[0]!, 'initramfs-test.cpio')));
    byName = new Map(entries.map((entry) => [entry.name, entry]));
  }, 15 * 60_000);

  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
  });

  it('gives the same bytes for the same inputs', () => {
    const [a, b] = outs.map((out) => sha256(path.join(out, 'initramfs-test.cpio')));
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(b).toBe(a);
    const manifest = JSON.parse(readFileSync(path.join(outs[0]!, 'manifest.json'), 'utf8')) as { outputs: Record<string, { sha256: string; size: number }> };
    expect(manifest.outputs['initramfs-test.cpio']?.sha256).toBe(a);
  });

  it('holds the layout the PID-1 code expects', () => {
    const listed = execFileSync('cpio', ['-t', '--quiet', '-F', path.join(outs[0]!, 'initramfs-test.cpio')], { encoding: 'utf8' }).trim().split('\n');
    expect(listed).toEqual(entries.map((entry) => entry.name));
    const kernelRelease = JSON.parse(byName.get('etc/mos/image.json')!.data.toString()).kernel as string;
    const required = [
      'init',
      'usr/bin/node',
      'usr/bin/mosctl',
      'usr/bin/crun',
      'usr/sbin/ip',
      'usr/sbin/nft',
      'usr/sbin/sysctl',
      'usr/lib/mos/mos-init.cjs',
      'usr/lib/mos/mos_native.node',
      'usr/lib/mos/mosctl.mjs',
      'usr/lib/mos/demo/db.mjs',
      'etc/mos/services.yaml',
      'usr/lib64/ld-linux-x86-64.so.2',
      'usr/lib/x86_64-linux-gnu/libc.so.6',
      'usr/lib/x86_64-linux-gnu/libstdc++.so.6',
      `usr/lib/modules/${kernelRelease}/modules.dep`,
      `usr/lib/modules/${kernelRelease}/kernel/drivers/md/dm-verity.ko`,
      `usr/lib/modules/${kernelRelease}/kernel/fs/squashfs/squashfs.ko`,
      `usr/lib/modules/${kernelRelease}/kernel/drivers/block/virtio_blk.ko`,
    ];
    for (const name of required) expect(byName.has(name), name).toBe(true);
    const S_IFMT = 0o170000;
    for (const dir of ['dev', 'proc', 'sys', 'sys/fs/cgroup', 'run', 'tmp']) expect(byName.get(dir)!.mode & S_IFMT, dir).toBe(0o040000);
    expect(byName.get('tmp')!.mode & 0o7777).toBe(0o1777);
    // Merged /usr: the loader path in every ELF (/lib64/...) and /lib/modules resolve.
    for (const [link, target] of [['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['bin', 'usr/bin'], ['sbin', 'usr/sbin']] as const) {
      expect(byName.get(link)!.mode & S_IFMT).toBe(0o120000);
      expect(byName.get(link)!.data.toString()).toBe(target);
    }
    for (const exe of ['init', 'usr/bin/mosctl', 'usr/bin/node', 'usr/bin/crun']) expect(byName.get(exe)!.mode & 0o777, exe).toBe(0o755);
    // The test variant's services add one that fails on purpose (vm-tests case 03).
    expect(byName.get('etc/mos/services.yaml')!.data.toString()).toMatch(/name: flaky/);
    expect(byName.has('usr/lib/mos/demo/flaky.mjs')).toBe(true);
    expect(byName.get('init')!.data.toString()).toMatch(/^#!\/usr\/bin\/node\n[\s\S]*require\('\/usr\/lib\/mos\/mos-init\.cjs'\)/);
    expect(byName.has('usr/lib/mos/mos-yaml.cjs')).toBe(true);
  });

  it('fixes owner, mtime and order whatever the host had', () => {
    for (const entry of entries) {
      expect([entry.name, entry.uid, entry.gid, entry.mtime]).toEqual([entry.name, 0, 0, 0]);
    }
    const names = entries.map((entry) => entry.name);
    expect(names).toEqual([...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
  });

  it('ships plain .ko modules with a modules.dep that covers exactly them', () => {
    const modRoot = entries.find((entry) => /^usr\/lib\/modules\/[^/]+$/.test(entry.name))!.name;
    const shipped = entries.filter((entry) => entry.name.startsWith(`${modRoot}/kernel/`) && entry.name.endsWith('.ko')).map((entry) => entry.name.slice(modRoot.length + 1));
    expect(entries.some((entry) => /\.ko\.(xz|zst|gz)$/.test(entry.name))).toBe(false);
    const dep = byName.get(`${modRoot}/modules.dep`)!.data.toString().trim().split('\n');
    const listed = dep.map((line) => line.split(':')[0]!);
    expect([...listed].sort()).toEqual([...shipped].sort());
    for (const line of dep) for (const needed of line.split(':')[1]!.trim().split(/\s+/).filter(Boolean)) expect(shipped).toContain(needed);
    // Signed modules (the kernel checks signatures under Secure Boot lockdown): not stripped.
    const verity = byName.get(`${modRoot}/kernel/drivers/md/dm-verity.ko`)!.data;
    expect(verity.subarray(verity.length - 28).toString('latin1')).toBe('~Module signature appended~\n');
  });
});
