/**
 * `mosctl exec SERVICE -- CMD...`: runs a command inside a running container service.
 *
 * mos answers `exec-target` with how to reach the container (crun, its `--root`, the container
 * id, config.json's environment); mosctl then runs `crun exec` itself, as its own child, with its
 * own stdin, stdout and stderr, and exits with the command's status. PID 1 never carries the
 * command's bytes or waits for it.
 *
 * Where mos is elsewhere (a VM's virtio-serial port, reached through its host's socket), it
 * answers `E_NOT_LOCAL` instead, and mosctl asks it to run the command (`exec-run`, `runRelayed`):
 * mos runs crun exec and relays stdin, stdout, stderr and the exit status over the connection.
 *
 * crun 1.8's behaviour this relies on (docs/crun.md §5): `exec` enters the container's
 * namespaces, user namespace included, with config.json's environment, but as uid 0, gid 0 in `/`
 * whatever config.json's user and cwd (so mosctl passes the service's unless told otherwise); it
 * works over plain pipes; it passes the exit status through (128+n when the
 * command dies of signal n); a command that is not found exits 255; `--env` replaces the whole
 * environment, so added variables are merged into config.json's; `--tty` needs a terminal on
 * crun's stdin.
 */
import { spawn } from 'node:child_process';
import * as v from 'valibot';
import { ControlError, type ExecTarget } from '../init/control/api.ts';
import { ErrorCode, ExecTargetSchema, MAX_EXEC_CHUNK_BYTES, exitStatus } from '../init/control/protocol.ts';
import type { ControlClient, ExecRunCommand, ExecRunHandlers } from './client.ts';
import { planExecCommand } from '../init/control/exec-target.ts';
import type { CrunCommand } from '../services/crun.ts';

/** What the operator asked for, besides the service. */
export interface ExecRequest {
  /** The command and its arguments, looked up in the container's PATH. */
  argv: string[];
  /** Variables to add to (or override in) config.json's environment. */
  env: Record<string, string>;
  /**
   * Where to start (mosctl: `-w`, else the target's cwd). Without it crun 1.8 starts in `/`, not
   * in config.json's cwd (measured: test/privileged/mosctl-exec-crun.test.ts).
   */
  cwd?: string;
  /**
   * Container ids to run as (mosctl: `-u`, else the target's user). Without it crun 1.8 runs the
   * command as 0:0, not as config.json's user (measured as for `cwd`).
   */
  user?: { uid: number; gid: number };
  /** A terminal for the command: crun's stdin (mosctl's) must then be one. */
  tty: boolean;
}

/** How a child ended, as Node reports it. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Runs a planned command with mosctl's own stdio; tests replace it. */
export type CommandRunner = (command: CrunCommand) => Promise<ChildExit>;

/** Checks mos's answer before anything is run with it. */
export function parseExecTarget(result: unknown): ExecTarget {
  const parsed = v.safeParse(ExecTargetSchema, result);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    const field = issue.path?.map((item) => String(item.key)).join('.') ?? '';
    throw new ControlError(ErrorCode.Internal, `mos sent an exec target this mosctl cannot use (${field ? `${field}: ` : ''}${issue.message})`);
  }
  return parsed.output;
}

/** The `crun exec` command line for a request against a target, or a `ControlError`. Pure. */
export function planMosctlExec(target: ExecTarget, request: ExecRequest): CrunCommand {
  return planExecCommand(target, request);
}

/**
 * Variables mosctl adds on its own: with a terminal, `TERM` (the operator's, else `xterm`) unless
 * the operator or config.json sets it, so programs in the container can drive the terminal.
 */
export function terminalEnv(target: ExecTarget, request: Pick<ExecRequest, 'env' | 'tty'>, operatorTerm: string | undefined): Record<string, string> {
  if (!request.tty || 'TERM' in request.env || target.env.some((entry) => entry.startsWith('TERM='))) return {};
  return { TERM: operatorTerm !== undefined && operatorTerm !== '' ? operatorTerm : 'xterm' };
}

/** The shell's convention: the exit code, or 128+n for a command killed by signal n. */
export function exitStatusOf(exit: ChildExit): number {
  return exitStatus(exit.code, exit.signal);
}

