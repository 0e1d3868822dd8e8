/**
 * The crun command lines mos runs for a container service, as data: `run` (the service's main
 * process), `exec` (`mosctl exec`), `kill` and `delete` (stop and clean up), the container id
 * for a service, and how crun's exit status reads as the service's exit.
 *
 * Pure: no process is started here. Every rule below was measured with Debian's crun 1.8.1 as
 * root on this project's hosts and in a TCG guest; docs/crun.md holds the commands and outputs,
 * and test/privileged/services-crun-runner.test.ts re-proves the ones mos relies on. The facts
 * that shape this file, in short (§ = docs/crun.md section):
 *
 * - `crun run` stays in the foreground until the container's init exits and exits with its code;
 *   a container killed by signal n reads as 128+n (§1). crun forwards every catchable signal it
 *   receives to the container's init (§1), but the init is in its own session (pgid = sid = its
 *   pid), so a signal to crun's process group reaches crun only, and a SIGKILL to crun orphans
 *   the running container (§1): the hard stop is a SIGKILL to the container's init (its host pid
 *   from `--pid-file`) or `crun kill ID SIGKILL`, never to crun.
 * - State lives in `--root`; it outlives a SIGKILLed crun, and a leftover id makes the next
 *   `run` fail with "container `ID` already exists" (exit 1). `crun delete --force ID` kills a
 *   running leftover and removes its state, and exits 0 when there is none (§1).
 * - The container's environment is config.json's alone (crun adds HOME=/); crun's own
 *   environment never reaches it except through crun's NOTIFY_SOCKET proxy (§2, §3), so crun is
 *   given an explicit, minimal environment: nothing inherited from mos.
 * - `crun exec ID -- CMD` runs a program named `--` (exit 255): crun 1.8 stops parsing options
 *   at the id, so no `--` is ever emitted and everything after the id is the command (§5).
 * - `crun kill ID BOGUS` exits 0 (an unknown signal name is not refused): names are checked here (§1).
 */
import { constants as osConstants } from 'node:os';
import { posix } from 'node:path';

/** Where Debian installs crun (and where initramfs/build.mjs puts it in the image). */
export const CRUN_PATH = '/usr/bin/crun';

/**
 * A container id: what `crun` accepts as a state directory name, narrowed to runc's character set
 * so ids stay portable. crun 1.8 itself checks almost nothing: `''`, `.` and `..` fail as "already
 * exists", `a/b` as "cannot create state directory", 300 characters as too long, `-x` is taken
 * for an option (exit 64), while spaces and `@:+` are accepted (§1).
 */
export const CRUN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** The prefix of every container id mos makes, so `crun list` tells mos's containers apart. */
export const CONTAINER_ID_PREFIX = 'mos-';

/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
export const SUN_PATH_MAX = 107;

/**
 * How crun manages cgroups. `disabled` is what a hybrid-cgroup host allows (crun refuses
 * otherwise; FACTS.md), but then config.json's `linux.resources` (pids, memory) are silently not
 * enforced: 100 processes started under a pids limit of 64 (§6). In the guest cgroup2 is pure and
 * `cgroupfs` works (§6).
 */
export type CrunCgroupManager = 'disabled' | 'cgroupfs';

/** The options every crun command of one machine shares. */
export interface CrunGlobalInput {
  /** Absolute path of the crun binary (CRUN_PATH). */
  crunPath: string;
  /** crun's `--root`: mos's own state directory (e.g. /run/mos/crun), never crun's default /run/crun. */
  stateRoot: string;
  cgroupManager: CrunCgroupManager;
}

/** A command to spawn: `argv[0]` is the absolute path to exec; `env` is complete (`KEY=VALUE`). */
export interface CrunCommand {
  argv: string[];
  env: string[];
}

export type CrunPlanResult = { ok: true; command: CrunCommand } | { ok: false; message: string };

export interface CrunRunInput extends CrunGlobalInput {
  /** The bundle directory holding config.json (services/bundle.ts). */
  bundleDir: string;
  id: string;
  /**
   * crun's readiness proxy: crun gets NOTIFY_SOCKET=<this host socket>, mounts its own socket into
   * the container at `<this path>/notify` (overriding config.json's NOTIFY_SOCKET) and, for every
   * datagram that contains READY=1, sends a bare `READY=1` as itself (sender pid = crun = the main
   * pid), then a BARRIER=1 whose fd the receiver must close at once (crun waits 30 s otherwise).
   * Everything else (STATUS=, WATCHDOG=1, MAINPID=, the rest of a READY datagram) is dropped; a
   * container that never sends READY=1 makes crun send nothing; a host socket missing at READY
   * time makes crun fail (exit 1) and remove the container (§3). Omit it for a service without
   * readiness, or when the bundle bind-mounts a socket of mos's and sets NOTIFY_SOCKET itself (the
   * direct way, which keeps WATCHDOG=1 and STATUS=; docs/crun.md "Recommendation").
   */
  notifySocket?: string;
  /** `--pid-file`: crun writes the container init's host pid there before the program runs (§1). */
  pidFile?: string;
  /**
   * `--no-pivot`: needed where crun's own root is the initramfs (`rootfs`, a mount without a
   * parent): pivot_root(2) fails there with EINVAL, measured in the guest (§6). Not needed on the
   * host, whatever the container's root (tmpfs and overlay both pivot fine).
   */
  noPivot?: boolean;
  /** `--preserve-fds=N`: fds 3..N+2 of crun pass to the container; any other fd is closed (§6). */
  preserveFds?: number;
}

