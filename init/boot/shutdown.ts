/**
 * Shutdown: stop the services in order, TERM then KILL whatever is left (kill(-1)), unmount,
 * sync, reboot(2). Every step has its own bound, so the whole is bounded by their sum, and the
 * report names what had to be killed.
 *
 * Pure: `planShutdown`, `parseProcStat`, `survivingProcesses`. Effectful: `runShutdown`, whose
 * effects are injected (`ShutdownEffects`) so that unit tests run it against fakes.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { REBOOT_COMMAND, type ShutdownAction } from './signals.ts';

export interface ShutdownBounds {
  /** `Supervisor.stopAll` deadline: each service's own stopTimeout applies inside it. */
  stopServicesMs: number;
  /** After SIGTERM to everything left, before SIGKILL. */
  termGraceMs: number;
  /** After SIGKILL, waiting for the last exits to be reaped. */
  killWaitMs: number;
  unmountMs: number;
  syncMs: number;
}

export const DEFAULT_SHUTDOWN_BOUNDS: ShutdownBounds = {
  stopServicesMs: 20_000,
  termGraceMs: 5_000,
  killWaitMs: 1_000,
  unmountMs: 10_000,
  syncMs: 10_000,
};

export type ShutdownStep =
  | { step: 'stop-services'; deadlineMs: number }
  | { step: 'term-all'; graceMs: number }
  | { step: 'kill-all'; waitMs: number }
  | { step: 'unmount'; deadlineMs: number }
  | { step: 'sync'; deadlineMs: number }
  | { step: 'reboot'; command: 'halt' | 'poweroff' | 'restart' };

export interface ShutdownPlan {
  action: ShutdownAction;
  steps: ShutdownStep[];
  /** The sum of every step's bound: the shutdown takes no longer (plus scheduling noise). */
  boundMs: number;
}

export function planShutdown(action: ShutdownAction, bounds: ShutdownBounds = DEFAULT_SHUTDOWN_BOUNDS): ShutdownPlan {
  const steps: ShutdownStep[] = [
    { step: 'stop-services', deadlineMs: bounds.stopServicesMs },
    { step: 'term-all', graceMs: bounds.termGraceMs },
    { step: 'kill-all', waitMs: bounds.killWaitMs },
    { step: 'unmount', deadlineMs: bounds.unmountMs },
    { step: 'sync', deadlineMs: bounds.syncMs },
    { step: 'reboot', command: REBOOT_COMMAND[action] },
  ];
  const boundMs = bounds.stopServicesMs + bounds.termGraceMs + bounds.killWaitMs + bounds.unmountMs + bounds.syncMs;
  return { action, steps, boundMs };
}

export interface ProcessInfo {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  flags: number;
}

/** PF_KTHREAD in /proc/PID/stat's flags: kernel threads, which kill(-1) does not touch. */
const PF_KTHREAD = 0x00200000;

/** /proc/PID/stat; the command name may hold spaces and parentheses, so parse around the last `)`. */
export function parseProcStat(text: string): ProcessInfo | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  const fields = text.slice(close + 2).trim().split(' ');
  const pid = Number(text.slice(0, open).trim());
  if (!Number.isInteger(pid) || fields.length < 7) return null;
  return { pid, comm: text.slice(open + 1, close), state: fields[0]!, ppid: Number(fields[1]), flags: Number(fields[6]) };
}

/** Processes a kill(-1) from `selfPid` reaches that are still alive (not zombies, not kernel threads). */
export function survivingProcesses(processes: readonly ProcessInfo[], selfPid: number): ProcessInfo[] {
  return processes.filter((p) => p.pid !== selfPid && (p.flags & PF_KTHREAD) === 0 && p.state !== 'Z' && p.state !== 'X');
}

/** `1234 (sleep)` */
export function describeProcess(process: ProcessInfo): string {
  return `${process.pid} (${process.comm})`;
}

/** Every process in this PID namespace's /proc (trivial synchronous reads). */
export function listProcesses(procDir = '/proc'): ProcessInfo[] {
  const processes: ProcessInfo[] = [];
  let entries: string[];
  try {
    entries = readdirSync(procDir);
  } catch {
    return processes;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const info = parseProcStat(readFileSync(`${procDir}/${entry}/stat`, 'utf8'));
      if (info) processes.push(info);
    } catch {
      // Gone between readdir and read.
    }
  }
  return processes;
}

export interface StopServicesResult {
  killed: string[];
  unfinished: string[];
}

export interface ShutdownEffects {
  now(): number;
  sleep(ms: number): Promise<void>;
  stopServices(deadlineMs: number): Promise<StopServicesResult>;
  /** Flush and close what must not be cut off by kill(-1) and unmount (log files). */
  closeLogs(): Promise<void>;
  /** Processes still alive besides PID 1 itself. */
  survivors(): ProcessInfo[];
  killAll(signal: 'SIGTERM' | 'SIGKILL'): boolean;
  reap(): void;
  unmount(): Promise<{ target: string; result: string; detail?: string }[]>;
  sync(): Promise<void>;
  /** reboot(2): returns only if it failed (then it throws). */
  reboot(command: 'halt' | 'poweroff' | 'restart'): void;
  /** One structured line per step. */
  log(fields: Record<string, unknown>, message: string): void;
  /** A console line (the stable markers). */
  console(line: string): void;
  /** Last chance to get console lines out before reboot(2). */
  flushConsole(): Promise<void>;
}

