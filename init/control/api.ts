import type { BootTimeline } from '../boot/timeline.ts';
import type { TrustState } from '../trust/boot-trust.ts';
import type { LogLine } from '../log/types.ts';
import type { ServiceStatus } from '../supervisor/types.ts';
import type { Readable, Writable } from 'node:stream';
import type { CrunCgroupManager } from '../../services/crun.ts';

/** What `poweroff`, `reboot` and `halt` ask PID 1 to do. */
export type ShutdownAction = 'halt' | 'poweroff' | 'reboot';

/** The answer to a shutdown request, sent before the shutdown begins. */
export interface ShutdownAccepted {
  action: ShutdownAction;
  accepted: true;
}

/** What the supervisor as a whole reports, beside its services. */
export interface SupervisorInfo {
  /** `host` when run as an ordinary process, `pid1` when it is the machine's init. */
  mode: 'host' | 'pid1';
  pid: number;
  /** Wall-clock ms when mos started. */
  startedAt: number;
  /** `ok`, or `emergency` / `config-error` with `reason` saying why nothing runs. */
  health: 'ok' | 'config-error' | 'emergency';
  reason: string | null;
  configPath: string | null;
  /** PID 1 only: the boot timeline so far (`mosctl status` summarises it). */
  boot?: BootTimeline | null;
  /** PID 1 only: the trust phase's verdict (`mosctl status` shows it as `trust: ...`). */
  trust?: TrustState | null;
}

/** What `provision` asks: the CA (PEM) to write, default the image's; PCRs; replace another root. */
export interface ProvisionRequest {
  ca?: string;
  pcrs?: number[];
  reset?: boolean;
}

/** The answer to `provision`. */
export interface ProvisionReport {
  status: 'provisioned' | 'already-provisioned';
  /** `0x01806d6f` */
  nvIndex: string;
  pcrs: number[];
  /** `sha256:<16 hex>` of the CA's public key (SPKI DER). */
  root: string;
  /** The CA came with the request, or is the one the image embeds. */
  source: 'given' | 'embedded';
  /** The TPM steps carried out (empty when already provisioned). */
  steps: string[];
  reason: string;
}

/**
 * How to run a command inside a running container service (`mosctl exec`): the answer to
 * `exec-target`. mosctl runs `crun --root=<crunRoot> --cgroup-manager=<cgroupManager> exec …
 * <containerId> CMD…` itself (services/crun.ts `planCrunExec`), on the same machine, with its own
 * stdio, so the command's output and exit status never pass through PID 1. (A client elsewhere,
 * on a stream, gets `E_NOT_LOCAL` and asks mos to run it instead: `exec-run`, `ExecRunner`.)
 */
export interface ExecTarget {
  service: string;
  /** crun's container id (`crunContainerId(service)`, `mos-<service>`). */
  containerId: string;
  /** The crun binary that runs the container (absolute). */
  crunPath: string;
  /** crun's `--root`: the state directory the container was created in. */
  crunRoot: string;
  /** The cgroup manager the container was created with; exec must use the same. */
  cgroupManager: CrunCgroupManager;
  /**
   * config.json's `process.env` (`KEY=VALUE`). crun's `exec --env` replaces the whole environment,
   * so a client adding variables must pass these merged with its own (docs/crun.md §5).
   */
  env: string[];
  /**
   * config.json's `process.cwd`: where the command starts unless the operator says otherwise.
   * The client passes it (`crun exec --cwd`): crun 1.8's exec itself starts in `/`.
   */
  cwd: string;
  /**
   * config.json's `process.user`, in the container's ids: who the command runs as unless the
   * operator says otherwise. The client passes it (`--user`): crun 1.8's exec itself runs as 0:0.
   */
  user: { uid: number; gid: number };
}

/**
 * Where the control socket gets exec targets from (PID 1: the supervisor's container services).
 * Returns the target of a service whose container runs, or throws a `ControlError`:
 * `E_UNKNOWN_SERVICE`, `E_NOT_RUNNING` (no running process), `E_NOT_CONTAINER` (a plain host
 * process: there are no namespaces to enter). init/control/exec-target.ts builds one from what
 * the supervisor knows.
 */
