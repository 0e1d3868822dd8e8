/**
 * sd_notify(3) messages → supervisor events, pure.
 *
 * A message is one datagram of newline-separated `KEY=VALUE` assignments. Unknown keys are
 * ignored, as systemd does, so daemons that send more (X_…, FDSTORE, …) keep working.
 */
import type { ServiceEvent } from './machine.ts';

/** systemd caps STATUS= at one line; keep operator output readable and memory bounded. */
const MAX_STATUS_LENGTH = 512;

export function parseNotifyMessage(data: Buffer | string): Map<string, string> {
  const text = typeof data === 'string' ? data : data.toString('utf8');
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    fields.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return fields;
}

/** The events a message means, in the order a reader expects (status before readiness). */
export function notifyEvents(fields: Map<string, string>): ServiceEvent[] {
  const events: ServiceEvent[] = [];
  const status = fields.get('STATUS');
  if (status !== undefined) events.push({ type: 'status-text', text: status.slice(0, MAX_STATUS_LENGTH) });

  const mainPid = fields.get('MAINPID');
  if (mainPid !== undefined && /^[1-9]\d*$/.test(mainPid)) events.push({ type: 'main-pid', pid: Number(mainPid) });

  const watchdogUsec = fields.get('WATCHDOG_USEC');
  if (watchdogUsec !== undefined && /^\d+$/.test(watchdogUsec)) {
    events.push({ type: 'watchdog-interval', ms: Math.ceil(Number(watchdogUsec) / 1000) });
  }

  if (fields.get('READY') === '1') events.push({ type: 'ready' });

  const watchdog = fields.get('WATCHDOG');
  if (watchdog === '1') events.push({ type: 'watchdog-ping' });
  else if (watchdog === 'trigger') events.push({ type: 'watchdog-trigger' });
  return events;
}

/**
 * A token bucket per sender: a service flooding the socket loses its excess messages, never the
 * supervisor's responsiveness (systemd#37288).
 */
export class NotifyRateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number; dropped: number }>();

  constructor(
    private readonly perSecond = 200,
    private readonly burst = 400,
  ) {}

  /** Whether one more message from `sender` may be processed at time `now` (ms). */
  admit(sender: string, now: number): boolean {
    const bucket = this.buckets.get(sender) ?? { tokens: this.burst, at: now, dropped: 0 };
    bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) * this.perSecond) / 1000);
    bucket.at = now;
    this.buckets.set(sender, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return true;
    }
    bucket.dropped++;
    return false;
  }

  /** Dropped counts since the last call, per sender, then reset (for one summary log line). */
  takeDropped(): Map<string, number> {
    const dropped = new Map<string, number>();
    for (const [sender, bucket] of this.buckets) {
      if (bucket.dropped > 0) dropped.set(sender, bucket.dropped);
      bucket.dropped = 0;
    }
    return dropped;
  }

  forget(sender: string): void {
    this.buckets.delete(sender);
  }
}
