import { describe, expect, it } from 'vitest';
import {
  DEFAULT_SHUTDOWN_BOUNDS,
  parseProcStat,
  planShutdown,
  runShutdown,
  survivingProcesses,
  type ProcessInfo,
  type ShutdownEffects,
} from '../../init/boot/shutdown.ts';

describe('planShutdown', () => {
  it('stops services, TERMs then KILLs the rest, unmounts, syncs, then reboot(2), bounded', () => {
    const plan = planShutdown('poweroff');
    expect(plan.steps.map((s) => s.step)).toEqual(['stop-services', 'term-all', 'kill-all', 'unmount', 'sync', 'reboot']);
    expect(plan.steps.at(-1)).toEqual({ step: 'reboot', command: 'poweroff' });
    expect(planShutdown('reboot').steps.at(-1)).toEqual({ step: 'reboot', command: 'restart' });
    expect(planShutdown('halt').steps.at(-1)).toEqual({ step: 'reboot', command: 'halt' });
    const b = DEFAULT_SHUTDOWN_BOUNDS;
    expect(plan.boundMs).toBe(b.stopServicesMs + b.termGraceMs + b.killWaitMs + b.unmountMs + b.syncMs);
  });
});

describe('/proc/PID/stat', () => {
  it('parses a command name with spaces and parentheses', () => {
    expect(parseProcStat('1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0')).toEqual({
      pid: 1234,
      comm: 'my (odd) prog',
      state: 'S',
      ppid: 1,
      flags: 4194560,
    });
  });

  it('leaves out PID 1 itself, zombies and kernel threads', () => {
    const processes: ProcessInfo[] = [
      { pid: 1, comm: 'node', state: 'S', ppid: 0, flags: 0 },
      { pid: 2, comm: 'kthreadd', state: 'S', ppid: 0, flags: 0x00208040 },
      { pid: 40, comm: 'sleep', state: 'S', ppid: 1, flags: 0x400000 },
      { pid: 41, comm: 'dead', state: 'Z', ppid: 1, flags: 0 },
    ];
    expect(survivingProcesses(processes, 1).map((p) => p.pid)).toEqual([40]);
  });
});

/** A machine in memory: processes that die at TERM unless stubborn. */
function fakeMachine(options: { stubborn?: boolean; rebootFails?: boolean } = {}) {
  const events: string[] = [];
  let t = 0;
  let alive: ProcessInfo[] = [
    { pid: 50, comm: 'orphan', state: 'S', ppid: 1, flags: 0 },
    { pid: 51, comm: 'daemon', state: 'S', ppid: 1, flags: 0 },
  ];
  const effects: ShutdownEffects = {
    now: () => t,
    // Like a timer: work that settles in this turn wins a race against it.
    sleep: async (ms) => {
      await new Promise((resolve) => setImmediate(resolve));
      t += ms;
    },
    stopServices: async (deadline) => {
      events.push(`stop-services ${deadline}`);
      return { killed: ['stubborn-svc'], unfinished: [] };
    },
    closeLogs: async () => void events.push('close-logs'),
    survivors: () => alive,
    killAll: (signal) => {
      events.push(`kill(-1, ${signal})`);
      if (signal === 'SIGKILL') alive = [];
      else alive = alive.filter((p) => options.stubborn && p.comm === 'daemon');
      return true;
    },
    reap: () => {},
    unmount: async () => {
      events.push('unmount');
      return [{ target: '/mnt/store', result: 'unmounted' }];
    },
    sync: async () => void events.push('sync'),
    reboot: (command) => {
      events.push(`reboot ${command}`);
      if (options.rebootFails) throw new Error('reboot EPERM');
    },
    log: (_fields, message) => events.push(`log: ${message}`),
    console: (line) => events.push(`console: ${line}`),
    flushConsole: async () => void events.push('flush'),
  };
  return { effects, events };
}

describe('runShutdown', () => {
  it('runs the steps in order and names what it had to kill', async () => {
    const { effects, events } = fakeMachine({ stubborn: true });
    const report = await runShutdown(planShutdown('poweroff'), effects);
    expect(events.filter((e) => !e.startsWith('log'))).toEqual([
      'stop-services 20000',
      'close-logs',
      'kill(-1, SIGTERM)',
      'kill(-1, SIGKILL)',
      'console: mos: shutdown: killed 51 (daemon)',
      'unmount',
      'sync',
      'console: mos: reboot: poweroff',
      'flush',
      'reboot poweroff',
    ]);
    expect(report).toMatchObject({ killedServices: ['stubborn-svc'], termed: ['50 (orphan)', '51 (daemon)'], killed: ['51 (daemon)'] });
    expect(events).toContain('log: shutdown: services stopped, had to kill: stubborn-svc');
  });

  it('skips the SIGKILL when everything left at TERM', async () => {
    const { effects, events } = fakeMachine();
    await runShutdown(planShutdown('reboot'), effects);
    expect(events).not.toContain('kill(-1, SIGKILL)');
    expect(events.at(-1)).toBe('reboot restart');
  });

  it('is bounded: a step that hangs is abandoned at its deadline', async () => {
    const { effects, events } = fakeMachine();
    effects.sync = () => new Promise(() => {});
    effects.stopServices = () => new Promise(() => {});
    await runShutdown(planShutdown('halt', { ...DEFAULT_SHUTDOWN_BOUNDS, stopServicesMs: 100, syncMs: 50 }), effects);
    expect(events).toContain('log: shutdown: sync timed out');
    expect(events.at(-1)).toBe('reboot halt');
  });

  it('throws when reboot(2) fails, for PID 1 to go to the emergency state', async () => {
    const { effects } = fakeMachine({ rebootFails: true });
    await expect(runShutdown(planShutdown('poweroff'), effects)).rejects.toThrow('reboot EPERM');
  });
});
