/**
 * The one narrow port between mos and the kernel.
 *
 * Every function is one syscall sequence with no policy: TypeScript decides what to do, the addon
 * only does it. Failures throw a `NativeError` whose message reads like `mount ENOENT /sysroot`
 * (syscall, errno name, subject) and whose fields carry the same facts for code.
 *
 * Implementations: `native/index.ts` loads the C++ addon; `native/fake.ts` is an in-memory fake
 * for unit tests.
 */

/** One child fd and the parent fd it is a copy of (`dup2(parentFd, childFd)` in the child). */
export interface FdMapping {
  child: number;
  parent: number;
}

export interface SpawnOptions {
  /** Absolute path of the executable: PATH search is policy and happens in TypeScript. */
  file: string;
  /** argv, including argv[0]. */
  argv: string[];
  /** Complete environment as `KEY=VALUE` strings. */
  env: string[];
  /** Working directory; the child fails at `chdir` when it does not exist. */
  cwd?: string;
  /**
   * chroot(2) into this directory first (stage `chroot`); `cwd` is then taken inside it (default
   * `/`). For services whose filesystem is a mounted image, until they run in containers.
   */
  root?: string;
  /**
   * The child's fds. Every fd not named here is closed at exec, so 0, 1 and 2 should always be
   * mapped (to /dev/null when nothing else).
   */
  fds: FdMapping[];
  /** Start a new session (and so a new process group whose id is the child's pid). */
  setsid?: boolean;
  /** Drop to these ids before exec (setgroups, setresgid, setresuid). */
  uid?: number;
  gid?: number;
  groups?: number[];
  /**
   * Names of variables to set to the child's own pid, e.g. `WATCHDOG_PID` or `LISTEN_PID`: only
   * the child knows its pid before exec.
   */
  pidEnv?: string[];
}

/** Where a failed spawn stopped: the child reports its last step before it could exec. */
export type SpawnStage = 'clone' | 'setsid' | 'dup2' | 'chroot' | 'chdir' | 'setgroups' | 'setgid' | 'setuid' | 'execve';

/** `loopAttach`: a loop device over (part of) a file. */
export interface LoopAttachOptions {
  /** The backing file (opened O_RDONLY when `readOnly`, else O_RDWR). */
  file: string;
  /** Byte offset into the file (default 0); a multiple of 512. */
  offset?: number;
  /** Bytes of the file the device shows from `offset` (default: to the end); a multiple of 512. */
  sizeLimit?: number;
  /** LO_FLAGS_READ_ONLY. */
  readOnly: boolean;
  /**
   * LO_FLAGS_AUTOCLEAR: the kernel detaches the device at its last close. `loopAttach` closes its
   * own fd before it resolves, so with nothing else holding the device that is at once. To have
   * a device go when its user (a mount, a dm table) lets go, call `loopDetach` while it is in
   * use: the kernel then sets autoclear itself.
   */
  autoclear?: boolean;
  /** LO_FLAGS_DIRECT_IO: no double caching of the backing file's pages. */
  directIo?: boolean;
}

export interface LoopDevice {
  /** `/dev/loopN`. */
  path: string;
  /** N. */
  number: number;
}

/** One line of a device-mapper table; start and length are in 512-byte sectors. */
export interface DmTableLine {
  start: number;
  length: number;
  /** The target type, e.g. `verity`, `linear`. */
  type: string;
  /** The target's parameters (in a table), or its status line (from `dmStatus`). */
  params: string;
}

export interface DmCreateOptions {
  /** The device's name (`/dev/mapper/<name>` with udev; we use the dm-N node). At most 127 bytes. */
  name: string;
  /** Optional DM uuid, at most 128 bytes. */
  uuid?: string;
  /** DM_READONLY_FLAG on the table. */
  readOnly: boolean;
  table: DmTableLine[];
}

export interface DmDevice {
  name: string;
  /** `/dev/dm-N` (devtmpfs creates it). */
  path: string;
  major: number;
  minor: number;
}

export interface ChildExit {
  pid: number;
  /** Exit code when the child exited, else null. */
  code: number | null;
  /** Signal name (e.g. `SIGKILL`) when the child was killed, else null. */
  signal: string | null;
  /** Whether a core was dumped. */
  core: boolean;
  /** The run an armed respawn (`armRespawn`) started for this pid, right after reaping it. */
  respawn?: Respawn;
}

/**
 * An armed respawn's outcome: the new run (with the read end of its fresh readiness pipe when
 * one was asked for), or the spawn error (shaped as `spawn` throws it: `syscall` is the failed
 * stage, `pid` the dead child when it got that far).
 */
