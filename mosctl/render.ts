/**
 * Text for humans: pure functions from control API results to what `mosctl` prints. Every
 * function takes `now` (wall-clock ms) so that ages and uptimes are testable; none adds a
 * trailing newline. Times are shown in UTC, like the machine's clock.
 */
import type { ProvisionReport, SupervisorInfo } from '../init/control/api.ts';
import { describeTrust } from '../init/trust/boot-trust.ts';
import { computeTimelineRows, formatBootMs, summarizeTimeline, type BootTimeline } from '../init/boot/timeline.ts';
import type { LogLine } from '../init/log/types.ts';
import type { ExitInfo, ServiceState, ServiceStatus } from '../init/supervisor/types.ts';

export interface RenderOptions {
  /** ANSI colors; only when printing to a terminal. */
  color: boolean;
}

const PLAIN: RenderOptions = { color: false };

type Tone = 'good' | 'busy' | 'bad' | 'quiet';

const TONE_SGR: Record<Tone, string | null> = {
  good: '32',
  busy: '33',
  // Bold red: a failed service must catch the eye in a long list.
  bad: '1;31',
  quiet: null,
};

const STATE_TONE: Record<ServiceState, Tone> = {
  running: 'good',
  done: 'good',
  waiting: 'busy',
  starting: 'busy',
  stopping: 'busy',
  backoff: 'busy',
  failed: 'bad',
  stopped: 'quiet',
};

function paint(text: string, tone: Tone, options: RenderOptions): string {
  const sgr = TONE_SGR[tone];
  return options.color && sgr !== null ? `\x1b[${sgr}m${text}\x1b[0m` : text;
}

