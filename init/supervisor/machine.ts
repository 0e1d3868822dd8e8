/**
 * The per-service state machine: `(runtime, event) → (runtime', effects)`, pure.
 *
 * The supervisor feeds it events (operator commands, process exits, readiness, timers) and
 * carries out the effects it returns (spawn, signal, timers). Nothing here reads a clock or
 * touches a process, so every path is unit-tested with plain data.
 *
 * States and what moves them:
 *
 *   stopped ──start──► waiting ──deps-ready──► starting ──ready──► running
 *      ▲                  ▲  │                   │ │                  │
 *      │            backoff-timer  dep-failed     │ └──exit(oneshot ok)─► done
 *      │                  │  ▼                   ▼                     ▼
 *      └──exit(stop)── stopping ◄── stop / watchdog / start-timeout ───┘
 *                         │
 *              exit ──► backoff | failed | stopped   (by restart policy and start limit)
 */
import { SPAWN_STAGE_EXIT_CODE, exitStatusText } from './exit-status.ts';
import { checkStartLimit, computeBackoffDelay, decideAfterExit } from './policy.ts';
import type { ExitInfo, ServiceSpec, ServiceState, ServiceStatus } from './types.ts';

export type TimerName = 'backoff' | 'start-timeout' | 'stop-timeout' | 'watchdog' | 'stable';
const ALL_TIMERS: TimerName[] = ['backoff', 'start-timeout', 'stop-timeout', 'watchdog', 'stable'];

/** Why a stop was started: decides what the exit that follows means. */
export type StopCause = 'operator' | 'watchdog' | 'start-timeout' | 'fatal';

export interface ServiceRuntime extends ServiceStatus {
  /** Process group (the service is a session leader): signals go to the whole group. */
  pgid: number | null;
  /** Monotonic times of recent starts, for the start limit. */
  recentStarts: number[];
  stopCause: StopCause | null;
  /** True once the stop deadline passed and SIGKILL was sent. */
  killedAtDeadline: boolean;
  /** A fault found outside the process (e.g. its image is corrupt): the run ends in `failed` with it. */
  fatal: { code: string; reason: string } | null;
}

export type ServiceEvent =
  | { type: 'start' }
  | { type: 'stop' }
  | { type: 'deps-ready' }
  | { type: 'dep-failed'; dependency: string }
  | { type: 'spawned'; pid: number }
  | { type: 'spawn-failed'; stage: string; message: string }
  | { type: 'ready' }
  | { type: 'exited'; code: number | null; signal: string | null }
  | { type: 'timer'; name: TimerName }
  | { type: 'watchdog-ping' }
  | { type: 'watchdog-trigger' }
  | { type: 'watchdog-interval'; ms: number }
  | { type: 'status-text'; text: string }
  | { type: 'main-pid'; pid: number }
  /** The supervisor found the service cannot go on (e.g. `E_VERITY_CORRUPT`): stop it, never restart. */
  | { type: 'fatal'; code: string; reason: string };

export type Effect =
  | { type: 'spawn' }
  | { type: 'signal'; pid: number; signal: string; group: boolean }
  | { type: 'set-timer'; name: TimerName; ms: number }
  | { type: 'clear-timer'; name: TimerName };

export interface Clock {
  /** Wall-clock ms, for what operators read. */
  wall: number;
  /** Monotonic ms, for windows and deadlines. */
  mono: number;
}

export interface Transition {
  runtime: ServiceRuntime;
  effects: Effect[];
}

export function initialRuntime(spec: ServiceSpec, wallNow: number): ServiceRuntime {
  return {
    name: spec.name,
    kind: spec.kind,
    state: 'stopped',
    since: wallNow,
    pid: null,
    pgid: null,
    startedAt: null,
    readyAt: null,
    readiness: spec.readiness.type,
    restarts: 0,
    failures: 0,
    lastExit: null,
    reason: null,
    errorCode: null,
    statusText: null,
    nextStartAt: null,
    watchdogMs: spec.watchdogMs,
    warnings: spec.warnings ?? [],
    ...(spec.container?.limits !== undefined ? { limits: { ...spec.container.limits } } : {}),
    recentStarts: [],
    stopCause: null,
    killedAtDeadline: false,
    fatal: null,
  };
}

export function publicStatus(runtime: ServiceRuntime): ServiceStatus {
  const { pgid: _pgid, recentStarts: _starts, stopCause: _cause, killedAtDeadline: _killed, fatal: _fatal, ...status } = runtime;
  return status;
}

function clearTimers(...except: TimerName[]): Effect[] {
  return ALL_TIMERS.filter((name) => !except.includes(name)).map((name) => ({ type: 'clear-timer', name }));
}

