/**
 * Turns the storage phase's container services (each an image process over its verity-backed
 * overlay) into crun containers: each gets its OCI bundle, written under `bundlesDir`, in its
 * nsgroup's user namespace and its network (services/container.ts plans it), and its spec runs
 * `crun run` as the main process. A container that cannot be planned or written is unavailable
 * with E_CONTAINER; the others run.
 *
 * cgroups: with crun's cgroupfs manager (the guest) each container gets its own cgroup below
 * /sys/fs/cgroup/mos, where the install's `limits` become memory.max and pids.max. The kernel only
 * offers those files once the memory and pids controllers are enabled in every ancestor's
 * cgroup.subtree_control, so the phase enables them on the root and on /mos first (the root cgroup
 * may do so while holding processes; /mos holds none, as cgroup v2 wants). If that fails, the
 * containers with limits are unavailable with E_CGROUP (never run looser than signed); the others
 * run, their usage just not shown.
 */
import path from 'node:path';
import { CGROUP2_ROOT, CONTAINER_CGROUP_PARENT, planContainer, type ContainerInput, type ContainerLimits } from '../../services/container.ts';
import { isHostNsgroup, nsgroupRoot, RANGE_SIZE, type NsgroupRanges } from '../../services/idmap.ts';
import type { NetworkPlan } from '../../services/network.ts';
import type { StoragePhaseResult } from '../storage/storage-phase.ts';
import { unavailableService } from '../storage/storage-phase.ts';
import type { ServiceSpec } from '../supervisor/types.ts';
import type { InstallTarget } from '../trust/formats.ts';

export interface ContainerPhaseContext {
  /** The install's targets by name (nsgroup, network). */
  targets: ReadonlyMap<string, InstallTarget>;
  nsgroups: NsgroupRanges;
  networks: NetworkPlan | null;
  /** mos's sd_notify socket on the host, or null when it has none. */
  notifySocketPath: string | null;
  dirs: ContainerInput['dirs'];
  crun: ContainerInput['crun'];
  seccomp?: unknown;
}

export interface ContainerPhaseEffects {
  /** mkdir -p with this mode for the last component. */
  mkdir(dir: string, mode: number): void;
  writeFile(file: string, text: string): void;
  say(line: string): void;
}

/** The controllers the limits (and the usage `mosctl status` shows) need. */
export const LIMIT_CONTROLLERS: readonly string[] = ['memory', 'pids'];

/** The writes that enable `LIMIT_CONTROLLERS` from the cgroup2 root down to the containers' parent. */
export function planCgroupControllers(): { mkdir: string | null; file: string; text: string }[] {
  const text = LIMIT_CONTROLLERS.map((controller) => `+${controller}`).join(' ');
  const parent = path.posix.join(CGROUP2_ROOT, CONTAINER_CGROUP_PARENT);
  return [
    { mkdir: null, file: path.posix.join(CGROUP2_ROOT, 'cgroup.subtree_control'), text },
    { mkdir: parent, file: path.posix.join(parent, 'cgroup.subtree_control'), text },
  ];
}

/** The install target's limits in the container planner's terms. */
export function containerLimits(target: InstallTarget): ContainerLimits {
  return {
    ...(target.limits?.memory_max !== undefined ? { memoryBytes: target.limits.memory_max } : {}),
    ...(target.limits?.pids_max !== undefined ? { pids: target.limits.pids_max } : {}),
  };
}

/** Enables the controllers; null when done, else why not. */
function enableControllers(fx: ContainerPhaseEffects): string | null {
  for (const step of planCgroupControllers()) {
    try {
      if (step.mkdir !== null) fx.mkdir(step.mkdir, 0o755);
      fx.writeFile(step.file, step.text);
    } catch (error) {
      return `enabling ${LIMIT_CONTROLLERS.join(' and ')} in ${step.file}: ${(error as Error).message}`;
    }
  }
  return null;
}

export function prepareContainers(storage: StoragePhaseResult, context: ContainerPhaseContext, fx: ContainerPhaseEffects): ServiceSpec[] {
  const plans = new Map(storage.targets.filter((target) => target.active !== null && target.plan?.type === 'container').map((target) => [target.name, target.plan!]));
  const unmapped = new Map(storage.targets.flatMap((target) => (target.active?.idmap?.mapped === false ? [[target.name, target.active.idmap.why] as const] : [])));
  fx.mkdir(context.dirs.bundlesDir, 0o711);
  const cgroupProblem = context.crun.cgroupManager === 'cgroupfs' && plans.size > 0 ? enableControllers(fx) : null;
  if (cgroupProblem !== null) fx.say(`mos: containers: cgroups: ${cgroupProblem}; containers with limits will not start`);
  return storage.services.map((spec) => {
    const plan = plans.get(spec.name);
    const target = context.targets.get(spec.name);
    if (spec.unavailable || plan === undefined || plan.process === undefined || plan.overlay === undefined || target === undefined) return spec;
    const fail = (message: string): ServiceSpec => {
      fx.say(`mos: containers: ${spec.name}: E_CONTAINER: ${message}`);
      return unavailableService(spec.name, 'E_CONTAINER', message);
    };
    const limits = containerLimits(target);
    if (cgroupProblem !== null && (limits.memoryBytes !== undefined || limits.pids !== undefined)) {
      fx.say(`mos: containers: ${spec.name}: E_CGROUP: its limits cannot be applied`);
      return unavailableService(spec.name, 'E_CGROUP', `its limits cannot be applied: ${cgroupProblem}`);
    }
    const root = nsgroupRoot(target.nsgroup, context.nsgroups);
    if (!root.ok) return unavailableService(spec.name, root.code, root.message);
    const range = isHostNsgroup(target.nsgroup) ? null : { hostId: root.uid, size: RANGE_SIZE };
    const network = context.networks?.services.find((service) => service.service === spec.name);
    const notify = spec.readiness.type === 'notify' ? context.notifySocketPath : null;
    const planned = planContainer({
      name: spec.name,
      rootfs: plan.overlay.rootDir,
      process: plan.process,
      idRange: range,
      network: { type: target.network.type, netnsPath: network?.netnsPath ?? null },
      notifySocket: notify,
      watchdogMs: spec.watchdogMs,
      limits,
      dirs: context.dirs,
      crun: context.crun,
      ...(context.seccomp !== undefined ? { seccomp: context.seccomp } : {}),
    });
    if (!planned.ok) return fail(planned.message);
    try {
      // Searchable, not readable, by the container's root (a mapped id): crun in the user
      // namespace reaches the rootfs and the pid file's directory through it.
      fx.mkdir(planned.bundleDir, 0o711);
      fx.writeFile(path.join(planned.bundleDir, 'config.json'), `${JSON.stringify(planned.config, null, 2)}\n`);
    } catch (error) {
      return fail(`writing its bundle ${planned.bundleDir}: ${(error as Error).message}`);
    }
    const { root: _root, uid: _uid, gid: _gid, ...rest } = spec;
    const warnings = range === null ? [`nsgroup ${JSON.stringify(target.nsgroup)}: runs with the host's user ids (no user namespace): its root is the machine's root`] : [];
    const why = unmapped.get(spec.name);
    if (why !== undefined) warnings.push(why);
    return { ...rest, argv: planned.argv, env: {}, cwd: '/', container: planned.run, ...(warnings.length > 0 ? { warnings } : {}) };
  });
}

