/**
 * The boot phase `storage`: every verified target is planned (targets.ts) and activated
 * (activate.ts), and the container targets become the machine's services. A target that cannot
 * be activated does not stop the boot: its service is `unavailable` and shows `failed` with the
 * code (E_VERITY_ROOT_HASH, E_VERITY_CORRUPT, …) in `mosctl status`; the others run.
 *
 * Also the runtime side: when a run of an image-backed service ends, the verity device is
 * asked whether it saw corrupted data (a service reading a corrupted block gets EIO, and its
 * exec or page fault fails); if so the service ends `failed` with E_VERITY_CORRUPT instead of
 * restarting into the same corruption.
 */
import path from 'node:path';
import { parseServiceConfig } from '../supervisor/spec.ts';
import type { ServiceSpec } from '../supervisor/types.ts';
import { activateTarget, deactivateTarget, verityStatus, type ActivationEffects, type ActiveTarget } from './activate.ts';
import { planTarget, type StorageDirs, type TargetPlan } from './targets.ts';
import type { VerifiedTarget } from '../trust/verify-install.ts';
import type { StorageItem } from '../trust/formats.ts';
import { isHostNsgroup, nsgroupRoot, RANGE_SIZE, type NsgroupRanges } from '../../services/idmap.ts';
import { prepareScratchDisk, prepareVolumes, releaseVolumes, SCRATCH_LABEL, type VolumeEffects, type VolumeOutcome } from './volume-phase.ts';
import { planTargetMounts, type VolumePlan } from './volumes.ts';

export interface TargetOutcome {
  name: string;
  type: TargetPlan['type'];
  /** Its plan (null when it could not be planned). */
  plan: TargetPlan | null;
  /** Set when the target is active (mounted). */
  active: ActiveTarget | null;
  /** Set when it is not: the code and why. */
  failure: { code: string; message: string } | null;
}

export interface StoragePhaseResult {
  targets: TargetOutcome[];
  /** The manifest's storage volumes by label. */
  volumes: Map<string, VolumeOutcome>;
  /** The container targets as services (unavailable ones included, failing with their code). */
  services: ServiceSpec[];
}

/** A container target's service: its image's process, chroot'ed into its overlay. */
export function targetService(plan: TargetPlan): ServiceSpec | { code: 'E_IMAGE_CONFIG'; message: string } {
  const process = plan.process!;
  try {
    const [spec] = parseServiceConfig(
      {
        services: [
          {
            name: plan.name,
            argv: process.argv,
            env: process.env,
            cwd: process.cwd,
            ...(process.uid === undefined ? {} : { uid: process.uid, gid: process.gid }),
            ...(process.readiness === undefined ? {} : { readiness: process.readiness }),
            ...(process.watchdog === undefined ? {} : { watchdog: process.watchdog }),
          },
        ],
      },
      `image of ${plan.name}`,
    );
    return { ...spec!, root: plan.overlay!.rootDir };
  } catch (error) {
    return { code: 'E_IMAGE_CONFIG', message: (error as Error).message };
  }
}

/** A service that cannot run: every start ends `failed` with the code (the machine never spawns it). */
export function unavailableService(name: string, code: string, message: string): ServiceSpec {
  const [spec] = parseServiceConfig({ services: [{ name, argv: ['/nonexistent'], restart: 'no' }] }, `target ${name}`);
  return { ...spec!, unavailable: { code, message } };
}

/** The specs with those that an earlier boot phase could not prepare made unavailable (first cause wins). */
export function withBootFailures(specs: readonly ServiceSpec[], failures: ReadonlyMap<string, { code: string; message: string }>): ServiceSpec[] {
  return specs.map((spec) => {
    const failure = failures.get(spec.name);
    return failure === undefined || spec.unavailable ? spec : unavailableService(spec.name, failure.code, failure.message);
  });
}

/** Whole milliseconds since `started` (process.hrtime.bigint(), CLOCK_MONOTONIC), for the console line. */
function elapsedMs(started: bigint): number {
  return Math.round(Number(process.hrtime.bigint() - started) / 1e6);
}

