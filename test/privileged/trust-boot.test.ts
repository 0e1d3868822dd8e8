/**
 * The boot-time trust phase for real, without a VM: mos-init (the test bundle) as PID 1 of a PID
 * namespace with `--cmdline "mos.store=<dir> mos.tpm=swtpm:..."`, a software TPM on the host
 * (swtpm over TCP, tpm2-tools as the oracle) and install layouts published by mosb
 * (`publishFixture`) into `<store>/oci`. The embedded CA is given with the test-only `--trust-ca`.
 *
 * One swtpm per test; the boots within a test share it, as the reboots of a machine share its TPM.
 * Tests wait for console lines and control answers; nothing is timed.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BootTimeline } from '../../init/boot/timeline.ts';
import type { ProvisionReport, SupervisorInfo } from '../../init/control/api.ts';
import type { TrustState } from '../../init/trust/boot-trust.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import { cleanEnv, mosctlBundle } from '../helpers/host-mos.ts';
import { blobPath, makeKeysetFixture, publishFixture, type PublishedFixture } from '../helpers/manifest-fixtures.ts';
import { NamespacePid1, testBundle } from '../helpers/namespace-pid1.ts';
import { startSwtpm, swtpmUnavailableReason, type Swtpm } from '../helpers/swtpm.ts';

const run = promisify(execFile);
const unavailable = swtpmUnavailableReason() ?? (existsSync(testBundle) ? null : 'dist/mos-init-test.cjs is not built (npm run build)');
const NV_INDEX = '0x01806d6f';
const sha256Hex = (fill: number) => Buffer.alloc(32, fill).toString('hex');
const fingerprint = (spki: Buffer) => `sha256:${createHash('sha256').update(spki).digest('hex').slice(0, 16)}`;

/** One mos-init as PID 1 of a PID namespace (test/helpers/namespace-pid1.ts), until disposed. */
class TrustMos extends NamespacePid1 {
  async boot(cmdline: string, trustCa: string | null): Promise<this> {
    return this.start({ cmdline, extraArgs: trustCa !== null ? ['--trust-ca', trustCa] : [] });
  }

  /**
   * Waits for the end of the boot phases: the services handed to the supervisor, or an
   * emergency. (The verified targets' images cannot be activated here: the host has no
   * device-mapper, so their services fail with E_VERITY_DEVICE; the VM cases run them.)
   */
  async booted(): Promise<'ready' | 'emergency'> {
    const line = await this.waitForConsole(/^mos: (phase supervise ok|emergency: )/);
    return line.startsWith('mos: phase supervise ok') ? 'ready' : 'emergency';
  }

  info(): Promise<SupervisorInfo> {
    return this.request<SupervisorInfo>({ cmd: 'info' });
  }

  async mosctl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(process.execPath, [mosctlBundle, '--socket', this.socketPath, ...args], { env: cleanEnv() });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  async dispose(): Promise<void> {
    await this.kill();
  }
}

