/**
 * A container target as the supervisor runs it: its OCI bundle (config.json from bundle.ts, in
 * its nsgroup's user namespace and its network) and the `crun run` command that is the service's
 * main process. Pure: writing the bundle and the notify socket's mount point is the caller's.
 *
 * The service's readiness and watchdog reach mos directly: mos's own sd_notify socket is bound
 * into the container (crun's proxy would pass READY=1 only, and from crun's pid), and mos
 * attributes its messages to the container's init and its session (init/supervisor).
 */
import { posix } from 'node:path';
import { planBundleConfig, type OciConfig } from './bundle.ts';
import { crunContainerId, planCrunRun, type CrunCgroupManager } from './crun.ts';
import type { IdRange } from './idmap.ts';

/**
 * Every container's cgroup is `<CONTAINER_CGROUP_PARENT>/<name>` below the cgroup2 root, where
 * mos enables the memory and pids controllers (init/boot/container-phase.ts) and reads usage.
 */
export const CONTAINER_CGROUP_PARENT = '/mos';
/** Where the guest mounts cgroup2 (init/boot/mounts.ts). */
export const CGROUP2_ROOT = '/sys/fs/cgroup';

/** A container's cgroup v2 limits (the install target's `limits`). */
export interface ContainerLimits {
  memoryBytes?: number;
  pids?: number;
}

/** Where mos's notify socket appears inside a container (`$NOTIFY_SOCKET`). */
export const NOTIFY_SOCKET_IN_CONTAINER = '/run/mos/notify';

/**
 * What every container's rootfs must have before crun runs it: the mount points of the bundle's
 * mounts that lie directly in the rootfs, and the notify socket's. crun would make missing ones
 * as the container's root, which a user namespace's root cannot do in an image owned by the
 * host's root; mos makes them when it activates the overlay (init/storage/activate.ts).
 */
export const CONTAINER_MOUNT_POINTS: { readonly dirs: readonly string[]; readonly files: readonly string[] } = {
  dirs: ['/dev', '/proc', '/sys'],
  files: [NOTIFY_SOCKET_IN_CONTAINER],
};

export interface ContainerInput {
  name: string;
  /** The container's root filesystem: the verity-backed overlay. */
  rootfs: string;
  process: { argv: string[]; env: Record<string, string>; cwd: string; uid?: number; gid?: number };
  /** The nsgroup's range; null: nsgroup none, the host's ids (no user namespace). */
  idRange: IdRange | null;
  network: { type: 'host' | 'none' | 'simple'; netnsPath: string | null };
  /** mos's sd_notify socket on the host, when the service reports readiness by sd_notify. */
  notifySocket: string | null;
  /** The sd_notify watchdog interval; 0: none. */
  watchdogMs: number;
  /** cgroup v2 limits; only the cgroupfs manager can enforce them (planContainer refuses otherwise). */
  limits: ContainerLimits;
  /** Where bundles (`<bundlesDir>/<name>`) and crun's state and pid files go. */
  dirs: { bundlesDir: string; crunStateRoot: string };
  crun: { path: string; cgroupManager: CrunCgroupManager; noPivot: boolean };
  /** linux.seccomp for config.json, when there is a profile. */
  seccomp?: unknown;
}

export type ContainerPlan =
  | {
      ok: true;
      bundleDir: string;
      config: OciConfig;
      /** crun's argv: the service's program (argv[0] absolute). */
      argv: string[];
      run: { id: string; stateRoot: string; pidFile: string; cgroupDir?: string; limits?: ContainerLimits };
    }
  | { ok: false; message: string };

export function planContainer(input: ContainerInput): ContainerPlan {
  let id: string;
  try {
    id = crunContainerId(input.name);
  } catch (error) {
    return { ok: false, message: (error as Error).message };
  }
  const limited = input.limits.memoryBytes !== undefined || input.limits.pids !== undefined;
  // With cgroups disabled crun would start the container without its limits: refuse instead of
  // running it looser than its signed manifest says.
  if (limited && input.crun.cgroupManager !== 'cgroupfs') {
    return { ok: false, message: `container ${input.name}: its limits need crun's cgroupfs manager, and this machine runs crun with cgroups ${input.crun.cgroupManager}` };
  }
  const cgroupsPath = posix.join(CONTAINER_CGROUP_PARENT, input.name);
  const env: Record<string, string> = { ...input.process.env };
  if (input.notifySocket !== null && input.watchdogMs > 0) {
    env.WATCHDOG_USEC = String(input.watchdogMs * 1000);
    // The container's init is pid 1 in its namespace; sd_notify clients compare with getpid().
    env.WATCHDOG_PID = '1';
  }
  const planned = planBundleConfig({
    name: input.name,
    rootfs: input.rootfs,
    process: { argv: input.process.argv, env, cwd: input.process.cwd, uid: input.process.uid ?? 0, gid: input.process.gid ?? 0 },
    idRange: input.idRange,
    network: input.network.type,
    netnsPath: input.network.netnsPath,
    limits: input.limits,
    cgroupsPath,
    mounts: input.notifySocket !== null ? [{ source: input.notifySocket, destination: NOTIFY_SOCKET_IN_CONTAINER, readOnly: false }] : [],
    notifySocket: input.notifySocket !== null ? NOTIFY_SOCKET_IN_CONTAINER : null,
  });
  if (!planned.ok) return { ok: false, message: `container ${input.name}: ${planned.message}` };
  const config = planned.config;
  const missing = rootfsMountPoints(config).filter((dir) => !CONTAINER_MOUNT_POINTS.dirs.includes(dir));
  if (missing.length > 0) return { ok: false, message: `container ${input.name}: no mount point is made for ${missing.join(', ')}` };
  if (input.seccomp !== undefined) (config.linux as Record<string, unknown>).seccomp = input.seccomp;

  const bundleDir = posix.join(input.dirs.bundlesDir, input.name);
  const pidFile = posix.join(input.dirs.bundlesDir, input.name, 'init.pid');
  const command = planCrunRun({
    crunPath: input.crun.path,
    stateRoot: input.dirs.crunStateRoot,
    cgroupManager: input.crun.cgroupManager,
    bundleDir,
    id,
    pidFile,
    noPivot: input.crun.noPivot,
  });
  if (!command.ok) return { ok: false, message: `container ${input.name}: ${command.message}` };
  return {
    ok: true,
    bundleDir,
    config,
    argv: command.command.argv,
    run: {
      id,
      stateRoot: input.dirs.crunStateRoot,
      pidFile,
      ...(input.crun.cgroupManager === 'cgroupfs' ? { cgroupDir: posix.join(CGROUP2_ROOT, cgroupsPath) } : {}),
      ...(limited ? { limits: { ...input.limits } } : {}),
    },
  };
}

/**
 * The mount destinations that lie directly in the rootfs, not inside another mount of the
 * config (/dev/pts is in crun's /dev tmpfs, which crun makes as it likes). Bind mounts of files
 * (the notify socket) are left out: their point is a file.
 */
export function rootfsMountPoints(config: OciConfig): string[] {
  const destinations = config.mounts.filter((mount) => mount.destination !== NOTIFY_SOCKET_IN_CONTAINER).map((mount) => mount.destination);
  const all = config.mounts.map((mount) => mount.destination);
  return destinations.filter((destination) => !all.some((other) => other !== destination && destination.startsWith(`${other}/`)));
}