/** The relayed command's stdio on mosctl's side (tests pass streams of their own). */
export interface RelayStdio {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** What mosctl asks mos to run (`exec-run`, without the version and id). */
export type RelayRequest = Omit<ExecRunCommand, 'cmd'>;

/**
 * Has mos run the command and relay it over `client` (`exec-run`), forwarding `stdio.stdin` in
 * chunks of at most `MAX_EXEC_CHUNK_BYTES`, one at a time (each once mos has passed the last
 * on), and its end as EOF. Resolves with the command's exit status; rejects with mos's refusal
 * or with the lost connection (mos then terminates the command).
 */
export async function runRelayed(client: ControlClient, request: RelayRequest, stdio: RelayStdio): Promise<number> {
  let onExit!: (status: number) => void;
  const exited = new Promise<number>((resolve) => (onExit = resolve));
  // Output that mosctl's stdout or stderr cannot take yet: stop reading from mos until it can
  // (mos then pauses the command, docs/control.md), instead of buffering it here.
  let waitingForDrain = 0;
  const drained = () => {
    if (--waitingForDrain === 0) client.resumeReading();
  };
  const handlers: ExecRunHandlers = {
    output: (stream, data) => {
      const target = stream === 'stdout' ? stdio.stdout : stdio.stderr;
      if (!target.write(data)) {
        if (waitingForDrain++ === 0) client.pauseReading();
        target.once('drain', drained);
      }
    },
    exit: (exit) => onExit(exit.status),
  };
  const { run } = await client.execRun({ cmd: 'exec-run', ...request }, handlers);
  const forwarding = forwardStdin(client, run, stdio.stdin);
  try {
    return await Promise.race([
      exited,
      client.closed.then(() => {
        throw new ControlError(ErrorCode.Unreachable, 'lost the connection to mos while the command ran (mos terminates it)');
      }),
    ]);
  } finally {
    forwarding.stop();
  }
}

/** Sends `stdin` to the run until its end (then EOF), the run's end, or `stop()`. */
function forwardStdin(client: ControlClient, run: number, stdin: NodeJS.ReadableStream): { stop(): void } {
  let stopped = false;
  let sending: Promise<void> = Promise.resolve();
  const send = (data: Buffer | null, eof: boolean) =>
    client.execInput(run, data, eof).catch(() => {
      // The command has ended (E_BAD_REQUEST: its exit is on the way) or the connection is
      // lost (reported by runRelayed): either way nothing more can reach its stdin.
      stop();
    });
  const onData = (chunk: Buffer | string) => {
    if (stopped) return;
    const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    stdin.pause();
    sending = sending.then(async () => {
      for (let offset = 0; offset < data.length && !stopped; offset += MAX_EXEC_CHUNK_BYTES) {
        await send(data.subarray(offset, offset + MAX_EXEC_CHUNK_BYTES), false);
      }
      if (!stopped) stdin.resume();
    });
  };
  const onEnd = () => {
    if (stopped) return;
    sending = sending.then(() => (stopped ? undefined : send(null, true)));
    detach();
  };
  const detach = () => {
    stdin.off('data', onData);
    stdin.off('end', onEnd);
  };
  const stop = () => {
    stopped = true;
    detach();
    // Paused and without listeners, stdin no longer keeps mosctl's event loop alive.
    stdin.pause();
  };
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  // An unreadable stdin is its end, as for a program reading it (and never a crash of mosctl).
  stdin.on('error', onEnd);
  return { stop };
}

/**
 * Signals mosctl passes on to crun, which passes them on to the command: the ones usually sent
 * to mosctl alone (`kill PID`, `timeout`). A terminal's ^C, ^\ and hangup (SIGINT, SIGQUIT,
 * SIGHUP) go to the whole foreground process group, crun included (it is mosctl's child, in
 * mosctl's group), and so does a shell's SIGHUP to its jobs: mosctl only ignores those while the
 * command runs (it must outlive crun to report the status), since forwarding them as well would
 * deliver each twice. SIGWINCH is ignored by Node and reaches crun the same way.
 */
const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGUSR1', 'SIGUSR2'];
const IGNORED_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGQUIT', 'SIGHUP'];

/**
 * Spawns `command` with mosctl's stdin, stdout and stderr and waits for it. crun gets the
 * planned (empty) environment: nothing of mosctl's reaches the container.
 */
export const runInherited: CommandRunner = (command) =>
  new Promise((resolve, reject) => {
    const [file, ...args] = command.argv;
    if (file === undefined) {
      reject(new ControlError(ErrorCode.Internal, 'empty command line'));
      return;
    }
    const env = Object.fromEntries(command.env.map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]));
    const child = spawn(file, args, { stdio: 'inherit', env });
    const handlers = new Map<NodeJS.Signals, () => void>();
    for (const signal of FORWARDED_SIGNALS) handlers.set(signal, () => child.kill(signal));
    for (const signal of IGNORED_SIGNALS) handlers.set(signal, () => {});
    for (const [signal, handler] of handlers) process.on(signal, handler);
    const cleanUp = () => {
      for (const [signal, handler] of handlers) process.off(signal, handler);
    };
    child.once('error', (error: NodeJS.ErrnoException) => {
      cleanUp();
      reject(new ControlError(ErrorCode.Internal, `cannot run ${file}: ${error.code ?? error.message}`));
    });
    child.once('exit', (code, signal) => {
      cleanUp();
      resolve({ code, signal });
    });
  });