function enter(runtime: ServiceRuntime, state: ServiceState, clock: Clock, changes: Partial<ServiceRuntime> = {}): ServiceRuntime {
  return { ...runtime, ...changes, state, since: state === runtime.state ? runtime.since : clock.wall };
}

/** Sends the stop signal to the group and arms the SIGKILL deadline. */
function beginStop(runtime: ServiceRuntime, spec: ServiceSpec, clock: Clock, cause: StopCause, signal: string): Transition {
  const pid = runtime.pgid ?? runtime.pid!;
  return {
    runtime: enter(runtime, 'stopping', clock, { stopCause: cause, killedAtDeadline: false }),
    effects: [
      ...clearTimers(),
      { type: 'signal', pid, signal, group: true },
      { type: 'set-timer', name: 'stop-timeout', ms: spec.stopTimeoutMs },
    ],
  };
}

/** Everything about a run that is over: exit facts, cleared process fields, leftover group. */
function endRun(runtime: ServiceRuntime, clock: Clock, exit: ExitInfo): { runtime: ServiceRuntime; effects: Effect[] } {
  const effects: Effect[] = [...clearTimers()];
  // The main process is gone; anything left in its process group would run unsupervised.
  if (runtime.pgid !== null) effects.push({ type: 'signal', pid: runtime.pgid, signal: 'SIGKILL', group: true });
  return {
    runtime: { ...runtime, pid: null, pgid: null, readyAt: null, lastExit: exit, statusText: null },
    effects,
  };
}

/** After a run ended (exit or failed exec): restart with backoff, finish, or fail. */
function afterRun(runtime: ServiceRuntime, spec: ServiceSpec, clock: Clock, exit: ExitInfo, effects: Effect[]): Transition {
  const cause = exit.cause === 'watchdog' || exit.cause === 'start-timeout' ? exit.cause : undefined;
  const decision = decideAfterExit(spec.kind, spec.restart, { code: exit.code, signal: exit.signal, cause });
  // A run that did not reach the stable period counts toward the backoff.
  const failures = runtime.failures + 1;
  if (decision.action === 'finish') {
    const state = spec.kind === 'oneshot' ? 'done' : 'stopped';
    return { runtime: enter(runtime, state, clock, { failures: 0, reason: null, errorCode: null, nextStartAt: null }), effects };
  }
  if (decision.action === 'fail') {
    const reason = exit.cause ? `${exit.cause} (${exit.text})` : `exited with ${exit.text}`;
    return { runtime: enter(runtime, 'failed', clock, { failures, reason, errorCode: 'E_EXIT', nextStartAt: null }), effects };
  }
  const delay = computeBackoffDelay(spec.backoff, failures);
  return {
    runtime: enter(runtime, 'backoff', clock, {
      failures,
      restarts: runtime.restarts + 1,
      reason: `restarting in ${delay}ms after ${exit.cause ?? exit.text}`,
      errorCode: null,
      nextStartAt: clock.wall + delay,
    }),
    effects: [...effects, { type: 'set-timer', name: 'backoff', ms: delay }],
  };
}

function exitInfo(code: number | null, signal: string | null, clock: Clock, cause?: string): ExitInfo {
  return { code, signal, text: exitStatusText(code, signal), at: clock.wall, ...(cause ? { cause } : {}) };
}

function becomeReady(runtime: ServiceRuntime, spec: ServiceSpec, clock: Clock): Transition {
  const effects: Effect[] = [
    { type: 'clear-timer', name: 'start-timeout' },
    { type: 'set-timer', name: 'stable', ms: spec.backoff.resetAfterMs },
  ];
  // The watchdog starts at readiness: start-up may legitimately take longer than one interval.
  if (runtime.watchdogMs > 0) effects.push({ type: 'set-timer', name: 'watchdog', ms: runtime.watchdogMs });
  return { runtime: enter(runtime, 'running', clock, { readyAt: clock.wall, reason: null }), effects };
}

/**
 * Whether a run that ends now, with this status, is followed by the next start in the same turn,
 * exactly as `transition` goes on to decide it: `exited` (in `starting` or `running`) → `backoff`
 * with a zero delay → `waiting` → `deps-ready` within the start limit → spawn. The supervisor
 * starts that next run before it does the exit's bookkeeping, and the machine then adopts it at
 * its spawn effect (the unit tests hold this function to `transition`). `dependenciesReady` is
 * the supervisor's verdict on the service's `requires`/`after` at this moment; `monoNow` is no
 * later than the machine's own reading, so a start the limit allows here it allows there.
 */