/** `5s`, `3m12s`, `2h04m`, `3d07h`: two units at most, the smaller zero-padded. */
export function formatDuration(ms: number): string {
  const seconds = Math.floor(Math.max(0, ms) / 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${pad(seconds % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}h${pad(minutes % 60)}m`;
  return `${Math.floor(hours / 24)}d${pad(hours % 24)}h`;
}

/** Short spans where milliseconds matter: `120ms`, `1.5s`, `30s`. */
function formatLatency(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  return `${Number((ms / 1000).toFixed(1))}s`;
}

/** `2026-11-22 12:00:01 UTC` */
export function formatTimestamp(ms: number): string {
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

function formatAge(at: number, now: number): string {
  return `${formatDuration(now - at)} ago`;
}

function describeExit(exit: ExitInfo): string {
  return exit.cause ? `${exit.text} (${exit.cause})` : exit.text;
}

/** How long the current process has been up; `-` when there is none. */
function uptimeOf(status: ServiceStatus, now: number): string {
  return status.pid !== null && status.startedAt !== null ? formatDuration(now - status.startedAt) : '-';
}

/** `E_START_LIMIT: 6 starts within 10s`, or whichever half is known. */
function describeReason(status: ServiceStatus): string | null {
  if (status.errorCode !== null && status.reason !== null) return `${status.errorCode}: ${status.reason}`;
  return status.errorCode ?? status.reason;
}

export function renderList(statuses: ServiceStatus[], now: number, options: RenderOptions = PLAIN): string {
  const header = ['NAME', 'STATE', 'PID', 'UPTIME', 'RESTARTS', 'LAST-EXIT'];
  const rows = statuses.map((status) => [
    status.name,
    status.state,
    status.pid === null ? '-' : String(status.pid),
    uptimeOf(status, now),
    String(status.restarts),
    status.lastExit === null ? '-' : describeExit(status.lastExit),
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const lastColumn = header.length - 1;
  const format = (cells: string[], tone: Tone) =>
    cells
      .map((cell, column) => {
        const padded = column === lastColumn ? cell : cell.padEnd(widths[column]!);
        // Only the state is colored; padding is computed on the plain text so columns align.
        return column === 1 ? paint(padded, tone, options) : padded;
      })
      .join('  ');
  const warnings = statuses.flatMap((status) => (status.warnings ?? []).map((warning) => `${paint('!', 'bad', options)} ${status.name}: ${warning}`));
  return [format(header, 'quiet'), ...rows.map((cells, index) => format(cells, STATE_TONE[statuses[index]!.state])), ...warnings].join('\n');
}

/** `HH:MM:SS stdout text` */
export function renderLogLine(line: LogLine): string {
  return `${new Date(line.ts).toISOString().slice(11, 19)} ${line.stream} ${line.text}`;
}

function renderHeadline(status: ServiceStatus, options: RenderOptions): string {
  const tone = STATE_TONE[status.state];
  return `${paint('●', tone, options)} ${status.name} - ${paint(status.state, tone, options)}`;
}

/** One line after start/stop/restart: `● web - running (pid 1234)`, with the reason if any. */
export function renderStatusLine(status: ServiceStatus, options: RenderOptions = PLAIN): string {
  const pid = status.pid === null ? '' : ` (pid ${status.pid})`;
  const reason = describeReason(status);
  return `${renderHeadline(status, options)}${pid}${reason === null ? '' : `: ${reason}`}`;
}

function describeReadiness(status: ServiceStatus): string {
  if (status.readiness === 'none') return 'none';
  if (status.readyAt !== null && status.startedAt !== null) {
    return `${status.readiness} (ready after ${formatLatency(status.readyAt - status.startedAt)})`;
  }
  return status.state === 'starting' ? `${status.readiness} (waiting)` : status.readiness;
}

/** Bytes in binary units, as memory limits are written (`64 MiB`, `1.5 GiB`, `512 B`). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || Number.isInteger(value) ? 0 : value < 10 ? 1 : 0;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

/**
 * A container's cgroup facts: what it uses of each limit (`12.3 MiB of 64 MiB`), the limit alone
 * when it is not running, the use alone when it has no limit; OOM kills stand out.
 */
export function describeResources(status: ServiceStatus, options: RenderOptions = PLAIN): [string, string][] {
  const facts: [string, string][] = [];
  const limits = status.limits ?? {};
  const usage = status.usage;
  const memory = usage?.memoryBytes ?? null;
  if (memory !== null || limits.memoryBytes !== undefined) {
    const used = memory === null ? null : formatBytes(memory);
    const limit = limits.memoryBytes === undefined ? null : formatBytes(limits.memoryBytes);
    let text = used !== null && limit !== null ? `${used} of ${limit}` : used ?? `limit ${limit}`;
    const kills = usage?.oomKills ?? 0;
    if (kills > 0) text += `; ${paint(`${kills} OOM kill${kills === 1 ? '' : 's'}`, 'bad', options)}`;
    facts.push(['Memory', text]);
  }
  const pids = usage?.pids ?? null;
  if (pids !== null || limits.pids !== undefined) {
    const text = pids !== null && limits.pids !== undefined ? `${pids} of ${limits.pids}` : pids !== null ? String(pids) : `limit ${limits.pids}`;
    facts.push(['Tasks', text]);
  }
  return facts;
}

/** In the spirit of `systemctl status`: a headline, labelled facts, then the latest log lines. */
export function renderStatus(
  status: ServiceStatus,
  lines: LogLine[],
  now: number,
  options: RenderOptions = PLAIN,
): string {
  const tone = STATE_TONE[status.state];
  const since = `${formatTimestamp(status.since)} (${formatAge(status.since, now)})`;
  const facts: [string, string][] = [['State', `${paint(status.state, tone, options)} since ${since}`]];
  if (status.state === 'backoff' && status.nextStartAt !== null) {
    const next = status.nextStartAt;
    facts.push(['Next start', `${formatTimestamp(next)} (in ${formatDuration(next - now)})`]);
  }
  if (status.pid !== null) facts.push(['PID', String(status.pid)]);
  facts.push(['Readiness', describeReadiness(status)]);
  if (status.watchdogMs > 0) facts.push(['Watchdog', formatLatency(status.watchdogMs)]);
  const failures = status.failures > 0 ? ` (${status.failures} consecutive failures)` : '';
  facts.push(['Restarts', `${status.restarts}${failures}`]);
  if (status.lastExit !== null) {
    const exit = status.lastExit;
    facts.push(['Last exit', `${describeExit(exit)} at ${formatTimestamp(exit.at)} (${formatAge(exit.at, now)})`]);
  }
  if (status.statusText !== null) facts.push(['Status', JSON.stringify(status.statusText)]);
  const reason = describeReason(status);
  if (reason !== null) facts.push(['Reason', paint(reason, tone === 'bad' ? 'bad' : 'quiet', options)]);
  facts.push(...describeResources(status, options));
  for (const warning of status.warnings ?? []) facts.push(['Warning', paint(warning, 'bad', options)]);

  const labelWidth = Math.max(...facts.map(([label]) => label.length));
  const text = [
    renderHeadline(status, options),
    ...facts.map(([label, value]) => `${label.padStart(labelWidth + 1)}: ${value}`),
  ];
  if (lines.length > 0) text.push('', ...lines.map(renderLogLine));
  return text.join('\n');
}

/** The supervisor's own state, shown above the service list by `mosctl status`. */
export function renderInfo(info: SupervisorInfo, now: number, options: RenderOptions = PLAIN): string {
  const health = paint(info.health, info.health === 'ok' ? 'good' : 'bad', options);
  const text = [
    `mode: ${info.mode} (pid ${info.pid})`,
    `uptime: ${formatDuration(now - info.startedAt)} (since ${formatTimestamp(info.startedAt)})`,
    `health: ${health}${info.reason === null ? '' : ` — ${info.reason}`}`,
  ];
  if (info.configPath !== null) text.push(`config: ${info.configPath}`);
  if (info.boot) text.push(`boot: ${summarizeTimeline(info.boot)}`);
  if (info.trust) text.push(`trust: ${paint(describeTrust(info.trust), info.trust.state === 'failed' ? 'bad' : 'quiet', options)}`);
  return text.join('\n');
}

/** `mosctl provision`'s answer. */
export function renderProvision(report: ProvisionReport): string {
  const where = `TPM NV ${report.nvIndex} (PCRs ${report.pcrs.join(',')})`;
  const what = `${report.source === 'embedded' ? 'the embedded ' : ''}manifest CA ${report.root}`;
  if (report.status === 'already-provisioned') return `${where} already holds ${what}; nothing to do`;
  return `provisioned ${what} into ${where}`;
}

/**
 * `mosctl analyze`: the boot timeline as a table, times on the guest's CLOCK_BOOTTIME (0 is the
 * kernel's start), each row with the time since the previous one; phases with their duration,
 * failure policy and outcome.
 */
export function renderTimeline(timeline: BootTimeline | null, options: RenderOptions = PLAIN): string {
  if (timeline === null) return 'no boot timeline: mos is not PID 1 (host mode)';
  const header = ['EVENT', 'AT', 'SINCE-PREV', 'TOOK', 'POLICY', 'RESULT'];
  const rows = computeTimelineRows(timeline).map((row) => {
    const result = [row.status, row.detail].filter((part) => part !== null && part !== '').join(': ');
    return {
      cells: [
        row.event,
        formatBootMs(row.atMs),
        `+${formatBootMs(row.deltaMs)}`,
        row.durationMs === null ? '' : formatBootMs(row.durationMs),
        row.policy ?? '',
        result,
      ],
      tone: (row.status === 'failed' || row.status === 'emergency' ? 'bad' : row.status === 'ok' ? 'good' : 'quiet') as Tone,
    };
  });
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row.cells[column]!.length)));
  const last = header.length - 1;
  const format = (cells: string[], tone: Tone) =>
    cells
      .map((cell, column) => {
        if (column === last) return paint(cell, tone, options);
        // Times line up on the right, words on the left.
        return column >= 1 && column <= 3 ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!);
      })
      .join('  ')
      .trimEnd();
  const lines = [format(header, 'quiet'), ...rows.map((row) => format(row.cells, row.tone))];
  lines.push('', summarizeTimeline(timeline));
  return lines.join('\n');
}
