import { createHash } from 'node:crypto';
/**
 * The boot-side verifier of a signed install layout against real keys and certificates made by
 * the openssl CLI (once for the file), over real directories read by the fs LayoutReader.
 * Every tamper case asserts its own error code and that nothing would run (no targets).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ANNOTATION, MAX_BYTES, productCommonName, type InstallFile } from '../../init/trust/formats.ts';
import { createFsLayoutReader, nodeLayoutFs, type LayoutFs, type LayoutReader } from '../../init/trust/layout-reader.ts';
import { MAX_MESSAGE_CHARS, verifyInstallLayout, type VerifyErrorCode, type VerifyInstallOptions, type VerifyInstallResult } from '../../init/trust/verify-install.ts';
import { decodeCertificatePem } from '../../init/trust/x509.ts';
import {
  blobPath,
  composeLayout,
  createCa,
  flipByte,
  makeImage,
  makeInstall,
  NOW,
  OTHER_PRODUCT,
  PRODUCT,
  sha256,
  signBytes,
  signedSpec,
  writeLayout,
  type CertificateAuthority,
  type Doc,
  type Layout,
  type LayoutSpec,
  type Signer,
} from '../helpers/signed-layout.ts';

let root: string;
let ca: CertificateAuthority;
let foreignCa: CertificateAuthority;
const signer: Record<string, Signer> = {};
const images = [makeImage('zot'), makeImage('web')];

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'mos-trust-verify-'));
  ca = createCa(join(root, 'ca'));
  foreignCa = createCa(join(root, 'foreign-ca'), 'foreign manifest CA');
  signer.ec = ca.issue('ec');
  signer.rsa = ca.issue('rsa', { key: 'rsa' });
  signer.foreign = foreignCa.issue('foreign');
  signer.expired = ca.issue('expired', { start: '20200101000000Z', end: '20210101000000Z' });
  signer.notYetValid = ca.issue('not-yet-valid', { start: '20400101000000Z', end: '20450101000000Z' });
  signer.otherProduct = ca.issue('other-product', { commonName: productCommonName(OTHER_PRODUCT) });
  signer.noCodeSigning = ca.issue('no-code-signing', { profile: 'no-code-signing' });
  signer.caFlag = ca.issue('ca-flag', { profile: 'ca-flag' });
  signer.badCn = ca.issue('bad-cn', { commonName: 'mos signer' });
  signer.p384 = ca.issue('p384', { key: 'ec384' });
  signer.rsa1024 = ca.issue('rsa1024', { key: 'rsa1024' });
}, 120_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

let layouts = 0;
function materialise(spec: LayoutSpec, tamper?: (dir: string, layout: Layout) => void): { dir: string; layout: Layout } {
  const dir = join(root, `layout-${layouts++}`);
  const layout = composeLayout(spec);
  writeLayout(dir, layout);
  tamper?.(dir, layout);
  return { dir, layout };
}

function verifyDir(dir: string, options: Partial<VerifyInstallOptions> = {}): VerifyInstallResult {
  return verifyInstallLayout({ reader: createFsLayoutReader(dir), trustRoot: ca.spki, now: NOW, ...options });
}

function sha256Of(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function expectRefused(result: VerifyInstallResult, code: VerifyErrorCode, message?: RegExp): void {
  if (result.ok) throw new Error(`expected ${code}, but the layout verified`);
  expect(result.code, result.message).toBe(code);
  // Nothing to start: a refusal carries no targets, no install file.
  expect(result).not.toHaveProperty('targets');
  expect(result).not.toHaveProperty('install');
  if (message) expect(result.message).toMatch(message);
}

const good = (): LayoutSpec => signedSpec(signer.ec!, images);
const signedWith = (install: InstallFile, who = signer.ec!) => signedSpec(who, images, install);
const editInstall = (edit: (install: Doc) => void) => {
  const install: Doc = makeInstall(images);
  edit(install);
  return signedWith(install);
};

/** Spies on the fs under a reader: which layout files were opened and how many bytes read from each. */
function spyFs(dir: string) {
  const opened: string[] = [];
  const bytesRead = new Map<string, number>();
  const fdPath = new Map<number, string>();
  const io: LayoutFs = {
    ...nodeLayoutFs,
    openSync(path, flags) {
      const fd = nodeLayoutFs.openSync(path, flags);
      const rel = relative(dir, path);
      opened.push(rel);
      fdPath.set(fd, rel);
      return fd;
    },
    readSync(fd, buffer, offset, length, position) {
      const got = nodeLayoutFs.readSync(fd, buffer, offset, length, position);
      const rel = fdPath.get(fd)!;
      bytesRead.set(rel, (bytesRead.get(rel) ?? 0) + got);
      return got;
    },
  };
  return { io, opened, bytesRead };
}

