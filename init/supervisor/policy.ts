/**
 * Restart policy as pure functions: what to do after a run ends, how long to wait, and whether
 * the start limit is hit. No clocks, no state: everything comes in as arguments.
 */
import { isCleanExit } from './exit-status.ts';
import type { BackoffSpec, RestartPolicy, ServiceKind, StartLimitSpec } from './types.ts';

export type AfterExit =
  /** Run it again after the backoff delay. */
  | { action: 'restart' }
  /** It ended as it should: `done` for a oneshot, `stopped` for a longrun. */
  | { action: 'finish' }
  /** It ended badly and the policy says not to restart. */
  | { action: 'fail' };

export interface RunEnd {
  code: number | null;
  signal: string | null;
  /** Set when mos ended the run itself because the service misbehaved. */
  cause?: 'watchdog' | 'start-timeout';
}

export function decideAfterExit(kind: ServiceKind, policy: RestartPolicy, end: RunEnd): AfterExit {
  // A missed watchdog or start timeout is a failure, whatever exit status the kill produced.
  const clean = end.cause === undefined && isCleanExit(end.code, end.signal);
  // A oneshot's job is to finish; a clean exit is its success and is never repeated.
  if (kind === 'oneshot' && clean) return { action: 'finish' };
  if (policy === 'always') return { action: 'restart' };
  if (policy === 'on-failure') return clean ? { action: 'finish' } : { action: 'restart' };
  return clean ? { action: 'finish' } : { action: 'fail' };
}

/**
 * Delay before the next start after `unstableRuns` consecutive runs that ended before they were
 * stable: initial, doubling, capped.
 */
export function computeBackoffDelay(backoff: BackoffSpec, unstableRuns: number): number {
  if (unstableRuns <= 0) return 0;
  const exponent = Math.min(unstableRuns - 1, 30);
  return Math.min(backoff.initialMs * 2 ** exponent, backoff.maxMs);
}

/**
 * Records a start at `now` and reports whether it exceeds the limit. Returns the start times
 * still inside the window (including this one), for the next call.
 */
export function checkStartLimit(
  limit: StartLimitSpec,
  previousStarts: readonly number[],
  now: number,
): { allowed: boolean; starts: number[] } {
  const starts = [...previousStarts.filter((at) => now - at < limit.intervalMs), now];
  return { allowed: starts.length <= limit.burst, starts };
}
