/**
 * The trust root in the TPM: the manifest CA's public key (SubjectPublicKeyInfo DER) in an NV
 * index that only a PCR policy can read and that is write-locked once provisioned.
 *
 * Pure decisions (`planProvision`, `checkTrustRootIndex`, `parseTrustRoot`) and the two shells
 * that carry them out through the `Native` port (`provisionTrustRoot`, `readTrustRoot`).
 *
 * What this protects and what it does not: the index is defined by the owner hierarchy with an
 * empty owner password (mos does not take TPM ownership). Anyone who can send TPM commands with
 * owner authorization while the machine runs (root on a booted machine) can therefore undefine
 * the index and define a look-alike holding another root; the write lock stops rewriting in
 * place, not that. Closing it needs an owner password (or a platform-hierarchy index), left for
 * later. The read policy binds the root to the measured boot: a machine booted into anything
 * else (other UKI → other PCR 11, other Secure Boot state → other PCR 7) cannot read it and so
 * verifies nothing. The read is not integrity-protected on the TPM bus (unsalted session).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Native, TpmError, TpmHashAlg, TpmNvDefinition, TpmNvPublic } from '../../native/types.ts';
import {
  formatNvAttributes,
  normalizePcrs,
  pcrPolicyDigest,
  TPMA_NV,
  TPMA_NV_STATE,
  TRUST_ROOT_NV_ATTRIBUTES,
} from './tpm-policy.ts';

/**
 * The trust root's NV index. In the TCG registry's owner range (0x01800000-0x01bfffff), clear of
 * project-machine's 0x015000xx indices and of the TPM/platform-manufacturer ranges below
 * 0x01800000; 0x6d6f is "mo".
 */
export const TRUST_ROOT_NV_INDEX = 0x0180_6d6f;
/** PCR 7 (Secure Boot state) and PCR 11 (the UKI as systemd-stub measured it). */
export const DEFAULT_TRUST_ROOT_PCRS: readonly number[] = [7, 11];
export const DEFAULT_TRUST_ROOT_BANK: TpmHashAlg = 'sha256';
/** The index's nameAlg, and so the policy's hash. */
export const TRUST_ROOT_NAME_ALG: TpmHashAlg = 'sha256';
/**
 * Largest root accepted: one NV write must carry it (WRITEALL) and TPMs guarantee at least 1024
 * bytes per NV_Write on PC clients. An RSA-4096 SPKI is 550 bytes, a P-256 one 91.
 */
export const MAX_TRUST_ROOT_SIZE = 1024;

export type TrustRootErrorCode =
  /** The root to provision is not a DER SubjectPublicKeyInfo, or too large. */
  | 'E_TRUST_ROOT_INVALID'
  /** The index holds another root; provisioning refuses it without reset. */
  | 'E_DIFFERENT_ROOT'
  /** The index holds a root that cannot be read now (other PCR values or PCR set). */
  | 'E_TRUST_ROOT_UNVERIFIABLE'
  /** The index exists with attributes or nameAlg that are not the trust root's. */
  | 'E_NV_INDEX_FOREIGN'
  /** No trust root: the index is undefined, or defined but never written. */
  | 'E_TRUST_ROOT_NOT_PROVISIONED'
  /** The index is written but not write-locked: provisioning did not finish. */
  | 'E_TRUST_ROOT_NOT_LOCKED'
  /** The TPM refused the read: the PCRs differ from the state the root was provisioned for. */
  | 'E_TRUST_ROOT_PCR_MISMATCH'
  /** Reading back after provisioning did not return the root written. */
  | 'E_TRUST_ROOT_VERIFY'
  /** Any other TPM failure (see `cause`). */
  | 'E_TRUST_ROOT_TPM';

export class TrustRootError extends Error {
  constructor(
    readonly code: TrustRootErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TrustRootError';
  }
}

const hex = (index: number) => `0x${index.toString(16).padStart(8, '0')}`;