export interface CrunExecInput extends CrunGlobalInput {
  id: string;
  /** The program and its arguments; the program is looked up in the container's PATH. */
  argv: string[];
  /**
   * Variables to add. crun 1.8's `--env` *replaces* the container's whole environment (PATH
   * included) rather than adding to it (§5), so with any variable here `configEnv` is required
   * and the planner passes the merged environment, these winning.
   */
  env?: Record<string, string>;
  /** config.json's `process.env` (`KEY=VALUE`), what exec inherits when no `--env` is given. */
  configEnv?: readonly string[];
  cwd?: string;
  /** In the container's ids (exec enters the container's user namespace, §5). */
  user?: { uid: number; gid: number };
  /** `--tty`: crun's own stdin must then be a terminal (`tcgetattr` fails otherwise, exit 1; §5). */
  tty?: boolean;
  pidFile?: string;
  preserveFds?: number;
}

export interface CrunKillInput extends CrunGlobalInput {
  id: string;
  /** A signal name as in `os.constants.signals` (SIGTERM, SIGKILL, …). */
  signal: string;
}

export interface CrunDeleteInput extends CrunGlobalInput {
  id: string;
  /**
   * Kill a running container first (SIGKILL to its init, which ends its whole PID namespace) and
   * remove its state; exits 0 also when there is no such container (§1).
   */
  force: boolean;
}

/** How a crun exit reads as the service's own exit, for `exitStatusText` and `isCleanExit`. */
export interface CrunExit {
  /** The container's exit code, or null when it (or crun) was killed by a signal. */
  code: number | null;
  /** The signal that killed the container's init (from 128+n), or crun itself. */
  signal: string | null;
  /**
   * crun itself died of a signal: it neither waited for nor killed the container, whose init may
   * still run (re-parented to mos) and whose state is left in `--root`. Clean up with
   * `planCrunDelete({ force: true })` before anything else.
   */
  crunKilled: boolean;
}

// ── helpers ─────────────────────────────────────────────────────────────────────────────────

function hasNul(s: string): boolean {
  return s.includes('\0');
}

function isNormalizedAbsolute(p: string): boolean {
  return !hasNul(p) && p.startsWith('/') && posix.normalize(p) === p && (p === '/' || !p.endsWith('/'));
}

function isId(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 2 ** 32 - 2;
}

/** Code-unit order, independent of the locale (stable argv for the same input). */
function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function fail(message: string): CrunPlanResult {
  return { ok: false, message };
}

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** The global part of every command line, or a reason it cannot be built. */
function globalArgs(input: CrunGlobalInput, id: string): string[] | string {
  if (!isNormalizedAbsolute(input.crunPath)) return `crun path must be an absolute, normalized path: ${JSON.stringify(input.crunPath)}`;
  if (!isNormalizedAbsolute(input.stateRoot) || input.stateRoot === '/') {
    return `crun state root must be an absolute, normalized path other than /: ${JSON.stringify(input.stateRoot)}`;
  }
  if (input.cgroupManager !== 'disabled' && input.cgroupManager !== 'cgroupfs') {
    return `unknown cgroup manager ${JSON.stringify(input.cgroupManager)}`;
  }
  if (!isCrunId(id)) return `invalid container id ${JSON.stringify(id)}: expected ${CRUN_ID_PATTERN}`;
  // The `=` forms keep every value one argument, whatever it starts with.
  return [input.crunPath, `--root=${input.stateRoot}`, `--cgroup-manager=${input.cgroupManager}`];
}

function checkPreserveFds(n: number | undefined): string | null {
  if (n === undefined) return null;
  return Number.isSafeInteger(n) && n >= 0 ? null : `preserve-fds must be a non-negative integer: ${n}`;
}

function checkPidFile(file: string | undefined): string | null {
  if (file === undefined) return null;
  return isNormalizedAbsolute(file) && file !== '/' ? null : `pid file must be an absolute, normalized path: ${JSON.stringify(file)}`;
}

