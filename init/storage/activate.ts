/**
 * Carries out a target plan (init/storage/targets.ts): the image layer becomes a read-only loop
 * device, a dm-verity device over it (table computed in init/storage/verity.ts), a read-only
 * squashfs mount, and for a container target an overlay with a writable upper on scratch.
 * Teardown undoes exactly what was done, in reverse, and reports what it could not undo.
 *
 * Order and checks, each refusing before the next step:
 *  1. the blob's squashfs and verity superblocks are read from the file and planned (layout,
 *     sizes, salt) — refused with E_VERITY_LAYOUT;
 *  2. the top hash block is read from the file and hashed with the salt: it must give the
 *     signed root hash (E_VERITY_ROOT_HASH). The kernel would accept a wrong root hash at
 *     activation and fail only at the first read (FACTS.md), so it is checked here first;
 *  3. loop device (read-only), dm-verity device (read-only);
 *  4. the status must be `V` and the squashfs superblock must read back through the verity
 *     device (E_VERITY_CORRUPT: block 0 or its hash path is corrupted);
 *  5. squashfs mounted read-only, nodev, nosuid; then the overlay.
 * A failure at any step undoes the steps before it: nothing is left half-made.
 */
import { createHash } from 'node:crypto';
import type { DmDevice, LoopDevice, Native, NativeError } from '../../native/types.ts';
import { MountFlags, UmountFlags } from '../../native/types.ts';
import type { TargetPlan } from './targets.ts';
import { parseSquashfsSuperblock, squashfsMountBlocks, squashfsPaddedBytes, type SquashfsSuperblock } from './squashfs.ts';
import { planVerityLayer, verityTable, type VerityLayout } from './verity.ts';

export type ActivationFailureCode =
  | 'E_VERITY_LAYOUT'
  | 'E_VERITY_ROOT_HASH'
  | 'E_VERITY_CORRUPT'
  | 'E_LAYER_MISSING'
  | 'E_LOOP'
  | 'E_VERITY_DEVICE'
  | 'E_IMAGE_MOUNT'
  | 'E_OVERLAY';

/** What activation needs besides the native port: file reads, directories, a hash. */
export interface ActivationEffects {
  native: Pick<Native, 'loopAttach' | 'loopDetach' | 'dmCreate' | 'dmStatus' | 'dmRemove' | 'mount' | 'umount' | 'mknod' | 'idmappedBind'>;
  /** chown(2), for the writable layer's root (the container's root must own it). */
  chown(file: string, uid: number, gid: number): void;
  /** The file's size in bytes (rejects with ENOENT when it is missing). */
  fileSize(file: string): Promise<number>;
  /** Exactly `length` bytes at `offset` (rejects on a short read or an I/O error, e.g. EIO). */
  readAt(file: string, offset: number, length: number): Promise<Buffer>;
  exists(file: string): boolean;
  mkdirp(dir: string): void;
  /** Removes a directory tree (the writable layer of a container target). */
  removeTree(dir: string): Promise<void>;
  /**
   * Makes `root` + `relative` a directory without following any symlink on the way (creating
   * what is missing): an image's own symlink (`/data -> /etc`) must never turn a mount inside the
   * service's root into one on the host. Throws when a component is a symlink or not a directory.
   */
  dirInside(root: string, relative: string): string;
  /** An empty file at `relative` inside `root` (its directories by dirInside), never through a symlink; an existing file is kept. */
  fileInside(root: string, relative: string): void;
}


/** One step done, remembered so teardown can undo it. */
type Undo =
  | { kind: 'loop'; loop: LoopDevice }
  | { kind: 'dm'; dm: DmDevice }
  | { kind: 'mount'; target: string }
  | { kind: 'scratch'; dir: string };

export interface ActiveTarget {
  plan: TargetPlan;
  layout: VerityLayout;
  loop: LoopDevice;
  dm: DmDevice;
  /** What was done, in order: teardown walks it backwards. */
  done: Undo[];
  /**
   * For a container in a user namespace: `mapped` when its image is seen through an idmapped
   * mount (the image's owners inside), else why not (this kernel cannot idmap squashfs: the
   * image's files show as nobody inside). Null without a user namespace.
   */
  idmap: { mapped: true } | { mapped: false; why: string } | null;
}

export type ActivationResult = { ok: true; active: ActiveTarget } | { ok: false; code: ActivationFailureCode; message: string };