/** A trust root as bytes: a DER SubjectPublicKeyInfo no larger than MAX_TRUST_ROOT_SIZE. */
export function parseTrustRoot(spki: Buffer): KeyObject | TrustRootError {
  if (spki.length === 0 || spki.length > MAX_TRUST_ROOT_SIZE) {
    return new TrustRootError('E_TRUST_ROOT_INVALID', `trust root has ${spki.length} bytes; expected 1-${MAX_TRUST_ROOT_SIZE}`);
  }
  try {
    const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    // Re-export: trailing bytes or a non-canonical encoding would not survive the round trip.
    if (!key.export({ format: 'der', type: 'spki' }).equals(spki)) {
      return new TrustRootError('E_TRUST_ROOT_INVALID', 'trust root is not a canonical DER SubjectPublicKeyInfo');
    }
    // The CA key must be one the verifier accepts as an issuer, and strong: no RSA-1024 root.
    const details = key.asymmetricKeyDetails ?? {};
    const strong =
      (key.asymmetricKeyType === 'ec' && ['prime256v1', 'secp384r1', 'secp521r1'].includes(details.namedCurve ?? '')) ||
      (key.asymmetricKeyType === 'rsa' && (details.modulusLength ?? 0) >= 2048) ||
      key.asymmetricKeyType === 'ed25519';
    if (!strong) {
      const what = key.asymmetricKeyType === 'rsa' ? `RSA-${details.modulusLength}` : `${key.asymmetricKeyType} ${details.namedCurve ?? ''}`.trim();
      return new TrustRootError('E_TRUST_ROOT_INVALID', `trust root is a ${what} key; expected EC P-256/P-384/P-521, RSA >= 2048 or Ed25519`);
    }
    return key;
  } catch (cause) {
    return new TrustRootError('E_TRUST_ROOT_INVALID', `trust root is not a DER SubjectPublicKeyInfo: ${(cause as Error).message}`, { cause });
  }
}

/** Whether an index's public area is the trust root's kind (attributes apart from state bits). */
export function isTrustRootIndex(pub: TpmNvPublic): boolean {
  return pub.nameAlg === TRUST_ROOT_NAME_ALG && ((pub.attributes & ~TPMA_NV_STATE) >>> 0) === TRUST_ROOT_NV_ATTRIBUTES;
}

/**
 * Whether an index may be read as the trust root: ours, written and write-locked. Null when it
 * may (the TPM then still enforces the policy on the read itself).
 */
export function checkTrustRootIndex(pub: TpmNvPublic | null, index: number): TrustRootError | null {
  if (pub === null) {
    return new TrustRootError('E_TRUST_ROOT_NOT_PROVISIONED', `no trust root: NV index ${hex(index)} is not defined`);
  }
  if (!isTrustRootIndex(pub)) return foreignIndex(pub);
  if ((pub.attributes & TPMA_NV.WRITTEN) === 0) {
    return new TrustRootError('E_TRUST_ROOT_NOT_PROVISIONED', `no trust root: NV index ${hex(index)} is defined but was never written (provisioning did not finish)`);
  }
  if ((pub.attributes & TPMA_NV.WRITELOCKED) === 0) {
    return new TrustRootError('E_TRUST_ROOT_NOT_LOCKED', `NV index ${hex(index)} holds a trust root that is not write-locked (provisioning did not finish): refusing it`);
  }
  return null;
}

function foreignIndex(pub: TpmNvPublic): TrustRootError {
  return new TrustRootError(
    'E_NV_INDEX_FOREIGN',
    `NV index ${hex(pub.index)} is not a mos trust root (attributes ${formatNvAttributes(pub.attributes)}, nameAlg ${pub.nameAlg}; ` +
      `expected ${formatNvAttributes(TRUST_ROOT_NV_ATTRIBUTES)}, ${TRUST_ROOT_NAME_ALG})`,
  );
}

// ── provisioning: the plan ──────────────────────────────────────────────────────────────────

