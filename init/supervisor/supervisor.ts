/**
 * The supervisor: the impure shell around the per-service state machine.
 *
 * It owns the services' runtimes and timers, turns the machine's effects into syscalls through
 * the `Native` port, feeds process exits (from the one reaper), readiness and watchdog pings back
 * in as events, and orders starts and stops by dependency. Time comes from an injected clock.
 */
import { accessSync, chmodSync, closeSync, constants as fsConstants, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { constants as osConstants } from 'node:os';
import type { ChildExit, Native, NativeError, Respawn } from '../../native/types.ts';
import { ControlError, type SupervisorApi, type SupervisorInfo } from '../control/api.ts';
import type { LogLine } from '../log/types.ts';
import {
  type Effect,
  type ServiceEvent,
  type ServiceRuntime,
  type TimerName,
  initialRuntime,
  publicStatus,
  respawnsWhateverItsExit,
  restartsAtOnce,
  transition,
} from './machine.ts';
import { NotifyRateLimiter, notifyEvents, parseNotifyMessage } from './notify-protocol.ts';
import { type SpawnPlan, planSpawn } from './spawn-plan.ts';
import type { ContainerRun, ServiceSpec, ServiceState, ServiceStatus } from './types.ts';
import { monotonicMs } from '../monotonic.ts';

export interface SupervisorClock {
  wallNow(): number;
  monoNow(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: SupervisorClock = {
  wallNow: () => Date.now(),
  monoNow: () => monotonicMs(),
  // A zero delay (an immediate restart) runs in this loop turn's check phase: setTimeout would
  // add at least a millisecond to every restart.
  setTimeout: (callback, ms) => (ms <= 0 ? { immediate: setImmediate(callback) } : setTimeout(callback, ms)),
  clearTimeout: (handle) => {
    if (handle && typeof handle === 'object' && 'immediate' in handle) clearImmediate((handle as { immediate: NodeJS.Immediate }).immediate);
    else clearTimeout(handle as NodeJS.Timeout);
  },
};

/** The structured logger the supervisor writes to (init/log/logger.ts). */
export interface SupervisorLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
  debug(fields: object, message: string): void;
  /** When present and false, the supervisor skips building that level's fields. */
  isLevelEnabled?(level: 'debug' | 'info' | 'warn' | 'error'): boolean;
}

/** The per-service log capture the supervisor writes children's output into. */
export interface ServiceLogs {
  open(service: string): { stdout: number; stderr: number };
  append(service: string, stream: 'stdout' | 'stderr', text: string): void;
  tail(service: string, count: number): LogLine[];
  follow(service: string, onLine: (line: LogLine) => void): () => void;
}

/**
 * What some services need besides their process, e.g. their image mounted through dm-verity
 * (init/storage/): made ready before a start (the service waits, like for a dependency) and
 * given back once the service is down for good (stopped, failed, done) — not between restarts.
 */
export interface ServiceResources {
  needs(name: string): boolean;
  isReady(name: string): boolean;
  /** Resolves with null when ready, or with why the service cannot run (it then ends `failed`). */
  acquire(name: string): Promise<{ code: string; message: string } | null>;
  release(name: string): Promise<void>;
}

export interface SupervisorOptions {
  native: Native;
  logs: ServiceLogs;
  logger: SupervisorLogger;
  clock?: SupervisorClock;
  /** Where the sd_notify socket is bound (`@name` for abstract). Omit to run without one. */
  notifySocketPath?: string;
  mode?: SupervisorInfo['mode'];
  configPath?: string | null;
  /** For tests: how a path is checked to be an executable file. */
  isExecutable?: (file: string) => boolean;
  /** For tests: how a sender pid's session id is found (notify attribution). */
  sessionOf?: (pid: number) => number | null;
  resources?: ServiceResources;
}

export interface ShutdownReport {
  durationMs: number;
  /** Services that ignored their stop signal and were SIGKILLed at their deadline. */
  killed: string[];
  /** Services still not stopped when the global deadline passed (all SIGKILLed then). */
  unfinished: string[];
}

export type TransitionListener = (event: {
  service: string;
  event: ServiceEvent;
  from: ServiceState;
  to: ServiceState;
  status: ServiceStatus;
}) => void;

const ACTIVE_STATES: ReadonlySet<ServiceState> = new Set(['starting', 'running', 'stopping']);
/** States in which a service is on its way to running, so its dependents must wait. */
const PENDING_STATES: ReadonlySet<ServiceState> = new Set(['waiting', 'starting', 'backoff', 'stopping']);
const SETTLED_AFTER_START: ReadonlySet<ServiceState> = new Set(['running', 'done', 'failed', 'stopped', 'backoff']);
const SETTLED_AFTER_STOP: ReadonlySet<ServiceState> = new Set(['stopped', 'failed', 'done']);

function defaultIsExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The session id (field 6 of /proc/PID/stat): services are session leaders. */
function defaultSessionOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[3]);
  } catch {
    return null;
  }
}

/** The outcome of starting one run: the child, or the step that failed and why. */
type Launch =
  | { ok: true; pid: number; /** Read end of the run's readiness pipe (`readiness: fd`). */ readinessFd?: number }
  | { ok: false; stage: string; message: string };

