/**
 * Building the answer to `exec-target` (`mosctl exec`) from what the supervisor knows about a
 * service: whether it runs, whether it is a container, and its bundle's config.json. PID 1 wires
 * an `ExecTargetProvider` from `resolveExecTarget`; host mode refuses with `refuseExecInHostMode`.
 */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { planCrunExec, type CrunCgroupManager, type CrunCommand } from '../../services/crun.ts';
import type { ServiceState, ServiceStatus } from '../supervisor/types.ts';
import { ControlError, type ExecTarget } from './api.ts';
import { ErrorCode } from './protocol.ts';

/** The part of config.json's `process` that an exec inherits. */
export interface BundleProcess {
  env: string[];
  cwd: string;
  user: { uid: number; gid: number };
}

/** A container service as the supervisor runs it, for exec. */
export interface ExecContainer {
  /** crun's container id (`ServiceSpec.container.id`). */
  id: string;
  /** crun's `--root` (`ServiceSpec.container.stateRoot`). */
  stateRoot: string;
  crunPath: string;
  cgroupManager: CrunCgroupManager;
  /**
   * config.json's `process` (e.g. `ContainerPlan.config.process`), or a function reading it
   * (`() => readBundleProcess(bundleDir)`), called only for a running service.
   */
  process: BundleProcess | (() => BundleProcess);
}

export interface ExecTargetInput {
  /** The service's current status (`supervisor.status(name)`, which throws for an unknown name). */
  status: Pick<ServiceStatus, 'name' | 'state' | 'pid'>;
  /** The service's container, or null when it is a plain host process. */
  container: ExecContainer | null;
}

/**
 * States in which the service's process (for a container: crun, and with it the container) is
 * alive. `starting` counts (a container waiting for READY=1 can be entered, e.g. to see why it
 * is not ready), and so does `stopping` (e.g. to see why it does not stop); a `starting` crun may
 * not have created the container yet, which crun then reports itself.
 */
const RUNNING_STATES: ReadonlySet<ServiceState> = new Set<ServiceState>(['starting', 'running', 'stopping']);

/** The exec target of a running container service, or a `ControlError` saying why there is none. */
export function resolveExecTarget(input: ExecTargetInput): ExecTarget {
  const { status, container } = input;
  if (container === null) throw notAContainer(status.name, 'it runs as a plain host process');
  if (!RUNNING_STATES.has(status.state) || status.pid === null) {
    throw new ControlError(ErrorCode.NotRunning, `service ${status.name} is not running (${status.state}): there is no container to run a command in`);
  }
  const process = typeof container.process === 'function' ? container.process() : container.process;
  return {
    service: status.name,
    containerId: container.id,
    crunPath: container.crunPath,
    crunRoot: container.stateRoot,
    cgroupManager: container.cgroupManager,
    env: [...process.env],
    cwd: process.cwd,
    user: { uid: process.user.uid, gid: process.user.gid },
  };
}

/** What to run against an exec target (`planExecCommand`). */
export interface ExecCommandRequest {
  /** The command and its arguments, looked up in the container's PATH. */
  argv: string[];
  /** Variables to add to (or override in) config.json's environment. */
  env: Record<string, string>;
  /** Where to start; without it crun 1.8 starts in `/`, not in config.json's cwd. */
  cwd?: string;
  /** Container ids to run as; without them crun 1.8 runs as 0:0, not as config.json's user. */
  user?: { uid: number; gid: number };
  /** A terminal for the command: crun's stdin must then be one. */
  tty: boolean;
}

/**
 * The `crun exec` command line for a request against a target, or a `ControlError`
 * (`E_BAD_REQUEST`) saying what crun could not be given. Pure. mosctl plans with it when it runs
 * crun itself, and PID 1 when it relays the command (init/control/exec-relay.ts).
 */
export function planExecCommand(target: ExecTarget, request: ExecCommandRequest): CrunCommand {
  const planned = planCrunExec({
    crunPath: target.crunPath,
    stateRoot: target.crunRoot,
    cgroupManager: target.cgroupManager,
    id: target.containerId,
    argv: request.argv,
    // Any variable makes crun replace the whole environment: the planner merges config.json's.
    env: request.env,
    configEnv: target.env,
    ...(request.cwd !== undefined ? { cwd: request.cwd } : {}),
    ...(request.user !== undefined ? { user: request.user } : {}),
    tty: request.tty,
  });
  if (!planned.ok) throw new ControlError(ErrorCode.BadRequest, `cannot exec in ${target.service}: ${planned.message}`);
  return planned.command;
}

/**
 * Host mode's provider: host mode runs no containers, so every service is a host process. An
 * unknown name is still reported as such (`status` throws `E_UNKNOWN_SERVICE`).
 */
export function refuseExecInHostMode(status: (name: string) => unknown): (service: string) => never {
  return (service) => {
    status(service);
    throw notAContainer(service, 'host mode runs no containers');
  };
}

function notAContainer(service: string, why: string): ControlError {
  return new ControlError(
    ErrorCode.NotContainer,
    `service ${service} is not a container (${why}): mosctl exec only enters container services' namespaces`,
  );
}

/** config.json's `process` fields an exec needs, or why they cannot be read. Pure. */
export function parseBundleProcess(config: unknown): BundleProcess | string {
  const process = isRecord(config) ? config.process : undefined;
  if (!isRecord(process)) return 'config.json has no process object';
  const { env = [], cwd, user } = process;
  if (!Array.isArray(env) || !env.every((entry) => typeof entry === 'string')) return 'config.json process.env is not a list of strings';
  if (typeof cwd !== 'string' || !cwd.startsWith('/')) return 'config.json process.cwd is not an absolute path';
  if (!isRecord(user) || !isId(user.uid) || !isId(user.gid)) return 'config.json process.user has no numeric uid and gid';
  return { env: env as string[], cwd, user: { uid: user.uid, gid: user.gid } };
}

/** Reads `<bundleDir>/config.json`'s process; a `ControlError` (`E_INTERNAL`) when it cannot. */
export function readBundleProcess(bundleDir: string, readFile: (file: string) => string = (file) => readFileSync(file, 'utf8')): BundleProcess {
  const file = posix.join(bundleDir, 'config.json');
  let parsed: BundleProcess | string;
  try {
    parsed = parseBundleProcess(JSON.parse(readFile(file)));
  } catch (error) {
    parsed = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  }
  if (typeof parsed === 'string') throw new ControlError(ErrorCode.Internal, `cannot read the container's ${file}: ${parsed}`);
  return parsed;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isId(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 2 ** 32 - 2;
}