export type Respawn = { pid: number; readinessFd: number | null } | { error: NativeError };

export interface Credentials {
  pid: number;
  uid: number;
  gid: number;
}

/** One datagram read from a socket bound with SO_PASSCRED. */
export interface CredDatagram {
  data: Buffer;
  /** The sender's credentials as the kernel attached them. */
  cred: Credentials;
  /** fds passed with SCM_RIGHTS; the receiver owns them and must close them. */
  fds: number[];
}

export interface ReadableWatch {
  /** Stop watching; idempotent. The fd itself is not closed. */
  close(): void;
}

/** A signal handler installed by `watchSignal`. */
export interface SignalWatch {
  /** The signal number watched. */
  readonly signum: number;
  /** Stop watching; idempotent. Closing the last watch of a signal restores its default action. */
  close(): void;
}

export interface LoadModuleOptions {
  /**
   * Pass `MODULE_INIT_COMPRESSED_FILE` so the kernel decompresses the file itself (`.ko.xz`,
   * `.ko.zst`, `.ko.gz`; kernels >= 5.17 built with CONFIG_MODULE_DECOMPRESS, else EINVAL).
   */
  compressed?: boolean;
}

export interface MountRequest {
  source: string;
  target: string;
  fstype: string;
  /** MS_* flags as a number (see `MountFlags`). */
  flags: number;
  data?: string;
}

/** `idmappedBind`: an idmapped copy of the mount at `source`, attached at `target`. */
export interface IdmappedBindOptions {
  /** What to bind, as `mount --bind` takes it: the tree from this path down, without the mounts below it. */
  source: string;
  /** An existing directory (or, for a file source, file) to attach the copy on. */
  target: string;
  /** The host id that id 0 of the filesystem shows as; uids and gids alike. */
  hostId: number;
  /** How many ids are mapped (0..size-1 → hostId..hostId+size-1); hostId + size ≤ 2^32 - 1. */
  size: number;
  /** MOUNT_ATTR_RDONLY on the copy. */
  readOnly: boolean;
}

export interface Native {
  /**
   * clone(CLONE_VM|CLONE_VFORK) + exec. Returns the child's pid once it has exec'd. If the child
   * fails before exec, it exits with code 127 and this throws a NativeError with `syscall` set to
   * the failed stage and `pid` set to the (dead, not yet reaped) child.
   */
  spawn(options: SpawnOptions): number;
  /**
   * sched_yield(): lets a task waiting for this CPU run before the caller goes on. A child that
   * has just exec'd is often queued on the supervisor's own CPU behind it (the vfork wake-up
   * puts the parent back on the child's CPU, where it preempts the child).
   */
  yieldCpu(): void;

  /**
   * Reaps every child that has exited (waitpid(-1, WNOHANG) until none is left). The one place
   * that waits: call it on SIGCHLD. Returns [] when there was nothing to reap.
   */
  reap(): ChildExit[];
  /**
   * Arms a respawn: when `pid` is next reaped (by `reap` or `watchChildren`), `options` are
   * spawned at once, before control returns to JavaScript, and the exit carries the outcome
   * (`respawn`). One-shot; arming a pid again replaces its plan. With `readinessChildFd`, a fresh
   * pipe is made for the new run and its write end becomes that child fd. Arguments are checked
   * here, as `spawn` checks them. The caller decides when a run may start without it.
   */
  armRespawn(pid: number, options: SpawnOptions, readinessChildFd?: number): void;
  /** Drops the armed respawn of `pid`; true when there was one. */
  disarmRespawn(pid: number): boolean;
  /**
   * Watches SIGCHLD and reaps in the signal's event-loop callback itself, before any JavaScript
   * (armed respawns included), then calls `onExits` with what it collected and, when a waitpid
   * failed after those, its error. Not called when nothing had exited. Must not throw.
   */
  watchChildren(onExits: (exits: ChildExit[], error: NativeError | null) => void): SignalWatch;

  /** kill(2) of one process; false (no throw) when it no longer exists (ESRCH). */
  kill(pid: number, signal: string): boolean;
  /** kill(-pgid): signals every process in the group; false when the group is empty (ESRCH). */
  killProcessGroup(pgid: number, signal: string): boolean;

  /** prctl(PR_SET_CHILD_SUBREAPER, 1): orphans below us are re-parented to us. */
  setChildSubreaper(): void;

  /** pipe2(O_CLOEXEC): [readFd, writeFd]. */
  pipe(): [number, number];
  /** close(2); ignores EBADF. */
  close(fd: number): void;
  /** O_NONBLOCK on or off. */
  setNonBlocking(fd: number, on: boolean): void;

