/**
 * The boot side of service filesystems with the fake native port and in-memory files: target
 * plans from verified targets, activation in order with every refusal and its rollback, the
 * storage phase's services, teardown, and the corruption check after a run.
 */
import { describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import { activateTarget, deactivateTarget, type ActivationEffects } from '../../init/storage/activate.ts';
import { corruptionAfterRun, releaseTargets, runStoragePhase, targetService } from '../../init/storage/storage-phase.ts';
import { planImageProcess, planTarget, type StorageDirs, type TargetPlan } from '../../init/storage/targets.ts';
import { VERITY_ROOT_HASH_ANNOTATION } from '../../init/storage/verity.ts';
import type { InstallTarget } from '../../init/trust/formats.ts';
import type { VerifiedTarget } from '../../init/trust/verify-install.ts';
import type { NsgroupRanges } from '../../services/idmap.ts';
import { makeVerityImage, type VerityImage } from '../helpers/verity-image.ts';

const MEDIA_TYPE = 'application/vnd.stacker.image.layer.squashfs+gzip+verity';
/** nsgroups lost and notes, as the boot would assign them (sorted: lost slot 1, notes slot 2). */
const NSGROUPS: NsgroupRanges = { ok: true, assignment: { ranges: { lost: { hostId: 65536, size: 65536 }, notes: { hostId: 131072, size: 65536 } }, retired: {} } };
const DIRS: StorageDirs = { layoutDir: '/run/mos/store/oci', targetsDir: '/run/mos/targets', scratchDir: '/run/mos/scratch' };
const DIGEST = `sha256:${'ab'.repeat(32)}`;

function installTarget(name: string, type: InstallTarget['service_type'] = 'container'): InstallTarget {
  return { service_name: name, version: '1', service_type: type, network: { type: 'none', ipv4: '', ipv6: '', ports: null }, nsgroup: name, digest: `sha256:${'cd'.repeat(32)}`, storage: null, size: 100 };
}

function verifiedTarget(
  name: string,
  options: { type?: InstallTarget['service_type']; rootHash?: string; config?: unknown; layers?: VerifiedTarget['layers']; digest?: string } = {},
): VerifiedTarget {
  const config = options.config ?? { config: { Entrypoint: ['/bin/busybox'], Cmd: ['httpd', '-f'], Env: ['PATH=/bin', 'MODE=demo'], WorkingDir: '/srv' } };
  return {
    target: installTarget(name, options.type),
    manifestDigest: `sha256:${'ef'.repeat(32)}`,
    manifestBytes: Buffer.from('{}'),
    configBytes: Buffer.from(JSON.stringify(config)),
    layers: options.layers ?? [
      { mediaType: MEDIA_TYPE, digest: options.digest ?? DIGEST, size: 12288, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: options.rootHash ?? 'a'.repeat(64) } },
    ],
  };
}

/** Files by path; a dm node reads as the blob it verifies, or fails with EIO when `eio` has it. */
function memoryEffects(native: FakeNative, files: Map<string, Buffer>, options: { eio?: Set<string> } = {}) {
  const dirs = new Set<string>();
  const removed: string[] = [];
  const madeFiles: string[] = [];
  const chowns: string[] = [];
  const dmBacking = (file: string) => {
    for (const [, entry] of native.dmDevices) {
      if (entry.device.path === file) {
        const loop = entry.options.table[0]!.params.split(' ')[1]!;
        return native.loops.get(loop)?.file;
      }
    }
    return undefined;
  };
  const contents = (file: string): Buffer => {
    if (options.eio?.has(file)) throw Object.assign(new Error(`EIO: i/o error, read ${file}`), { code: 'EIO' });
    const backing = dmBacking(file);
    const data = files.get(backing ?? file);
    if (!data) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${file}'`), { code: 'ENOENT' });
    return data;
  };
  const fx: ActivationEffects = {
    native,
    fileSize: async (file) => contents(file).length,
    readAt: async (file, offset, length) => {
      const data = contents(file);
      if (offset + length > data.length) throw Object.assign(new Error('short read'), { code: 'ESHORT' });
      return Buffer.from(data.subarray(offset, offset + length));
    },
    exists: (file) => file.startsWith('/dev/dm-'),
    fileInside: (root, relative) => void madeFiles.push(`${root}${relative}`),
    chown: (file, uid, gid) => void chowns.push(`${file} ${uid}:${gid}`),
    dirInside: (root, relative) => {
      if (relative.includes('link')) throw new Error(`${relative} is a symlink in the image: a mount there could land outside the service root`);
      return `${root}${relative}`;
    },
    mkdirp: (dir) => void dirs.add(dir),
    removeTree: async (dir) => {
      removed.push(dir);
      dirs.delete(dir);
    },
  };
  return { fx, dirs, removed, madeFiles, chowns };
}

