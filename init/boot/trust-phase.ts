/**
 * The boot phase `trust`: carries out the steps `nextTrustStep` (init/trust/boot-trust.ts)
 * decides, through the `Native` port (TPM, mount) and node:fs, until it reaches a verdict.
 * Also the TPM side of `mosctl provision`. No decisions here beyond "how to do this step".
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Native } from '../../native/types.ts';
import { MountFlags } from '../../native/types.ts';
import {
  failure,
  MAX_CA_FILE_BYTES,
  nextTrustStep,
  parseManifestCa,
  STORE_DEVICE_WAIT_MS,
  STORE_LAYOUT_DIR,
  TPM_DEVICE_WAIT_MS,
  type EmbeddedCa,
  type Failure,
  type RootRead,
  type StoreOutcome,
  type TrustFacts,
  type TrustState,
  type VerifyOutcome,
} from '../trust/boot-trust.ts';
import { createFsLayoutReader } from '../trust/layout-reader.ts';
import { provisionTrustRoot, readTrustRoot, TrustRootError, type ProvisionResult } from '../trust/trust-root.ts';
import { verifyInstallLayout, type VerifiedInstall } from '../trust/verify-install.ts';

/** The filesystems a store device may hold, tried in this order. */
export const STORE_FILESYSTEMS = [
  { fstype: 'squashfs', data: '' },
  // noload: no journal replay, so a read-only mount writes nothing to the device either.
  // errors=continue: a crafted superblock asking for errors=panic must not panic the kernel.
  { fstype: 'ext4', data: 'noload,errors=continue' },
] as const;
const STORE_MOUNT_FLAGS = MountFlags.RDONLY | MountFlags.NOSUID | MountFlags.NODEV | MountFlags.NOEXEC;

export interface TrustPhaseEffects {
  native: Native;
  /** Where a store device is mounted: `<state>/store` (= /run/mos/store). */
  mountDir: string;
  /** Wall clock, for certificate validity. */
  now(): Date;
  sleep(ms: number): Promise<void>;
  /** Monotonic ms, for the bounded waits. */
  monotonicMs(): number;
  onMounted(target: string): void;
  say(line: string): void;
  log(fields: object, message: string): void;
  /** Serializes TPM use with `mosctl provision`. */
  withTpm<T>(run: () => Promise<T>): Promise<T>;
}

export interface TrustPhaseResult {
  state: TrustState;
  /** Set when the phase was skipped (the reason), for the phase line. */
  skipped: string | null;
  /** `trust: <CODE>: <message>` when the boot must stop. */
  emergency: string | null;
  /** What a later phase may use: only what was verified. */
  verified: VerifiedInstall | null;
  /** The facts at the end (for the log). */
  facts: TrustFacts;
}

/** The CA the image embeds, read and parsed (never fails: a problem is its `kind`). */
export function readEmbeddedCa(file: string): EmbeddedCa {
  let data: Buffer;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) return { kind: 'invalid', path: file, message: `${file} is not a regular file` };
    if (stat.size > MAX_CA_FILE_BYTES) return { kind: 'invalid', path: file, message: `${file} has ${stat.size} bytes; a CA certificate is at most ${MAX_CA_FILE_BYTES}` };
    data = readFileSync(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'none', path: file };
    return { kind: 'invalid', path: file, message: `${file}: ${(error as Error).message}` };
  }
  const parsed = parseManifestCa(data, file);
  return parsed.ok ? { kind: 'ok', path: file, spki: parsed.spki } : { kind: 'invalid', path: file, message: parsed.message };
}

/** A thrown error as a failure with a stable code. */
export function asFailure(error: unknown, fallbackCode: string): Failure {
  if (error instanceof TrustRootError) return failure(error.code, error.message);
  const code = (error as { code?: unknown })?.code;
  const message = error instanceof Error ? error.message : String(error);
  return failure(typeof code === 'string' && /^E_[A-Z_]+$/.test(code) ? code : fallbackCode, message);
}

async function waitForPath(file: string, ms: number, effects: TrustPhaseEffects): Promise<boolean> {
  const deadline = effects.monotonicMs() + ms;
  for (;;) {
    if (existsSync(file)) return true;
    if (effects.monotonicMs() >= deadline) return false;
    await effects.sleep(50);
  }
}

async function readRoot(tcti: string, pcrs: number[], effects: TrustPhaseEffects, waitForDevice: boolean): Promise<RootRead> {
  if (waitForDevice && tcti.startsWith('device:')) {
    const device = tcti.slice('device:'.length);
    if (!(await waitForPath(device, TPM_DEVICE_WAIT_MS, effects))) {
      return failure('E_TPM_MISSING', `no TPM: ${device} did not appear within ${TPM_DEVICE_WAIT_MS / 1000} s (mos.tpm=${tcti})`);
    }
  }
  try {
    const root = await effects.withTpm(() => readTrustRoot(effects.native, tcti, { pcrs }));
    return { ok: true, spki: root.spki };
  } catch (error) {
    return asFailure(error, 'E_TRUST_ROOT_TPM');
  }
}

