/**
 * What to exec for one run of a service, as data: the resolved executable, argv, environment
 * and fd layout. Pure apart from the injected `isExecutable` probe used for the PATH search.
 */
import path from 'node:path';
import type { ServiceSpec } from './types.ts';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface SpawnPlanInput {
  spec: ServiceSpec;
  /** Parent fds carrying the service's stdout and stderr (the log pipes). */
  stdoutFd: number;
  stderrFd: number;
  /** Parent fd that becomes the child's stdin: /dev/null. */
  stdinFd: number;
  /** Write end of the readiness pipe, for `readiness: fd`. */
  readinessFd?: number;
  /** `$NOTIFY_SOCKET` value, for `readiness: notify`. */
  notifySocket?: string;
  /** Identifies this run in logs and to the service (`INVOCATION_ID`). */
  invocationId: string;
  isExecutable: (file: string) => boolean;
  /** The executable found for this service before: skips the PATH search (stat calls). */
  resolvedProgram?: string;
}

export type SpawnPlan =
  | {
      ok: true;
      file: string;
      argv: string[];
      env: string[];
      cwd: string;
      fds: { child: number; parent: number }[];
      pidEnv: string[];
      uid?: number;
      gid?: number;
      root?: string;
    }
  | { ok: false; stage: 'execve'; message: string };

/** execvp's rule: a name with a slash is a path; a bare name is looked up in PATH. */
export function resolveExecutable(program: string, searchPath: string, cwd: string, isExecutable: (file: string) => boolean): string | null {
  if (program.includes('/')) {
    const file = path.resolve(cwd, program);
    return isExecutable(file) ? file : null;
  }
  for (const dir of searchPath.split(':')) {
    if (!dir) continue;
    const file = path.join(dir, program);
    if (isExecutable(file)) return file;
  }
  return null;
}

export function planSpawn(input: SpawnPlanInput): SpawnPlan {
  const { spec } = input;
  const env: Record<string, string> = { PATH: DEFAULT_PATH, ...spec.env, INVOCATION_ID: input.invocationId };
  const pidEnv: string[] = [];
  // A container's notify socket and watchdog are in its config.json: crun must not see them
  // (it would proxy the socket, keeping only READY=1).
  if (spec.readiness.type === 'notify' && input.notifySocket && spec.container === undefined) {
    env.NOTIFY_SOCKET = input.notifySocket;
    if (spec.watchdogMs > 0) {
      env.WATCHDOG_USEC = String(spec.watchdogMs * 1000);
      // Only the child knows its pid before exec; the addon writes it in there.
      pidEnv.push('WATCHDOG_PID');
    }
  }
  const program = spec.argv[0]!;
  // A chroot'ed service's program is looked up inside its root, and named as it sees it. A path
  // is not checked from outside at all: an absolute symlink in the image would resolve against
  // the host's root here; the exec inside the root is the only true check (execve ENOENT).
  const root = spec.root;
  const isExecutable = root === undefined ? input.isExecutable : (file: string) => input.isExecutable(path.join(root, file));
  const file =
    input.resolvedProgram ??
    (root !== undefined && program.includes('/') ? path.posix.resolve(spec.cwd, program) : resolveExecutable(program, env.PATH ?? DEFAULT_PATH, spec.cwd, isExecutable));
  if (!file) {
    const where = program.includes('/') ? '' : ` in PATH ${env.PATH}`;
    return { ok: false, stage: 'execve', message: `executable not found: ${program}${where}` };
  }
  const fds = [
    { child: 0, parent: input.stdinFd },
    { child: 1, parent: input.stdoutFd },
    { child: 2, parent: input.stderrFd },
  ];
  if (spec.readiness.type === 'fd' && input.readinessFd !== undefined) {
    fds.push({ child: spec.readiness.fd, parent: input.readinessFd });
  }
  return {
    ok: true,
    file,
    argv: spec.argv,
    env: Object.entries(env).map(([key, value]) => `${key}=${value}`),
    cwd: spec.cwd,
    fds,
    pidEnv,
    ...(spec.uid !== undefined ? { uid: spec.uid } : {}),
    ...(spec.gid !== undefined ? { gid: spec.gid } : {}),
    ...(root !== undefined ? { root } : {}),
  };
}
