/**
 * Starting the next run before the exit's bookkeeping: the pure predicates that allow it, held
 * to the state machine itself, and the supervisor's use of them (armed respawns in the reaper,
 * runs started ahead in JavaScript) with the fake native port.
 */
import { describe, expect, it } from 'vitest';
import {
  type Clock,
  type ServiceRuntime,
  initialRuntime,
  respawnsWhateverItsExit,
  restartsAtOnce,
  transition,
} from '../../init/supervisor/machine.ts';
import type { ServiceSpec } from '../../init/supervisor/types.ts';
import { FakeNative } from '../../native/fake.ts';
import { Supervisor } from '../../init/supervisor/supervisor.ts';
import { parseServiceConfig } from '../../init/supervisor/spec.ts';
import { FakeClock } from '../helpers/fake-clock.ts';
import { MemoryLogs, silentLogger } from '../helpers/memory-logs.ts';
import { makeSpec } from '../helpers/specs.ts';

type Exit = { code: number | null; signal: string | null };
const EXITS: Exit[] = [
  { code: 0, signal: null },
  { code: 1, signal: null },
  { code: null, signal: 'SIGKILL' },
];

/** What the machine does after `exit` at `mono`: does the chain end in a spawn this turn? */
function machineRestartsAtOnce(runtime: ServiceRuntime, spec: ServiceSpec, exit: Exit, mono: number): boolean {
  const clock: Clock = { wall: 5_000_000 + mono, mono };
  let step = transition(runtime, spec, { type: 'exited', ...exit }, clock);
  const backoff = step.effects.find((e) => e.type === 'set-timer' && e.name === 'backoff');
  if (step.runtime.state !== 'backoff' || !backoff || backoff.type !== 'set-timer' || backoff.ms > 0) return false;
  step = transition(step.runtime, spec, { type: 'timer', name: 'backoff' }, clock);
  step = transition(step.runtime, spec, { type: 'deps-ready' }, clock);
  return step.effects.some((e) => e.type === 'spawn');
}

/** Runtimes a service really reaches: running, starting (unready), stopping, after some restarts. */
function reachableRuntimes(spec: ServiceSpec): { runtime: ServiceRuntime; mono: number }[] {
  const found: { runtime: ServiceRuntime; mono: number }[] = [];
  let mono = 0;
  let runtime = initialRuntime(spec, 0);
  let pid = 100;
  const send = (event: Parameters<typeof transition>[2]) => {
    runtime = transition(runtime, spec, event, { wall: mono, mono }).runtime;
  };
  // Read through a call: the state changes inside `send`, out of the compiler's sight.
  const state = () => runtime.state;
  send({ type: 'start' });
  for (let run = 0; run < 4; run++) {
    send({ type: 'deps-ready' });
    if (state() !== 'starting') break;
    send({ type: 'spawned', pid: pid++ });
    found.push({ runtime, mono });
    send({ type: 'ready' });
    found.push({ runtime, mono });
    const stopping = transition(runtime, spec, { type: 'stop' }, { wall: mono, mono }).runtime;
    found.push({ runtime: stopping, mono });
    mono += 300;
    send({ type: 'exited', code: 1, signal: null });
    if (state() === 'backoff') send({ type: 'timer', name: 'backoff' });
    if (state() !== 'waiting') break;
  }
  return found;
}

/** A validated spec; a `db` service exists for dependencies to name. */
function spec(fields: Record<string, unknown> & { name: string }): ServiceSpec {
  return parseServiceConfig({ services: [{ argv: ['/bin/true'], ...fields }, { name: 'db', argv: ['/bin/true'] }] }, 'test')[0]!;
}

const SPECS: ServiceSpec[] = [];
for (const kind of ['longrun', 'oneshot']) {
  for (const restart of ['always', 'on-failure', 'no']) {
    for (const initial of ['0', '100ms']) {
      for (const startLimit of [{ burst: 2, interval: '1s' }, { burst: 100, interval: '10s' }]) {
        for (const deps of [{}, { after: ['db'] }]) {
          for (const readiness of ['none', 'notify']) {
            SPECS.push(spec({ name: 'svc', kind, restart, backoff: { initial }, startLimit, readiness, ...deps }));
          }
        }
      }
    }
  }
}

