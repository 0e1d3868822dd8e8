/**
 * Boot-side verification of a signed install layout (issue 4, "Boot" step 2): an OCI image
 * layout holding the install artifact (install.json), its signature and certificate artifacts
 * (linked to it by `subject`) and the service image manifests. Pure over a `LayoutReader`: it
 * decides, it starts nothing, and what it returns is all a later phase may use.
 *
 * Order, each step refusing before the next reads anything it would need:
 *  1. the trust root (the manifest CA's SPKI) parses;
 *  2. `oci-layout` and `index.json`: strict schemas (unknown fields refused, digests
 *     `sha256:<64 hex>`, ref names and titles path-safe), sizes capped before reading;
 *  3. the install artifact, by tag (or the only tagged non-image entry), and its install.json
 *     blob; every blob: descriptor size within its MAX_BYTES limit, the file's size equal to the
 *     descriptor's, its sha256 equal to the digest;
 *  4. the referrers of the install manifest: exactly one signature and one certificate;
 *  5. the certificate: signed by the trust root, valid at `now`, a non-CA code-signing leaf
 *     with digitalSignature, CN `manifest PRODUCT:<product>`, a P-256 or RSA ≥ 2048 key;
 *  6. the signature over install.json's exact bytes (ECDSA P-256/SHA-256 DER, or RSA PKCS#1
 *     v1.5/SHA-256);
 *  7. only then install.json is parsed (install-schema.ts) and its product compared with the
 *     certificate's;
 *  8. every target's image manifest blob: present, of the signed size and digest.
 *
 * Any failure returns `{ ok: false, code, message }` and no targets; nothing from the layout may
 * then run.
 */
import { createHash, constants as cryptoConstants, verify as cryptoVerify, X509Certificate, type KeyObject } from 'node:crypto';
import * as v from 'valibot';
import {
  ANNOTATION,
  ARTIFACT_TYPE,
  DIGEST_PATTERN,
  EMPTY_DESCRIPTOR,
  MAX_BYTES,
  MEDIA_TYPE,
  productCommonName,
  REF_NAME_PATTERN,
  type InstallFile,
  type InstallTarget,
} from './formats.ts';
import { describeIssue, parseInstallFile } from './install-schema.ts';
import { blobPath, LayoutReadError, type LayoutReader } from './layout-reader.ts';
import { parseTrustRoot, TrustRootError } from './trust-root.ts';
import { DerError, OID, parseCertificateDer, decodeCertificatePem, type CertificateFacts } from './x509.ts';

export type VerifyErrorCode =
  /** The trust root given is not a DER SubjectPublicKeyInfo. */
  | 'E_TRUST_ROOT_INVALID'
  /** oci-layout, index.json or an artifact manifest is malformed, has unknown fields, or is inconsistent. */
  | 'E_LAYOUT_INVALID'
  /** A ref name, title or path is not path-safe, or a path is not one a layout holds. */
  | 'E_NAME_INVALID'
  /** A digest is not `sha256:<64 lowercase hex>`. */
  | 'E_DIGEST_INVALID'
  /** A file or descriptor exceeds its MAX_BYTES limit (refused before reading it). */
  | 'E_TOO_LARGE'
  /** A blob a descriptor names is not in the layout. */
  | 'E_BLOB_MISSING'
  /** A blob's size differs from its descriptor's. */
  | 'E_BLOB_SIZE'
  /** A blob's sha256 differs from its descriptor's digest. */
  | 'E_BLOB_DIGEST'
  /** No install artifact under the tag (or none at all). */
  | 'E_INSTALL_NOT_FOUND'
  /** No tag given and the layout holds more than one install artifact. */
  | 'E_INSTALL_AMBIGUOUS'
  /** No signature artifact refers to the install artifact. */
  | 'E_SIGNATURE_MISSING'
  /** No certificate artifact refers to the install artifact. */
  | 'E_CERTIFICATE_MISSING'
  /** More than one signature artifact refers to it. */
  | 'E_SIGNATURE_CONFLICT'
  /** More than one certificate artifact refers to it. */
  | 'E_CERTIFICATE_CONFLICT'
  /** cert.pem is not exactly one well-formed v3 certificate. */
  | 'E_CERT_INVALID'
  /** The certificate is not signed by the trust root (or with a refused algorithm). */
  | 'E_CERT_UNTRUSTED'
  /** `now` is after the certificate's notAfter. */
  | 'E_CERT_EXPIRED'
  /** `now` is before the certificate's notBefore. */
  | 'E_CERT_NOT_YET_VALID'
  /** Not a manifest-signing leaf: CA flag, keyUsage, EKU, CN form or an unknown critical extension. */
  | 'E_CERT_USAGE'
  /** The certificate's key is neither EC P-256 nor RSA 2048-8192. */
  | 'E_KEY_UNSUPPORTED'
  /** install.json's product is not the certificate's. */
  | 'E_PRODUCT_MISMATCH'
  /** The signature does not verify install.json's bytes with the certificate's key. */
  | 'E_SIGNATURE_INVALID'
  /** install.json (signed) is not valid JSON or fails its schema. */
  | 'E_MANIFEST_INVALID'
  /** A target's image manifest blob is not in the layout. */
  | 'E_TARGET_MISSING'
  /** A target's image manifest blob has another size than the signed one. */
  | 'E_TARGET_SIZE'
  /** A target's image manifest blob has another digest than the signed one. */
  | 'E_TARGET_DIGEST'
  /** Reading the layout failed (I/O error). */
  | 'E_LAYOUT_IO'
  /** An unforeseen error (a bug): refused all the same. */
  | 'E_VERIFY_INTERNAL';

