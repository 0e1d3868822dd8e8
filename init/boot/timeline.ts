/**
 * The boot timeline, on the guest's CLOCK_BOOTTIME (0 = the kernel's start): kernel start →
 * /init exec → mos-init main → each phase → first service exec → all services ready.
 *
 * `BootTimeline` is what `{cmd:"analyze"}` returns; `computeTimelineRows` and `summarizeTimeline`
 * are the pure views `mosctl analyze` and `mosctl status` print.
 */
import type { FailurePolicy, PhaseRecord } from './phases.ts';

export interface BootTimeline {
  clock: 'boottime';
  /** When the /init process (node) was exec'd: CLOCK_BOOTTIME minus the process's uptime. */
  initExecMs: number | null;
  /** When mos-init's own code began (after Node's start-up and loading the bundle). */
  initMainMs: number;
  phases: PhaseRecord[];
  firstServiceExec: { atMs: number; service: string } | null;
  /** The first moment every service was running (or done); null until then. */
  servicesReadyMs: number | null;
  emergency: { atMs: number; reason: string } | null;
  shutdown: { atMs: number; action: string; cause: string } | null;
}

export interface TimelineRow {
  event: string;
  atMs: number;
  /** Since the previous row. */
  deltaMs: number;
  /** Phases only. */
  durationMs: number | null;
  policy: FailurePolicy | null;
  status: string | null;
  detail: string | null;
}

/** Rows in time order; phases that never ran are left out. */
export function computeTimelineRows(timeline: BootTimeline): TimelineRow[] {
  const rows: Omit<TimelineRow, 'deltaMs'>[] = [];
  const point = (event: string, atMs: number, detail: string | null = null, status: string | null = null) =>
    rows.push({ event, atMs, durationMs: null, policy: null, status, detail });
  point('kernel start', 0);
  if (timeline.initExecMs !== null) point('/init exec', timeline.initExecMs);
  point('mos-init main', timeline.initMainMs);
  for (const phase of timeline.phases) {
    if (phase.startMs === null) continue;
    rows.push({
      event: `phase ${phase.name}`,
      atMs: phase.startMs,
      durationMs: phase.endMs === null ? null : phase.endMs - phase.startMs,
      policy: phase.policy,
      status: phase.endMs === null ? 'running' : phase.status,
      detail: phase.detail,
    });
  }
  if (timeline.firstServiceExec) point('first service exec', timeline.firstServiceExec.atMs, timeline.firstServiceExec.service);
  if (timeline.servicesReadyMs !== null) point('all services ready', timeline.servicesReadyMs);
  if (timeline.emergency) point('emergency', timeline.emergency.atMs, timeline.emergency.reason, 'emergency');
  if (timeline.shutdown) point(`shutdown (${timeline.shutdown.action})`, timeline.shutdown.atMs, timeline.shutdown.cause);
  // Stable: equal times keep their logical order.
  const sorted = rows.map((row, index) => ({ row, index })).sort((a, b) => a.row.atMs - b.row.atMs || a.index - b.index);
  let previous = 0;
  return sorted.map(({ row }) => {
    const deltaMs = row.atMs - previous;
    previous = row.atMs;
    return { ...row, deltaMs };
  });
}

/** `123ms` below a second, else seconds with milliseconds: `2.512s`. */
export function formatBootMs(ms: number): string {
  if (Math.abs(ms) < 1000) return `${Math.round(ms)}ms`;
  return `${(ms / 1000).toFixed(3)}s`;
}

/** One line for `mosctl status`: where the time went, and whether the boot is done. */
export function summarizeTimeline(timeline: BootTimeline): string {
  const parts: string[] = [];
  if (timeline.initExecMs !== null) parts.push(`kernel ${formatBootMs(timeline.initExecMs)}`);
  const initStart = timeline.initExecMs ?? timeline.initMainMs;
  if (timeline.firstServiceExec) parts.push(`init ${formatBootMs(timeline.firstServiceExec.atMs - initStart)} to first exec`);
  if (timeline.servicesReadyMs !== null) {
    parts.push(`services ready at ${formatBootMs(timeline.servicesReadyMs)}`);
  } else if (timeline.emergency === null) {
    const running = timeline.phases.find((phase) => phase.startMs !== null && phase.endMs === null);
    parts.push(running ? `booting (phase ${running.name})` : 'services not all ready');
  }
  if (timeline.emergency) parts.push(`emergency at ${formatBootMs(timeline.emergency.atMs)}`);
  if (timeline.shutdown) parts.push(`${timeline.shutdown.action} requested at ${formatBootMs(timeline.shutdown.atMs)}`);
  return parts.join(', ');
}
