/**
 * Signed install manifests for tests, made quickly with mosb's own code (no bundle needed):
 * a keyset (openssl), tiny source OCI images (a config and one tar.gz layer, or layers given as
 * bytes), and a published layout. The boot-side verifier's tests start from `publishFixture`
 * and tamper with what it returns.
 *
 * ```ts
 * const fx = await publishFixture({ dir, algorithm: 'ecdsa-p256', targets: [{ service_name: 'web' }] });
 * fx.layoutDir, fx.tag, fx.caCertPath, fx.caSpkiDer, fx.productUuid, fx.artifacts.signatureBlob …
 * ```
 *
 * Needs `openssl` and GNU `tar` (both in Debian's base); no root.
 */
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import YAML from 'yaml';
import { ANNOTATION, ARTIFACT_TYPE, MEDIA_TYPE } from '../../init/trust/formats.ts';
import { addProduct, createKeyset, type Validity } from '../../mosb/keyset.ts';
import type { KeyAlgorithm } from '../../mosb/openssl.ts';
import { type PublishResult, publishManifest } from '../../mosb/publish.ts';

export type { KeyAlgorithm, Validity };

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const json = (value: unknown) => Buffer.from(JSON.stringify(value));

/** `<layout>/blobs/sha256/<hex>` for a digest. */
export function blobPath(layoutDir: string, digest: string): string {
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new Error(`not a digest: ${digest}`);
  return path.join(layoutDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

export interface IndexEntry {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export function readIndex(layoutDir: string): { schemaVersion: number; mediaType?: string; manifests: IndexEntry[] } {
  return JSON.parse(readFileSync(path.join(layoutDir, 'index.json'), 'utf8'));
}

export function readBlobJson<T = any>(layoutDir: string, digest: string): T {
  return JSON.parse(readFileSync(blobPath(layoutDir, digest), 'utf8')) as T;
}

// ---------------------------------------------------------------------------------------------
// Source images

export interface FixtureLayer {
  mediaType: string;
  data: Buffer;
  annotations?: Record<string, string>;
}

export interface SourceImageOptions {
  /** The layout directory to create (or add a tag to). */
  layoutDir: string;
  tag?: string;
  /** Files of the image's one tar.gz layer, path → contents (default: /hello). */
  files?: Record<string, string | Buffer>;
  /** Layers as bytes instead of `files` (a squashfs with a verity annotation, say). */
  layers?: FixtureLayer[];
  entrypoint?: string[];
}

export interface SourceImage {
  layoutDir: string;
  tag: string;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layerDigests: string[];
}

/** A tar of `files`, made by GNU tar with fixed owners, modes and times (same input, same bytes). */
export function makeTar(files: Record<string, string | Buffer>, scratch: string): Buffer {
  const root = path.join(scratch, 'rootfs');
  mkdirSync(root, { recursive: true });
  for (const [name, contents] of Object.entries(files)) {
    const file = path.join(root, name.replace(/^\/+/, ''));
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, contents, { mode: 0o755 });
  }
  return execFileSync(
    'tar',
    ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--mode=u=rwX,go=rX', '--format=gnu', '-C', root, '-cf', '-', '.'],
    { maxBuffer: 64 << 20 },
  );
}

/** Writes a one-image OCI layout (or adds a tag to one): config + layers + manifest + index.json. */
export function makeSourceImage(options: SourceImageOptions): SourceImage {
  const tag = options.tag ?? 'latest';
  const blobs = path.join(options.layoutDir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const put = (bytes: Buffer) => {
    const digest = sha256(bytes);
    writeFileSync(blobPath(options.layoutDir, digest), bytes);
    return digest;
  };

  let layers: FixtureLayer[];
  let diffIds: string[];
  if (options.layers) {
    layers = options.layers;
    diffIds = layers.map((layer) => sha256(layer.data));
  } else {
    const scratch = mkdtempSync(path.join(os.tmpdir(), 'mosb-fixture-'));
    let tar: Buffer;
    try {
      tar = makeTar(options.files ?? { '/hello': '#!/bin/sh\necho hello\n' }, scratch);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
    layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', data: gzipSync(tar, { level: 9 }) }];
    diffIds = [sha256(tar)];
  }
  const layerDescriptors = layers.map((layer) => ({
    mediaType: layer.mediaType,
    digest: put(layer.data),
    size: layer.data.length,
    ...(layer.annotations ? { annotations: layer.annotations } : {}),
  }));
  const config = json({
    created: '1970-01-01T00:00:00Z',
    architecture: 'amd64',
    os: 'linux',
    config: { Entrypoint: options.entrypoint ?? ['/hello'], Env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map(() => ({ created: '1970-01-01T00:00:00Z', created_by: 'manifest-fixtures' })),
  });
  const configDigest = put(config);
  const manifest = json({
    schemaVersion: 2,
    mediaType: MEDIA_TYPE.imageManifest,
    config: { mediaType: MEDIA_TYPE.imageConfig, digest: configDigest, size: config.length },
    layers: layerDescriptors,
  });
  const manifestDigest = put(manifest);

  writeFileSync(path.join(options.layoutDir, 'oci-layout'), json({ imageLayoutVersion: '1.0.0' }));
  const indexFile = path.join(options.layoutDir, 'index.json');
  let manifests: IndexEntry[] = [];
  try {
    manifests = readIndex(options.layoutDir).manifests.filter((entry) => entry.annotations?.[ANNOTATION.refName] !== tag);
  } catch {
    // A new layout.
  }
  manifests.push({ mediaType: MEDIA_TYPE.imageManifest, digest: manifestDigest, size: manifest.length, annotations: { [ANNOTATION.refName]: tag } });
  writeFileSync(indexFile, json({ schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests }));
  return {
    layoutDir: options.layoutDir,
    tag,
    manifestDigest,
    manifestSize: manifest.length,
    configDigest,
    layerDigests: layerDescriptors.map((layer) => layer.digest),
  };
}

// ---------------------------------------------------------------------------------------------
// Keysets

export interface KeysetFixture {
  keysDir: string;
  keyset: string;
  product: string;
  productUuid: string;
  algorithm: KeyAlgorithm;
  caCertPath: string;
  caKeyPath: string;
  /** The manifest CA's public key, SubjectPublicKeyInfo DER: what the TPM holds as trust root. */
  caSpkiDer: Buffer;
  productCertPath: string;
  productKeyPath: string;
}

export interface KeysetFixtureOptions {
  /** Keys go to `<dir>/keys` unless `keysDir` is given. */
  dir: string;
  keysDir?: string;
  keyset?: string;
  product?: string;
  algorithm?: KeyAlgorithm;
  /** The product certificate's validity (explicit dates make expired or future certificates). */
  validity?: Validity;
}

/** A new keyset with one product (or, if the keyset exists, a new product in it). */
export async function makeKeysetFixture(options: KeysetFixtureOptions): Promise<KeysetFixture> {
  const keysDir = options.keysDir ?? path.join(options.dir, 'keys');
  const keyset = options.keyset ?? 'test';
  const product = options.product ?? 'demo';
  const algorithm = options.algorithm ?? 'ecdsa-p256';
  let created;
  try {
    created = (await createKeyset({ keysDir, name: keyset, algorithm, products: [product], validity: options.validity })).products[0]!;
  } catch (error) {
    if ((error as { code?: string }).code !== 'E_KEYSET_EXISTS') throw error;
    created = await addProduct({ keysDir, keyset, product, algorithm, validity: options.validity });
  }
  const caDir = path.join(keysDir, keyset, 'manifest-ca');
  const caCertPath = path.join(caDir, 'cert.pem');
  return {
    keysDir,
    keyset,
    product,
    productUuid: created.uuid,
    algorithm,
    caCertPath,
    caKeyPath: path.join(caDir, 'privkey.pem'),
    caSpkiDer: caSpkiDer(caCertPath),
    productCertPath: created.paths.cert,
    productKeyPath: created.paths.key,
  };
}

export function caSpkiDer(caCertPath: string): Buffer {
  return new X509Certificate(readFileSync(caCertPath)).publicKey.export({ type: 'spki', format: 'der' });
}

// ---------------------------------------------------------------------------------------------
// Published layouts

export interface FixtureTarget {
  service_name: string;
  service_type?: 'hostfs' | 'container' | 'fs-only';
  version?: string;
  /** Default: the service name for containers, none otherwise. */
  nsgroup?: string;
  network?: { type: 'host' | 'none' | 'simple'; ipv4?: string; ipv6?: string; ports?: { host: number; container: number }[] };
  /** The image (see `SourceImageOptions`). */
  files?: Record<string, string | Buffer>;
  layers?: FixtureLayer[];
  entrypoint?: string[];
  /** More manifest.yaml fields for this target (storage, digest, size, …), written as given. */
  extra?: Record<string, unknown>;
}

export interface PublishFixtureOptions {
  /** A fresh directory; keys, sources, manifest.yaml and the layout go under it. */
  dir: string;
  algorithm?: KeyAlgorithm;
  keyset?: string;
  product?: string;
  /** Sign with this keyset instead of making one (another product, another CA, …). */
  keys?: KeysetFixture;
  targets?: FixtureTarget[];
  /** The install artifact's tag (default `latest`). */
  tag?: string;
  /** Output layout directory (default `<dir>/layout`); publishing twice into one adds to it. */
  layoutDir?: string;
  created?: string;
  /**
   * The product certificate's validity when the fixture makes the keyset. With explicit dates
   * the manifest is signed at their midpoint, so an expired or not-yet-valid certificate can
   * still sign (mosb itself refuses a certificate that is not valid when it signs).
   */
  validity?: Validity;
  /** When the signing certificate must be valid (default: now, or the midpoint above). */
  signingTime?: Date;
  /** Top-level manifest.yaml fields to add or override (storage, update_type, product …). */
  manifest?: Record<string, unknown>;
}

export interface PublishedArtifacts {
  /** install.json as signed, in the layout. */
  installBlob: string;
  installManifest: string;
  signatureBlob: string;
  signatureManifest: string;
  certificateBlob: string;
  certificateManifest: string;
}

export interface PublishedFixture {
  layoutDir: string;
  tag: string;
  caCertPath: string;
  caSpkiDer: Buffer;
  productUuid: string;
  keys: KeysetFixture;
  manifestPath: string;
  sources: Record<string, SourceImage>;
  result: PublishResult;
  /** Paths of the blobs published for `tag`. */
  artifacts: PublishedArtifacts;
}

export const DEFAULT_FIXTURE_TARGETS: FixtureTarget[] = [{ service_name: 'web' }];
export const FIXTURE_CREATED = '2024-01-01T00:00:00Z';

/** A keyset, one source image per target, manifest.yaml, and `mosb manifest publish` into a layout. */
export async function publishFixture(options: PublishFixtureOptions): Promise<PublishedFixture> {
  const { dir } = options;
  mkdirSync(dir, { recursive: true });
  const keys =
    options.keys ??
    (await makeKeysetFixture({ dir, keyset: options.keyset, product: options.product, algorithm: options.algorithm, validity: options.validity }));
  const tag = options.tag ?? 'latest';
  const layoutDir = options.layoutDir ?? path.join(dir, 'layout');
  const targets = options.targets ?? DEFAULT_FIXTURE_TARGETS;

  const sources: Record<string, SourceImage> = {};
  const yamlTargets = targets.map((target) => {
    const sourceDir = path.join(dir, 'sources', target.service_name);
    sources[target.service_name] = makeSourceImage({ layoutDir: sourceDir, tag: 'v1', files: target.files, layers: target.layers, entrypoint: target.entrypoint });
    const serviceType = target.service_type ?? 'container';
    return {
      service_name: target.service_name,
      // Relative to manifest.yaml, as users write it.
      source: `oci:sources/${target.service_name}:v1`,
      version: target.version ?? '1.0.0',
      service_type: serviceType,
      nsgroup: target.nsgroup ?? (serviceType === 'container' ? target.service_name : 'none'),
      network: target.network ?? { type: 'none' },
      ...target.extra,
    };
  });
  const manifestPath = path.join(dir, 'manifest.yaml');
  writeFileSync(manifestPath, YAML.stringify({ version: 1, product: keys.productUuid, update_type: 'complete', targets: yamlTargets, ...options.manifest }));

  const result = await publishManifest({
    manifestPath,
    keysDir: keys.keysDir,
    keyset: keys.keyset,
    product: keys.product,
    outDir: layoutDir,
    tag,
    created: options.created ?? FIXTURE_CREATED,
    now: options.signingTime ?? midpoint(options.keys ? undefined : options.validity),
  });
  const installManifest = readBlobJson(layoutDir, result.install.digest);
  const signatureManifest = readBlobJson(layoutDir, result.signatureArtifact.digest);
  const certificateManifest = readBlobJson(layoutDir, result.certificateArtifact.digest);
  return {
    layoutDir,
    tag,
    caCertPath: keys.caCertPath,
    caSpkiDer: keys.caSpkiDer,
    productUuid: keys.productUuid,
    keys,
    manifestPath,
    sources,
    result,
    artifacts: {
      installBlob: blobPath(layoutDir, installManifest.layers[0].digest),
      installManifest: blobPath(layoutDir, result.install.digest),
      signatureBlob: blobPath(layoutDir, signatureManifest.layers[0].digest),
      signatureManifest: blobPath(layoutDir, result.signatureArtifact.digest),
      certificateBlob: blobPath(layoutDir, certificateManifest.layers[0].digest),
      certificateManifest: blobPath(layoutDir, result.certificateArtifact.digest),
    },
  };
}

function midpoint(validity: Validity | undefined): Date | undefined {
  if (!validity?.notBefore || !validity.notAfter) return undefined;
  return new Date((validity.notBefore.getTime() + validity.notAfter.getTime()) / 2);
}

/** The index.json entries a verifier reads for `tag`: the install artifact and its referrers. */
export function findPublished(layoutDir: string, tag: string): { install: IndexEntry; signatures: IndexEntry[]; certificates: IndexEntry[] } {
  const { manifests } = readIndex(layoutDir);
  const install = manifests.find((entry) => entry.annotations?.[ANNOTATION.refName] === tag);
  if (!install) throw new Error(`no ${tag} in ${layoutDir}`);
  const referrers = (type: string) =>
    manifests.filter((entry) => entry.artifactType === type && readBlobJson(layoutDir, entry.digest).subject?.digest === install.digest);
  return { install, signatures: referrers(ARTIFACT_TYPE.signature), certificates: referrers(ARTIFACT_TYPE.certificate) };
}
