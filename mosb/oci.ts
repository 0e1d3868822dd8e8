/**
 * The OCI side of publishing, as pure functions: the three artifact manifests, and the new
 * index.json computed from the old one.
 *
 * The layout (docs/trust.md has the full picture):
 * - the install artifact: an image manifest with `artifactType: application/vnd.machine.install`,
 *   the empty config, one layer (`application/vnd.machine.install`, title `install.json`) and
 *   an `org.opencontainers.image.created` annotation. It is tagged TAG in index.json.
 *   (project-machine titled that layer `index.json`, a misnomer; it is `install.json` here.)
 * - the signature and the certificate: image manifests with `artifactType`
 *   `application/vnd.machine.signature` / `.pubkeycrt`, the empty config, one
 *   `application/vnd.oci.image.layer.v1.tar` layer titled `install.json.signed` / `cert.pem`,
 *   and `subject` = the install artifact's descriptor. An OCI layout has no referrers API, so
 *   they are listed in index.json (untagged, with their `artifactType`), where a verifier finds
 *   them; it must still check each one's `subject`.
 * - each target's image manifest, tagged with its digest's 64 hex digits (project-machine's
 *   local store used the same names, with the `sha256:` prefix that OCI's ref-name grammar
 *   does not allow).
 */
import { createHash } from 'node:crypto';
import {
  ANNOTATION,
  ARTIFACT_TYPE,
  DIGEST_PATTERN,
  EMPTY_DESCRIPTOR,
  MAX_BYTES,
  MEDIA_TYPE,
  TITLE,
} from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  data?: string;
  [other: string]: unknown;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  [other: string]: unknown;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
  [other: string]: unknown;
}

export const OCI_LAYOUT_FILE = { imageLayoutVersion: '1.0.0' } as const;

/** The bytes of the OCI empty blob (`{}`), the config of every artifact. */
export const EMPTY_BLOB = Buffer.from('{}');

export const sha256Digest = (bytes: Uint8Array): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** `sha256:<hex>` → `<hex>`: the blob's file name, and the ref name of a service image. */
export function digestHex(digest: string): string {
  if (!DIGEST_PATTERN.test(digest)) throw new MosbError('E_LAYOUT', `invalid digest ${JSON.stringify(digest)}`);
  return digest.slice('sha256:'.length);
}

/** JSON as written into the layout: compact, keys in the order the objects were built. */
export const encodeJson = (value: unknown): Buffer => Buffer.from(JSON.stringify(value), 'utf8');

export interface Blob {
  digest: string;
  bytes: Buffer;
}

export interface ArtifactPlan {
  /** Every blob to write (contents and manifests), each once. */
  blobs: Blob[];
  /** index.json descriptors: the install artifact (untagged here) and its two referrers. */
  install: Descriptor;
  signature: Descriptor;
  certificate: Descriptor;
}

/**
 * The three artifacts for one install.json, its signature and its certificate (PEM). `created`
 * is the RFC 3339 time put in each manifest's `created` annotation: the only input that would
 * otherwise make two publishes of the same files differ.
 */
export function planArtifacts(input: { installJson: Buffer; signature: Buffer; certificate: Buffer; created: string }): ArtifactPlan {
  if (input.signature.length > MAX_BYTES.signature) throw new MosbError('E_TOO_LARGE', `the signature is ${input.signature.length} bytes; the boot side accepts at most ${MAX_BYTES.signature}`);
  if (input.certificate.length > MAX_BYTES.certificate) throw new MosbError('E_TOO_LARGE', `the certificate is ${input.certificate.length} bytes; the boot side accepts at most ${MAX_BYTES.certificate}`);
  const blobs = new Map<string, Buffer>();
  const add = (bytes: Buffer): string => {
    const digest = sha256Digest(bytes);
    blobs.set(digest, bytes);
    return digest;
  };
  add(EMPTY_BLOB);
  const created = { [ANNOTATION.created]: input.created };

  const layer = (mediaType: string, bytes: Buffer, title: string): Descriptor => ({
    mediaType,
    digest: add(bytes),
    size: bytes.length,
    annotations: { [ANNOTATION.title]: title },
  });
  const manifestDescriptor = (manifest: ImageManifest, artifactType: string): Descriptor => {
    const bytes = encodeJson(manifest);
    if (bytes.length > MAX_BYTES.manifest) throw new MosbError('E_TOO_LARGE', `an artifact manifest would be ${bytes.length} bytes`);
    return { mediaType: MEDIA_TYPE.imageManifest, digest: add(bytes), size: bytes.length, artifactType };
  };

  const install = manifestDescriptor(
    {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.imageManifest,
      artifactType: ARTIFACT_TYPE.install,
      config: { ...EMPTY_DESCRIPTOR },
      layers: [layer(ARTIFACT_TYPE.install, input.installJson, TITLE.install)],
      annotations: created,
    },
    ARTIFACT_TYPE.install,
  );
  const subject: Descriptor = { mediaType: install.mediaType, digest: install.digest, size: install.size };
  const referrer = (artifactType: string, bytes: Buffer, title: string) =>
    manifestDescriptor(
      {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.imageManifest,
        artifactType,
        config: { ...EMPTY_DESCRIPTOR },
        layers: [layer(MEDIA_TYPE.layerTar, bytes, title)],
        subject,
        annotations: created,
      },
      artifactType,
    );
  const signature = referrer(ARTIFACT_TYPE.signature, input.signature, TITLE.signature);
  const certificate = referrer(ARTIFACT_TYPE.certificate, input.certificate, TITLE.certificate);
  return { blobs: [...blobs].map(([digest, bytes]) => ({ digest, bytes })), install, signature, certificate };
}