/** Spies on the LayoutReader port: every read's limit and what it returned. */
function spyReader(inner: LayoutReader) {
  const reads: { path: string; maxBytes: number; returned: number | 'refused' }[] = [];
  const reader: LayoutReader = {
    size: (path) => inner.size(path),
    read(path, maxBytes) {
      try {
        const bytes = inner.read(path, maxBytes);
        reads.push({ path, maxBytes, returned: bytes.length });
        return bytes;
      } catch (error) {
        reads.push({ path, maxBytes, returned: 'refused' });
        throw error;
      }
    },
  };
  return { reader, reads };
}

describe('a good layout', () => {
  it('verifies with an ECDSA P-256 signature and returns every target with its manifest', () => {
    const { dir, layout } = materialise(good());
    const result = verifyDir(dir);
    if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
    expect(result.tag).toBe('v1');
    expect(result.signatureAlgorithm).toBe('ecdsa-p256-sha256');
    expect(result.installDigest).toBe(layout.installDigest);
    expect(result.installManifestDigest).toBe(layout.installManifestDigest);
    expect(sha256(result.installBytes)).toBe(layout.installDigest);
    expect(result.install.product).toBe(PRODUCT);
    expect(result.certificate).toMatchObject({
      commonName: `manifest PRODUCT:${PRODUCT}`,
      product: PRODUCT,
      subject: `CN=manifest PRODUCT:${PRODUCT}`,
      issuer: 'CN=mos test manifest CA',
      keyType: 'ec-p256',
      notBefore: new Date('2024-01-01T00:00:00Z'),
      notAfter: new Date('2034-01-01T00:00:00Z'),
      digest: sha256(signer.ec!.certPem),
    });
    expect(result.targets.map((t) => [t.target.service_name, t.manifestDigest])).toEqual(images.map((i) => [i.name, i.digest]));
    expect(result.targets.map((t) => t.manifestBytes)).toEqual(images.map((i) => i.manifest));
  });

  it('verifies with an RSA-2048 PKCS#1 v1.5 signature, which openssl dgst -verify also accepts', () => {
    const spec = signedSpec(signer.rsa!, images);
    const { dir, layout } = materialise(spec);
    const result = verifyDir(dir, { tag: 'v1' });
    if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
    expect(result.signatureAlgorithm).toBe('rsa-pkcs1v15-sha256');
    expect(result.certificate.keyType).toBe('rsa-2048');
    expect(result.targets).toHaveLength(2);

    // The independent oracle: project-machine's documented check.
    const pub = join(dir, '..', 'rsa-pub.pem');
    writeFileSync(pub, execFileSync('openssl', ['x509', '-pubkey', '-noout'], { input: signer.rsa!.certPem }));
    const out = execFileSync('openssl', ['dgst', '-sha256', '-verify', pub, '-signature', join(dir, blobPath(sha256(spec.signatures[0]!))), join(dir, blobPath(layout.installDigest))]);
    expect(out.toString()).toContain('Verified OK');
  });

  it('ignores the referrers of another install artifact in the same layout and picks the tagged one', () => {
    const first = composeLayout(good());
    const second = composeLayout({ ...signedSpec(signer.rsa!, images, { ...makeInstall(images), update_type: 'partial' }), tag: 'v2' });
    const merged = new Map([...first.files, ...second.files]);
    const index = JSON.parse(first.files.get('index.json')!.toString());
    const secondIndex = JSON.parse(second.files.get('index.json')!.toString());
    index.manifests.push(...secondIndex.manifests.filter((m: Doc) => m.annotations?.[ANNOTATION.refName] === 'v2' || !m.annotations));
    merged.set('index.json', Buffer.from(JSON.stringify(index)));
    const dir = writeLayout(join(root, `layout-${layouts++}`), { ...first, files: merged });

    const v2 = verifyDir(dir, { tag: 'v2' });
    expect(v2.ok && v2.signatureAlgorithm).toBe('rsa-pkcs1v15-sha256');
    const v1 = verifyDir(dir, { tag: 'v1' });
    expect(v1.ok && v1.signatureAlgorithm).toBe('ecdsa-p256-sha256');
    expectRefused(verifyDir(dir), 'E_INSTALL_AMBIGUOUS', /v1, v2/);
    expectRefused(verifyDir(dir, { tag: 'v3' }), 'E_INSTALL_NOT_FOUND', /v3/);
  });
});

