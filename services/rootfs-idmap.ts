/**
 * How an image's files keep their owners inside a user-namespaced container (issue 6).
 *
 * A container of an nsgroup runs with container ids 0..size-1 mapped to host ids
 * hostId..hostId+size-1. Its image is a squashfs mounted by PID 1 in the initial user namespace,
 * so its files belong to host ids 0, 1000, …: unmapped in the container, they show up as
 * 65534 (nobody), and root in the container can neither read a 0600 file nor write a directory
 * of its own image. This module plans, as data, the mount steps that make the container see the
 * image's own owners. docs/idmapped-mounts.md has what each kernel allows, the measurements and
 * the syscalls; in short:
 *
 *  - `idmapped-lower` (kernel 6.2 and later: squashfs allows idmapped mounts from 6.2, overlayfs
 *    takes idmapped layers from 5.19): a detached clone of the squashfs mount is idmapped with
 *    the nsgroup's mapping (open_tree + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount) and becomes
 *    the overlay's lower layer. Nothing is copied or walked: the cost does not depend on the
 *    image. The upper layer stays a plain directory; the overlay stores raw host ids in it.
 *  - `shifted-upper` (any kernel with overlayfs metacopy, so Debian's 6.1): the overlay is mounted
 *    with `metacopy=on` and every entry is chowned by +hostId through it before the container
 *    starts. With metacopy a chown copies only the inode up (no data): the file's bytes are still
 *    read from the verified lower layer. The cost is one walk and one upper inode per entry.
 *  - `host-ids`: no user namespace (nsgroup `none`): the plain overlay, as before.
 *
 * Pure: the caller (init/storage/activate.ts) carries the steps out in order and unmounts
 * `unmount` in order on release. Contract: `imageDir` is the mounted squashfs; `rootDir`,
 * `upperDir` and `workDir` exist, and the upper and work directories are empty; the plan makes
 * `lowerDir`. The shift must run before anything is mounted inside `rootDir` (volumes, /dev): it
 * walks the whole tree and must never cross into another mount.
 */
import { posix } from 'node:path';
import type { IdRange } from './idmap.ts';
import { MAX_ID } from './idmap.ts';

export type RootfsStrategy = 'idmapped-lower' | 'shifted-upper' | 'host-ids';

export type RootfsIdmapCode = 'E_ROOTFS_PATH' | 'E_ROOTFS_RANGE' | 'E_ROOTFS_STRATEGY';

export interface RootfsIdmapInput {
  /** Target name, for messages. */
  name: string;
  /** The verified squashfs, mounted read-only (e.g. /run/mos/targets/<name>/image). */
  imageDir: string;
  /** Where the idmapped clone of imageDir is attached (idmapped-lower only), e.g. /run/mos/targets/<name>/lower. */
  lowerDir: string;
  /** The overlay: the container's root (e.g. /run/mos/targets/<name>/root). */
  rootDir: string;
  upperDir: string;
  workDir: string;
  /** The nsgroup's range; null for nsgroup none (host ids). */
  idRange: IdRange | null;
  /** `uname -r` of the running kernel. */
  kernelRelease: string;
  /**
   * Overrides the choice made from the release: tests, or a caller whose mount_setattr was
   * refused with EINVAL (a kernel without the support its release suggests) falling back to
   * `shifted-upper`.
   */
  strategy?: RootfsStrategy;
}

/** Mount attributes set together with MOUNT_ATTR_IDMAP in one mount_setattr call. */
export type IdmapAttr = 'rdonly' | 'nosuid' | 'nodev';

/** <linux/mount.h> values, for the executor (native addon or a test's python). */
export const MOUNT_ATTR = {
  rdonly: 0x00000001,
  nosuid: 0x00000002,
  nodev: 0x00000004,
  idmap: 0x00100000,
} as const;

export type RootfsStep =
  /** mkdir (parents must exist), then chmod to `mode` (mkdir applies the umask). */
  | { op: 'mkdir'; path: string; mode: number }
  /**
   * A detached clone of the mount at `source` (open_tree OPEN_TREE_CLONE, not recursive),
   * idmapped with a user namespace whose uid_map and gid_map are both `0 hostId size`, with
   * `attrs` set in the same mount_setattr, then attached at `target` (move_mount).
   */
  | { op: 'idmap-bind'; source: string; target: string; hostId: number; size: number; attrs: IdmapAttr[] }
  /**
   * The overlay's root directory is the upper directory: give it the owner and permission bits
   * lstat reports for `from` (the idmapped lower's root, so already host ids of the range).
   */
  | { op: 'mirror-root'; from: string; to: string }
  /** mount("overlay", target, "overlay", MS_NODEV, data). */
  | { op: 'mount-overlay'; target: string; data: string }
  /**
   * The mount at `target` must list `option` among its superblock options in
   * /proc/self/mountinfo. Overlayfs silently drops metacopy when the upper filesystem has no
   * trusted.* xattrs; every chown would then copy whole files.
   */
  | { op: 'require-option'; target: string; option: string }
  /**
   * Walk `root` (the overlay) without following symlinks and without skipping entries whose
   * st_dev differs (an overlay reports the lower filesystem's st_dev for non-directories), the
   * root itself included; for each entry apply planShiftEntry. Before a chown read the xattrs
   * named in `keepXattrs` and write them back after it: the kernel removes security.capability
   * on chown.
   */
  | { op: 'shift-tree'; root: string; hostId: number; size: number; keepXattrs: string[] };