const SQUASHFS_HEAD_BYTES = 96;
const VERITY_SUPERBLOCK_BYTES = 512;
const HASH_BLOCK_BYTES = 4096;
/** One byte is enough for dm-verity to check the whole 4 KiB block it lies in. */
const VERIFY_READ_BYTES = 1;
const IMAGE_MOUNT_FLAGS = MountFlags.RDONLY | MountFlags.NODEV | MountFlags.NOSUID;
const S_IFBLK = 0o060000;

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function errnoOf(error: unknown): string | undefined {
  return (error as NativeError | NodeJS.ErrnoException)?.code;
}

/** Reads and checks the layer file: layout (step 1) and the root hash against its tree (step 2). */
export async function checkLayerFile(
  plan: TargetPlan,
  fx: ActivationEffects,
): Promise<{ ok: true; layout: VerityLayout; squashfs: SquashfsSuperblock } | { ok: false; code: ActivationFailureCode; message: string }> {
  const where = `image of ${plan.name}`;
  let fileSize: number;
  try {
    fileSize = await fx.fileSize(plan.blobPath);
  } catch (error) {
    return { ok: false, code: 'E_LAYER_MISSING', message: `${where}: layer ${plan.layerDigest}: ${describe(error)}` };
  }
  let squashfsHead: Buffer;
  let squashfs: SquashfsSuperblock;
  let verityHead: Buffer;
  try {
    squashfsHead = await fx.readAt(plan.blobPath, 0, Math.min(SQUASHFS_HEAD_BYTES, fileSize));
    const parsed = parseSquashfsSuperblock(squashfsHead);
    if (!parsed.ok) return { ok: false, code: 'E_VERITY_LAYOUT', message: `${where}: ${parsed.message}` };
    squashfs = parsed.superblock;
    const hashOffset = squashfsPaddedBytes(squashfs);
    if (hashOffset + VERITY_SUPERBLOCK_BYTES > fileSize) {
      return { ok: false, code: 'E_VERITY_LAYOUT', message: `${where}: no verity superblock after the squashfs image (file has ${fileSize} bytes, squashfs ends at ${hashOffset})` };
    }
    verityHead = await fx.readAt(plan.blobPath, hashOffset, VERITY_SUPERBLOCK_BYTES);
  } catch (error) {
    return { ok: false, code: 'E_VERITY_LAYOUT', message: `${where}: reading the layer failed: ${describe(error)}` };
  }
  const planned = planVerityLayer({ fileSize, squashfsHead, verityHead, rootHash: plan.rootHash, mediaType: plan.mediaType });
  if (!planned.ok) return { ok: false, code: planned.code === 'E_LAYER_FORMAT' ? 'E_VERITY_LAYOUT' : planned.code, message: `${where}: ${planned.message}` };
  const layout = planned.layout;
  // The root hash is the hash of the top tree block with the salt (of the only data block when
  // there is a single one, and no tree): a wrong or swapped root hash is caught here, before a
  // device exists.
  let top: Buffer;
  try {
    const topOffset = layout.hashBlocks === 0 ? 0 : layout.hashStartBlock * HASH_BLOCK_BYTES;
    top = await fx.readAt(plan.blobPath, topOffset, HASH_BLOCK_BYTES);
  } catch (error) {
    return { ok: false, code: 'E_VERITY_LAYOUT', message: `${where}: reading the hash tree failed: ${describe(error)}` };
  }
  const computed = createHash('sha256').update(Buffer.from(layout.salt, 'hex')).update(top).digest('hex');
  if (computed !== plan.rootHash) {
    return { ok: false, code: 'E_VERITY_ROOT_HASH', message: `${where}: the signed verity root hash ${plan.rootHash.slice(0, 16)}… does not match the image's hash tree (${computed.slice(0, 16)}…)` };
  }
  return { ok: true, layout, squashfs };
}

