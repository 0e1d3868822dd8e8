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
  MountRequest,
  Native,
  NativeError,
  ReadableWatch,
  SpawnOptions,
  SpawnStage,
} from './types.ts';

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
  }

  private allocateFd(): number {
    const fd = this.nextFd++;
    this.openFds.add(fd);
    return fd;
  }
}
