/**
 * TPM 2.0 policy arithmetic and NV attribute constants: pure, no TPM needed.
 *
 * `pcrPolicyDigest` computes offline what a TPM computes in a policy session after
 * TPM2_PolicyPCR, so mos can define an NV index whose authPolicy is "these PCRs hold these
 * values" (for the values of a boot it predicts, or the current ones) and a reader can tell in
 * advance whether its PCRs would satisfy an index's policy.
 */
import { createHash } from 'node:crypto';
import type { TpmHashAlg } from '../../native/types.ts';

/** TPM_ALG_ID of each hash mos names (TPM 2.0 Part 2, Table 9). */
export const TPM_ALG_ID: Readonly<Record<TpmHashAlg, number>> = {
  sha1: 0x0004,
  sha256: 0x000b,
  sha384: 0x000c,
  sha512: 0x000d,
};

export const DIGEST_SIZE: Readonly<Record<TpmHashAlg, number>> = {
  sha1: 20,
  sha256: 32,
  sha384: 48,
  sha512: 64,
};

export function isTpmHashAlg(name: string): name is TpmHashAlg {
  return Object.hasOwn(TPM_ALG_ID, name);
}

/** TPM_CC_PolicyPCR. */
const TPM_CC_POLICY_PCR = 0x0000017f;

/** PC Client TPMs have PCRs 0-23; the selection bitmap is then 3 bytes. */
export const PCR_COUNT = 24;
const PCR_SELECT_SIZE = 3;

/**
 * A PCR list as the policy uses it: ascending, without duplicates, each in 0-23. Throws a
 * RangeError naming the bad entry otherwise.
 */
export function normalizePcrs(pcrs: readonly number[]): number[] {
  if (pcrs.length === 0) throw new RangeError('a PCR selection needs at least one PCR');
  for (const pcr of pcrs) {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr >= PCR_COUNT) {
      throw new RangeError(`PCR ${pcr} is not in 0-${PCR_COUNT - 1}`);
    }
  }
  return [...new Set(pcrs)].sort((a, b) => a - b);
}

/**
 * TPML_PCR_SELECTION with one TPMS_PCR_SELECTION: count (u32) = 1, hash (u16), sizeofSelect
 * (u8) = 3, pcrSelect bitmap (PCR n is bit n % 8 of byte n / 8). Big-endian, as on the wire.
 * sizeofSelect is 3 as tpm2-tools, the kernel and systemd send it; it is part of the digest.
 */
export function marshalPcrSelection(bank: TpmHashAlg, pcrs: readonly number[]): Buffer {
  const selected = normalizePcrs(pcrs);
  const out = Buffer.alloc(4 + 2 + 1 + PCR_SELECT_SIZE);
  out.writeUInt32BE(1, 0);
  out.writeUInt16BE(TPM_ALG_ID[bank], 4);
  out.writeUInt8(PCR_SELECT_SIZE, 6);
  for (const pcr of selected) out[7 + (pcr >> 3)]! |= 1 << (pcr & 7);
  return out;
}

/**
 * The policy digest after TPM2_PolicyPCR in a fresh session (TPM 2.0 Part 3, 23.7):
 *
 *   pcrDigest    = H(value of each selected PCR, in ascending PCR order)
 *   policyDigest = H(0…0 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || pcrDigest)
 *
 * H is the policy's (= the NV index's nameAlg) hash, whatever the PCR bank. `pcrValues[i]` is
 * the value of the i-th PCR of `pcrs` in ascending order; `pcrs` must already be ascending and
 * unique (see `normalizePcrs`) so values and numbers cannot be paired up wrongly.
 */
export function pcrPolicyDigest(
  bank: TpmHashAlg,
  pcrs: readonly number[],
  pcrValues: readonly Buffer[],
  policyAlg: TpmHashAlg = 'sha256',
): Buffer {
  const selected = normalizePcrs(pcrs);
  if (selected.length !== pcrs.length || selected.some((pcr, i) => pcr !== pcrs[i])) {
    throw new RangeError(`PCRs must be ascending and unique, got ${pcrs.join(',')}`);
  }
  if (pcrValues.length !== selected.length) {
    throw new RangeError(`${selected.length} PCRs selected but ${pcrValues.length} values given`);
  }
  pcrValues.forEach((value, i) => {
    if (value.length !== DIGEST_SIZE[bank]) {
      throw new RangeError(`PCR ${selected[i]} value has ${value.length} bytes, a ${bank} PCR has ${DIGEST_SIZE[bank]}`);
    }
  });
  const pcrDigest = createHash(policyAlg).update(Buffer.concat(pcrValues)).digest();
  const commandCode = Buffer.alloc(4);
  commandCode.writeUInt32BE(TPM_CC_POLICY_PCR);
  return createHash(policyAlg)
    .update(Buffer.alloc(DIGEST_SIZE[policyAlg]))
    .update(commandCode)
    .update(marshalPcrSelection(bank, selected))
    .update(pcrDigest)
    .digest();
}