export type ProvisionStep =
  | { op: 'undefine'; index: number }
  | { op: 'define'; definition: TpmNvDefinition }
  | { op: 'write'; index: number; data: Buffer }
  | { op: 'writeLock'; index: number };

export type ProvisionPlan =
  /** Carry out `steps` in order; `reason` says why, for the log. */
  | { kind: 'steps'; steps: ProvisionStep[]; reason: string }
  /** The same root is already there, locked, under the same policy: nothing to do. */
  | { kind: 'already-provisioned'; code: 'E_ALREADY_PROVISIONED'; reason: string }
  | { kind: 'refuse'; error: TrustRootError };

export interface ProvisionFacts {
  index: number;
  /** The index's public area now, null when undefined. */
  existing: TpmNvPublic | null;
  /**
   * Its content, when it could be read under `authPolicy` (only possible when the existing
   * index's policy is `authPolicy` and the PCRs hold those values now); undefined otherwise.
   */
  currentContent?: Buffer;
  /** The root to provision (DER SPKI). */
  wantedRoot: Buffer;
  /** The PCR policy digest the index must have (`pcrPolicyDigest`). */
  authPolicy: Buffer;
  /** Replace whatever the index holds. */
  reset: boolean;
}

/**
 * What provisioning must do, from what the TPM holds now. Resumes an interrupted provisioning
 * (defined but unwritten, or written but unlocked, with the same root); never replaces a root,
 * or an index that is not a trust root, unless `reset`.
 */
export function planProvision(facts: ProvisionFacts): ProvisionPlan {
  const { index, existing, currentContent, wantedRoot, authPolicy, reset } = facts;
  const parsed = parseTrustRoot(wantedRoot);
  if (parsed instanceof TrustRootError) return { kind: 'refuse', error: parsed };

  const definition: TpmNvDefinition = {
    index,
    size: wantedRoot.length,
    attributes: TRUST_ROOT_NV_ATTRIBUTES,
    authPolicy,
    nameAlg: TRUST_ROOT_NAME_ALG,
  };
  const fresh: ProvisionStep[] = [
    { op: 'define', definition },
    { op: 'write', index, data: wantedRoot },
    { op: 'writeLock', index },
  ];
  const replace = (reason: string): ProvisionPlan => ({
    kind: 'steps',
    steps: [{ op: 'undefine', index }, ...fresh],
    reason,
  });

  if (existing === null) return { kind: 'steps', steps: fresh, reason: `NV index ${hex(index)} is not defined` };

  if (!isTrustRootIndex(existing)) {
    return reset ? replace(`reset: replacing NV index ${hex(index)}, which is not a trust root`) : { kind: 'refuse', error: foreignIndex(existing) };
  }

  const written = (existing.attributes & TPMA_NV.WRITTEN) !== 0;
  const locked = (existing.attributes & TPMA_NV.WRITELOCKED) !== 0;
  const samePolicy = existing.authPolicy.equals(authPolicy);

  if (!written) {
    // An index that never held a root loses nothing by being replaced.
    if (!locked && samePolicy && existing.size === wantedRoot.length) {
      return {
        kind: 'steps',
        steps: [{ op: 'write', index, data: wantedRoot }, { op: 'writeLock', index }],
        reason: `NV index ${hex(index)} is defined but unwritten: finishing the provisioning`,
      };
    }
    return replace(`NV index ${hex(index)} is defined but unwritten, with another size, policy or a lock: defining it anew`);
  }

  if (currentContent === undefined) {
    if (reset) return replace(`reset: replacing the trust root in NV index ${hex(index)}, which cannot be read now`);
    return {
      kind: 'refuse',
      error: new TrustRootError(
        'E_TRUST_ROOT_UNVERIFIABLE',
        `NV index ${hex(index)} already holds a trust root that cannot be read under the wanted PCR policy ` +
          `(${samePolicy ? 'the PCRs differ from its policy now' : 'its policy differs'}), so whether it is the same root is unknown; ` +
          'provision with reset to replace it',
      ),
    };
  }

  if (!currentContent.equals(wantedRoot)) {
    if (reset) return replace(`reset: replacing a different trust root in NV index ${hex(index)}`);
    return {
      kind: 'refuse',
      error: new TrustRootError(
        'E_DIFFERENT_ROOT',
        `NV index ${hex(index)} already holds a different trust root; provision with reset to replace it`,
      ),
    };
  }

  if (!samePolicy) {
    if (reset) return replace(`reset: the trust root in NV index ${hex(index)} is the same but its policy differs`);
    return {
      kind: 'refuse',
      error: new TrustRootError(
        'E_TRUST_ROOT_UNVERIFIABLE',
        `NV index ${hex(index)} holds this trust root under another PCR policy; provision with reset to replace it`,
      ),
    };
  }
  if (!locked) {
    return {
      kind: 'steps',
      steps: [{ op: 'writeLock', index }],
      reason: `NV index ${hex(index)} holds this trust root unlocked: locking it`,
    };
  }
  return {
    kind: 'already-provisioned',
    code: 'E_ALREADY_PROVISIONED',
    reason: `NV index ${hex(index)} already holds this trust root, locked, under this policy`,
  };
}