export function restartsAtOnce(
  runtime: ServiceRuntime,
  spec: ServiceSpec,
  exit: { code: number | null; signal: string | null },
  monoNow: number,
  dependenciesReady: boolean,
): boolean {
  if (runtime.state !== 'running' && runtime.state !== 'starting') return false;
  if (!dependenciesReady) return false;
  if (decideAfterExit(spec.kind, spec.restart, { code: exit.code, signal: exit.signal }).action !== 'restart') return false;
  if (computeBackoffDelay(spec.backoff, runtime.failures + 1) > 0) return false;
  return checkStartLimit(spec.startLimit, runtime.recentStarts, monoNow).allowed;
}

/**
 * Whether the next exit of the service's main process restarts it at once whatever its status
 * and whenever it comes, so the next run may be decided now and armed in the reaper
 * (`native.armRespawn`): `restartsAtOnce` holds for every exit status at every later time. That
 * needs restart `always` for a longrun, a zero backoff, room in the start limit now (starts only
 * leave the window as time passes), and no `requires`/`after` (their states may change
 * meanwhile; such services take the ordinary path, a little later).
 */
export function respawnsWhateverItsExit(runtime: ServiceRuntime, spec: ServiceSpec, monoNow: number): boolean {
  if (runtime.state !== 'running' && runtime.state !== 'starting') return false;
  if (runtime.pid === null || spec.kind !== 'longrun' || spec.restart !== 'always') return false;
  if (spec.requires.length > 0 || spec.after.length > 0) return false;
  if (computeBackoffDelay(spec.backoff, runtime.failures + 1) > 0) return false;
  return checkStartLimit(spec.startLimit, runtime.recentStarts, monoNow).allowed;
}

