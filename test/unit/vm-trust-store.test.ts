/**
 * The VM harness's trust-case helpers (vm-tests/harness/store.ts, trust.ts, markers.ts): store
 * disks published with mosb and packed with mksquashfs, the tampering, the host-side verdict the
 * guest must match, disk order on the QEMU command line, and the console markers of the boot
 * side's contract. No root, no VM.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeKeysetFixture, type KeysetFixture } from '../helpers/manifest-fixtures.ts';
import { Markers } from '../../vm-tests/harness/markers.ts';
import { buildQemuArgs } from '../../vm-tests/harness/qemu.ts';
import {
  flipByte,
  foreignKeys,
  makeStore,
  STORE_SERIAL,
  storeDevice,
  storeFlag,
  tamperTargetLayer,
  tamperTargetManifest,
  testKeys,
  TEST_KEYSET,
  TEST_PRODUCT,
} from '../../vm-tests/harness/store.ts';
import { releaseStateDir } from '../../vm-tests/harness/swtpm.ts';
import { refusalBootKind, trustUkiCmdline } from '../../vm-tests/harness/trust.ts';

const hasMksquashfs = ['/usr/bin/mksquashfs', '/usr/sbin/mksquashfs'].some((file) => existsSync(file));
/** Publishing squashes the service images: umoci keeps their owners only as root, and veritysetup. */
const canMakeStores = hasMksquashfs && process.getuid?.() === 0 && ['/usr/sbin/veritysetup', '/sbin/veritysetup'].some((file) => existsSync(file));