export interface VerifyInstallOptions {
  reader: LayoutReader;
  /** The manifest CA's public key, DER SubjectPublicKeyInfo (from the TPM). */
  trustRoot: Buffer;
  /** The install artifact's tag; default: the layout's only tagged install artifact. */
  tag?: string;
  now: Date;
}

export interface VerifiedCertificate {
  /** `CN=manifest PRODUCT:…` (attributes in order, comma-separated). */
  subject: string;
  commonName: string;
  product: string;
  issuer: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 fingerprint as node:crypto prints it (`AB:CD:…`). */
  fingerprint256: string;
  keyType: 'ec-p256' | `rsa-${number}`;
  /** The certificate blob's digest in the layout. */
  digest: string;
}

export interface VerifiedTarget {
  target: InstallTarget;
  manifestDigest: string;
  manifestBytes: Buffer;
  /** The image config, digest-verified. */
  configBytes: Buffer;
  /**
   * The layers, each present with its declared size. Their content is verified where it is
   * used: squashfs layers through dm-verity with the signed root hash (mounts), not hashed
   * whole at every boot.
   */
  layers: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[];
}

export interface VerifiedInstall {
  ok: true;
  /** The install artifact's tag (ref name). */
  tag: string;
  /** Digest of the install artifact's manifest. */
  installManifestDigest: string;
  install: InstallFile;
  installBytes: Buffer;
  /** Digest of install.json (the blob that was signed). */
  installDigest: string;
  signatureAlgorithm: 'ecdsa-p256-sha256' | 'rsa-pkcs1v15-sha256';
  signatureDigest: string;
  certificate: VerifiedCertificate;
  targets: VerifiedTarget[];
}

export interface VerifyFailure {
  ok: false;
  code: VerifyErrorCode;
  message: string;
}

export type VerifyInstallResult = VerifiedInstall | VerifyFailure;

/** How many untagged manifests (referrer candidates) a layout may hold: each is read. */
export const MAX_REFERRER_CANDIDATES = 64;
/** RSA moduli accepted for the signing key. */
export const RSA_MIN_BITS = 2048;
export const RSA_MAX_BITS = 8192;

/** Signature algorithms accepted on the certificate itself (the CA's signature). */
const CERT_SIGNATURE_ALGORITHMS: Readonly<Record<string, string>> = {
  '1.2.840.10045.4.3.2': 'ecdsa-with-SHA256',
  '1.2.840.10045.4.3.3': 'ecdsa-with-SHA384',
  '1.2.840.10045.4.3.4': 'ecdsa-with-SHA512',
  '1.2.840.113549.1.1.11': 'sha256WithRSAEncryption',
  '1.2.840.113549.1.1.12': 'sha384WithRSAEncryption',
  '1.2.840.113549.1.1.13': 'sha512WithRSAEncryption',
  '1.3.101.112': 'Ed25519',
};

/** Titles: a file name, never a path. */
export const TITLE_PATTERN = /^(?!.*\.\.)[^/\\\u0000-\u001f\u007f]{1,255}$/;
const IMAGE_REF_NAME = /^[0-9a-f]{64}$/;

class Refusal extends Error {
  constructor(
    readonly code: VerifyErrorCode,
    message: string,
  ) {
    super(message);
  }
}

// ── schemas of the layout's own files ───────────────────────────────────────────────────────

