/**
 * Runs one program from PID 1 to completion (mke2fs, e2fsck) and reports how it ended and the
 * tail of what it printed. Through the addon's spawn and the one reaper, never child_process
 * (whose libuv handles would lose their exits to the reaper). Bounded: SIGKILL at the deadline.
 */
import { closeSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ChildExit, Native } from '../../native/types.ts';

export interface ToolRun {
  code: number | null;
  signal: string | null;
  /** The last bytes of its stdout and stderr (interleaved as written). */
  output: string;
  timedOut: boolean;
}

export interface ToolRunner {
  native: Pick<Native, 'spawn' | 'kill'>;
  waitForExit(pid: number): Promise<ChildExit>;
  /** A directory for the output file (tmpfs on a machine). */
  scratchDir: string;
  sleep(ms: number): Promise<void>;
}

const OUTPUT_TAIL_BYTES = 4096;
let runs = 0;

/** `input`: what the tool reads on its stdin (an nft ruleset), else /dev/null. */
export async function runTool(runner: ToolRunner, file: string, argv: string[], timeoutMs: number, input: string | null = null): Promise<ToolRun> {
  const run = ++runs;
  const outputFile = path.join(runner.scratchDir, `tool-${process.pid}-${run}.out`);
  const outputFd = openSync(outputFile, 'w', 0o600);
  // A file, not a pipe: nothing to pump from the event loop while PID 1 waits for the exit.
  const inputFile = input === null ? null : path.join(runner.scratchDir, `tool-${process.pid}-${run}.in`);
  if (inputFile !== null) writeFileSync(inputFile, input ?? '', { mode: 0o600 });
  const devNull = openSync(inputFile ?? '/dev/null', 'r');
  if (inputFile !== null) rmSync(inputFile, { force: true });
  let pid: number;
  try {
    pid = runner.native.spawn({
      file,
      argv,
      env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C'],
      fds: [
        { child: 0, parent: devNull },
        { child: 1, parent: outputFd },
        { child: 2, parent: outputFd },
      ],
      setsid: true,
    });
  } catch (error) {
    closeSync(outputFd);
    closeSync(devNull);
    rmSync(outputFile, { force: true });
    return { code: null, signal: null, output: (error as Error).message, timedOut: false };
  }
  closeSync(outputFd);
  closeSync(devNull);
  const exited = runner.waitForExit(pid);
  let timedOut = false;
  const deadline = runner.sleep(timeoutMs).then(() => 'deadline' as const);
  const first = await Promise.race([exited, deadline]);
  if (first === 'deadline') {
    timedOut = true;
    runner.native.kill(pid, 'SIGKILL');
  }
  const exit = await exited;
  let output = '';
  try {
    const all = readFileSync(outputFile);
    output = all.subarray(Math.max(0, all.length - OUTPUT_TAIL_BYTES)).toString('utf8');
  } finally {
    rmSync(outputFile, { force: true });
  }
  return { code: exit.code, signal: exit.signal, output, timedOut };
}
