import { describe, expect, it } from 'vitest';
import { type Clock, type Effect, type ServiceEvent, type ServiceRuntime, initialRuntime, transition } from '../../init/supervisor/machine.ts';
import type { ServiceSpec } from '../../init/supervisor/types.ts';
import { makeSpec } from '../helpers/specs.ts';

/** Drives one service through events with a hand-moved clock. */
function driver(spec: ServiceSpec) {
  const clock: Clock = { wall: 1_000_000, mono: 0 };
  let runtime: ServiceRuntime = initialRuntime(spec, clock.wall);
  let effects: Effect[] = [];
  return {
    send(event: ServiceEvent) {
      ({ runtime, effects } = transition(runtime, spec, event, clock));
      return effects;
    },
    advance(ms: number) {
      clock.wall += ms;
      clock.mono += ms;
    },
    get runtime() {
      return runtime;
    },
    get effects() {
      return effects;
    },
  };
}

const timersSet = (effects: Effect[]) =>
  effects.filter((e): e is Extract<Effect, { type: 'set-timer' }> => e.type === 'set-timer').map((e) => [e.name, e.ms]);

describe('service state machine', () => {
  it('starts a plain service: stopped → waiting → starting → running', () => {
    const d = driver(makeSpec({ name: 'web' }));
    d.send({ type: 'start' });
    expect(d.runtime.state).toBe('waiting');
    expect(d.send({ type: 'deps-ready' })).toEqual([{ type: 'spawn' }]);
    expect(d.runtime.state).toBe('starting');
    d.send({ type: 'spawned', pid: 42 });
    // readiness "none": ready at exec.
    expect(d.runtime.state).toBe('running');
    expect(d.runtime.pid).toBe(42);
    expect(timersSet(d.effects)).toEqual([['stable', 10_000]]);
  });

  it('waits for READY=1 with notify readiness, then arms the watchdog', () => {
    const d = driver(makeSpec({ name: 'db', readiness: 'notify', watchdog: '2s', startTimeout: '5s' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 7 });
    expect(d.runtime.state).toBe('starting');
    expect(timersSet(d.effects)).toEqual([['start-timeout', 5000]]);
    d.send({ type: 'ready' });
    expect(d.runtime.state).toBe('running');
    expect(timersSet(d.effects)).toEqual([
      ['stable', 10_000],
      ['watchdog', 2000],
    ]);
    expect(d.send({ type: 'watchdog-ping' })).toEqual([{ type: 'set-timer', name: 'watchdog', ms: 2000 }]);
  });

  it('restarts a crash with exponential backoff, capped, and resets after a stable run', () => {
    const d = driver(makeSpec({ name: 'web', backoff: { initial: '100ms', max: '400ms', resetAfter: '1s' }, startLimit: { burst: 100 } }));
    d.send({ type: 'start' });
    const delays: number[] = [];
    for (let run = 0; run < 4; run++) {
      d.send({ type: 'deps-ready' });
      d.send({ type: 'spawned', pid: 100 + run });
      d.send({ type: 'exited', code: 1, signal: null });
      expect(d.runtime.state).toBe('backoff');
      delays.push(timersSet(d.effects).find(([name]) => name === 'backoff')![1] as number);
      d.send({ type: 'timer', name: 'backoff' });
      expect(d.runtime.state).toBe('waiting');
    }
    expect(delays).toEqual([100, 200, 400, 400]);
    expect(d.runtime.restarts).toBe(4);
    expect(d.runtime.lastExit?.text).toBe('status=1/FAILURE');
    // A run that stays up past resetAfter resets the backoff.
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 200 });
    d.send({ type: 'timer', name: 'stable' });
    d.send({ type: 'exited', code: null, signal: 'SIGSEGV' });
    expect(timersSet(d.effects)).toContainEqual(['backoff', 100]);
  });

  it('kills what is left of the process group when the main process exits', () => {
    const d = driver(makeSpec({ name: 'web' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 42 });
    expect(d.send({ type: 'exited', code: 0, signal: null })).toContainEqual({ type: 'signal', pid: 42, signal: 'SIGKILL', group: true });
  });

  it('ends in failed with E_START_LIMIT when starts exceed the burst', () => {
    const d = driver(makeSpec({ name: 'web', backoff: { initial: 10 }, startLimit: { burst: 3, interval: '10s' } }));
    d.send({ type: 'start' });
    for (let run = 0; run < 3; run++) {
      d.send({ type: 'deps-ready' });
      d.send({ type: 'spawned', pid: run + 1 });
      d.send({ type: 'exited', code: 2, signal: null });
      d.advance(10);
      d.send({ type: 'timer', name: 'backoff' });
    }
    expect(d.send({ type: 'deps-ready' })).toEqual([]);
    expect(d.runtime.state).toBe('failed');
    expect(d.runtime.errorCode).toBe('E_START_LIMIT');
    expect(d.runtime.reason).toBe('start limit hit: more than 3 starts within 10s');
    // The operator can start it again: a fresh window.
    d.send({ type: 'start' });
    expect(d.send({ type: 'deps-ready' })).toEqual([{ type: 'spawn' }]);
  });

  it('lets the start window slide: slow crashes keep restarting', () => {
    const d = driver(makeSpec({ name: 'web', backoff: { initial: 10 }, startLimit: { burst: 2, interval: '1s' } }));
    d.send({ type: 'start' });
    for (let run = 0; run < 5; run++) {
      d.send({ type: 'deps-ready' });
      expect(d.runtime.state).toBe('starting');
      d.send({ type: 'spawned', pid: run + 1 });
      d.advance(600);
      d.send({ type: 'exited', code: 1, signal: null });
      d.send({ type: 'timer', name: 'backoff' });
    }
  });

  it('on-failure: a clean exit stops, a failure restarts; no: a failure fails', () => {
    const onFailure = driver(makeSpec({ name: 'a', restart: 'on-failure' }));
    onFailure.send({ type: 'start' });
    onFailure.send({ type: 'deps-ready' });
    onFailure.send({ type: 'spawned', pid: 1 });
    onFailure.send({ type: 'exited', code: 0, signal: null });
    expect(onFailure.runtime.state).toBe('stopped');

    const never = driver(makeSpec({ name: 'b', restart: 'no' }));
    never.send({ type: 'start' });
    never.send({ type: 'deps-ready' });
    never.send({ type: 'spawned', pid: 1 });
    never.send({ type: 'exited', code: 3, signal: null });
    expect(never.runtime.state).toBe('failed');
    expect(never.runtime.reason).toBe('exited with status=3/NOTIMPLEMENTED');
  });

  it('a oneshot is done on exit 0 and fails on an error without restart', () => {
    const ok = driver(makeSpec({ name: 'migrate', kind: 'oneshot' }));
    ok.send({ type: 'start' });
    ok.send({ type: 'deps-ready' });
    ok.send({ type: 'spawned', pid: 5 });
    expect(ok.runtime.state).toBe('starting');
    ok.send({ type: 'ready' });
    expect(ok.runtime.state).toBe('starting');
    ok.send({ type: 'exited', code: 0, signal: null });
    expect(ok.runtime.state).toBe('done');

    const bad = driver(makeSpec({ name: 'migrate', kind: 'oneshot' }));
    bad.send({ type: 'start' });
    bad.send({ type: 'deps-ready' });
    bad.send({ type: 'spawned', pid: 5 });
    bad.send({ type: 'exited', code: 1, signal: null });
    expect(bad.runtime.state).toBe('failed');
  });

  it('maps a failed exec to 203/EXEC and restarts by policy', () => {
    const d = driver(makeSpec({ name: 'web' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawn-failed', stage: 'execve', message: 'execve ENOENT /nope' });
    expect(d.runtime.state).toBe('backoff');
    expect(d.runtime.lastExit).toMatchObject({ code: 203, text: 'status=203/EXEC', cause: 'execve ENOENT /nope' });
  });

  it('a missed watchdog sends SIGABRT to the group, SIGKILL at the deadline, then restarts', () => {
    const d = driver(makeSpec({ name: 'db', readiness: 'notify', watchdog: '1s', stopTimeout: '3s', restart: 'on-failure' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'ready' });
    const onMiss = d.send({ type: 'timer', name: 'watchdog' });
    expect(d.runtime.state).toBe('stopping');
    expect(onMiss).toContainEqual({ type: 'signal', pid: 9, signal: 'SIGABRT', group: true });
    expect(onMiss).toContainEqual({ type: 'set-timer', name: 'stop-timeout', ms: 3000 });
    expect(d.send({ type: 'timer', name: 'stop-timeout' })).toEqual([{ type: 'signal', pid: 9, signal: 'SIGKILL', group: true }]);
    d.send({ type: 'exited', code: null, signal: 'SIGKILL' });
    expect(d.runtime.state).toBe('backoff');
    expect(d.runtime.lastExit?.cause).toBe('watchdog');
  });

  it('WATCHDOG=trigger acts like a miss; WATCHDOG_USEC= changes the interval', () => {
    const d = driver(makeSpec({ name: 'db', readiness: 'notify', watchdog: '1s' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'ready' });
    expect(d.send({ type: 'watchdog-interval', ms: 5000 })).toEqual([{ type: 'set-timer', name: 'watchdog', ms: 5000 }]);
    d.send({ type: 'watchdog-trigger' });
    expect(d.runtime.state).toBe('stopping');
  });

  it('an operator stop: stop signal to the group, SIGKILL at the deadline, reported as stop-timeout', () => {
    const d = driver(makeSpec({ name: 'web', stopSignal: 'SIGINT', stopTimeout: '2s' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 11 });
    expect(d.send({ type: 'stop' })).toContainEqual({ type: 'signal', pid: 11, signal: 'SIGINT', group: true });
    d.send({ type: 'timer', name: 'stop-timeout' });
    d.send({ type: 'exited', code: null, signal: 'SIGKILL' });
    expect(d.runtime.state).toBe('stopped');
    expect(d.runtime.lastExit?.cause).toBe('stop-timeout');
  });

  it('an operator stop during a watchdog kill is not followed by a restart', () => {
    const d = driver(makeSpec({ name: 'db', readiness: 'notify', watchdog: '1s' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'ready' });
    d.send({ type: 'timer', name: 'watchdog' });
    d.send({ type: 'stop' });
    d.send({ type: 'exited', code: null, signal: 'SIGABRT' });
    expect(d.runtime.state).toBe('stopped');
  });

  it('a start timeout stops the run and counts as a failure', () => {
    const d = driver(makeSpec({ name: 'db', readiness: 'notify', startTimeout: '1s' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'timer', name: 'start-timeout' });
    d.send({ type: 'exited', code: null, signal: 'SIGTERM' });
    expect(d.runtime.state).toBe('backoff');
    expect(d.runtime.lastExit?.cause).toBe('start-timeout');
  });

  it('a failed requirement fails the waiting dependent with E_DEPENDENCY', () => {
    const d = driver(makeSpec({ name: 'web' }));
    d.send({ type: 'start' });
    d.send({ type: 'dep-failed', dependency: 'db' });
    expect(d.runtime).toMatchObject({ state: 'failed', errorCode: 'E_DEPENDENCY', reason: 'requires db, which failed' });
  });

  it('ignores events that do not apply, and stale timers', () => {
    const d = driver(makeSpec({ name: 'web' }));
    for (const event of [{ type: 'ready' }, { type: 'exited', code: 0, signal: null }, { type: 'timer', name: 'watchdog' }] as ServiceEvent[]) {
      expect(d.send(event)).toEqual([]);
      expect(d.runtime.state).toBe('stopped');
    }
  });

  it('records STATUS= text and MAINPID=', () => {
    const d = driver(makeSpec({ name: 'web', readiness: 'notify' }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'status-text', text: 'loading' });
    d.send({ type: 'main-pid', pid: 10 });
    expect(d.runtime).toMatchObject({ statusText: 'loading', pid: 10, pgid: 9 });
  });

  it('a fatal fault stops a running service and ends it in failed with the code, never restarting', () => {
    const d = driver(makeSpec({ name: 'web', backoff: { initial: 0 } }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    const effects = d.send({ type: 'fatal', code: 'E_VERITY_CORRUPT', reason: 'image web: data block 3 is corrupted' });
    expect(d.runtime.state).toBe('stopping');
    expect(effects).toContainEqual({ type: 'signal', pid: 9, signal: 'SIGTERM', group: true });
    d.send({ type: 'exited', code: null, signal: 'SIGTERM' });
    expect(d.runtime).toMatchObject({ state: 'failed', errorCode: 'E_VERITY_CORRUPT', reason: 'image web: data block 3 is corrupted', pid: null });
    expect(timersSet(d.effects)).toEqual([]);
    // An operator start is a fresh try.
    d.send({ type: 'start' });
    expect(d.runtime).toMatchObject({ state: 'waiting', errorCode: null });
  });

  it('a fatal fault while waiting out a backoff fails at once; while stopping, at the exit', () => {
    const d = driver(makeSpec({ name: 'web', backoff: { initial: '1s' } }));
    d.send({ type: 'start' });
    d.send({ type: 'deps-ready' });
    d.send({ type: 'spawned', pid: 9 });
    d.send({ type: 'exited', code: 1, signal: null });
    expect(d.runtime.state).toBe('backoff');
    const effects = d.send({ type: 'fatal', code: 'E_VERITY_CORRUPT', reason: 'corrupt' });
    expect(d.runtime).toMatchObject({ state: 'failed', errorCode: 'E_VERITY_CORRUPT' });
    expect(effects).toContainEqual({ type: 'clear-timer', name: 'backoff' });

    const e = driver(makeSpec({ name: 'db' }));
    e.send({ type: 'start' });
    e.send({ type: 'deps-ready' });
    e.send({ type: 'spawned', pid: 5 });
    e.send({ type: 'stop' });
    e.send({ type: 'fatal', code: 'E_VERITY_CORRUPT', reason: 'corrupt' });
    expect(e.runtime.state).toBe('stopping');
    e.send({ type: 'exited', code: 0, signal: null });
    expect(e.runtime).toMatchObject({ state: 'failed', errorCode: 'E_VERITY_CORRUPT' });
  });

  it('an unavailable service fails at its start with its code and spawns nothing', () => {
    const spec = { ...makeSpec({ name: 'web' }), unavailable: { code: 'E_VERITY_LAYOUT', message: 'image web: no verity superblock' } };
    const d = driver(spec);
    d.send({ type: 'start' });
    expect(d.send({ type: 'deps-ready' })).toEqual([]);
    expect(d.runtime).toMatchObject({ state: 'failed', errorCode: 'E_VERITY_LAYOUT', reason: 'image web: no verity superblock' });
  });
});

describe('status of a container', () => {
  it('carries its cgroup limits and its warnings from the spec', () => {
    // As the container phase makes it (config files cannot name these).
    const spec: ServiceSpec = {
      ...makeSpec({ name: 'web' }),
      warnings: ['not idmapped'],
      container: { id: 'mos-web', stateRoot: '/run/mos/crun', pidFile: '/run/mos/bundles/web/init.pid', cgroupDir: '/sys/fs/cgroup/mos/web', limits: { memoryBytes: 67108864, pids: 64 } },
    };
    const runtime = initialRuntime(spec, 0);
    expect(runtime.limits).toEqual({ memoryBytes: 67108864, pids: 64 });
    expect(runtime.warnings).toEqual(['not idmapped']);
    expect(initialRuntime(makeSpec({ name: 'plain' }), 0).limits).toBeUndefined();
  });
});
