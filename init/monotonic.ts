/**
 * CLOCK_MONOTONIC in milliseconds (fractional). Not `performance.now()`: the first touch of the
 * `performance` global loads Node's perf_hooks modules, ~0.8 MB of PID 1 for a clock.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