describe('restartsAtOnce and respawnsWhateverItsExit agree with the state machine', () => {
  it('restartsAtOnce is exactly the machine spawning in the same turn', () => {
    let both = 0;
    for (const spec of SPECS) {
      for (const { runtime, mono } of reachableRuntimes(spec)) {
        for (const exit of EXITS) {
          for (const later of [0, 400, 20_000]) {
            const predicted = restartsAtOnce(runtime, spec, exit, mono + later, true);
            expect(predicted, `${spec.kind}/${spec.restart} ${runtime.state} ${JSON.stringify(exit)} +${later}`).toBe(
              machineRestartsAtOnce(runtime, spec, exit, mono + later),
            );
            if (predicted) both++;
          }
        }
      }
    }
    expect(both).toBeGreaterThan(50); // the grid exercises the yes side too
  });

  it('an armed respawn is always right: every exit, at any later time, restarts at once', () => {
    let armed = 0;
    for (const spec of SPECS) {
      for (const { runtime, mono } of reachableRuntimes(spec)) {
        if (!respawnsWhateverItsExit(runtime, spec, mono)) continue;
        armed++;
        for (const exit of EXITS) {
          for (const later of [0, 1, 400, 999, 20_000]) {
            expect(machineRestartsAtOnce(runtime, spec, exit, mono + later)).toBe(true);
          }
        }
      }
    }
    expect(armed).toBeGreaterThan(5);
  });

  it('arms only restart-always longruns with zero backoff and no dependencies', () => {
    const running = (service: ServiceSpec) => reachableRuntimes(service)[1]!;
    const yes = makeSpec({ name: 'a', backoff: { initial: 0 } });
    expect(respawnsWhateverItsExit(running(yes).runtime, yes, 0)).toBe(true);
    for (const fields of [
      { restart: 'on-failure' },
      { backoff: { initial: '1ms' } },
      { requires: ['db'] },
      { after: ['db'] },
      { kind: 'oneshot' },
    ]) {
      const other = spec({ name: 'a', backoff: { initial: 0 }, ...fields });
      const reached = reachableRuntimes(other);
      expect(reached.some(({ runtime, mono }) => respawnsWhateverItsExit(runtime, other, mono)), JSON.stringify(fields)).toBe(false);
    }
  });
});

// ── the supervisor ────────────────────────────────────────────────────────────────────────────

const silent = silentLogger;

function setup(services: unknown[]) {
  const native = new FakeNative();
  const clock = new FakeClock();
  const logs = new MemoryLogs();
  const errors: string[] = [];
  const supervisor = new Supervisor({
    native,
    logs,
    logger: { ...silent, error: (_fields: object, message: string) => void errors.push(message) },
    clock,
    notifySocketPath: '/run/test/notify',
    isExecutable: (file) => file.startsWith('/bin/'),
    sessionOf: () => null,
  });
  supervisor.load(parseServiceConfig({ services }, 'test'));
  supervisor.listenForNotifications();
  const pidOf = (name: string) => supervisor.status(name).pid!;
  /** The process exits and SIGCHLD arrives: the reaper (with its armed respawns), then the supervisor. */
  const exit = (pid: number, how: { code?: number; signal?: string } = { code: 1 }) => {
    native.exit(pid, how);
    supervisor.reapChildren();
  };
  const invocationIdOf = (env: string[]) => env.find((entry) => entry.startsWith('INVOCATION_ID='));
  return { native, clock, logs, errors, supervisor, pidOf, exit, invocationIdOf };
}

const FAST = { name: 'fast', argv: ['/bin/fast'], backoff: { initial: 0 }, readiness: { fd: 3 } };

