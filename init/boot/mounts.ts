/**
 * Mounts PID 1 makes at boot (a data table, in LinuxKit's style) and takes down at shutdown.
 *
 * Pure: the table, `parseMountInfo`, `decideMount` / `planEarlyMounts` (what to mount given
 * what is mounted already and whether the machine booted through EFI) and `planUnmounts`.
 * Effectful: `applyMounts` and `unmountAll`, through the `Native` port.
 */
import { existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import type { Native } from '../../native/types.ts';
import { MountFlags } from '../../native/types.ts';

const { NOSUID, NODEV, NOEXEC, RELATIME, REMOUNT, RDONLY } = MountFlags;

export interface MountEntry {
  target: string;
  source: string;
  fstype: string;
  flags: number;
  data?: string;
  /** Create the target directory first (on the initramfs or in a fresh devtmpfs). */
  mkdir: boolean;
  /** Only when this path exists (efivarfs: only on an EFI boot). */
  onlyIf?: string;
  /** `early` mounts come first; `late` ones after the modules (efivarfs is a module on Debian). */
  stage: 'early' | 'late';
}

/** The machine's API filesystems, parents before children. */
export const EARLY_MOUNTS: readonly MountEntry[] = [
  { target: '/proc', source: 'proc', fstype: 'proc', flags: NOSUID | NODEV | NOEXEC | RELATIME, mkdir: true, stage: 'early' },
  { target: '/sys', source: 'sysfs', fstype: 'sysfs', flags: NOSUID | NODEV | NOEXEC | RELATIME, mkdir: true, stage: 'early' },
  // CONFIG_DEVTMPFS_MOUNT is off in Debian's kernels: mount it ourselves.
  { target: '/dev', source: 'devtmpfs', fstype: 'devtmpfs', flags: NOSUID | RELATIME, data: 'mode=0755', mkdir: true, stage: 'early' },
  { target: '/dev/pts', source: 'devpts', fstype: 'devpts', flags: NOSUID | NOEXEC | RELATIME, data: 'gid=5,mode=0620,ptmxmode=0666', mkdir: true, stage: 'early' },
  { target: '/dev/shm', source: 'shm', fstype: 'tmpfs', flags: NOSUID | NODEV | RELATIME, data: 'mode=1777', mkdir: true, stage: 'early' },
  { target: '/run', source: 'tmpfs', fstype: 'tmpfs', flags: NOSUID | NODEV | RELATIME, data: 'mode=0755', mkdir: true, stage: 'early' },
  { target: '/tmp', source: 'tmpfs', fstype: 'tmpfs', flags: NOSUID | NODEV | RELATIME, data: 'mode=1777', mkdir: true, stage: 'early' },
  { target: '/sys/fs/cgroup', source: 'cgroup2', fstype: 'cgroup2', flags: NOSUID | NODEV | NOEXEC | RELATIME, data: 'nsdelegate', mkdir: false, stage: 'early' },
  { target: '/sys/kernel/security', source: 'securityfs', fstype: 'securityfs', flags: NOSUID | NODEV | NOEXEC | RELATIME, mkdir: false, stage: 'early' },
  {
    target: '/sys/firmware/efi/efivars',
    source: 'efivarfs',
    fstype: 'efivarfs',
    flags: NOSUID | NODEV | NOEXEC | RELATIME,
    mkdir: false,
    onlyIf: '/sys/firmware/efi',
    stage: 'late',
  },
];

/** Symlinks every Linux userland expects in /dev (devtmpfs does not make them). */
export const DEV_LINKS: readonly { path: string; target: string }[] = [
  { path: '/dev/fd', target: '/proc/self/fd' },
  { path: '/dev/stdin', target: '/proc/self/fd/0' },
  { path: '/dev/stdout', target: '/proc/self/fd/1' },
  { path: '/dev/stderr', target: '/proc/self/fd/2' },
  { path: '/dev/core', target: '/proc/kcore' },
];

export interface MountInfoEntry {
  id: number;
  parentId: number;
  target: string;
  fstype: string;
  source: string;
}

/** `\040`-style octal escapes of /proc/self/mountinfo. */
function unescapeMountPath(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** /proc/self/mountinfo, in the order the kernel lists it (parents before children). */
export function parseMountInfo(text: string): MountInfoEntry[] {
  const entries: MountInfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const fields = left.split(' ');
    const tail = right.split(' ');
    if (fields.length < 5 || tail.length < 2) continue;
    entries.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      target: unescapeMountPath(fields[4]!),
      fstype: tail[0]!,
      source: unescapeMountPath(tail[1]!),
    });
  }
  return entries;
}

export interface MountFacts {
  /** Targets mounted now (from /proc/self/mountinfo; empty before /proc is mounted). */
  mounted: ReadonlySet<string>;
  /** Which of the `onlyIf` paths exist. */
  exists: (path: string) => boolean;
}

export type MountDecision = { action: 'mount' } | { action: 'skip'; reason: string };

/** Whether one entry is to be mounted now. */
export function decideMount(entry: MountEntry, facts: MountFacts): MountDecision {
  if (facts.mounted.has(entry.target)) return { action: 'skip', reason: 'already mounted' };
  if (entry.onlyIf !== undefined && !facts.exists(entry.onlyIf)) return { action: 'skip', reason: `${entry.onlyIf} does not exist` };
  return { action: 'mount' };
}

