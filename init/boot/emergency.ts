/**
 * The emergency state: PID 1 never exits (the kernel would panic). An unexpected exception, an
 * unhandled rejection, a fatal boot phase, a failed reboot(2) or an attempt to call
 * `process.exit` puts the machine here instead: the reason goes to the console, the boot stops,
 * reaping goes on, and the control API stays up so `mosctl status` shows `health: emergency`
 * with the reason. Services already running keep running and can still be steered (and the
 * machine powered off) through mosctl.
 *
 * Also the test-only crash hook (`mos.test_crash=<point>`), compiled in only with MOS_TEST_HOOKS.
 */

export interface EmergencyEffects {
  /** CLOCK_BOOTTIME ms. */
  now(): number;
  console(line: string): void;
  log(fields: Record<string, unknown>, message: string): void;
  /** Shows the reason in `mosctl status` (Supervisor.setHealth). */
  setHealth(reason: string): void;
  /** Makes sure the control API is up (it may not be yet when the boot failed early). */
  ensureControl(): Promise<void>;
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

export class EmergencyState {
  private entered: { atMs: number; reason: string } | null = null;
  private readonly extra: string[] = [];

  constructor(private readonly effects: EmergencyEffects) {}

  get active(): boolean {
    return this.entered !== null;
  }

  get info(): { atMs: number; reason: string } | null {
    return this.entered;
  }

  /** Later problems after the first: shown in the log and on the console, the reason stays. */
  get laterProblems(): readonly string[] {
    return this.extra;
  }

  /** Enters the emergency state (the first reason is kept). Never throws. */
  enter(reason: string, error?: unknown): void {
    try {
      const stack = error instanceof Error ? error.stack : undefined;
      if (this.entered !== null) {
        this.extra.push(reason);
        this.effects.log({ reason, stack }, `another problem in the emergency state: ${reason}`);
        this.effects.console(`mos: emergency (again): ${reason}`);
        return;
      }
      this.entered = { atMs: this.effects.now(), reason };
      this.effects.log({ reason, stack }, `emergency: ${reason}`);
      this.effects.console(`mos: emergency: ${reason}`);
      this.effects.console('mos: emergency: PID 1 keeps running; inspect with mosctl status');
      this.effects.setHealth(reason);
      this.effects.ensureControl().catch((controlError: unknown) => {
        this.effects.console(`mos: emergency: control API unavailable: ${describeError(controlError)}`);
      });
    } catch {
      // The emergency path must never throw: there is nothing left to catch it.
    }
  }
}

type ExitLike = (...args: unknown[]) => never;

/**
 * Replaces `process.exit`, `process.reallyExit` and `process.abort` so that nothing (ours or a
 * library's) can end PID 1. A call enters the emergency state and throws, so the caller does not
 * run on as if it had exited. Returns a function that restores the originals (for tests).
 */
export function guardProcessExit(onAttempt: (what: string) => void): () => void {
  const target = process as unknown as Record<string, unknown>;
  const saved = { exit: target.exit, reallyExit: target.reallyExit, abort: target.abort };
  const blocked = (name: string): ExitLike =>
    ((...args: unknown[]) => {
      const what = `process.${name}(${args.map((a) => JSON.stringify(a) ?? String(a)).join(', ')}) called in PID 1`;
      onAttempt(what);
      throw new Error(`${what}: blocked, PID 1 never exits`);
    }) as ExitLike;
  target.exit = blocked('exit');
  target.reallyExit = blocked('reallyExit');
  target.abort = blocked('abort');
  return () => {
    target.exit = saved.exit;
    target.reallyExit = saved.reallyExit;
    target.abort = saved.abort;
  };
}

/**
 * The crash point requested by `mos.test_crash=<point>`, or null. Honoured only when the bundle
 * was built with `MOS_TEST_HOOKS` (dist/mos-init-test.cjs); production bundles ignore the key.
 */
export function testCrashPoint(hooksEnabled: boolean, requested: string | null): string | null {
  return hooksEnabled ? requested : null;
}

/**
 * Throws an exception from a fresh macrotask, outside every try/catch: the real path of an
 * unexpected error in PID 1 (uncaughtException). Resolves after the exception has been raised.
 */
export function injectUncaughtException(point: string): Promise<void> {
  return new Promise((resolve) => {
    setImmediate(() => {
      setImmediate(resolve);
      throw new Error(`mos.test_crash=${point}: injected exception`);
    });
  });
}