const Digest = v.pipe(v.string(), v.regex(DIGEST_PATTERN, 'expected sha256:<64 lowercase hex digits>'));
const Size = v.pipe(v.number(), v.integer('expected an integer size'), v.minValue(0, 'expected a size >= 0'), v.maxValue(Number.MAX_SAFE_INTEGER));

const Annotations = v.objectWithRest(
  {
    [ANNOTATION.refName]: v.optional(v.pipe(v.string(), v.regex(REF_NAME_PATTERN, 'expected a ref name of letters and digits joined by ".", "_", "-", "+"'))),
    [ANNOTATION.title]: v.optional(v.pipe(v.string(), v.regex(TITLE_PATTERN, 'expected a file name without "/", "\\" or ".."'))),
  },
  v.string(),
);

const Platform = v.strictObject({
  architecture: v.string(),
  os: v.string(),
  'os.version': v.optional(v.string()),
  'os.features': v.optional(v.array(v.string())),
  variant: v.optional(v.string()),
  features: v.optional(v.array(v.string())),
});

const IndexDescriptor = v.strictObject({
  mediaType: v.literal(MEDIA_TYPE.imageManifest, `expected an image manifest (${MEDIA_TYPE.imageManifest})`),
  digest: Digest,
  size: Size,
  artifactType: v.optional(v.string()),
  annotations: v.optional(Annotations),
  platform: v.optional(Platform),
});

const OciLayoutSchema = v.strictObject({ imageLayoutVersion: v.literal('1.0.0', 'expected imageLayoutVersion 1.0.0') });

const IndexSchema = v.strictObject({
  schemaVersion: v.literal(2, 'expected schemaVersion 2'),
  mediaType: v.optional(v.literal(MEDIA_TYPE.imageIndex, `expected ${MEDIA_TYPE.imageIndex}`)),
  manifests: v.array(IndexDescriptor),
  annotations: v.optional(Annotations),
});

const EmptyConfig = v.strictObject({
  mediaType: v.literal(EMPTY_DESCRIPTOR.mediaType, `expected ${EMPTY_DESCRIPTOR.mediaType}`),
  digest: v.pipe(Digest, v.check((d) => d === EMPTY_DESCRIPTOR.digest, 'expected the empty descriptor digest')),
  size: v.literal(EMPTY_DESCRIPTOR.size, `expected size ${EMPTY_DESCRIPTOR.size}`),
  data: v.optional(v.literal(EMPTY_DESCRIPTOR.data, `expected data ${EMPTY_DESCRIPTOR.data}`)),
});

const LayerDescriptor = v.strictObject({
  mediaType: v.string(),
  digest: Digest,
  size: Size,
  annotations: v.optional(Annotations),
});

const SubjectDescriptor = v.strictObject({
  mediaType: v.literal(MEDIA_TYPE.imageManifest, `expected ${MEDIA_TYPE.imageManifest}`),
  digest: Digest,
  size: Size,
  artifactType: v.optional(v.string()),
  annotations: v.optional(Annotations),
});

const ArtifactManifestSchema = v.strictObject({
  schemaVersion: v.literal(2, 'expected schemaVersion 2'),
  mediaType: v.literal(MEDIA_TYPE.imageManifest, `expected ${MEDIA_TYPE.imageManifest}`),
  artifactType: v.picklist(Object.values(ARTIFACT_TYPE), `expected one of ${Object.values(ARTIFACT_TYPE).join(', ')}`),
  config: EmptyConfig,
  layers: v.pipe(v.array(LayerDescriptor), v.length(1, 'expected exactly one layer')),
  subject: v.optional(SubjectDescriptor),
  annotations: v.optional(Annotations),
});

/**
 * A target's OCI image manifest. Its bytes are already proven by the signed digest; the schema
 * only makes sure what boot reads from it (config and layer descriptors) is well formed.
 * Unknown fields are allowed here, as the OCI spec requires of image manifests.
 */
const TargetManifestSchema = v.object({
  schemaVersion: v.literal(2, 'expected schemaVersion 2'),
  mediaType: v.optional(v.literal(MEDIA_TYPE.imageManifest, `expected ${MEDIA_TYPE.imageManifest}`)),
  config: LayerDescriptor,
  layers: v.pipe(v.array(LayerDescriptor), v.minLength(1, 'expected at least one layer'), v.maxLength(128, 'expected at most 128 layers')),
});

/** An image config is small JSON; anything bigger is refused unread. */
const MAX_CONFIG_BYTES = 1024 * 1024;