export async function activateTarget(plan: TargetPlan, fx: ActivationEffects): Promise<ActivationResult> {
  const checked = await checkLayerFile(plan, fx);
  if (!checked.ok) return checked;
  const { layout, squashfs } = checked;
  const done: Undo[] = [];
  const fail = async (code: ActivationFailureCode, message: string): Promise<ActivationResult> => {
    const problems = await undo(done, fx);
    const rest = problems.length > 0 ? ` (and undoing it: ${problems.join('; ')})` : '';
    return { ok: false, code, message: `${message}${rest}` };
  };

  let loop: LoopDevice;
  try {
    // Direct I/O: the layer's pages are cached once, by squashfs above dm-verity, not a second
    // time as the store file's; reads go to the disk as they are, several at a time. The kernel
    // falls back to buffered I/O by itself when the store cannot do direct I/O (a squashfs store).
    loop = await fx.native.loopAttach({ file: plan.blobPath, readOnly: true, directIo: true });
  } catch (error) {
    return fail('E_LOOP', `image of ${plan.name}: loop device: ${describe(error)}`);
  }
  done.push({ kind: 'loop', loop });

  let dm: DmDevice;
  try {
    dm = await fx.native.dmCreate({ name: plan.dmName, readOnly: true, table: [verityTable(layout, loop.path, loop.path, plan.rootHash)] });
  } catch (error) {
    return fail('E_VERITY_DEVICE', `image of ${plan.name}: dm-verity device ${plan.dmName}: ${describe(error)}`);
  }
  done.push({ kind: 'dm', dm });
  try {
    // No udev and maybe no devtmpfs node yet: the node is ours to make.
    if (!fx.exists(dm.path)) fx.native.mknod(dm.path, S_IFBLK | 0o600, dm.major, dm.minor);
  } catch (error) {
    return fail('E_VERITY_DEVICE', `image of ${plan.name}: ${describe(error)}`);
  }

  const corrupt = await verityCorruption(plan.name, dm, squashfsMountBlocks(squashfs), fx);
  if (corrupt !== null) return fail('E_VERITY_CORRUPT', corrupt);

  try {
    fx.mkdirp(plan.imageDir);
    await fx.native.mount({ source: dm.path, target: plan.imageDir, fstype: 'squashfs', flags: IMAGE_MOUNT_FLAGS, data: '' });
  } catch (error) {
    return fail('E_IMAGE_MOUNT', `image of ${plan.name}: mount squashfs on ${plan.imageDir}: ${describe(error)}`);
  }
  done.push({ kind: 'mount', target: plan.imageDir });

  let idmap: ActiveTarget['idmap'] = null;
  if (plan.overlay) {
    const { rootDir, upperDir, workDir } = plan.overlay;
    // In a user namespace the image is seen through an idmapped mount, so that its files keep
    // their owners inside (0 is the container's root, not nobody). Kernels before 6.2 cannot
    // idmap squashfs (EINVAL): the image is then used as it is, and the service is told.
    let lowerDir = plan.imageDir;
    const mapping = plan.overlay.idmap;
    if (mapping) {
      try {
        fx.mkdirp(mapping.dir);
        await fx.native.idmappedBind({ source: plan.imageDir, target: mapping.dir, hostId: mapping.hostId, size: mapping.size, readOnly: true });
        done.push({ kind: 'mount', target: mapping.dir });
        lowerDir = mapping.dir;
        idmap = { mapped: true };
      } catch (error) {
        if (errnoOf(error) !== 'EINVAL') return fail('E_OVERLAY', `${plan.name}: idmapped image on ${mapping.dir}: ${describe(error)}`);
        idmap = { mapped: false, why: `this kernel cannot idmap the image's squashfs (${describe(error)}): its files show as nobody inside` };
      }
    }
    try {
      // A writable layer is never carried over: whatever a previous run left is removed.
      await fx.removeTree(upperDir);
      await fx.removeTree(workDir);
      fx.mkdirp(upperDir);
      fx.mkdirp(workDir);
      fx.mkdirp(rootDir);
      // The overlay's root is the upper dir's: the container's root owns it, as its image root.
      if (mapping) fx.chown(upperDir, mapping.hostId, mapping.hostId);
    } catch (error) {
      return fail('E_OVERLAY', `${plan.name}: scratch directories: ${describe(error)}`);
    }
    done.push({ kind: 'scratch', dir: upperDir }, { kind: 'scratch', dir: workDir });
    try {
      await fx.native.mount({
        source: 'overlay',
        target: rootDir,
        fstype: 'overlay',
        flags: MountFlags.NODEV,
        data: `lowerdir=${lowerDir},upperdir=${upperDir},workdir=${workDir}`,
      });
    } catch (error) {
      return fail('E_OVERLAY', `${plan.name}: overlay on ${rootDir}: ${describe(error)}`);
    }
    done.push({ kind: 'mount', target: rootDir });
    for (const volume of plan.volumeMounts ?? []) {
      let dest: string;
      try {
        dest = fx.dirInside(rootDir, volume.dest);
        await fx.native.mount({ source: volume.source, target: dest, fstype: '', flags: MountFlags.BIND, data: '' });
      } catch (error) {
        return fail('E_OVERLAY', `${plan.name}: volume ${volume.label} on ${volume.dest}: ${describe(error)}`);
      }
      done.push({ kind: 'mount', target: dest! });
    }
    try {
      for (const dir of plan.overlay.mountPoints.dirs) fx.dirInside(rootDir, dir);
      for (const file of plan.overlay.mountPoints.files) fx.fileInside(rootDir, file);
    } catch (error) {
      return fail('E_OVERLAY', `${plan.name}: mount points in its root: ${describe(error)}`);
    }
  }
  return { ok: true, active: { plan, layout, loop, dm, done, idmap } };
}

