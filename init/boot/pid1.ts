/**
 * mos-init as PID 1: the boot phases in order, then the supervisor; shutdown on a signal or a
 * control request; the emergency state instead of ever exiting.
 *
 *   phase          policy  what
 *   mounts         fatal   proc, sys, devtmpfs, devpts, shm, run, tmp, cgroup2, securityfs; /dev links
 *   cmdline        warn    /proc/cmdline → mos.* keys
 *   control        warn    the control socket <state>/control.sock (root only)
 *   ctrl-alt-del   warn    reboot(CAD_OFF): ctrl-alt-del becomes SIGINT
 *   modules        warn    /etc/mos/modules (else the image's modules.order) + mos.modules=,
 *                          through modules.dep (finit_module)
 *   mounts-late    warn    efivarfs (a module on Debian) when /sys/firmware/efi exists
 *   control-port   warn    the virtio-serial port `mos.control`, searched in the background
 *   trust          fatal   mos.store= → the trust root from the TPM (provisioned from the embedded
 *                          CA on first boot) → the signed install layout verified; without
 *                          mos.store= skipped (init/trust/boot-trust.ts decides, trust-phase.ts acts)
 *   nsgroups       warn    each nsgroup of the verified install → its id range, kept in a TPM NV
 *                          index (init/boot/nsgroup-phase.ts); failing, named nsgroups' services fail
 *   networks       warn    the install's simple networks: bridge mos0, nftables forwards + NAT, each
 *                          service's netns (init/boot/network-phase.ts); skipped in namespace mode
 *   storage        warn    each verified target's image: loop → dm-verity → squashfs (→ overlay);
 *                          a target that fails makes its service `failed` (init/storage/)
 *   supervise      fatal   the install's container targets, else the service file → supervisor;
 *                          `mos: services ready` once all are up
 *
 * Namespace mode (`--no-early-mounts`, for PID 1 of a PID namespace on a host): mounts,
 * ctrl-alt-del, modules, mounts-late and control-port are skipped (they would touch the host),
 * one tmpfs is mounted on <state>/logs instead, and shutdown unmounts only that.
 *
 * The design and the console markers are described in docs/boot.md.
 */
import { chmodSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Native } from '../../native/types.ts';
import { MountFlags } from '../../native/types.ts';
import { ControlError, type ProvisionReport, type ShutdownAccepted, type SupervisorApi } from '../control/api.ts';
import { ErrorCode } from '../control/protocol.ts';
import { startControlServer, type ControlServer } from '../control/server.ts';
import { type Logger, createLogger, parseLogLevel } from '../log/logger.ts';
import { ServiceLogStore, logPipe } from '../log/service-log-store.ts';
import { removeStaleSocket } from '../stale-socket.ts';
import { loadServiceFile } from '../supervisor/spec.ts';
import { Supervisor } from '../supervisor/supervisor.ts';
import type { ContainerRun, ServiceSpec, ServiceStatus } from '../supervisor/types.ts';
import { parseCmdline, readMosCmdline, type MosCmdline } from './cmdline.ts';
import { ConsoleSink } from './console.ts';
import { EmergencyState, describeError, guardProcessExit, injectUncaughtException, testCrashPoint } from './emergency.ts';
import {
  EARLY_MOUNTS,
  applyMounts,
  makeDevLinks,
  parseMountInfo,
  planUnmounts,
  unmountAll,
} from './mounts.ts';
import {
  loadModules,
  moduleName,
  parseModuleList,
  parseModulesBuiltin,
  parseModulesDep,
  planModuleLoads,
  readOptional,
} from './modules.ts';
import { PhaseFailure, runPhases, type Phase, type PhaseRecord } from './phases.ts';
import {
  EMBEDDED_CA_PATH,
  formatNvIndex,
  planProvisionRequest,
  provisionedLine,
  rootFingerprint,
  type TrustConfigInput,
  type TrustState,
} from '../trust/boot-trust.ts';
import { provisionTrustRoot, TRUST_ROOT_NV_INDEX } from '../trust/trust-root.ts';
import type { VerifiedInstall } from '../trust/verify-install.ts';
import { STORE_LAYOUT_DIR } from '../trust/boot-trust.ts';
import type { ActivationEffects } from '../storage/activate.ts';
import { countBlockDevices, createActivationEffects, createVolumeEffects } from '../storage/activation-effects.ts';
import { corruptionAfterRun, releaseTargets, runStoragePhase, TargetResources, unavailableService, withBootFailures, type StoragePhaseResult } from '../storage/storage-phase.ts';
import { asFailure, readEmbeddedCa, runTrustPhase } from './trust-phase.ts';
import { runNsgroupPhase } from './nsgroup-phase.ts';
import { prepareContainers } from './container-phase.ts';
import { readCgroupUsage } from '../../services/cgroup-usage.ts';
import { CRUN_PATH, type CrunCgroupManager } from '../../services/crun.ts';
import { planDefaultSeccomp, seccompArchOf, SECCOMP_TEMPLATE_PATH } from '../../services/seccomp.ts';
import { readBundleProcess, resolveExecTarget } from '../control/exec-target.ts';
import { createExecRunner } from '../control/exec-relay.ts';
import { runMachineLinks, runNetworkPhase, type NetworkPhaseResult } from './network-phase.ts';
import { runTool } from './run-tool.ts';
import { nsgroupRoot, type NsgroupRanges } from '../../services/idmap.ts';
import {
  DEFAULT_SHUTDOWN_BOUNDS,
  listProcesses,
  planShutdown,
  runShutdown,
  survivingProcesses,
  type ShutdownBounds,
} from './shutdown.ts';
import { watchShutdownSignals, type ShutdownAction } from './signals.ts';
import { formatBootMs, type BootTimeline } from './timeline.ts';
import {
  CONTROL_PORT_NAME,
  VirtioControlChannel,
  ensureDeviceNode,
  findControlPort,
  readVirtioPorts,
  systemPortIo,
} from './virtio-control.ts';
import { monotonicMs } from '../monotonic.ts';