type IndexEntry = v.InferOutput<typeof IndexDescriptor>;
type ArtifactManifest = v.InferOutput<typeof ArtifactManifestSchema>;
type Descriptor = { digest: string; size: number };

/** The layer type each artifact's single layer must have. */
const LAYER_MEDIA_TYPE: Readonly<Record<ArtifactManifest['artifactType'], string>> = {
  [ARTIFACT_TYPE.install]: ARTIFACT_TYPE.install,
  [ARTIFACT_TYPE.signature]: MEDIA_TYPE.layerTar,
  [ARTIFACT_TYPE.certificate]: MEDIA_TYPE.layerTar,
};

// ── helpers ─────────────────────────────────────────────────────────────────────────────────

const short = (digest: string) => (DIGEST_PATTERN.test(digest) ? `${digest.slice(0, 19)}…` : JSON.stringify(digest.slice(0, 80)));
const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

function schemaRefusal(issues: readonly v.BaseIssue<unknown>[], what: string, fallback: VerifyErrorCode): Refusal {
  let code = fallback;
  for (const issue of issues) {
    if (issue.requirement === DIGEST_PATTERN) {
      code = 'E_DIGEST_INVALID';
      break;
    }
    if (issue.requirement === REF_NAME_PATTERN || issue.requirement === TITLE_PATTERN) {
      code = 'E_NAME_INVALID';
      break;
    }
  }
  const listed = issues.slice(0, 5).map(describeIssue);
  if (issues.length > listed.length) listed.push(`and ${issues.length - listed.length} more`);
  return new Refusal(code, `${what}: ${listed.join('; ')}`);
}