interface Run {
  invocationId: string;
  /** The s6-style readiness pipe's read end and its poll, while the run waits for readiness. */
  readiness?: { fd: number; watch: { close(): void } };
  /** A container run's init, once read from crun's pid file. */
  containerInit?: number;
}

/**
 * Invocation ids (systemd's `INVOCATION_ID`: 128 bits as 32 hex digits): 64 random bits drawn
 * once per supervisor, then a counter. Unique per run, unguessable across boots, and free per
 * start (no crypto module in PID 1, no getrandom per restart).
 */
function invocationIdSource(): () => string {
  const prefix = Buffer.alloc(8);
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      readSync(fd, prefix);
    } finally {
      closeSync(fd);
    }
  } catch {
    // No /dev/urandom (a bare test root): time still keeps ids apart across runs.
    prefix.writeBigUInt64BE(BigInt(Date.now()) * 1_000_000n + BigInt(process.pid));
  }
  const hex = prefix.toString('hex');
  let counter = 0n;
  return () => {
    counter += 1n;
    return hex + counter.toString(16).padStart(16, '0');
  };
}

export class Supervisor implements SupervisorApi {
  private readonly native: Native;
  private readonly serviceLogs: ServiceLogs;
  private readonly logger: SupervisorLogger;
  private readonly clock: SupervisorClock;
  private readonly isExecutable: (file: string) => boolean;
  private readonly sessionOf: (pid: number) => number | null;
  private readonly specs = new Map<string, ServiceSpec>();
  private readonly runtimes = new Map<string, ServiceRuntime>();
  private readonly timers = new Map<string, Map<TimerName, unknown>>();
  private readonly runs = new Map<string, Run>();
  /** Main pid → service, for the reaper and notify attribution (kept in step by dispatch). */
  private readonly servicesByPid = new Map<number, string>();
  /** Services in `waiting`: the only ones `schedule` needs to look at. */
  private readonly waiting = new Set<string>();
  private readonly listeners = new Set<TransitionListener>();
  private readonly notifyLimiter = new NotifyRateLimiter();
  private readonly startedAt: number;
  private health: SupervisorInfo['health'] = 'ok';
  private healthReason: string | null = null;
  private notifyFd: number | null = null;
  private notifyWatch: { close(): void } | null = null;
  private devNullFd: number | null = null;
  private scheduling = false;
  /** Set while an exit is dispatched: its zero-delay restart runs in the same turn. */
  private handlingExit = false;
  private shuttingDown = false;
  private orphansReaped = 0;
  private readonly nextInvocationId = invocationIdSource();
  /** Each service's executable as resolved by its last successful start (PATH search is syscalls). */
  private readonly resolvedPrograms = new Map<string, string>();
  private readonly readinessBuffer = Buffer.alloc(256);
  /**
   * Runs started ahead of the state machine by an exit that restarts at once (`handleExit`),
   * by service: the machine's spawn effect adopts them later in the same turn.
   */
  private readonly prelaunched = new Map<string, Launch>();
  /**
   * The exited run's process group while its exit is dispatched, when the run started ahead has
   * the same number: the kernel reused it, so the old group is empty and the machine's SIGKILL
   * to it would hit the new run.
   */
  private reusedGroup: number | null = null;
  /** Resources being acquired or released, by service: the next step waits for the one before. */
  private readonly resourceSteps = new Map<string, Promise<void>>();
  private readonly acquiring = new Set<string>();
  private readonly exitWaiters = new Map<number, (exit: ChildExit) => void>();
  private resources: ServiceResources | undefined;
  /** Respawns armed in the reaper (`syncArm`), by service: the pid and the next run's id. */
  private readonly armed = new Map<string, { pid: number; invocationId: string }>();

  constructor(private readonly options: SupervisorOptions) {
    this.native = options.native;
    this.serviceLogs = options.logs;
    this.logger = options.logger;
    this.clock = options.clock ?? systemClock;
    this.isExecutable = options.isExecutable ?? defaultIsExecutable;
    this.sessionOf = options.sessionOf ?? defaultSessionOf;
    this.startedAt = this.clock.wallNow();
    this.resources = options.resources;
  }

  /** Sets what services need besides their process (known only after the storage phase). */
  useResources(resources: ServiceResources): void {
    this.resources = resources;
  }

  // ── set-up ────────────────────────────────────────────────────────────────────────────────

  /** Loads the validated specs. Services stay `stopped` until `startAll` or an operator start. */
  load(specs: ServiceSpec[]): void {
    for (const spec of specs) {
      this.specs.set(spec.name, spec);
      this.runtimes.set(spec.name, initialRuntime(spec, this.clock.wallNow()));
      this.timers.set(spec.name, new Map());
    }
  }

  /** Nothing runs, and the operator sees why (`mosctl status`). */
  setHealth(health: SupervisorInfo['health'], reason: string | null): void {
    this.health = health;
    this.healthReason = reason;
    if (health !== 'ok') this.logger.error({ health, reason }, `supervisor ${health}: ${reason}`);
  }

  /** Binds the sd_notify socket and starts reading it. */
  listenForNotifications(): void {
    const path = this.options.notifySocketPath;
    if (!path || this.notifyFd !== null) return;
    this.notifyFd = this.native.bindCredDatagramSocket(path);
    // Writable by every uid: services that drop to another user, and containers whose root is a
    // mapped id, must be able to send. Who sent what is the kernel's SCM_CREDENTIALS, never trusted
    // from the message: a process that is no service's is ignored.
    if (!path.startsWith('@')) {
      try {
        chmodSync(path, 0o666);
      } catch (error) {
        this.logger.warn({ err: error, path }, 'the notify socket stays writable by root only');
      }
    }
    const fd = this.notifyFd;
    this.notifyWatch = this.native.watchReadable(fd, () => this.readNotifications(fd));
  }