/** ip and nft finish in milliseconds; a hung one must not hold the boot. */
const NETWORK_TOOL_TIMEOUT_MS = 10_000;
/** An empty directory of the initramfs the root is bound onto before it moves to / (then removed). */
const ROOT_BIND_DIR = '/.mos-root';

export const PID1_DEFAULTS = {
  configPath: '/etc/mos/services.yaml',
  stateDir: '/run/mos',
  consolePath: '/dev/console',
  modulesList: '/etc/mos/modules',
  modulesRoot: '/lib/modules',
} as const;

export interface Pid1Options {
  native: Native;
  /** `--config`: wins over `mos.config=` and the default. */
  configPath: string | null;
  stateDir: string;
  /** False in namespace mode (`--no-early-mounts`). */
  earlyMounts: boolean;
  consolePath: string;
  /** `--cmdline`: used instead of /proc/cmdline (namespace tests). */
  cmdlineText: string | null;
  /** Whether this bundle was built with MOS_TEST_HOOKS. */
  testHooks: boolean;
  /** CLOCK_BOOTTIME of the process's exec and of main(). */
  initExecMs: number | null;
  initMainMs: number;
  shutdownBounds?: Partial<ShutdownBounds>;
  modulesList?: string;
  modulesRoot?: string;
  /** How long the control-port search waits for the virtio port to appear. */
  controlPortSearchMs?: number;
  /**
   * The manifest CA the image embeds (default /etc/mos/trust/manifest-ca.pem). Tests of the
   * test bundle point it elsewhere (`--trust-ca`).
   */
  trustCaPath?: string;
  /**
   * Install the process-wide hooks (exit guard, uncaughtException/unhandledRejection, SIGCHLD,
   * the keep-alive reaping interval). Always in mos-init; unit tests turn it off.
   */
  processHooks?: boolean;
}

/** Structured log: buffered until the state directory exists, then a synchronous file. */
class BootLog {
  private logger: Logger | null = null;
  private readonly buffered: { level: 'info' | 'warn' | 'error' | 'debug' | 'fatal'; fields: object; message: string }[] = [];

  constructor(private readonly bootMs: () => number) {}

  attach(file: string): void {
    if (this.logger) return;
    // The level comes from the kernel command line (MOS_LOG_LEVEL=...): a typo there must not
    // cost the log, so an unknown level means info, and the log says so.
    const wanted = process.env.MOS_LOG_LEVEL ?? 'info';
    let level = wanted;
    try {
      parseLogLevel(wanted);
    } catch {
      level = 'info';
    }
    this.logger = createLogger({ level, base: { mos: process.pid }, destination: { file } });
    if (level !== wanted) this.logger.warn({ wanted }, `unknown MOS_LOG_LEVEL "${wanted}": logging at info`);
    for (const record of this.buffered.splice(0)) this.logger[record.level](record.fields, record.message);
  }

  private write(level: 'info' | 'warn' | 'error' | 'debug' | 'fatal', fields: object, message: string): void {
    const withClock = { bootMs: Math.round(this.bootMs()), ...fields };
    if (this.logger) {
      this.logger[level](withClock, message);
    } else if (this.buffered.length < 2000) {
      this.buffered.push({ level, fields: withClock, message });
    }
  }

  info(fields: object, message: string): void {
    this.write('info', fields, message);
  }
  warn(fields: object, message: string): void {
    this.write('warn', fields, message);
  }
  error(fields: object, message: string): void {
    this.write('error', fields, message);
  }
  debug(fields: object, message: string): void {
    this.write('debug', fields, message);
  }
  fatal(fields: object, message: string): void {
    this.write('fatal', fields, message);
  }
}



const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A handle for tests and for main.ts; PID 1 itself just lives on the event loop. */
export interface Pid1Handle {
  supervisor: Supervisor;
  timeline(): BootTimeline;
  /** Settles when the boot phases are done (not when services are ready). */
  booted: Promise<void>;
  /** What the control socket serves. */
  api: SupervisorApi;
  emergency: EmergencyState;
}

