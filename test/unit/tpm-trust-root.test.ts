import { generateKeyPairSync } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import type { TpmNvPublic } from '../../native/types.ts';
import { pcrPolicyDigest, TPMA_NV, TRUST_ROOT_NV_ATTRIBUTES } from '../../init/trust/tpm-policy.ts';
import {
  checkTrustRootIndex,
  parseTrustRoot,
  planProvision,
  provisionTrustRoot,
  readTrustRoot,
  TRUST_ROOT_NV_INDEX,
  TrustRootError,
  type ProvisionFacts,
} from '../../init/trust/trust-root.ts';

const spki = (type: 'ec' | 'rsa' = 'ec') =>
  (type === 'ec'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 })
  ).publicKey.export({ format: 'der', type: 'spki' });

const ROOT = spki();
const OTHER_ROOT = spki();
const INDEX = TRUST_ROOT_NV_INDEX;
const POLICY = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), Buffer.alloc(32)]);
const OTHER_POLICY = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), Buffer.alloc(32, 1)]);
const TCTI = 'device:/dev/tpmrm0';

function nvPublic(overrides: Partial<TpmNvPublic> & { state?: number } = {}): TpmNvPublic {
  const { state = TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED, ...rest } = overrides;
  return { index: INDEX, size: ROOT.length, attributes: TRUST_ROOT_NV_ATTRIBUTES | state, authPolicy: POLICY, nameAlg: 'sha256', ...rest };
}

const facts = (overrides: Partial<ProvisionFacts> = {}): ProvisionFacts => ({
  index: INDEX,
  existing: null,
  wantedRoot: ROOT,
  authPolicy: POLICY,
  reset: false,
  ...overrides,
});

const ops = (plan: ReturnType<typeof planProvision>) => (plan.kind === 'steps' ? plan.steps.map((step) => step.op) : plan.kind);
const refusal = (plan: ReturnType<typeof planProvision>) => (plan.kind === 'refuse' ? plan.error.code : `not refused: ${plan.kind}`);

describe('planProvision', () => {
  it('defines, writes and locks an index that does not exist', () => {
    const plan = planProvision(facts());
    expect(ops(plan)).toEqual(['define', 'write', 'writeLock']);
    if (plan.kind !== 'steps') throw new Error('no steps');
    expect(plan.steps[0]).toEqual({
      op: 'define',
      definition: { index: INDEX, size: ROOT.length, attributes: TRUST_ROOT_NV_ATTRIBUTES, authPolicy: POLICY, nameAlg: 'sha256' },
    });
    expect(plan.steps[1]).toEqual({ op: 'write', index: INDEX, data: ROOT });
  });

  it('calls the same root, locked, under the same policy already provisioned', () => {
    const plan = planProvision(facts({ existing: nvPublic(), currentContent: ROOT }));
    expect(plan).toMatchObject({ kind: 'already-provisioned', code: 'E_ALREADY_PROVISIONED' });
  });

  it('refuses a different root without reset, replaces it with reset', () => {
    expect(refusal(planProvision(facts({ existing: nvPublic(), currentContent: OTHER_ROOT })))).toBe('E_DIFFERENT_ROOT');
    expect(ops(planProvision(facts({ existing: nvPublic(), currentContent: OTHER_ROOT, reset: true })))).toEqual([
      'undefine',
      'define',
      'write',
      'writeLock',
    ]);
  });

  it('refuses a root it cannot read (other PCRs or policy) without reset', () => {
    const plan = planProvision(facts({ existing: nvPublic({ authPolicy: OTHER_POLICY }) }));
    expect(refusal(plan)).toBe('E_TRUST_ROOT_UNVERIFIABLE');
    if (plan.kind === 'refuse') expect(plan.error.message).toMatch(/its policy differs/);
    expect(refusal(planProvision(facts({ existing: nvPublic() })))).toBe('E_TRUST_ROOT_UNVERIFIABLE');
    expect(ops(planProvision(facts({ existing: nvPublic(), reset: true })))).toEqual(['undefine', 'define', 'write', 'writeLock']);
  });

  it('refuses the same root under another policy without reset', () => {
    const existing = nvPublic({ authPolicy: OTHER_POLICY });
    expect(refusal(planProvision(facts({ existing, currentContent: ROOT })))).toBe('E_TRUST_ROOT_UNVERIFIABLE');
    expect(ops(planProvision(facts({ existing, currentContent: ROOT, reset: true }))).at(0)).toBe('undefine');
  });

  it('refuses an index that is not a trust root without reset', () => {
    const existing = nvPublic({ attributes: TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.AUTHREAD | TPMA_NV.WRITTEN });
    const plan = planProvision(facts({ existing }));
    expect(refusal(plan)).toBe('E_NV_INDEX_FOREIGN');
    if (plan.kind === 'refuse') expect(plan.error.message).toMatch(/authread/);
    expect(refusal(planProvision(facts({ existing: nvPublic({ nameAlg: 'sha1' }) })))).toBe('E_NV_INDEX_FOREIGN');
    expect(ops(planProvision(facts({ existing, reset: true })))).toEqual(['undefine', 'define', 'write', 'writeLock']);
  });

  it('finishes an interrupted provisioning: defined but unwritten', () => {
    expect(ops(planProvision(facts({ existing: nvPublic({ state: 0 }) })))).toEqual(['write', 'writeLock']);
  });

  it('defines anew an unwritten index of another size, policy or locked (it holds no root)', () => {
    const again = ['undefine', 'define', 'write', 'writeLock'];
    expect(ops(planProvision(facts({ existing: nvPublic({ state: 0, size: 300 }) })))).toEqual(again);
    expect(ops(planProvision(facts({ existing: nvPublic({ state: 0, authPolicy: OTHER_POLICY }) })))).toEqual(again);
    expect(ops(planProvision(facts({ existing: nvPublic({ state: TPMA_NV.WRITELOCKED }) })))).toEqual(again);
  });

  it('finishes an interrupted provisioning: written with this root but unlocked', () => {
    expect(ops(planProvision(facts({ existing: nvPublic({ state: TPMA_NV.WRITTEN }), currentContent: ROOT })))).toEqual(['writeLock']);
  });

  it('refuses a root that is not a DER SubjectPublicKeyInfo', () => {
    expect(refusal(planProvision(facts({ wantedRoot: Buffer.from('not a key') })))).toBe('E_TRUST_ROOT_INVALID');
    expect(refusal(planProvision(facts({ wantedRoot: Buffer.concat([ROOT, Buffer.from([0])]) })))).toBe('E_TRUST_ROOT_INVALID');
    expect(refusal(planProvision(facts({ wantedRoot: Buffer.alloc(0) })))).toBe('E_TRUST_ROOT_INVALID');
    // A weak key is no trust root either.
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'der' });
    expect(refusal(planProvision(facts({ wantedRoot: rsa1024 })))).toBe('E_TRUST_ROOT_INVALID');
  });
});

