/** mosb's command line without running openssl: usage errors, names, times, validity periods. */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BACKDATE_MS, keysetPaths, PRODUCT_DAYS, productPaths, validityDates } from '../../mosb/keyset.ts';
import { ExitCode, main } from '../../mosb/main.ts';
import { checkSafeName, defaultKeysDir } from '../../mosb/names.ts';
import { asn1Time, genpkeyArgs } from '../../mosb/openssl.ts';
import { resolveCreated } from '../../mosb/publish.ts';

const scratch = mkdtempSync(path.join(os.tmpdir(), 'mosb-cli-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function mosb(...args: string[]) {
  let out = '';
  let err = '';
  const code = await main(['node', 'mosb', ...args], { out: (text) => (out += text), err: (text) => (err += text) });
  return { code, out, err };
}

describe('mosb usage', () => {
  it('exits 64 for usage errors, before touching anything', async () => {
    const keysDir = path.join(scratch, 'keys');
    for (const args of [
      ['frobnicate'],
      ['keyset'],
      ['keyset', 'create'],
      ['keyset', 'create', '../up', '--keys-dir', keysDir],
      ['keyset', 'create', 'ok', '--product', 'a/b', '--keys-dir', keysDir],
      ['keyset', 'create', 'ok', '--algorithm', 'ed25519', '--keys-dir', keysDir],
      ['keyset', 'create', 'ok', '--days', '0', '--keys-dir', keysDir],
      ['keyset', 'create', 'ok', '--bogus'],
      ['keyset', 'add-product', 'ok', '-x'],
      ['manifest', 'publish', 'm.yaml', '--keyset', 'k', '--product', 'p'],
      ['manifest', 'publish', 'm.yaml', '--keyset', 'k', '--product', 'p', '--out', 'o:bad/tag'],
      ['manifest', 'publish', 'm.yaml', '--keyset', '..', '--product', 'p', '--out', 'o'],
      ['manifest', 'publish', 'm.yaml', '--keyset', 'k', '--product', 'p', '--out', 'o', '--created', 'now'],
    ]) {
      const result = await mosb(...args);
      expect(result.code, args.join(' ')).toBe(ExitCode.Usage);
      expect(result.err, args.join(' ')).toMatch(/^(mosb: |Usage: mosb)/);
    }
    expect((await mosb('keyset', 'create', '../up', '--keys-dir', keysDir)).err).toContain('invalid keyset name "../up"');
  });

  it('exits 0 for help, and 1 for a failure', async () => {
    expect((await mosb('--help')).code).toBe(ExitCode.Ok);
    expect((await mosb('manifest', 'publish', '--help')).out).toContain('--out <dir[:tag]>');
    const missing = await mosb('manifest', 'publish', path.join(scratch, 'absent.yaml'), '--keyset', 'k', '--product', 'p', '--out', path.join(scratch, 'o'), '--keys-dir', scratch);
    expect(missing.code).toBe(ExitCode.Failure);
    expect(missing.err).toMatch(/cannot read .*absent\.yaml: ENOENT/);
    const noKeyset = await mosb('keyset', 'add-product', 'nosuch', 'p', '--keys-dir', scratch);
    expect(noKeyset.code).toBe(ExitCode.Failure);
    expect(noKeyset.err).toContain('no keyset nosuch');
  });
});

describe('names and paths', () => {
  it('accepts one safe path component', () => {
    for (const good of ['prod', 'site-2', 'a.b_c', 'A1']) expect(checkSafeName('keyset', good)).toBe(good);
    for (const bad of ['', '.', '..', '.hidden', '-opt', 'a/b', 'a b', 'x'.repeat(65), 'é']) expect(() => checkSafeName('keyset', bad)).toThrow(/invalid keyset name/);
  });

  it('lays keysets out as project-machine did', () => {
    expect(keysetPaths('/k', 'prod')).toEqual({
      dir: '/k/prod',
      caDir: '/k/prod/manifest-ca',
      caCert: '/k/prod/manifest-ca/cert.pem',
      caKey: '/k/prod/manifest-ca/privkey.pem',
      productsDir: '/k/prod/manifest',
    });
    expect(productPaths('/k', 'prod', 'web')).toEqual({ dir: '/k/prod/manifest/web', cert: '/k/prod/manifest/web/cert.pem', key: '/k/prod/manifest/web/privkey.pem', uuid: '/k/prod/manifest/web/uuid' });
    expect(() => productPaths('/k', 'prod', '..')).toThrow(/invalid product name/);
  });

  it('defaults the keys directory to $MOS_KEYS_DIR, else ~/.local/share/mos/keys', () => {
    expect(defaultKeysDir({ MOS_KEYS_DIR: '/srv/keys' }, '/home/u')).toBe('/srv/keys');
    expect(defaultKeysDir({}, '/home/u')).toBe('/home/u/.local/share/mos/keys');
  });
});

describe('times', () => {
  it('takes --created, else SOURCE_DATE_EPOCH, else now, to the second', () => {
    expect(resolveCreated('2024-02-03T04:05:06Z', {})).toBe('2024-02-03T04:05:06Z');
    expect(resolveCreated('2024-02-03T05:05:06.789+01:00', {})).toBe('2024-02-03T04:05:06Z');
    expect(resolveCreated(undefined, { SOURCE_DATE_EPOCH: '1700000000' })).toBe('2023-11-14T22:13:20Z');
    expect(resolveCreated(undefined, {}, () => new Date(Date.UTC(2025, 0, 2, 3, 4, 5, 678)))).toBe('2025-01-02T03:04:05Z');
    expect(() => resolveCreated('2024-02-03', {})).toThrow(/not an RFC 3339 time/);
    expect(() => resolveCreated(undefined, { SOURCE_DATE_EPOCH: '-1' })).toThrow(/SOURCE_DATE_EPOCH/);
  });

  it('starts a product certificate an hour back and ends it after 20 years, within the CA’s validity', () => {
    const now = new Date('2030-06-01T00:00:00Z');
    const wide = { notBefore: new Date('2000-01-01T00:00:00Z'), notAfter: new Date('2100-01-01T00:00:00Z') };
    expect(validityDates(undefined, now, wide)).toEqual({ notBefore: new Date(now.getTime() - BACKDATE_MS), notAfter: new Date(now.getTime() + PRODUCT_DAYS * 86_400_000) });
    const ca = { notBefore: now, notAfter: new Date('2040-01-01T00:00:00Z') };
    expect(validityDates({ days: 30 }, now, ca)).toEqual({ notBefore: now, notAfter: new Date(now.getTime() + 30 * 86_400_000) });
    expect(validityDates(undefined, now, ca).notAfter).toEqual(ca.notAfter);
    const expired = { notBefore: new Date('2001-01-01T00:00:00Z'), notAfter: new Date('2002-01-01T00:00:00Z') };
    expect(validityDates(expired, now, ca)).toEqual(expired);
  });

  it('writes ASN.1 times as RFC 5280 wants: UTCTime before 2050, GeneralizedTime after', () => {
    expect(asn1Time(new Date('2049-12-31T23:59:58Z'))).toBe('491231235958Z');
    expect(asn1Time(new Date('2050-01-01T00:00:00Z'))).toBe('20500101000000Z');
  });

  it('asks openssl for PKCS#8 keys of the two algorithms', () => {
    expect(genpkeyArgs('ecdsa-p256')).toEqual(expect.arrayContaining(['genpkey', 'EC', 'ec_paramgen_curve:P-256']));
    expect(genpkeyArgs('rsa-2048')).toEqual(expect.arrayContaining(['genpkey', 'RSA', 'rsa_keygen_bits:2048']));
  });
});