  onTransition(listener: TransitionListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  startAll(): void {
    for (const name of this.specs.keys()) this.dispatch(name, { type: 'start' });
    this.schedule();
  }

  // ── the reaper's entry point ──────────────────────────────────────────────────────────────

  /** Reaps every exited child, ours or re-parented orphans (a SIGCHLD's work, or a sweep). */
  reapChildren(): void {
    let exits: ChildExit[];
    try {
      exits = this.native.reap();
    } catch (error) {
      this.logger.error({ err: error }, 'reap failed');
      return;
    }
    this.handleExits(exits);
  }

  /** What `native.watchChildren` reaped (armed respawns already started): the rest of the work. */
  handleExits(exits: ChildExit[], error: NativeError | null = null): void {
    if (error) this.logger.error({ err: error }, 'reap failed');
    for (const exit of exits) this.handleExit(exit);
  }

  private restartsAtOnce(name: string, exit: ChildExit): boolean {
    if (this.shuttingDown) return false;
    const spec = this.specs.get(name)!;
    // A container's next run waits for its last one to be cleaned up (handleExit): never ahead.
    if (spec.container !== undefined) return false;
    const ready = this.dependencyVerdict(spec) === 'ready';
    return restartsAtOnce(this.runtimes.get(name)!, spec, exit, this.clock.monoNow(), ready);
  }

  /** Starts the next run of a service whose exit the machine has not seen yet. */
  private prelaunch(name: string): void {
    this.disarm(name);
    const launch = this.launch(name);
    this.prelaunched.set(name, launch);
    // The new run has just exec'd and usually waits on this CPU behind us, still loading its
    // program: it goes first, the exit's bookkeeping after.
    if (launch.ok) this.native.yieldCpu();
  }

  /** The run the reaper started for this service's armed respawn, as a prelaunched one. */
  private takeRespawn(name: string, respawn: Respawn): void {
    const armed = this.armed.get(name);
    this.armed.delete(name);
    this.endRun(name);
    this.runs.set(name, { invocationId: armed?.invocationId ?? this.nextInvocationId() });
    if ('error' in respawn) {
      // The program may have moved since it was found: search again next time.
      this.resolvedPrograms.delete(name);
      this.prelaunched.set(name, { ok: false, stage: respawn.error.syscall ?? 'clone', message: respawn.error.message });
      return;
    }
    this.prelaunched.set(name, { ok: true, pid: respawn.pid, ...(respawn.readinessFd === null ? {} : { readinessFd: respawn.readinessFd }) });
  }

  private discardRespawn(respawn: Respawn): void {
    if ('error' in respawn) return;
    this.native.killProcessGroup(respawn.pid, 'SIGKILL');
    if (respawn.readinessFd !== null) this.native.close(respawn.readinessFd);
    this.logger.error({ pid: respawn.pid }, 'killed a respawn armed for a process that is no service');
  }

  /**
   * Keeps the reaper's armed respawn in step with the machine: armed for the main pid exactly
   * while `respawnsWhateverItsExit` holds (and never during shutdown).
   */
  private syncArm(name: string): void {
    const runtime = this.runtimes.get(name)!;
    const spec = this.specs.get(name)!;
    const want = !this.shuttingDown && spec.container === undefined && respawnsWhateverItsExit(runtime, spec, this.clock.monoNow()) ? runtime.pid : null;
    const current = this.armed.get(name);
    if ((current?.pid ?? null) === want) return;
    this.disarm(name);
    if (want === null) return;
    const invocationId = this.nextInvocationId();
    const plan = this.planRun(name, invocationId, undefined);
    if (!plan.ok) return; // the ordinary path reports it at the next start
    try {
      const { ok: _ok, ...spawnOptions } = plan;
      this.native.armRespawn(want, { ...spawnOptions, setsid: true }, spec.readiness.type === 'fd' ? spec.readiness.fd : undefined);
      this.armed.set(name, { pid: want, invocationId });
    } catch (error) {
      this.logger.error({ service: name, err: error }, `${name}: arming its respawn failed`);
    }
  }

  private disarm(name: string): void {
    const current = this.armed.get(name);
    if (!current) return;
    this.armed.delete(name);
    this.native.disarmRespawn(current.pid);
  }

  /** A prelaunched run the machine did not take (it decided otherwise): it must not run on. */
  private discardUnadopted(name: string): void {
    const launch = this.prelaunched.get(name);
    if (!launch) return;
    this.prelaunched.delete(name);
    if (!launch.ok) return;
    this.native.killProcessGroup(launch.pid, 'SIGKILL');
    if (launch.readinessFd !== undefined) this.native.close(launch.readinessFd);
    this.logger.error({ service: name, pid: launch.pid }, `${name}: killed a run started ahead of a restart that did not happen`);
  }

  /**
   * After crun exits. crun reports a container killed by signal n as 128+n: that is the run's
   * signal. crun itself killed by a signal (it never is by mos, which SIGKILLs the container's
   * init instead) may leave the container running and its state behind: the init is killed, so
   * the whole PID namespace goes, and the state removed, so the next `crun run` of the id works.
   */
  private endContainerRun(name: string, container: ContainerRun, exit: ChildExit): ChildExit {
    const init = this.containerInit(name);
    const run = this.runs.get(name);
    if (run) run.containerInit = undefined;
    if (exit.signal !== null) {
      if (init !== null) this.native.kill(init, 'SIGKILL');
      try {
        rmSync(path.join(container.stateRoot, container.id), { recursive: true, force: true });
      } catch (error) {
        this.logger.error({ service: name, err: error }, `${name}: removing crun's state of ${container.id} failed`);
      }
      this.logger.warn({ service: name, signal: exit.signal, init }, `${name}: crun was killed by ${exit.signal}; its container was killed and its state removed`);
      return exit;
    }
    if (exit.code !== null && exit.code > 128 && exit.code < 128 + 65) {
      const signal = signalName(exit.code - 128);
      if (signal !== null) return { ...exit, code: null, signal };
    }
    return exit;
  }

  /**
   * SIGKILL for a container goes to its init, not to crun: crun killed would leave the container
   * running; the init killed ends the PID namespace, and crun exits 137 after cleaning up.
   * False when there is no init to kill yet (crun still setting up): then crun itself goes.
   */
  private killContainerInit(name: string): boolean {
    const init = this.containerInit(name);
    if (init === null) return false;
    this.native.kill(init, 'SIGKILL');
    this.logger.debug({ service: name, pid: init }, 'sent SIGKILL to the container init');
    return true;
  }

  /** The host pid of a container service's init, from crun's pid file (null until crun wrote it). */
  private containerInit(name: string): number | null {
    const run = this.runs.get(name);
    const container = this.specs.get(name)?.container;
    if (run === undefined || container === undefined || this.runtimes.get(name)?.pid == null) return null;
    if (run.containerInit !== undefined) return run.containerInit;
    let text: string;
    try {
      text = readFileSync(container.pidFile, 'utf8');
    } catch {
      return null;
    }
    const pid = /^\s*([1-9]\d{0,9})\s*$/.exec(text);
    if (pid === null) return null;
    run.containerInit = Number(pid[1]);
    return run.containerInit;
  }

  /**
   * The exit of a child PID 1 started itself (not a service), from the one reaper. Call it in the
   * same turn as the spawn: the exit cannot be reaped before then.
   */
  waitForExit(pid: number): Promise<ChildExit> {
    return new Promise((resolve) => this.exitWaiters.set(pid, resolve));
  }

  get orphanCount(): number {
    return this.orphansReaped;
  }

  private handleExit(exit: ChildExit): void {
    const name = this.servicesByPid.get(exit.pid);
    if (name !== undefined) {
      const container = this.specs.get(name)!.container;
      if (container !== undefined) exit = this.endContainerRun(name, container, exit);
      // The restart latency is death → next exec: when the machine will restart this service at
      // once anyway, the next run starts first and the exit's bookkeeping follows. An armed
      // respawn has already started it (in the reaper); otherwise it starts here.
      if (exit.respawn) this.takeRespawn(name, exit.respawn);
      else if (this.restartsAtOnce(name, exit)) this.prelaunch(name);
      const launched = this.prelaunched.get(name);
      const pgid = this.runtimes.get(name)!.pgid;
      this.reusedGroup = launched?.ok && launched.pid === pgid ? pgid : null;
      this.handlingExit = true;
      try {
        this.dispatch(name, { type: 'exited', code: exit.code, signal: exit.signal });
      } finally {
        this.handlingExit = false;
        this.reusedGroup = null;
      }
      this.schedule();
      this.discardUnadopted(name);
      return;
    }
    if (exit.respawn) {
      // Armed for a pid that is no service's any more: disarming missed it. It must not run on.
      this.discardRespawn(exit.respawn);
    }
    const waiter = this.exitWaiters.get(exit.pid);
    if (waiter) {
      // A tool PID 1 ran itself (mke2fs, e2fsck): its exit goes to whoever waits for it.
      this.exitWaiters.delete(exit.pid);
      waiter(exit);
      return;
    }
    // Not a service's main process: an orphan re-parented to us, a daemon's forked-off parent
    // after MAINPID=, or a child whose exec failed. Reaping it is all there is to do.
    this.orphansReaped++;
    this.logger.debug({ pid: exit.pid, code: exit.code, signal: exit.signal }, 'reaped a process that is no service');
  }

  // ── events and effects ────────────────────────────────────────────────────────────────────

  private dispatch(name: string, event: ServiceEvent): void {
    const spec = this.specs.get(name);
    const before = this.runtimes.get(name);
    if (!spec || !before) return;
    const { runtime, effects } = transition(before, spec, event, { wall: this.clock.wallNow(), mono: this.clock.monoNow() });
    this.runtimes.set(name, runtime);
    if (runtime.pid !== before.pid) {
      if (before.pid !== null && this.servicesByPid.get(before.pid) === name) this.servicesByPid.delete(before.pid);
      if (runtime.pid !== null) this.servicesByPid.set(runtime.pid, name);
    }
    if (runtime.state !== before.state) {
      if (runtime.state === 'waiting') this.waiting.add(name);
      else this.waiting.delete(name);
      this.announce(name, event, before, runtime);
    }
    for (const effect of effects) this.apply(name, effect);
    if (runtime.state !== before.state || runtime.pid !== before.pid) this.syncArm(name);
    if (runtime.state !== before.state) this.syncResources(name, runtime.state);
  }

  /** Acquires a waiting service's resources; releases those of a service that is down for good. */
  private syncResources(name: string, state: ServiceState): void {
    const resources = this.resources;
    if (!resources?.needs(name)) return;
    if (state === 'waiting' && !resources.isReady(name) && !this.acquiring.has(name)) {
      this.acquiring.add(name);
      this.queueResourceStep(name, async () => {
        let fault: { code: string; message: string } | null;
        try {
          fault = await resources.acquire(name);
        } catch (error) {
          fault = { code: 'E_RESOURCES', message: (error as Error).message };
        }
        this.acquiring.delete(name);
        if (fault) {
          this.logger.warn({ service: name, code: fault.code }, `${name}: ${fault.message}`);
          this.dispatch(name, { type: 'fatal', code: fault.code, reason: fault.message });
        }
        this.schedule();
      });
      return;
    }
    if ((state === 'stopped' || state === 'failed' || state === 'done') && (resources.isReady(name) || this.acquiring.has(name))) {
      this.queueResourceStep(name, async () => {
        if (!resources.isReady(name)) return;
        // Started again meanwhile: keep them.
        const now = this.runtimes.get(name)!.state;
        if (now !== 'stopped' && now !== 'failed' && now !== 'done') return;
        try {
          await resources.release(name);
        } catch (error) {
          this.logger.error({ service: name, err: error }, `${name}: releasing its resources failed`);
        }
      });
    }
  }

  private queueResourceStep(name: string, step: () => Promise<void>): void {
    const previous = this.resourceSteps.get(name) ?? Promise.resolve();
    const next = previous.then(step, step);
    this.resourceSteps.set(name, next);
    void next.finally(() => {
      if (this.resourceSteps.get(name) === next) this.resourceSteps.delete(name);
    });
  }

  /** Settles when no resource step of any service is running (for shutdown). */
  async resourcesSettled(): Promise<void> {
    while (this.resourceSteps.size > 0) await Promise.allSettled([...this.resourceSteps.values()]);
  }

  /** One structured log line and a status update per transition. */
  private announce(name: string, event: ServiceEvent, before: ServiceRuntime, after: ServiceRuntime): void {
    const level = after.state === 'failed' ? 'warn' : 'info';
    if (this.logger.isLevelEnabled?.(level) !== false) this.logTransition(level, name, event, before, after);
    if (this.listeners.size === 0) return;
    const status = publicStatus(after);
    for (const listener of this.listeners) {
      try {
        listener({ service: name, event, from: before.state, to: after.state, status });
      } catch (error) {
        this.logger.error({ err: error }, 'transition listener failed');
      }
    }
  }

  private logTransition(level: 'info' | 'warn', name: string, event: ServiceEvent, before: ServiceRuntime, after: ServiceRuntime): void {
    const fields: Record<string, unknown> = { service: name, event: event.type, from: before.state, to: after.state };
    if (after.pid !== null) fields.pid = after.pid;
    if (event.type === 'exited' || event.type === 'spawn-failed') fields.exit = after.lastExit?.text;
    if (after.lastExit?.cause && (event.type === 'exited' || event.type === 'spawn-failed')) fields.cause = after.lastExit.cause;
    if (after.reason) fields.reason = after.reason;
    if (after.errorCode) fields.code = after.errorCode;
    this.logger[level](fields, `${name}: ${before.state} -> ${after.state}`);
  }

  private apply(name: string, effect: Effect): void {
    switch (effect.type) {
      case 'spawn':
        this.spawn(name);
        return;
      case 'signal': {
        if (effect.group && effect.pid === this.reusedGroup) return;
        if (effect.signal === 'SIGKILL' && this.killContainerInit(name)) return;
        const sent = effect.group
          ? this.native.killProcessGroup(effect.pid, effect.signal)
          : this.native.kill(effect.pid, effect.signal);
        if (sent && effect.signal === 'SIGKILL') this.logger.debug({ service: name, pid: effect.pid }, 'sent SIGKILL');
        return;
      }
      case 'set-timer': {
        this.clearTimer(name, effect.name);
        if (effect.ms <= 0 && effect.name === 'backoff' && this.handlingExit) {
          // An immediate restart after a process exited happens in this turn, not the next: the
          // exit is the wake-up, and no spin is possible (every run needs a new exit). A restart
          // after a failed exec still waits a turn, so a missing program yields to the loop.
          this.dispatch(name, { type: 'timer', name: 'backoff' });
          return;
        }
        const handle = this.clock.setTimeout(() => {
          this.timers.get(name)?.delete(effect.name);
          this.dispatch(name, { type: 'timer', name: effect.name });
          this.schedule();
        }, effect.ms);
        this.timers.get(name)!.set(effect.name, handle);
        return;
      }
      case 'clear-timer':
        this.clearTimer(name, effect.name);
        return;
    }
  }

  private clearTimer(name: string, timer: TimerName): void {
    const timers = this.timers.get(name)!;
    const handle = timers.get(timer);
    if (handle !== undefined) {
      this.clock.clearTimeout(handle);
      timers.delete(timer);
    }
  }

  /** The machine's spawn effect: adopts the run `prelaunch` started, or starts one now. */
  private spawn(name: string): void {
    const prelaunched = this.prelaunched.get(name);
    if (prelaunched) this.prelaunched.delete(name);
    const launch = prelaunched ?? this.launch(name);
    if (!launch.ok) {
      this.failSpawn(name, launch.stage, launch.message);
      return;
    }
    if (launch.readinessFd !== undefined) {
      this.runs.get(name)!.readiness = this.watchReadinessPipe(name, launch.pid, launch.readinessFd);
    }
    this.dispatch(name, { type: 'spawned', pid: launch.pid });
  }

  private planRun(name: string, invocationId: string, readinessFd: number | undefined): SpawnPlan {
    const output = this.serviceLogs.open(name);
    this.devNullFd ??= openSync('/dev/null', 'r+');
    return planSpawn({
      spec: this.specs.get(name)!,
      stdoutFd: output.stdout,
      stderrFd: output.stderr,
      stdinFd: this.devNullFd,
      readinessFd,
      notifySocket: this.options.notifySocketPath,
      invocationId,
      isExecutable: this.isExecutable,
      resolvedProgram: this.resolvedPrograms.get(name),
    });
  }

  /** Plans and clones one run of a service: the syscalls only, no state machine. */
  private launch(name: string): Launch {
    const spec = this.specs.get(name)!;
    this.endRun(name);
    const run: Run = { invocationId: this.nextInvocationId() };
    this.runs.set(name, run);
    // Another run's pid would be taken for this one's init until crun writes the file.
    if (spec.container !== undefined) rmSync(spec.container.pidFile, { force: true });
    let readinessPipe: [number, number] | undefined;
    let readEndKept = false;
    try {
      if (spec.readiness.type === 'fd') readinessPipe = this.native.pipe();
      const plan = this.planRun(name, run.invocationId, readinessPipe?.[1]);
      if (!plan.ok) return { ok: false, stage: plan.stage, message: plan.message };
      const { ok: _ok, ...spawnOptions } = plan;
      let pid: number;
      try {
        pid = this.native.spawn({ ...spawnOptions, setsid: true });
      } catch (error) {
        // The program may have moved since it was found: search again next time.
        this.resolvedPrograms.delete(name);
        throw error;
      }
      this.resolvedPrograms.set(name, plan.file);
      readEndKept = readinessPipe !== undefined;
      return { ok: true, pid, ...(readinessPipe ? { readinessFd: readinessPipe[0] } : {}) };
    } catch (error) {
      const nativeError = error as NativeError;
      return { ok: false, stage: nativeError.syscall ?? 'clone', message: nativeError.message };
    } finally {
      // The child has its copy of the write end; ours would keep the pipe open past its exit.
      if (readinessPipe) {
        this.native.close(readinessPipe[1]);
        if (!readEndKept) this.native.close(readinessPipe[0]);
      }
    }
  }

  private failSpawn(name: string, stage: string, message: string): void {
    this.serviceLogs.append(name, 'stderr', `mos: cannot start ${name}: ${message}`);
    this.dispatch(name, { type: 'spawn-failed', stage, message });
  }

  /**
   * s6 readiness: the first newline on the notification fd means ready. A poll on the pipe and
   * a plain read(2), not a net.Socket: a stream per run costs more than the whole restart.
   */
  private watchReadinessPipe(name: string, pid: number, readFd: number): { fd: number; watch: { close(): void } } {
    this.native.setNonBlocking(readFd, true);
    const readiness = {
      fd: readFd,
      watch: this.native.watchReadable(readFd, () => {
        let ended = false;
        let sawNewline = false;
        for (;;) {
          let count: number;
          try {
            count = readSync(readFd, this.readinessBuffer);
          } catch (error) {
            // EAGAIN: drained for now. Anything else ends the watch (the run stays unready).
            if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') ended = true;
            break;
          }
          if (count === 0) {
            ended = true; // every writer closed it without a newline: never ready this way
            break;
          }
          if (this.readinessBuffer.subarray(0, count).includes(0x0a)) {
            sawNewline = true;
            break;
          }
        }
        if (!sawNewline && !ended) return;
        const run = this.runs.get(name);
        if (run?.readiness === readiness) {
          run.readiness = undefined;
          this.closeReadiness(readiness);
        }
        if (sawNewline && this.runtimes.get(name)?.pid === pid) {
          this.dispatch(name, { type: 'ready' });
          this.schedule();
        }
      }),
    };
    return readiness;
  }

  private closeReadiness(readiness: { fd: number; watch: { close(): void } }): void {
    readiness.watch.close();
    this.native.close(readiness.fd);
  }

  private endRun(name: string): void {
    const readiness = this.runs.get(name)?.readiness;
    if (readiness) this.closeReadiness(readiness);
    this.runs.delete(name);
  }

  // ── sd_notify ─────────────────────────────────────────────────────────────────────────────

  private readNotifications(fd: number): void {
    let datagrams;
    try {
      // Bounded per wake-up so one flood cannot starve the event loop; the poll fires again.
      datagrams = this.native.receiveCredDatagrams(fd, 256);
    } catch (error) {
      this.logger.error({ err: error }, 'reading the notify socket failed');
      return;
    }
    const now = this.clock.monoNow();
    for (const datagram of datagrams) {
      for (const passedFd of datagram.fds) this.native.close(passedFd);
      const name = this.serviceForSender(datagram.cred.pid);
      if (!name) {
        this.logger.debug({ pid: datagram.cred.pid }, 'notify message from a process that is no service');
        continue;
      }
      if (!this.notifyLimiter.admit(name, now)) continue;
      for (const event of notifyEvents(parseNotifyMessage(datagram.data))) this.dispatch(name, event);
    }
    for (const [service, dropped] of this.notifyLimiter.takeDropped()) {
      this.logger.warn({ service, dropped }, `${service}: notify messages dropped by the rate limit`);
    }
    this.schedule();
  }

  /**
   * The main pid first; else a process in the service's session (e.g. `systemd-notify`); for a
   * container, its init (crun's pid file) or a process in the init's session.
   */
  private serviceForSender(pid: number): string | null {
    const byPid = this.servicesByPid.get(pid);
    if (byPid !== undefined) return byPid;
    const session = this.sessionOf(pid);
    for (const [name, runtime] of this.runtimes) if (session !== null && runtime.pgid !== null && runtime.pgid === session) return name;
    for (const [name, spec] of this.specs) {
      if (spec.container === undefined) continue;
      const init = this.containerInit(name);
      if (init !== null && (init === pid || init === session)) return name;
    }
    return null;
  }

  // ── dependencies ──────────────────────────────────────────────────────────────────────────

  /** Starts every waiting service whose dependencies are ready; fails those whose requirement failed. */
  private schedule(): void {
    if (this.scheduling) return;
    this.scheduling = true;
    try {
      let changed = true;
      while (changed) {
        changed = false;
        for (const name of [...this.waiting]) {
          const verdict = this.dependencyVerdict(this.specs.get(name)!);
          if (verdict === 'wait') continue;
          this.dispatch(name, verdict === 'ready' ? { type: 'deps-ready' } : { type: 'dep-failed', dependency: verdict.failed });
          changed = true;
        }
      }
    } finally {
      this.scheduling = false;
    }
  }

  private dependencyVerdict(spec: ServiceSpec): 'ready' | 'wait' | { failed: string } {
    const resources = this.resources;
    if (resources?.needs(spec.name) && !resources.isReady(spec.name)) return 'wait';
    for (const dep of spec.requires) {
      const state = this.runtimes.get(dep)!.state;
      if (state === 'failed' || state === 'stopped') return { failed: dep };
      if (state !== 'running' && state !== 'done') return 'wait';
    }
    // `after` only orders: it waits for a dependency on its way up, not for one nobody started.
    for (const dep of spec.after) {
      if (PENDING_STATES.has(this.runtimes.get(dep)!.state)) return 'wait';
    }
    return 'ready';
  }

  /** The service and everything it requires, transitively, dependencies first. */
  private withRequirements(name: string, seen = new Set<string>()): string[] {
    if (seen.has(name)) return [];
    seen.add(name);
    const spec = this.specs.get(name)!;
    return [...spec.requires.flatMap((dep) => this.withRequirements(dep, seen)), name];
  }

  /** Services that require `name`, transitively, dependents first. */
  private dependentsOf(name: string, seen = new Set<string>()): string[] {
    const result: string[] = [];
    for (const spec of this.specs.values()) {
      if (!spec.requires.includes(name) || seen.has(spec.name)) continue;
      seen.add(spec.name);
      result.push(...this.dependentsOf(spec.name, seen), spec.name);
    }
    return result;
  }

  // ── operator API ──────────────────────────────────────────────────────────────────────────

  info(): SupervisorInfo {
    return {
      mode: this.options.mode ?? 'host',
      pid: process.pid,
      startedAt: this.startedAt,
      health: this.health,
      reason: this.healthReason,
      configPath: this.options.configPath ?? null,
    };
  }

  list(): ServiceStatus[] {
    return [...this.runtimes.values()].map(publicStatus);
  }

  status(name: string): ServiceStatus {
    return publicStatus(this.runtimeOf(name));
  }

  async start(name: string): Promise<ServiceStatus> {
    this.runtimeOf(name);
    if (this.shuttingDown) throw new ControlError('E_SHUTTING_DOWN', 'mos is shutting down');
    const settled = this.waitFor(name, SETTLED_AFTER_START);
    for (const service of this.withRequirements(name)) this.dispatch(service, { type: 'start' });
    this.schedule();
    return settled;
  }

  /**
   * Ends a service for a fault found outside its process (`E_VERITY_CORRUPT`): a running one is
   * stopped, and it ends in `failed` with `code` and `reason` instead of restarting.
   */
  failService(name: string, code: string, reason: string): void {
    this.runtimeOf(name);
    this.dispatch(name, { type: 'fatal', code, reason });
    this.schedule();
  }

  async stop(name: string): Promise<ServiceStatus> {
    this.runtimeOf(name);
    for (const dependent of this.dependentsOf(name)) await this.stopOne(dependent);
    return this.stopOne(name);
  }

  async restart(name: string): Promise<ServiceStatus> {
    await this.stopOne(name);
    return this.start(name);
  }

  logs(name: string, count: number): LogLine[] {
    this.runtimeOf(name);
    return this.serviceLogs.tail(name, count);
  }

  followLogs(name: string, onLine: (line: LogLine) => void): () => void {
    this.runtimeOf(name);
    return this.serviceLogs.follow(name, onLine);
  }

  private runtimeOf(name: string): ServiceRuntime {
    const runtime = this.runtimes.get(name);
    if (!runtime) throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
    return runtime;
  }

  private stopOne(name: string): Promise<ServiceStatus> {
    const settled = this.waitFor(name, SETTLED_AFTER_STOP);
    this.dispatch(name, { type: 'stop' });
    this.schedule();
    return settled;
  }

  /** Resolves with the status once the service is in one of `states` (at once if it is). */
  private waitFor(name: string, states: ReadonlySet<ServiceState>): Promise<ServiceStatus> {
    return new Promise((resolve) => {
      // Ignore the state it is in now unless nothing will move it: a start from `failed` must
      // wait for the new run, not resolve on the old failure.
      let sawChange = false;
      const unsubscribe = this.onTransition((change) => {
        if (change.service !== name) return;
        sawChange = true;
        if (states.has(change.to)) {
          unsubscribe();
          resolve(change.status);
        }
      });
      queueMicrotask(() => {
        if (!sawChange && states.has(this.runtimes.get(name)!.state)) {
          unsubscribe();
          resolve(this.status(name));
        }
      });
    });
  }

  // ── shutdown ──────────────────────────────────────────────────────────────────────────────

  /**
   * Stops everything in reverse dependency order: a service is stopped once nothing that
   * depends on it is still active. Each service gets its own stop timeout (then SIGKILL); the
   * whole stop is bounded by `deadlineMs`, after which whatever is left is SIGKILLed.
   */
  async stopAll(deadlineMs: number): Promise<ShutdownReport> {
    this.shuttingDown = true;
    for (const name of [...this.armed.keys()]) this.disarm(name);
    const began = this.clock.monoNow();
    const killed = new Set<string>();
    const unsubscribe = this.onTransition((change) => {
      if (change.event.type === 'exited' && change.status.lastExit?.cause === 'stop-timeout') killed.add(change.service);
    });
    // Nothing pending may start any more, and a service already being stopped by its watchdog
    // must not be restarted when it exits.
    for (const [name, runtime] of this.runtimes) {
      if (runtime.state !== 'starting' && runtime.state !== 'running') this.dispatch(name, { type: 'stop' });
    }
    const active = () => [...this.runtimes.values()].filter((r) => ACTIVE_STATES.has(r.state)).map((r) => r.name);
    let unsubscribeStep = () => {};
    const allStopped = new Promise<void>((resolve) => {
      const step = () => {
        const remaining = active();
        if (remaining.length === 0) {
          resolve();
          return;
        }
        // What an active service still needs must outlive it: one pass over the edges, so a
        // thousand services stop in linear time per step.
        const stillNeeded = new Set<string>();
        for (const name of remaining) {
          const spec = this.specs.get(name)!;
          for (const dep of spec.requires) stillNeeded.add(dep);
          for (const dep of spec.after) stillNeeded.add(dep);
        }
        for (const name of remaining) {
          if (this.runtimes.get(name)!.state === 'stopping' || stillNeeded.has(name)) continue;
          this.dispatch(name, { type: 'stop' });
        }
      };
      // Many services change state in one turn (a batch of exits reaped together): one step
      // per turn, not one per change, keeps stopping a thousand services linear.
      let stepQueued = false;
      const off = this.onTransition(() => {
        if (stepQueued) return;
        stepQueued = true;
        queueMicrotask(() => {
          stepQueued = false;
          step();
        });
      });
      unsubscribeStep = () => void off();
      step();
    });

    let deadlineHandle: unknown;
    const deadline = new Promise<'deadline'>((resolve) => {
      deadlineHandle = this.clock.setTimeout(() => resolve('deadline'), deadlineMs);
    });
    const outcome = await Promise.race([allStopped.then(() => 'done' as const), deadline]);
    this.clock.clearTimeout(deadlineHandle);
    unsubscribeStep();
    const unfinished = outcome === 'deadline' ? active() : [];
    for (const name of unfinished) {
      const runtime = this.runtimes.get(name)!;
      if (this.killContainerInit(name)) continue;
      if (runtime.pgid !== null) this.native.killProcessGroup(runtime.pgid, 'SIGKILL');
      if (runtime.pid !== null) this.native.kill(runtime.pid, 'SIGKILL');
    }
    unsubscribe();
    const report = { durationMs: Math.round(this.clock.monoNow() - began), killed: [...killed], unfinished };
    this.logger.info(report, `stopped all services in ${report.durationMs}ms`);
    return report;
  }

  /** Releases the notify socket and the runs' readers (the log store is closed by its owner). */
  close(): void {
    this.notifyWatch?.close();
    this.notifyWatch = null;
    if (this.notifyFd !== null) this.native.close(this.notifyFd);
    this.notifyFd = null;
    for (const name of [...this.armed.keys()]) this.disarm(name);
    for (const name of this.runs.keys()) this.endRun(name);
    for (const timers of this.timers.values()) for (const handle of timers.values()) this.clock.clearTimeout(handle);
    if (this.devNullFd !== null) this.native.close(this.devNullFd);
    this.devNullFd = null;
  }
}

/** `SIGKILL` for 9: the name of a signal number, or null for one Linux does not name. */
function signalName(number: number): string | null {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === number) return name;
  return null;
}