export type ExecTargetProvider = (service: string) => ExecTarget | Promise<ExecTarget>;

/** What an `exec-run` asks to run in a service's container (the relay; `ExecRunner`). */
export interface ExecRunSpec {
  /** The command and its arguments, looked up in the container's PATH. */
  argv: string[];
  /** Variables added to (or overriding) config.json's environment. */
  env: Record<string, string>;
  /** Where to start; default the service's cwd (config.json's). */
  cwd?: string;
  /** Container ids to run as; default the service's user (config.json's). */
  user?: { uid: number; gid: number };
}

/** The answer to `exec-run`, sent once the command has started. */
export interface ExecStarted {
  service: string;
  /** crun's container id the command runs in (`mos-<service>`). */
  containerId: string;
}

/** How a relayed command's process (crun) ended. */
export interface ExecSessionExit {
  code: number | null;
  signal: string | null;
}

/**
 * A started command: its stdio as the parent's ends of its pipes, and its end. The control
 * server relays the streams over the connection and destroys them when the run is over.
 */
export interface ExecSession {
  containerId: string;
  /** The command's stdout and stderr (read ends). */
  stdout: Readable;
  stderr: Readable;
  /** The command's stdin (write end); ending it is the command's EOF. */
  stdin: Writable;
  /** Settles when crun (and with it the command) has exited; never rejects. */
  exited: Promise<ExecSessionExit>;
  /**
   * Ends the command early (the client left): SIGTERM to crun, which passes it on, then SIGKILL
   * to crun after a bound. A no-op once it has exited.
   */
  terminate(): void;
}

/**
 * Runs a command in a running container service on mos's own machine (`exec-run`, the relay for
 * clients that are elsewhere: a VM's host on the virtio-serial port). Resolves once the command
 * has started, or rejects with a `ControlError`: `E_UNKNOWN_SERVICE`, `E_NOT_RUNNING`,
 * `E_NOT_CONTAINER`, `E_BAD_REQUEST` (a cwd or variable crun cannot be given), `E_INTERNAL`.
 * PID 1's is init/control/exec-relay.ts.
 */
export type ExecRunner = (service: string, spec: ExecRunSpec) => Promise<ExecSession>;

/** An error the control API reports with a stable code, e.g. `E_UNKNOWN_SERVICE`. */
export class ControlError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

/**
 * The narrow face the supervisor shows to the control socket. The server validates requests and
 * calls these; they throw `ControlError` for problems the operator caused (unknown service, …).
 */
export interface SupervisorApi {
  info(): SupervisorInfo;
  list(): ServiceStatus[];
  status(name: string): ServiceStatus;
  start(name: string): Promise<ServiceStatus>;
  stop(name: string): Promise<ServiceStatus>;
  restart(name: string): Promise<ServiceStatus>;
  /** The last `count` lines from the service's ring buffer, oldest first. */
  logs(name: string, count: number): LogLine[];
  /** Calls `onLine` for every new line until the returned function is called. */
  followLogs(name: string, onLine: (line: LogLine) => void): () => void;
  /** PID 1 only: the boot timeline. Without it, `analyze` answers null. */
  timeline?(): BootTimeline | null;
  /**
   * PID 1 only: begins an orderly shutdown after this returns (so the answer goes out first).
   * Without it, shutdown requests answer `E_UNSUPPORTED`.
   */
  requestShutdown?(action: ShutdownAction): ShutdownAccepted;
  /**
   * PID 1 only: writes the manifest CA into the TPM (init/trust/trust-root.ts). Rejects with a
   * `ControlError` carrying the trust-root code (E_DIFFERENT_ROOT, ...). Without it, `provision`
   * answers `E_UNSUPPORTED`.
   */
  provision?(request: ProvisionRequest): Promise<ProvisionReport>;
}