describe.skipIf(unavailable !== null)(`trust phase in a PID namespace${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let tpm: Swtpm;
  let work: string;
  let running: TrustMos[] = [];
  let boots = 0;

  beforeEach(async () => {
    tpm = await startSwtpm();
    // A measured boot, roughly: PCRs 7 and 11 hold something.
    tpm.tool('tpm2_pcrextend', [`7:sha256=${sha256Hex(0x07)}`]);
    tpm.tool('tpm2_pcrextend', [`11:sha256=${sha256Hex(0x0b)}`]);
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-trust-boot-'));
    writeFileSync(path.join(work, 'services.json'), JSON.stringify({ services: [{ name: 'web', argv: ['/bin/sleep', '1000'] }] }));
  });

  afterEach(async () => {
    for (const mos of running) await mos.dispose();
    running = [];
    await tpm.stop();
    rmSync(work, { recursive: true, force: true });
  });

  /** A store directory whose `oci/` is a layout signed by `keys` (default: a new keyset). */
  async function makeStore(name: string, options: { keys?: PublishedFixture['keys'] } = {}): Promise<{ store: string; fx: PublishedFixture }> {
    const store = path.join(work, name);
    mkdirSync(store, { recursive: true });
    const fx = await publishFixture({
      dir: path.join(work, `${name}-src`),
      keys: options.keys,
      layoutDir: path.join(store, 'oci'),
      targets: [{ service_name: 'web' }, { service_name: 'db' }],
    });
    return { store, fx };
  }

  /** One boot: a fresh state directory, the same TPM. */
  async function boot(store: string | null, trustCa: string | null, extra = ''): Promise<TrustMos> {
    const stateDir = path.join(work, `state-${++boots}`);
    mkdirSync(stateDir, { recursive: true });
    const words = [...(store ? [`mos.store=${store}`] : []), `mos.tpm=${tpm.tcti}`, extra].filter(Boolean);
    const mos = new TrustMos(stateDir, path.join(work, 'services.json'));
    running.push(mos);
    return mos.boot(words.join(' '), trustCa);
  }

  async function shutDown(mos: TrustMos): Promise<void> {
    await mos.dispose();
    running = running.filter((other) => other !== mos);
  }

  /** The refusal checks: emergency with the code, nothing started, mosctl names it. */
  async function expectRefusal(mos: TrustMos, code: string): Promise<string> {
    expect(await mos.booted()).toBe('emergency');
    const line = mos.consoleLines.find((l) => l.startsWith('mos: emergency: '))!;
    expect(line).toMatch(new RegExp(`^mos: emergency: trust: ${code}: \\S`));
    const reason = line.slice('mos: emergency: '.length);
    const info = await mos.info();
    expect(info).toMatchObject({ health: 'emergency', reason });
    expect(info.trust).toMatchObject({ state: 'failed', code });
    expect(await mos.request<ServiceStatus[]>({ cmd: 'list' })).toEqual([]);
    expect(mos.consoleLines.some((l) => l.startsWith('mos: services ready'))).toBe(false);
    expect(mos.consoleLines).toContain(`mos: phase trust failed [fatal]: ${reason.slice('trust: '.length)}`);
    const timeline = await mos.request<BootTimeline>({ cmd: 'analyze' });
    expect(timeline.phases.map((p) => `${p.name}:${p.status}`).slice(-5)).toEqual(['trust:failed', 'nsgroups:not-run', 'networks:not-run', 'storage:not-run', 'supervise:not-run']);
    const status = await mos.mosctl('status');
    expect(status.stdout).toContain(`health: emergency — ${reason}`);
    expect(status.stdout).toContain(`trust: failed: ${code}: `);
    return reason;
  }

  it('first boot provisions the embedded CA and verifies; the next boot reads it without provisioning', async () => {
    const { store, fx } = await makeStore('store');
    const first = await boot(store, fx.caCertPath);
    expect(await first.booted()).toBe('ready');
    const provisioned = `mos: trust: provisioned manifest CA ${fingerprint(fx.caSpkiDer)} into TPM NV ${NV_INDEX} (PCRs 7,11)`;
    const verified = `mos: trust: verified install ${fx.result.install.digest} (product ${fx.productUuid}, 2 targets)`;
    expect(first.consoleLines).toContain(provisioned);
    expect(first.consoleLines).toContain(verified);
    // In order: provisioned, verified, then the services.
    const at = (prefix: string) => first.consoleLines.findIndex((line) => line.startsWith(prefix));
    expect(at(provisioned)).toBeLessThan(at(verified));
    expect(at(verified)).toBeLessThan(at('mos: phase supervise ok'));
    // Then the storage phase tries each target's image; these hosts have no device-mapper.
    if (!existsSync('/dev/mapper/control')) {
      expect(first.consoleLines).toContain('mos: storage: web: E_VERITY_DEVICE: image of web: dm-verity device mos-web: open ENOENT /dev/mapper/control');
    }

    const info = await first.info();
    expect(info.health).toBe('ok');
    expect(info.trust).toEqual({
      state: 'verified',
      install: fx.result.install.digest,
      installJson: `sha256:${path.basename(fx.artifacts.installBlob)}`,
      tag: 'latest',
      product: fx.productUuid,
      targets: 2,
      root: fingerprint(fx.caSpkiDer),
      provisioned: true,
      nvIndex: NV_INDEX,
      pcrs: [7, 11],
      store,
    } satisfies TrustState);
    const status = await first.mosctl('status');
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(`trust: verified install ${fx.result.install.digest} (product ${fx.productUuid})`);
    expect(JSON.parse((await first.mosctl('--json', 'status')).stdout).info.trust.state).toBe('verified');

    // The oracle: the index is written and write-locked, and readable only under the PCR policy.
    const pub = tpm.tool('tpm2_nvreadpublic', [NV_INDEX]);
    expect(pub).toMatch(/writelocked/);
    expect(pub).toMatch(/written/);
    expect(tpm.tryTool('tpm2_nvread', [NV_INDEX, '-C', 'o']).status).not.toBe(0);

    // Boot 2 on the same TPM, without any embedded CA: reads the root, does not provision.
    await shutDown(first);
    const second = await boot(store, null);
    expect(await second.booted()).toBe('ready');
    expect(second.consoleLines).toContain(verified);
    expect(second.consoleLines.some((line) => line.startsWith('mos: trust: provisioned'))).toBe(false);
    expect((await second.info()).trust).toMatchObject({ state: 'verified', provisioned: false, root: fingerprint(fx.caSpkiDer) });
  });

  it('mosctl provision: the same CA again and another CA are refused without --reset; --reset replaces it', async () => {
    const { store, fx } = await makeStore('store');
    const mos = await boot(store, fx.caCertPath);
    expect(await mos.booted()).toBe('ready');

    // The embedded CA again: provisioning twice is refused with E_ALREADY_PROVISIONED, exit 1.
    const again = await mos.mosctl('provision');
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(
      `mosctl: TPM NV ${NV_INDEX} already holds this trust root (${fingerprint(fx.caSpkiDer)}, PCRs 7,11); nothing written (--reset provisions it again)\n`,
    );

    // Another CA: refused with E_DIFFERENT_ROOT, exit 1, the TPM unchanged.
    const other = await makeKeysetFixture({ dir: path.join(work, 'other'), keyset: 'other' });
    const refused = await mos.mosctl('provision', '--ca', other.caCertPath);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`mosctl: NV index ${NV_INDEX} already holds a different trust root; provision with reset to replace it\n`);
    await expect(mos.request({ cmd: 'provision', ca: readFileSync(other.caCertPath, 'utf8') })).rejects.toMatchObject({ code: 'E_DIFFERENT_ROOT' });

    // Bad input: a product certificate is not a CA; an unknown field is a bad request.
    const leaf = await mos.mosctl('provision', '--ca', fx.keys.productCertPath);
    expect(leaf.code).toBe(1);
    expect(leaf.stderr).toMatch(/^mosctl: the CA given \(.*\) is not a CA certificate\n$/);
    await expect(mos.request({ cmd: 'provision', path: '/etc/passwd' })).rejects.toMatchObject({ code: 'E_BAD_REQUEST' });

    // With --reset: replaced; the JSON answer says what happened.
    const reset = await mos.mosctl('--json', 'provision', '--ca', other.caCertPath, '--reset');
    expect(reset.code).toBe(0);
    expect(JSON.parse(reset.stdout)).toMatchObject({
      status: 'provisioned',
      nvIndex: NV_INDEX,
      pcrs: [7, 11],
      root: fingerprint(other.caSpkiDer),
      source: 'given',
      steps: ['undefine', 'define', 'write', 'writeLock'],
    } satisfies Partial<ProvisionReport>);
    await mos.waitForConsole(`mos: trust: provisioned manifest CA ${fingerprint(other.caSpkiDer)} into TPM NV ${NV_INDEX} (PCRs 7,11)`);

    // The next boot trusts only the new CA: the old layout is refused.
    await shutDown(mos);
    await expectRefusal(await boot(store, fx.caCertPath), 'E_CERT_UNTRUSTED');
  });

  it('a layout signed by a foreign keyset is refused: E_CERT_UNTRUSTED, nothing starts', async () => {
    const { fx } = await makeStore('trusted');
    const { store: foreign } = await makeStore('foreign');
    await expectRefusal(await boot(foreign, fx.caCertPath), 'E_CERT_UNTRUSTED');
  });

  it('a tampered blob is refused with its code: a target image manifest (E_TARGET_DIGEST), install.json (E_BLOB_DIGEST)', async () => {
    const { store, fx } = await makeStore('store');
    // Provision and verify once, untouched.
    const clean = await boot(store, fx.caCertPath);
    expect(await clean.booted()).toBe('ready');
    await shutDown(clean);

    const flip = (file: string) => {
      const bytes = readFileSync(file);
      bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
      writeFileSync(file, bytes);
    };
    const webManifest = blobPath(fx.layoutDir, fx.result.images.find((image) => image.serviceName === 'web')!.digest);
    const original = readFileSync(webManifest);
    flip(webManifest);
    await expectRefusal(await boot(store, fx.caCertPath), 'E_TARGET_DIGEST');

    writeFileSync(webManifest, original);
    flip(fx.artifacts.installBlob);
    await expectRefusal(await boot(store, fx.caCertPath), 'E_BLOB_DIGEST');
  });

  it('other PCR values cannot read the root (E_TRUST_ROOT_PCR_MISMATCH) and nothing is provisioned over it', async () => {
    const { store, fx } = await makeStore('store');
    const first = await boot(store, fx.caCertPath);
    expect(await first.booted()).toBe('ready');
    await shutDown(first);
    // Another UKI, as far as the TPM can tell.
    tpm.tool('tpm2_pcrextend', [`11:sha256=${sha256Hex(0xee)}`]);
    const second = await boot(store, fx.caCertPath);
    await expectRefusal(second, 'E_TRUST_ROOT_PCR_MISMATCH');
    expect(second.consoleLines.some((line) => line.startsWith('mos: trust: provisioned'))).toBe(false);
  });

  it('an empty TPM and no embedded CA: E_TRUST_ROOT_NOT_PROVISIONED; mosctl provision then fills it', async () => {
    const { store, fx } = await makeStore('store');
    const mos = await boot(store, path.join(work, 'no-such-ca.pem'));
    const reason = await expectRefusal(mos, 'E_TRUST_ROOT_NOT_PROVISIONED');
    expect(reason).toContain('mosctl provision --ca FILE');
    expect(await mos.mosctl('provision')).toMatchObject({ code: 1, stderr: expect.stringMatching(/^mosctl: no CA given and the image embeds none/) });
    expect(await mos.mosctl('provision', '--ca', fx.caCertPath)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^provisioned manifest CA sha256:[0-9a-f]{16} into TPM NV 0x01806d6f \(PCRs 7,11\)\n$/) });
    await shutDown(mos);
    expect(await (await boot(store, null)).booted()).toBe('ready');
  });

  it('a block-device store (squashfs on a read-only loop device) is mounted read-only at <state>/store and verified', async () => {
    const { store, fx } = await makeStore('store');
    const image = path.join(work, 'store.squashfs');
    execFileSync('mksquashfs', [store, image, '-noappend', '-all-root', '-no-progress', '-quiet'], { stdio: 'ignore' });
    const device = execFileSync('losetup', ['--find', '--show', '--read-only', image], { encoding: 'utf8' }).trim();
    try {
      const mos = await boot(device, fx.caCertPath);
      expect(await mos.booted()).toBe('ready');
      expect(mos.consoleLines).toContain(`mos: trust: verified install ${fx.result.install.digest} (product ${fx.productUuid}, 2 targets)`);
      const mountDir = path.join(mos.stateDir, 'store');
      const mount = readFileSync(`/proc/${mos.pid1}/mountinfo`, 'utf8').split('\n').find((line) => line.split(' ')[4] === mountDir);
      expect(mount).toBeDefined();
      expect(mount!.split(' ')[5]!.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev', 'noexec']));
      expect(mount).toMatch(new RegExp(` - squashfs ${device} `));
      expect((await mos.info()).trust).toMatchObject({ state: 'verified', store: device });
      await shutDown(mos);
    } finally {
      execFileSync('losetup', ['--detach', device]);
    }
  });

  it('without mos.store the phase is skipped; an unreadable trust key or the host TPM in namespace mode is refused', async () => {
    const plain = await boot(null, null);
    expect(await plain.booted()).toBe('ready');
    expect(plain.consoleLines).toContain('mos: phase trust skipped: no manifest store configured');
    expect((await plain.info()).trust).toEqual({ state: 'not-configured' });
    expect((await plain.mosctl('status')).stdout).toContain('trust: not configured');
    await shutDown(plain);

    const { store, fx } = await makeStore('store');
    await expectRefusal(await boot(store, null, 'mos.trust_pcrs=7,x'), 'E_TRUST_CONFIG');
    // Namespace mode never talks to the host's TPM (the later mos.tpm= wins).
    await expectRefusal(await boot(store, null, 'mos.tpm=device:/dev/tpmrm0'), 'E_TRUST_CONFIG');
    // With a trust root in the TPM: a store without oci/, and one that does not exist.
    expect(await (await boot(store, fx.caCertPath)).booted()).toBe('ready');
    mkdirSync(path.join(work, 'empty-store'));
    await expectRefusal(await boot(path.join(work, 'empty-store'), null), 'E_STORE_INVALID');
    await expectRefusal(await boot(path.join(work, 'no-such-store'), null), 'E_STORE_MISSING');
  });
});