// ── ids ─────────────────────────────────────────────────────────────────────────────────────

export function isCrunId(id: string): boolean {
  return CRUN_ID_PATTERN.test(id);
}

/**
 * The container id of a service: `mos-<name>`, the same on every run, so `mosctl exec` and a
 * cleanup after a crash can name it. Service names (init/supervisor/spec.ts SERVICE_NAME_PATTERN:
 * lowercase letters, digits, `_.-`, at most 63, starting alnum) always give a valid id; anything
 * else is a programming error and throws.
 */
export function crunContainerId(serviceName: string): string {
  const id = `${CONTAINER_ID_PREFIX}${serviceName}`;
  if (serviceName === '' || !isCrunId(id)) throw new RangeError(`service name ${JSON.stringify(serviceName)} gives no valid container id`);
  return id;
}

// ── commands ────────────────────────────────────────────────────────────────────────────────

/**
 * The paths crun's readiness proxy uses: its own socket under the state root (bound by crun, so
 * it must fit in sun_path: a 111-byte path failed with "bind socket to `/proc/self/fd/4`:
 * Address already in use", an 81-byte one worked; §3) and the NOTIFY_SOCKET the container sees.
 */
export function crunNotifyProxyPaths(stateRoot: string, id: string, hostSocket: string): { crunSocket: string; inContainer: string } {
  return { crunSocket: `${stateRoot}/${id}/notify/notify`, inContainer: `${hostSocket}/notify` };
}

/** `crun run`: the service's main process, in the foreground, with stdio inherited as given. */
export function planCrunRun(input: CrunRunInput): CrunPlanResult {
  const global = globalArgs(input, input.id);
  if (typeof global === 'string') return fail(global);
  if (!isNormalizedAbsolute(input.bundleDir) || input.bundleDir === '/') {
    return fail(`bundle directory must be an absolute, normalized path other than /: ${JSON.stringify(input.bundleDir)}`);
  }
  const pidFileProblem = checkPidFile(input.pidFile);
  if (pidFileProblem) return fail(pidFileProblem);
  const fdsProblem = checkPreserveFds(input.preserveFds);
  if (fdsProblem) return fail(fdsProblem);

  const env: string[] = [];
  if (input.notifySocket !== undefined) {
    const socket = input.notifySocket;
    // An abstract host socket (`@name`) is turned into a directory `/@name` in the container and
    // NOTIFY_SOCKET=@name/notify, which every sd_notify client reads as abstract: lost (§3).
    if (!isNormalizedAbsolute(socket) || socket === '/') return fail(`crun's notify proxy needs an absolute socket path: ${JSON.stringify(socket)}`);
    if (byteLength(socket) > SUN_PATH_MAX) return fail(`notify socket path is longer than ${SUN_PATH_MAX} bytes: ${socket}`);
    const { crunSocket, inContainer } = crunNotifyProxyPaths(input.stateRoot, input.id, socket);
    if (byteLength(crunSocket) > SUN_PATH_MAX) {
      return fail(`crun's notify proxy socket ${crunSocket} is longer than ${SUN_PATH_MAX} bytes: shorten the state root or the id`);
    }
    if (byteLength(inContainer) > SUN_PATH_MAX) return fail(`the container's notify socket ${inContainer} is longer than ${SUN_PATH_MAX} bytes`);
    env.push(`NOTIFY_SOCKET=${socket}`);
  }

  const argv = [
    ...global,
    'run',
    `--bundle=${input.bundleDir}`,
    ...(input.pidFile !== undefined ? [`--pid-file=${input.pidFile}`] : []),
    ...(input.noPivot === true ? ['--no-pivot'] : []),
    ...(input.preserveFds !== undefined && input.preserveFds > 0 ? [`--preserve-fds=${input.preserveFds}`] : []),
    input.id,
  ];
  return { ok: true, command: { argv, env } };
}

/**
 * `crun exec`: a program in a running container, with crun's stdio (pipes work; §5). It joins
 * the container's namespaces (user, PID, …). crun 1.8 runs it as 0:0 in / whatever config.json's
 * `process.user` and `cwd` say, so a caller that wants the service's own user and directory passes
 * them as `user` and `cwd` (mosctl exec does). The exit code passes through (128+n for a signal),
 * and a program that is not found exits 255.
 */