  /**
   * An AF_UNIX SOCK_DGRAM socket with SO_PASSCRED, non-blocking and close-on-exec, bound to
   * `path` (a leading `@` means the abstract namespace). Returns the fd.
   */
  bindCredDatagramSocket(path: string): number;
  /** recvmsg until EAGAIN or `max` datagrams. Datagrams larger than 4096 bytes are truncated. */
  receiveCredDatagrams(fd: number, max: number): CredDatagram[];
  /** SO_PEERCRED of a connected unix stream socket. */
  peerCredentials(fd: number): Credentials;
  /**
   * socket(AF_UNIX, SOCK_STREAM) + bind(path) + listen(backlog), non-blocking and close-on-exec.
   * Returns the fd. bind creates the file with 0777 & ~umask.
   */
  listenUnixStream(path: string, backlog: number): number;
  /** accept4 of one pending connection (non-blocking, close-on-exec); null when none is pending. */
  acceptConnection(fd: number): number | null;

  /**
   * Calls `onReadable` on the event loop whenever `fd` is readable (a libuv poll handle). The
   * callback must not throw.
   */
  watchReadable(fd: number, onReadable: () => void): ReadableWatch;

  /** mount(2), off the main thread. */
  mount(request: MountRequest): Promise<void>;
  /**
   * A free loop device (LOOP_CTL_GET_FREE on /dev/loop-control) set up over `options.file` with
   * LOOP_CONFIGURE (LOOP_SET_FD + LOOP_SET_STATUS64 on kernels before 5.8), off the main thread.
   * A device taken by someone else between GET_FREE and CONFIGURE (EBUSY) is retried with the
   * next free one. Errors name the step: `open ENOENT /dev/loop-control`, `ioctl EBUSY /dev/loop3`.
   */
  loopAttach(options: LoopAttachOptions): Promise<LoopDevice>;
  /** LOOP_CLR_FD on `path` (`/dev/loopN`), off the main thread; ENXIO (already detached) is not an error. */
  loopDetach(path: string): Promise<void>;
  /**
   * DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND (resume) through /dev/mapper/control, off the
   * main thread. Removes the half-made device when a later step fails. Errors name the ioctl and
   * the device: `DM_TABLE_LOAD EINVAL mos-web`. The host has no device-mapper:
   * `open ENOENT /dev/mapper/control`.
   */
  dmCreate(options: DmCreateOptions): Promise<DmDevice>;
  /** DM_TABLE_STATUS: each target's status line (verity: `V` valid, `C` corruption seen). */
  dmStatus(name: string): Promise<DmTableLine[]>;
  /** DM_DEV_REMOVE; ENXIO (no such device) is not an error, EBUSY (still open/mounted) is. */
  dmRemove(name: string): Promise<void>;
  /**
   * An idmapped bind mount, off the main thread (kernels >= 5.12; the filesystem must allow
   * idmapping: ext4 5.12, erofs 5.19, squashfs 6.2, tmpfs 6.3, overlayfs never so far):
   * 1. `open_tree(source, OPEN_TREE_CLONE)`: a detached copy of the mount at `source` (not its
   *    submounts: no AT_RECURSIVE);
   * 2. a temporary user namespace whose uid_map and gid_map are both `0 hostId size`, held by a
   *    child cloned into it (exit signal 0, so `reap`/`watchChildren` never see it) while its
   *    maps are written and `/proc/<pid>/ns/user` is opened, then killed and reaped here with
   *    waitpid(__WCLONE) on every path;
   * 3. `mount_setattr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`, plus
   *    `MOUNT_ATTR_RDONLY` with `readOnly`) with that namespace: a file of id x in the filesystem
   *    shows as hostId + x through the copy (ids outside 0..size-1 as the overflow id, 65534),
   *    and a write as host id hostId + x stores x;
   * 4. `move_mount` of the copy onto `target` (a new mount there, like a bind's).
   * Until the last step succeeds the copy is detached, and a failure dissolves it: no mount is
   * left. The mount keeps the namespace alive; nothing else outlives the call. Errors name the
   * step and its subject: `open_tree ENOENT <source>`, `clone <errno>`, `open`/`write <errno>
   * /proc/<pid>/uid_map`, `mount_setattr EINVAL <source>` (this kernel cannot idmap this
   * filesystem; `EPERM`: `source` is already idmapped; `ENOSYS`: kernel < 5.12),
   * `move_mount ENOENT <target>`. Callers tell them apart by `syscall` and `code`.
   */
  idmappedBind(options: IdmappedBindOptions): Promise<void>;
  /** umount2(2), off the main thread. */
  umount(target: string, flags: number): Promise<void>;
  /** sync(2) then reboot(2) with `RB_*` command; returns only on failure (throws). */
  reboot(command: 'restart' | 'halt' | 'poweroff'): void;