describe('store disks', () => {
  let dir: string;
  let keys: KeysetFixture;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vm-store-'));
    await makeKeysetFixture({ dir, keysDir: path.join(dir, 'keys'), keyset: TEST_KEYSET, product: TEST_PRODUCT });
    keys = testKeys(path.join(dir, 'keys'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the test keyset as the image build lays it out, and says where it comes from when missing', () => {
    expect(keys.keyset).toBe('mos-test');
    expect(keys.product).toBe('demo');
    expect(keys.productUuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(keys.caSpkiDer.length).toBeGreaterThan(50);
    expect(() => testKeys(path.join(dir, 'nowhere'))).toThrow(/initramfs\/build\.mjs --variant test/);
  });

  it.skipIf(!canMakeStores)('publishes a verified layout into oci/ and packs it read-only as squashfs', async () => {
    const store = await makeStore({ dir: path.join(dir, 'good'), keys, trustRoot: keys.caSpkiDer });
    expect(store.expected).toEqual({ ok: true, targets: 1 });
    expect(store.layoutDir).toBe(path.join(store.root, 'oci'));
    expect(existsSync(path.join(store.layoutDir, 'index.json'))).toBe(true);
    expect(store.installDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(store.tag).toBe('latest');
    expect(store.drive).toEqual({ file: store.image, serial: STORE_SERIAL, readOnly: true, format: 'raw' });
    expect(readFileSync(store.image).subarray(0, 4).toString('latin1')).toBe('hsqs');
    // What the guest will mount: the layout at the image's root/oci, owned by root.
    const listing = execFileSync('unsquashfs', ['-lls', store.image], { encoding: 'utf8' });
    expect(listing).toMatch(/root\/root .*squashfs-root\/oci\/index\.json/);
  });

  it.skipIf(!canMakeStores)('a foreign keyset gives E_CERT_UNTRUSTED against the test CA', async () => {
    const foreign = await foreignKeys(path.join(dir, 'foreign-keys'));
    const store = await makeStore({ dir: path.join(dir, 'foreign'), keys: foreign, trustRoot: keys.caSpkiDer });
    expect(store.expected).toMatchObject({ ok: false, code: 'E_CERT_UNTRUSTED' });
  });

  it.skipIf(!canMakeStores)("a flipped byte in a target's image manifest gives E_TARGET_DIGEST", async () => {
    const store = await makeStore({ dir: path.join(dir, 'tampered'), keys, trustRoot: keys.caSpkiDer, tamper: tamperTargetManifest('web') });
    expect(store.tampered).toMatch(/flipped byte \d+ of web's image manifest/);
    expect(store.expected).toMatchObject({ ok: false, code: 'E_TARGET_DIGEST' });
  });

  it.skipIf(!canMakeStores)('a flipped layer byte is not the install verifier\'s business (image manifests only)', async () => {
    const store = await makeStore({ dir: path.join(dir, 'layer'), keys, trustRoot: keys.caSpkiDer, tamper: tamperTargetLayer('web') });
    expect(store.tampered).toMatch(/web's layer/);
    expect(store.expected.ok).toBe(true);
  });

  it('flipByte changes one byte and keeps the size', () => {
    const file = path.join(dir, 'bytes');
    execFileSync('sh', ['-c', `printf abcdef > ${file}`]);
    expect(flipByte(file)).toBe(3);
    expect(readFileSync(file, 'latin1')).toBe('abceef');
    expect(statSync(file).size).toBe(6);
    expect(() => flipByte(file, 6)).toThrow(/outside/);
  });
});

describe('trust boots', () => {
  it('names the store by device: the second disk under UEFI (the ESP is first), the only one on direct boot', () => {
    expect(storeDevice('uefi')).toBe('/dev/vdb');
    expect(storeDevice('direct')).toBe('/dev/vda');
    expect(storeFlag('uefi')).toBe('mos.store=/dev/vdb');
    expect(trustUkiCmdline('console=ttyS0 panic=-1 mos.debug_control=1')).toBe('console=ttyS0 panic=-1 mos.debug_control=1 mos.store=/dev/vdb');
    expect(trustUkiCmdline('a', ['mos.uki=b'])).toBe('a mos.store=/dev/vdb mos.uki=b');
  });

  it('puts the ESP before the store on the PCI bus, so the store is /dev/vdb', () => {
    const args = buildQemuArgs({
      boot: { kind: 'uefi', code: '/fw/CODE.fd', vars: '/w/VARS.fd', esp: '/b/esp.img', secureBoot: true },
      consoleLog: '/w/console.log',
      qmpSocket: '/w/qmp.sock',
      drives: [{ file: '/w/store.squashfs', serial: STORE_SERIAL, readOnly: true, format: 'raw' }],
    });
    const devices = args.flatMap((arg, i) => (arg === '-device' && args[i + 1]!.startsWith('virtio-blk-pci') ? [args[i + 1]!] : []));
    expect(devices).toEqual(['virtio-blk-pci,drive=esp,serial=esp,bootindex=0', `virtio-blk-pci,drive=disk0,serial=${STORE_SERIAL}`]);
    expect(args).toContain('if=none,id=disk0,format=raw,readonly=on,file=/w/store.squashfs');
  });

  it('boots the refusal cases directly unless MOS_VM_TRUST_BOOT=uefi', () => {
    expect(refusalBootKind({})).toBe('direct');
    expect(refusalBootKind({ MOS_VM_TRUST_BOOT: 'uefi' })).toBe('uefi');
  });

  it('releasing a TPM state dir nobody used returns at once', async () => {
    await expect(releaseStateDir('/nonexistent/tpm')).resolves.toBeUndefined();
  });
});

describe('trust markers (the boot side contract)', () => {
  it('provisioned', () => {
    const m = Markers.trustProvisioned.exec('mos: trust: provisioned manifest CA sha256:0123456789abcdef into TPM NV 0x01806d6f (PCRs 7,11)\n');
    expect(m?.slice(1)).toEqual(['0123456789abcdef', '0x01806d6f', '7,11']);
  });

  it('verified', () => {
    const digest = `sha256:${'ab'.repeat(32)}`;
    expect(Markers.trustVerified.exec(`mos: trust: verified install ${digest} (product demo, 2 targets)`)?.slice(1)).toEqual([digest, 'demo', '2']);
    expect(Markers.trustVerified.exec(`mos: trust: verified install ${digest} (product 5f0c-uuid, 1 target)`)?.slice(1)).toEqual([digest, '5f0c-uuid', '1']);
  });

  it('refused, and it is an emergency', () => {
    const line = 'mos: emergency: trust: E_TRUST_ROOT_PCR_MISMATCH: the TPM refused the policy (PCRs 7,11 changed)\n';
    expect(Markers.trustRefused.exec(line)?.slice(1)).toEqual(['E_TRUST_ROOT_PCR_MISMATCH', 'the TPM refused the policy (PCRs 7,11 changed)']);
    expect(Markers.emergency.test(line)).toBe(true);
    expect(Markers.trustRefused.test('mos: emergency: mos.test_crash=supervise\n')).toBe(false);
  });
});

describe('live console with several machines', () => {
  it('prefixes lines only where they start, across chunks', async () => {
    const { prefixLines } = await import('../../vm-tests/harness/case.ts');
    expect(prefixLines('b2', 'mos: ser', true)).toBe('b2| mos: ser');
    expect(prefixLines('b2', 'vices ready\nmos: x\n', false)).toBe('vices ready\nb2| mos: x\n');
    expect(prefixLines('b2', '', true)).toBe('');
  });
});