describe('parseTrustRoot', () => {
  it('accepts EC and RSA keys', () => {
    expect(parseTrustRoot(ROOT)).not.toBeInstanceOf(TrustRootError);
    const rsa = parseTrustRoot(spki('rsa'));
    expect(rsa).not.toBeInstanceOf(TrustRootError);
    if (!(rsa instanceof TrustRootError)) expect(rsa.asymmetricKeyType).toBe('rsa');
  });

  it('refuses over 1024 bytes', () => {
    expect(parseTrustRoot(Buffer.alloc(1025))).toMatchObject({ code: 'E_TRUST_ROOT_INVALID' });
  });
});

describe('checkTrustRootIndex', () => {
  it('accepts a written, locked trust root index', () => {
    expect(checkTrustRootIndex(nvPublic(), INDEX)).toBeNull();
  });

  it('names what is wrong', () => {
    expect(checkTrustRootIndex(null, INDEX)?.code).toBe('E_TRUST_ROOT_NOT_PROVISIONED');
    expect(checkTrustRootIndex(nvPublic({ state: 0 }), INDEX)?.code).toBe('E_TRUST_ROOT_NOT_PROVISIONED');
    expect(checkTrustRootIndex(nvPublic({ state: TPMA_NV.WRITTEN }), INDEX)?.code).toBe('E_TRUST_ROOT_NOT_LOCKED');
    const weaker = nvPublic({ attributes: TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.OWNERREAD | TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED });
    expect(checkTrustRootIndex(weaker, INDEX)?.code).toBe('E_NV_INDEX_FOREIGN');
  });
});