  /**
   * open(path) + finit_module(fd, params, flags), off the main thread. Rejects with e.g.
   * `finit_module EEXIST /lib/modules/6.1.0/kernel/fs/squashfs/squashfs.ko` (already loaded) or
   * `open ENOENT <path>`.
   */
  loadModule(path: string, params: string, options?: LoadModuleOptions): Promise<void>;
  /**
   * Calls `onSignal(signum)` on the event loop whenever `signum` arrives (a libuv signal
   * handle), for any signal number including the realtime ones (`signalNumber('SIGRTMIN+3')`),
   * which Node's `process.on` cannot take. Several watches of one signal all fire. Throws
   * `uv_signal_start EINVAL SIGKILL` for signals that cannot be caught. The callback must not
   * throw.
   */
  watchSignal(signum: number, onSignal: (signum: number) => void): SignalWatch;
  /**
   * reboot(LINUX_REBOOT_CMD_CAD_OFF): ctrl-alt-del then sends SIGINT to PID 1 instead of
   * rebooting at once. Only the initial PID namespace's init may do this (EINVAL elsewhere).
   */
  setCtrlAltDelSignal(): void;
  /** clock_gettime(CLOCK_BOOTTIME) in milliseconds (fractional): 0 is the kernel's start. */
  bootTimeMs(): number;
  /** mknod(2); `mode` includes the file type (`S_IFCHR | 0o600`). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /**
   * Makes the root a bind mount of itself: mount("/", dir, MS_BIND|MS_REC), chdir(dir),
   * mount(".", "/", MS_MOVE), chroot("."), chdir("/"). `dir` is an empty directory in the root.
   * Metadata only, so on the main thread. Errors name the step (`mount EINVAL / (move)`).
   */
  rootOntoBindMount(dir: string): void;
  /** sync(2), off the main thread (it can take long with dirty data on slow disks). */
  sync(): Promise<void>;
  /**
   * kill(-1, signal): every process the caller may signal except itself. Only sensible in PID 1
   * (of a machine or of a PID namespace). False (no throw) when nothing got it (ESRCH).
   */
  killAll(signal: string): boolean;
  /**
   * The number of a signal name as this process's C library sees it (`SIGRTMIN+3` is 37 with
   * glibc, which reserves 32 and 33). Throws a TypeError for an unknown name.
   */
  signalNumber(name: string): number;
  /**
   * V8 flags at run time, as node's `v8.setFlagsFromString` (which loads the v8 module and its
   * bindings: ~1 MB of PID 1 for one call).
   */
  setV8Flags(flags: string): void;

  // ── TPM 2.0 (native/src/tpm.cc, libtss2-esys) ──────────────────────────────────────────────
  // One function per TPM command sequence, each opening its own TCTI + ESYS context on the thread
  // pool and closing it again (sessions it starts are flushed on every path). `tcti` is
  // `device:/dev/tpmrm0` (the kernel's resource manager) or `swtpm:host=127.0.0.1,port=P` (tests).
  // Failures reject with a `TpmError`. No policy here: which index, attributes and PCRs is
  // decided in init/trust/.

  /**
   * TPM2_NV_ReadPublic: the index's public area, or null when the index is not defined
   * (TPM_RC_HANDLE).
   */
  tpmNvReadPublic(tcti: string, index: number): Promise<TpmNvPublic | null>;
  /**
   * TPM2_NV_DefineSpace in the owner hierarchy (owner authorization: empty password), with an
   * empty authValue for the index itself. `size` 1-2048.
   */
  tpmNvDefine(tcti: string, definition: TpmNvDefinition): Promise<void>;
  /**
   * TPM2_NV_Write of `data` at offset 0 with owner authorization, in chunks of the TPM's
   * TPM2_PT_NV_BUFFER_MAX (an index with TPMA_NV_WRITEALL takes only a single chunk).
   */
  tpmNvWrite(tcti: string, index: number, data: Buffer): Promise<void>;
  /** TPM2_NV_WriteLock with owner authorization (TPMA_NV_WRITEDEFINE or _WRITE_STCLEAR). */
  tpmNvWriteLock(tcti: string, index: number): Promise<void>;
  /** TPM2_NV_UndefineSpace with owner authorization. */
  tpmNvUndefine(tcti: string, index: number): Promise<void>;
  /**
   * The whole index, read with TPM2_NV_Read authorized by the index's own authValue (a password
   * session with the empty password mos defines every index with), chunked by
   * TPM2_PT_NV_BUFFER_MAX. Only for indices with TPMA_NV_AUTHREAD, whose content is public and
   * whose worth is that an offline disk edit cannot reach it (the nsgroup id assignment); an
   * index without AUTHREAD rejects with TPM_RC_AUTH_UNAVAILABLE, one never written with
   * TPM_RC_NV_UNINITIALIZED.
   */
  tpmNvRead(tcti: string, index: number): Promise<Buffer>;
  /**
   * The whole index, read under a policy session: StartAuthSession (policy, unsalted, unbound,
   * hash = the index's nameAlg) → TPM2_PolicyPCR over the PCRs' *current* values → TPM2_NV_Read
   * authorized by that session, chunked by TPM2_PT_NV_BUFFER_MAX. Rejects with
   * TPM_RC_POLICY_FAIL when the current values do not give the index's authPolicy.
   */
  tpmNvReadWithPcrPolicy(tcti: string, index: number, policy: TpmPcrSelection): Promise<Buffer>;
  /**
   * TPM2_PCR_Read (repeated until every PCR is answered): the values in the order of `pcrs`.
   * Rejects with code `PCR_UNAVAILABLE` (rc 0) when the bank is not allocated.
   */
  tpmPcrRead(tcti: string, bank: TpmHashAlg, pcrs: number[]): Promise<Buffer[]>;
}

