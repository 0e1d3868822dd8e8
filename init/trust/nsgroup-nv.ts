/**
 * The nsgroup id assignment, kept in a TPM NV index (services/nsgroup-state.ts has the format,
 * the index's attributes and the decisions): the boot calls `loadNsgroupRanges` after the trust
 * phase, with the verified install's nsgroup names and the host's /etc/subuid and /etc/subgid
 * entries, and gets every nsgroup's range back, the same on every boot and across updates.
 *
 * Effects only through the `Native` TPM calls: NV_ReadPublic, NV_Read (index auth), and on first
 * boot or when the nsgroups changed NV_DefineSpace and one NV_Write, read back to check. Nothing
 * is written when nothing changed (NV writes wear the TPM and are rate-limited), and nothing is
 * ever undefined: a refused state stays for an operator to look at (docs/nsgroups.md).
 */
import type { Native, TpmError, TpmNvPublic } from '../../native/types.ts';
import { assignIdRanges, type IdAssignment, type SubordinateRange } from '../../services/idmap.ts';
import {
  checkNsgroupStateIndex,
  decodeNsgroupState,
  emptyAssignment,
  invalidNsgroupNames,
  NSGROUP_STATE_NV_INDEX,
  planNsgroupState,
  type NsgroupErrorCode,
  type NsgroupStateStep,
} from '../../services/nsgroup-state.ts';
import { TPMA_NV } from './tpm-policy.ts';

/** The TPM calls the loader makes. */
export type NsgroupTpm = Pick<Native, 'tpmNvReadPublic' | 'tpmNvRead' | 'tpmNvDefine' | 'tpmNvWrite'>;

export interface NsgroupNvOptions {
  /** Default NSGROUP_STATE_NV_INDEX (0x01806d70). */
  index?: number;
  /**
   * Define the index when it is absent (default true). Pass false when this machine is known to
   * have had nsgroup state (it has persistent volumes, it booted before): an absent index then
   * means a cleared TPM and is refused with E_NSGROUP_STATE_LOST instead of assigning anew.
   */
  allowDefine?: boolean;
}

export type NsgroupLoadResult =
  | {
      ok: true;
      /** nsgroup name → range (`ranges`), and the retired ranges kept out of use (`retired`). */
      assignment: IdAssignment;
      /** Whether the assignment is in the TPM (false only without a TPM: `tcti` null). */
      persisted: boolean;
      /** Whether this call wrote the index (first boot, or the nsgroups changed). */
      changed: boolean;
      /** The TPM steps carried out, in order (empty when nothing was written). */
      steps: NsgroupStateStep['op'][];
      /** Nsgroups that got a new range, and those retired, in this call. */
      added: string[];
      retired: string[];
      /** The index, null without a TPM. */
      index: number | null;
      /** What happened, for the log. */
      reason: string;
      /** To show in the log and `mosctl status`: no TPM, state filling up. */
      warnings: string[];
    }
  | { ok: false; code: NsgroupErrorCode; message: string; cause?: unknown };

const hex = (index: number) => `0x${index.toString(16).padStart(8, '0')}`;

function tpmFailure(what: string, cause: unknown): NsgroupLoadResult {
  const error = cause as Partial<TpmError>;
  return { ok: false, code: 'E_NSGROUP_TPM', message: `${what}: ${error?.message ?? String(cause)}`, cause };
}

/**
 * Every wanted nsgroup's id range, from and into the TPM (`tcti`), or without a TPM (`tcti`
 * null: host mode, a demo without swtpm) assigned in memory only, with a warning: the ranges are
 * then those of a first boot every time. Never throws; a refusal carries a stable code:
 *
 * - E_NSGROUP_STATE: the index is not ours (attributes, size, nameAlg, policy) or its content is
 *   not a valid assignment (garbage, another format version), or a write would drop a range;
 * - E_NSGROUP_STATE_FULL: too many nsgroups (current and retired) for the index;
 * - E_NSGROUP_STATE_LOST: the index is absent and `allowDefine` is false;
 * - E_NSGROUP_NAME: a wanted name cannot be stored;
 * - E_NSGROUP_OVERLAP, E_NSGROUP_EXHAUSTED: from services/idmap.ts (a stored range now clashes
 *   with /etc/subuid, or no free range is left);
 * - E_NSGROUP_TPM: a TPM command failed (`cause` is the TpmError).
 */