describe('tampered content', () => {
  it('a flipped byte in install.json: its blob digest no longer matches', () => {
    const { dir } = materialise(good(), (d, layout) => {
      const path = join(d, blobPath(layout.installDigest));
      writeFileSync(path, flipByte(layout.files.get(blobPath(layout.installDigest))!, 20));
    });
    expectRefused(verifyDir(dir), 'E_BLOB_DIGEST', /install\.json of v1 sha256:/);
  });

  it('the same flip with every digest recomputed up to index.json: the signature fails', () => {
    const spec = good();
    const { dir } = materialise({ ...spec, installBytes: flipByte(spec.installBytes, 20) });
    expectRefused(verifyDir(dir), 'E_SIGNATURE_INVALID', /^signature sha256:\w+… does not verify install\.json sha256:/);
  });

  it('a flipped byte in the signature (ECDSA and RSA)', () => {
    const ec = good();
    expectRefused(verifyDir(materialise({ ...ec, signatures: [flipByte(ec.signatures[0]!, -1)] }).dir), 'E_SIGNATURE_INVALID');
    const rsa = signedSpec(signer.rsa!, images);
    expectRefused(verifyDir(materialise({ ...rsa, signatures: [flipByte(rsa.signatures[0]!, 100)] }).dir), 'E_SIGNATURE_INVALID');
  });

  it('a flipped byte inside the certificate: no longer signed by the CA', () => {
    const der = decodeCertificatePem(signer.ec!.certPem);
    const at = der.indexOf(Buffer.from(PRODUCT));
    expect(at).toBeGreaterThan(0);
    const flipped = Buffer.from(der);
    flipped[at + 5] = flipped[at + 5]! ^ 0x01; // still a valid UTF8String: only the CA's signature can tell
    const pem = Buffer.from(`-----BEGIN CERTIFICATE-----\n${flipped.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`);
    expectRefused(verifyDir(materialise({ ...good(), certificates: [pem] }).dir), 'E_CERT_UNTRUSTED', /not signed by the manifest CA/);
  });

  it('a flipped byte in the certificate file, or not a certificate at all', () => {
    expectRefused(verifyDir(materialise({ ...good(), certificates: [flipByte(signer.ec!.certPem, 40)] }).dir), 'E_CERT_INVALID');
    expectRefused(verifyDir(materialise({ ...good(), certificates: [Buffer.from('hello')] }).dir), 'E_CERT_INVALID');
    const twoBlocks = Buffer.concat([signer.ec!.certPem, signer.rsa!.certPem]);
    expectRefused(verifyDir(materialise({ ...good(), certificates: [twoBlocks] }).dir), 'E_CERT_INVALID');
  });
});

