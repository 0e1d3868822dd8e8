/**
 * Everything a VM test starts is registered here and ended by pid: at the end of each case
 * (`runAll`), and as a last resort when the test process exits or is interrupted, so no QEMU or
 * swtpm outlives its test (QEMU is also started under `setpriv --pdeathsig KILL`).
 */
import { rmSync } from 'node:fs';

type Action = () => void | Promise<void>;

interface Entry {
  label: string;
  /** Runs at the end of a case; may be async. */
  action: Action;
  /** Runs synchronously from a process-exit hook (kill by pid, rm a dir). */
  sync: () => void;
}

const live = new Set<Entry>();
let hooksInstalled = false;

function runSyncAll(): void {
  for (const entry of [...live].reverse()) {
    try {
      entry.sync();
    } catch {
      // best effort at exit
    }
  }
  live.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', runSyncAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      runSyncAll();
      process.kill(process.pid, signal);
    });
  }
}

export function killPid(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A set of things to undo, in reverse order; each case gets one. */
export class CleanupRegistry {
  private readonly entries: Entry[] = [];

  constructor() {
    installHooks();
  }

  /** A process we started: SIGTERM, then SIGKILL if it has not gone after `graceMs`. */
  process(label: string, pid: number, exited: Promise<unknown>, graceMs = 3000): void {
    this.add(label, async () => {
      if (!isAlive(pid)) return;
      killPid(pid, 'SIGTERM');
      const timer = new Promise((resolve) => setTimeout(resolve, graceMs).unref());
      if ((await Promise.race([exited.then(() => 'gone'), timer])) !== 'gone') {
        killPid(pid, 'SIGKILL');
        await exited;
      }
    }, () => killPid(pid, 'SIGKILL'));
  }

  directory(dir: string): void {
    const remove = () => rmSync(dir, { recursive: true, force: true });
    this.add(`rm -r ${dir}`, remove, remove);
  }

  add(label: string, action: Action, sync: () => void = () => undefined): void {
    const entry = { label, action, sync };
    this.entries.push(entry);
    live.add(entry);
  }

  /** Runs every action, newest first; collects failures and reports them all at the end. */
  async runAll(): Promise<void> {
    const errors: string[] = [];
    for (const entry of this.entries.splice(0).reverse()) {
      try {
        await entry.action();
      } catch (error) {
        errors.push(`${entry.label}: ${error instanceof Error ? error.message : String(error)}`);
        try {
          entry.sync();
        } catch {
          // already reported
        }
      } finally {
        live.delete(entry);
      }
    }
    if (errors.length) throw new Error(`cleanup failed:\n${errors.join('\n')}`);
  }
}
