/**
 * The OCI runtime bundle's config.json for one container service, as crun (Debian's 1.8) reads it.
 *
 * Pure: the caller gathers the image process (init/storage/targets.ts `ImageProcess`), the
 * nsgroup's id range and the target's network type (init/trust/formats.ts `InstallTarget`), then
 * writes `JSON.stringify(config, null, 2)` next to the root. The output is deterministic: every
 * object is built in a fixed key order and the environment is sorted, so the same input gives the
 * same bytes.
 */
import { posix } from 'node:path';

export interface BundleInput {
  /** Service name; the container's hostname. */
  name: string;
  /** Absolute path of the container's root (the verity-backed overlay). */
  rootfs: string;
  process: { argv: string[]; env: Record<string, string>; cwd: string; uid: number; gid: number };
  /** null: no user namespace (nsgroup none), with a warning elsewhere. Container ids
   *  0..size-1 map to hostId..hostId+size-1, the same range for uids and gids. */
  idRange: { hostId: number; size: number } | null;
  /** host: no network namespace; none and simple: a new one (simple is configured from outside later). */
  network: 'host' | 'none' | 'simple';
  /** Path of an existing network namespace to join for 'simple' (e.g. /run/netns/mos-web), or null to create a fresh one. */
  netnsPath: string | null;
  limits: { pids?: number; memoryBytes?: number };
  /**
   * `linux.cgroupsPath`: the container's cgroup, relative to the cgroup2 root (crun's cgroupfs
   * manager makes it, applies `limits` there and removes it). Absent: crun's default.
   */
  cgroupsPath?: string;
  /** Bind mounts: e.g. storage volumes, the notify socket. */
  mounts: { source: string; destination: string; readOnly: boolean }[];
  /** If set, NOTIFY_SOCKET is in the env (crun's --notify-socket is a CLI matter, not in config.json). */
  notifySocket: string | null;
}

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciIdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

export type OciNamespaceType = 'pid' | 'network' | 'ipc' | 'uts' | 'mount' | 'user' | 'cgroup';

export interface OciNamespace {
  type: OciNamespaceType;
  path?: string;
}

export interface OciConfig {
  ociVersion: '1.0.2';
  process: {
    terminal: false;
    user: { uid: number; gid: number };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: {
      bounding: string[];
      effective: string[];
      inheritable: string[];
      permitted: string[];
      ambient: string[];
    };
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: true;
  };
  root: { path: string; readonly: false };
  hostname: string;
  mounts: OciMount[];
  linux: {
    uidMappings?: OciIdMapping[];
    gidMappings?: OciIdMapping[];
    cgroupsPath?: string;
    resources?: { pids?: { limit: number }; memory?: { limit: number } };
    namespaces: OciNamespace[];
    maskedPaths: string[];
    readonlyPaths: string[];
    // Seccomp: deliberately absent here. The caller adds `linux.seccomp` to the planned config
    // once the profile source is settled; this function never emits it.
  };
}

export type BundlePlanResult = { ok: true; config: OciConfig } | { ok: false; message: string };

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The Docker/podman default capability set. */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/asound',
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

/** Highest valid uid/gid: 2^32-1 is (uid_t)-1, "no id". */
export const MAX_ID = 2 ** 32 - 2;

function hasNul(s: string): boolean {
  return s.includes('\0');
}

function isId(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= MAX_ID;
}

function isNormalizedAbsolute(p: string): boolean {
  return p.startsWith('/') && posix.normalize(p) === p && (p === '/' || !p.endsWith('/'));
}

function fail(message: string): BundlePlanResult {
  return { ok: false, message };
}

