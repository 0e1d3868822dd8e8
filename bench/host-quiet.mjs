// Waiting for a quiet machine before a measurement, shared by the benchmarks (run.mjs,
// verity-mount.mjs, forward-throughput.mjs).
//
// Why: the checkout is shared, and the host has 2 cores. A busy neighbour (a test run, a VM of
// other work) would show up in what the benchmarks measure in real time: as supervisor latency
// (run.mjs), as a slower emulated guest (verity-mount.mjs, QEMU under TCG), as lost throughput
// (forward-throughput.mjs). So before each measurement a benchmark waits until the whole machine
// is less than QUIET_BUSY_FRACTION busy over one second, within a budget for the whole run: past
// it, the measurement starts anyway and the log (and the waiter's busyStarts) says so. Each
// benchmark then records for itself what other work used during the measurement.
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** The machine counts as quiet below this share of all CPU time busy over one second. */
export const QUIET_BUSY_FRACTION = 0.1;
/** Default budget of waiting for quiet over a whole run: 3 minutes. */
export const QUIET_MAX_WAIT_MS = 180_000;

/** Busy and total jiffies over all CPUs so far, from the first line of /proc/stat. */
function cpuJiffies() {
  const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = fields.map(Number);
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** Fraction of all CPU time that was busy between two cpuJiffies() readings. */
function busyFraction(before, after) {
  const total = after.total - before.total;
  return total > 0 ? (after.busy - before.busy) / total : 0;
}

/**
 * One run's waiter for a quiet machine, holding the run's waiting budget.
 *
 * - `log(message)`: where the waiter says that it waits, and when it starts while still busy.
 * - `maxWaitMs`: the budget over the whole run (default QUIET_MAX_WAIT_MS).
 * - `verb`: how the log names going ahead while busy: `machine still 30 % busy; <verb> <what> anyway`
 *   (default `starting`).
 *
 * `await waiter.untilQuiet(what)` waits, then resolves to `{ busy, startedBusy }`: the busy
 * fraction of the last second, and whether the budget ran out with the machine still busy.
 * `waiter.waitedMs` is the time spent waiting so far over the run; `waiter.busyStarts` lists
 * what started while busy, as `<what> (<N> %)`.
 */
export function createQuietWaiter({ log, maxWaitMs = QUIET_MAX_WAIT_MS, verb = 'starting' }) {
  let waitedMs = 0;
  const busyStarts = [];

  async function untilQuiet(what) {
    let announced = false;
    for (;;) {
      const before = cpuJiffies();
      await sleep(1000);
      const busy = busyFraction(before, cpuJiffies());
      if (busy < QUIET_BUSY_FRACTION || waitedMs >= maxWaitMs) {
        const startedBusy = busy >= QUIET_BUSY_FRACTION;
        if (startedBusy) {
          log(`machine still ${(busy * 100).toFixed(0)} % busy; ${verb} ${what} anyway`);
          busyStarts.push(`${what} (${(busy * 100).toFixed(0)} %)`);
        }
        return { busy, startedBusy };
      }
      if (!announced) log(`machine ${(busy * 100).toFixed(0)} % busy (other work): waiting before ${what}`);
      announced = true;
      waitedMs += 1000;
    }
  }

  return {
    untilQuiet,
    get waitedMs() {
      return waitedMs;
    },
    get busyStarts() {
      return [...busyStarts];
    },
  };
}