// ── the shells ──────────────────────────────────────────────────────────────────────────────

export interface TrustRootLocation {
  /** Default TRUST_ROOT_NV_INDEX. */
  index?: number;
  /** Default sha256. */
  bank?: TpmHashAlg;
  /** Default [7, 11]. */
  pcrs?: readonly number[];
}

export interface ProvisionOptions extends TrustRootLocation {
  /** The manifest CA's public key, DER SubjectPublicKeyInfo. */
  root: Buffer;
  /**
   * The PCR values (in ascending PCR order) the policy is for, e.g. those predicted for the
   * production UKI. Default: the current values, and then the root is read back to check.
   */
  pcrValues?: readonly Buffer[];
  /** Replace a different or unreadable root (or a foreign index at that number). */
  reset?: boolean;
}

export interface ProvisionResult {
  status: 'provisioned' | 'already-provisioned';
  index: number;
  authPolicy: Buffer;
  /** The steps carried out (empty when already provisioned). */
  steps: ProvisionStep['op'][];
  reason: string;
}

function resolveLocation(options: TrustRootLocation) {
  return {
    index: options.index ?? TRUST_ROOT_NV_INDEX,
    bank: options.bank ?? DEFAULT_TRUST_ROOT_BANK,
    pcrs: normalizePcrs(options.pcrs ?? DEFAULT_TRUST_ROOT_PCRS),
  };
}

function isTpmError(error: unknown, code: string): error is TpmError {
  return error instanceof Error && (error as TpmError).code === code;
}

function tpmFailure(what: string, cause: unknown): TrustRootError {
  return new TrustRootError('E_TRUST_ROOT_TPM', `${what}: ${(cause as Error).message}`, { cause });
}

