/**
 * Storage volumes at boot: every manifest `storage` item is found by its label (a GPT partition
 * name or a disk's serial), made (mke2fs: every boot when not persistent, the first boot when
 * persistent) or checked (e2fsck -p), and mounted at `<volumes>/<label>`; the storage phase then
 * binds each into the services that name it. A volume that cannot be made ready fails the
 * services that use it, with its code, and no other.
 *
 * Decisions are in volumes.ts (pure); this file runs the tools and the mounts.
 */
import type { Native } from '../../native/types.ts';
import { MountFlags } from '../../native/types.ts';
import type { ToolRun } from '../boot/run-tool.ts';
import type { StorageItem } from '../trust/formats.ts';
import { nsgroupRoot, type NsgroupRanges } from '../../services/idmap.ts';
import { findVolumeDevice, fsckArgv, fsckVerdict, mkfsArgv, planVolume, VOLUME_HEAD_BYTES, type BlockDeviceInfo, type VolumePlan } from './volumes.ts';

export interface VolumeEffects {
  native: Pick<Native, 'mount' | 'umount'>;
  /** Every block device, from /sys/class/block. */
  listBlockDevices(): BlockDeviceInfo[];
  /** The device's first `length` bytes, or null when they cannot all be read. */
  readHead(device: string, length: number): Promise<Buffer | null>;
  /** Runs `/usr/sbin/<argv[0]>` to completion. */
  runTool(argv: string[], timeoutMs: number): Promise<ToolRun>;
  mkdirp(dir: string): void;
  say(line: string): void;
  log(fields: object, message: string): void;
}

export interface VolumeOutcome {
  label: string;
  plan: VolumePlan | null;
  mounted: boolean;
  failure: { code: string; message: string } | null;
}

/** mke2fs of a large volume initializes its tables lazily, but still writes them: minutes, not hours. */
const MKFS_TIMEOUT_MS = 10 * 60_000;
/** The scratch disk belongs to the host's root (nsgroup none): no nsgroup ranges needed. */
const HOST_IDS: NsgroupRanges = { ok: true, assignment: { ranges: {}, retired: {} } };
const FSCK_TIMEOUT_MS = 30 * 60_000;
const VOLUME_MOUNT_FLAGS = MountFlags.NODEV | MountFlags.NOSUID;

/**
 * Each storage item's ext4 volume, found, made or checked, and mounted under `volumesDir`, its
 * root owned by its nsgroup's root (`nsgroups`: this boot's id ranges).
 */
export async function prepareVolumes(items: readonly StorageItem[], volumesDir: string, fx: VolumeEffects, nsgroups: NsgroupRanges): Promise<Map<string, VolumeOutcome>> {
  const outcomes = new Map<string, VolumeOutcome>();
  if (items.length === 0) return outcomes;
  const devices = fx.listBlockDevices();
  for (const item of items) {
    const outcome: VolumeOutcome = { label: item.label, plan: null, mounted: false, failure: null };
    outcomes.set(item.label, outcome);
    const fail = (code: string, message: string) => {
      outcome.failure = { code, message };
      fx.say(`mos: storage: volume ${item.label}: ${code}: ${message}`);
    };
    const found = findVolumeDevice(item.label, devices);
    // Enough to tell a blank device from one holding another filesystem (some write nothing in
    // their first KiBs): a persistent volume is never formatted over data.
    const head = found.ok ? await fx.readHead(found.device.path, Math.min(VOLUME_HEAD_BYTES, found.device.sizeBytes)) : null;
    const owner = nsgroupRoot(item.nsgroup, nsgroups);
    if (!owner.ok) {
      fail(owner.code, `volume ${item.label}: ${owner.message}`);
      continue;
    }
    const planned = planVolume(item, devices, head, { uid: owner.uid, gid: owner.gid }, volumesDir);
    if (!planned.ok) {
      fail(planned.code, planned.message);
      continue;
    }
    const plan = planned.plan;
    outcome.plan = plan;
    if (plan.action === 'mkfs') {
      const argv = mkfsArgv(plan);
      const run = await fx.runTool(argv, MKFS_TIMEOUT_MS);
      if (run.code !== 0) {
        fail('E_VOLUME_MKFS', `volume ${plan.label} on ${plan.device}: ${argv[0]} ${describeRun(run)}`);
        continue;
      }
    } else {
      const run = await fx.runTool(fsckArgv(plan), FSCK_TIMEOUT_MS);
      const verdict = fsckVerdict(plan, run.code, run.signal, run.output);
      if (!verdict.ok) {
        fail(verdict.code, verdict.message);
        continue;
      }
      if (verdict.corrected) fx.log({ volume: plan.label, output: run.output }, `volume ${plan.label}: e2fsck corrected errors`);
    }
    try {
      fx.mkdirp(plan.mountDir);
      await fx.native.mount({ source: plan.device, target: plan.mountDir, fstype: 'ext4', flags: VOLUME_MOUNT_FLAGS, data: 'errors=remount-ro' });
    } catch (error) {
      fail('E_VOLUME_MOUNT', `volume ${plan.label}: mount ${plan.device} on ${plan.mountDir}: ${(error as Error).message}`);
      continue;
    }
    outcome.mounted = true;
    const what = plan.action === 'mkfs' ? (plan.persistent ? 'made (first boot)' : 'made afresh') : 'checked';
    fx.say(`mos: storage: volume ${plan.label} (${plan.persistent ? 'persistent' : 'recreated each boot'}) ${what} and mounted at ${plan.mountDir}, root owned by ${plan.owner.uid}:${plan.owner.gid} (nsgroup ${JSON.stringify(plan.nsgroup)})`);
  }
  return outcomes;
}

/** The label of the machine's own scratch disk (a reserved storage label: no manifest may use it). */
export const SCRATCH_LABEL = 'machine-scratch';

/**
 * The writable layers' home: a disk or partition labelled `machine-scratch` when the machine has
 * one, made afresh at every boot (so no upper dir of one boot is ever seen by the next), else
 * null: the caller keeps them on tmpfs.
 */
export async function prepareScratchDisk(volumesDir: string, fx: VolumeEffects): Promise<VolumeOutcome | null> {
  const devices = fx.listBlockDevices();
  if (!findVolumeDevice(SCRATCH_LABEL, devices).ok) return null;
  const outcomes = await prepareVolumes([{ label: SCRATCH_LABEL, persistent: false, nsgroup: 'none', size: 1 }], volumesDir, fx, HOST_IDS);
  return outcomes.get(SCRATCH_LABEL) ?? null;
}

function describeRun(run: ToolRun): string {
  const status = run.timedOut ? 'timed out' : run.signal ? `was killed by ${run.signal}` : run.code === null ? 'could not run' : `exited with ${run.code}`;
  const tail = run.output.trim().split('\n').slice(-3).join(' | ');
  return tail ? `${status}: ${tail}` : status;
}

/** Unmounts every mounted volume; returns what could not be unmounted. */
export async function releaseVolumes(outcomes: Map<string, VolumeOutcome>, fx: Pick<VolumeEffects, 'native'>): Promise<string[]> {
  const problems: string[] = [];
  for (const outcome of [...outcomes.values()].reverse()) {
    if (!outcome.mounted || !outcome.plan) continue;
    try {
      await fx.native.umount(outcome.plan.mountDir, 0);
      outcome.mounted = false;
    } catch (error) {
      problems.push(`volume ${outcome.label}: ${(error as Error).message}`);
    }
  }
  return problems;
}