describe('the certificate', () => {
  it('issued by another CA is untrusted', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.foreign!, images)).dir), 'E_CERT_UNTRUSTED');
  });

  it('checked against another trust root is untrusted', () => {
    expectRefused(verifyDir(materialise(good()).dir, { trustRoot: foreignCa.spki }), 'E_CERT_UNTRUSTED');
  });

  it('expired', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.expired!, images)).dir), 'E_CERT_EXPIRED', /expired at 2021-01-01T00:00:00\.000Z/);
  });

  it('not yet valid', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.notYetValid!, images)).dir), 'E_CERT_NOT_YET_VALID', /before 2040-01-01/);
  });

  it('validity is judged against `now`, not the host clock', () => {
    const dir = materialise(good()).dir;
    expectRefused(verifyDir(dir, { now: new Date('2034-01-01T00:00:01Z') }), 'E_CERT_EXPIRED');
    expectRefused(verifyDir(dir, { now: new Date('2023-12-31T23:59:59Z') }), 'E_CERT_NOT_YET_VALID');
  });

  it('for another product', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.otherProduct!, images)).dir), 'E_PRODUCT_MISMATCH', new RegExp(OTHER_PRODUCT));
  });

  it('without the codeSigning extended key usage', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.noCodeSigning!, images)).dir), 'E_CERT_USAGE', /codeSigning/);
  });

  it('with the CA flag', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.caFlag!, images)).dir), 'E_CERT_USAGE', /CA certificate/);
  });

  it('whose CN is not a manifest product CN', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.badCn!, images)).dir), 'E_CERT_USAGE', /CN/);
  });

  it('with a P-384 or an RSA-1024 key', () => {
    expectRefused(verifyDir(materialise(signedSpec(signer.p384!, images)).dir), 'E_KEY_UNSUPPORTED', /secp384r1/);
    expectRefused(verifyDir(materialise(signedSpec(signer.rsa1024!, images)).dir), 'E_KEY_UNSUPPORTED', /RSA-1024/);
  });

  it('a trust root that is not an SPKI', () => {
    expectRefused(verifyDir(materialise(good()).dir, { trustRoot: Buffer.from('not a key') }), 'E_TRUST_ROOT_INVALID');
  });
});

describe('the referrers', () => {
  it('a missing signature artifact', () => {
    expectRefused(verifyDir(materialise({ ...good(), signatures: [] }).dir), 'E_SIGNATURE_MISSING');
  });

  it('a missing certificate artifact', () => {
    expectRefused(verifyDir(materialise({ ...good(), certificates: [] }).dir), 'E_CERTIFICATE_MISSING');
  });

  it('two conflicting signature artifacts, even both valid', () => {
    const spec = good();
    const second = signBytes(spec.installBytes, signer.ec!.keyPem); // ECDSA: other bytes, also valid
    expect(second.equals(spec.signatures[0]!)).toBe(false);
    expectRefused(verifyDir(materialise({ ...spec, signatures: [spec.signatures[0]!, second] }).dir), 'E_SIGNATURE_CONFLICT', /2 signature artifacts/);
  });

  it('two certificate artifacts', () => {
    expectRefused(verifyDir(materialise({ ...good(), certificates: [signer.ec!.certPem, signer.rsa!.certPem] }).dir), 'E_CERTIFICATE_CONFLICT');
  });

  it('a missing signature blob', () => {
    const { dir } = materialise(good(), (d, layout) => {
      const sigManifest = JSON.parse(layout.files.get(blobPath(layout.signatureDigests[0]!))!.toString());
      unlinkSync(join(d, blobPath(sigManifest.layers[0].digest)));
    });
    expectRefused(verifyDir(dir), 'E_BLOB_MISSING', /signature sha256:/);
  });
});

describe('targets', () => {
  it('an image manifest changed in place (same size): digest mismatch', () => {
    const { dir } = materialise(good(), (d) => writeFileSync(join(d, blobPath(images[1]!.digest)), flipByte(images[1]!.manifest, 30)));
    expectRefused(verifyDir(dir), 'E_TARGET_DIGEST', /target web/);
  });

  it('a signed size that differs from the blob', () => {
    expectRefused(verifyDir(materialise(editInstall((install) => (install.targets[0].size += 1))).dir), 'E_TARGET_SIZE', /target zot/);
  });

  it('a signed digest whose blob is not in the layout', () => {
    const { dir } = materialise(good(), (d) => unlinkSync(join(d, blobPath(images[0]!.digest))));
    expectRefused(verifyDir(dir), 'E_TARGET_MISSING', /target zot/);
  });

  it("a target's image config changed: digest mismatch", () => {
    const { dir } = materialise(good(), (d) => writeFileSync(join(d, blobPath(sha256Of(images[0]!.config))), flipByte(images[0]!.config, 5)));
    expectRefused(verifyDir(dir), 'E_BLOB_DIGEST', /image config of target zot/);
  });

  it("a target's layer missing or of another size", () => {
    const layerPath = (d: string) => join(d, blobPath(sha256Of(images[0]!.layer)));
    expectRefused(verifyDir(materialise(good(), (d) => unlinkSync(layerPath(d))).dir), 'E_BLOB_MISSING', /layer of target zot/);
    expectRefused(verifyDir(materialise(good(), (d) => writeFileSync(layerPath(d), images[0]!.layer.subarray(1))).dir), 'E_BLOB_SIZE', /layer of target zot/);
  });
});