/** Writes the trust root into the TPM (see `planProvision` for what it will and will not do). */
export async function provisionTrustRoot(native: Native, tcti: string, options: ProvisionOptions): Promise<ProvisionResult> {
  const { index, bank, pcrs } = resolveLocation(options);
  const wantedRoot = options.root;
  let pcrValues: readonly Buffer[];
  try {
    pcrValues = options.pcrValues ?? (await native.tpmPcrRead(tcti, bank, pcrs));
  } catch (cause) {
    throw tpmFailure(`reading PCRs ${bank}:${pcrs.join(',')}`, cause);
  }
  const authPolicy = pcrPolicyDigest(bank, pcrs, pcrValues, TRUST_ROOT_NAME_ALG);

  let existing: TpmNvPublic | null;
  try {
    existing = await native.tpmNvReadPublic(tcti, index);
  } catch (cause) {
    throw tpmFailure(`reading NV index ${hex(index)}`, cause);
  }

  let currentContent: Buffer | undefined;
  if (existing && isTrustRootIndex(existing) && (existing.attributes & TPMA_NV.WRITTEN) !== 0 && existing.authPolicy.equals(authPolicy)) {
    try {
      currentContent = await native.tpmNvReadWithPcrPolicy(tcti, index, { bank, pcrs });
    } catch (cause) {
      // The policy is ours but the PCRs are not those values now (pcrValues given): unreadable.
      if (!isTpmError(cause, 'TPM_RC_POLICY_FAIL')) throw tpmFailure(`reading NV index ${hex(index)}`, cause);
    }
  }

  const plan = planProvision({ index, existing, currentContent, wantedRoot, authPolicy, reset: options.reset ?? false });
  if (plan.kind === 'refuse') throw plan.error;
  if (plan.kind === 'already-provisioned') {
    return { status: 'already-provisioned', index, authPolicy, steps: [], reason: plan.reason };
  }

  for (const step of plan.steps) {
    try {
      switch (step.op) {
        case 'undefine':
          await native.tpmNvUndefine(tcti, step.index);
          break;
        case 'define':
          await native.tpmNvDefine(tcti, step.definition);
          break;
        case 'write':
          await native.tpmNvWrite(tcti, step.index, step.data);
          break;
        case 'writeLock':
          await native.tpmNvWriteLock(tcti, step.index);
          break;
      }
    } catch (cause) {
      throw tpmFailure(`provisioning NV index ${hex(index)} (${step.op})`, cause);
    }
  }

  if (options.pcrValues === undefined) {
    // The policy is over the current values: the root must read back exactly.
    const check = await readTrustRoot(native, tcti, { index, bank, pcrs }).catch((error: unknown) => error as Error);
    if (check instanceof Error || !check.spki.equals(wantedRoot)) {
      throw new TrustRootError(
        'E_TRUST_ROOT_VERIFY',
        `NV index ${hex(index)} did not read back the trust root just provisioned${check instanceof Error ? `: ${check.message}` : ''}`,
        check instanceof Error ? { cause: check } : undefined,
      );
    }
  }
  return { status: 'provisioned', index, authPolicy, steps: plan.steps.map((step) => step.op), reason: plan.reason };
}

export interface TrustRoot {
  /** The DER SubjectPublicKeyInfo as stored. */
  spki: Buffer;
  key: KeyObject;
  index: number;
  authPolicy: Buffer;
}

/**
 * Reads the trust root under the PCR policy. Refuses an index that is missing, not a trust
 * root, unwritten or not write-locked; a TPM policy failure becomes E_TRUST_ROOT_PCR_MISMATCH.
 */
export async function readTrustRoot(native: Native, tcti: string, options: TrustRootLocation = {}): Promise<TrustRoot> {
  const { index, bank, pcrs } = resolveLocation(options);
  let pub: TpmNvPublic | null;
  try {
    pub = await native.tpmNvReadPublic(tcti, index);
  } catch (cause) {
    throw tpmFailure(`reading NV index ${hex(index)}`, cause);
  }
  const refusal = checkTrustRootIndex(pub, index);
  if (refusal) throw refusal;

  let spki: Buffer;
  try {
    spki = await native.tpmNvReadWithPcrPolicy(tcti, index, { bank, pcrs });
  } catch (cause) {
    if (isTpmError(cause, 'TPM_RC_POLICY_FAIL')) {
      throw new TrustRootError(
        'E_TRUST_ROOT_PCR_MISMATCH',
        `the TPM refuses the trust root in NV index ${hex(index)}: PCRs ${bank}:${pcrs.join(',')} do not match the state it was provisioned for ` +
          '(another UKI, Secure Boot state or PCR selection)',
        { cause },
      );
    }
    throw tpmFailure(`reading NV index ${hex(index)}`, cause);
  }
  const key = parseTrustRoot(spki);
  if (key instanceof TrustRootError) throw key;
  return { spki, key, index, authPolicy: pub!.authPolicy };
}