/** The whole plan for one stage against fixed facts (the applier re-reads facts per entry). */
export function planEarlyMounts(
  table: readonly MountEntry[],
  stage: MountEntry['stage'],
  facts: MountFacts,
): { entry: MountEntry; decision: MountDecision }[] {
  return table.filter((entry) => entry.stage === stage).map((entry) => ({ entry, decision: decideMount(entry, facts) }));
}

export interface MountOutcome {
  target: string;
  result: 'mounted' | 'skipped' | 'failed';
  detail?: string;
}

function readMountedTargets(): Set<string> {
  try {
    return new Set(parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')).map((entry) => entry.target));
  } catch {
    // Before /proc is mounted nothing else is either (the initramfs is all there is).
    return new Set();
  }
}

/**
 * Mounts one stage of the table, in order. Facts are re-read before each entry because earlier
 * mounts change them (/proc makes mountinfo readable, /sys makes /sys/firmware/efi visible).
 * A failed mount throws when `stopOnError`, else it is reported and the next is tried.
 */
export async function applyMounts(
  native: Native,
  table: readonly MountEntry[],
  stage: MountEntry['stage'],
  options: { stopOnError: boolean; onMounted?: (target: string) => void } = { stopOnError: true },
): Promise<MountOutcome[]> {
  const outcomes: MountOutcome[] = [];
  for (const entry of table.filter((e) => e.stage === stage)) {
    const decision = decideMount(entry, { mounted: readMountedTargets(), exists: existsSync });
    if (decision.action === 'skip') {
      outcomes.push({ target: entry.target, result: 'skipped', detail: decision.reason });
      continue;
    }
    try {
      if (entry.mkdir) mkdirSync(entry.target, { recursive: true, mode: 0o755 });
      await native.mount({ source: entry.source, target: entry.target, fstype: entry.fstype, flags: entry.flags, data: entry.data });
      outcomes.push({ target: entry.target, result: 'mounted' });
      options.onMounted?.(entry.target);
    } catch (error) {
      const message = (error as Error).message;
      if (options.stopOnError) throw new Error(`mount ${entry.fstype} on ${entry.target}: ${message}`, { cause: error });
      outcomes.push({ target: entry.target, result: 'failed', detail: message });
    }
  }
  return outcomes;
}

/** Creates the /dev symlinks that are missing; returns the ones made. */
export function makeDevLinks(links: readonly { path: string; target: string }[] = DEV_LINKS): string[] {
  const made: string[] = [];
  for (const link of links) {
    try {
      symlinkSync(link.target, link.path);
      made.push(link.path);
    } catch {
      // Exists already (or /dev is not ours): nothing to do.
    }
  }
  return made;
}

/** Mount points under these are the kernel's API filesystems: they go down with the machine. */
const API_ROOTS = ['/proc', '/sys', '/dev', '/run', '/tmp'];

function isUnder(path: string, root: string): boolean {
  return path === root || path.startsWith(`${root}/`);
}

export type UnmountScope = { scope: 'all' } | { scope: 'own'; own: readonly string[] };

/**
 * What to unmount at shutdown, deepest first: every mount except `/` and the API filesystems
 * (scope `all`, a machine), or only the mounts mos made itself (scope `own`, PID 1 of a
 * namespace, which must not take down the host's mounts it can see).
 */
export function planUnmounts(mountinfo: readonly MountInfoEntry[], scope: UnmountScope): string[] {
  const own = scope.scope === 'own' ? new Set(scope.own) : null;
  const seen = new Set<string>();
  const targets: string[] = [];
  // mountinfo lists parents before children; reversed, children come first. Over-mounts of one
  // target appear once per layer; each needs its own umount.
  for (const entry of [...mountinfo].reverse()) {
    if (entry.target === '/') continue;
    if (own !== null) {
      if (!own.has(entry.target)) continue;
      if (seen.has(entry.target)) continue;
    } else if (API_ROOTS.some((root) => isUnder(entry.target, root))) {
      continue;
    }
    seen.add(entry.target);
    targets.push(entry.target);
  }
  // Stable sort by depth, deepest first: reverse mountinfo order already is, unless a parent was
  // mounted after its child's mount point was made elsewhere; depth makes it certain.
  const depth = (path: string) => path.split('/').length;
  return targets.map((target, index) => ({ target, index })).sort((a, b) => depth(b.target) - depth(a.target) || a.index - b.index).map((t) => t.target);
}

export interface UnmountOutcome {
  target: string;
  result: 'unmounted' | 'read-only' | 'failed';
  detail?: string;
}

/** umount2 each target; a busy one is remounted read-only instead (its data then is safe). */
export async function unmountAll(native: Native, targets: readonly string[]): Promise<UnmountOutcome[]> {
  const outcomes: UnmountOutcome[] = [];
  for (const target of targets) {
    try {
      await native.umount(target, 0);
      outcomes.push({ target, result: 'unmounted' });
    } catch (error) {
      try {
        await native.mount({ source: '', target, fstype: '', flags: REMOUNT | RDONLY });
        outcomes.push({ target, result: 'read-only', detail: (error as Error).message });
      } catch (remountError) {
        outcomes.push({ target, result: 'failed', detail: `${(error as Error).message}; ${(remountError as Error).message}` });
      }
    }
  }
  return outcomes;
}
