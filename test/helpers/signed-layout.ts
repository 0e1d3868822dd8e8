/**
 * A minimal writer of signed install layouts for the boot-side verifier's tests
 * (init/trust/verify-install.ts), independent of the `mosb` publisher.
 *
 * Keys and certificates come from the `openssl` CLI (`openssl ca` with explicit -startdate and
 * -enddate: Debian 12's OpenSSL 3.0 has no `x509 -not_before`), signatures from node:crypto.
 * A layout is composed in memory from its parts (`composeLayout`), so a test can change any part
 * and every digest above it is computed again, or write it (`writeLayout`) and change a file in
 * place so that the digests no longer match.
 */
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  ANNOTATION,
  ARTIFACT_TYPE,
  EMPTY_DESCRIPTOR,
  MEDIA_TYPE,
  productCommonName,
  TITLE,
  type InstallFile,
} from '../../init/trust/formats.ts';

export const PRODUCT = 'de6c82c5-3c4a-4a8e-9e57-2c0f4f0bd5a1';
export const OTHER_PRODUCT = '0b7e6a43-1111-4c3b-9d2a-6f5e4d3c2b1a';
/** The verifier's clock in tests; the fixture certificates' dates are fixed around it. */
export const NOW = new Date('2026-06-01T00:00:00Z');
export const TAG = 'v1';

// ── keys and certificates (openssl) ─────────────────────────────────────────────────────────

export type KeyKind = 'ec' | 'rsa' | 'ec384' | 'rsa1024';
export type Profile = 'sign' | 'no-code-signing' | 'ca-flag';

export interface Signer {
  keyPem: string;
  certPem: Buffer;
}

export interface CertificateAuthority {
  dir: string;
  /** The CA's public key, DER SubjectPublicKeyInfo: the trust root. */
  spki: Buffer;
  issue(name: string, options?: IssueOptions): Signer;
}

export interface IssueOptions {
  key?: KeyKind;
  /** Default `productCommonName(PRODUCT)`. */
  commonName?: string;
  /** `YYYYMMDDHHMMSSZ`; default 20240101000000Z. */
  start?: string;
  /** Default 20340101000000Z. */
  end?: string;
  profile?: Profile;
}

const CA_CONFIG = `
[ca]
default_ca = mos_test_ca
[mos_test_ca]
database = ./index.txt
new_certs_dir = ./issued
serial = ./serial
default_md = sha256
policy = any_cn
unique_subject = no
copy_extensions = none
[any_cn]
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[sign]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[no-code-signing]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[ca-flag]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = codeSigning
`;

function openssl(cwd: string, args: string[]): Buffer {
  try {
    return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`openssl ${args.join(' ')} failed: ${stderr}`);
  }
}

function generateKey(cwd: string, file: string, kind: KeyKind): void {
  const options: Record<KeyKind, string[]> = {
    ec: ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
    ec384: ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'],
    rsa: ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
    rsa1024: ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024'],
  };
  openssl(cwd, ['genpkey', ...options[kind], '-out', file]);
}

/** A manifest CA in `dir` (EC P-256, self-signed, valid 2020-2050). */
export function createCa(dir: string, name = 'mos test manifest CA'): CertificateAuthority {
  mkdirSync(join(dir, 'issued'), { recursive: true });
  writeFileSync(join(dir, 'ca.cnf'), CA_CONFIG);
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  generateKey(dir, 'ca.key', 'ec');
  openssl(dir, ['req', '-new', '-config', 'ca.cnf', '-key', 'ca.key', '-subj', `/CN=${name}`, '-out', 'ca.csr']);
  openssl(dir, [
    'ca', '-batch', '-notext', '-config', 'ca.cnf', '-selfsign', '-keyfile', 'ca.key', '-in', 'ca.csr',
    '-extensions', 'v3_ca', '-startdate', '20200101000000Z', '-enddate', '20500101000000Z', '-out', 'ca.pem',
  ]);
  const spki = createPublicKey(readFileSync(join(dir, 'ca.pem'))).export({ format: 'der', type: 'spki' });
  return {
    dir,
    spki,
    issue(leaf, options = {}) {
      const key = `${leaf}.key`;
      generateKey(dir, key, options.key ?? 'ec');
      const cn = options.commonName ?? productCommonName(PRODUCT);
      openssl(dir, ['req', '-new', '-config', 'ca.cnf', '-key', key, '-subj', `/CN=${cn}`, '-out', `${leaf}.csr`]);
      openssl(dir, [
        'ca', '-batch', '-notext', '-config', 'ca.cnf', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', `${leaf}.csr`,
        '-extensions', options.profile ?? 'sign',
        '-startdate', options.start ?? '20240101000000Z', '-enddate', options.end ?? '20340101000000Z',
        '-out', `${leaf}.pem`,
      ]);
      return { keyPem: readFileSync(join(dir, key), 'utf8'), certPem: readFileSync(join(dir, `${leaf}.pem`)) };
    },
  };
}

