/**
 * The TPM port (native/src/tpm.cc) and the trust root code against swtpm on the host over TCP,
 * cross-checked both ways with tpm2-tools as the oracle. Needs root, swtpm, tpm2-tools and a
 * built addon. A fresh swtpm per test: PCR changes and NV indices never leak between tests.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadNative } from '../../native/index.ts';
import type { Native, TpmError } from '../../native/types.ts';
import { formatNvAttributes, pcrPolicyDigest, TPMA_NV, TRUST_ROOT_NV_ATTRIBUTES } from '../../init/trust/tpm-policy.ts';
import { provisionTrustRoot, readTrustRoot, TRUST_ROOT_NV_INDEX } from '../../init/trust/trust-root.ts';
import { startSwtpm, swtpmUnavailableReason, type Swtpm } from '../helpers/swtpm.ts';

const unavailable = swtpmUnavailableReason();
const INDEX_HEX = `0x${TRUST_ROOT_NV_INDEX.toString(16).padStart(8, '0')}`;
const TOOLS_INDEX = 0x0180_0123;
const TOOLS_INDEX_HEX = '0x01800123';

const newRoot = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'der', type: 'spki' });
const ROOT = newRoot();
const OTHER_ROOT = newRoot();
const sha256Hex = (fill: number) => Buffer.alloc(32, fill).toString('hex');

async function rejection(promise: Promise<unknown>): Promise<TpmError> {
  try {
    await promise;
  } catch (error) {
    return error as TpmError;
  }
  throw new Error('did not reject');
}

describe.skipIf(unavailable !== null)(`TPM port on swtpm${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let native: Native;
  let tpm: Swtpm;
  let work: string;

  beforeAll(() => {
    native = loadNative();
  });

  beforeEach(async () => {
    tpm = await startSwtpm();
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-tpm-test-'));
    // A measured boot, roughly: PCR 7 and 11 hold something other than zero.
    tpm.tool('tpm2_pcrextend', [`7:sha256=${sha256Hex(0x07)}`]);
    tpm.tool('tpm2_pcrextend', [`11:sha256=${sha256Hex(0x0b)}`]);
  });

  afterEach(async () => {
    await tpm.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const file = (name: string) => path.join(work, name);

  /** tpm2-tools reading an index under a PolicyPCR session, as an independent reader would. */
  function toolsPolicyRead(indexHex: string, range: string[] = []) {
    tpm.tool('tpm2_startauthsession', ['--policy-session', '-S', file('session.ctx')]);
    try {
      tpm.tool('tpm2_policypcr', ['-S', file('session.ctx'), '-l', 'sha256:7,11']);
      return tpm.tryTool('tpm2_nvread', [indexHex, '-P', `session:${file('session.ctx')}`, '-o', file('read.bin'), ...range]);
    } finally {
      tpm.tool('tpm2_flushcontext', [file('session.ctx')]);
    }
  }

  function loadedSessions(): string {
    return tpm.tool('tpm2_getcap', ['handles-loaded-session']).trim();
  }

  it('reads PCRs as tpm2_pcrread does, in the order asked', async () => {
    tpm.tool('tpm2_pcrread', ['sha256:7,11', '-o', file('pcrs.bin')]);
    const expected = readFileSync(file('pcrs.bin'));
    const [pcr11, pcr7] = await native.tpmPcrRead(tpm.tcti, 'sha256', [11, 7]);
    expect(Buffer.concat([pcr7!, pcr11!])).toEqual(expected);
    // More than PCR_Read answers at once (8 per call).
    expect(await native.tpmPcrRead(tpm.tcti, 'sha256', [...Array(24).keys()])).toHaveLength(24);
  });

  it('mos provisions; tpm2_nvread reads it with a tpm2_policypcr session, and nothing else reads it', async () => {
    const result = await provisionTrustRoot(native, tpm.tcti, { root: ROOT });
    expect(result).toMatchObject({ status: 'provisioned', steps: ['define', 'write', 'writeLock'] });

    // The oracle's view of the index.
    const pub = tpm.tool('tpm2_nvreadpublic', [INDEX_HEX]);
    const attributes = /attributes:\s*\n\s*friendly: (\S+)\s*\n\s*value: (0x[0-9a-f]+)/i.exec(pub);
    expect(Number(attributes?.[2])).toBe(TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED);
    expect(attributes?.[1]?.split('|').sort()).toEqual(
      [...formatNvAttributes(TRUST_ROOT_NV_ATTRIBUTES).split('|'), 'written', 'writelocked'].sort(),
    );
    expect(pub).toMatch(/hash algorithm:\s*\n\s*friendly: sha256/);
    tpm.tool('tpm2_pcrread', ['sha256:7,11', '-o', file('pcrs.bin')]);
    tpm.tool('tpm2_createpolicy', ['--policy-pcr', '-l', 'sha256:7,11', '-f', file('pcrs.bin'), '-L', file('policy.bin')]);
    tpm.tool('tpm2_flushcontext', ['-l']); // tpm2_createpolicy leaves its trial session loaded
    expect(pub.replace(/\s+/g, '')).toContain(`authorizationpolicy:${readFileSync(file('policy.bin')).toString('hex').toUpperCase()}`);

    const read = toolsPolicyRead(INDEX_HEX);
    expect(read.stderr).toBe('');
    expect(readFileSync(file('read.bin'))).toEqual(ROOT);

    // No other way in: not owner authorization, not the (empty) index password.
    expect(tpm.tryTool('tpm2_nvread', [INDEX_HEX, '-C', 'o', '-o', file('x')]).status).not.toBe(0);
    expect(tpm.tryTool('tpm2_nvread', [INDEX_HEX, '-o', file('x')]).status).not.toBe(0);
    // And no policy session left behind by mos.
    expect(loadedSessions()).toBe('');
  });

  it('tpm2-tools defines (policy from tpm2_createpolicy --policy-pcr) and writes; mos reads it', async () => {
    writeFileSync(file('root.der'), OTHER_ROOT);
    tpm.tool('tpm2_createpolicy', ['--policy-pcr', '-l', 'sha256:7,11', '-L', file('policy.bin')]);
    tpm.tool('tpm2_flushcontext', ['-l']);
    tpm.tool('tpm2_nvdefine', [
      TOOLS_INDEX_HEX,
      '-C', 'o',
      '-s', String(OTHER_ROOT.length),
      '-a', formatNvAttributes(TRUST_ROOT_NV_ATTRIBUTES),
      '-L', file('policy.bin'),
    ]);
    tpm.tool('tpm2_nvwrite', [TOOLS_INDEX_HEX, '-C', 'o', '-i', file('root.der')]);
    tpm.tool('tpm2_nvwritelock', [TOOLS_INDEX_HEX, '-C', 'o']);

    // Our digest of the current PCRs is the tools' policy.
    const values = await native.tpmPcrRead(tpm.tcti, 'sha256', [7, 11]);
    const pub = await native.tpmNvReadPublic(tpm.tcti, TOOLS_INDEX);
    expect(pub).toMatchObject({ index: TOOLS_INDEX, size: OTHER_ROOT.length, nameAlg: 'sha256' });
    expect(pub!.authPolicy).toEqual(readFileSync(file('policy.bin')));
    expect(pub!.authPolicy).toEqual(pcrPolicyDigest('sha256', [7, 11], values));
    expect(pub!.attributes).toBe(TRUST_ROOT_NV_ATTRIBUTES | TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED);

    const root = await readTrustRoot(native, tpm.tcti, { index: TOOLS_INDEX });
    expect(root.spki).toEqual(OTHER_ROOT);
  });

  it('after tpm2_pcrextend of PCR 11 mos cannot read the root: TPM_RC_POLICY_FAIL', async () => {
    await provisionTrustRoot(native, tpm.tcti, { root: ROOT });
    tpm.tool('tpm2_pcrextend', [`11:sha256=${sha256Hex(0xee)}`]);

    const raw = await rejection(native.tpmNvReadWithPcrPolicy(tpm.tcti, TRUST_ROOT_NV_INDEX, { bank: 'sha256', pcrs: [7, 11] }));
    expect(raw).toBeInstanceOf(Error);
    expect(raw.message).toBe(`Esys_NV_Read TPM_RC_POLICY_FAIL ${INDEX_HEX}`);
    expect(raw).toMatchObject({ code: 'TPM_RC_POLICY_FAIL', rc: 0x99d, syscall: 'Esys_NV_Read', subject: INDEX_HEX });

    await expect(readTrustRoot(native, tpm.tcti)).rejects.toMatchObject({
      code: 'E_TRUST_ROOT_PCR_MISMATCH',
      cause: { code: 'TPM_RC_POLICY_FAIL' },
    });
    // The oracle agrees.
    expect(toolsPolicyRead(INDEX_HEX).status).not.toBe(0);
    expect(loadedSessions()).toBe('');
  });

  it('the write lock holds against mos and tpm2-tools', async () => {
    await provisionTrustRoot(native, tpm.tcti, { root: ROOT });
    const error = await rejection(native.tpmNvWrite(tpm.tcti, TRUST_ROOT_NV_INDEX, OTHER_ROOT));
    expect(error).toMatchObject({ code: 'TPM_RC_NV_LOCKED', syscall: 'Esys_NV_Write' });
    writeFileSync(file('other.der'), OTHER_ROOT);
    expect(tpm.tryTool('tpm2_nvwrite', [INDEX_HEX, '-C', 'o', '-i', file('other.der')]).status).not.toBe(0);
    expect((await readTrustRoot(native, tpm.tcti)).spki).toEqual(ROOT);
  });

  it('provisioning twice: idempotent for the same root, refused for another unless reset', async () => {
    await provisionTrustRoot(native, tpm.tcti, { root: ROOT });
    await expect(provisionTrustRoot(native, tpm.tcti, { root: ROOT })).resolves.toMatchObject({ status: 'already-provisioned', steps: [] });
    await expect(provisionTrustRoot(native, tpm.tcti, { root: OTHER_ROOT })).rejects.toMatchObject({ code: 'E_DIFFERENT_ROOT' });
    expect((await readTrustRoot(native, tpm.tcti)).spki).toEqual(ROOT);

    const reset = await provisionTrustRoot(native, tpm.tcti, { root: OTHER_ROOT, reset: true });
    expect(reset.steps).toEqual(['undefine', 'define', 'write', 'writeLock']);
    expect((await readTrustRoot(native, tpm.tcti)).spki).toEqual(OTHER_ROOT);
    expect(toolsPolicyRead(INDEX_HEX).status).toBe(0);
    expect(readFileSync(file('read.bin'))).toEqual(OTHER_ROOT);
  });

  it('reads and writes an index larger than one NV buffer in chunks', async () => {
    const bufferMax = Number(/TPM2_PT_NV_BUFFER_MAX:\s*raw: (0x[0-9a-f]+)/i.exec(tpm.tool('tpm2_getcap', ['properties-fixed']))![1]);
    const data = randomBytes(bufferMax + 300);
    const policy = pcrPolicyDigest('sha256', [7, 11], await native.tpmPcrRead(tpm.tcti, 'sha256', [7, 11]));
    await native.tpmNvDefine(tpm.tcti, {
      index: TOOLS_INDEX,
      size: data.length,
      attributes: TPMA_NV.OWNERWRITE | TPMA_NV.POLICYREAD | TPMA_NV.NO_DA,
      authPolicy: policy,
    });
    await native.tpmNvWrite(tpm.tcti, TOOLS_INDEX, data);
    expect(await native.tpmNvReadWithPcrPolicy(tpm.tcti, TOOLS_INDEX, { bank: 'sha256', pcrs: [7, 11] })).toEqual(data);
    // tpm2_nvread refuses several chunks with one policy session (each NV_Read consumes the
    // policy): read chunk by chunk, a fresh session each, as the addon re-satisfies it.
    const chunks: Buffer[] = [];
    for (let offset = 0; offset < data.length; offset += bufferMax) {
      const size = Math.min(bufferMax, data.length - offset);
      expect(toolsPolicyRead(TOOLS_INDEX_HEX, ['--offset', String(offset), '-s', String(size)]).status).toBe(0);
      chunks.push(readFileSync(file('read.bin')));
    }
    expect(Buffer.concat(chunks)).toEqual(data);
    expect(loadedSessions()).toBe('');
  });

  it('reports TPM and TCTI failures with code, rc and the failing call', async () => {
    expect(await native.tpmNvReadPublic(tpm.tcti, TOOLS_INDEX)).toBeNull();
    await expect(native.tpmNvUndefine(tpm.tcti, TOOLS_INDEX)).rejects.toMatchObject({
      code: 'TPM_RC_HANDLE',
      syscall: 'Esys_TR_FromTPMPublic',
      message: `Esys_TR_FromTPMPublic TPM_RC_HANDLE ${TOOLS_INDEX_HEX}`,
    });
    const definition = { index: TOOLS_INDEX, size: 8, attributes: TRUST_ROOT_NV_ATTRIBUTES, authPolicy: Buffer.alloc(32) };
    await native.tpmNvDefine(tpm.tcti, definition);
    await expect(native.tpmNvDefine(tpm.tcti, definition)).rejects.toMatchObject({ code: 'TPM_RC_NV_DEFINED', syscall: 'Esys_NV_DefineSpace' });
    await expect(native.tpmNvReadWithPcrPolicy(tpm.tcti, TOOLS_INDEX, { bank: 'sha256', pcrs: [7] })).rejects.toMatchObject({
      code: 'TPM_RC_POLICY_FAIL',
    });
    // WRITEALL: a write of part of the index is refused.
    await expect(native.tpmNvWrite(tpm.tcti, TOOLS_INDEX, Buffer.alloc(4))).rejects.toMatchObject({ code: 'TPM_RC_NV_RANGE' });

    const missing = await rejection(native.tpmPcrRead('device:/nonexistent/tpmrm0', 'sha256', [7]));
    expect(missing).toMatchObject({ code: 'TSS2_TCTI_RC_IO_ERROR', syscall: 'Tss2_Tcti_Device_Init', subject: 'device:/nonexistent/tpmrm0' });
    expect(() => native.tpmPcrRead('tcp:127.0.0.1', 'sha256', [7])).toThrow(TypeError);
    expect(() => native.tpmPcrRead(tpm.tcti, 'md5' as never, [7])).toThrow(TypeError);
    expect(() => native.tpmNvReadPublic(tpm.tcti, 0x81000001)).toThrow(TypeError);
  });
});
