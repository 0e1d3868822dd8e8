/** One line of a service's output, as captured from its stdout or stderr pipe. */
export interface LogLine {
  /** Per-service sequence number, from 1, without gaps: a gap means lines were dropped. */
  seq: number;
  /** Wall-clock ms when the line was read. */
  ts: number;
  stream: 'stdout' | 'stderr';
  text: string;
}