/** Signs `data` as mosb does: SHA-256, ECDSA (DER) or RSA PKCS#1 v1.5, raw bytes. */
export function signBytes(data: Buffer, keyPem: string): Buffer {
  return sign('sha256', data, keyPem);
}

// ── content ─────────────────────────────────────────────────────────────────────────────────

export const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
export const blobPath = (digest: string) => `blobs/sha256/${digest.slice('sha256:'.length)}`;
const json = (value: unknown) => Buffer.from(JSON.stringify(value));

export interface ImageFixture {
  name: string;
  manifest: Buffer;
  digest: string;
  size: number;
  config: Buffer;
  layer: Buffer;
}

/** A small OCI image manifest (with its config and one layer) standing for a service image. */
export function makeImage(name: string): ImageFixture {
  const config = json({ architecture: 'amd64', os: 'linux', config: { Entrypoint: [`/bin/${name}`] }, rootfs: { type: 'layers', diff_ids: [] } });
  const layer = Buffer.alloc(4096, `layer of ${name}\n`);
  const layerDigest = sha256(layer);
  const manifest = json({
    schemaVersion: 2,
    mediaType: MEDIA_TYPE.imageManifest,
    config: { mediaType: MEDIA_TYPE.imageConfig, digest: sha256(config), size: config.length },
    layers: [
      {
        mediaType: 'application/vnd.stacker.image.layer.squashfs+zstd+verity',
        digest: layerDigest,
        size: 4096,
        annotations: { 'io.stackeroci.stacker.squashfs_verity_root_hash': createHash('sha256').update(name).digest('hex') },
      },
    ],
  });
  return { name, manifest, digest: sha256(manifest), size: manifest.length, config, layer };
}

/** An install.json (as an object) running `images`, one target each. */
export function makeInstall(images: ImageFixture[], product = PRODUCT): InstallFile {
  return {
    version: 1,
    product,
    storage: [{ label: 'zot-data', persistent: true, nsgroup: 'zot', size: 1024 }],
    targets: images.map((image, i) => ({
      service_name: image.name,
      version: '1.0.0',
      service_type: 'container',
      network: i === 0
        ? { type: 'simple', ipv4: '10.0.3.99/24', ipv6: '', ports: [{ host: 8080, container: 5000 }] }
        : { type: 'none', ipv4: '', ipv6: '', ports: null },
      nsgroup: image.name,
      digest: image.digest,
      storage: i === 0 ? [{ dest: '/zot', label: 'zot-data' }] : null,
      size: image.size,
    })),
    update_type: 'complete',
  };
}

// ── the layout ──────────────────────────────────────────────────────────────────────────────

/** JSON documents as plain objects, for tests that change them before they are written. */
export type Doc = any;

export interface LayoutSpec {
  tag?: string;
  installBytes: Buffer;
  /** One signature artifact per entry (0, 1 or more). */
  signatures: Buffer[];
  /** One certificate artifact per entry. */
  certificates: Buffer[];
  images: ImageFixture[];
  /** Change the documents before they are serialised (digests are computed after). */
  edit?: {
    ociLayout?(doc: Doc): void;
    install?(manifest: Doc): void;
    signature?(manifest: Doc, index: number): void;
    certificate?(manifest: Doc, index: number): void;
    index?(index: Doc): void;
  };
}

export interface Layout {
  files: Map<string, Buffer>;
  installManifestDigest: string;
  installDigest: string;
  signatureDigests: string[];
  certificateDigests: string[];
}

