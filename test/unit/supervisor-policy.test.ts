import { describe, expect, it } from 'vitest';
import { exitStatusText, isCleanExit } from '../../init/supervisor/exit-status.ts';
import { formatDuration, parseDuration } from '../../init/supervisor/duration.ts';
import { checkStartLimit, computeBackoffDelay, decideAfterExit } from '../../init/supervisor/policy.ts';
import { NotifyRateLimiter, notifyEvents, parseNotifyMessage } from '../../init/supervisor/notify-protocol.ts';

describe('restart policy', () => {
  it('decides by kind, policy and how the run ended', () => {
    expect(decideAfterExit('longrun', 'always', { code: 0, signal: null })).toEqual({ action: 'restart' });
    expect(decideAfterExit('longrun', 'on-failure', { code: 0, signal: null })).toEqual({ action: 'finish' });
    expect(decideAfterExit('longrun', 'on-failure', { code: null, signal: 'SIGTERM' })).toEqual({ action: 'finish' });
    expect(decideAfterExit('longrun', 'on-failure', { code: null, signal: 'SIGSEGV' })).toEqual({ action: 'restart' });
    expect(decideAfterExit('longrun', 'on-failure', { code: 0, signal: null, cause: 'watchdog' })).toEqual({ action: 'restart' });
    expect(decideAfterExit('longrun', 'no', { code: 1, signal: null })).toEqual({ action: 'fail' });
    expect(decideAfterExit('oneshot', 'always', { code: 0, signal: null })).toEqual({ action: 'finish' });
    expect(decideAfterExit('oneshot', 'on-failure', { code: 4, signal: null })).toEqual({ action: 'restart' });
  });

  it('backs off exponentially with a cap', () => {
    const backoff = { initialMs: 100, maxMs: 1000, resetAfterMs: 0 };
    expect([0, 1, 2, 3, 4, 5, 80].map((n) => computeBackoffDelay(backoff, n))).toEqual([0, 100, 200, 400, 800, 1000, 1000]);
  });

  it('counts starts in a sliding window', () => {
    const limit = { burst: 2, intervalMs: 1000 };
    let starts: number[] = [];
    const at = (now: number) => {
      const result = checkStartLimit(limit, starts, now);
      starts = result.starts;
      return result.allowed;
    };
    expect([at(0), at(100), at(200), at(1150), at(1300), at(1400)]).toEqual([true, true, false, true, true, false]);
  });
});

describe('exit statuses', () => {
  it('reads like systemd', () => {
    expect(exitStatusText(0, null)).toBe('status=0/SUCCESS');
    expect(exitStatusText(203, null)).toBe('status=203/EXEC');
    expect(exitStatusText(42, null)).toBe('status=42');
    expect(exitStatusText(null, 'SIGKILL')).toBe('signal=SIGKILL');
    expect(isCleanExit(null, 'SIGPIPE')).toBe(true);
    expect(isCleanExit(1, null)).toBe(false);
  });
});

describe('durations', () => {
  it('parses numbers and unit strings, rejecting junk', () => {
    expect(parseDuration(250)).toBe(250);
    expect(parseDuration('1500')).toBe(1500);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('0.5s')).toBe(500);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(parseDuration('5 s')).toBeNull();
    expect(parseDuration('soon')).toBeNull();
    expect(parseDuration(-1)).toBeNull();
  });
  it('formats compactly', () => {
    expect([999, 5_000, 192_000, 7_440_000].map(formatDuration)).toEqual(['999ms', '5s', '3m12s', '2h04m']);
  });
});

describe('sd_notify messages', () => {
  it('turns keys into events and ignores unknown ones', () => {
    const fields = parseNotifyMessage('STATUS=warming up\nX_FOO=1\nREADY=1\nWATCHDOG=1\nMAINPID=77\nnonsense');
    expect(notifyEvents(fields)).toEqual([
      { type: 'status-text', text: 'warming up' },
      { type: 'main-pid', pid: 77 },
      { type: 'ready' },
      { type: 'watchdog-ping' },
    ]);
    expect(notifyEvents(parseNotifyMessage('WATCHDOG=trigger\nWATCHDOG_USEC=1500000'))).toEqual([
      { type: 'watchdog-interval', ms: 1500 },
      { type: 'watchdog-trigger' },
    ]);
    expect(notifyEvents(parseNotifyMessage('MAINPID=abc\nREADY=0'))).toEqual([]);
  });

  it('rate-limits a flooding sender without touching others', () => {
    const limiter = new NotifyRateLimiter(10, 5);
    const admitted = Array.from({ length: 20 }, () => limiter.admit('noisy', 0)).filter(Boolean).length;
    expect(admitted).toBe(5);
    expect(limiter.admit('quiet', 0)).toBe(true);
    expect(limiter.admit('noisy', 1000)).toBe(true);
    expect(limiter.takeDropped()).toEqual(new Map([['noisy', 15]]));
  });
});
