/**
 * `mosb` end to end, judged by tools that share no code with it: keysets from openssl, a
 * published layout read by skopeo and umoci, the signature checked by `openssl dgst -verify`
 * and the chain by `openssl verify`. Then the bundle (`node dist/mosb.mjs`) for exit codes and
 * messages. Both key algorithms.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { ANNOTATION, ARTIFACT_TYPE, EMPTY_DESCRIPTOR, MEDIA_TYPE, TITLE } from '../../init/trust/formats.ts';
import { publishManifest } from '../../mosb/publish.ts';
import {
  blobPath,
  findPublished,
  type KeyAlgorithm,
  makeSourceImage,
  type PublishedFixture,
  publishFixture,
  readBlobJson,
  readIndex,
} from '../helpers/manifest-fixtures.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SEARCH_PATH = ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'];
const has = (command: string) => SEARCH_PATH.some((dir) => existsSync(path.join(dir, command)));
const missing = ['openssl', 'skopeo', 'umoci', 'tar'].filter((command) => !has(command));
const bundle = path.join(root, 'dist', 'mosb.mjs');

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.SOURCE_DATE_EPOCH;
  delete env.MOS_KEYS_DIR;
  return { ...env, ...extra };
}

const run = (command: string, args: string[], options: { cwd?: string } = {}) =>
  execFileSync(command, args, { env: childEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });

const sha256File = (file: string) => `sha256:${createHash('sha256').update(readFileSync(file)).digest('hex')}`;

let work: string;
beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'mosb-publish-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe.skipIf(missing.length > 0).each(['ecdsa-p256', 'rsa-2048'] as KeyAlgorithm[])('mosb publish with %s', (algorithm) => {
  let fx: PublishedFixture;
  let dir: string;

  beforeAll(async () => {
    dir = path.join(work, algorithm);
    fx = await publishFixture({
      dir,
      algorithm,
      tag: 'v1',
      targets: [
        { service_name: 'web', network: { type: 'simple', ipv4: '10.0.3.99/24', ports: [{ host: 8080, container: 80 }] } },
        { service_name: 'assets', service_type: 'fs-only', files: { '/index.html': '<h1>hi</h1>\n' } },
      ],
    });
  });

  it('skopeo reads the install artifact by its tag, and the raw manifest says what it is', () => {
    const raw = JSON.parse(run('skopeo', ['inspect', '--raw', `oci:${fx.layoutDir}:v1`]));
    expect(raw.artifactType).toBe(ARTIFACT_TYPE.install);
    expect(raw.mediaType).toBe(MEDIA_TYPE.imageManifest);
    expect(raw.config).toEqual(EMPTY_DESCRIPTOR);
    expect(raw.layers).toHaveLength(1);
    expect(raw.layers[0].mediaType).toBe(ARTIFACT_TYPE.install);
    expect(raw.layers[0].annotations[ANNOTATION.title]).toBe(TITLE.install);
    expect(raw.annotations[ANNOTATION.created]).toBe('2024-01-01T00:00:00Z');
  });

  it('skopeo reads each service image under its digest hex, squashed from its source (test/privileged/mosb-squash.test.ts)', () => {
    for (const target of fx.result.installFile.targets) {
      const hex = target.digest.slice('sha256:'.length);
      const inspected = JSON.parse(run('skopeo', ['inspect', `oci:${fx.layoutDir}:${hex}`]));
      expect(inspected.Digest).toBe(target.digest);
      expect(fx.result.images.find((image) => image.serviceName === target.service_name)!.source).toBe(fx.sources[target.service_name]!.manifestDigest);
      expect(target.size).toBe(readFileSync(blobPath(fx.layoutDir, target.digest)).length);
      expect(inspected.Layers).toHaveLength(1);
      expect(inspected.Layers).not.toEqual(fx.sources[target.service_name]!.layerDigests);
    }
  });

  it('umoci lists the tag and the service images', () => {
    const tags = run('umoci', ['ls', '--layout', fx.layoutDir]).split('\n').filter(Boolean).sort();
    const hexes = fx.result.installFile.targets.map((target) => target.digest.slice('sha256:'.length));
    expect(tags).toEqual([...hexes, 'v1'].sort());
  });

  it('openssl verifies the signature over install.json with the certificate’s public key', () => {
    const out = path.join(dir, 'check');
    mkdirSync(out, { recursive: true });
    writeFileSync(path.join(out, 'pub.pem'), run('openssl', ['x509', '-pubkey', '-noout', '-in', fx.artifacts.certificateBlob]));
    const verified = run('openssl', ['dgst', '-sha256', '-verify', path.join(out, 'pub.pem'), '-signature', fx.artifacts.signatureBlob, fx.artifacts.installBlob]);
    expect(verified.trim()).toBe('Verified OK');
    // And a flipped byte does not verify.
    const tampered = Buffer.from(readFileSync(fx.artifacts.installBlob));
    tampered[10]! ^= 1;
    writeFileSync(path.join(out, 'install.json'), tampered);
    const bad = spawnSync('openssl', ['dgst', '-sha256', '-verify', path.join(out, 'pub.pem'), '-signature', fx.artifacts.signatureBlob, path.join(out, 'install.json')], { env: childEnv(), encoding: 'utf8' });
    expect(bad.status).not.toBe(0);
  });

  it('openssl verifies the published certificate against the keyset CA, and it names the product', () => {
    expect(run('openssl', ['verify', '-CAfile', fx.caCertPath, fx.artifacts.certificateBlob]).trim()).toBe(`${fx.artifacts.certificateBlob}: OK`);
    expect(run('openssl', ['x509', '-noout', '-subject', '-in', fx.artifacts.certificateBlob]).trim()).toBe(`subject=CN = manifest PRODUCT:${fx.productUuid}`);
    const ca = run('openssl', ['x509', '-noout', '-text', '-in', fx.caCertPath]);
    expect(ca).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(ca).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(ca).toContain(`Subject: CN = mos manifest CA test`);
    const leaf = run('openssl', ['x509', '-noout', '-text', '-in', fx.keys.productCertPath]);
    expect(leaf).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(leaf).toMatch(/Key Usage: critical\s+Digital Signature\n/);
    expect(leaf).toMatch(/Extended Key Usage: \s*\n\s+Code Signing/);
    expect(leaf).toContain(algorithm === 'ecdsa-p256' ? 'NIST CURVE: P-256' : 'Public-Key: (2048 bit)');
    expect(readFileSync(fx.artifacts.certificateBlob)).toEqual(readFileSync(fx.keys.productCertPath));
  });

  it('writes private keys 0600 (PKCS#8) and keyset directories 0700', () => {
    const keysetDir = path.join(fx.keys.keysDir, fx.keys.keyset);
    for (const key of [fx.keys.caKeyPath, fx.keys.productKeyPath]) {
      expect(statSync(key).mode & 0o777).toBe(0o600);
      expect(readFileSync(key, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    }
    for (const sub of ['', 'manifest-ca', 'manifest', `manifest/${fx.keys.product}`]) expect(statSync(path.join(keysetDir, sub)).mode & 0o777).toBe(0o700);
    expect(readFileSync(path.join(keysetDir, 'manifest', fx.keys.product, 'uuid'), 'utf8')).toBe(fx.productUuid);
  });

  it('writes install.json with project-machine’s fields in order, and links both referrers to it', () => {
    const text = readFileSync(fx.artifacts.installBlob, 'utf8');
    const parsed = JSON.parse(text);
    expect(Object.keys(parsed)).toEqual(['version', 'product', 'storage', 'targets', 'update_type']);
    expect(Object.keys(parsed.targets[0])).toEqual(['service_name', 'version', 'service_type', 'network', 'nsgroup', 'digest', 'storage', 'size']);
    expect(text).toContain('"storage":null');
    expect(parsed.product).toBe(fx.productUuid);
    expect(parsed.targets[0].network).toEqual({ type: 'simple', ipv4: '10.0.3.99/24', ipv6: '', ports: [{ host: 8080, container: 80 }] });
    const published = findPublished(fx.layoutDir, 'v1');
    expect(published.signatures).toHaveLength(1);
    expect(published.certificates).toHaveLength(1);
    const signature = readBlobJson(fx.layoutDir, published.signatures[0]!.digest);
    expect(signature.subject).toEqual({ mediaType: MEDIA_TYPE.imageManifest, digest: published.install.digest, size: published.install.size });
    expect(signature.layers[0]).toMatchObject({ mediaType: MEDIA_TYPE.layerTar, annotations: { [ANNOTATION.title]: TITLE.signature } });
    // Every blob in the layout matches its name.
    const blobs = path.join(fx.layoutDir, 'blobs', 'sha256');
    for (const name of readdirSync(blobs)) expect(sha256File(path.join(blobs, name))).toBe(`sha256:${name}`);
  });

  it('re-publishing the tag replaces its install artifact and referrers, and keeps other tags', async () => {
    const layoutDir = path.join(dir, 'republish');
    const first = await publishFixture({ dir: path.join(dir, 'r1'), keys: fx.keys, layoutDir, tag: 'stable' });
    await publishFixture({ dir: path.join(dir, 'r2'), keys: fx.keys, layoutDir, tag: 'next', targets: [{ service_name: 'db', files: { '/db': 'y' } }] });
    const third = await publishFixture({ dir: path.join(dir, 'r3'), keys: fx.keys, layoutDir, tag: 'stable', targets: [{ service_name: 'api', files: { '/api': 'x' } }] });
    const index = readIndex(layoutDir);
    const tags = index.manifests.map((entry) => entry.annotations?.[ANNOTATION.refName]).filter((tag) => tag !== undefined && !/^[0-9a-f]{64}$/.test(tag));
    expect(tags.sort()).toEqual(['next', 'stable']);
    expect(index.manifests.some((entry) => entry.digest === first.result.install.digest)).toBe(false);
    const stable = findPublished(layoutDir, 'stable');
    expect(stable.install.digest).toBe(third.result.install.digest);
    expect([stable.signatures.length, stable.certificates.length]).toEqual([1, 1]);
    const next = findPublished(layoutDir, 'next');
    expect([next.signatures.length, next.certificates.length]).toEqual([1, 1]);
    // Four referrers in all: two per live tag; the replaced tag's are gone.
    expect(index.manifests.filter((entry) => entry.artifactType === ARTIFACT_TYPE.signature || entry.artifactType === ARTIFACT_TYPE.certificate)).toHaveLength(4);
    expect(run('umoci', ['ls', '--layout', layoutDir]).split('\n')).toEqual(expect.arrayContaining(['stable', 'next']));
  });

  it('gives the same layout for the same inputs and time (signatures aside for ECDSA)', async () => {
    const a = path.join(dir, 'same-a');
    const b = path.join(dir, 'same-b');
    for (const out of [a, b]) {
      await publishManifest({ manifestPath: fx.manifestPath, keysDir: fx.keys.keysDir, keyset: fx.keys.keyset, product: fx.keys.product, outDir: out, tag: 'v1', created: '2030-05-05T05:05:05Z' });
    }
    const [ia, ib] = [a, b].map((out) => findPublished(out, 'v1'));
    expect(ia!.install).toEqual(ib!.install);
    expect(ia!.certificates).toEqual(ib!.certificates);
    if (algorithm === 'rsa-2048') expect(readFileSync(path.join(a, 'index.json'))).toEqual(readFileSync(path.join(b, 'index.json')));
    else expect(ia!.signatures[0]!.digest).not.toBe(ib!.signatures[0]!.digest);
  });

  it('refuses a source blob that does not match its digest, and leaves the output index as it was', async () => {
    const tampered = path.join(dir, 'tampered');
    const source = makeSourceImage({ layoutDir: path.join(tampered, 'src'), tag: 'v1', files: { '/x': 'original' } });
    const layer = blobPath(source.layoutDir, source.layerDigests[0]!);
    const bytes = readFileSync(layer);
    bytes[bytes.length - 1]! ^= 0xff;
    writeFileSync(layer, bytes);
    const manifestPath = path.join(tampered, 'manifest.yaml');
    writeFileSync(manifestPath, YAML.stringify({ version: 1, targets: [{ service_name: 'x', source: 'oci:src:v1', version: '1', service_type: 'fs-only' }] }));
    const before = readFileSync(path.join(fx.layoutDir, 'index.json'));
    await expect(
      publishManifest({ manifestPath, keysDir: fx.keys.keysDir, keyset: fx.keys.keyset, product: fx.keys.product, outDir: fx.layoutDir, tag: 'v1', created: '2024-01-01T00:00:00Z' }),
    ).rejects.toMatchObject({ code: 'E_DIGEST_MISMATCH' });
    expect(readFileSync(path.join(fx.layoutDir, 'index.json'))).toEqual(before);
    expect(readdirSync(path.join(fx.layoutDir, 'blobs', 'sha256')).filter((name) => name.startsWith('.'))).toEqual([]);
    expect(existsSync(blobPath(fx.layoutDir, source.layerDigests[0]!))).toBe(false);
  });
});

describe.skipIf(missing.length > 0)('manifest fixtures for the verifier’s tests', () => {
  it('publish with an expired certificate (signed while it was valid) and with another keyset’s CA', async () => {
    const dir = path.join(work, 'fixtures');
    const expired = await publishFixture({
      dir: path.join(dir, 'expired'),
      validity: { notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z') },
    });
    const check = spawnSync('openssl', ['verify', '-CAfile', expired.caCertPath, expired.artifacts.certificateBlob], { env: childEnv(), encoding: 'utf8' });
    expect(check.status).not.toBe(0);
    expect(check.stdout + check.stderr).toContain('certificate has expired');
    expect(readFileSync(expired.artifacts.certificateBlob)).toEqual(readFileSync(expired.keys.productCertPath));

    // A manifest signed by a foreign keyset: verified against `fx.caSpkiDer` it must fail.
    const foreign = await publishFixture({ dir: path.join(dir, 'foreign'), keyset: 'other' });
    const own = await publishFixture({ dir: path.join(dir, 'own') });
    expect(foreign.caSpkiDer.equals(own.caSpkiDer)).toBe(false);
    const cross = spawnSync('openssl', ['verify', '-CAfile', own.caCertPath, foreign.artifacts.certificateBlob], { env: childEnv(), encoding: 'utf8' });
    expect(cross.status).not.toBe(0);
  });
});

describe.skipIf(missing.length > 0 || !existsSync(bundle))('the mosb bundle', () => {
  let dir: string;
  let keysDir: string;
  const mosb = (args: string[], cwd?: string) => {
    const result = spawnSync(process.execPath, [bundle, ...args], { cwd: cwd ?? dir, env: childEnv({ MOS_KEYS_DIR: keysDir }), encoding: 'utf8' });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  };

  beforeAll(() => {
    dir = path.join(work, 'bundle');
    keysDir = path.join(dir, 'keys');
    mkdirSync(dir, { recursive: true });
  });

  it('creates a keyset, refuses to overwrite it, and refuses unsafe names as usage errors', () => {
    const created = mosb(['keyset', 'create', 'site', '--product', 'shop', '--algorithm', 'rsa-2048']);
    expect(created.status).toBe(0);
    expect(created.stdout).toContain('keyset site (rsa-2048)');
    expect(created.stdout + created.stderr).not.toContain('PRIVATE KEY');
    expect(statSync(path.join(keysDir, 'site', 'manifest', 'shop', 'privkey.pem')).mode & 0o777).toBe(0o600);

    const again = mosb(['keyset', 'create', 'site']);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/keyset site already exists/);

    expect(mosb(['keyset', 'add-product', 'site', 'shop']).status).toBe(1);
    expect(mosb(['keyset', 'add-product', 'site', 'kiosk']).status).toBe(0);
    expect(mosb(['keyset', 'add-product', 'nosuch', 'kiosk']).stderr).toMatch(/no keyset nosuch/);

    for (const args of [['keyset', 'create', '../evil'], ['keyset', 'create', 'ok', '--product', '.hidden'], ['keyset', 'create', 'ok', '--algorithm', 'dsa'], ['keyset', 'frobnicate']]) {
      const result = mosb(args);
      expect(result.status, args.join(' ')).toBe(64);
    }
    expect(existsSync(path.join(keysDir, 'ok'))).toBe(false);
    expect(mosb(['--help']).status).toBe(0);
  });

  it('publishes through the CLI, and names the field of a bad manifest', () => {
    const uuid = readFileSync(path.join(keysDir, 'site', 'manifest', 'shop', 'uuid'), 'utf8');
    makeSourceImage({ layoutDir: path.join(dir, 'src'), tag: 'v1' });
    const target = { service_name: 'shop', source: 'oci:src:v1', version: '2.0', service_type: 'container', nsgroup: 'shop' };
    writeFileSync(path.join(dir, 'manifest.yaml'), YAML.stringify({ version: 1, product: uuid, targets: [target] }));
    const ok = mosb(['manifest', 'publish', 'manifest.yaml', '--keyset', 'site', '--product', 'shop', '--out', 'out:release']);
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain('published oci:out:release');
    expect(run('umoci', ['ls', '--layout', path.join(dir, 'out')])).toContain('release');

    writeFileSync(path.join(dir, 'bad.yaml'), YAML.stringify({ version: 1, targets: [{ ...target, colour: 'blue', network: { type: 'simple', ports: [{ host: 65536, container: 80 }] } }] }));
    const bad = mosb(['manifest', 'publish', 'bad.yaml', '--keyset', 'site', '--product', 'shop', '--out', 'out:release']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('targets[0].colour: unknown field');
    expect(bad.stderr).toContain('targets[0].network.ports[0].host: must be 1..65535, got 65536');

    writeFileSync(path.join(dir, 'remote.yaml'), YAML.stringify({ version: 1, targets: [{ ...target, source: 'docker://registry.example/shop:1' }] }));
    const remote = mosb(['manifest', 'publish', 'remote.yaml', '--keyset', 'site', '--product', 'shop', '--out', 'out']);
    expect(remote.status).toBe(1);
    expect(remote.stderr).toContain('not supported offline');

    writeFileSync(path.join(dir, 'other.yaml'), YAML.stringify({ version: 1, product: '00000000-0000-0000-0000-000000000000', targets: [target] }));
    const other = mosb(['manifest', 'publish', 'other.yaml', '--keyset', 'site', '--product', 'shop', '--out', 'out']);
    expect(other.status).toBe(1);
    expect(other.stderr).toContain(`but the signing certificate is for product ${uuid}`);

    expect(mosb(['manifest', 'publish', 'manifest.yaml', '--keyset', 'site', '--product', 'shop']).status).toBe(64);
    expect(mosb(['manifest', 'publish', 'manifest.yaml', '--keyset', 'site', '--product', 'shop', '--out', `out:${'a'.repeat(64)}`]).status).toBe(64);
    expect(mosb(['manifest', 'publish', 'manifest.yaml', '--keyset', 'site', '--product', 'shop', '--out', 'out', '--created', 'yesterday']).status).toBe(64);
  });
});