const CREATED = '2026-01-01T00:00:00Z';

function artifact(artifactType: string, layerMediaType: string, blob: Buffer, title: string, subject?: { digest: string; size: number }): Doc {
  return {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE.imageManifest,
    artifactType,
    config: { ...EMPTY_DESCRIPTOR },
    layers: [{ mediaType: layerMediaType, digest: sha256(blob), size: blob.length, annotations: { [ANNOTATION.title]: title } }],
    ...(subject ? { subject: { mediaType: MEDIA_TYPE.imageManifest, digest: subject.digest, size: subject.size } } : {}),
    annotations: { [ANNOTATION.created]: CREATED },
  };
}

/** Builds every file of the layout, computing each digest from what it names. */
export function composeLayout(spec: LayoutSpec): Layout {
  const files = new Map<string, Buffer>();
  const put = (bytes: Buffer) => {
    const digest = sha256(bytes);
    files.set(blobPath(digest), bytes);
    return { digest, size: bytes.length };
  };
  const ociLayout: Doc = { imageLayoutVersion: '1.0.0' };
  spec.edit?.ociLayout?.(ociLayout);
  files.set('oci-layout', json(ociLayout));
  put(Buffer.from('{}'));

  const installBlob = put(spec.installBytes);
  const installManifest = artifact(ARTIFACT_TYPE.install, ARTIFACT_TYPE.install, spec.installBytes, TITLE.install);
  spec.edit?.install?.(installManifest);
  const installRef = put(json(installManifest));

  const manifests: Doc[] = [
    {
      mediaType: MEDIA_TYPE.imageManifest,
      ...installRef,
      artifactType: ARTIFACT_TYPE.install,
      annotations: { [ANNOTATION.refName]: spec.tag ?? TAG },
    },
  ];
  const referrer = (type: string, blob: Buffer, title: string, editor: ((m: Doc, i: number) => void) | undefined, i: number) => {
    put(blob);
    const manifest = artifact(type, MEDIA_TYPE.layerTar, blob, title, installRef);
    editor?.(manifest, i);
    const ref = put(json(manifest));
    manifests.push({ mediaType: MEDIA_TYPE.imageManifest, ...ref, artifactType: type });
    return ref.digest;
  };
  const signatureDigests = spec.signatures.map((sig, i) => referrer(ARTIFACT_TYPE.signature, sig, TITLE.signature, spec.edit?.signature, i));
  const certificateDigests = spec.certificates.map((cert, i) => referrer(ARTIFACT_TYPE.certificate, cert, TITLE.certificate, spec.edit?.certificate, i));
  for (const image of spec.images) {
    put(image.config);
    put(image.layer);
    put(image.manifest);
    manifests.push({
      mediaType: MEDIA_TYPE.imageManifest,
      digest: image.digest,
      size: image.size,
      annotations: { [ANNOTATION.refName]: image.digest.slice('sha256:'.length) },
    });
  }
  const index: Doc = { schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests };
  spec.edit?.index?.(index);
  files.set('index.json', json(index));
  return { files, installManifestDigest: installRef.digest, installDigest: installBlob.digest, signatureDigests, certificateDigests };
}

export function writeLayout(dir: string, layout: Layout): string {
  for (const [relPath, bytes] of layout.files) {
    mkdirSync(dirname(join(dir, relPath)), { recursive: true });
    writeFileSync(join(dir, relPath), bytes);
  }
  return dir;
}

/** A copy of `bytes` with the byte at `offset` (negative: from the end) inverted. */
export function flipByte(bytes: Buffer, offset: number): Buffer {
  const copy = Buffer.from(bytes);
  const at = offset < 0 ? copy.length + offset : offset;
  copy[at] = copy[at]! ^ 0xff;
  return copy;
}

/** A signed layout's parts: install.json (from `install`) signed by `signer`, with its certificate. */
export function signedSpec(signer: Signer, images: ImageFixture[], install: InstallFile = makeInstall(images)): LayoutSpec {
  const installBytes = Buffer.from(`${JSON.stringify(install, null, 2)}\n`);
  return { installBytes, signatures: [signBytes(installBytes, signer.keyPem)], certificates: [signer.certPem], images };
}
