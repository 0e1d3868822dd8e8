import { parseCmdline, parseUplink, readMosCmdline } from '../../init/boot/cmdline.ts';
/**
 * The trust phase's decisions (init/trust/boot-trust.ts): every path from the command line's
 * trust keys, the embedded CA and the outcomes of the TPM, the store and the verifier to the
 * next step, the console lines and the verdict. Also `mosctl provision`'s plan and the CA
 * parsing (with certificates made by the openssl CLI once for the file).
 */
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPhases } from '../../init/boot/phases.ts';
import { PhaseFailure } from '../../init/boot/phases.ts';
import {
  describeTrust,
  EMBEDDED_CA_PATH,
  failure,
  MAX_CA_FILE_BYTES,
  nextTrustStep,
  parseManifestCa,
  planProvisionRequest,
  rootFingerprint,
  type EmbeddedCa,
  type TrustConfigInput,
  type TrustFacts,
  type VerifiedSummary,
} from '../../init/trust/boot-trust.ts';
import { TRUST_ROOT_NV_INDEX } from '../../init/trust/trust-root.ts';

const ROOT = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
const OTHER = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
const TCTI = 'swtpm:host=127.0.0.1,port=2321';
const INSTALL = `sha256:${'a'.repeat(64)}`;
const SUMMARY: VerifiedSummary = {
  install: INSTALL,
  installJson: `sha256:${'b'.repeat(64)}`,
  tag: 'latest',
  product: '0b1c2d3e-0000-4000-8000-000000000001',
  targets: 3,
  certificate: 'CN=manifest PRODUCT:0b1c2d3e-0000-4000-8000-000000000001',
};

const config = (overrides: Partial<TrustConfigInput> = {}): TrustConfigInput => ({
  store: '/dev/vdb',
  manifestTag: 'latest',
  tpm: 'device:/dev/tpmrm0',
  trustPcrs: [7, 11],
  invalid: [],
  namespaceMode: false,
  ...overrides,
});
const embedded: EmbeddedCa = { kind: 'ok', path: EMBEDDED_CA_PATH, spki: ROOT };
const none: EmbeddedCa = { kind: 'none', path: EMBEDDED_CA_PATH };
const facts = (overrides: Partial<TrustFacts> = {}): TrustFacts => ({ config: config(), embeddedCa: embedded, nvIndex: TRUST_ROOT_NV_INDEX, ...overrides });
const fp = (spki: Buffer) => `sha256:${createHash('sha256').update(spki).digest('hex').slice(0, 16)}`;

const notProvisioned = failure('E_TRUST_ROOT_NOT_PROVISIONED', 'no trust root: NV index 0x01806d6f is not defined');
const pcrMismatch = failure('E_TRUST_ROOT_PCR_MISMATCH', 'the TPM refuses the trust root in NV index 0x01806d6f: PCRs sha256:7,11 do not match');
const store = { ok: true as const, dir: '/run/mos/store', mounted: { device: '/dev/vdb', fstype: 'squashfs' } };