export function planCrunExec(input: CrunExecInput): CrunPlanResult {
  const global = globalArgs(input, input.id);
  if (typeof global === 'string') return fail(global);
  if (input.argv.length === 0 || input.argv[0] === '') return fail('exec argv is empty');
  for (const arg of input.argv) if (hasNul(arg)) return fail(`exec argv contains a NUL byte: ${JSON.stringify(arg)}`);
  const options: string[] = [];
  const added = input.env ?? {};
  if (Object.keys(added).length > 0) {
    if (input.configEnv === undefined) return fail("exec env needs configEnv: crun's --env replaces the container's environment");
    const env: Record<string, string> = {};
    for (const entry of input.configEnv) {
      const eq = entry.indexOf('=');
      if (eq <= 0 || hasNul(entry)) return fail(`invalid config environment entry ${JSON.stringify(entry)}`);
      env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    for (const [key, value] of Object.entries(added)) {
      if (key === '' || key.includes('=') || hasNul(key)) return fail(`invalid environment variable name ${JSON.stringify(key)}`);
      if (hasNul(value)) return fail(`environment variable ${key} contains a NUL byte`);
      env[key] = value;
    }
    for (const key of Object.keys(env).sort(compareKeys)) options.push(`--env=${key}=${env[key]}`);
  }
  if (input.cwd !== undefined) {
    if (!isNormalizedAbsolute(input.cwd)) return fail(`exec cwd must be an absolute, normalized path: ${JSON.stringify(input.cwd)}`);
    options.push(`--cwd=${input.cwd}`);
  }
  if (input.user !== undefined) {
    if (!isId(input.user.uid) || !isId(input.user.gid)) return fail(`exec user ${input.user.uid}:${input.user.gid} is not a pair of ids`);
    options.push(`--user=${input.user.uid}:${input.user.gid}`);
  }
  if (input.tty === true) options.push('--tty');
  const pidFileProblem = checkPidFile(input.pidFile);
  if (pidFileProblem) return fail(pidFileProblem);
  if (input.pidFile !== undefined) options.push(`--pid-file=${input.pidFile}`);
  const fdsProblem = checkPreserveFds(input.preserveFds);
  if (fdsProblem) return fail(fdsProblem);
  if (input.preserveFds !== undefined && input.preserveFds > 0) options.push(`--preserve-fds=${input.preserveFds}`);
  // No `--`: crun 1.8 would exec a program named "--". Options end at the id (§5).
  return { ok: true, command: { argv: [...global, 'exec', ...options, input.id, ...input.argv], env: [] } };
}

/** `crun kill ID SIGNAL`: to the container's init only (exit 1 when it no longer runs; §1). */
export function planCrunKill(input: CrunKillInput): CrunPlanResult {
  const global = globalArgs(input, input.id);
  if (typeof global === 'string') return fail(global);
  if (!isSignalName(input.signal)) return fail(`unknown signal ${JSON.stringify(input.signal)}`);
  return { ok: true, command: { argv: [...global, 'kill', input.id, input.signal], env: [] } };
}

/** `crun delete [--force] ID`: removes the state (without --force, only of a stopped container). */
export function planCrunDelete(input: CrunDeleteInput): CrunPlanResult {
  const global = globalArgs(input, input.id);
  if (typeof global === 'string') return fail(global);
  return { ok: true, command: { argv: [...global, 'delete', ...(input.force ? ['--force'] : []), input.id], env: [] } };
}

// ── results ─────────────────────────────────────────────────────────────────────────────────

function isSignalName(name: string): boolean {
  return Object.hasOwn(osConstants.signals, name) && name.startsWith('SIG');
}

/** Signal number → name, from Node's table (the 31 classic signals; no real-time names). */
function signalName(n: number): string | null {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === n) return name;
  return null;
}

/**
 * Reads `crun run`'s exit as the service's. crun passes the container init's exit code through
 * (0, 3, 255 measured) and reports an init killed by signal n as 128+n (SIGKILL 137; SIGTERM 143
 * where the init is not a PID-namespace init: an init of its own PID namespace cannot die of
 * SIGTERM at all, the kernel drops signals it has no handler for, and only SIGKILL is forced; §1).
 *
 * Ambiguities no status can settle: an init that exits 137 itself reads as SIGKILL, and crun's own
 * failures before the program ran (bad config, id in use, program not found) exit 1 (usage 64),
 * like a program's `exit 1`: crun's message on the service's stderr tells them apart.
 */
export function interpretCrunExit(code: number | null, signal: string | null): CrunExit {
  if (signal !== null) return { code: null, signal, crunKilled: true };
  if (code === null) return { code: null, signal: null, crunKilled: false };
  if (code > 128 && code < 128 + 32) {
    const name = signalName(code - 128);
    if (name !== null) return { code: null, signal: name, crunKilled: false };
  }
  return { code, signal: null, crunKilled: false };
}

/** The host pid in a `--pid-file` (crun writes the digits, no newline), or null when it is not one. */
export function parseCrunPidFile(text: string): number | null {
  const trimmed = text.trim();
  if (!/^[1-9]\d{0,9}$/.test(trimmed)) return null;
  const pid = Number(trimmed);
  return pid <= 2 ** 22 ? pid : null;
}