function parseJson(bytes: Buffer, what: string, code: VerifyErrorCode): unknown {
  try {
    // fatal: invalid UTF-8 is refused; ignoreBOM keeps a BOM, which JSON.parse then refuses.
    return JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch (error) {
    throw new Refusal(code, `${what} is not valid UTF-8 JSON: ${(error as Error).message}`);
  }
}

function validate<S extends v.GenericSchema>(schema: S, document: unknown, what: string, code: VerifyErrorCode): v.InferOutput<S> {
  const result = v.safeParse(schema, document);
  if (!result.success) throw schemaRefusal(result.issues, what, code);
  return result.output;
}

interface BlobCodes {
  missing: VerifyErrorCode;
  size: VerifyErrorCode;
  digest: VerifyErrorCode;
}
const BLOB: BlobCodes = { missing: 'E_BLOB_MISSING', size: 'E_BLOB_SIZE', digest: 'E_BLOB_DIGEST' };
const TARGET: BlobCodes = { missing: 'E_TARGET_MISSING', size: 'E_TARGET_SIZE', digest: 'E_TARGET_DIGEST' };

function readerRefusal(error: unknown, what: string, codes: Partial<Record<LayoutReadError['code'], VerifyErrorCode>> = {}): Refusal {
  if (error instanceof LayoutReadError) return new Refusal(codes[error.code] ?? error.code, `${what}: ${error.message}`);
  throw error;
}

/** A blob that is used later (and verified then): it must exist with its declared size. */
function checkBlobPresent(reader: LayoutReader, descriptor: Descriptor, what: string): void {
  const name = `${what} ${short(descriptor.digest)}`;
  let actual: number | null;
  try {
    actual = reader.size(blobPath(descriptor.digest));
  } catch (error) {
    throw readerRefusal(error, name);
  }
  if (actual === null) throw new Refusal('E_BLOB_MISSING', `${name} is missing from the layout`);
  if (actual !== descriptor.size) throw new Refusal('E_BLOB_SIZE', `${name} is ${actual} bytes, not the ${descriptor.size} its descriptor says`);
}

/** The top-level files (no descriptor): capped by `limit`, refused unread when larger. */
function readLayoutFile(reader: LayoutReader, relPath: 'oci-layout' | 'index.json', limit: number): Buffer {
  try {
    return reader.read(relPath, limit);
  } catch (error) {
    throw readerRefusal(error, relPath, { E_BLOB_MISSING: 'E_LAYOUT_INVALID' });
  }
}

/**
 * A blob a descriptor names: the descriptor's size within `limit`, the file's size equal to it
 * (checked before reading), then its sha256 equal to the digest. Never reads more than the
 * descriptor's size.
 */
function readBlob(reader: LayoutReader, descriptor: Descriptor, limit: number, what: string, codes: BlobCodes = BLOB): Buffer {
  const name = `${what} ${short(descriptor.digest)}`;
  if (descriptor.size > limit) {
    throw new Refusal('E_TOO_LARGE', `${name} is declared ${descriptor.size} bytes, more than the ${limit} allowed: not reading it`);
  }
  const path = blobPath(descriptor.digest);
  let actual: number | null;
  try {
    actual = reader.size(path);
  } catch (error) {
    throw readerRefusal(error, name, { E_BLOB_MISSING: codes.missing });
  }
  if (actual === null) throw new Refusal(codes.missing, `${name} is missing from the layout (${path})`);
  if (actual !== descriptor.size) {
    throw new Refusal(codes.size, `${name} has ${actual} bytes where ${descriptor.size} are expected: not reading it`);
  }
  let bytes: Buffer;
  try {
    bytes = reader.read(path, descriptor.size);
  } catch (error) {
    throw readerRefusal(error, name, { E_BLOB_MISSING: codes.missing, E_TOO_LARGE: codes.size });
  }
  if (bytes.length !== descriptor.size) {
    throw new Refusal(codes.size, `${name} has ${bytes.length} bytes where ${descriptor.size} are expected`);
  }
  const digest = sha256(bytes);
  if (digest !== descriptor.digest) throw new Refusal(codes.digest, `${name} has digest ${short(digest)}: its content is not what was named`);
  return bytes;
}

function readArtifactManifest(reader: LayoutReader, entry: IndexEntry, what: string): ArtifactManifest {
  const bytes = readBlob(reader, entry, MAX_BYTES.manifest, what);
  const name = `${what} ${short(entry.digest)}`;
  const manifest = validate(ArtifactManifestSchema, parseJson(bytes, name, 'E_LAYOUT_INVALID'), name, 'E_LAYOUT_INVALID');
  if (entry.artifactType !== undefined && entry.artifactType !== manifest.artifactType) {
    throw new Refusal('E_LAYOUT_INVALID', `${name}: index.json says artifactType ${entry.artifactType}, the manifest ${manifest.artifactType}`);
  }
  const layer = manifest.layers[0]!;
  const wanted = LAYER_MEDIA_TYPE[manifest.artifactType];
  if (layer.mediaType !== wanted) {
    throw new Refusal('E_LAYOUT_INVALID', `${name}: layer mediaType ${JSON.stringify(layer.mediaType)}, expected ${wanted}`);
  }
  return manifest;
}

// ── the certificate ─────────────────────────────────────────────────────────────────────────

interface CheckedCertificate {
  cert: X509Certificate;
  facts: CertificateFacts;
  commonName: string;
  product: string;
  key: KeyObject;
  keyType: VerifiedCertificate['keyType'];
}

const CN_PREFIX = productCommonName('');

function checkCertificate(pem: Buffer, caKey: KeyObject, now: Date, digest: string): CheckedCertificate {
  const name = `certificate ${short(digest)}`;
  let cert: X509Certificate;
  let facts: CertificateFacts;
  try {
    const der = decodeCertificatePem(pem);
    facts = parseCertificateDer(der);
    cert = new X509Certificate(der);
    if (!cert.raw.equals(der)) throw new DerError('node:crypto read another certificate');
  } catch (error) {
    // DerError from the walk, or node:crypto refusing the DER: either way not a certificate.
    throw new Refusal('E_CERT_INVALID', `${name} is not a well-formed certificate: ${(error as Error).message}`);
  }
  const who = `${name} (${facts.subjectText})`;

  const algorithm = CERT_SIGNATURE_ALGORITHMS[facts.signatureAlgorithm];
  let trusted = false;
  if (algorithm !== undefined) {
    try {
      trusted = cert.verify(caKey);
    } catch {
      trusted = false;
    }
  }
  if (!trusted) {
    throw new Refusal(
      'E_CERT_UNTRUSTED',
      algorithm === undefined
        ? `${who} is signed with algorithm ${facts.signatureAlgorithm}, which is not accepted`
        : `${who} is not signed by the manifest CA (the trust root)`,
    );
  }

  if (now.getTime() < facts.notBefore.getTime()) {
    throw new Refusal('E_CERT_NOT_YET_VALID', `${who} is not valid before ${facts.notBefore.toISOString()} (now ${now.toISOString()})`);
  }
  if (now.getTime() > facts.notAfter.getTime()) {
    throw new Refusal('E_CERT_EXPIRED', `${who} expired at ${facts.notAfter.toISOString()} (now ${now.toISOString()})`);
  }

  const usage = (problem: string) => new Refusal('E_CERT_USAGE', `${who} is not a manifest-signing certificate: ${problem}`);
  if (facts.unknownCriticalExtensions.length > 0) throw usage(`unknown critical extension ${facts.unknownCriticalExtensions.join(', ')}`);
  if (facts.basicConstraints?.ca === true || cert.ca) throw usage('it is a CA certificate');
  if (!facts.keyUsage?.includes('digitalSignature')) throw usage('keyUsage lacks digitalSignature');
  if (!facts.extendedKeyUsage?.includes(OID.codeSigning)) throw usage('extendedKeyUsage lacks codeSigning');
  const nodeEku: unknown = cert.keyUsage; // node:crypto calls the extended key usages `keyUsage`
  if (Array.isArray(nodeEku) && !nodeEku.includes(OID.codeSigning)) throw usage('extendedKeyUsage lacks codeSigning');
  const commonNames = facts.subject.filter((attribute) => attribute.type === OID.commonName);
  const commonName = commonNames[0]?.value;
  if (commonNames.length !== 1 || commonName == null || !commonName.startsWith(CN_PREFIX) || commonName.length === CN_PREFIX.length) {
    throw usage(`expected exactly one subject CN "${CN_PREFIX}<product>"`);
  }

  const key = cert.publicKey;
  let keyType: VerifiedCertificate['keyType'];
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
    keyType = 'ec-p256';
  } else if (key.asymmetricKeyType === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
      throw new Refusal('E_KEY_UNSUPPORTED', `${who} has an RSA-${bits} key; expected ${RSA_MIN_BITS}-${RSA_MAX_BITS} bits`);
    }
    keyType = `rsa-${bits}`;
  } else {
    const detail = key.asymmetricKeyDetails?.namedCurve ? ` ${key.asymmetricKeyDetails.namedCurve}` : '';
    throw new Refusal('E_KEY_UNSUPPORTED', `${who} has a ${key.asymmetricKeyType}${detail} key; expected EC P-256 or RSA >= ${RSA_MIN_BITS}`);
  }
  return { cert, facts, commonName, product: commonName.slice(CN_PREFIX.length), key, keyType };
}