function planFor(image: VerityImage, name = 'web', type: InstallTarget['service_type'] = 'container'): TargetPlan {
  const planned = planTarget(verifiedTarget(name, { rootHash: image.rootHash, type }), DIRS);
  if (!planned.ok) throw new Error(planned.message);
  return planned.plan;
}

function setup(options: { eio?: Set<string>; image?: VerityImage } = {}) {
  const native = new FakeNative();
  const image = options.image ?? makeVerityImage({ dataBlocks: 3 });
  const plan = planFor(image);
  const files = new Map([[plan.blobPath, image.blob]]);
  return { native, image, plan, files, ...memoryEffects(native, files, options) };
}

describe('target plans', () => {
  it('plans a container target: blob in the layout, dm name, image mount, overlay on scratch, its process', () => {
    const planned = planTarget(verifiedTarget('web'), DIRS);
    expect(planned).toEqual({
      ok: true,
      plan: {
        name: 'web',
        type: 'container',
        blobPath: `/run/mos/store/oci/blobs/sha256/${'ab'.repeat(32)}`,
        layerDigest: DIGEST,
        rootHash: 'a'.repeat(64),
        mediaType: MEDIA_TYPE,
        dmName: 'mos-web',
        imageDir: '/run/mos/targets/web/image',
        overlay: {
          rootDir: '/run/mos/targets/web/root',
          upperDir: '/run/mos/scratch/web/upper',
          workDir: '/run/mos/scratch/web/work',
          mountPoints: { dirs: ['/dev', '/proc', '/sys'], files: ['/run/mos/notify'] },
        },
        process: { argv: ['/bin/busybox', 'httpd', '-f'], env: { PATH: '/bin', MODE: 'demo' }, cwd: '/srv' },
      },
    });
  });

  it('an fs-only or hostfs target is only mounted: no overlay, no process', () => {
    for (const type of ['fs-only', 'hostfs'] as const) {
      const planned = planTarget(verifiedTarget('tools', { type, config: {} }), DIRS);
      expect(planned.ok && planned.plan.overlay === undefined && planned.plan.process === undefined).toBe(true);
    }
  });

  it('refuses images that are not one squashfs layer with its verity root hash', () => {
    const layer = { mediaType: MEDIA_TYPE, digest: DIGEST, size: 1, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: 'a'.repeat(64) } };
    const cases: [VerifiedTarget['layers'], RegExp][] = [
      [[layer, layer], /has 2 layers/],
      [[], /has 0 layers/],
      [[{ ...layer, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }], /media type "application\/vnd.oci.image.layer.v1.tar\+gzip"/],
      [[{ ...layer, mediaType: 'application/vnd.stacker.image.layer.squashfs+gzip' }], /expected application\/vnd.stacker.image.layer.squashfs…\+verity/],
      [[{ ...layer, annotations: {} }], /has no io.stackeroci.stacker.squashfs_verity_root_hash annotation/],
      [[{ ...layer, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: 'A'.repeat(64) } }], /not 64 lowercase hex/],
    ];
    for (const [layers, message] of cases) {
      const planned = planTarget(verifiedTarget('web', { layers }), DIRS);
      expect(planned.ok).toBe(false);
      if (!planned.ok) {
        expect(planned.code).toBe('E_LAYER_FORMAT');
        expect(planned.message).toMatch(message);
      }
    }
  });

  it('reads the process from the image config, refusing what it cannot run', () => {
    expect(planImageProcess(Buffer.from(JSON.stringify({ config: { Cmd: ['/app'], User: '1000:100' } })))).toEqual({
      ok: true,
      process: { argv: ['/app'], env: {}, cwd: '/', uid: 1000, gid: 100 },
    });
    expect(planImageProcess(Buffer.from(JSON.stringify({ config: { Cmd: ['/app'], User: '33' } })))).toMatchObject({ ok: true, process: { uid: 33, gid: 33 } });
    // How mos supervises it: the labels, checked like a service file's fields.
    const labelled = planImageProcess(Buffer.from(JSON.stringify({ config: { Cmd: ['/app'], Labels: { 'org.mos.readiness': 'notify', 'org.mos.watchdog': '5s', other: 'x' } } })));
    expect(labelled).toMatchObject({ ok: true, process: { readiness: 'notify', watchdog: '5s' } });
    const plan = planFor(makeVerityImage({ dataBlocks: 2 }));
    const service = targetService({ ...plan, process: { argv: ['/app'], env: {}, cwd: '/', readiness: 'notify', watchdog: '5s' } });
    expect(service).toMatchObject({ readiness: { type: 'notify' }, watchdogMs: 5000 });
    expect(targetService({ ...plan, process: { argv: ['/app'], env: {}, cwd: '/', readiness: 'sometimes' } })).toMatchObject({ code: 'E_IMAGE_CONFIG' });
    const refusals: [unknown, RegExp][] = [
      ['not json', /not JSON/],
      [{ config: {} }, /neither Entrypoint nor Cmd/],
      [{ config: { Cmd: ['/app'], User: 'www-data' } }, /only numeric uid\[:gid\]/],
      [{ config: { Cmd: ['/app'], Env: ['NOEQUALS'] } }, /not KEY=VALUE/],
      [{ config: { Cmd: ['/app'], WorkingDir: 'relative' } }, /absolute path/],
      [{ config: { Cmd: 'not-a-list' } }, /image config config.Cmd/],
    ];
    for (const [config, message] of refusals) {
      const bytes = Buffer.from(typeof config === 'string' ? config : JSON.stringify(config));
      const result = planImageProcess(bytes);
      expect(result.ok, String(message)).toBe(false);
      if (!result.ok) expect(result.message).toMatch(message);
    }
  });
});