describe('structure and names', () => {
  it('unknown fields in index.json, in one of its descriptors, or in an artifact manifest', () => {
    expectRefused(verifyDir(materialise({ ...good(), edit: { index: (i) => (i.extra = true) } }).dir), 'E_LAYOUT_INVALID', /extra: unknown field/);
    expectRefused(verifyDir(materialise({ ...good(), edit: { index: (i) => (i.manifests[1].urls = ['http://x']) } }).dir), 'E_LAYOUT_INVALID', /urls: unknown field/);
    expectRefused(verifyDir(materialise({ ...good(), edit: { signature: (m) => (m.note = 'x') } }).dir), 'E_LAYOUT_INVALID', /note: unknown field/);
    expectRefused(verifyDir(materialise({ ...good(), edit: { ociLayout: (o) => (o.x = 1) } }).dir), 'E_LAYOUT_INVALID', /oci-layout/);
  });

  it('quotes what the layout holds escaped and bounded: no terminal escapes, no megabyte console line', () => {
    const key = `\u001b[2K\r\u009b31m\u202e${'A'.repeat(200_000)}`;
    const huge = verifyDir(materialise({ ...good(), edit: { index: (i) => (i[key] = 1) } }).dir);
    expectRefused(huge, 'E_LAYOUT_INVALID', /unknown field|\\u001b/);
    const typed = verifyDir(materialise({ ...good(), edit: { index: (i) => (i.manifests[1].artifactType = '\u001b]0;owned\u0007') } }).dir);
    expectRefused(typed, 'E_LAYOUT_INVALID', /artifactType \\u001b\]0;owned\\u0007/);
    for (const result of [huge, typed]) {
      if (result.ok) continue;
      expect(result.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
      expect(result.message.length).toBeLessThanOrEqual(MAX_MESSAGE_CHARS);
    }
  });

  it('unknown fields in install.json, even signed', () => {
    expectRefused(verifyDir(materialise(editInstall((install) => (install.rollback = 0))).dir), 'E_MANIFEST_INVALID', /rollback: unknown field/);
    expectRefused(verifyDir(materialise(editInstall((install) => (install.targets[1].privileged = true))).dir), 'E_MANIFEST_INVALID', /targets\[1\]\.privileged: unknown field/);
  });

  it('install.json that breaks its schema, even signed', () => {
    expectRefused(verifyDir(materialise(editInstall((install) => (install.targets[0].network.ports[0].host = 65536))).dir), 'E_MANIFEST_INVALID', /1-65535/);
    expectRefused(verifyDir(materialise(editInstall((install) => (install.targets[1].service_name = 'zot'))).dir), 'E_MANIFEST_INVALID', /duplicate service name/);
  });

  it('invalid digests in index.json: path traversal, upper case, another algorithm', () => {
    for (const digest of ['sha256:../../../../etc/passwd', `sha256:${'A'.repeat(64)}`, `sha512:${'a'.repeat(128)}`]) {
      const { dir } = materialise({ ...good(), edit: { index: (i) => (i.manifests[0].digest = digest) } });
      const { io, opened } = spyFs(dir);
      expectRefused(verifyInstallLayout({ reader: createFsLayoutReader(dir, io), trustRoot: ca.spki, now: NOW }), 'E_DIGEST_INVALID', /manifests\[0\]\.digest/);
      expect(opened).toEqual(['oci-layout', 'index.json']);
    }
  });

  it('an invalid digest in an artifact manifest or in install.json', () => {
    expectRefused(verifyDir(materialise({ ...good(), edit: { certificate: (m) => (m.layers[0].digest = 'sha256:../cert') } }).dir), 'E_DIGEST_INVALID');
    expectRefused(verifyDir(materialise(editInstall((install) => (install.targets[0].digest = 'sha256:../../x'))).dir), 'E_DIGEST_INVALID');
  });

  it('path traversal in a ref name or a title', () => {
    expectRefused(
      verifyDir(materialise({ ...good(), edit: { index: (i) => (i.manifests[0].annotations[ANNOTATION.refName] = '../../etc') } }).dir),
      'E_NAME_INVALID',
      /ref\.name/,
    );
    expectRefused(
      verifyDir(materialise({ ...good(), edit: { signature: (m) => (m.layers[0].annotations[ANNOTATION.title] = '../../install.json') } }).dir),
      'E_NAME_INVALID',
    );
    expectRefused(verifyDir(materialise(good()).dir, { tag: '../v1' }), 'E_NAME_INVALID');
  });

  it('an image entry whose name is not its digest', () => {
    const other = images[0]!.digest.slice(7);
    expectRefused(verifyDir(materialise({ ...good(), edit: { index: (i) => (i.manifests.at(-1).annotations[ANNOTATION.refName] = other) } }).dir), 'E_LAYOUT_INVALID');
  });

  it('a layout without index.json', () => {
    const { dir } = materialise(good(), (d) => unlinkSync(join(d, 'index.json')));
    expectRefused(verifyDir(dir), 'E_LAYOUT_INVALID', /index\.json does not exist/);
  });
});