describe('provisionTrustRoot and readTrustRoot on the fake TPM', () => {
  let native: FakeNative;
  beforeEach(() => {
    native = new FakeNative();
    native.setPcr('sha256', 7, Buffer.alloc(32, 0x77));
    native.setPcr('sha256', 11, Buffer.alloc(32, 0x11));
  });

  it('provisions, then reads the root back under the policy', async () => {
    const result = await provisionTrustRoot(native, TCTI, { root: ROOT });
    expect(result).toMatchObject({ status: 'provisioned', index: INDEX, steps: ['define', 'write', 'writeLock'] });
    expect(result.authPolicy).toEqual(pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32, 0x77), Buffer.alloc(32, 0x11)]));
    const pub = native.tpmNv.get(INDEX)!.public;
    expect(pub.attributes).toBe(TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED);

    const root = await readTrustRoot(native, TCTI);
    expect(root.spki).toEqual(ROOT);
    expect(root.key.asymmetricKeyType).toBe('ec');
  });

  it('is idempotent for the same root and writes nothing the second time', async () => {
    await provisionTrustRoot(native, TCTI, { root: ROOT });
    native.tpmCalls.length = 0;
    const again = await provisionTrustRoot(native, TCTI, { root: ROOT });
    expect(again).toMatchObject({ status: 'already-provisioned', steps: [] });
    expect(native.tpmCalls.map((call) => call.split(' ')[0])).toEqual(['tpmPcrRead', 'tpmNvReadPublic', 'tpmNvReadWithPcrPolicy']);
  });

  it('refuses a different root unless reset', async () => {
    await provisionTrustRoot(native, TCTI, { root: ROOT });
    await expect(provisionTrustRoot(native, TCTI, { root: OTHER_ROOT })).rejects.toMatchObject({ code: 'E_DIFFERENT_ROOT' });
    expect((await readTrustRoot(native, TCTI)).spki).toEqual(ROOT);

    const reset = await provisionTrustRoot(native, TCTI, { root: OTHER_ROOT, reset: true });
    expect(reset.steps).toEqual(['undefine', 'define', 'write', 'writeLock']);
    expect((await readTrustRoot(native, TCTI)).spki).toEqual(OTHER_ROOT);
  });

  it('cannot read the root once PCR 11 changed (another UKI)', async () => {
    await provisionTrustRoot(native, TCTI, { root: ROOT });
    native.extendPcr('sha256', 11, Buffer.alloc(32, 0xab));
    await expect(readTrustRoot(native, TCTI)).rejects.toMatchObject({
      code: 'E_TRUST_ROOT_PCR_MISMATCH',
      cause: { code: 'TPM_RC_POLICY_FAIL', syscall: 'Esys_NV_Read' },
    });
    // ... and provisioning now cannot tell whether it holds the same root.
    await expect(provisionTrustRoot(native, TCTI, { root: ROOT })).rejects.toMatchObject({ code: 'E_TRUST_ROOT_UNVERIFIABLE' });
  });

  it('provisions for predicted PCR values without reading back, readable in that state', async () => {
    const predicted = [Buffer.alloc(32, 0x07), Buffer.alloc(32, 0x0b)];
    const result = await provisionTrustRoot(native, TCTI, { root: ROOT, pcrValues: predicted });
    expect(result.status).toBe('provisioned');
    await expect(readTrustRoot(native, TCTI)).rejects.toMatchObject({ code: 'E_TRUST_ROOT_PCR_MISMATCH' });
    native.resetTpm();
    native.setPcr('sha256', 7, predicted[0]!);
    native.setPcr('sha256', 11, predicted[1]!);
    expect((await readTrustRoot(native, TCTI)).spki).toEqual(ROOT);
  });

  it('honours a configured index, bank and PCR set', async () => {
    native.setPcr('sha1', 4, Buffer.alloc(20, 4));
    const options = { index: 0x0180_0200, bank: 'sha1' as const, pcrs: [4, 0] };
    await provisionTrustRoot(native, TCTI, { root: ROOT, ...options });
    expect((await readTrustRoot(native, TCTI, options)).spki).toEqual(ROOT);
    await expect(readTrustRoot(native, TCTI, { ...options, pcrs: [4] })).rejects.toMatchObject({ code: 'E_TRUST_ROOT_PCR_MISMATCH' });
    await expect(readTrustRoot(native, TCTI)).rejects.toMatchObject({ code: 'E_TRUST_ROOT_NOT_PROVISIONED' });
  });

  it('resumes a provisioning interrupted after the write', async () => {
    native.failNextTpm = { call: 'tpmNvWriteLock', code: 'TSS2_TCTI_RC_IO_ERROR' };
    await expect(provisionTrustRoot(native, TCTI, { root: ROOT })).rejects.toMatchObject({
      code: 'E_TRUST_ROOT_TPM',
      cause: { code: 'TSS2_TCTI_RC_IO_ERROR' },
    });
    await expect(readTrustRoot(native, TCTI)).rejects.toMatchObject({ code: 'E_TRUST_ROOT_NOT_LOCKED' });
    const resumed = await provisionTrustRoot(native, TCTI, { root: ROOT });
    expect(resumed.steps).toEqual(['writeLock']);
    expect((await readTrustRoot(native, TCTI)).spki).toEqual(ROOT);
  });

  it('reports a missing TPM as a TPM failure with the cause', async () => {
    native.failNextTpm = { call: 'tpmNvReadPublic', code: 'TSS2_TCTI_RC_IO_ERROR' };
    const error = (await readTrustRoot(native, TCTI).catch((e: unknown) => e)) as TrustRootError;
    expect(error).toBeInstanceOf(TrustRootError);
    expect(error).toMatchObject({ code: 'E_TRUST_ROOT_TPM' });
    expect(error.message).toMatch(/TSS2_TCTI_RC_IO_ERROR/);
  });

  it('refuses to read an index that is not a trust root', async () => {
    await native.tpmNvDefine(TCTI, { index: INDEX, size: 4, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, authPolicy: Buffer.alloc(0) });
    await native.tpmNvWrite(TCTI, INDEX, Buffer.from('evil'));
    await expect(readTrustRoot(native, TCTI)).rejects.toMatchObject({ code: 'E_NV_INDEX_FOREIGN' });
    await expect(provisionTrustRoot(native, TCTI, { root: ROOT })).rejects.toMatchObject({ code: 'E_NV_INDEX_FOREIGN' });
  });
});