export interface RootfsPlan {
  strategy: RootfsStrategy;
  steps: RootfsStep[];
  /** Mount points to unmount on release, in this order. */
  unmount: string[];
}

export type RootfsPlanResult = { ok: true; plan: RootfsPlan } | { ok: false; code: RootfsIdmapCode; message: string };

/** What the kernel allows, by release (docs/idmapped-mounts.md has the source references). */
export interface KernelIdmapSupport {
  /** mount_setattr(2) and MOUNT_ATTR_IDMAP exist (5.12). */
  mountSetattr: boolean;
  /** ext4 allows idmapped mounts (5.12). */
  ext4: boolean;
  /** overlayfs accepts idmapped lower and upper layers (5.19; 5.12–5.18 refused them). */
  overlayLayers: boolean;
  /** squashfs allows idmapped mounts (6.2). */
  squashfs: boolean;
  /** tmpfs allows idmapped mounts (6.3). */
  tmpfs: boolean;
  /** overlayfs itself cannot be idmapped (not FS_ALLOW_IDMAP in any release up to 6.18, measured). */
  overlay: false;
}

function atLeast(version: [number, number], major: number, minor: number): boolean {
  return version[0] > major || (version[0] === major && version[1] >= minor);
}

/** Null when the release does not start with `<major>.<minor>`. */
export function kernelIdmapSupport(release: string): KernelIdmapSupport | null {
  const match = /^(\d+)\.(\d+)(?:[.\-+~_]|$)/.exec(release);
  if (!match) return null;
  const version: [number, number] = [Number(match[1]), Number(match[2])];
  return {
    mountSetattr: atLeast(version, 5, 12),
    ext4: atLeast(version, 5, 12),
    overlayLayers: atLeast(version, 5, 19),
    squashfs: atLeast(version, 6, 2),
    tmpfs: atLeast(version, 6, 3),
    overlay: false,
  };
}

/** The strategy for a range on a kernel: idmapped-lower where squashfs allows it, else shifted-upper. */
export function chooseRootfsStrategy(idRange: IdRange | null, kernelRelease: string): RootfsStrategy {
  if (idRange === null) return 'host-ids';
  const support = kernelIdmapSupport(kernelRelease);
  return support !== null && support.squashfs && support.overlayLayers ? 'idmapped-lower' : 'shifted-upper';
}

/**
 * A path that can go into an overlay option string as is: absolute, normalized, and without the
 * characters the option parsers treat specially (`,` separates options, `:` separates lower
 * directories, `\` escapes) or whitespace.
 */
function pathProblem(label: string, path: string): string | null {
  if (!path.startsWith('/') || posix.normalize(path) !== path || (path !== '/' && path.endsWith('/'))) {
    return `${label} must be an absolute, normalized path: ${JSON.stringify(path)}`;
  }
  if (/[\0,:\\\s]/.test(path)) return `${label} contains a character an overlay option cannot hold (, : \\ whitespace or NUL): ${JSON.stringify(path)}`;
  return null;
}

function rangeProblem(range: IdRange): string | null {
  const { hostId, size } = range;
  if (!Number.isInteger(size) || size < 1) return `id range size ${size} must be an integer >= 1`;
  if (!Number.isInteger(hostId) || hostId < 0) return `id range host id ${hostId} must be an integer >= 0`;
  // Image ids (0..size-1) and shifted ids (hostId..) must never overlap: that is how an entry
  // already shifted is told from one that is not, and container ids never alias host ids 0..size-1.
  if (hostId < size) return `id range host id ${hostId} must be at least the range size ${size}`;
  if (hostId + size - 1 > MAX_ID) return `id range ${hostId}+${size} runs past the highest id ${MAX_ID}`;
  return null;
}