describe('nextTrustStep', () => {
  it('without mos.store: skipped, nothing touched', () => {
    expect(nextTrustStep(facts({ config: config({ store: null }) }))).toEqual({
      op: 'skip',
      reason: 'no manifest store configured',
      state: { state: 'not-configured' },
      say: [],
    });
  });

  it('an unreadable trust key fails closed, even without a store; other keys do not matter', () => {
    const step = nextTrustStep(facts({ config: config({ store: null, invalid: [{ key: 'mos.store', reason: 'expected an absolute path, not "vdb"' }] }) }));
    expect(step).toMatchObject({
      op: 'done',
      state: { state: 'failed', code: 'E_TRUST_CONFIG', message: 'mos.store: expected an absolute path, not "vdb"' },
      emergency: 'trust: E_TRUST_CONFIG: mos.store: expected an absolute path, not "vdb"',
    });
    expect(nextTrustStep(facts({ config: config({ invalid: [{ key: 'mos.shutdown_timeout', reason: 'x' }] }) }))).toMatchObject({ op: 'read-root' });
  });

  it("namespace mode never uses a device TPM (it would be the host's)", () => {
    expect(nextTrustStep(facts({ config: config({ namespaceMode: true }) }))).toMatchObject({ op: 'done', state: { state: 'failed', code: 'E_TRUST_CONFIG' } });
    expect(nextTrustStep(facts({ config: config({ namespaceMode: true, tpm: TCTI }) }))).toEqual({ op: 'read-root', tcti: TCTI, pcrs: [7, 11], say: [] });
  });

  it('a provisioned TPM: read, open the store, verify with the root read, verified', () => {
    expect(nextTrustStep(facts())).toEqual({ op: 'read-root', tcti: 'device:/dev/tpmrm0', pcrs: [7, 11], say: [] });
    const read = { ok: true as const, spki: ROOT };
    expect(nextTrustStep(facts({ read }))).toEqual({ op: 'open-store', store: '/dev/vdb', say: [] });
    expect(nextTrustStep(facts({ read, store }))).toEqual({ op: 'verify', root: ROOT, dir: '/run/mos/store', tag: 'latest', say: [] });
    expect(nextTrustStep(facts({ read, store, verify: { ok: true, summary: SUMMARY } }))).toEqual({
      op: 'done',
      state: {
        state: 'verified',
        install: INSTALL,
        installJson: SUMMARY.installJson,
        tag: 'latest',
        product: SUMMARY.product,
        targets: 3,
        root: fp(ROOT),
        provisioned: false,
        nvIndex: '0x01806d6f',
        pcrs: [7, 11],
        store: '/dev/vdb',
      },
      say: [`mos: trust: verified install ${INSTALL} (product ${SUMMARY.product}, 3 targets)`],
      emergency: null,
    });
  });

  it('mos.product binds the verified install to this machine: another product is refused', () => {
    const read = { ok: true as const, spki: ROOT };
    const verified = { read, store, verify: { ok: true as const, summary: SUMMARY } };
    const refused = nextTrustStep({ ...facts(verified), config: config({ product: 'another-product' }) });
    expect(refused).toMatchObject({ op: 'done', state: { state: 'failed', code: 'E_PRODUCT_MISMATCH' } });
    expect(JSON.stringify(refused)).toContain(`is for product ${SUMMARY.product}, but this machine is product another-product`);
    expect(nextTrustStep({ ...facts(verified), config: config({ product: SUMMARY.product }) })).toMatchObject({ op: 'done' });
  });

  it('an empty mos.store= or a malformed mos.product= fails closed instead of switching verification off', () => {
    const fromCmdline = (text: string) => {
      const mos = readMosCmdline(parseCmdline(text));
      return nextTrustStep({ ...facts(), config: config({ store: mos.store, product: mos.product, invalid: mos.invalid }) });
    };
    expect(fromCmdline('mos.store=')).toMatchObject({ state: { state: 'failed', code: 'E_TRUST_CONFIG' } });
    expect(fromCmdline('mos.store=/dev/vdb mos.product=../x')).toMatchObject({ state: { state: 'failed', code: 'E_TRUST_CONFIG' } });
    expect(readMosCmdline(parseCmdline('mos.product=0b1c2d3e-0000-4000-8000-000000000001')).product).toBe('0b1c2d3e-0000-4000-8000-000000000001');
  });

  it('the root read from the TPM is the one used, whatever the image embeds', () => {
    const step = nextTrustStep(facts({ embeddedCa: { kind: 'ok', path: EMBEDDED_CA_PATH, spki: OTHER }, read: { ok: true, spki: ROOT }, store }));
    expect(step).toMatchObject({ op: 'verify', root: ROOT });
  });

  it('an empty TPM with an embedded CA: provision, say so, read back, then verify', () => {
    const base = { read: notProvisioned };
    expect(nextTrustStep(facts(base))).toEqual({ op: 'provision', tcti: 'device:/dev/tpmrm0', pcrs: [7, 11], root: ROOT, say: [] });
    const provisioned = { ...base, provision: { ok: true as const, status: 'provisioned' as const } };
    const line = `mos: trust: provisioned manifest CA ${fp(ROOT)} into TPM NV 0x01806d6f (PCRs 7,11)`;
    expect(nextTrustStep(facts(provisioned))).toEqual({ op: 'reread-root', tcti: 'device:/dev/tpmrm0', pcrs: [7, 11], say: [line] });
    const reread = { ...provisioned, reread: { ok: true as const, spki: ROOT } };
    expect(nextTrustStep(facts(reread))).toEqual({ op: 'open-store', store: '/dev/vdb', say: [] });
    const done = nextTrustStep(facts({ ...reread, store, verify: { ok: true, summary: SUMMARY } }));
    expect(done).toMatchObject({ op: 'done', state: { state: 'verified', provisioned: true, root: fp(ROOT) }, emergency: null });
  });

  it('an unfinished provisioning (written, not locked) is finished from the embedded CA too', () => {
    const read = failure('E_TRUST_ROOT_NOT_LOCKED', 'NV index 0x01806d6f holds a trust root that is not write-locked');
    expect(nextTrustStep(facts({ read }))).toMatchObject({ op: 'provision', root: ROOT });
    // Already there by the time it provisions (a race): no provisioned line, not counted as provisioned.
    const race = { read, provision: { ok: true as const, status: 'already-provisioned' as const } };
    expect(nextTrustStep(facts(race))).toMatchObject({ op: 'reread-root', say: [] });
    const done = nextTrustStep(facts({ ...race, reread: { ok: true, spki: ROOT }, store, verify: { ok: true, summary: SUMMARY } }));
    expect(done).toMatchObject({ state: { state: 'verified', provisioned: false } });
  });

  it('an empty TPM and no embedded CA: refused, saying how to provision', () => {
    const step = nextTrustStep(facts({ embeddedCa: none, read: notProvisioned }));
    expect(step).toMatchObject({ op: 'done', state: { state: 'failed', code: 'E_TRUST_ROOT_NOT_PROVISIONED' } });
    if (step.op !== 'done' || step.state.state !== 'failed') throw new Error('unreachable');
    expect(step.state.message).toBe(
      `${notProvisioned.message}; the image embeds no manifest CA (${EMBEDDED_CA_PATH}) to provision: provision one with mosctl provision --ca FILE, then reboot`,
    );
    expect(step.emergency).toBe(`trust: E_TRUST_ROOT_NOT_PROVISIONED: ${step.state.message}`);
    const broken = nextTrustStep(facts({ embeddedCa: { kind: 'invalid', path: EMBEDDED_CA_PATH, message: 'not PEM' }, read: notProvisioned }));
    expect(broken).toMatchObject({ state: { state: 'failed', code: 'E_TRUST_CA_INVALID' } });
  });

  it('never provisions over a root it cannot read: PCR mismatch, foreign index, TPM errors are final', () => {
    for (const read of [pcrMismatch, failure('E_NV_INDEX_FOREIGN', 'not a mos trust root'), failure('E_TRUST_ROOT_TPM', 'Esys_NV_ReadPublic TSS2_TCTI_RC_IO_ERROR'), failure('E_TPM_MISSING', 'no TPM')]) {
      const step = nextTrustStep(facts({ read }));
      expect(step).toEqual({ op: 'done', state: { state: 'failed', code: read.code, message: read.message }, say: [], emergency: `trust: ${read.code}: ${read.message}` });
    }
  });

  it('provisioning failures and a read-back of something else are refusals', () => {
    const read = notProvisioned;
    const tpmFailed = failure('E_TRUST_ROOT_TPM', 'provisioning NV index 0x01806d6f (define): TPM_RC_NV_SPACE');
    expect(nextTrustStep(facts({ read, provision: tpmFailed }))).toMatchObject({ state: { state: 'failed', code: 'E_TRUST_ROOT_TPM', message: tpmFailed.message } });
    const provision = { ok: true as const, status: 'provisioned' as const };
    expect(nextTrustStep(facts({ read, provision, reread: pcrMismatch }))).toMatchObject({
      state: { state: 'failed', code: 'E_TRUST_ROOT_PCR_MISMATCH', message: `after provisioning: ${pcrMismatch.message}` },
    });
    expect(nextTrustStep(facts({ read, provision, reread: { ok: true, spki: OTHER } }))).toMatchObject({ state: { state: 'failed', code: 'E_TRUST_ROOT_VERIFY' } });
  });

  it('store and verification failures carry their codes', () => {
    const read = { ok: true as const, spki: ROOT };
    const mount = failure('E_STORE_MOUNT', 'mos.store=/dev/vdb: cannot mount it read-only');
    expect(nextTrustStep(facts({ read, store: mount }))).toMatchObject({ state: { state: 'failed', code: 'E_STORE_MOUNT' }, emergency: `trust: E_STORE_MOUNT: ${mount.message}` });
    for (const code of ['E_CERT_UNTRUSTED', 'E_BLOB_DIGEST', 'E_TARGET_DIGEST', 'E_SIGNATURE_INVALID']) {
      const step = nextTrustStep(facts({ read, store, verify: failure(code, `${code} happened`) }));
      expect(step).toEqual({ op: 'done', state: { state: 'failed', code, message: `${code} happened` }, say: [], emergency: `trust: ${code}: ${code} happened` });
    }
  });

  it('uses the configured tag and PCRs', () => {
    const custom = config({ manifestTag: 'v2', trustPcrs: [0, 7, 11], tpm: TCTI });
    expect(nextTrustStep(facts({ config: custom }))).toEqual({ op: 'read-root', tcti: TCTI, pcrs: [0, 7, 11], say: [] });
    expect(nextTrustStep(facts({ config: custom, read: notProvisioned, provision: { ok: true, status: 'provisioned' } }))).toMatchObject({
      say: [`mos: trust: provisioned manifest CA ${fp(ROOT)} into TPM NV 0x01806d6f (PCRs 0,7,11)`],
    });
    expect(nextTrustStep(facts({ config: custom, read: { ok: true, spki: ROOT }, store }))).toMatchObject({ op: 'verify', tag: 'v2' });
  });
});