/** The volumes a target names, ready to bind into it, or why it cannot have them. */
function targetVolumes(target: VerifiedTarget, volumes: Map<string, VolumeOutcome>): { ok: true; mounts: NonNullable<TargetPlan['volumeMounts']> } | { ok: false; code: string; message: string } {
  for (const use of target.target.storage ?? []) {
    const volume = volumes.get(use.label);
    if (!volume?.mounted || !volume.plan) {
      const cause = volume?.failure ?? { code: 'E_VOLUME_MISSING', message: `no storage item labelled ${use.label}` };
      return { ok: false, code: cause.code, message: `${target.target.service_name} needs volume ${use.label} on ${use.dest}: ${cause.message}` };
    }
  }
  const ready = new Map<string, VolumePlan>();
  for (const [label, volume] of volumes) if (volume.mounted && volume.plan) ready.set(label, volume.plan);
  const planned = planTargetMounts(target.target, ready);
  return planned.ok ? { ok: true, mounts: planned.mounts } : { ok: false, code: planned.code, message: planned.message };
}

export async function runStoragePhase(
  targets: readonly VerifiedTarget[],
  storage: readonly StorageItem[],
  dirs: StorageDirs & { volumesDir: string },
  fx: ActivationEffects & { log(fields: object, message: string): void; say(line: string): void },
  volumeFx: VolumeEffects | null,
  nsgroups: NsgroupRanges,
): Promise<StoragePhaseResult> {
  const outcomes: TargetOutcome[] = [];
  const services: ServiceSpec[] = [];
  const volumes = volumeFx ? await prepareVolumes(storage, dirs.volumesDir, volumeFx, nsgroups) : new Map<string, VolumeOutcome>();
  // The writable layers go to the scratch disk when there is one (tmpfs otherwise, or if it fails).
  const scratch = volumeFx ? await prepareScratchDisk(dirs.volumesDir, volumeFx) : null;
  if (scratch) volumes.set(SCRATCH_LABEL, scratch);
  const targetDirs = scratch?.mounted && scratch.plan ? { ...dirs, scratchDir: scratch.plan.mountDir } : dirs;
  for (const target of targets) {
    const planned = planTarget(target, targetDirs);
    if (planned.ok && planned.plan.type === 'container' && (target.target.storage ?? []).length > 0) {
      const mounts = targetVolumes(target, volumes);
      if (!mounts.ok) {
        const { plan } = planned;
        outcomes.push({ name: plan.name, type: plan.type, plan: null, active: null, failure: { code: mounts.code, message: mounts.message } });
        fx.say(`mos: storage: ${plan.name}: ${mounts.code}: ${mounts.message}`);
        services.push(unavailableService(plan.name, mounts.code, mounts.message));
        continue;
      }
      planned.plan.volumeMounts = mounts.mounts;
    }
    if (!planned.ok) {
      outcomes.push({ name: planned.name, type: planned.type, plan: null, active: null, failure: { code: planned.code, message: planned.message } });
      fx.say(`mos: storage: ${planned.name}: ${planned.code}: ${planned.message}`);
      if (planned.type === 'container') services.push(unavailableService(planned.name, planned.code, planned.message));
      continue;
    }
    const plan = planned.plan;
    const root = nsgroupRoot(target.target.nsgroup, nsgroups);
    if (plan.overlay && !isHostNsgroup(target.target.nsgroup) && root.ok) {
      plan.overlay.idmap = { dir: path.join(path.dirname(plan.overlay.rootDir), 'mapped'), hostId: root.uid, size: RANGE_SIZE };
    }
    const started = process.hrtime.bigint();
    const activated = await activateTarget(plan, fx);
    const took = elapsedMs(started);
    if (!activated.ok) {
      outcomes.push({ name: plan.name, type: plan.type, plan, active: null, failure: { code: activated.code, message: activated.message } });
      fx.say(`mos: storage: ${plan.name}: ${activated.code}: ${activated.message}`);
      if (plan.type === 'container') services.push(unavailableService(plan.name, activated.code, activated.message));
      continue;
    }
    const { active } = activated;
    fx.log({ target: plan.name, type: plan.type, dm: active.dm.path, loop: active.loop.path, root: plan.overlay?.rootDir ?? plan.imageDir }, `target ${plan.name} active`);
    const mapping = active.idmap === null ? '' : active.idmap.mapped ? `, idmapped to ${plan.overlay!.idmap!.hostId}` : ', not idmapped (this kernel cannot idmap squashfs)';
    fx.say(`mos: storage: ${plan.name} (${plan.type}) verified and mounted at ${plan.overlay?.rootDir ?? plan.imageDir} in ${took} ms${mapping}`);
    outcomes.push({ name: plan.name, type: plan.type, plan, active, failure: null });
    if (plan.type === 'container') {
      const service = targetService(plan);
      if ('code' in service) {
        services.push(unavailableService(plan.name, service.code, service.message));
        outcomes[outcomes.length - 1]!.failure = { code: service.code, message: service.message };
      } else {
        services.push(service);
      }
    }
  }
  return { targets: outcomes, volumes, services };
}