export function planRootfsIdmap(input: RootfsIdmapInput): RootfsPlanResult {
  const { name, imageDir, lowerDir, rootDir, upperDir, workDir, idRange } = input;
  const refuse = (code: RootfsIdmapCode, message: string): RootfsPlanResult => ({ ok: false, code, message: `${name}: ${message}` });

  const paths: [string, string][] = [
    ['image directory', imageDir],
    ['lower directory', lowerDir],
    ['root directory', rootDir],
    ['upper directory', upperDir],
    ['work directory', workDir],
  ];
  for (const [label, path] of paths) {
    const problem = pathProblem(label, path);
    if (problem !== null) return refuse('E_ROOTFS_PATH', problem);
  }
  if (new Set(paths.map(([, path]) => path)).size !== paths.length) {
    return refuse('E_ROOTFS_PATH', 'image, lower, root, upper and work directories must be five different paths');
  }

  const strategy = input.strategy ?? chooseRootfsStrategy(idRange, input.kernelRelease);
  if (idRange === null) {
    if (strategy !== 'host-ids') return refuse('E_ROOTFS_STRATEGY', `${strategy} needs an id range; nsgroup none runs on host ids`);
  } else {
    if (strategy === 'host-ids') return refuse('E_ROOTFS_STRATEGY', 'a container with an id range cannot use its image on host ids');
    const problem = rangeProblem(idRange);
    if (problem !== null) return refuse('E_ROOTFS_RANGE', problem);
  }

  const layers = (lower: string): string => `lowerdir=${lower},upperdir=${upperDir},workdir=${workDir}`;
  switch (strategy) {
    case 'host-ids':
      return { ok: true, plan: { strategy, steps: [{ op: 'mount-overlay', target: rootDir, data: layers(imageDir) }], unmount: [rootDir] } };
    case 'idmapped-lower': {
      const range = idRange!;
      return {
        ok: true,
        plan: {
          strategy,
          steps: [
            // Only PID 1 (the overlay's mounter) ever goes through this path.
            { op: 'mkdir', path: lowerDir, mode: 0o700 },
            { op: 'idmap-bind', source: imageDir, target: lowerDir, hostId: range.hostId, size: range.size, attrs: ['rdonly', 'nosuid', 'nodev'] },
            { op: 'mirror-root', from: lowerDir, to: upperDir },
            { op: 'mount-overlay', target: rootDir, data: layers(lowerDir) },
          ],
          unmount: [rootDir, lowerDir],
        },
      };
    }
    case 'shifted-upper': {
      const range = idRange!;
      return {
        ok: true,
        plan: {
          strategy,
          steps: [
            { op: 'mount-overlay', target: rootDir, data: `${layers(imageDir)},metacopy=on` },
            { op: 'require-option', target: rootDir, option: 'metacopy=on' },
            { op: 'shift-tree', root: rootDir, hostId: range.hostId, size: range.size, keepXattrs: ['security.capability'] },
          ],
          unmount: [rootDir],
        },
      };
    }
    default:
      return refuse('E_ROOTFS_STRATEGY', `unknown strategy ${JSON.stringify(strategy)}`);
  }
}

/** What lstat says of one entry: owner and st_mode (type bits included). */
export interface EntryOwner {
  uid: number;
  gid: number;
  mode: number;
}

export type ShiftDecision =
  /** lchown to uid:gid, then (unless null) chmod to `chmod`: chown clears set-user-ID and set-group-ID. */
  | { action: 'chown'; uid: number; gid: number; chmod: number | null }
  /** Already in the range (a second name of an inode already shifted): nothing to do. */
  | { action: 'skip' }
  | { action: 'refuse'; message: string };

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const SETID_BITS = 0o6000;

/**
 * The shift of one entry: image ids 0..size-1 move to hostId..; ids already in the range are left
 * alone; anything else is refused (E_ROOTFS_RANGE): an image id at or above the range size has no
 * place in the container, and leaving it would hand the file to whichever nsgroup owns that host id.
 */
export function planShiftEntry(path: string, entry: EntryOwner, range: IdRange): ShiftDecision {
  const inImage = (id: number): boolean => Number.isInteger(id) && id >= 0 && id < range.size;
  const shifted = (id: number): boolean => Number.isInteger(id) && id >= range.hostId && id < range.hostId + range.size;
  if (inImage(entry.uid) && inImage(entry.gid)) {
    const isLink = (entry.mode & S_IFMT) === S_IFLNK;
    const chmod = !isLink && (entry.mode & SETID_BITS) !== 0 ? entry.mode & 0o7777 : null;
    return { action: 'chown', uid: entry.uid + range.hostId, gid: entry.gid + range.hostId, chmod };
  }
  if (shifted(entry.uid) && shifted(entry.gid)) return { action: 'skip' };
  return {
    action: 'refuse',
    message: `${path} is owned by ${entry.uid}:${entry.gid}, outside the image ids 0..${range.size - 1} and the range ${range.hostId}..${range.hostId + range.size - 1}`,
  };
}