describe('describeTrust', () => {
  it('is the `trust:` line of mosctl status', () => {
    expect(describeTrust({ state: 'not-configured' })).toBe('not configured');
    expect(describeTrust({ state: 'pending' })).toBe('not checked yet');
    expect(describeTrust({ state: 'failed', code: 'E_CERT_UNTRUSTED', message: 'not signed' })).toBe('failed: E_CERT_UNTRUSTED: not signed');
    const step = nextTrustStep(facts({ read: { ok: true, spki: ROOT }, store, verify: { ok: true, summary: SUMMARY } }));
    if (step.op !== 'done') throw new Error('unreachable');
    expect(describeTrust(step.state)).toBe(`verified install ${INSTALL} (product ${SUMMARY.product})`);
  });

  it('fingerprints are the first 16 hex of the SPKI sha256', () => {
    expect(rootFingerprint(ROOT)).toBe(fp(ROOT));
    expect(rootFingerprint(ROOT)).toMatch(/^sha256:[0-9a-f]{16}$/);
  });
});

describe('CA files and mosctl provision', () => {
  let dir: string;
  let caPem: string;
  let caSpki: Buffer;
  let leafPem: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'mos-boot-trust-'));
    const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=test manifest CA', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE');
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.pem', '-subj', '/CN=leaf', '-days', '30', '-addext', 'basicConstraints=critical,CA:FALSE');
    caPem = readFileSync(join(dir, 'ca.pem'), 'utf8');
    leafPem = readFileSync(join(dir, 'leaf.pem'), 'utf8');
    caSpki = Buffer.from(openssl('x509', '-in', 'ca.pem', '-pubkey', '-noout').toString().replace(/-----[^-]+-----|\s/g, ''), 'base64');
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a CA certificate gives its SPKI; a public key PEM is taken as is', () => {
    expect(parseManifestCa(caPem, 'ca.pem')).toEqual({ ok: true, spki: caSpki });
    const publicPem = execFileSync('openssl', ['x509', '-in', join(dir, 'ca.pem'), '-pubkey', '-noout']).toString();
    expect(parseManifestCa(publicPem, 'key.pem')).toEqual({ ok: true, spki: caSpki });
  });

  it('refuses a leaf, garbage, an empty or an oversized file', () => {
    expect(parseManifestCa(leafPem, 'leaf.pem')).toMatchObject({ ok: false, code: 'E_TRUST_CA_INVALID', message: 'leaf.pem (CN=leaf) is not a CA certificate' });
    expect(parseManifestCa('hello', 'x.pem')).toMatchObject({ ok: false, code: 'E_TRUST_CA_INVALID', message: expect.stringMatching(/^x\.pem is not a PEM certificate or public key: /) });
    expect(parseManifestCa('', 'x.pem')).toMatchObject({ ok: false, code: 'E_TRUST_CA_INVALID', message: 'x.pem is empty' });
    expect(parseManifestCa(Buffer.alloc(MAX_CA_FILE_BYTES + 1, 0x41), 'x.pem')).toMatchObject({ ok: false, code: 'E_TRUST_CA_INVALID' });
  });

  it('plans a provision from the given CA, else the embedded one, with --pcrs or mos.trust_pcrs', () => {
    const cfg = config({ tpm: TCTI, trustPcrs: [7, 11] });
    expect(planProvisionRequest({ ca: caPem, embeddedCa: embedded, pcrs: undefined, config: cfg })).toEqual({ ok: true, root: caSpki, source: 'given', pcrs: [7, 11], tcti: TCTI });
    expect(planProvisionRequest({ ca: undefined, embeddedCa: embedded, pcrs: [11, 7, 7], config: cfg })).toEqual({ ok: true, root: ROOT, source: 'embedded', pcrs: [7, 11], tcti: TCTI });
    expect(planProvisionRequest({ ca: undefined, embeddedCa: none, pcrs: undefined, config: cfg })).toMatchObject({ ok: false, code: 'E_TRUST_CA_MISSING' });
    expect(planProvisionRequest({ ca: leafPem, embeddedCa: embedded, pcrs: undefined, config: cfg })).toMatchObject({ ok: false, code: 'E_TRUST_CA_INVALID' });
    // The TPM to use must be readable and allowed; a bad mos.trust_pcrs only matters without --pcrs.
    const badPcrs = config({ tpm: TCTI, invalid: [{ key: 'mos.trust_pcrs', reason: 'PCR "x" is not a number 0-23' }] });
    expect(planProvisionRequest({ ca: caPem, embeddedCa: embedded, pcrs: undefined, config: badPcrs })).toMatchObject({ ok: false, code: 'E_TRUST_CONFIG' });
    expect(planProvisionRequest({ ca: caPem, embeddedCa: embedded, pcrs: [7], config: badPcrs })).toMatchObject({ ok: true, pcrs: [7] });
    expect(planProvisionRequest({ ca: caPem, embeddedCa: embedded, pcrs: undefined, config: config({ namespaceMode: true }) })).toMatchObject({ ok: false, code: 'E_TRUST_CONFIG' });
  });
});

