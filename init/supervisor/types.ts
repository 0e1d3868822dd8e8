/**
 * The supervisor's data model: what a service is (its spec, validated once) and what it is doing
 * now (its status, published after every transition).
 */

export type RestartPolicy = 'always' | 'on-failure' | 'no';
export type ServiceKind = 'longrun' | 'oneshot';

export type Readiness =
  /** Ready as soon as the process has exec'd. */
  | { type: 'none' }
  /** systemd's sd_notify: `READY=1` on `$NOTIFY_SOCKET`. */
  | { type: 'notify' }
  /** s6's notification-fd: the service writes a newline to fd N. */
  | { type: 'fd'; fd: number };

export interface BackoffSpec {
  /** Delay before the first restart. */
  initialMs: number;
  /** The delay doubles per consecutive failure up to this cap. */
  maxMs: number;
  /** A run that stays up (ready) this long resets the delay and the failure count. */
  resetAfterMs: number;
}

export interface StartLimitSpec {
  /** More than `burst` starts within `intervalMs` ends the service in `failed`. */
  burst: number;
  intervalMs: number;
}

export interface ServiceSpec {
  name: string;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  kind: ServiceKind;
  restart: RestartPolicy;
  readiness: Readiness;
  /** sd_notify watchdog interval (`WATCHDOG_USEC`); 0 disables it. */
  watchdogMs: number;
  /** Ordering only: start after these are ready (if they are part of the run at all). */
  after: string[];
  /** Ordering plus a hard need: when one of these fails, this service fails too. */
  requires: string[];
  stopSignal: string;
  /** After the stop signal, wait this long, then SIGKILL the whole process group. */
  stopTimeoutMs: number;
  /** Time allowed from exec to readiness before the start counts as failed. 0: no limit. */
  startTimeoutMs: number;
  backoff: BackoffSpec;
  startLimit: StartLimitSpec;
  uid?: number;
  gid?: number;
  /** Run the service chroot'ed here: the root filesystem its image was mounted at. */
  root?: string;
  /**
   * Set when the service is a container run by crun: `argv` is then crun's `run` command (crun is
   * the main pid, and forwards the stop signal to the container's init), and the service's own
   * process, environment and notify socket are in the bundle's config.json.
   */
  container?: ContainerRun;
  /** Facts an operator should know about how the service runs (`mosctl status` shows them). */
  warnings?: string[];
  /**
   * Set when the service cannot run at all (its image failed verification or activation):
   * every start ends in `failed` with this code and message, and nothing is spawned.
   */
  unavailable?: { code: string; message: string };
}

export interface ContainerRun {
  /** crun's container id (`mos-<name>`). */
  id: string;
  /** crun's state directory (`--root`): a run crun could not clean up leaves `<stateRoot>/<id>`. */
  stateRoot: string;
  /** Where crun writes the container init's host pid (`--pid-file`), before the program runs. */
  pidFile: string;
  /** The container's cgroup directory on the host, when crun manages one (its usage is read there). */
  cgroupDir?: string;
  /** The cgroup v2 limits crun applies there (`mosctl status` shows them). */
  limits?: { memoryBytes?: number; pids?: number };
}

export type ServiceState =
  /** Not running and not asked to run (initial state, or stopped by the operator). */
  | 'stopped'
  /** Asked to run; waiting for its dependencies to be ready. */
  | 'waiting'
  /** Exec'd; waiting for readiness (or, for a oneshot, for its exit). */
  | 'starting'
  /** Running and ready. */
  | 'running'
  /** The stop signal was sent; waiting for the exit (SIGKILL at the deadline). */
  | 'stopping'
  /** Exited and waiting out the restart delay. */
  | 'backoff'
  /** Gave up (start limit, failed dependency, policy), with the reason shown. */
  | 'failed'
  /** A oneshot that exited successfully. */
  | 'done';

export interface ExitInfo {
  code: number | null;
  signal: string | null;
  /** `status=1/FAILURE`-style text, or `signal=SIGKILL`. */
  text: string;
  /** Wall-clock ms. */
  at: number;
  /** Why it ended, when mos knows more than the code: `watchdog`, `start-timeout`, `stop-timeout`. */
  cause?: string;
}

export interface ServiceStatus {
  name: string;
  kind: ServiceKind;
  state: ServiceState;
  /** Wall-clock ms of the last state change. */
  since: number;
  pid: number | null;
  /** Wall-clock ms of the current run's exec. */
  startedAt: number | null;
  /** Wall-clock ms when the current run became ready. */
  readyAt: number | null;
  readiness: Readiness['type'];
  /** Restarts performed by policy since the last operator start. */
  restarts: number;
  /** Consecutive failures that drive the backoff. */
  failures: number;
  lastExit: ExitInfo | null;
  /** Why the service is in its state, for `failed`, `waiting` and `backoff`. */
  reason: string | null;
  /** Stable error code for `failed` (e.g. `E_START_LIMIT`). */
  errorCode: string | null;
  /** The service's own `STATUS=` text from sd_notify. */
  statusText: string | null;
  /** Wall-clock ms of the next start when in backoff. */
  nextStartAt: number | null;
  watchdogMs: number;
  /** The spec's warnings, e.g. a container running with the host's ids (nsgroup none). */
  warnings: string[];
  /** A container's cgroup v2 limits, when its install target sets them. */
  limits?: { memoryBytes?: number; pids?: number };
  /**
   * What a running container uses now (read from its cgroup when the status is asked for; PID 1
   * only). Absent for plain processes and when there is nothing to read.
   */
  usage?: { memoryBytes: number | null; pids: number | null; oomKills: number | null };
}