describe('supervisor: the next run before the bookkeeping', () => {
  it('arms a respawn for the running pid, and adopts the run the reaper started', () => {
    const { native, supervisor, pidOf, exit, invocationIdOf, errors } = setup([FAST]);
    supervisor.startAll();
    const first = pidOf('fast');
    const armed = native.armedRespawns.get(first)!;
    expect(armed.readinessChildFd).toBe(3);
    expect(armed.options).toMatchObject({ file: '/bin/fast', argv: ['/bin/fast'], setsid: true });
    expect(armed.options.fds.map((fd) => fd.child)).toEqual([0, 1, 2]);

    exit(first);
    expect(native.spawned).toHaveLength(2); // the armed run only: nothing spawned twice
    const second = native.spawned[1]!;
    expect(supervisor.status('fast')).toMatchObject({ state: 'starting', pid: second.pid, restarts: 1, lastExit: { text: 'status=1/FAILURE' } });
    expect(invocationIdOf(second.options.env)).toBe(invocationIdOf(armed.options.env));
    expect(invocationIdOf(second.options.env)).not.toBe(invocationIdOf(native.spawned[0]!.options.env));
    // The new run's readiness pipe is watched, and the next exit is armed in turn.
    expect(native.readableWatchers.size).toBeGreaterThan(1);
    expect([...native.armedRespawns.keys()]).toEqual([second.pid]);
    expect(errors).toEqual([]);
  });

  it('the respawned run becomes ready through its fresh readiness pipe', () => {
    const { native, supervisor, pidOf, exit } = setup([FAST]);
    supervisor.startAll();
    const before = new Set(native.readableWatchers.keys());
    exit(pidOf('fast'));
    const [readinessFd] = [...native.readableWatchers.keys()].filter((fd) => !before.has(fd));
    expect(readinessFd).toBeDefined();
    expect(native.openFds.has(readinessFd!)).toBe(true);
  });

  it('arms nothing for on-failure, a backoff, dependencies or a oneshot', () => {
    const { native, supervisor } = setup([
      { name: 'a', argv: ['/bin/a'], backoff: { initial: 0 }, restart: 'on-failure' },
      { name: 'b', argv: ['/bin/b'] },
      { name: 'c', argv: ['/bin/c'], backoff: { initial: 0 }, after: ['b'] },
      { name: 'd', argv: ['/bin/d'], backoff: { initial: 0 }, kind: 'oneshot' },
    ]);
    supervisor.startAll();
    expect(native.armedRespawns.size).toBe(0);
  });

  it('disarms when the service is stopped, and for shutdown', async () => {
    const { native, supervisor, pidOf } = setup([FAST, { ...FAST, name: 'other', argv: ['/bin/other'] }]);
    supervisor.startAll();
    expect(native.armedRespawns.size).toBe(2);
    const stopped = supervisor.stop('fast');
    expect(native.armedRespawns.has(pidOf('fast'))).toBe(false);
    native.exit(pidOf('fast'), { signal: 'SIGTERM' });
    supervisor.reapChildren();
    await stopped;
    expect(native.spawned).toHaveLength(2);
    const done = supervisor.stopAll(1000);
    expect(native.armedRespawns.size).toBe(0);
    native.exit(pidOf('other'), { signal: 'SIGTERM' });
    supervisor.reapChildren();
    await done;
    expect(native.spawned).toHaveLength(2);
  });

  it('re-arms for the new main pid after MAINPID=', () => {
    const { native, supervisor, pidOf } = setup([{ ...FAST, readiness: 'notify' }]);
    supervisor.startAll();
    const parent = pidOf('fast');
    const [fd] = [...native.boundSockets.keys()];
    native.deliverDatagram(fd!, 'MAINPID=4242\nREADY=1', { pid: parent, uid: 0, gid: 0 });
    expect([...native.armedRespawns.keys()]).toEqual([4242]);
    // The old parent exits as daemons do: not a restart.
    native.exit(parent, { code: 0 });
    supervisor.reapChildren();
    expect(supervisor.status('fast')).toMatchObject({ state: 'running', pid: 4242, restarts: 0 });
    expect(native.spawned).toHaveLength(1);
  });

  it('reports a respawn that could not exec as 203/EXEC, and restarts by policy', () => {
    const { native, supervisor, clock, pidOf, exit, logs } = setup([FAST]);
    supervisor.startAll();
    native.failNextSpawn = { stage: 'execve', code: 'ENOENT' };
    exit(pidOf('fast'));
    expect(supervisor.status('fast')).toMatchObject({ state: 'backoff', lastExit: { text: 'status=203/EXEC' } });
    expect(logs.appended).toEqual(['fast: mos: cannot start fast: execve ENOENT /bin/fast']);
    clock.advance(0);
    expect(supervisor.status('fast')).toMatchObject({ state: 'starting', restarts: 2 });
  });

  it('never SIGKILLs the new run when the kernel gave it the old process group number', () => {
    const { native, supervisor, pidOf, exit } = setup([FAST]);
    supervisor.startAll();
    const first = pidOf('fast');
    native.reusePidNext(first);
    exit(first);
    expect(pidOf('fast')).toBe(first);
    expect(native.signals).toEqual([]);
    expect(native.isAlive(first)).toBe(true);
  });

  it('still SIGKILLs what is left of the old process group otherwise', () => {
    const { native, supervisor, pidOf, exit } = setup([FAST]);
    supervisor.startAll();
    const first = pidOf('fast');
    exit(first);
    expect(native.signals).toEqual([{ pgid: first, signal: 'SIGKILL' }]);
  });

  it('starts an on-failure restart ahead of the bookkeeping in JavaScript, and yields the CPU to it', () => {
    const { native, supervisor, pidOf, exit } = setup([{ name: 'job', argv: ['/bin/job'], restart: 'on-failure', backoff: { initial: 0 } }]);
    supervisor.startAll();
    exit(pidOf('job'), { code: 2 });
    expect(native.spawned).toHaveLength(2);
    expect(native.yields).toBe(1);
    expect(supervisor.status('job')).toMatchObject({ state: 'running', pid: native.spawned[1]!.pid, restarts: 1 });
    exit(pidOf('job'), { code: 0 });
    expect(native.spawned).toHaveLength(2);
    expect(supervisor.status('job').state).toBe('stopped');
  });

  it('kills a respawn armed for a pid that is no service any more', () => {
    const { native, supervisor, errors } = setup([FAST]);
    native.armRespawn(777, { file: '/bin/x', argv: ['x'], env: [], fds: [] });
    native.exit(777, { code: 0 });
    supervisor.reapChildren();
    const stray = native.spawned[0]!.pid;
    expect(native.signals).toEqual([{ pgid: stray, signal: 'SIGKILL' }]);
    expect(errors).toEqual(['killed a respawn armed for a process that is no service']);
  });
});