export async function loadNsgroupRanges(
  native: NsgroupTpm,
  tcti: string | null,
  wanted: readonly string[],
  reserved: readonly SubordinateRange[],
  options: NsgroupNvOptions = {},
): Promise<NsgroupLoadResult> {
  if (tcti === null) return inMemory(wanted, reserved);
  const index = options.index ?? NSGROUP_STATE_NV_INDEX;

  let existing: TpmNvPublic | null;
  try {
    existing = await native.tpmNvReadPublic(tcti, index);
  } catch (cause) {
    return tpmFailure(`reading NV index ${hex(index)}`, cause);
  }
  let content: Buffer | null = null;
  if (existing !== null && checkNsgroupStateIndex(existing) === null && (existing.attributes & TPMA_NV.WRITTEN) !== 0) {
    try {
      content = await native.tpmNvRead(tcti, index);
    } catch (cause) {
      return tpmFailure(`reading NV index ${hex(index)}`, cause);
    }
  }

  const plan = planNsgroupState({ index, existing, content, wanted, reserved, allowDefine: options.allowDefine ?? true });
  if (plan.kind === 'refuse') return { ok: false, code: plan.code, message: plan.message };

  for (const step of plan.steps) {
    try {
      if (step.op === 'define') await native.tpmNvDefine(tcti, step.definition);
      else await native.tpmNvWrite(tcti, step.index, step.data);
    } catch (cause) {
      return tpmFailure(`writing the nsgroup assignment to NV index ${hex(index)} (${step.op})`, cause);
    }
  }

  const written = plan.steps.find((step) => step.op === 'write');
  if (written) {
    // What the next boot will read must be what this boot uses.
    let back: Buffer;
    try {
      back = await native.tpmNvRead(tcti, index);
    } catch (cause) {
      return tpmFailure(`reading back NV index ${hex(index)}`, cause);
    }
    const decoded = decodeNsgroupState(back);
    if (!back.equals(written.data) || !decoded.ok) {
      return { ok: false, code: 'E_NSGROUP_TPM', message: `NV index ${hex(index)} did not read back the nsgroup assignment just written` };
    }
  }

  return {
    ok: true,
    assignment: plan.assignment,
    persisted: true,
    changed: written !== undefined,
    steps: plan.steps.map((step) => step.op),
    added: plan.added,
    retired: plan.retired,
    index,
    reason: plan.reason,
    warnings: plan.warnings,
  };
}

function inMemory(wanted: readonly string[], reserved: readonly SubordinateRange[]): NsgroupLoadResult {
  const invalid = invalidNsgroupNames(wanted);
  if (invalid.length > 0) {
    return { ok: false, code: 'E_NSGROUP_NAME', message: `nsgroup names ${invalid.map((name) => JSON.stringify(name)).join(', ')} are not valid` };
  }
  const assigned = assignIdRanges(emptyAssignment(), wanted, reserved);
  if (!assigned.ok) return { ok: false, code: assigned.code, message: assigned.message };
  return {
    ok: true,
    assignment: assigned.assignment,
    persisted: false,
    changed: false,
    steps: [],
    added: assigned.added,
    retired: [],
    index: null,
    reason: 'no TPM: nsgroup id ranges assigned in memory',
    warnings: [
      'no TPM: the nsgroup id ranges are not persisted; they are assigned afresh on every start and may change ' +
        'when nsgroups are added or removed (files on persistent volumes may then belong to another nsgroup)',
    ],
  };
}
