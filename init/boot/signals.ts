/**
 * What a signal to PID 1 means (pure), and watching them (through `native.watchSignal`, since
 * Node's `process.on` cannot take realtime signals).
 *
 * The kernel delivers to PID 1 only signals it has a handler for; every signal below gets one.
 */
import type { Native, SignalWatch } from '../../native/types.ts';

export type ShutdownAction = 'halt' | 'poweroff' | 'reboot';

export interface SignalMeaning {
  signal: string;
  action: ShutdownAction;
  /** Whose convention this is. */
  convention: string;
}

/** The signal → action map (docs/boot.md has it as a table). */
export const SHUTDOWN_SIGNALS: readonly SignalMeaning[] = [
  // reboot(LINUX_REBOOT_CMD_CAD_OFF) makes the kernel send SIGINT for ctrl-alt-del.
  { signal: 'SIGINT', action: 'reboot', convention: 'ctrl-alt-del' },
  { signal: 'SIGRTMIN+3', action: 'halt', convention: 'systemd' },
  { signal: 'SIGRTMIN+4', action: 'poweroff', convention: 'systemd' },
  { signal: 'SIGRTMIN+5', action: 'reboot', convention: 'systemd' },
  { signal: 'SIGUSR1', action: 'halt', convention: 'busybox' },
  { signal: 'SIGUSR2', action: 'poweroff', convention: 'busybox' },
  { signal: 'SIGTERM', action: 'reboot', convention: 'busybox' },
];

export function actionForSignal(signal: string): SignalMeaning | null {
  return SHUTDOWN_SIGNALS.find((meaning) => meaning.signal === signal) ?? null;
}

/** reboot(2) commands of the native port per action. */
export const REBOOT_COMMAND: Record<ShutdownAction, 'halt' | 'poweroff' | 'restart'> = {
  halt: 'halt',
  poweroff: 'poweroff',
  reboot: 'restart',
};

/**
 * Watches every shutdown signal; `onSignal` gets the meaning. Signal numbers come from the C
 * library (`SIGRTMIN` is a runtime value), never from a table here.
 */
export function watchShutdownSignals(native: Native, onSignal: (meaning: SignalMeaning) => void): SignalWatch[] {
  return SHUTDOWN_SIGNALS.map((meaning) => native.watchSignal(native.signalNumber(meaning.signal), () => onSignal(meaning)));
}