describe('PhaseFailure', () => {
  it('names the emergency reason itself', async () => {
    const result = await runPhases(
      [
        { name: 'trust', policy: 'fatal', run: () => Promise.reject(new PhaseFailure('E_CERT_UNTRUSTED: nope', 'trust: E_CERT_UNTRUSTED: nope')) },
        { name: 'supervise', policy: 'fatal', run: () => {} },
      ],
      { now: () => 0 },
    );
    expect(result.emergency).toEqual({ phase: 'trust', reason: 'trust: E_CERT_UNTRUSTED: nope' });
    expect(result.records.map((r) => `${r.name}:${r.status}:${r.detail}`)).toEqual(['trust:failed:E_CERT_UNTRUSTED: nope', 'supervise:not-run:null']);
  });
});

describe('mos.uplink', () => {
  it('reads interface, address/prefix and an optional gateway; anything else is named and ignored', () => {
    expect(parseUplink('eth0,10.0.2.15/24,10.0.2.2')).toEqual({ device: 'eth0', address: '10.0.2.15/24', gateway: '10.0.2.2' });
    expect(parseUplink('eth0,192.168.1.5/24')).toEqual({ device: 'eth0', address: '192.168.1.5/24', gateway: null });
    expect(parseUplink('eth0,10.0.2.15')).toMatch(/is not an IPv4 address\/prefix/);
    expect(parseUplink('eth0,10.0.2.15/24,gw')).toMatch(/gateway "gw" is not an IPv4 address/);
    expect(parseUplink('a-very-long-interface-name,10.0.2.15/24')).toMatch(/is not one/);
    const cmdline = readMosCmdline(parseCmdline('mos.uplink=eth0,300.0.0.1/24'));
    expect(cmdline.uplink).toBeNull();
    expect(cmdline.invalid).toEqual([{ key: 'mos.uplink', reason: 'address "300.0.0.1/24" is not an IPv4 address/prefix such as 10.0.2.15/24' }]);
  });
});