/** An index.json descriptor for a service image: its manifest, tagged with its digest's hex. */
export function imageIndexEntry(manifest: { digest: string; size: number }): Descriptor {
  return { mediaType: MEDIA_TYPE.imageManifest, digest: manifest.digest, size: manifest.size, annotations: { [ANNOTATION.refName]: digestHex(manifest.digest) } };
}

export const refNameOf = (descriptor: Descriptor): string | undefined => descriptor.annotations?.[ANNOTATION.refName];

const REFERRER_TYPES: readonly string[] = [ARTIFACT_TYPE.signature, ARTIFACT_TYPE.certificate];

/**
 * Entries of index.json that may be referrers written by mosb: untagged manifests whose
 * descriptor says signature or certificate. The caller reads their `subject` for
 * `computeIndexUpdate`.
 */
export function referrerCandidates(index: ImageIndex): Descriptor[] {
  return index.manifests.filter((entry) => refNameOf(entry) === undefined && entry.artifactType !== undefined && REFERRER_TYPES.includes(entry.artifactType));
}

export interface IndexUpdate {
  tag: string;
  install: Descriptor;
  referrers: Descriptor[];
  images: Descriptor[];
}

/**
 * The new index.json: `tag` now names `install`, with exactly `referrers` as its signature and
 * certificate; each service image is present under its hex name.
 *
 * - The entry that held `tag` before is dropped, and so are its referrers unless another tag
 *   still names the same install manifest. Referrers of the new install manifest are replaced
 *   too: two signature artifacts for one subject would be refused by the verifier.
 * - Every other entry stays, in its place; new entries follow, images first. Blobs are never
 *   removed here (another tag may share them); a garbage collection is a separate matter.
 * - `subjects` maps a referrer candidate's digest (see `referrerCandidates`) to its subject's.
 */
export function computeIndexUpdate(index: ImageIndex, update: IndexUpdate, subjects: ReadonlyMap<string, string>): ImageIndex {
  const previous = index.manifests.filter((entry) => refNameOf(entry) === update.tag);
  let kept = index.manifests.filter((entry) => refNameOf(entry) !== update.tag);
  const stillTagged = new Set(kept.filter((entry) => refNameOf(entry) !== undefined).map((entry) => entry.digest));
  const orphaned = new Set([update.install.digest, ...previous.map((entry) => entry.digest).filter((digest) => !stillTagged.has(digest))]);
  const candidates = new Set(referrerCandidates(index));
  kept = kept.filter((entry) => {
    if (!candidates.has(entry)) return true;
    const subject = subjects.get(entry.digest);
    return subject === undefined || !orphaned.has(subject);
  });

  const added: Descriptor[] = [];
  const seenImages = new Set<string>();
  for (const image of update.images) {
    const name = refNameOf(image);
    if (name === undefined) throw new MosbError('E_LAYOUT', `service image ${image.digest} has no ref name`);
    if (seenImages.has(name)) continue;
    seenImages.add(name);
    const existing = kept.filter((entry) => refNameOf(entry) === name);
    const conflicting = existing.find((entry) => entry.digest !== image.digest);
    if (conflicting) throw new MosbError('E_LAYOUT', `index.json already tags ${name} as ${conflicting.digest}; refusing to add ${image.digest} under that name`);
    if (existing.length === 0) added.push(image);
  }
  const install: Descriptor = { ...update.install, annotations: { ...update.install.annotations, [ANNOTATION.refName]: update.tag } };
  return { ...index, schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests: [...kept, ...added, install, ...update.referrers] };
}