export const MountFlags = {
  RDONLY: 1,
  NOSUID: 2,
  NODEV: 4,
  NOEXEC: 8,
  REMOUNT: 32,
  BIND: 4096,
  MOVE: 8192,
  REC: 16384,
  PRIVATE: 1 << 18,
  SLAVE: 1 << 19,
  SHARED: 1 << 20,
  RELATIME: 1 << 21,
} as const;

export const UmountFlags = {
  FORCE: 1,
  DETACH: 2,
  EXPIRE: 4,
  NOFOLLOW: 8,
} as const;

/** A syscall failure from the addon (or the fake), shaped like Node's own errno errors. */
export interface NativeError extends Error {
  /** errno name, e.g. `ENOENT`. */
  code: string;
  errno: number;
  /** The syscall, or for spawn the stage that failed. */
  syscall: string;
  /** The path or subject the call was about, when there is one. */
  path?: string;
  /** For spawn failures: the pid of the child that failed before exec. */
  pid?: number;
}

// ── TPM 2.0 ────────────────────────────────────────────────────────────────────────────────

/** The hash algorithms mos names: PCR banks, NV nameAlg, policy session hashes. */
export type TpmHashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512';

/** TPMS_NV_PUBLIC of a defined index. */
export interface TpmNvPublic {
  index: number;
  /** dataSize, in bytes. */
  size: number;
  /** TPMA_NV bits (see `TPMA_NV` in init/trust/tpm-policy.ts), including the TPM-set state bits. */
  attributes: number;
  authPolicy: Buffer;
  /** A `TpmHashAlg`, or `alg-0x....` for one mos does not name. */
  nameAlg: TpmHashAlg | `alg-0x${string}`;
}

export interface TpmNvDefinition {
  /** 0x01000000-0x01ffffff. */
  index: number;
  size: number;
  attributes: number;
  /** Empty for none; else a digest of `nameAlg`'s size. */
  authPolicy: Buffer;
  /** Default sha256. */
  nameAlg?: TpmHashAlg;
}

/** A PCR selection in one bank; PCR numbers 0-23. */
export interface TpmPcrSelection {
  bank: TpmHashAlg;
  pcrs: number[];
}

/**
 * A TPM command failure from the addon (or the fake). The message reads
 * `Esys_NV_Read TPM_RC_POLICY_FAIL 0x01806d6f`: the failing call, the code, the subject.
 */
export interface TpmError extends Error {
  /**
   * `TPM_RC_<name>` for the TPM's own response codes (the handle, parameter or session number
   * stripped: 0x99d is TPM_RC_POLICY_FAIL), `TSS2_<LAYER>_RC_<name>` for the TSS's (e.g.
   * `TSS2_TCTI_RC_IO_ERROR` when /dev/tpmrm0 cannot be opened), or `PCR_UNAVAILABLE`.
   */
  code: string;
  /** The raw TSS2_RC (0 for PCR_UNAVAILABLE). */
  rc: number;
  /** The ESYS (or TCTI init) function that failed, e.g. `Esys_NV_Read`. */
  syscall: string;
  /** The index as `0x01806d6f`, the bank, or for TCTI failures the tcti string. */
  subject?: string;
  /** libtss2-rc's human reading of `rc`, e.g. `tpm:session(1):a policy check failed`. */
  description?: string;
}
