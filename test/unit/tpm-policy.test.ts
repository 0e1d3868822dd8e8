import { describe, expect, it } from 'vitest';
import {
  formatNvAttributes,
  marshalPcrSelection,
  normalizePcrs,
  pcrPolicyDigest,
  TPMA_NV,
  TRUST_ROOT_NV_ATTRIBUTES,
} from '../../init/trust/tpm-policy.ts';

// Vectors from tpm2-tools 5.4 against swtpm 0.7.1 (any TPM gives the same: the digest is pure):
//
//   python3 -c "import sys; sys.stdout.buffer.write(bytes([7])*32 + bytes([11])*32)" > pcrs.bin
//   tpm2_createpolicy --policy-pcr -l sha256:7,11 -f pcrs.bin -L policy; xxd -p -c 64 policy
//   → d80dae69f84eb4ead1b8b370d699adef976533d40c2c2ed571eb84b80c3d31c4
//
//   tpm2_createpolicy --policy-pcr -l sha256:7,11 -L policy   (fresh swtpm: both PCRs zero)
//   → 384378caeddc9690b2ac9589827a756a5c46c8b33178b2fe468c80531b97a53e
//
//   python3 -c "import sys; sys.stdout.buffer.write(bytes([0xa0])*20 + bytes([0x16])*20 + bytes([0x17])*20)" > pcrs1.bin
//   tpm2_createpolicy --policy-pcr -l sha1:0,16,23 -f pcrs1.bin -L policy
//   → 38d0bcccdc3c876c3c1fe00629183fefe2cf630ccf348796e254ed566c55d6ad
describe('pcrPolicyDigest', () => {
  it('matches tpm2_createpolicy for sha256:7,11 with chosen values', () => {
    const digest = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32, 7), Buffer.alloc(32, 11)]);
    expect(digest.toString('hex')).toBe('d80dae69f84eb4ead1b8b370d699adef976533d40c2c2ed571eb84b80c3d31c4');
  });

  it('matches tpm2_createpolicy for zero PCRs (a fresh TPM)', () => {
    const digest = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), Buffer.alloc(32)]);
    expect(digest.toString('hex')).toBe('384378caeddc9690b2ac9589827a756a5c46c8b33178b2fe468c80531b97a53e');
  });

  it('matches tpm2_createpolicy for the sha1 bank with PCRs in all three select bytes (sha256 policy)', () => {
    const values = [Buffer.alloc(20, 0xa0), Buffer.alloc(20, 0x16), Buffer.alloc(20, 0x17)];
    const digest = pcrPolicyDigest('sha1', [0, 16, 23], values);
    expect(digest.toString('hex')).toBe('38d0bcccdc3c876c3c1fe00629183fefe2cf630ccf348796e254ed566c55d6ad');
  });

  it('changes with any PCR value, the selection or the bank', () => {
    const base = pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), Buffer.alloc(32)]);
    const changed11 = Buffer.alloc(32);
    changed11[31] = 1;
    expect(pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32), changed11]).equals(base)).toBe(false);
    expect(pcrPolicyDigest('sha256', [7, 12], [Buffer.alloc(32), Buffer.alloc(32)]).equals(base)).toBe(false);
    expect(pcrPolicyDigest('sha256', [7], [Buffer.alloc(32)]).equals(base)).toBe(false);
  });

  it('uses the policy hash for its output size', () => {
    expect(pcrPolicyDigest('sha256', [7], [Buffer.alloc(32)], 'sha384')).toHaveLength(48);
  });

  it('refuses values that cannot be paired with the PCRs', () => {
    expect(() => pcrPolicyDigest('sha256', [11, 7], [Buffer.alloc(32), Buffer.alloc(32)])).toThrow(/ascending/);
    expect(() => pcrPolicyDigest('sha256', [7, 7], [Buffer.alloc(32), Buffer.alloc(32)])).toThrow(/ascending/);
    expect(() => pcrPolicyDigest('sha256', [7, 11], [Buffer.alloc(32)])).toThrow(/2 PCRs selected but 1/);
    expect(() => pcrPolicyDigest('sha256', [7], [Buffer.alloc(20)])).toThrow(/20 bytes/);
  });
});

describe('marshalPcrSelection', () => {
  it('is count, hash, sizeofSelect 3 and the bitmap', () => {
    expect(marshalPcrSelection('sha256', [7, 11]).toString('hex')).toBe('00000001' + '000b' + '03' + '800800');
    expect(marshalPcrSelection('sha1', [0, 16, 23]).toString('hex')).toBe('00000001' + '0004' + '03' + '010081');
  });
});

describe('normalizePcrs', () => {
  it('sorts and removes duplicates', () => {
    expect(normalizePcrs([11, 7, 11])).toEqual([7, 11]);
  });

  it('refuses empty selections and PCRs outside 0-23', () => {
    expect(() => normalizePcrs([])).toThrow(/at least one/);
    expect(() => normalizePcrs([24])).toThrow(/PCR 24/);
    expect(() => normalizePcrs([-1])).toThrow(/PCR -1/);
    expect(() => normalizePcrs([1.5])).toThrow(/PCR 1.5/);
  });
});

describe('trust root NV attributes', () => {
  it('are exactly policyread, ownerwrite, writeall, writedefine, no_da (tpm2_nvdefine -a syntax)', () => {
    expect(formatNvAttributes(TRUST_ROOT_NV_ATTRIBUTES)).toBe('ownerwrite|writeall|writedefine|policyread|no_da');
    expect(TRUST_ROOT_NV_ATTRIBUTES).toBe(0x0208_3002);
  });

  it('give no way to read but the policy, and no way to write but the owner', () => {
    for (const bit of [TPMA_NV.OWNERREAD, TPMA_NV.AUTHREAD, TPMA_NV.PPREAD, TPMA_NV.AUTHWRITE, TPMA_NV.POLICYWRITE, TPMA_NV.PPWRITE]) {
      expect(TRUST_ROOT_NV_ATTRIBUTES & bit).toBe(0);
    }
    expect(TRUST_ROOT_NV_ATTRIBUTES & TPMA_NV.TYPE_MASK).toBe(0); // ordinary index
  });

  it('formats state bits and bit 31', () => {
    expect(formatNvAttributes(TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED)).toBe('writelocked|written');
    expect(formatNvAttributes(0x8000_0000)).toBe('read_stclear');
    expect(formatNvAttributes(0x10)).toBe('nt=1');
  });
});
