/**
 * An in-memory `Native` for unit tests: no syscalls, no processes. Tests drive it through its
 * public fields and helpers (`exit`, `deliverDatagram`, `failNextSpawn`, ...) and inspect what
 * the code under test asked for (`spawned`, `signals`, `mounts`, ...).
 */
import { constants } from 'node:os';
import type {
  ChildExit,
  CredDatagram,
  Credentials,
  LoadModuleOptions,
  MountRequest,
  Native,
  NativeError,
  ReadableWatch,
  SignalWatch,
  SpawnOptions,
  SpawnStage,
} from './types.ts';

/** glibc's signal numbers on x86-64 Linux, for the fake's `signalNumber` (SIGRTMIN is 34). */
const FAKE_SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8,
  SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
  SIGSTKFLT: 16, SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22,
  SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28, SIGIO: 29,
  SIGPWR: 30, SIGSYS: 31,
};
const FAKE_SIGRTMIN = 34;
const FAKE_SIGRTMAX = 64;

/**
 * A NativeError as the addon makes it: message `<syscall> <CODE>[ <path>]`, `errno` from
 * `os.constants.errno` (positive, 0 for an unknown code).
 */
export function createNativeError(
  syscall: string,
  code: string,
  path?: string,
  extra?: { pid?: number },
): NativeError {
  const errnoTable = constants.errno as Record<string, number | undefined>;
  const error = new Error(path === undefined ? `${syscall} ${code}` : `${syscall} ${code} ${path}`);
  return Object.assign(error, {
    code,
    errno: errnoTable[code] ?? 0,
    syscall,
    ...(path === undefined ? {} : { path }),
    ...(extra?.pid === undefined ? {} : { pid: extra.pid }),
  });
}

export type SignalRecord = { pid: number; signal: string } | { pgid: number; signal: string };

/** The process group a fake child is in when spawned without `setsid`: ours. */
const OWN_PROCESS_GROUP = 1;

export class FakeNative implements Native {
  /** Every successful or failed spawn (except `clone` failures, which create no child). */
  readonly spawned: { pid: number; options: SpawnOptions }[] = [];
  /** Makes the next spawn fail at `stage` with errno name `code`, like a child that could not exec. */
  failNextSpawn?: { stage: SpawnStage; code: string };
  /** Every kill / killProcessGroup call, in order. */
  readonly signals: SignalRecord[] = [];
  /** Pids spawned and not yet exited, with their process group. */
  readonly living = new Map<number, { pgid: number }>();
  /** Exits `reap()` will return next. */
  readonly pendingExits: ChildExit[] = [];
  subreaper = false;

  /** Fds handed out by `pipe`/`bindCredDatagramSocket` and not yet closed. */
  readonly openFds = new Set<number>();
  readonly closedFds: number[] = [];
  readonly nonBlocking = new Map<number, boolean>();
  /** Socket fd -> the path it was bound to. */
  readonly boundSockets = new Map<number, string>();
  /** Socket fd -> datagrams waiting to be received. */
  readonly datagrams = new Map<number, CredDatagram[]>();
  /** Connected socket fd -> the peer's credentials, for `peerCredentials`. */
  readonly peers = new Map<number, Credentials>();
  readonly readableWatchers = new Map<number, () => void>();

  readonly mounts: MountRequest[] = [];
  readonly umounts: { target: string; flags: number }[] = [];
  /** Makes the next mount / umount reject with this errno name. */
  failNextMount?: string;
  failNextUmount?: string;
  readonly reboots: ('restart' | 'halt' | 'poweroff')[] = [];
  /** Makes `reboot` throw this errno name (like a reboot(2) that returned). */
  failReboot?: string;

  /** Every loadModule call, in order (also the failed ones). */
  readonly loadedModules: { path: string; params: string; compressed: boolean }[] = [];
  /** Module path -> errno name its load fails with (e.g. `EEXIST`, `ENOENT`). */
  readonly failModules = new Map<string, string>();
  /** Signal number -> the callbacks watching it. */
  readonly signalWatchers = new Map<number, Set<(signum: number) => void>>();
  ctrlAltDelSignal = false;
  /** Makes setCtrlAltDelSignal throw this errno name. */
  failCtrlAltDel?: string;
  /** What `bootTimeMs` returns; tests move it forward. */
  bootTime = 1000;
  readonly mknods: { path: string; mode: number; major: number; minor: number }[] = [];
  syncs = 0;
  /** Every killAll signal, in order. */
  readonly killAllSignals: string[] = [];
  /** What `killAll` returns (whether anything got the signal). */
  killAllResult = false;

  private nextPid = 1000;
  private nextFd = 100;

  spawn(options: SpawnOptions): number {
    const failure = this.failNextSpawn;
    this.failNextSpawn = undefined;
    if (failure?.stage === 'clone') throw createNativeError('clone', failure.code);

    const pid = this.nextPid++;
    this.spawned.push({ pid, options });
    if (failure) {
      // Like the real child: it ran up to the failed step, exited with 127 and awaits reaping.
      this.pendingExits.push({ pid, code: 127, signal: null, core: false });
      const subject =
        failure.stage === 'execve' ? options.file : failure.stage === 'chdir' ? options.cwd : undefined;
      throw createNativeError(failure.stage, failure.code, subject, { pid });
    }
    this.living.set(pid, { pgid: options.setsid ? pid : OWN_PROCESS_GROUP });
    return pid;
  }