describe('oversized files are refused before being read whole', () => {
  it('an index.json over its limit: opened, never read', () => {
    const { dir } = materialise(good(), (d, layout) => {
      writeFileSync(join(d, 'index.json'), Buffer.concat([layout.files.get('index.json')!, Buffer.alloc(MAX_BYTES.index, ' ')]));
    });
    const { io, bytesRead } = spyFs(dir);
    const { reader, reads } = spyReader(createFsLayoutReader(dir, io));
    expectRefused(verifyInstallLayout({ reader, trustRoot: ca.spki, now: NOW }), 'E_TOO_LARGE', /index\.json has \d+ bytes/);
    expect(bytesRead.get('index.json') ?? 0).toBe(0);
    expect(reads.at(-1)).toEqual({ path: 'index.json', maxBytes: MAX_BYTES.index, returned: 'refused' });
    for (const read of reads) if (read.returned !== 'refused') expect(read.returned).toBeLessThanOrEqual(read.maxBytes);
  });

  it('a descriptor declaring install.json over its limit: the blob is never opened', () => {
    const spec: LayoutSpec = { ...good(), edit: { install: (m) => (m.layers[0].size = MAX_BYTES.install + 1) } };
    const { dir, layout } = materialise(spec);
    const { io, opened } = spyFs(dir);
    expectRefused(verifyInstallLayout({ reader: createFsLayoutReader(dir, io), trustRoot: ca.spki, now: NOW }), 'E_TOO_LARGE', /declared/);
    expect(opened).not.toContain(blobPath(layout.installDigest));
  });

  it('an install.json blob grown on disk beyond its descriptor: refused without reading it', () => {
    const { dir, layout } = materialise(good(), (d, l) => {
      writeFileSync(join(d, blobPath(l.installDigest)), Buffer.alloc(4 * MAX_BYTES.install, 'x'));
    });
    const { io, bytesRead, opened } = spyFs(dir);
    const { reader, reads } = spyReader(createFsLayoutReader(dir, io));
    expectRefused(verifyInstallLayout({ reader, trustRoot: ca.spki, now: NOW }), 'E_BLOB_SIZE');
    expect(opened).not.toContain(blobPath(layout.installDigest));
    expect(bytesRead.get(blobPath(layout.installDigest)) ?? 0).toBe(0);
    for (const read of reads) if (read.returned !== 'refused') expect(read.returned).toBeLessThanOrEqual(read.maxBytes);
  });

  it('a signed target size over the manifest limit: the blob is never opened', () => {
    const { dir } = materialise(editInstall((install) => (install.targets[0].size = MAX_BYTES.manifest + 1)));
    const { io, opened } = spyFs(dir);
    expectRefused(verifyInstallLayout({ reader: createFsLayoutReader(dir, io), trustRoot: ca.spki, now: NOW }), 'E_TOO_LARGE', /target zot/);
    expect(opened).not.toContain(blobPath(images[0]!.digest));
  });
});
