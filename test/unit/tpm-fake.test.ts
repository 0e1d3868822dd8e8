import { createHash } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { createTpmError, FakeNative } from '../../native/fake.ts';
import { pcrPolicyDigest, TPMA_NV, TRUST_ROOT_NV_ATTRIBUTES } from '../../init/trust/tpm-policy.ts';

const TCTI = 'swtpm:host=127.0.0.1,port=2321';
const INDEX = 0x0180_0100;
const ZERO_POLICY = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), Buffer.alloc(32)]);

describe('createTpmError', () => {
  it('reads like the addon: call, code, index', () => {
    const error = createTpmError('Esys_NV_Read', 'TPM_RC_POLICY_FAIL', INDEX);
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toBe('Esys_NV_Read TPM_RC_POLICY_FAIL 0x01800100');
    expect(error).toMatchObject({ code: 'TPM_RC_POLICY_FAIL', rc: 0x99d, syscall: 'Esys_NV_Read', subject: '0x01800100' });
  });
});

describe('FakeNative TPM', () => {
  let tpm: FakeNative;
  beforeEach(() => {
    tpm = new FakeNative();
  });

  const define = (attributes = TRUST_ROOT_NV_ATTRIBUTES, size = 4, authPolicy = ZERO_POLICY) =>
    tpm.tpmNvDefine(TCTI, { index: INDEX, size, attributes, authPolicy });

  it('starts with zero PCRs and extends like a TPM', async () => {
    expect(await tpm.tpmPcrRead(TCTI, 'sha256', [11, 7])).toEqual([Buffer.alloc(32), Buffer.alloc(32)]);
    const digest = Buffer.alloc(32, 1);
    tpm.extendPcr('sha256', 11, digest);
    const expected = createHash('sha256').update(Buffer.alloc(32)).update(digest).digest();
    expect(await tpm.tpmPcrRead(TCTI, 'sha256', [11])).toEqual([expected]);
    await expect(tpm.tpmPcrRead(TCTI, 'sha384', [7])).rejects.toMatchObject({ code: 'PCR_UNAVAILABLE' });
  });

  it('defines, reports and refuses a second definition', async () => {
    expect(await tpm.tpmNvReadPublic(TCTI, INDEX)).toBeNull();
    await define();
    expect(await tpm.tpmNvReadPublic(TCTI, INDEX)).toEqual({
      index: INDEX,
      size: 4,
      attributes: TRUST_ROOT_NV_ATTRIBUTES,
      authPolicy: ZERO_POLICY,
      nameAlg: 'sha256',
    });
    await expect(define()).rejects.toMatchObject({ code: 'TPM_RC_NV_DEFINED', syscall: 'Esys_NV_DefineSpace' });
  });

  it('reads under the PCR policy only while the PCRs match', async () => {
    await define();
    await expect(tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [7, 11] })).rejects.toMatchObject({
      code: 'TPM_RC_NV_UNINITIALIZED',
    });
    await tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('root'));
    expect(await tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [11, 7] })).toEqual(Buffer.from('root'));
    await expect(tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [7] })).rejects.toMatchObject({
      code: 'TPM_RC_POLICY_FAIL',
    });
    tpm.extendPcr('sha256', 7, Buffer.alloc(32, 2));
    await expect(tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [7, 11] })).rejects.toMatchObject({
      code: 'TPM_RC_POLICY_FAIL',
      rc: 0x99d,
    });
  });

  it('does not read an index without POLICYREAD under a policy', async () => {
    await define(TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD);
    await tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('data'));
    await expect(tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [7, 11] })).rejects.toMatchObject({
      code: 'TPM_RC_NV_AUTHORIZATION',
    });
  });

  it('holds a WRITEDEFINE write lock across TPM resets, until undefined', async () => {
    await define();
    await tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('root'));
    await tpm.tpmNvWriteLock(TCTI, INDEX);
    await expect(tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('evil'))).rejects.toMatchObject({ code: 'TPM_RC_NV_LOCKED' });
    tpm.resetTpm();
    await expect(tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('evil'))).rejects.toMatchObject({ code: 'TPM_RC_NV_LOCKED' });
    await tpm.tpmNvUndefine(TCTI, INDEX);
    expect(await tpm.tpmNvReadPublic(TCTI, INDEX)).toBeNull();
    await expect(tpm.tpmNvUndefine(TCTI, INDEX)).rejects.toMatchObject({ code: 'TPM_RC_HANDLE' });
  });

  it('unlocks a WRITE_STCLEAR lock at a TPM reset', async () => {
    await define(TPMA_NV.OWNERWRITE | TPMA_NV.POLICYREAD | TPMA_NV.WRITE_STCLEAR);
    await tpm.tpmNvWriteLock(TCTI, INDEX);
    await expect(tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('data'))).rejects.toMatchObject({ code: 'TPM_RC_NV_LOCKED' });
    tpm.resetTpm();
    await tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('data'));
  });

  it('refuses partial writes of a WRITEALL index and write locks without a lock attribute', async () => {
    await define(TRUST_ROOT_NV_ATTRIBUTES, 8);
    await expect(tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('half'))).rejects.toMatchObject({ code: 'TPM_RC_NV_RANGE' });
    expect(tpm.tpmNv.get(INDEX)!.public.attributes & TPMA_NV.WRITTEN).toBe(0);
    await tpm.tpmNvUndefine(TCTI, INDEX);
    await define(TPMA_NV.OWNERWRITE | TPMA_NV.POLICYREAD);
    await expect(tpm.tpmNvWriteLock(TCTI, INDEX)).rejects.toMatchObject({ code: 'TPM_RC_ATTRIBUTES' });
  });

  it('chunks writes like the addon', async () => {
    tpm.tpmNvBufferMax = 3;
    await define(TPMA_NV.OWNERWRITE | TPMA_NV.POLICYREAD, 8);
    await tpm.tpmNvWrite(TCTI, INDEX, Buffer.from('12345678'));
    expect(await tpm.tpmNvReadWithPcrPolicy(TCTI, INDEX, { bank: 'sha256', pcrs: [7, 11] })).toEqual(Buffer.from('12345678'));
  });

  it('refuses state bits at definition, bad policy sizes and bad tcti strings', async () => {
    await expect(define(TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.WRITTEN)).rejects.toMatchObject({ code: 'TPM_RC_ATTRIBUTES' });
    await expect(define(TRUST_ROOT_NV_ATTRIBUTES, 4, Buffer.alloc(20))).rejects.toMatchObject({ code: 'TPM_RC_SIZE' });
    await expect(tpm.tpmNvReadPublic('tcp:1', INDEX)).rejects.toThrow(TypeError);
  });

  it('fails the next named call on request', async () => {
    tpm.failNextTpm = { call: 'tpmPcrRead', code: 'TSS2_TCTI_RC_IO_ERROR' };
    await expect(tpm.tpmPcrRead(TCTI, 'sha256', [7])).rejects.toMatchObject({ code: 'TSS2_TCTI_RC_IO_ERROR', rc: 0xa000a });
    expect(await tpm.tpmPcrRead(TCTI, 'sha256', [7])).toHaveLength(1);
    expect(tpm.tpmCalls).toEqual([`tpmPcrRead ${TCTI}`, `tpmPcrRead ${TCTI}`]);
  });
});
