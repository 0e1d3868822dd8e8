/** The supervisor's log port for unit tests: fixed fds, and the lines mos itself wrote. */
import type { LogLine } from '../../init/log/types.ts';
import type { ServiceLogs } from '../../init/supervisor/supervisor.ts';

export class MemoryLogs implements ServiceLogs {
  readonly appended: string[] = [];
  open() {
    return { stdout: 101, stderr: 102 };
  }
  append(service: string, _stream: 'stdout' | 'stderr', text: string) {
    this.appended.push(`${service}: ${text}`);
  }
  tail(): LogLine[] {
    return [];
  }
  follow() {
    return () => {};
  }
}

/** A logger that drops everything. */
export const silentLogger = { info() {}, warn() {}, error() {}, debug() {} };