  /** Test helper: `pid` exits (code 0 when neither code nor signal is given) and awaits reaping. */
  exit(pid: number, how: { code?: number; signal?: string; core?: boolean } = {}): void {
    this.living.delete(pid);
    const signal = how.signal ?? null;
    const code = signal === null ? (how.code ?? 0) : null;
    this.pendingExits.push({ pid, code, signal, core: how.core ?? false });
  }

  isAlive(pid: number): boolean {
    return this.living.has(pid);
  }

  reap(): ChildExit[] {
    return this.pendingExits.splice(0);
  }

  kill(pid: number, signal: string): boolean {
    this.signals.push({ pid, signal });
    return this.living.has(pid);
  }

  killProcessGroup(pgid: number, signal: string): boolean {
    this.signals.push({ pgid, signal });
    return [...this.living.values()].some((process) => process.pgid === pgid);
  }

  setChildSubreaper(): void {
    this.subreaper = true;
  }

  pipe(): [number, number] {
    const readFd = this.allocateFd();
    const writeFd = this.allocateFd();
    return [readFd, writeFd];
  }

  close(fd: number): void {
    this.openFds.delete(fd);
    this.closedFds.push(fd);
  }

  setNonBlocking(fd: number, on: boolean): void {
    this.nonBlocking.set(fd, on);
  }

  bindCredDatagramSocket(path: string): number {
    const fd = this.allocateFd();
    this.boundSockets.set(fd, path);
    this.datagrams.set(fd, []);
    return fd;
  }

  receiveCredDatagrams(fd: number, max: number): CredDatagram[] {
    const queue = this.datagrams.get(fd);
    if (!queue) return [];
    return queue.splice(0, Math.max(0, max));
  }

  /** Test helper: queues a datagram on `fd` and, like the event loop would, fires its watcher. */
  deliverDatagram(fd: number, data: string | Buffer, cred: Credentials, fds: number[] = []): void {
    const queue = this.datagrams.get(fd) ?? [];
    this.datagrams.set(fd, queue);
    queue.push({ data: Buffer.from(data), cred, fds });
    this.readableWatchers.get(fd)?.();
  }

  peerCredentials(fd: number): Credentials {
    const peer = this.peers.get(fd);
    if (!peer) throw createNativeError('getsockopt', 'ENOTSOCK');
    return peer;
  }

  watchReadable(fd: number, onReadable: () => void): ReadableWatch {
    this.readableWatchers.set(fd, onReadable);
    return {
      close: () => {
        // Idempotent, and never removes a newer watcher of the same fd.
        if (this.readableWatchers.get(fd) === onReadable) this.readableWatchers.delete(fd);
      },
    };
  }

  async mount(request: MountRequest): Promise<void> {
    this.mounts.push(request);
    const code = this.failNextMount;
    this.failNextMount = undefined;
    if (code !== undefined) throw createNativeError('mount', code, request.target);
  }

  async umount(target: string, flags: number): Promise<void> {
    this.umounts.push({ target, flags });
    const code = this.failNextUmount;
    this.failNextUmount = undefined;
    if (code !== undefined) throw createNativeError('umount2', code, target);
  }

  reboot(command: 'restart' | 'halt' | 'poweroff'): void {
    this.reboots.push(command);
    const code = this.failReboot;
    if (code !== undefined) throw createNativeError('reboot', code);
  }

  async loadModule(path: string, params: string, options: LoadModuleOptions = {}): Promise<void> {
    this.loadedModules.push({ path, params, compressed: options.compressed ?? false });
    const code = this.failModules.get(path);
    if (code !== undefined) throw createNativeError('finit_module', code, path);
  }

  watchSignal(signum: number, onSignal: (signum: number) => void): SignalWatch {
    if (signum === 9 || signum === 19) throw createNativeError('uv_signal_start', 'EINVAL');
    const watchers = this.signalWatchers.get(signum) ?? new Set();
    this.signalWatchers.set(signum, watchers);
    // A fresh function per watch, so the same callback can be watched twice and closed once.
    const entry = (n: number) => onSignal(n);
    watchers.add(entry);
    return { signum, close: () => void watchers.delete(entry) };
  }

  /** Test helper: delivers `signum` to every watch of it, as the event loop would. */
  deliverSignal(signum: number): void {
    for (const watcher of [...(this.signalWatchers.get(signum) ?? [])]) watcher(signum);
  }

  setCtrlAltDelSignal(): void {
    const code = this.failCtrlAltDel;
    if (code !== undefined) throw createNativeError('reboot', code, 'CAD_OFF');
    this.ctrlAltDelSignal = true;
  }

  bootTimeMs(): number {
    return this.bootTime;
  }

  mknod(path: string, mode: number, major: number, minor: number): void {
    this.mknods.push({ path, mode, major, minor });
  }

  async sync(): Promise<void> {
    this.syncs++;
  }

  killAll(signal: string): boolean {
    this.signalNumber(signal);
    this.killAllSignals.push(signal);
    return this.killAllResult;
  }

  signalNumber(name: string): number {
    const fixed = FAKE_SIGNALS[name];
    if (fixed !== undefined) return fixed;
    if (name === 'SIGRTMIN') return FAKE_SIGRTMIN;
    if (name === 'SIGRTMAX') return FAKE_SIGRTMAX;
    const rt = /^SIGRTMIN\+(\d{1,2})$/.exec(name);
    if (rt && FAKE_SIGRTMIN + Number(rt[1]) <= FAKE_SIGRTMAX) return FAKE_SIGRTMIN + Number(rt[1]);
    throw new TypeError(`signalNumber: unknown signal ${name}`);
  }

  private allocateFd(): number {
    const fd = this.nextFd++;
    this.openFds.add(fd);
    return fd;
  }
}