/**
 * index.json with `tag` naming `manifest` (an image, as `mosb image squash` writes it): the entry
 * that held the tag before is dropped, everything else stays. A tag that names an install
 * artifact is refused: its signature and certificate would be left pointing at nothing tagged.
 */
export function tagImageInIndex(index: ImageIndex, tag: string, manifest: { digest: string; size: number }): ImageIndex {
  const previous = index.manifests.filter((entry) => refNameOf(entry) === tag);
  const artifact = previous.find((entry) => entry.artifactType !== undefined);
  if (artifact) throw new MosbError('E_LAYOUT', `tag ${tag} names an ${artifact.artifactType} artifact (${artifact.digest}); refusing to re-tag it as an image`);
  const entry: Descriptor = { mediaType: MEDIA_TYPE.imageManifest, digest: manifest.digest, size: manifest.size, annotations: { [ANNOTATION.refName]: tag } };
  return { ...index, schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests: [...index.manifests.filter((e) => refNameOf(e) !== tag), entry] };
}

export const emptyIndex = (): ImageIndex => ({ schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests: [] });

/** Checks an index.json (an existing output layout's, or a source's). */
export function parseImageIndex(bytes: Buffer, what: string, code: 'E_LAYOUT' | 'E_SOURCE' = 'E_LAYOUT'): ImageIndex {
  const value = parseJson(bytes, what, code);
  if (!isRecord(value) || value.schemaVersion !== 2 || !Array.isArray(value.manifests)) {
    throw new MosbError(code, `${what}: not an OCI image index (schemaVersion 2 with a manifests list)`);
  }
  if (value.mediaType !== undefined && value.mediaType !== MEDIA_TYPE.imageIndex) throw new MosbError(code, `${what}: mediaType is ${String(value.mediaType)}`);
  value.manifests.forEach((entry, i) => checkDescriptor(entry, `${what}: manifests[${i}]`, code));
  return value as ImageIndex;
}

/** Checks an image manifest from a source layout: the fields mosb follows must be sound. */
export function parseImageManifest(bytes: Buffer, what: string): ImageManifest {
  const value = parseJson(bytes, what, 'E_SOURCE');
  if (!isRecord(value) || value.schemaVersion !== 2) throw new MosbError('E_SOURCE', `${what}: not an OCI image manifest (schemaVersion 2)`);
  if (value.mediaType !== undefined && value.mediaType !== MEDIA_TYPE.imageManifest) {
    throw new MosbError('E_SOURCE', `${what}: mediaType is ${String(value.mediaType)}, expected ${MEDIA_TYPE.imageManifest}`);
  }
  checkDescriptor(value.config, `${what}: config`, 'E_SOURCE');
  if (!Array.isArray(value.layers)) throw new MosbError('E_SOURCE', `${what}: layers is not a list`);
  value.layers.forEach((layer, i) => checkDescriptor(layer, `${what}: layers[${i}]`, 'E_SOURCE'));
  return value as ImageManifest;
}

function checkDescriptor(value: unknown, what: string, code: 'E_LAYOUT' | 'E_SOURCE'): asserts value is Descriptor {
  if (!isRecord(value)) throw new MosbError(code, `${what}: not a descriptor`);
  if (typeof value.mediaType !== 'string') throw new MosbError(code, `${what}: mediaType missing`);
  if (typeof value.digest !== 'string' || !DIGEST_PATTERN.test(value.digest)) throw new MosbError(code, `${what}: digest ${JSON.stringify(value.digest)} is not sha256:<64 hex digits>`);
  if (typeof value.size !== 'number' || !Number.isSafeInteger(value.size) || value.size < 0) throw new MosbError(code, `${what}: invalid size`);
  if (value.annotations !== undefined && (!isRecord(value.annotations) || Object.values(value.annotations).some((v) => typeof v !== 'string'))) {
    throw new MosbError(code, `${what}: annotations must map strings to strings`);
  }
}

function parseJson(bytes: Buffer, what: string, code: 'E_LAYOUT' | 'E_SOURCE'): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new MosbError(code, `${what}: invalid JSON (${error instanceof Error ? error.message : String(error)})`, { cause: error });
  }
}

const isRecord = (value: unknown): value is Record<string, unknown> => value !== null && typeof value === 'object' && !Array.isArray(value);