function verifySignature(checked: CheckedCertificate, installBytes: Buffer, signature: Buffer): boolean {
  try {
    if (checked.keyType === 'ec-p256') return cryptoVerify('sha256', installBytes, { key: checked.key, dsaEncoding: 'der' }, signature);
    return cryptoVerify('sha256', installBytes, { key: checked.key, padding: cryptoConstants.RSA_PKCS1_PADDING }, signature);
  } catch {
    return false;
  }
}

// ── the verifier ────────────────────────────────────────────────────────────────────────────

/** Longest failure message returned (it becomes the console's emergency line and `mosctl status`). */
export const MAX_MESSAGE_CHARS = 1024;

/**
 * A failure message made safe to print: messages quote what the layout holds (unknown JSON keys,
 * an untrusted certificate's subject, artifact types), so control characters (terminal escape
 * sequences, CR), C1 controls and bidi overrides are shown escaped, and the length is capped.
 */
export function printableMessage(message: string): string {
  const escaped = message.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return escaped.length > MAX_MESSAGE_CHARS ? `${escaped.slice(0, MAX_MESSAGE_CHARS - 1)}…` : escaped;
}

/** Verifies the install layout `reader` reads. Never throws for anything the layout holds. */
export function verifyInstallLayout(options: VerifyInstallOptions): VerifyInstallResult {
  try {
    return verify(options);
  } catch (error) {
    if (error instanceof Refusal) return { ok: false, code: error.code, message: printableMessage(error.message) };
    if (error instanceof LayoutReadError) return { ok: false, code: error.code, message: printableMessage(error.message) };
    // Fail closed on anything unforeseen, naming it.
    return { ok: false, code: 'E_VERIFY_INTERNAL', message: printableMessage(`verification failed unexpectedly: ${(error as Error)?.message ?? String(error)}`) };
  }
}

