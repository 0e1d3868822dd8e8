/**
 * An in-memory `Native` for unit tests: no syscalls, no processes. Tests drive it through its
 * public fields and helpers (`exit`, `deliverDatagram`, `failNextSpawn`, ...) and inspect what
 * the code under test asked for (`spawned`, `signals`, `mounts`, ...).
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:os';
import { DIGEST_SIZE, normalizePcrs, pcrPolicyDigest, PCR_COUNT, TPMA_NV, TPMA_NV_STATE } from '../init/trust/tpm-policy.ts';
import type {
  ChildExit,
  CredDatagram,
  Credentials,
  DmCreateOptions,
  DmDevice,
  DmTableLine,
  IdmappedBindOptions,
  LoadModuleOptions,
  LoopAttachOptions,
  LoopDevice,
  MountRequest,
  Native,
  NativeError,
  ReadableWatch,
  SignalWatch,
  SpawnOptions,
  SpawnStage,
  TpmError,
  TpmHashAlg,
  TpmNvDefinition,
  TpmNvPublic,
  TpmPcrSelection,
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
  private reusedPid: number | undefined;

  /** Test helper: the next spawn gets `pid`, as the kernel may hand out a freed pid again. */
  reusePidNext(pid: number): void {
    this.reusedPid = pid;
  }
  private nextFd = 100;

  spawn(options: SpawnOptions): number {
    const failure = this.failNextSpawn;
    this.failNextSpawn = undefined;
    if (failure?.stage === 'clone') throw createNativeError('clone', failure.code);

    const pid = this.reusedPid ?? this.nextPid++;
    this.reusedPid = undefined;
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

  /** Armed respawns by pid (`armRespawn`), as the addon keeps them. */
  readonly armedRespawns = new Map<number, { options: SpawnOptions; readinessChildFd?: number }>();

  reap(): ChildExit[] {
    const exits = this.pendingExits.splice(0);
    for (const exit of exits) {
      const armed = this.armedRespawns.get(exit.pid);
      if (!armed) continue;
      this.armedRespawns.delete(exit.pid);
      let readiness: [number, number] | undefined;
      const fds = [...armed.options.fds];
      if (armed.readinessChildFd !== undefined) {
        readiness = this.pipe();
        fds.push({ child: armed.readinessChildFd, parent: readiness[1] });
      }
      try {
        const pid = this.spawn({ ...armed.options, fds });
        exit.respawn = { pid, readinessFd: readiness ? readiness[0] : null };
      } catch (error) {
        if (readiness) this.close(readiness[0]);
        exit.respawn = { error: error as NativeError };
      } finally {
        if (readiness) this.close(readiness[1]);
      }
    }
    return exits;
  }

  armRespawn(pid: number, options: SpawnOptions, readinessChildFd?: number): void {
    if (readinessChildFd !== undefined && options.fds.some((fd) => fd.child === readinessChildFd)) {
      throw new TypeError(`readinessChildFd ${readinessChildFd} is already mapped in options.fds`);
    }
    this.armedRespawns.set(pid, { options, ...(readinessChildFd === undefined ? {} : { readinessChildFd }) });
  }

  disarmRespawn(pid: number): boolean {
    return this.armedRespawns.delete(pid);
  }

  /** The `watchChildren` callbacks; `deliverChildExits()` runs them as a SIGCHLD would. */
  readonly childWatchers = new Set<(exits: ChildExit[], error: NativeError | null) => void>();

  watchChildren(onExits: (exits: ChildExit[], error: NativeError | null) => void): SignalWatch {
    const entry = (exits: ChildExit[], error: NativeError | null) => onExits(exits, error);
    this.childWatchers.add(entry);
    return { signum: 17, close: () => void this.childWatchers.delete(entry) };
  }

  /** Test helper: a SIGCHLD arrives: reap, then hand the exits to every `watchChildren` callback. */
  deliverChildExits(): void {
    const exits = this.reap();
    if (exits.length === 0) return;
    for (const watcher of [...this.childWatchers]) watcher(exits, null);
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

  /** The fake has no kernel sockets: the control server's tests use the real addon. */
  listenUnixStream(path: string, _backlog: number): number {
    throw createNativeError('socket', 'ENOSYS', path);
  }

  acceptConnection(_fd: number): number | null {
    throw createNativeError('accept4', 'ENOSYS');
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

  /** Attached loop devices by path, with what they were attached with. */
  readonly loops = new Map<string, LoopAttachOptions>();
  /** Every loopAttach / loopDetach call, in order. */
  readonly loopCalls: ({ attach: LoopAttachOptions } | { detach: string })[] = [];
  /** Makes the next loopAttach reject with this errno name (naming /dev/loop-control). */
  failNextLoopAttach?: string;
  private nextLoop = 0;

  async loopAttach(options: LoopAttachOptions): Promise<LoopDevice> {
    this.loopCalls.push({ attach: options });
    const code = this.failNextLoopAttach;
    this.failNextLoopAttach = undefined;
    if (code !== undefined) throw createNativeError('open', code, '/dev/loop-control');
    const number = this.nextLoop++;
    const path = `/dev/loop${number}`;
    this.loops.set(path, options);
    return { path, number };
  }

  async loopDetach(path: string): Promise<void> {
    this.loopCalls.push({ detach: path });
    this.loops.delete(path);
  }

  /** Device-mapper devices by name: their table, node and status (`V` until `corruptDm`). */
  readonly dmDevices = new Map<string, { options: DmCreateOptions; device: DmDevice; status: string }>();
  /** Makes the next dmCreate reject with this errno name (at DM_TABLE_LOAD, as a bad table does). */
  failNextDmCreate?: string;
  /** Names that dmRemove refuses with EBUSY (still mounted). */
  readonly busyDm = new Set<string>();
  private nextDmMinor = 0;

  async dmCreate(options: DmCreateOptions): Promise<DmDevice> {
    const code = this.failNextDmCreate;
    this.failNextDmCreate = undefined;
    if (code !== undefined) throw createNativeError('DM_TABLE_LOAD', code, options.name);
    if (this.dmDevices.has(options.name)) throw createNativeError('DM_DEV_CREATE', 'EBUSY', options.name);
    const minor = this.nextDmMinor++;
    const device = { name: options.name, path: `/dev/dm-${minor}`, major: 253, minor };
    this.dmDevices.set(options.name, { options, device, status: 'V' });
    return device;
  }

  /** Test helper: the verity device has seen a corrupted block (status `C`). */
  corruptDm(name: string): void {
    this.dmDevices.get(name)!.status = 'C';
  }

  async dmStatus(name: string): Promise<DmTableLine[]> {
    const entry = this.dmDevices.get(name);
    if (!entry) throw createNativeError('DM_TABLE_STATUS', 'ENXIO', name);
    return entry.options.table.map((line) => ({ ...line, params: line.type === 'verity' ? entry.status : '' }));
  }

  async dmRemove(name: string): Promise<void> {
    if (this.busyDm.has(name)) throw createNativeError('DM_DEV_REMOVE', 'EBUSY', name);
    this.dmDevices.delete(name);
  }

  /** Every idmappedBind call that passed the argument checks, in order (also the failed ones). */
  readonly idmappedBinds: IdmappedBindOptions[] = [];
  /**
   * Makes the next idmappedBind reject at `step` with this errno name, as the addon does
   * (`mount_setattr EINVAL <source>`: the filesystem cannot be idmapped by this kernel).
   */
  failNextIdmappedBind?: { step: 'open_tree' | 'clone' | 'mount_setattr' | 'move_mount'; code: string };

  idmappedBind(options: IdmappedBindOptions): Promise<void> {
    // The addon's argument checks: TypeErrors thrown at the call, not rejections.
    for (const key of ['source', 'target'] as const) {
      if (typeof options[key] !== 'string') throw new TypeError(`options.${key} must be a string`);
      if (options[key] === '') throw new TypeError(`options.${key} must not be empty`);
    }
    const limit = 4294967295;
    const integer = (key: 'hostId' | 'size', min: number, max: number) => {
      const value = options[key];
      if (typeof value !== 'number') throw new TypeError(`options.${key} must be a number`);
      if (!Number.isInteger(value) || value < min || value > max) {
        throw new TypeError(`options.${key} must be an integer in [${min}, ${max}]`);
      }
    };
    integer('hostId', 0, limit - 1);
    integer('size', 1, limit);
    if (options.hostId + options.size > limit) {
      throw new TypeError(`options.hostId + options.size must not exceed ${limit}`);
    }
    if (typeof options.readOnly !== 'boolean') throw new TypeError('options.readOnly must be a boolean');
    this.idmappedBinds.push({ ...options });
    const failure = this.failNextIdmappedBind;
    this.failNextIdmappedBind = undefined;
    if (failure === undefined) return Promise.resolve();
    const subject =
      failure.step === 'move_mount' ? options.target : failure.step === 'clone' ? undefined : options.source;
    return Promise.reject(createNativeError(failure.step, failure.code, subject));
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

  readonly rootBinds: string[] = [];

  rootOntoBindMount(dir: string): void {
    this.rootBinds.push(dir);
  }

  async sync(): Promise<void> {
    this.syncs++;
  }

  killAll(signal: string): boolean {
    this.signalNumber(signal);
    this.killAllSignals.push(signal);
    return this.killAllResult;
  }

  /** How often `yieldCpu` was called. */
  yields = 0;

  yieldCpu(): void {
    this.yields++;
  }

  /** Every setV8Flags call, in order. */
  readonly v8Flags: string[] = [];

  setV8Flags(flags: string): void {
    this.v8Flags.push(flags);
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

  // ── TPM ───────────────────────────────────────────────────────────────────────────────────
  // One in-memory TPM, whatever the tcti string: NV indices with the TPM's access rules for the
  // attributes mos uses, PCR banks sha1 and sha256 (24 PCRs, zero as after TPM2_Startup), and
  // PolicyPCR enforcement through the same digest function the trust code uses. Errors carry
  // the codes and raw response codes the real TPM answers with.

  /** NV index → its public area (attributes include the state bits) and data. */
  readonly tpmNv = new Map<number, { public: TpmNvPublic; data: Buffer }>();
  /** PCR values per allocated bank; sha384 and sha512 are not allocated. */
  readonly tpmPcrs = new Map<TpmHashAlg, Buffer[]>([
    ['sha1', Array.from({ length: PCR_COUNT }, () => Buffer.alloc(20))],
    ['sha256', Array.from({ length: PCR_COUNT }, () => Buffer.alloc(32))],
  ]);
  /** TPM2_PT_NV_BUFFER_MAX. */
  tpmNvBufferMax = 1024;
  /** Every TPM call as `name tcti` (tests check what was asked, e.g. that nothing was written). */
  readonly tpmCalls: string[] = [];
  /** Makes the next call of `name` reject with this TPM error code (e.g. `TSS2_TCTI_RC_IO_ERROR`). */
  failNextTpm?: { call: string; code: string };

  /** Test helper: sets a PCR (as firmware would have measured it). */
  setPcr(bank: TpmHashAlg, pcr: number, value: Buffer): void {
    const values = this.fakePcrBank(bank);
    if (value.length !== DIGEST_SIZE[bank]) throw new RangeError(`a ${bank} PCR holds ${DIGEST_SIZE[bank]} bytes`);
    values[pcr] = Buffer.from(value);
  }

  /** Test helper: TPM2_PCR_Extend of one bank: PCR = H(PCR || digest). */
  extendPcr(bank: TpmHashAlg, pcr: number, digest: Buffer): void {
    const values = this.fakePcrBank(bank);
    values[pcr] = createHash(bank).update(values[pcr]!).update(digest).digest();
  }

  /**
   * Test helper: a TPM reset (reboot): PCRs back to zero, READLOCKED cleared, WRITELOCKED
   * cleared only for WRITE_STCLEAR indices (WRITEDEFINE locks persist), WRITTEN cleared for
   * CLEAR_STCLEAR indices.
   */
  resetTpm(): void {
    for (const [bank, values] of this.tpmPcrs) values.fill(Buffer.alloc(DIGEST_SIZE[bank]));
    for (const { public: pub } of this.tpmNv.values()) {
      pub.attributes &= ~TPMA_NV.READLOCKED;
      if (pub.attributes & TPMA_NV.WRITE_STCLEAR) pub.attributes &= ~TPMA_NV.WRITELOCKED;
      if (pub.attributes & TPMA_NV.CLEAR_STCLEAR) pub.attributes &= ~TPMA_NV.WRITTEN;
      pub.attributes >>>= 0;
    }
  }

  async tpmNvReadPublic(tcti: string, index: number): Promise<TpmNvPublic | null> {
    this.tpmCall('tpmNvReadPublic', tcti, 'Esys_TR_FromTPMPublic', index);
    const entry = this.tpmNv.get(index);
    return entry ? { ...entry.public, authPolicy: Buffer.from(entry.public.authPolicy) } : null;
  }

  async tpmNvDefine(tcti: string, definition: TpmNvDefinition): Promise<void> {
    const { index } = definition;
    this.tpmCall('tpmNvDefine', tcti, 'Esys_NV_DefineSpace', index);
    const nameAlg = definition.nameAlg ?? 'sha256';
    if (this.tpmNv.has(index)) throw createTpmError('Esys_NV_DefineSpace', 'TPM_RC_NV_DEFINED', index);
    if (definition.attributes & (TPMA_NV_STATE | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE)) {
      throw createTpmError('Esys_NV_DefineSpace', 'TPM_RC_ATTRIBUTES', index);
    }
    if (definition.authPolicy.length !== 0 && definition.authPolicy.length !== DIGEST_SIZE[nameAlg]) {
      throw createTpmError('Esys_NV_DefineSpace', 'TPM_RC_SIZE', index);
    }
    if (definition.size < 1 || definition.size > 2048) throw createTpmError('Esys_NV_DefineSpace', 'TPM_RC_NV_SIZE', index);
    this.tpmNv.set(index, {
      public: { index, size: definition.size, attributes: definition.attributes >>> 0, authPolicy: Buffer.from(definition.authPolicy), nameAlg },
      data: Buffer.alloc(definition.size, 0xff),
    });
  }

  async tpmNvWrite(tcti: string, index: number, data: Buffer): Promise<void> {
    const entry = this.fakeNvIndex('tpmNvWrite', tcti, index);
    const pub = entry.public;
    if (!(pub.attributes & TPMA_NV.OWNERWRITE)) throw createTpmError('Esys_NV_Write', 'TPM_RC_NV_AUTHORIZATION', index);
    if (pub.attributes & TPMA_NV.WRITELOCKED) throw createTpmError('Esys_NV_Write', 'TPM_RC_NV_LOCKED', index);
    if (data.length > pub.size) throw createTpmError('Esys_NV_Write', 'TPM_RC_NV_RANGE', index);
    // Like the addon: chunks of NV_BUFFER_MAX, each its own TPM2_NV_Write.
    for (let offset = 0; offset < data.length; offset += this.tpmNvBufferMax) {
      const chunk = data.subarray(offset, offset + this.tpmNvBufferMax);
      if (pub.attributes & TPMA_NV.WRITEALL && (offset !== 0 || chunk.length !== pub.size)) {
        throw createTpmError('Esys_NV_Write', 'TPM_RC_NV_RANGE', index);
      }
      chunk.copy(entry.data, offset);
      pub.attributes = (pub.attributes | TPMA_NV.WRITTEN) >>> 0;
    }
  }

  async tpmNvWriteLock(tcti: string, index: number): Promise<void> {
    const pub = this.fakeNvIndex('tpmNvWriteLock', tcti, index).public;
    if (!(pub.attributes & TPMA_NV.OWNERWRITE)) throw createTpmError('Esys_NV_WriteLock', 'TPM_RC_NV_AUTHORIZATION', index);
    if (!(pub.attributes & (TPMA_NV.WRITEDEFINE | TPMA_NV.WRITE_STCLEAR))) {
      throw createTpmError('Esys_NV_WriteLock', 'TPM_RC_ATTRIBUTES', index);
    }
    pub.attributes = (pub.attributes | TPMA_NV.WRITELOCKED) >>> 0;
  }

  async tpmNvUndefine(tcti: string, index: number): Promise<void> {
    const pub = this.fakeNvIndex('tpmNvUndefine', tcti, index).public;
    if (pub.attributes & TPMA_NV.POLICY_DELETE) throw createTpmError('Esys_NV_UndefineSpace', 'TPM_RC_ATTRIBUTES', index);
    this.tpmNv.delete(index);
  }

  async tpmNvRead(tcti: string, index: number): Promise<Buffer> {
    const entry = this.fakeNvIndex('tpmNvRead', tcti, index);
    const pub = entry.public;
    // Authorized by the index's own (empty) authValue: only with AUTHREAD.
    if (!(pub.attributes & TPMA_NV.AUTHREAD)) throw createTpmError('Esys_NV_Read', 'TPM_RC_AUTH_UNAVAILABLE', index);
    if (pub.attributes & TPMA_NV.READLOCKED) throw createTpmError('Esys_NV_Read', 'TPM_RC_NV_LOCKED', index);
    if (!(pub.attributes & TPMA_NV.WRITTEN)) throw createTpmError('Esys_NV_Read', 'TPM_RC_NV_UNINITIALIZED', index);
    return Buffer.from(entry.data);
  }

  async tpmNvReadWithPcrPolicy(tcti: string, index: number, policy: TpmPcrSelection): Promise<Buffer> {
    const entry = this.fakeNvIndex('tpmNvReadWithPcrPolicy', tcti, index);
    const pub = entry.public;
    const pcrs = normalizePcrs(policy.pcrs);
    const values = this.fakePcrBank(policy.bank, 'Esys_PolicyPCR');
    const nameAlg = pub.nameAlg as TpmHashAlg;
    const sessionDigest = pcrPolicyDigest(policy.bank, pcrs, pcrs.map((pcr) => values[pcr]!), nameAlg);
    if (!(pub.attributes & TPMA_NV.POLICYREAD)) throw createTpmError('Esys_NV_Read', 'TPM_RC_NV_AUTHORIZATION', index);
    if (!sessionDigest.equals(pub.authPolicy)) throw createTpmError('Esys_NV_Read', 'TPM_RC_POLICY_FAIL', index);
    if (pub.attributes & TPMA_NV.READLOCKED) throw createTpmError('Esys_NV_Read', 'TPM_RC_NV_LOCKED', index);
    if (!(pub.attributes & TPMA_NV.WRITTEN)) throw createTpmError('Esys_NV_Read', 'TPM_RC_NV_UNINITIALIZED', index);
    return Buffer.from(entry.data);
  }

  async tpmPcrRead(tcti: string, bank: TpmHashAlg, pcrs: number[]): Promise<Buffer[]> {
    this.tpmCall('tpmPcrRead', tcti, 'Esys_PCR_Read', undefined, bank);
    for (const pcr of pcrs) {
      if (!Number.isInteger(pcr) || pcr < 0 || pcr >= PCR_COUNT) throw new TypeError('pcrs[] must be an integer in [0, 23]');
    }
    const values = this.fakePcrBank(bank, 'Esys_PCR_Read');
    return pcrs.map((pcr) => Buffer.from(values[pcr]!));
  }

  private tpmCall(name: string, tcti: string, syscall: string, index?: number, subject?: string): void {
    if (!/^(device|swtpm):./.test(tcti)) {
      throw new TypeError(`tcti must be device:<path> or swtpm:host=<host>,port=<port>, not ${tcti}`);
    }
    this.tpmCalls.push(`${name} ${tcti}`);
    const failure = this.failNextTpm;
    if (failure?.call === name) {
      this.failNextTpm = undefined;
      throw createTpmError(syscall, failure.code, index, subject);
    }
  }

  private fakeNvIndex(name: string, tcti: string, index: number) {
    this.tpmCall(name, tcti, 'Esys_TR_FromTPMPublic', index);
    const entry = this.tpmNv.get(index);
    if (!entry) throw createTpmError('Esys_TR_FromTPMPublic', 'TPM_RC_HANDLE', index);
    return entry;
  }

  private fakePcrBank(bank: TpmHashAlg, syscall = 'Esys_PCR_Read'): Buffer[] {
    const values = this.tpmPcrs.get(bank);
    if (!values) throw createTpmError(syscall, 'PCR_UNAVAILABLE', undefined, bank);
    return values;
  }

  private allocateFd(): number {
    const fd = this.nextFd++;
    this.openFds.add(fd);
    return fd;
  }
}

/** Raw response codes the fake answers with: those a real TPM gives for the same failure. */
const FAKE_TPM_RC: Record<string, number> = {
  TPM_RC_HANDLE: 0x18b, // handle 1
  TPM_RC_POLICY_FAIL: 0x99d, // session 1
  TPM_RC_ATTRIBUTES: 0x2c2, // parameter 2
  TPM_RC_SIZE: 0x1d5, // parameter 1
  TPM_RC_AUTH_UNAVAILABLE: 0x12f,
  TPM_RC_NV_RANGE: 0x146,
  TPM_RC_NV_SIZE: 0x147,
  TPM_RC_NV_LOCKED: 0x148,
  TPM_RC_NV_AUTHORIZATION: 0x149,
  TPM_RC_NV_UNINITIALIZED: 0x14a,
  TPM_RC_NV_DEFINED: 0x14c,
  TSS2_TCTI_RC_IO_ERROR: 0xa000a,
  PCR_UNAVAILABLE: 0,
};

/** A TpmError as the addon makes it: message `<syscall> <CODE>[ <subject>]`. */
export function createTpmError(syscall: string, code: string, index?: number, subject?: string): TpmError {
  const about = subject ?? (index === undefined ? undefined : `0x${index.toString(16).padStart(8, '0')}`);
  const error = new Error(about === undefined ? `${syscall} ${code}` : `${syscall} ${code} ${about}`);
  return Object.assign(error, {
    code,
    rc: FAKE_TPM_RC[code] ?? 0,
    syscall,
    ...(about === undefined ? {} : { subject: about }),
  });
}