/** Code-unit order, independent of the locale. */
function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function planBundleConfig(input: BundleInput): BundlePlanResult {
  const { name, rootfs, process: proc, idRange, network, netnsPath, limits, cgroupsPath, mounts, notifySocket } = input;

  // Names, paths and the process.
  if (name === '' || hasNul(name)) return fail(`invalid service name ${JSON.stringify(name)}`);
  if (hasNul(rootfs) || !rootfs.startsWith('/')) return fail(`rootfs must be an absolute path: ${JSON.stringify(rootfs)}`);
  if (proc.argv.length === 0) return fail('process argv is empty');
  for (const arg of proc.argv) {
    if (hasNul(arg)) return fail(`process argv contains a NUL byte: ${JSON.stringify(arg)}`);
  }
  if (hasNul(proc.cwd) || !proc.cwd.startsWith('/')) return fail(`process cwd must be an absolute path: ${JSON.stringify(proc.cwd)}`);
  for (const [key, value] of Object.entries(proc.env)) {
    if (key === '' || key.includes('=') || hasNul(key)) return fail(`invalid environment variable name ${JSON.stringify(key)}`);
    if (hasNul(value)) return fail(`environment variable ${key} contains a NUL byte`);
  }
  if (notifySocket !== null && (hasNul(notifySocket) || !notifySocket.startsWith('/'))) {
    return fail(`notify socket must be an absolute path: ${JSON.stringify(notifySocket)}`);
  }

  // Ids and the user namespace.
  if (!isId(proc.uid)) return fail(`process uid ${proc.uid} is not an id in 0..${MAX_ID}`);
  if (!isId(proc.gid)) return fail(`process gid ${proc.gid} is not an id in 0..${MAX_ID}`);
  if (idRange !== null) {
    if (!isId(idRange.hostId)) return fail(`id range host id ${idRange.hostId} is not an id in 0..${MAX_ID}`);
    if (!Number.isInteger(idRange.size) || idRange.size < 1) return fail(`id range size ${idRange.size} must be an integer >= 1`);
    if (idRange.hostId + idRange.size - 1 > MAX_ID) {
      return fail(`id range ${idRange.hostId}+${idRange.size} runs past the highest id ${MAX_ID}`);
    }
    if (proc.uid >= idRange.size) return fail(`process uid ${proc.uid} is outside the mapped range 0..${idRange.size - 1}`);
    if (proc.gid >= idRange.size) return fail(`process gid ${proc.gid} is outside the mapped range 0..${idRange.size - 1}`);
  }

  // Network.
  if (netnsPath !== null) {
    if (network !== 'simple') return fail(`a network namespace path is only joined for network simple, not ${network}`);
    if (hasNul(netnsPath) || !netnsPath.startsWith('/')) return fail(`network namespace path must be absolute: ${JSON.stringify(netnsPath)}`);
  }

  // Limits, in the container's own cgroup.
  if (cgroupsPath !== undefined && (hasNul(cgroupsPath) || !isNormalizedAbsolute(cgroupsPath) || cgroupsPath === '/')) {
    return fail(`cgroups path must be an absolute, normalized path below the cgroup root: ${JSON.stringify(cgroupsPath)}`);
  }
  const resources: NonNullable<OciConfig['linux']['resources']> = {};
  if (limits.pids !== undefined) {
    if (!Number.isSafeInteger(limits.pids) || limits.pids <= 0) return fail(`pids limit must be a positive integer: ${limits.pids}`);
    resources.pids = { limit: limits.pids };
  }
  if (limits.memoryBytes !== undefined) {
    if (!Number.isSafeInteger(limits.memoryBytes) || limits.memoryBytes <= 0) {
      return fail(`memory limit must be a positive integer: ${limits.memoryBytes}`);
    }
    resources.memory = { limit: limits.memoryBytes };
  }

  // Environment: KEY=VALUE sorted by key, PATH defaulted, NOTIFY_SOCKET set when there is one.
  const env: Record<string, string> = { ...proc.env };
  if (env.PATH === undefined) env.PATH = DEFAULT_PATH;
  if (notifySocket !== null) env.NOTIFY_SOCKET = notifySocket;
  const envList = Object.keys(env)
    .sort(compareKeys)
    .map((key) => `${key}=${env[key]}`);

  // Mounts.
  const userns = idRange !== null;
  const ociMounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      // gid=5 (tty) only exists on the host side; in a user namespace it may be unmapped and the
      // mount would fail, so it is left to the kernel's default there.
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', ...(userns ? [] : ['gid=5'])],
    },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    userns && network === 'host'
      ? // The kernel only lets a user namespace mount sysfs when it owns the current network
        // namespace. With network host the container stays in the host's network namespace (owned
        // by the initial user namespace), so a fresh sysfs mount is refused: bind the host's /sys
        // recursively and read-only instead.
        { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] }
      : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ];
  const seen = new Set(ociMounts.map((m) => m.destination));
  for (const m of mounts) {
    if (hasNul(m.destination) || !isNormalizedAbsolute(m.destination) || m.destination === '/') {
      return fail(`mount destination must be an absolute, normalized path other than /: ${JSON.stringify(m.destination)}`);
    }
    if (seen.has(m.destination)) return fail(`mount destination ${m.destination} is used twice`);
    if (hasNul(m.source) || !m.source.startsWith('/')) {
      return fail(`mount source for ${m.destination} must be an absolute path: ${JSON.stringify(m.source)}`);
    }
    seen.add(m.destination);
    ociMounts.push({ destination: m.destination, type: 'bind', source: m.source, options: m.readOnly ? ['rbind', 'ro'] : ['rbind'] });
  }

  // Namespaces.
  const namespaces: OciNamespace[] = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'cgroup' }];
  if (network !== 'host') namespaces.push(netnsPath !== null ? { type: 'network', path: netnsPath } : { type: 'network' });
  if (userns) namespaces.push({ type: 'user' });

  const mapping: OciIdMapping[] | null = idRange !== null ? [{ containerID: 0, hostID: idRange.hostId, size: idRange.size }] : null;
  const linux: OciConfig['linux'] = {
    ...(mapping !== null ? { uidMappings: mapping, gidMappings: mapping.map((m) => ({ ...m })) } : {}),
    ...(cgroupsPath !== undefined ? { cgroupsPath } : {}),
    ...(resources.pids !== undefined || resources.memory !== undefined ? { resources } : {}),
    namespaces,
    maskedPaths: [...MASKED_PATHS],
    readonlyPaths: [...READONLY_PATHS],
  };

  const config: OciConfig = {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: proc.uid, gid: proc.gid },
      args: [...proc.argv],
      env: envList,
      cwd: proc.cwd,
      capabilities: {
        bounding: [...DEFAULT_CAPABILITIES],
        effective: [...DEFAULT_CAPABILITIES],
        inheritable: [],
        permitted: [...DEFAULT_CAPABILITIES],
        ambient: [],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: rootfs, readonly: false },
    hostname: name,
    mounts: ociMounts,
    linux,
  };
  return { ok: true, config };
}
