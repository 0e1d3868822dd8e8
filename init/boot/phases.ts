/**
 * Boot as named phases, each with a declared failure policy (LinuxKit's pkg/init style):
 *
 *   fatal   a failure stops the boot and puts the machine in the emergency state
 *   warn    a failure is logged and shown; the boot goes on
 *   ignore  a failure is logged at debug level only; the boot goes on
 *
 * `phaseVerdict` is the pure decision; `runPhases` runs them in order and records the timeline.
 */

export type FailurePolicy = 'fatal' | 'warn' | 'ignore';

export interface PhaseContext {
  /** Mark the phase as skipped (with why) instead of ok; it still counts as a success. */
  skip(reason: string): void;
  /** A short note for the phase's log line, e.g. `3 modules`. */
  note(text: string): void;
}

export interface Phase {
  name: string;
  policy: FailurePolicy;
  run(context: PhaseContext): Promise<void> | void;
}

export type PhaseStatus = 'ok' | 'skipped' | 'failed' | 'not-run';

export interface PhaseRecord {
  name: string;
  policy: FailurePolicy;
  status: PhaseStatus;
  /** CLOCK_BOOTTIME ms. */
  startMs: number | null;
  endMs: number | null;
  /** Failure message, or the skip reason, or the note. */
  detail: string | null;
}

export type Verdict = 'continue' | 'emergency';

/** What a phase's outcome means for the boot. */
export function phaseVerdict(policy: FailurePolicy, failed: boolean): Verdict {
  return failed && policy === 'fatal' ? 'emergency' : 'continue';
}

export interface PhaseRunOptions {
  /** CLOCK_BOOTTIME ms. */
  now(): number;
  /** Called as each phase starts and ends (log lines, console markers, timeline). */
  onStart?(record: PhaseRecord): void;
  onEnd?(record: PhaseRecord): void;
  /** Checked before each phase: a boot already in emergency (an uncaught error) runs no more. */
  stopped?(): boolean;
}

export interface PhaseRunResult {
  records: PhaseRecord[];
  /** The fatal failure that stopped the boot, if any. */
  emergency: { phase: string; reason: string } | null;
}

/**
 * A phase failure that names the emergency reason itself (e.g. `trust: E_CERT_UNTRUSTED: ...`)
 * instead of the generic `boot phase <name> failed: <message>`.
 */
export class PhaseFailure extends Error {
  constructor(
    message: string,
    readonly emergencyReason: string,
  ) {
    super(message);
    this.name = 'PhaseFailure';
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Runs the phases in order. A phase that throws or rejects has failed; its policy decides
 * whether the boot goes on. Phases after a fatal failure (or after `stopped()`) are `not-run`.
 * Never throws.
 */
export async function runPhases(phases: readonly Phase[], options: PhaseRunOptions): Promise<PhaseRunResult> {
  const records: PhaseRecord[] = phases.map((phase) => ({
    name: phase.name,
    policy: phase.policy,
    status: 'not-run',
    startMs: null,
    endMs: null,
    detail: null,
  }));
  let emergency: PhaseRunResult['emergency'] = null;
  for (const [index, phase] of phases.entries()) {
    const record = records[index]!;
    if (emergency !== null || options.stopped?.()) break;
    record.startMs = options.now();
    safely(() => options.onStart?.(record));
    let skipped: string | null = null;
    let note: string | null = null;
    try {
      await phase.run({
        skip: (reason) => {
          skipped = reason;
        },
        note: (text) => {
          note = text;
        },
      });
      record.status = skipped !== null ? 'skipped' : 'ok';
      record.detail = skipped ?? note;
    } catch (error) {
      record.status = 'failed';
      record.detail = describe(error);
      if (phaseVerdict(phase.policy, true) === 'emergency') {
        const reason = error instanceof PhaseFailure ? error.emergencyReason : `boot phase ${phase.name} failed: ${record.detail}`;
        emergency = { phase: phase.name, reason };
      }
    }
    record.endMs = options.now();
    safely(() => options.onEnd?.(record));
  }
  return { records, emergency };
}

/** Observers must not break the boot. */
function safely(callback: () => void): void {
  try {
    callback();
  } catch {
    // A broken log line is no reason to stop booting.
  }
}