/** Pure transition. Events that do not apply in a state leave it unchanged with no effects. */
export function transition(runtime: ServiceRuntime, spec: ServiceSpec, event: ServiceEvent, clock: Clock): Transition {
  const unchanged: Transition = { runtime, effects: [] };
  const { state } = runtime;

  switch (event.type) {
    case 'start': {
      if (state === 'stopped' || state === 'failed' || state === 'done') {
        // An operator start is a fresh start: forget the old limit window and backoff.
        return {
          runtime: enter(runtime, 'waiting', clock, {
            restarts: 0, failures: 0, recentStarts: [], reason: 'waiting for dependencies', errorCode: null, nextStartAt: null, fatal: null,
          }),
          effects: [],
        };
      }
      if (state === 'backoff') {
        return { runtime: enter(runtime, 'waiting', clock, { nextStartAt: null, reason: 'waiting for dependencies' }), effects: clearTimers() };
      }
      return unchanged;
    }

    case 'deps-ready': {
      if (state !== 'waiting') return unchanged;
      if (spec.unavailable) {
        return {
          runtime: enter(runtime, 'failed', clock, { reason: spec.unavailable.message, errorCode: spec.unavailable.code, nextStartAt: null }),
          effects: [],
        };
      }
      const limit = checkStartLimit(spec.startLimit, runtime.recentStarts, clock.mono);
      if (!limit.allowed) {
        const seconds = Math.round(spec.startLimit.intervalMs / 1000);
        return {
          runtime: enter(runtime, 'failed', clock, {
            recentStarts: limit.starts,
            reason: `start limit hit: more than ${spec.startLimit.burst} starts within ${seconds}s`,
            errorCode: 'E_START_LIMIT',
          }),
          effects: [],
        };
      }
      return {
        runtime: enter(runtime, 'starting', clock, { recentStarts: limit.starts, reason: null, killedAtDeadline: false, stopCause: null }),
        effects: [{ type: 'spawn' }],
      };
    }

    case 'dep-failed': {
      if (state !== 'waiting') return unchanged;
      return {
        runtime: enter(runtime, 'failed', clock, { reason: `requires ${event.dependency}, which failed`, errorCode: 'E_DEPENDENCY' }),
        effects: [],
      };
    }

    case 'spawned': {
      if (state !== 'starting') return unchanged;
      const started = { ...runtime, pid: event.pid, pgid: event.pid, startedAt: clock.wall, readyAt: null, statusText: null };
      if (spec.kind === 'longrun' && spec.readiness.type === 'none') return becomeReady(started, spec, clock);
      const effects: Effect[] = spec.startTimeoutMs > 0 ? [{ type: 'set-timer', name: 'start-timeout', ms: spec.startTimeoutMs }] : [];
      return { runtime: started, effects };
    }

    case 'spawn-failed': {
      if (state !== 'starting') return unchanged;
      const code = SPAWN_STAGE_EXIT_CODE[event.stage] ?? 203;
      const exit = exitInfo(code, null, clock, event.message);
      const ended = { ...runtime, pid: null, pgid: null, readyAt: null, lastExit: exit };
      return afterRun(ended, spec, clock, exit, clearTimers());
    }

    case 'ready': {
      if (state !== 'starting' || spec.kind !== 'longrun') return unchanged;
      return becomeReady(runtime, spec, clock);
    }

    case 'exited': {
      if (state === 'stopping') {
        const cause = runtime.stopCause === 'operator' ? (runtime.killedAtDeadline ? 'stop-timeout' : undefined) : runtime.stopCause!;
        const exit = exitInfo(event.code, event.signal, clock, cause ?? undefined);
        const ended = endRun(runtime, clock, exit);
        if (runtime.fatal) {
          const { code, reason } = runtime.fatal;
          return { runtime: enter(ended.runtime, 'failed', clock, { reason, errorCode: code, stopCause: null, nextStartAt: null }), effects: ended.effects };
        }
        if (runtime.stopCause === 'operator') {
          return { runtime: enter(ended.runtime, 'stopped', clock, { reason: null, stopCause: null }), effects: ended.effects };
        }
        return afterRun({ ...ended.runtime, stopCause: null }, spec, clock, exit, ended.effects);
      }
      if (state !== 'starting' && state !== 'running') return unchanged;
      const exit = exitInfo(event.code, event.signal, clock);
      const ended = endRun(runtime, clock, exit);
      return afterRun(ended.runtime, spec, clock, exit, ended.effects);
    }

    case 'stop': {
      if (state === 'starting' || state === 'running') {
        if (runtime.pid === null) return unchanged;
        return beginStop(runtime, spec, clock, 'operator', spec.stopSignal);
      }
      if (state === 'stopping') {
        // An operator stop during a watchdog kill must not be followed by a restart.
        return { runtime: { ...runtime, stopCause: 'operator' }, effects: [] };
      }
      if (state === 'waiting' || state === 'backoff' || state === 'done' || state === 'failed') {
        return { runtime: enter(runtime, 'stopped', clock, { reason: null, nextStartAt: null }), effects: clearTimers() };
      }
      return unchanged;
    }

    case 'timer': {
      switch (event.name) {
        case 'backoff':
          if (state !== 'backoff') return unchanged;
          return { runtime: enter(runtime, 'waiting', clock, { nextStartAt: null, reason: 'waiting for dependencies' }), effects: [] };
        case 'start-timeout':
          if (state !== 'starting' || runtime.pid === null) return unchanged;
          return beginStop(runtime, spec, clock, 'start-timeout', spec.stopSignal);
        case 'watchdog':
          if (state !== 'running' || runtime.pid === null) return unchanged;
          // systemd's convention: SIGABRT first, so the service can dump core and say where it hung.
          return beginStop(runtime, spec, clock, 'watchdog', 'SIGABRT');
        case 'stop-timeout':
          if (state !== 'stopping' || runtime.pgid === null) return unchanged;
          return {
            runtime: { ...runtime, killedAtDeadline: true },
            effects: [{ type: 'signal', pid: runtime.pgid, signal: 'SIGKILL', group: true }],
          };
        case 'stable':
          if (state !== 'running') return unchanged;
          return { runtime: { ...runtime, failures: 0 }, effects: [] };
      }
      return unchanged;
    }

    case 'watchdog-ping': {
      if (state !== 'running' || runtime.watchdogMs <= 0) return unchanged;
      return { runtime, effects: [{ type: 'set-timer', name: 'watchdog', ms: runtime.watchdogMs }] };
    }

    case 'watchdog-trigger': {
      if (state !== 'running' || runtime.pid === null) return unchanged;
      return beginStop(runtime, spec, clock, 'watchdog', 'SIGABRT');
    }

    case 'watchdog-interval': {
      const next = { ...runtime, watchdogMs: event.ms };
      if (state !== 'running') return { runtime: next, effects: [] };
      return {
        runtime: next,
        effects: [event.ms > 0 ? { type: 'set-timer', name: 'watchdog', ms: event.ms } : { type: 'clear-timer', name: 'watchdog' }],
      };
    }

    case 'status-text':
      return { runtime: { ...runtime, statusText: event.text }, effects: [] };

    case 'main-pid': {
      if ((state !== 'starting' && state !== 'running') || event.pid <= 0) return unchanged;
      return { runtime: { ...runtime, pid: event.pid }, effects: [] };
    }

    case 'fatal': {
      const fatal = { code: event.code, reason: event.reason };
      if ((state === 'starting' || state === 'running') && runtime.pid !== null) {
        const stop = beginStop(runtime, spec, clock, 'fatal', spec.stopSignal);
        return { runtime: { ...stop.runtime, fatal }, effects: stop.effects };
      }
      // Already on its way down: the exit that follows ends in `failed` instead.
      if (state === 'stopping') return { runtime: { ...runtime, fatal }, effects: [] };
      return {
        runtime: enter(runtime, 'failed', clock, { reason: event.reason, errorCode: event.code, nextStartAt: null, fatal: null }),
        effects: clearTimers(),
      };
    }
  }
}