async function openStore(store: string, effects: TrustPhaseEffects): Promise<StoreOutcome> {
  if (store.startsWith('/dev/') && !(await waitForPath(store, STORE_DEVICE_WAIT_MS, effects))) {
    return failure('E_STORE_MISSING', `mos.store=${store}: the device did not appear within ${STORE_DEVICE_WAIT_MS / 1000} s`);
  }
  let stat;
  try {
    stat = statSync(store);
  } catch (error) {
    return failure('E_STORE_MISSING', `mos.store=${store}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  let dir: string;
  let mounted: { device: string; fstype: string } | null = null;
  if (stat.isBlockDevice()) {
    mkdirSync(effects.mountDir, { recursive: true, mode: 0o755 });
    const errors: string[] = [];
    for (const { fstype, data } of STORE_FILESYSTEMS) {
      try {
        await effects.native.mount({ source: store, target: effects.mountDir, fstype, flags: STORE_MOUNT_FLAGS, data });
        mounted = { device: store, fstype };
        effects.onMounted(effects.mountDir);
        break;
      } catch (error) {
        errors.push(`${fstype}: ${(error as Error).message}`);
      }
    }
    if (mounted === null) return failure('E_STORE_MOUNT', `mos.store=${store}: cannot mount it read-only (${errors.join('; ')})`);
    dir = effects.mountDir;
  } else if (stat.isDirectory()) {
    dir = store;
  } else {
    return failure('E_STORE_INVALID', `mos.store=${store} is neither a block device nor a directory`);
  }
  const layout = path.join(dir, STORE_LAYOUT_DIR);
  let layoutStat;
  try {
    layoutStat = lstatSync(layout);
  } catch {
    return failure('E_STORE_INVALID', `mos.store=${store} holds no ${STORE_LAYOUT_DIR}/ directory (the install layout)`);
  }
  if (!layoutStat.isDirectory()) return failure('E_STORE_INVALID', `${layout} is not a directory`);
  return { ok: true, dir, mounted };
}

function verify(root: Buffer, dir: string, tag: string, now: Date): { outcome: VerifyOutcome; verified: VerifiedInstall | null } {
  const result = verifyInstallLayout({ reader: createFsLayoutReader(path.join(dir, STORE_LAYOUT_DIR)), trustRoot: root, tag, now });
  if (!result.ok) return { outcome: failure(result.code, result.message), verified: null };
  return {
    outcome: {
      ok: true,
      summary: {
        install: result.installManifestDigest,
        installJson: result.installDigest,
        tag: result.tag,
        product: result.install.product,
        targets: result.targets.length,
        certificate: result.certificate.subject,
      },
    },
    verified: result,
  };
}

/** Runs the trust phase's steps to the verdict. Never throws for what the TPM or store hold. */
export async function runTrustPhase(initial: TrustFacts, effects: TrustPhaseEffects): Promise<TrustPhaseResult> {
  const facts: TrustFacts = { ...initial };
  let verified: VerifiedInstall | null = null;
  for (let guard = 0; guard < 16; guard++) {
    const step = nextTrustStep(facts);
    for (const line of step.say) effects.say(line);
    switch (step.op) {
      case 'skip':
        return { state: step.state, skipped: step.reason, emergency: null, verified: null, facts };
      case 'done':
        if (step.state.state === 'failed') effects.log({ code: step.state.code }, `trust: ${step.state.code}: ${step.state.message}`);
        return { state: step.state, skipped: null, emergency: step.emergency, verified: step.state.state === 'verified' ? verified : null, facts };
      case 'read-root':
        facts.read = await readRoot(step.tcti, step.pcrs, effects, true);
        effects.log({ step: step.op, tcti: step.tcti, pcrs: step.pcrs, ok: facts.read.ok, code: facts.read.ok ? undefined : facts.read.code }, 'trust: read the trust root');
        break;
      case 'provision': {
        let outcome: TrustFacts['provision'];
        try {
          const result: ProvisionResult = await effects.withTpm(() => provisionTrustRoot(effects.native, step.tcti, { root: step.root, pcrs: step.pcrs }));
          effects.log({ step: step.op, status: result.status, steps: result.steps, reason: result.reason }, `trust: provisioning: ${result.reason}`);
          outcome = { ok: true, status: result.status };
        } catch (error) {
          outcome = asFailure(error, 'E_TRUST_ROOT_TPM');
        }
        facts.provision = outcome;
        break;
      }
      case 'reread-root':
        facts.reread = await readRoot(step.tcti, step.pcrs, effects, false);
        break;
      case 'open-store':
        facts.store = await openStore(step.store, effects);
        effects.log({ step: step.op, store: step.store, ...(facts.store.ok ? { dir: facts.store.dir, mounted: facts.store.mounted } : { code: facts.store.code }) }, 'trust: store');
        break;
      case 'verify': {
        const result = verify(step.root, step.dir, step.tag, effects.now());
        facts.verify = result.outcome;
        verified = result.verified;
        break;
      }
    }
  }
  // Unreachable: every path through nextTrustStep ends within a handful of steps.
  const message = 'the trust phase did not reach a verdict';
  return { state: { state: 'failed', code: 'E_TRUST_INTERNAL', message }, skipped: null, emergency: `trust: E_TRUST_INTERNAL: ${message}`, verified: null, facts };
}