describe('supervisor: resources a service needs (its image)', () => {
  function withResources(ready: boolean, fault: { code: string; message: string } | null = null) {
    const calls: string[] = [];
    let isReady = ready;
    let release: () => void = () => {};
    const resources = {
      needs: (name: string) => name === 'img',
      isReady: () => isReady,
      acquire: async (name: string) => {
        calls.push(`acquire ${name}`);
        if (!fault) isReady = true;
        return fault;
      },
      release: (name: string) => {
        calls.push(`release ${name}`);
        isReady = false;
        return new Promise<void>((resolve) => (release = resolve));
      },
    };
    const t = setup([{ name: 'img', argv: ['/bin/img'] }, { name: 'plain', argv: ['/bin/plain'] }]);
    t.supervisor.useResources(resources);
    return { ...t, calls, finishRelease: () => release() };
  }
  const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

  it('waits for them before the first start, like for a dependency', async () => {
    const { supervisor, native, calls } = withResources(false);
    supervisor.startAll();
    expect(supervisor.status('img').state).toBe('waiting');
    expect(native.spawned.map((s) => s.options.file)).toEqual(['/bin/plain']);
    await settle();
    expect(calls).toEqual(['acquire img']);
    expect(supervisor.status('img').state).toBe('running');
  });

  it('keeps them across restarts and gives them back at a stop; a start acquires them again', async () => {
    const { supervisor, native, calls, pidOf, exit, finishRelease } = withResources(true);
    supervisor.startAll();
    exit(pidOf('img'), { code: 1 });
    await settle();
    expect(calls).toEqual([]);
    const stopped = supervisor.stop('img');
    native.exit(pidOf('img'), { signal: 'SIGTERM' });
    supervisor.reapChildren();
    await stopped;
    await settle();
    expect(calls).toEqual(['release img']);
    const started = supervisor.start('img');
    await settle();
    expect(calls).toEqual(['release img']); // the acquire waits for the release to finish
    finishRelease();
    await started;
    expect(calls).toEqual(['release img', 'acquire img']);
    expect(supervisor.status('img').state).toBe('running');
  });

  it('a service whose resources cannot be made ready ends failed with their code', async () => {
    const { supervisor, native } = withResources(false, { code: 'E_VERITY_CORRUPT', message: 'image of img: dm-verity reports corrupted data' });
    supervisor.startAll();
    await settle();
    expect(supervisor.status('img')).toMatchObject({ state: 'failed', errorCode: 'E_VERITY_CORRUPT', reason: 'image of img: dm-verity reports corrupted data' });
    expect(native.spawned.map((s) => s.options.file)).toEqual(['/bin/plain']);
  });
});
