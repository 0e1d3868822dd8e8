/**
 * PID 1's `ExecRunner`: runs `crun exec` for an `exec-run` request (the relay, for clients that
 * are not on mos's machine, e.g. a VM's host on the virtio-serial port) and hands its stdio to the
 * control server, which streams it over the connection.
 *
 * The command is planned exactly as mosctl plans it when it runs crun itself (`planExecCommand`:
 * the service's user and cwd unless the request says otherwise, the request's variables merged
 * into config.json's environment, no terminal), and started through the addon's spawn with three
 * fresh pipes: never child_process in PID 1, whose libuv handles would lose their exits to mos's
 * one reaper (init/boot/run-tool.ts does the same for tools). The exit comes from the
 * supervisor's reaper (`waitForExit`). The parent's pipe ends become Node streams (`net.Socket`
 * over the fd: libuv's pipe handle, non-blocking, with backpressure), which involves no process.
 */
import net from 'node:net';
import type { ChildExit, Native } from '../../native/types.ts';
import { ControlError, type ExecRunner, type ExecSession, type ExecSessionExit, type ExecTargetProvider } from './api.ts';
import { planExecCommand } from './exec-target.ts';
import { ErrorCode } from './protocol.ts';

/** After SIGTERM, how long crun has before SIGKILL. */
export const EXEC_KILL_AFTER_MS = 5_000;

export interface ExecRelayDeps {
  native: Pick<Native, 'spawn' | 'pipe' | 'kill' | 'close'>;
  /** The supervisor's `waitForExit`: resolves when the reaper has reaped `pid`. */
  waitForExit(pid: number): Promise<Pick<ChildExit, 'code' | 'signal'>>;
  /** Where the service's container is (PID 1's `exec-target` provider, `resolveExecTarget`). */
  execTarget: ExecTargetProvider;
  /** Override of `EXEC_KILL_AFTER_MS` (tests). */
  killAfterMs?: number;
}

export function createExecRunner(deps: ExecRelayDeps): ExecRunner {
  return async (service, spec) => {
    const target = await deps.execTarget(service);
    const command = planExecCommand(target, {
      argv: spec.argv,
      env: spec.env,
      // crun 1.8's exec runs as 0:0 in / whatever config.json says: the service's are passed.
      cwd: spec.cwd ?? target.cwd,
      user: spec.user ?? target.user,
      // No terminal: the relay carries plain byte streams (docs/control.md).
      tty: false,
    });
    return spawnSession(deps, command.argv, command.env, target.containerId);
  };
}

/** Starts `argv` (crun) with three pipes as its stdio, in a session of its own. */
function spawnSession(deps: ExecRelayDeps, argv: string[], env: string[], containerId: string): ExecSession {
  const { native } = deps;
  const file = argv[0];
  if (file === undefined) throw new ControlError(ErrorCode.Internal, 'empty command line');
  // Each pair is O_CLOEXEC: only the ends dup2'd onto the child's 0, 1 and 2 survive its exec.
  const fds: number[] = [];
  let stdin: [number, number];
  let stdout: [number, number];
  let stderr: [number, number];
  try {
    stdin = native.pipe();
    fds.push(...stdin);
    stdout = native.pipe();
    fds.push(...stdout);
    stderr = native.pipe();
    fds.push(...stderr);
  } catch (error) {
    for (const fd of fds) native.close(fd);
    throw new ControlError(ErrorCode.Internal, `cannot make pipes for crun exec: ${errorMessage(error)}`);
  }
  let pid: number;
  try {
    pid = native.spawn({
      file,
      argv,
      env,
      fds: [
        { child: 0, parent: stdin[0] },
        { child: 1, parent: stdout[1] },
        { child: 2, parent: stderr[1] },
      ],
      setsid: true,
    });
  } catch (error) {
    // A child that failed before exec (it exits 127) is reaped by the reaper like any orphan.
    for (const fd of fds) native.close(fd);
    throw new ControlError(ErrorCode.Internal, `cannot run ${file}: ${errorMessage(error)}`);
  }
  // At once, before control returns to the event loop, where the reaper may reap it.
  const exitedRaw = deps.waitForExit(pid);
  // The child's ends are the child's now: with ours closed, its exit (and its descendants') ends
  // the output streams and a full stdin fails with EPIPE.
  native.close(stdin[0]);
  native.close(stdout[1]);
  native.close(stderr[1]);

  let exited = false;
  let killTimer: NodeJS.Timeout | null = null;
  const ended = (exit: ExecSessionExit): ExecSessionExit => {
    exited = true;
    if (killTimer !== null) clearTimeout(killTimer);
    killTimer = null;
    return exit;
  };
  const exitedPromise = exitedRaw.then(
    (exit) => ended({ code: exit.code, signal: exit.signal }),
    () => ended({ code: null, signal: null }),
  );

  const session: ExecSession = {
    containerId,
    stdout: new net.Socket({ fd: stdout[0], readable: true, writable: false }),
    stderr: new net.Socket({ fd: stderr[0], readable: true, writable: false }),
    stdin: new net.Socket({ fd: stdin[1], readable: false, writable: true }),
    exited: exitedPromise,
    terminate() {
      if (exited || killTimer !== null) return;
      // crun exec passes SIGTERM on to the command it waits for. SIGKILL, after the bound, ends
      // crun alone (it cannot pass that on): a command that ignores SIGTERM then stays in the
      // container until it ends by itself, re-parented to us (PID 1), whose reaper takes it as
      // an orphan; that is crun exec's own behaviour when killed. Its pipes to us are closed by
      // then (the server closes them when the client leaves).
      native.kill(pid, 'SIGTERM');
      killTimer = setTimeout(() => {
        killTimer = null;
        if (!exited) native.kill(pid, 'SIGKILL');
      }, deps.killAfterMs ?? EXEC_KILL_AFTER_MS);
    },
  };
  return session;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