/** Tears every active target down, last first, then unmounts the volumes; returns what could not be undone. */
export async function releaseTargets(result: Pick<StoragePhaseResult, 'targets' | 'volumes'>, fx: ActivationEffects): Promise<string[]> {
  const problems: string[] = [];
  for (const outcome of [...result.targets].reverse()) {
    if (!outcome.active) continue;
    const left = await deactivateTarget(outcome.active, fx);
    outcome.active = null;
    problems.push(...left.map((problem) => `${outcome.name}: ${problem}`));
  }
  problems.push(...(await releaseVolumes(result.volumes, fx)));
  return problems;
}

/**
 * What to do when a run of `name` ended: `E_VERITY_CORRUPT` when its verity device has seen a
 * corrupted block, else nothing. Asked after every exit and failed spawn of an image-backed
 * service.
 */
export async function corruptionAfterRun(outcome: TargetOutcome, fx: Pick<ActivationEffects, 'native'>): Promise<{ code: 'E_VERITY_CORRUPT'; reason: string } | null> {
  if (!outcome.active) return null;
  const status = await verityStatus(outcome.active.dm.name, fx);
  if (status !== 'corrupt') return null;
  return {
    code: 'E_VERITY_CORRUPT',
    reason: `image of ${outcome.name} is corrupted: dm-verity refused blocks that do not match the signed root hash (reads gave EIO); not restarted`,
  };
}

/**
 * The image-backed services' resources for the supervisor: a container target's image is
 * activated before its service starts (at boot already, by the storage phase) and released when
 * the service is down for good (operator stop, failed), so stopping a service frees its overlay,
 * dm and loop devices. One step at a time per target.
 */
/** The kernel's count of block devices mos makes (loop devices with a backing file, dm devices). */
export interface DeviceCounts {
  loop: number;
  dm: number;
}

export class TargetResources {
  private readonly byName = new Map<string, TargetOutcome & { plan: TargetPlan }>();
  private readonly steps = new Map<string, Promise<unknown>>();

  constructor(
    outcomes: TargetOutcome[],
    private readonly fx: ActivationEffects,
    /** A console line per release, with the kernel's device counts before and after. */
    private readonly report: { say(line: string): void; countDevices(): DeviceCounts } | null = null,
  ) {
    for (const outcome of outcomes) {
      if (outcome.type === 'container' && outcome.plan !== null && outcome.failure === null) this.byName.set(outcome.name, outcome as TargetOutcome & { plan: TargetPlan });
    }
  }

  needs(name: string): boolean {
    return this.byName.has(name);
  }

  isReady(name: string): boolean {
    return this.byName.get(name)?.active != null;
  }

  acquire(name: string): Promise<{ code: string; message: string } | null> {
    return this.serialized(name, async () => {
      const outcome = this.byName.get(name)!;
      if (outcome.active) return null;
      const started = process.hrtime.bigint();
      const result = await activateTarget(outcome.plan, this.fx);
      const took = elapsedMs(started);
      if (!result.ok) return { code: result.code, message: result.message };
      outcome.active = result.active;
      this.report?.say(`mos: storage: ${name} (${outcome.type}) verified and mounted at ${outcome.plan.overlay?.rootDir ?? outcome.plan.imageDir} in ${took} ms`);
      return null;
    });
  }

  release(name: string): Promise<void> {
    return this.serialized(name, async () => {
      const outcome = this.byName.get(name)!;
      if (!outcome.active) return;
      const active = outcome.active;
      outcome.active = null;
      const before = this.report?.countDevices();
      const problems = await deactivateTarget(active, this.fx);
      if (this.report && before) {
        const after = this.report.countDevices();
        this.report.say(`mos: storage: ${name} released (loop devices ${before.loop} -> ${after.loop}, dm devices ${before.dm} -> ${after.dm})`);
      }
      if (problems.length > 0) throw new Error(`releasing ${name}: ${problems.join('; ')}`);
    });
  }

  private serialized<T>(name: string, step: () => Promise<T>): Promise<T> {
    const previous = this.steps.get(name) ?? Promise.resolve();
    const next = previous.then(step, step);
    this.steps.set(name, next);
    return next;
  }
}