describe('activation', () => {
  it('loop (read-only) → dm-verity with the planned table → check → squashfs read-only → overlay; teardown undoes it all', async () => {
    const { native, image, plan, fx, removed, madeFiles } = setup();
    const result = await activateTarget(plan, fx);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(native.loopCalls).toEqual([{ attach: { file: plan.blobPath, readOnly: true, directIo: true } }]);
    const dm = native.dmDevices.get('mos-web')!;
    expect(dm.options).toEqual({
      name: 'mos-web',
      readOnly: true,
      table: [{ start: 0, length: 24, type: 'verity', params: `1 /dev/loop0 /dev/loop0 4096 4096 3 4 sha256 ${image.rootHash} ${image.salt}` }],
    });
    expect(native.mounts).toEqual([
      { source: '/dev/dm-0', target: '/run/mos/targets/web/image', fstype: 'squashfs', flags: 1 | 2 | 4, data: '' },
      {
        source: 'overlay',
        target: '/run/mos/targets/web/root',
        fstype: 'overlay',
        flags: 4,
        data: 'lowerdir=/run/mos/targets/web/image,upperdir=/run/mos/scratch/web/upper,workdir=/run/mos/scratch/web/work',
      },
    ]);
    // crun's mount points, made by mos (a user namespace's root could not in a root-owned image).
    expect(madeFiles).toEqual(['/run/mos/targets/web/root/run/mos/notify']);
    // A writable layer never survives from before.
    expect(removed).toEqual(['/run/mos/scratch/web/upper', '/run/mos/scratch/web/work']);

    expect(await deactivateTarget(result.active, fx)).toEqual([]);
    expect(native.umounts.map((u) => u.target)).toEqual(['/run/mos/targets/web/root', '/run/mos/targets/web/image']);
    expect(native.dmDevices.size).toBe(0);
    expect(native.loops.size).toBe(0);
    expect(removed.slice(2)).toEqual(['/run/mos/scratch/web/work', '/run/mos/scratch/web/upper']);
  });

  it('refuses a root hash that does not match the image before any device exists (E_VERITY_ROOT_HASH)', async () => {
    const image = makeVerityImage({ dataBlocks: 2 });
    const { native, fx, files } = setup({ image });
    const plan = planFor({ ...image, rootHash: 'f'.repeat(64) });
    files.set(plan.blobPath, image.blob);
    const result = await activateTarget(plan, fx);
    expect(result).toMatchObject({ ok: false, code: 'E_VERITY_ROOT_HASH' });
    expect(!result.ok && result.message).toMatch(/^image of web: the signed verity root hash ffffffffffffffff… does not match the image's hash tree/);
    expect(native.loopCalls).toEqual([]);
  });

  it('a corrupted first block (EIO through dm-verity) is E_VERITY_CORRUPT, and the devices are removed', async () => {
    const { native, plan, fx } = setup({ eio: new Set(['/dev/dm-0']) });
    const result = await activateTarget(plan, fx);
    expect(result).toMatchObject({ ok: false, code: 'E_VERITY_CORRUPT' });
    expect(!result.ok && result.message).toMatch(/reading its superblock through dm-verity failed \(EIO\)/);
    expect(native.dmDevices.size).toBe(0);
    expect(native.loops.size).toBe(0);
    expect(native.mounts).toEqual([]);
  });

  it('a layer with a damaged layout is E_VERITY_LAYOUT; a missing one E_LAYER_MISSING', async () => {
    const { plan, fx, files, native } = setup();
    files.set(plan.blobPath, files.get(plan.blobPath)!.subarray(0, 3 * 4096 + 100));
    expect(await activateTarget(plan, fx)).toMatchObject({ ok: false, code: 'E_VERITY_LAYOUT' });
    files.delete(plan.blobPath);
    expect(await activateTarget(plan, fx)).toMatchObject({ ok: false, code: 'E_LAYER_MISSING' });
    expect(native.loopCalls).toEqual([]);
  });

  it('each later failure undoes the steps before it', async () => {
    const loopFails = setup();
    loopFails.native.failNextLoopAttach = 'ENOENT';
    expect(await activateTarget(loopFails.plan, loopFails.fx)).toMatchObject({ ok: false, code: 'E_LOOP', message: 'image of web: loop device: open ENOENT /dev/loop-control' });

    const dmFails = setup();
    dmFails.native.failNextDmCreate = 'EINVAL';
    expect(await activateTarget(dmFails.plan, dmFails.fx)).toMatchObject({ ok: false, code: 'E_VERITY_DEVICE' });
    expect(dmFails.native.loops.size).toBe(0);

    const mountFails = setup();
    mountFails.native.failNextMount = 'EINVAL';
    expect(await activateTarget(mountFails.plan, mountFails.fx)).toMatchObject({ ok: false, code: 'E_IMAGE_MOUNT' });
    expect(mountFails.native.dmDevices.size + mountFails.native.loops.size).toBe(0);

    const overlayFails = setup();
    const realMount = overlayFails.native.mount.bind(overlayFails.native);
    overlayFails.native.mount = async (request) => {
      if (request.fstype === 'overlay') overlayFails.native.failNextMount = 'EINVAL';
      return realMount(request);
    };
    expect(await activateTarget(overlayFails.plan, overlayFails.fx)).toMatchObject({ ok: false, code: 'E_OVERLAY' });
    expect(overlayFails.native.umounts.map((u) => u.target)).toEqual(['/run/mos/targets/web/image']);
    expect(overlayFails.native.dmDevices.size + overlayFails.native.loops.size).toBe(0);
  });

  it('binds the target\'s volumes into its root, never through a symlink of the image', async () => {
    const { native, plan, fx } = setup();
    plan.volumeMounts = [{ source: '/run/mos/volumes/data', dest: '/var/lib/data', label: 'data' }];
    const result = await activateTarget(plan, fx);
    if (!result.ok) throw new Error(result.message);
    expect(native.mounts[2]).toEqual({ source: '/run/mos/volumes/data', target: '/run/mos/targets/web/root/var/lib/data', fstype: '', flags: 4096, data: '' });
    await deactivateTarget(result.active, fx);
    expect(native.umounts.map((u) => u.target)).toEqual(['/run/mos/targets/web/root/var/lib/data', '/run/mos/targets/web/root', '/run/mos/targets/web/image']);

    const linked = setup();
    linked.plan.volumeMounts = [{ source: '/run/mos/volumes/data', dest: '/link/data', label: 'data' }];
    expect(await activateTarget(linked.plan, linked.fx)).toMatchObject({ ok: false, code: 'E_OVERLAY', message: expect.stringMatching(/volume data on \/link\/data: \/link\/data is a symlink in the image/) });
    expect(linked.native.dmDevices.size + linked.native.loops.size).toBe(0);
  });

  it('a busy mount at teardown is detached lazily and reported; the rest still goes', async () => {
    const { native, plan, fx } = setup();
    const result = await activateTarget(plan, fx);
    if (!result.ok) throw new Error(result.message);
    native.failNextUmount = 'EBUSY';
    const problems = await deactivateTarget(result.active, fx);
    expect(problems).toEqual(['/run/mos/targets/web/root was busy: detached lazily']);
    expect(native.umounts[1]).toEqual({ target: '/run/mos/targets/web/root', flags: 2 });
    expect(native.loops.size).toBe(0);
  });
});

describe('activation in a user namespace', () => {
  it('sees the image through an idmapped mount of the nsgroup\'s range, with the writable layer\'s root the container\'s', async () => {
    const { native, plan, fx, chowns } = setup();
    plan.overlay!.idmap = { dir: '/run/mos/targets/web/mapped', hostId: 131072, size: 65536 };
    const result = await activateTarget(plan, fx);
    if (!result.ok) throw new Error(result.message);
    expect(native.idmappedBinds).toEqual([{ source: '/run/mos/targets/web/image', target: '/run/mos/targets/web/mapped', hostId: 131072, size: 65536, readOnly: true }]);
    expect(native.mounts.find((m) => m.fstype === 'overlay')!.data).toMatch(/^lowerdir=\/run\/mos\/targets\/web\/mapped,/);
    expect(chowns).toEqual(['/run/mos/scratch/web/upper 131072:131072']);
    expect(result.active.idmap).toEqual({ mapped: true });
    expect(await deactivateTarget(result.active, fx)).toEqual([]);
    expect(native.umounts.map((u) => u.target)).toEqual(['/run/mos/targets/web/root', '/run/mos/targets/web/mapped', '/run/mos/targets/web/image']);
  });

  it('a kernel that cannot idmap squashfs (EINVAL): the image as it is, and why; another failure fails the activation', async () => {
    const { native, plan, fx } = setup();
    plan.overlay!.idmap = { dir: '/run/mos/targets/web/mapped', hostId: 131072, size: 65536 };
    native.failNextIdmappedBind = { step: 'mount_setattr', code: 'EINVAL' };
    const result = await activateTarget(plan, fx);
    if (!result.ok) throw new Error(result.message);
    expect(native.mounts.find((m) => m.fstype === 'overlay')!.data).toMatch(/^lowerdir=\/run\/mos\/targets\/web\/image,/);
    expect(result.active.idmap).toMatchObject({ mapped: false, why: expect.stringMatching(/cannot idmap the image's squashfs \(mount_setattr EINVAL .*\): its files show as nobody inside/) });
    await deactivateTarget(result.active, fx);

    native.failNextIdmappedBind = { step: 'move_mount', code: 'ENOENT' };
    expect(await activateTarget(plan, fx)).toMatchObject({ ok: false, code: 'E_OVERLAY', message: expect.stringMatching(/idmapped image on \/run\/mos\/targets\/web\/mapped: move_mount ENOENT/) });
    expect(native.loops.size).toBe(0);
  });
});

describe('storage phase', () => {
  it('activates each target; a refused one becomes an unavailable service with its code; the others run chroot\'ed', async () => {
    const native = new FakeNative();
    const good = makeVerityImage({ dataBlocks: 2 });
    const targets = [
      verifiedTarget('web', { rootHash: good.rootHash, digest: `sha256:${'01'.repeat(32)}` }),
      verifiedTarget('bad', { rootHash: 'e'.repeat(64), digest: `sha256:${'02'.repeat(32)}` }),
      verifiedTarget('tools', { type: 'fs-only', rootHash: good.rootHash, digest: `sha256:${'03'.repeat(32)}` }),
    ];
    const files = new Map([
      [`/run/mos/store/oci/blobs/sha256/${'01'.repeat(32)}`, good.blob],
      [`/run/mos/store/oci/blobs/sha256/${'02'.repeat(32)}`, good.blob],
      [`/run/mos/store/oci/blobs/sha256/${'03'.repeat(32)}`, good.blob],
    ]);
    const lines: string[] = [];
    const { fx } = memoryEffects(native, files);
    const result = await runStoragePhase(targets, [], { ...DIRS, volumesDir: '/run/mos/volumes' }, { ...fx, log: () => {}, say: (line) => void lines.push(line) }, null, NSGROUPS);
    expect(result.targets.map((t) => [t.name, t.failure?.code ?? 'active'])).toEqual([
      ['web', 'active'],
      ['bad', 'E_VERITY_ROOT_HASH'],
      ['tools', 'active'],
    ]);
    expect(result.services.map((s) => [s.name, s.root ?? null, s.unavailable?.code ?? null])).toEqual([
      ['web', '/run/mos/targets/web/root', null],
      ['bad', null, 'E_VERITY_ROOT_HASH'],
    ]);
    expect(result.services[0]).toMatchObject({ argv: ['/bin/busybox', 'httpd', '-f'], cwd: '/srv', env: { PATH: '/bin', MODE: 'demo' } });
    expect(lines).toEqual([
      expect.stringMatching(/^mos: storage: web \(container\) verified and mounted at \/run\/mos\/targets\/web\/root in \d+ ms$/),
      expect.stringMatching(/^mos: storage: bad: E_VERITY_ROOT_HASH: image of bad: the signed verity root hash/),
      expect.stringMatching(/^mos: storage: tools \(fs-only\) verified and mounted at \/run\/mos\/targets\/tools\/image in \d+ ms$/),
    ]);

    // After a run ends: a corrupted device fails the service, a valid one does not.
    const web = result.targets[0]!;
    expect(await corruptionAfterRun(web, fx)).toBeNull();
    native.corruptDm('mos-web');
    expect(await corruptionAfterRun(web, fx)).toMatchObject({ code: 'E_VERITY_CORRUPT' });

    expect(await releaseTargets(result, fx)).toEqual([]);
    expect(native.dmDevices.size + native.loops.size).toBe(0);
    expect(result.targets.every((t) => t.active === null)).toBe(true);
  });
});

describe('activation of a one-block image (no hash tree: the root hash is the data block\'s)', () => {
  it('checks the root hash against the data block itself', async () => {
    const { createHash } = await import('node:crypto');
    const image = makeVerityImage({ dataBlocks: 1 });
    // makeVerityImage writes a one-block level even for one data block; a real one has none.
    const blob = image.blob.subarray(0, 2 * 4096);
    const rootHash = createHash('sha256').update(Buffer.from(image.salt, 'hex')).update(blob.subarray(0, 4096)).digest('hex');
    const native = new FakeNative();
    const plan = planFor({ ...image, rootHash });
    const { fx } = memoryEffects(native, new Map([[plan.blobPath, blob]]));
    const result = await activateTarget(plan, fx);
    expect(result.ok, JSON.stringify(result)).toBe(true);
    const wrong = planFor({ ...image, rootHash: image.rootHash });
    expect(await activateTarget(wrong, memoryEffects(new FakeNative(), new Map([[wrong.blobPath, blob]])).fx)).toMatchObject({ ok: false, code: 'E_VERITY_ROOT_HASH' });
  });
});

describe('storage phase with volumes', () => {
  it('binds a ready volume into its service; a missing volume or another nsgroup\'s fails only that service', async () => {
    const native = new FakeNative();
    const image = makeVerityImage({ dataBlocks: 2 });
    const withStorage = (name: string, digest: string, storage: { dest: string; label: string }[]) => {
      const target = verifiedTarget(name, { rootHash: image.rootHash, digest });
      target.target.storage = storage;
      return target;
    };
    const targets = [
      withStorage('notes', `sha256:${'01'.repeat(32)}`, [{ dest: '/keep', label: 'keep' }]),
      withStorage('lost', `sha256:${'02'.repeat(32)}`, [{ dest: '/data', label: 'absent' }]),
      withStorage('nosy', `sha256:${'03'.repeat(32)}`, [{ dest: '/peek', label: 'keep' }]),
    ];
    const files = new Map(['01', '02', '03'].map((d) => [`/run/mos/store/oci/blobs/sha256/${d.repeat(32)}`, image.blob]));
    const { fx } = memoryEffects(native, files);
    const lines: string[] = [];
    const volumeFx = {
      native,
      listBlockDevices: () => [{ name: 'vdb', path: '/dev/vdb', major: 254, minor: 16, sizeBytes: 32 << 20, readOnly: false, serial: 'keep', partName: null, isPartition: false }],
      readHead: async (_device: string, length: number) => Buffer.alloc(length),
      runTool: async () => ({ code: 0, signal: null, output: '', timedOut: false }),
      mkdirp: () => {},
      say: (line: string) => void lines.push(line),
      log: () => {},
    };
    const result = await runStoragePhase(
      targets,
      [
        { label: 'keep', persistent: true, nsgroup: 'notes', size: 16 },
        { label: 'absent', persistent: true, nsgroup: 'lost', size: 16 },
      ],
      { ...DIRS, volumesDir: '/run/mos/volumes' },
      { ...fx, log: () => {}, say: (line) => void lines.push(line) },
      volumeFx,
      NSGROUPS,
    );
    expect(result.targets.map((t) => [t.name, t.failure?.code ?? 'active'])).toEqual([
      ['notes', 'active'],
      ['lost', 'E_VOLUME_MISSING'],
      ['nosy', 'E_VOLUME_NSGROUP'],
    ]);
    expect(result.services.map((s) => [s.name, s.unavailable?.code ?? null])).toEqual([
      ['notes', null],
      ['lost', 'E_VOLUME_MISSING'],
      ['nosy', 'E_VOLUME_NSGROUP'],
    ]);
    expect(native.mounts.some((m) => m.source === '/run/mos/volumes/keep' && m.target === '/run/mos/targets/notes/root/keep' && m.flags === 4096)).toBe(true);
    expect(lines).toContain('mos: storage: volume absent: E_VOLUME_MISSING: ' + result.volumes.get('absent')!.failure!.message);
    expect(await releaseTargets(result, fx)).toEqual([]);
    expect(native.umounts.at(-1)!.target).toBe('/run/mos/volumes/keep');
  });
});

describe('storage phase with a scratch disk', () => {
  it('puts the writable layers on a disk labelled machine-scratch, made afresh each boot; tmpfs without one', async () => {
    const image = makeVerityImage({ dataBlocks: 2 });
    const run = async (devices: { serial: string }[]) => {
      const native = new FakeNative();
      const target = verifiedTarget('web', { rootHash: image.rootHash });
      const { fx } = memoryEffects(native, new Map([[`/run/mos/store/oci/blobs/sha256/${'ab'.repeat(32)}`, image.blob]]));
      const tools: string[][] = [];
      const volumeFx = {
        native,
        listBlockDevices: () => devices.map((d, i) => ({ name: `vd${'bc'[i]}`, path: `/dev/vd${'bc'[i]}`, major: 254, minor: 16 * (i + 1), sizeBytes: 64 << 20, readOnly: false, serial: d.serial, partName: null, isPartition: false })),
        readHead: async (_device: string, length: number) => Buffer.alloc(length),
        runTool: async (argv: string[]) => {
          tools.push(argv);
          return { code: 0, signal: null, output: '', timedOut: false };
        },
        mkdirp: () => {},
        say: () => {},
        log: () => {},
      };
      const result = await runStoragePhase([target], [], { ...DIRS, volumesDir: '/run/mos/volumes' }, { ...fx, log: () => {}, say: () => {} }, volumeFx, NSGROUPS);
      return { result, tools, native };
    };
    const withDisk = await run([{ serial: 'machine-scratch' }]);
    expect(withDisk.tools.map((argv) => argv[0])).toEqual(['mke2fs']);
    expect(withDisk.result.targets[0]!.plan!.overlay).toMatchObject({
      rootDir: '/run/mos/targets/web/root',
      upperDir: '/run/mos/volumes/machine-scratch/web/upper',
      workDir: '/run/mos/volumes/machine-scratch/web/work',
    });
    expect(await releaseTargets(withDisk.result, memoryEffects(withDisk.native, new Map()).fx)).toEqual([]);
    expect(withDisk.native.umounts.at(-1)!.target).toBe('/run/mos/volumes/machine-scratch');

    const without = await run([]);
    expect(without.tools).toEqual([]);
    expect(without.result.targets[0]!.plan!.overlay!.upperDir).toBe('/run/mos/scratch/web/upper');
  });
});