export function runPid1(options: Pid1Options): Pid1Handle {
  const { native, earlyMounts } = options;
  const stateDir = path.resolve(options.stateDir);
  const bootMs = () => native.bootTimeMs();
  const log = new BootLog(bootMs);
  const consoleSink = new ConsoleSink({ path: options.consolePath, kmsgFallback: earlyMounts }, (fd) => native.setNonBlocking(fd, true));
  const say = (line: string) => consoleSink.line(line);
  // Read at shutdown time: mos.shutdown_timeout= is only known after the cmdline phase.
  const shutdownBounds = (): ShutdownBounds => ({
    ...DEFAULT_SHUTDOWN_BOUNDS,
    ...(cmdline.shutdownTimeoutMs !== null ? { stopServicesMs: cmdline.shutdownTimeoutMs } : {}),
    ...options.shutdownBounds,
  });

  let cmdline: MosCmdline = readMosCmdline(parseCmdline(options.cmdlineText ?? ''));
  let configPath = options.configPath ?? PID1_DEFAULTS.configPath;
  let crashPoint: string | null = null;
  const ownMounts: string[] = [];
  let control: ControlServer | null = null;
  let controlStarting: Promise<void> | null = null;
  let controlPort: VirtioControlChannel | null = null;
  let controlPortSearch: Promise<void> | null = null;
  let shutdownState: { atMs: number; action: ShutdownAction; cause: string } | null = null;
  let phaseRecords: PhaseRecord[] = [];
  let firstExec: BootTimeline['firstServiceExec'] = null;
  /** Until the supervisor reports which service that pid is, `firstExec.service` is argv[0]. */
  let firstExecPid: number | null = null;
  let servicesReadyMs: number | null = null;
  const trustCaPath = options.trustCaPath ?? EMBEDDED_CA_PATH;
  let trustState: TrustState = { state: 'pending' };
  /** The verified install (the trust phase's result): what later phases may use, and only that. */
  let verifiedInstall: VerifiedInstall | null = null;
  /** Where the verified layout is (the store directory or its mount). */
  let verifiedLayoutDir: string | null = null;
  /** The nsgroups phase's result: this boot's id ranges, or why named nsgroups have none. */
  let nsgroups: NsgroupRanges = { ok: false, code: 'E_NSGROUP_STATE', message: 'the nsgroups phase has not run' };
  /** The networks phase's result: what to release at shutdown, and services whose network failed. */
  let networks: NetworkPhaseResult | null = null;
  /** The storage phase's result: active targets (released at shutdown) and their services. */
  let storage: StoragePhaseResult | null = null;
  const storageEffects = (): ActivationEffects => createActivationEffects(native);
  const trustConfig = (): TrustConfigInput => ({
    store: cmdline.store,
    manifestTag: cmdline.manifestTag,
    product: cmdline.product,
    tpm: cmdline.tpm,
    trustPcrs: cmdline.trustPcrs,
    invalid: cmdline.invalid,
    namespaceMode: !earlyMounts,
  });
  // One TPM user at a time: the trust phase and `mosctl provision` must not interleave.
  let tpmQueue: Promise<unknown> = Promise.resolve();
  const withTpm = <T>(run: () => Promise<T>): Promise<T> => {
    const next = tpmQueue.then(run, run);
    tpmQueue = next.catch(() => {});
    return next;
  };

  /** The storage phase's container services as crun containers (bundles under <state>/bundles). */
  /** The seccomp filter of every container: the image's template resolved for this machine. */
  const containerSeccomp = (): { ok: true; seccomp: unknown } | { ok: false; message: string } => {
    const arch = seccompArchOf(process.arch);
    if (arch === null) return { ok: false, message: `no seccomp architecture for ${process.arch}` };
    let template: unknown;
    try {
      template = JSON.parse(readFileSync(SECCOMP_TEMPLATE_PATH, 'utf8'));
    } catch (error) {
      return { ok: false, message: `seccomp template ${SECCOMP_TEMPLATE_PATH}: ${(error as Error).message}` };
    }
    const planned = planDefaultSeccomp(template, { arch, kernel: os.release() });
    return planned.ok ? { ok: true, seccomp: planned.seccomp } : { ok: false, message: planned.message };
  };
  /** The container services' crun runs by name, for `mosctl exec`. */
  const containerRuns = new Map<string, ContainerRun>();
  /** In a PID namespace on a host, the host's hybrid cgroups refuse crun's cgroupfs. */
  const crunCgroupManager = (): CrunCgroupManager => (earlyMounts ? 'cgroupfs' : 'disabled');
  const containerSpecs = (result: StoragePhaseResult): ServiceSpec[] => {
    // crun sets a user-namespaced container up as the container's root (a mapped id), which
    // must reach the rootfs and the bundle under the state directory: searchable by others, not
    // listable. Nothing under it is readable to them by name alone (the control socket, logs and
    // init.log have their own modes), and a container sees only its own root afterwards.
    if (!result.targets.some((target) => target.plan?.type === 'container')) return result.services;
    chmodSync(stateDir, 0o711);
    // Every container gets containers-common's default seccomp profile; without one none runs.
    const seccomp = containerSeccomp();
    if (!seccomp.ok) {
      say(`mos: containers: E_SECCOMP: ${seccomp.message}; no container starts`);
      return result.services.map((spec) => (spec.unavailable ? spec : unavailableService(spec.name, 'E_SECCOMP', seccomp.message)));
    }
    const specs = prepareContainers(
      result,
      {
        targets: new Map((verifiedInstall?.install.targets ?? []).map((target) => [target.service_name, target])),
        nsgroups,
        networks: networks?.plan ?? null,
        notifySocketPath: notifySocketPath.startsWith('@') ? null : notifySocketPath,
        dirs: { bundlesDir: path.join(stateDir, 'bundles'), crunStateRoot: path.join(stateDir, 'crun') },
        // pivot_root works: the root is a bind mount (the mounts phase).
        crun: { path: CRUN_PATH, cgroupManager: crunCgroupManager(), noPivot: false },
        seccomp: seccomp.seccomp,
      },
      {
        mkdir: (dir, mode) => {
          mkdirSync(dir, { recursive: true });
          chmodSync(dir, mode);
        },
        writeFile: (file, text) => writeFileSync(file, text, { mode: 0o644 }),
        say,
      },
    );
    for (const spec of specs) if (spec.container) containerRuns.set(spec.name, spec.container);
    return specs;
  };

  /** Services that earlier phases could not prepare (their nsgroup's ids, their network), by name. */
  const bootFailures = (): Map<string, { code: string; message: string }> => {
    const failures = new Map<string, { code: string; message: string }>();
    if (!nsgroups.ok && verifiedInstall !== null) {
      for (const { target } of verifiedInstall.targets) {
        const root = nsgroupRoot(target.nsgroup, nsgroups);
        if (!root.ok) failures.set(target.service_name, { code: root.code, message: `${target.service_name}: ${root.message}` });
      }
    }
    for (const [name, failure] of networks?.failures ?? []) if (!failures.has(name)) failures.set(name, failure);
    return failures;
  };

  // ── the last line of defence: PID 1 never exits ────────────────────────────────────────────
  const emergency = new EmergencyState({
    now: bootMs,
    console: say,
    log: (fields, message) => log.fatal(fields, message),
    setHealth: (reason) => supervisor.setHealth('emergency', reason),
    ensureControl: async () => {
      // The host may only be able to reach a VM through the virtio port: search for it too, if
      // the boot died before the control-port phase (the port needs virtio_console loaded).
      if (earlyMounts && controlPortSearch === null) controlPortSearch = searchControlPort(options.controlPortSearchMs ?? 15_000);
      await startControl();
    },
  });
  const processHooks = options.processHooks ?? true;
  if (processHooks) {
    guardProcessExit((what) => emergency.enter(what));
    process.on('uncaughtException', (error) => emergency.enter(`unexpected exception: ${describeError(error)}`, error));
    process.on('unhandledRejection', (reason) => emergency.enter(`unhandled rejection: ${describeError(reason)}`, reason));
  }

  say(`mos: pid1 starting (${earlyMounts ? 'machine' : 'namespace'} mode, node ${process.version})`);
  if (!earlyMounts) {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    log.attach(path.join(stateDir, 'init.log'));
  }

  // ── the supervisor exists from the start, so the control API can always answer ─────────────
  const logs = new ServiceLogStore({
    dir: path.join(stateDir, 'logs'),
    pipe: () => logPipe(native),
    watchReadable: (fd, onReadable) => native.watchReadable(fd, onReadable),
    fileMaxBytes: 1024 * 1024,
    fileKeep: 2,
    onError: (error) => log.error({ err: error }, 'service log capture failed'),
  });
  // Records the first successful exec (spawn returns once the child has exec'd).
  const recordingNative = new Proxy(native, {
    get(target, property) {
      if (property === 'spawn') {
        return (spawnOptions: Parameters<Native['spawn']>[0]) => {
          const pid = target.spawn(spawnOptions);
          if (firstExec === null) {
            firstExec = { atMs: bootMs(), service: path.basename(spawnOptions.argv[0] ?? spawnOptions.file) };
            firstExecPid = pid;
          }
          return pid;
        };
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  const notifySocketPath = path.join(stateDir, 'notify');
  const supervisor = new Supervisor({ native: recordingNative, logs, logger: log, notifySocketPath, mode: 'pid1', configPath: null });

  // The one reaper: orphans of the whole machine come to PID 1. The interval also keeps the
  // event loop alive for ever, whatever else closes.
  if (processHooks) {
    // Reaped in the addon on SIGCHLD first: armed respawns start before any JavaScript runs.
    native.watchChildren((exits, error) => supervisor.handleExits(exits, error));
    setInterval(() => supervisor.reapChildren(), 1000);
  }

  const timeline = (): BootTimeline => ({
    clock: 'boottime',
    initExecMs: options.initExecMs,
    initMainMs: options.initMainMs,
    phases: phaseRecords.map((record) => ({ ...record })),
    firstServiceExec: firstExec,
    servicesReadyMs,
    emergency: emergency.info,
    shutdown: shutdownState,
  });

  /**
   * A running container's status carries what it uses of its cgroup. The files are kernfs
   * counters (no disk behind them), so reading them here does not hold PID 1 up.
   */
  const withUsage = (status: ServiceStatus): ServiceStatus => {
    const cgroupDir = containerRuns.get(status.name)?.cgroupDir;
    if (cgroupDir === undefined || status.pid === null) return status;
    const usage = readCgroupUsage(cgroupDir, (file) => {
      try {
        return readFileSync(file, 'utf8');
      } catch {
        return null;
      }
    });
    return usage === null ? status : { ...status, usage };
  };

  const api: SupervisorApi = {
    info: () => ({ ...supervisor.info(), configPath, boot: timeline(), trust: trustState }),
    list: () => supervisor.list().map(withUsage),
    status: (name) => withUsage(supervisor.status(name)),
    start: (name) => supervisor.start(name),
    stop: (name) => supervisor.stop(name),
    restart: (name) => supervisor.restart(name),
    logs: (name, count) => supervisor.logs(name, count),
    followLogs: (name, onLine) => supervisor.followLogs(name, onLine),
    timeline,
    requestShutdown: (action): ShutdownAccepted => {
      if (shutdownState !== null) throw new ControlError(ErrorCode.ShuttingDown, `already shutting down (${shutdownState.action})`);
      // Marked now (a second request is refused), begun after the answer has gone out.
      beginShutdown(action, 'mosctl', true);
      return { action, accepted: true };
    },
    provision: async (request): Promise<ProvisionReport> => {
      const plan = planProvisionRequest({ ca: request.ca, embeddedCa: readEmbeddedCa(trustCaPath), pcrs: request.pcrs, config: trustConfig() });
      if (!plan.ok) throw new ControlError(plan.code, plan.message);
      const fingerprint = rootFingerprint(plan.root);
      log.info({ root: fingerprint, source: plan.source, pcrs: plan.pcrs, reset: request.reset === true }, 'trust: provision requested');
      try {
        const result = await withTpm(() => provisionTrustRoot(native, plan.tcti, { root: plan.root, pcrs: plan.pcrs, reset: request.reset === true }));
        log.info({ root: fingerprint, status: result.status, steps: result.steps, reason: result.reason }, `trust: provision: ${result.reason}`);
        if (result.status === 'provisioned') say(provisionedLine(plan.root, result.index, plan.pcrs));
        if (result.status === 'already-provisioned' && request.reset !== true) {
          // Provisioning twice is an error the operator should see (issue 4), not a silent no-op.
          throw new ControlError(
            'E_ALREADY_PROVISIONED',
            `TPM NV ${formatNvIndex(result.index)} already holds this trust root (${fingerprint}, PCRs ${plan.pcrs.join(',')}); nothing written (--reset provisions it again)`,
          );
        }
        return {
          status: result.status,
          nvIndex: formatNvIndex(result.index),
          pcrs: plan.pcrs,
          root: fingerprint,
          source: plan.source,
          steps: result.steps,
          reason: result.reason,
        };
      } catch (error) {
        const failed = asFailure(error, 'E_TRUST_ROOT_TPM');
        log.warn({ root: fingerprint, code: failed.code }, `trust: provision refused: ${failed.message}`);
        throw new ControlError(failed.code, failed.message);
      }
    },
  };

  /** `mosctl exec`: where a running container service's crun state is. */
  const execTargetOf = (name: string) => {
    const status = supervisor.status(name);
    const run = containerRuns.get(name);
    return resolveExecTarget({
      status,
      container: run
        ? { id: run.id, stateRoot: run.stateRoot, crunPath: CRUN_PATH, cgroupManager: crunCgroupManager(), process: () => readBundleProcess(path.join(stateDir, 'bundles', name)) }
        : null,
    });
  };
  /** `mosctl exec` from elsewhere (the virtio-serial port): mos runs crun exec and relays it. */
  const execRunner = createExecRunner({ native, waitForExit: (pid) => supervisor.waitForExit(pid), execTarget: execTargetOf });

  function startControl(): Promise<void> {
    if (control) return Promise.resolve();
    controlStarting ??= (async () => {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      control = await startControlServer({
        sockets: native,
        path: path.join(stateDir, 'control.sock'),
        api,
        peerCredentials: (fd) => native.peerCredentials(fd),
        allowedUids: [0],
        logger: { info: (message) => log.info({}, message), warn: (message) => log.warn({}, message) },
        // `mosctl exec`: where a running container service's crun state is; mosctl runs crun exec.
        execTarget: execTargetOf,
        execRunner,
      });
    })().finally(() => {
      controlStarting = null;
    });
    return controlStarting;
  }

  // ── shutdown ───────────────────────────────────────────────────────────────────────────────
  const mustBePid1 = (what: string) => {
    // reboot(2) and kill(-1) from anything but PID 1 (of the machine or of a PID namespace)
    // would hit the host: never.
    if (process.pid !== 1) throw new Error(`refusing ${what}: not PID 1`);
  };

  function beginShutdown(action: ShutdownAction, cause: string, deferred = false): void {
    if (shutdownState !== null) {
      log.warn({ action, cause }, `shutdown already in progress (${shutdownState.action}); ignoring ${action} from ${cause}`);
      return;
    }
    shutdownState = { atMs: bootMs(), action, cause };
    const run = () => void shutdown(action, cause);
    if (deferred) setImmediate(run);
    else run();
  }

  async function shutdown(action: ShutdownAction, cause: string): Promise<void> {
    say(`mos: shutdown: ${action} (${cause})`);
    const plan = planShutdown(action, shutdownBounds());
    log.info({ action, cause, boundMs: plan.boundMs }, `shutdown: ${action} requested by ${cause}`);
    try {
      await runShutdown(plan, {
        now: () => monotonicMs(),
        sleep,
        stopServices: (deadlineMs) => supervisor.stopAll(deadlineMs),
        closeLogs: async () => {
          controlPort?.close();
          supervisor.close();
          await logs.close();
        },
        survivors: () => survivingProcesses(listProcesses(), process.pid),
        killAll: (signal) => {
          mustBePid1('kill(-1)');
          return native.killAll(signal);
        },
        reap: () => supervisor.reapChildren(),
        unmount: async () => {
          if (storage) {
            // Overlays, images, verity and loop devices, before the general unmount below: what
            // the stopped services gave back already, then the rest (fs-only, hostfs).
            await supervisor.resourcesSettled();
            const problems = await releaseTargets(storage, storageEffects());
            if (problems.length > 0) log.warn({ problems }, `storage: could not release everything: ${problems.join('; ')}`);
            const left = countBlockDevices();
            say(`mos: storage: released all targets (loop devices left ${left.loop}, dm devices left ${left.dm})`);
          }
          const mountinfo = parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
          const targets = planUnmounts(mountinfo, earlyMounts ? { scope: 'all' } : { scope: 'own', own: ownMounts });
          return unmountAll(native, targets);
        },
        sync: () => native.sync(),
        reboot: (command) => {
          mustBePid1('reboot(2)');
          native.reboot(command);
        },
        log: (fields, message) => log.info(fields, message),
        console: say,
        flushConsole: () => consoleSink.flush(1000),
      });
      emergency.enter('reboot(2) returned');
    } catch (error) {
      emergency.enter(`shutdown failed: ${describeError(error)}`, error);
    }
  }

  watchShutdownSignals(native, (meaning) => beginShutdown(meaning.action, `${meaning.signal} (${meaning.convention})`));

  // ── readiness markers ───────────────────────────────────────────────────────────────────────
  let servicesStarted = false;
  const checkReady = () => {
    if (!servicesStarted || servicesReadyMs !== null || supervisor.info().health !== 'ok') return;
    const statuses = supervisor.list();
    if (!statuses.every((status) => status.state === 'running' || status.state === 'done')) return;
    servicesReadyMs = bootMs();
    say(`mos: services ready (${statuses.length} services, ${formatBootMs(servicesReadyMs)} since kernel start)`);
    log.info({ services: statuses.length, atMs: Math.round(servicesReadyMs) }, 'all services ready');
    if (crashPoint === 'ready') void injectUncaughtException('ready');
  };
  supervisor.onTransition((change) => {
    if (firstExec !== null && firstExecPid !== null && change.status.pid === firstExecPid) {
      firstExec = { ...firstExec, service: change.service };
      firstExecPid = null;
    }
    if (change.to === 'failed') say(`mos: service ${change.service} failed: ${change.status.errorCode ?? ''} ${change.status.reason ?? ''}`.trimEnd());
    checkReady();
  });

  // ── the phases ──────────────────────────────────────────────────────────────────────────────
  const namespaceSkip = (context: { skip(reason: string): void }) => {
    context.skip('namespace mode (--no-early-mounts)');
  };

  const phases: Phase[] = [
    {
      name: 'mounts',
      policy: 'fatal',
      run: async (context) => {
        if (!earlyMounts) {
          // The one real mount of namespace mode: the log directory on its own tmpfs, as on a
          // machine where it lives in /run's tmpfs.
          const target = path.join(stateDir, 'logs');
          mkdirSync(target, { recursive: true, mode: 0o700 });
          await native.mount({ source: 'tmpfs', target, fstype: 'tmpfs', flags: MountFlags.NOSUID | MountFlags.NODEV, data: 'mode=0700' });
          ownMounts.push(target);
          context.note(`namespace mode: tmpfs on ${target}`);
          return;
        }
        // First the root itself: the initramfs as a bind mount stacked on it, so that containers
        // can pivot_root into their rootfs (never from rootfs itself) and keep no machine mount.
        try {
          mkdirSync(ROOT_BIND_DIR, { mode: 0o700 });
          native.rootOntoBindMount(ROOT_BIND_DIR);
          rmdirSync(ROOT_BIND_DIR);
        } catch (error) {
          say(`mos: root stays the initramfs itself (containers cannot pivot_root): ${(error as Error).message}`);
        }
        const outcomes = await applyMounts(native, EARLY_MOUNTS, 'early', { stopOnError: true, onMounted: (target) => ownMounts.push(target) });
        makeDevLinks();
        consoleSink.open();
        mkdirSync(stateDir, { recursive: true, mode: 0o700 });
        log.attach(path.join(stateDir, 'init.log'));
        log.info({ outcomes }, 'early mounts');
        context.note(`${outcomes.filter((o) => o.result === 'mounted').length} mounted`);
      },
    },
    {
      name: 'cmdline',
      policy: 'warn',
      run: (context) => {
        const text = options.cmdlineText ?? readFileSync('/proc/cmdline', 'utf8');
        cmdline = readMosCmdline(parseCmdline(text));
        configPath = options.configPath ?? cmdline.config ?? PID1_DEFAULTS.configPath;
        crashPoint = testCrashPoint(options.testHooks, cmdline.testCrash);
        if (cmdline.testCrash !== null && crashPoint === null) log.warn({}, 'mos.test_crash ignored: this bundle has no test hooks');
        const crashPoints = [...phases.map((phase) => phase.name), 'ready'];
        if (crashPoint !== null && !crashPoints.includes(crashPoint)) {
          say(`mos: mos.test_crash=${crashPoint} matches no crash point (${crashPoints.join(', ')})`);
        }
        log.info({ cmdline: text.trim(), mos: cmdline }, 'kernel command line');
        context.note(`config ${configPath}${cmdline.debugControl ? ', debug control' : ''}${crashPoint ? `, test crash at ${crashPoint}` : ''}`);
      },
    },
    {
      name: 'control',
      policy: 'warn',
      run: async (context) => {
        await startControl();
        context.note(path.join(stateDir, 'control.sock'));
      },
    },
    {
      name: 'ctrl-alt-del',
      policy: 'warn',
      run: (context) => {
        if (!earlyMounts) return namespaceSkip(context);
        mustBePid1('reboot(CAD_OFF)');
        native.setCtrlAltDelSignal();
      },
    },
    {
      name: 'modules',
      policy: 'warn',
      run: async (context) => {
        if (!earlyMounts) return namespaceSkip(context);
        const modulesDir = path.join(options.modulesRoot ?? PID1_DEFAULTS.modulesRoot, os.release());
        // An explicit list wins; without one, every module the image ships is loaded (an image
        // builder trims the module tree to what the machine needs; modules.order lists it).
        const listText = readOptional(options.modulesList ?? PID1_DEFAULTS.modulesList);
        const listed = parseModuleList(listText ?? readOptional(path.join(modulesDir, 'modules.order')) ?? '');
        const requests = [...listed, ...cmdline.modules.map((name) => ({ name: moduleName(name), params: '' }))];
        if (requests.length === 0) return context.skip('no modules requested');
        const depText = readOptional(path.join(modulesDir, 'modules.dep'));
        if (depText === null) throw new Error(`${modulesDir}/modules.dep is missing (run depmod when building the image)`);
        const deps = parseModulesDep(depText);
        const builtin = parseModulesBuiltin(readOptional(path.join(modulesDir, 'modules.builtin')) ?? '');
        const plan = planModuleLoads(requests, deps, builtin);
        const outcomes = await loadModules(native, modulesDir, plan, () => monotonicMs(), deps);
        for (const outcome of outcomes) log.info({ module: outcome.name, result: outcome.result, ms: Math.round(outcome.durationMs), detail: outcome.detail }, `module ${outcome.name}: ${outcome.result}`);
        const failed = outcomes.filter((o) => o.result === 'failed');
        const absent = outcomes.filter((o) => o.result === 'no-device').map((o) => o.name);
        const problems = [...plan.missing.map((name) => `${name}: not in modules.dep`), ...failed.map((o) => `${o.name}: ${o.detail}`)];
        if (problems.length > 0) throw new Error(problems.join('; '));
        const loaded = outcomes.length - absent.length;
        context.note(`${loaded} modules${absent.length > 0 ? `, no device for ${absent.join(' ')}` : ''}${plan.builtin.length > 0 ? `, ${plan.builtin.length} built in` : ''}`);
      },
    },
    {
      name: 'mounts-late',
      policy: 'warn',
      run: async (context) => {
        if (!earlyMounts) return namespaceSkip(context);
        const outcomes = await applyMounts(native, EARLY_MOUNTS, 'late', { stopOnError: false, onMounted: (target) => ownMounts.push(target) });
        const failed = outcomes.filter((o) => o.result === 'failed');
        if (failed.length > 0) throw new Error(failed.map((o) => `${o.target}: ${o.detail}`).join('; '));
        if (outcomes.every((o) => o.result === 'skipped')) context.skip(outcomes.map((o) => `${o.target}: ${o.detail}`).join('; '));
      },
    },
    {
      name: 'control-port',
      policy: 'warn',
      run: (context) => {
        if (!earlyMounts) return namespaceSkip(context);
        controlPortSearch ??= searchControlPort(options.controlPortSearchMs ?? 15_000);
        context.note(`searching for ${CONTROL_PORT_NAME} in the background`);
      },
    },
    {
      name: 'trust',
      policy: 'fatal',
      run: async (context) => {
        const config = trustConfig();
        const result = await runTrustPhase(
          {
            config,
            // Read only when it may be needed: with no store the phase touches nothing.
            embeddedCa: config.store === null ? { kind: 'none', path: trustCaPath } : readEmbeddedCa(trustCaPath),
            nvIndex: TRUST_ROOT_NV_INDEX,
          },
          {
            native,
            mountDir: path.join(stateDir, 'store'),
            now: () => new Date(),
            sleep,
            monotonicMs: () => monotonicMs(),
            onMounted: (target) => ownMounts.push(target),
            say,
            log: (fields, message) => log.info(fields, message),
            withTpm,
          },
        );
        trustState = result.state;
        verifiedInstall = result.verified;
        verifiedLayoutDir = result.facts.store?.ok ? path.join(result.facts.store.dir, STORE_LAYOUT_DIR) : null;
        log.info({ trust: result.state, installed: verifiedInstall?.installManifestDigest }, 'trust phase verdict');
        if (result.skipped !== null) return context.skip(result.skipped);
        if (result.emergency !== null) {
          const detail = result.state.state === 'failed' ? `${result.state.code}: ${result.state.message}` : result.emergency;
          throw new PhaseFailure(detail, result.emergency);
        }
        if (result.state.state === 'verified') {
          context.note(`verified ${result.state.install} (${result.state.targets} targets${result.state.provisioned ? ', provisioned the root' : ''})`);
        }
      },
    },
    {
      name: 'nsgroups',
      policy: 'warn',
      run: async (context) => {
        if (verifiedInstall === null) return context.skip('no verified install');
        const result = await runNsgroupPhase(verifiedInstall, trustConfig().tpm, {
          native,
          withTpm,
          readText: (file) => {
            try {
              return readFileSync(file, 'utf8');
            } catch {
              return null;
            }
          },
          say,
          log: (fields, message) => log.info(fields, message),
        });
        nsgroups = result.ranges;
        if (!result.ranges.ok) throw new PhaseFailure(result.note, result.note);
        context.note(result.note);
      },
    },
    {
      name: 'networks',
      policy: 'warn',
      run: async (context) => {
        // In a PID namespace on a host the network namespace is the host's: never touch it.
        if (!earlyMounts) return namespaceSkip(context);
        const tools = { native, waitForExit: (pid: number) => supervisor.waitForExit(pid), scratchDir: stateDir, sleep };
        const fx = {
          runTool: (argv: string[], input: string | null) => runTool(tools, `/usr/sbin/${argv[0]}`, argv, NETWORK_TOOL_TIMEOUT_MS, input),
          writeSysctl: (file: string, value: string) => writeFileSync(file, value),
          say,
          log: (fields: object, message: string) => log.info(fields, message),
        };
        const links = await runMachineLinks(cmdline.uplink, fx);
        if (verifiedInstall === null) return context.note(`${links}; no verified install`);
        networks = await runNetworkPhase(verifiedInstall.install.targets, fx);
        if (networks.failures.size > 0 && networks.plan === null) throw new PhaseFailure(networks.note, networks.note);
        context.note(networks.note);
      },
    },
    {
      name: 'storage',
      policy: 'warn',
      run: async (context) => {
        if (verifiedInstall === null || verifiedLayoutDir === null) return context.skip('no verified install');
        const report = { log: (fields: object, message: string) => log.info(fields, message), say };
        const tools = { native, waitForExit: (pid: number) => supervisor.waitForExit(pid), scratchDir: stateDir, sleep };
        storage = await runStoragePhase(
          verifiedInstall.targets,
          verifiedInstall.install.storage ?? [],
          {
            layoutDir: verifiedLayoutDir,
            targetsDir: path.join(stateDir, 'targets'),
            scratchDir: path.join(stateDir, 'scratch'),
            volumesDir: path.join(stateDir, 'volumes'),
          },
          { ...storageEffects(), ...report },
          createVolumeEffects(native, tools, report),
          nsgroups,
        );
        supervisor.useResources(new TargetResources(storage.targets, storageEffects(), { say, countDevices: () => countBlockDevices() }));
        const failed = storage.targets.filter((target) => target.failure !== null);
        context.note(`${storage.targets.length - failed.length} of ${storage.targets.length} targets active${failed.length > 0 ? `; failed: ${failed.map((t) => `${t.name} (${t.failure!.code})`).join(', ')}` : ''}`);
      },
    },
    {
      name: 'supervise',
      policy: 'fatal',
      run: async (context) => {
        // A verified install runs its own targets, and nothing else: the service file is for
        // machines without a store (demo, tests).
        const loaded = storage !== null ? { specs: withBootFailures(containerSpecs(storage), bootFailures()), error: null } : await loadServiceFile(configPath);
        const { specs, error } = loaded;
        if (storage !== null) watchImageCorruption(storage);
        if (error) {
          // A bad file runs nothing (never half of it); mos stays up to say why.
          supervisor.setHealth('config-error', error);
          say(`mos: config error: ${error}`);
        }
        removeStaleSocket(notifySocketPath);
        supervisor.load(specs);
        supervisor.listenForNotifications();
        supervisor.startAll();
        supervisor.reapChildren();
        servicesStarted = true;
        context.note(error ? 'config error: nothing started' : `${specs.length} services`);
      },
    },
  ];

  /**
   * After every run of an image-backed service ends, ask its verity device whether it saw
   * corrupted data; if so the service ends `failed` with E_VERITY_CORRUPT (no restart loop).
   */
  function watchImageCorruption(result: StoragePhaseResult): void {
    const byService = new Map(result.targets.filter((target) => target.type === 'container').map((target) => [target.name, target]));
    supervisor.onTransition((change) => {
      if (change.event.type !== 'exited' && change.event.type !== 'spawn-failed') return;
      const target = byService.get(change.service);
      if (!target?.active) return;
      void corruptionAfterRun(target, storageEffects()).then((fault) => {
        if (!fault) return;
        log.warn({ service: change.service, code: fault.code }, fault.reason);
        say(`mos: storage: ${change.service}: ${fault.code}: ${fault.reason}`);
        supervisor.failService(change.service, fault.code, fault.reason);
      });
    });
  }

  async function searchControlPort(searchMs: number): Promise<void> {
    const deadline = monotonicMs() + searchMs;
    for (;;) {
      if (shutdownState !== null) return;
      const location = findControlPort(readVirtioPorts());
      if (location) {
        try {
          const node = ensureDeviceNode(native, location);
          const access = cmdline.debugControl ? 'root' : 'read-only';
          controlPort = new VirtioControlChannel({
            path: node,
            api,
            access,
            io: systemPortIo(native),
            execRunner,
            logger: { info: (message) => log.info({}, message), warn: (message) => log.warn({}, message) },
          });
          controlPort.start();
          say(`mos: control port ${CONTROL_PORT_NAME} on ${node} (${access})`);
        } catch (error) {
          say(`mos: control port ${CONTROL_PORT_NAME}: ${describeError(error)}`);
          log.warn({ err: error }, 'control port failed');
        }
        return;
      }
      if (monotonicMs() >= deadline) {
        log.info({}, `no virtio-serial port named ${CONTROL_PORT_NAME}`);
        return;
      }
      await sleep(100);
    }
  }

  // Each phase can be crashed on purpose by a test build (`mos.test_crash=<phase>`).
  const crashable = phases.map(
    (phase): Phase => ({
      ...phase,
      run: async (context) => {
        if (crashPoint === phase.name) {
          await injectUncaughtException(phase.name);
          throw new Error(`mos.test_crash=${phase.name}: injected exception`);
        }
        await phase.run(context);
      },
    }),
  );

  const booted = (async () => {
    const result = await runPhases(crashable, {
      now: bootMs,
      stopped: () => emergency.active || shutdownState !== null,
      onStart: (record) => {
        phaseRecords.push(record);
        log.debug({ phase: record.name }, `phase ${record.name} starting`);
      },
      onEnd: (record) => {
        const ms = Math.round((record.endMs ?? 0) - (record.startMs ?? 0));
        const fields = { phase: record.name, policy: record.policy, status: record.status, ms, detail: record.detail };
        if (record.status === 'failed') {
          log[record.policy === 'ignore' ? 'debug' : 'warn'](fields, `phase ${record.name} failed (${ms}ms): ${record.detail}`);
          if (record.policy !== 'ignore') say(`mos: phase ${record.name} failed [${record.policy}]: ${record.detail}`);
        } else {
          log.info(fields, `phase ${record.name} ${record.status} (${ms}ms)`);
          say(record.status === 'skipped' ? `mos: phase ${record.name} skipped: ${record.detail}` : `mos: phase ${record.name} ok (${ms}ms)`);
        }
      },
    });
    phaseRecords = result.records;
    if (result.emergency && !emergency.active) emergency.enter(result.emergency.reason);
    checkReady();
  })().catch((error: unknown) => emergency.enter(`boot failed: ${describeError(error)}`, error));

  return { supervisor, timeline, booted, api, emergency };
}
