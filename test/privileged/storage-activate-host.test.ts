/**
 * The activation of a service image against the real kernel of the host: loop device, squashfs
 * mount, overlay with its writable layer, crun's mount points made in it, a volume bound in, and
 * a chroot'ed program in it; then teardown leaves no mount, loop device or upper dir behind.
 *
 * The host has no device-mapper, so here (and only here) the verity device is stood in for by the
 * loop device itself: every other step is the real one. The VM cases run it with dm-verity.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activateTarget, deactivateTarget } from '../../init/storage/activate.ts';
import { createActivationEffects } from '../../init/storage/activation-effects.ts';
import { planTarget } from '../../init/storage/targets.ts';
import { VERITY_ROOT_HASH_ANNOTATION } from '../../init/storage/verity.ts';
import type { VerifiedTarget } from '../../init/trust/verify-install.ts';
import { loadNative } from '../../native/index.ts';
import type { Native } from '../../native/types.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/mksquashfs', '/usr/sbin/veritysetup', '/bin/busybox'].every((file) => fs.existsSync(file));

function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((mountPoint) => mountPoint.startsWith(dir));
}

function loopsBackedBy(file: string): string[] {
  return fs.readdirSync('/sys/block').filter((name) => {
    try {
      return name.startsWith('loop') && fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim() === file;
    } catch {
      return false;
    }
  });
}

describe.skipIf(!isRoot || !hasTools)('image activation on the host (loop, squashfs, overlay; dm-verity stood in for)', () => {
  let work: string;
  let blob: string;
  let rootHash: string;
  let native: Native;

  beforeAll(() => {
    native = loadNative();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-activate-host-'));
    const tree = path.join(work, 'tree');
    fs.mkdirSync(path.join(tree, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(tree, 'etc'));
    fs.copyFileSync('/bin/busybox', path.join(tree, 'bin', 'busybox'));
    fs.writeFileSync(path.join(tree, 'etc', 'motd'), 'from the image\n');
    const image = path.join(work, 'image');
    execFileSync('mksquashfs', [tree, image, '-noappend', '-comp', 'gzip', '-all-root', '-no-progress', '-quiet']);
    const size = fs.statSync(image).size;
    const salt = createHash('sha256').update(fs.readFileSync(image)).digest('hex');
    const out = execFileSync('veritysetup', ['format', image, image, `--hash-offset=${size}`, `--data-blocks=${size / 4096}`, '--data-block-size=4096', '--hash-block-size=4096', '--hash=sha256', `--salt=${salt}`], { encoding: 'utf8' });
    rootHash = /Root hash:\s+([0-9a-f]{64})/.exec(out)![1]!;
    const digest = createHash('sha256').update(fs.readFileSync(image)).digest('hex');
    const blobs = path.join(work, 'layout', 'blobs', 'sha256');
    fs.mkdirSync(blobs, { recursive: true });
    blob = path.join(blobs, digest);
    fs.renameSync(image, blob);
  });

  afterAll(() => {
    // Whatever a failed run left: mounts first, then the loop devices under them.
    for (const mountPoint of mountsUnder(work).reverse()) execFileSync('umount', ['-l', mountPoint]);
    for (const name of loopsBackedBy(blob)) execFileSync('losetup', ['-d', `/dev/${name}`]);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('activates, runs a chroot\'ed program from the image, and tears down without a trace', async () => {
    const verified: VerifiedTarget = {
      target: { service_name: 'web', version: '1', service_type: 'container', network: { type: 'none', ipv4: '', ipv6: '', ports: null }, nsgroup: 'web', digest: `sha256:${'0'.repeat(64)}`, storage: null, size: 1 },
      manifestDigest: `sha256:${'0'.repeat(64)}`,
      manifestBytes: Buffer.from('{}'),
      configBytes: Buffer.from(JSON.stringify({ config: { Entrypoint: ['/bin/busybox', 'cat', '/etc/motd'] } })),
      layers: [{ mediaType: 'application/vnd.stacker.image.layer.squashfs+gzip+verity', digest: `sha256:${path.basename(blob)}`, size: fs.statSync(blob).size, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: rootHash } }],
    };
    const dirs = { layoutDir: path.join(work, 'layout'), targetsDir: path.join(work, 'targets'), scratchDir: path.join(work, 'scratch') };
    const planned = planTarget(verified, dirs);
    if (!planned.ok) throw new Error(planned.message);
    const plan = planned.plan;
    const volume = path.join(work, 'volume');
    fs.mkdirSync(volume);
    fs.writeFileSync(path.join(volume, 'kept'), 'on the volume\n');
    plan.volumeMounts = [{ source: volume, dest: '/data', label: 'data' }];

    // The verity device stood in for by the loop device (no device-mapper on the host).
    const loops = new Map<string, string>();
    const standIn: Native = Object.create(native);
    standIn.dmCreate = async (options) => {
      const loop = options.table[0]!.params.split(' ')[1]!;
      loops.set(options.name, loop);
      const [major, minor] = fs.readFileSync(`/sys/block/${path.basename(loop)}/dev`, 'utf8').trim().split(':').map(Number);
      return { name: options.name, path: loop, major: major!, minor: minor! };
    };
    standIn.dmStatus = async (name) => [{ start: 0, length: 0, type: 'verity', params: loops.has(name) ? 'V' : '' }];
    standIn.dmRemove = async (name) => void loops.delete(name);
    const fx = createActivationEffects(standIn);

    const result = await activateTarget(plan, fx);
    if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
    const rootDir = plan.overlay!.rootDir;
    expect(mountsUnder(work).sort()).toEqual([plan.imageDir, rootDir, `${rootDir}/data`].sort());
    expect(loopsBackedBy(blob)).toHaveLength(1);
    expect(fs.readFileSync(path.join(rootDir, 'etc', 'motd'), 'utf8')).toBe('from the image\n');
    expect(fs.readFileSync(path.join(rootDir, 'data', 'kept'), 'utf8')).toBe('on the volume\n');
    // Writes land in the upper layer; the image stays read-only.
    fs.writeFileSync(path.join(rootDir, 'etc', 'written'), 'x');
    expect(fs.existsSync(path.join(plan.overlay!.upperDir, 'etc', 'written'))).toBe(true);
    expect(() => fs.writeFileSync(path.join(plan.imageDir, 'etc', 'nope'), 'x')).toThrow(/EROFS/);
    // crun's mount points, made by mos in the writable layer (a mapped root could not).
    for (const dir of ['dev', 'proc', 'sys']) expect(fs.statSync(path.join(plan.overlay!.upperDir, dir)).isDirectory()).toBe(true);
    expect(fs.statSync(path.join(plan.overlay!.upperDir, 'run', 'mos', 'notify')).isFile()).toBe(true);

    // A program from the image, chroot'ed in the overlay, with its output on a pipe.
    const [readFd, writeFd] = native.pipe();
    const devNullFd = fs.openSync('/dev/null', 'r');
    const pid = native.spawn({ file: '/bin/busybox', argv: ['busybox', 'sh', '-c', '/bin/busybox cat /etc/motd; /bin/busybox ls -d /dev /proc /sys; /bin/busybox ls /run/mos'], env: ['PATH=/bin'], root: rootDir, fds: [{ child: 0, parent: devNullFd }, { child: 1, parent: writeFd }, { child: 2, parent: writeFd }] });
    native.close(writeFd);
    fs.closeSync(devNullFd);
    let output = '';
    const buffer = Buffer.alloc(4096);
    for (;;) {
      const count = fs.readSync(readFd, buffer);
      if (count === 0) break;
      output += buffer.subarray(0, count).toString();
    }
    native.close(readFd);
    for (let tries = 0; tries < 200 && !native.reap().some((exit) => exit.pid === pid); tries++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(output).toBe('from the image\n/dev\n/proc\n/sys\nnotify\n');

    expect(await deactivateTarget(result.active, fx)).toEqual([]);
    expect(mountsUnder(work)).toEqual([]);
    expect(loopsBackedBy(blob)).toEqual([]);
    expect(fs.existsSync(plan.overlay!.upperDir)).toBe(false);
    expect(fs.readFileSync(path.join(volume, 'kept'), 'utf8')).toBe('on the volume\n');
  });
});