export interface ShutdownReport {
  action: ShutdownAction;
  killedServices: string[];
  /** Processes that needed SIGTERM (outside any service) and SIGKILL, as `pid (comm)`. */
  termed: string[];
  killed: string[];
  unmounts: { target: string; result: string; detail?: string }[];
  durationMs: number;
}

/** Resolves with the promise's value, or with `onTimeout` after `ms`. */
async function bounded<T>(effects: ShutdownEffects, promise: Promise<T>, ms: number, onTimeout: T): Promise<{ value: T; timedOut: boolean }> {
  let timedOut = false;
  const timer = effects.sleep(ms).then(() => {
    timedOut = true;
    return onTimeout;
  });
  const value = await Promise.race([promise.catch(() => onTimeout), timer]);
  return { value, timedOut };
}

/** Polls until no process is left or `ms` passed; reaps as it goes. */
async function waitForNone(effects: ShutdownEffects, ms: number): Promise<ProcessInfo[]> {
  const deadline = effects.now() + ms;
  for (;;) {
    effects.reap();
    const left = effects.survivors();
    if (left.length === 0 || effects.now() >= deadline) return left;
    await effects.sleep(Math.min(50, Math.max(1, deadline - effects.now())));
  }
}

/**
 * Carries out the plan. Does not return when reboot(2) works; throws when it fails, and the
 * caller (PID 1) then goes to the emergency state instead of exiting.
 */
export async function runShutdown(plan: ShutdownPlan, effects: ShutdownEffects): Promise<ShutdownReport> {
  const began = effects.now();
  const report: ShutdownReport = { action: plan.action, killedServices: [], termed: [], killed: [], unmounts: [], durationMs: 0 };
  for (const step of plan.steps) {
    const stepBegan = effects.now();
    switch (step.step) {
      case 'stop-services': {
        const { value, timedOut } = await bounded(effects, effects.stopServices(step.deadlineMs), step.deadlineMs + 1_000, { killed: [], unfinished: [] });
        report.killedServices = [...value.killed, ...value.unfinished.filter((name) => !value.killed.includes(name))];
        await bounded(effects, effects.closeLogs(), 2_000, undefined);
        effects.log({ step: step.step, killed: report.killedServices, timedOut, ms: Math.round(effects.now() - stepBegan) }, report.killedServices.length > 0 ? `shutdown: services stopped, had to kill: ${report.killedServices.join(', ')}` : 'shutdown: services stopped');
        break;
      }
      case 'term-all': {
        const before = effects.survivors();
        if (before.length === 0) {
          effects.log({ step: step.step, ms: 0 }, 'shutdown: no other processes left');
          break;
        }
        report.termed = before.map(describeProcess);
        effects.killAll('SIGTERM');
        const left = await waitForNone(effects, step.graceMs);
        effects.log({ step: step.step, termed: report.termed, left: left.map(describeProcess), ms: Math.round(effects.now() - stepBegan) }, `shutdown: sent SIGTERM to ${report.termed.join(', ')}`);
        break;
      }
      case 'kill-all': {
        const left = effects.survivors();
        if (left.length === 0) break;
        report.killed = left.map(describeProcess);
        effects.killAll('SIGKILL');
        await waitForNone(effects, step.waitMs);
        effects.log({ step: step.step, killed: report.killed, ms: Math.round(effects.now() - stepBegan) }, `shutdown: had to SIGKILL ${report.killed.join(', ')}`);
        effects.console(`mos: shutdown: killed ${report.killed.join(', ')}`);
        break;
      }
      case 'unmount': {
        const { value, timedOut } = await bounded(effects, effects.unmount(), step.deadlineMs, []);
        report.unmounts = value;
        const summary = value.map((u) => `${u.target} ${u.result}`).join(', ') || 'nothing to unmount';
        effects.log({ step: step.step, unmounts: value, timedOut, ms: Math.round(effects.now() - stepBegan) }, `shutdown: unmount: ${timedOut ? 'timed out' : summary}`);
        break;
      }
      case 'sync': {
        const { timedOut } = await bounded(effects, effects.sync(), step.deadlineMs, undefined);
        effects.log({ step: step.step, timedOut, ms: Math.round(effects.now() - stepBegan) }, timedOut ? 'shutdown: sync timed out' : 'shutdown: synced');
        break;
      }
      case 'reboot': {
        report.durationMs = Math.round(effects.now() - began);
        effects.log({ step: step.step, command: step.command, durationMs: report.durationMs, report }, `shutdown: reboot(2) ${step.command} after ${report.durationMs}ms`);
        effects.console(`mos: reboot: ${plan.action}`);
        await bounded(effects, effects.flushConsole(), 1_000, undefined);
        effects.reboot(step.command);
        break;
      }
    }
  }
  return report;
}