/**
 * Null when the device reads back valid; else why not. Status `C` is the kernel having seen a
 * corrupted block; an EIO reading through the device is the same thing found now. The blocks
 * read are the ones the mount reads next (superblock, root inode, table indexes): dm-verity
 * checks each with its hash path, and reading them together lets the paths of the image's two
 * ends (a tree's height apart on a large image) be fetched side by side, not one mount step
 * after the other.
 */
async function verityCorruption(name: string, dm: DmDevice, mountBlocks: readonly number[], fx: ActivationEffects): Promise<string | null> {
  const status = await verityStatus(dm.name, fx);
  if (status === 'corrupt') return `image of ${name}: dm-verity reports corrupted data`;
  const reads = await Promise.allSettled(mountBlocks.map((offset) => fx.readAt(dm.path, offset, offset === 0 ? SQUASHFS_HEAD_BYTES : VERIFY_READ_BYTES)));
  const failed = reads.findIndex((read) => read.status === 'rejected');
  if (failed >= 0) {
    const error = (reads[failed] as PromiseRejectedResult).reason;
    const what = mountBlocks[failed] === 0 ? 'its superblock' : `its squashfs tables at byte ${mountBlocks[failed]}`;
    return `image of ${name}: reading ${what} through dm-verity failed (${errnoOf(error) ?? describe(error)}): its data does not match the signed hash tree`;
  }
  const head = (reads[0] as PromiseFulfilledResult<Buffer>).value;
  const parsed = parseSquashfsSuperblock(head);
  return parsed.ok ? null : `image of ${name}: squashfs superblock through dm-verity: ${parsed.message}`;
}

/** The verity target's status: `V` valid, `C` corruption seen (since activation). */
export async function verityStatus(dmName: string, fx: Pick<ActivationEffects, 'native'>): Promise<'valid' | 'corrupt' | 'unknown'> {
  try {
    const lines = await fx.native.dmStatus(dmName);
    const verity = lines.find((line) => line.type === 'verity');
    if (!verity) return 'unknown';
    const flag = verity.params.trim().split(/\s+/)[0];
    return flag === 'C' ? 'corrupt' : flag === 'V' ? 'valid' : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Undoes what `activateTarget` did, in reverse. Returns what could not be undone (empty: all). */
export async function deactivateTarget(active: ActiveTarget, fx: ActivationEffects): Promise<string[]> {
  return undo(active.done, fx);
}

async function undo(done: Undo[], fx: ActivationEffects): Promise<string[]> {
  const problems: string[] = [];
  for (const step of [...done].reverse()) {
    try {
      switch (step.kind) {
        case 'mount':
          await fx.native.umount(step.target, 0);
          break;
        case 'scratch':
          await fx.removeTree(step.dir);
          break;
        case 'dm':
          await fx.native.dmRemove(step.dm.name);
          break;
        case 'loop':
          await fx.native.loopDetach(step.loop.path);
          break;
      }
    } catch (error) {
      // A busy mount is detached lazily so the devices below can still go when it is released.
      if (step.kind === 'mount' && errnoOf(error) === 'EBUSY') {
        try {
          await fx.native.umount(step.target, UmountFlags.DETACH);
          problems.push(`${step.target} was busy: detached lazily`);
          continue;
        } catch (lazyError) {
          problems.push(`umount ${step.target}: ${describe(lazyError)}`);
          continue;
        }
      }
      problems.push(describe(error));
    }
  }
  done.length = 0;
  return problems;
}