/** TPMA_NV bits (TPM 2.0 Part 2, Table 204). */
export const TPMA_NV = {
  PPWRITE: 0x0000_0001,
  OWNERWRITE: 0x0000_0002,
  AUTHWRITE: 0x0000_0004,
  POLICYWRITE: 0x0000_0008,
  /** Bits 4-7: TPM_NT; 0 = ordinary (opaque data written with TPM2_NV_Write). */
  TYPE_MASK: 0x0000_00f0,
  POLICY_DELETE: 0x0000_0400,
  WRITELOCKED: 0x0000_0800,
  WRITEALL: 0x0000_1000,
  WRITEDEFINE: 0x0000_2000,
  WRITE_STCLEAR: 0x0000_4000,
  GLOBALLOCK: 0x0000_8000,
  PPREAD: 0x0001_0000,
  OWNERREAD: 0x0002_0000,
  AUTHREAD: 0x0004_0000,
  POLICYREAD: 0x0008_0000,
  NO_DA: 0x0200_0000,
  ORDERLY: 0x0400_0000,
  CLEAR_STCLEAR: 0x0800_0000,
  READLOCKED: 0x1000_0000,
  WRITTEN: 0x2000_0000,
  PLATFORMCREATE: 0x4000_0000,
  READ_STCLEAR: 0x8000_0000,
} as const;

/** Bits the TPM sets as the index is used; never given at definition. */
export const TPMA_NV_STATE = TPMA_NV.WRITELOCKED | TPMA_NV.READLOCKED | TPMA_NV.WRITTEN;

/**
 * The trust root index's attributes (type ordinary). Reading needs the PCR policy and nothing
 * else; writing needs owner authorization until the one write lock, which is permanent.
 *
 * - POLICYREAD: reads are authorized by the authPolicy (the PCR policy) ...
 * - ... and OWNERREAD, AUTHREAD, PPREAD are clear, so no hierarchy password or authValue reads
 *   it: the measured state is the only way in.
 * - OWNERWRITE: provisioning writes it with owner authorization. AUTHWRITE, POLICYWRITE and
 *   PPWRITE are clear: a machine booted into the expected state (which satisfies the policy)
 *   still cannot rewrite its own trust root.
 * - WRITEALL: one TPM2_NV_Write must cover the whole index, so there is never a half-written
 *   root (a torn write leaves the index unwritten, hence unreadable, not wrong).
 * - WRITEDEFINE: TPM2_NV_WriteLock locks writes until the index is undefined, across reboots
 *   (WRITE_STCLEAR would unlock at the next TPM reset).
 * - NO_DA: the index has no secret (empty authValue; policy failures do not count as DA
 *   failures anyway), so dictionary-attack protection guards nothing here, and with it set the
 *   root stays readable while the TPM is in DA lockout because of someone else's failures.
 *
 * Left clear on purpose: POLICY_DELETE (needs the platform hierarchy, which firmware owns),
 * PLATFORMCREATE (owner index), READ_STCLEAR (a read lock for the rest of the boot would be
 * possible, but the root is a public key: secrecy is not what the policy protects, binding to
 * the measured boot is), CLEAR_STCLEAR, ORDERLY, GLOBALLOCK.
 */
export const TRUST_ROOT_NV_ATTRIBUTES =
  TPMA_NV.POLICYREAD | TPMA_NV.OWNERWRITE | TPMA_NV.WRITEALL | TPMA_NV.WRITEDEFINE | TPMA_NV.NO_DA;

/** tpm2-tools' names of the attribute bits (`tpm2_nvdefine -a`), for messages and tests. */
const ATTRIBUTE_NAMES: [number, string][] = [
  [TPMA_NV.PPWRITE, 'ppwrite'],
  [TPMA_NV.OWNERWRITE, 'ownerwrite'],
  [TPMA_NV.AUTHWRITE, 'authwrite'],
  [TPMA_NV.POLICYWRITE, 'policywrite'],
  [TPMA_NV.POLICY_DELETE, 'policydelete'],
  [TPMA_NV.WRITELOCKED, 'writelocked'],
  [TPMA_NV.WRITEALL, 'writeall'],
  [TPMA_NV.WRITEDEFINE, 'writedefine'],
  [TPMA_NV.WRITE_STCLEAR, 'write_stclear'],
  [TPMA_NV.GLOBALLOCK, 'globallock'],
  [TPMA_NV.PPREAD, 'ppread'],
  [TPMA_NV.OWNERREAD, 'ownerread'],
  [TPMA_NV.AUTHREAD, 'authread'],
  [TPMA_NV.POLICYREAD, 'policyread'],
  [TPMA_NV.NO_DA, 'no_da'],
  [TPMA_NV.ORDERLY, 'orderly'],
  [TPMA_NV.CLEAR_STCLEAR, 'clear_stclear'],
  [TPMA_NV.READLOCKED, 'readlocked'],
  [TPMA_NV.WRITTEN, 'written'],
  [TPMA_NV.PLATFORMCREATE, 'platformcreate'],
  [TPMA_NV.READ_STCLEAR, 'read_stclear'],
];

/** `policyread|ownerwrite|...` (tpm2-tools' syntax); a non-ordinary type is shown as `nt=N`. */
export function formatNvAttributes(attributes: number): string {
  const names = ATTRIBUTE_NAMES.filter(([bit]) => (attributes & bit) !== 0).map(([, name]) => name);
  const type = (attributes & TPMA_NV.TYPE_MASK) >>> 4;
  if (type !== 0) names.push(`nt=${type}`);
  return names.join('|');
}