function verify({ reader, trustRoot, tag, now }: VerifyInstallOptions): VerifiedInstall {
  const caKey = parseTrustRoot(trustRoot);
  if (caKey instanceof TrustRootError) throw new Refusal('E_TRUST_ROOT_INVALID', caKey.message);
  if (Number.isNaN(now.getTime())) throw new RangeError('now is not a valid date');
  if (tag !== undefined && (!REF_NAME_PATTERN.test(tag) || IMAGE_REF_NAME.test(tag))) {
    throw new Refusal('E_NAME_INVALID', `tag ${JSON.stringify(tag.slice(0, 80))} is not an install tag`);
  }

  // 2. the layout's own files.
  validate(OciLayoutSchema, parseJson(readLayoutFile(reader, 'oci-layout', MAX_BYTES.ociLayout), 'oci-layout', 'E_LAYOUT_INVALID'), 'oci-layout', 'E_LAYOUT_INVALID');
  const index = validate(IndexSchema, parseJson(readLayoutFile(reader, 'index.json', MAX_BYTES.index), 'index.json', 'E_LAYOUT_INVALID'), 'index.json', 'E_LAYOUT_INVALID');

  const tagged: { name: string; entry: IndexEntry }[] = [];
  const untagged = new Map<string, IndexEntry>();
  const refNames = new Set<string>();
  index.manifests.forEach((entry, i) => {
    const refName = entry.annotations?.[ANNOTATION.refName];
    if (refName === undefined) {
      const seen = untagged.get(entry.digest);
      if (seen && seen.size !== entry.size) throw new Refusal('E_LAYOUT_INVALID', `index.json lists ${short(entry.digest)} twice with different sizes`);
      untagged.set(entry.digest, entry);
      return;
    }
    if (refNames.has(refName)) throw new Refusal('E_LAYOUT_INVALID', `index.json: ref name ${refName} names more than one manifest`);
    refNames.add(refName);
    if (IMAGE_REF_NAME.test(refName)) {
      if (`sha256:${refName}` !== entry.digest) {
        throw new Refusal('E_LAYOUT_INVALID', `index.json: manifests[${i}] is named ${refName.slice(0, 12)}… but its digest is ${short(entry.digest)}`);
      }
      return;
    }
    tagged.push({ name: refName, entry });
  });

  // 3. the install artifact and install.json.
  let install: { name: string; entry: IndexEntry };
  if (tag !== undefined) {
    const found = tagged.find((candidate) => candidate.name === tag);
    if (!found) throw new Refusal('E_INSTALL_NOT_FOUND', `the layout has no manifest tagged ${tag}`);
    install = found;
  } else {
    if (tagged.length === 0) throw new Refusal('E_INSTALL_NOT_FOUND', 'the layout has no tagged install artifact');
    if (tagged.length > 1) {
      throw new Refusal('E_INSTALL_AMBIGUOUS', `the layout has ${tagged.length} tagged manifests (${tagged.map((t) => t.name).join(', ')}): name the tag to boot`);
    }
    install = tagged[0]!;
  }
  const installEntry = install.entry;
  const installWhat = `install manifest ${install.name}`;
  const installManifest = readArtifactManifest(reader, installEntry, installWhat);
  if (installManifest.artifactType !== ARTIFACT_TYPE.install) {
    throw new Refusal('E_INSTALL_NOT_FOUND', `tag ${install.name} is a ${installManifest.artifactType} artifact, not an install artifact`);
  }
  if (installManifest.subject !== undefined) throw new Refusal('E_LAYOUT_INVALID', `${installWhat} has a subject; an install artifact refers to nothing`);
  const installLayer = installManifest.layers[0]!;
  const installBytes = readBlob(reader, installLayer, MAX_BYTES.install, `install.json of ${install.name}`);

  // 4. its referrers: exactly one signature and one certificate.
  if (untagged.size > MAX_REFERRER_CANDIDATES) {
    throw new Refusal('E_LAYOUT_INVALID', `index.json has ${untagged.size} untagged manifests; at most ${MAX_REFERRER_CANDIDATES} are read`);
  }
  const signatures: { entry: IndexEntry; manifest: ArtifactManifest }[] = [];
  const certificates: { entry: IndexEntry; manifest: ArtifactManifest }[] = [];
  for (const entry of untagged.values()) {
    const manifest = readArtifactManifest(reader, entry, 'untagged manifest');
    if (manifest.artifactType === ARTIFACT_TYPE.install) {
      throw new Refusal('E_LAYOUT_INVALID', `untagged manifest ${short(entry.digest)} is an install artifact; install artifacts are tagged`);
    }
    const subject = manifest.subject;
    if (subject === undefined) {
      throw new Refusal('E_LAYOUT_INVALID', `${manifest.artifactType} artifact ${short(entry.digest)} has no subject`);
    }
    if (subject.digest !== installEntry.digest) continue; // refers to another install artifact
    if (subject.size !== installEntry.size || (subject.artifactType !== undefined && subject.artifactType !== ARTIFACT_TYPE.install)) {
      throw new Refusal('E_LAYOUT_INVALID', `${manifest.artifactType} artifact ${short(entry.digest)}: its subject descriptor does not match ${installWhat}`);
    }
    (manifest.artifactType === ARTIFACT_TYPE.signature ? signatures : certificates).push({ entry, manifest });
  }
  const about = `${installWhat} ${short(installEntry.digest)}`;
  if (signatures.length === 0) throw new Refusal('E_SIGNATURE_MISSING', `no signature artifact refers to ${about}`);
  if (signatures.length > 1) {
    throw new Refusal('E_SIGNATURE_CONFLICT', `${signatures.length} signature artifacts refer to ${about} (${signatures.map((s) => short(s.entry.digest)).join(', ')}): refusing to choose`);
  }
  if (certificates.length === 0) throw new Refusal('E_CERTIFICATE_MISSING', `no certificate artifact refers to ${about}`);
  if (certificates.length > 1) {
    throw new Refusal('E_CERTIFICATE_CONFLICT', `${certificates.length} certificate artifacts refer to ${about} (${certificates.map((c) => short(c.entry.digest)).join(', ')}): refusing to choose`);
  }
  const signatureLayer = signatures[0]!.manifest.layers[0]!;
  const certificateLayer = certificates[0]!.manifest.layers[0]!;
  const signature = readBlob(reader, signatureLayer, MAX_BYTES.signature, 'signature');
  const certificatePem = readBlob(reader, certificateLayer, MAX_BYTES.certificate, 'certificate');

  // 5. the certificate; 6. the signature.
  const checked = checkCertificate(certificatePem, caKey, now, certificateLayer.digest);
  const installDigest = installLayer.digest;
  if (!verifySignature(checked, installBytes, signature)) {
    throw new Refusal('E_SIGNATURE_INVALID', `signature ${short(signatureLayer.digest)} does not verify install.json ${short(installDigest)} with the key of ${checked.facts.subjectText}`);
  }

  // 7. only now is install.json read as data.
  const parsed = parseInstallFile(parseJson(installBytes, `install.json ${short(installDigest)}`, 'E_MANIFEST_INVALID'));
  if (!parsed.ok) {
    if (parsed.issues.length > 0) throw schemaRefusal(parsed.issues, `install.json ${short(installDigest)}`, 'E_MANIFEST_INVALID');
    throw new Refusal('E_MANIFEST_INVALID', `install.json ${short(installDigest)}: ${parsed.problems.join('; ')}`);
  }
  const installFile = parsed.install;
  if (installFile.product !== checked.product) {
    throw new Refusal(
      'E_PRODUCT_MISMATCH',
      `install.json ${short(installDigest)} is for product ${JSON.stringify(installFile.product)} but certificate ${short(certificateLayer.digest)} is for ${JSON.stringify(checked.product)}`,
    );
  }

  // 8. every target's image manifest, as signed.
  const manifests = new Map<string, Buffer>();
  const targets: VerifiedTarget[] = installFile.targets.map((target) => {
    const what = `target ${target.service_name}`;
    const cached = manifests.get(target.digest);
    const manifestBytes =
      cached && cached.length === target.size ? cached : readBlob(reader, target, MAX_BYTES.manifest, `image manifest of ${what}`, TARGET);
    manifests.set(target.digest, manifestBytes);
    const image = validate(TargetManifestSchema, parseJson(manifestBytes, `image manifest of ${what}`, 'E_LAYOUT_INVALID'), `image manifest of ${what}`, 'E_LAYOUT_INVALID');
    const configBytes = readBlob(reader, image.config, MAX_CONFIG_BYTES, `image config of ${what}`);
    for (const layer of image.layers) checkBlobPresent(reader, layer, `layer of ${what}`);
    return { target, manifestDigest: target.digest, manifestBytes, configBytes, layers: image.layers };
  });

  return {
    ok: true,
    tag: install.name,
    installManifestDigest: installEntry.digest,
    install: installFile,
    installBytes,
    installDigest,
    signatureAlgorithm: checked.keyType === 'ec-p256' ? 'ecdsa-p256-sha256' : 'rsa-pkcs1v15-sha256',
    signatureDigest: signatureLayer.digest,
    certificate: {
      subject: checked.facts.subjectText,
      commonName: checked.commonName,
      product: checked.product,
      issuer: checked.facts.issuerText,
      serialNumber: checked.facts.serialNumber,
      notBefore: checked.facts.notBefore,
      notAfter: checked.facts.notAfter,
      fingerprint256: checked.cert.fingerprint256,
      keyType: checked.keyType,
      digest: certificateLayer.digest,
    },
    targets,
  };
}
