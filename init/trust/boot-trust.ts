/**
 * The boot-time trust phase's decisions (issue 4, "Boot"), pure: from what is known so far (the
 * kernel command line's trust keys, the CA embedded in the image, what the TPM answered, what the
 * store and the verifier said) to the next thing to do, the console lines to print and, at the
 * end, the verdict. `init/boot/trust-phase.ts` carries the steps out; `init/boot/pid1.ts` wires it.
 *
 *   no mos.store                → skip ("no manifest store configured"); the boot goes on
 *   a trust key unreadable      → fail E_TRUST_CONFIG (a typo must not switch verification off)
 *   read the root under the PCR policy
 *     ok                        → open the store
 *     not provisioned / unlocked, embedded CA → provision it (never with reset), read it back
 *     not provisioned, no CA    → fail E_TRUST_ROOT_NOT_PROVISIONED
 *     anything else (PCR mismatch, foreign index, TPM error) → fail with its code; never provision
 *   open the store (mount a block device read-only, or use a directory), verify `oci/` in it
 *     ok                        → verified: `mos: trust: verified install ...`
 *     a refusal                 → fail with the verifier's code
 *
 * A failure is fatal for the boot: the emergency reason is `trust: <CODE>: <message>`, and nothing
 * from the manifest (or anything else: supervise does not run) starts.
 *
 * The root used for verification is always the one read from the TPM, also right after
 * provisioning (it is read back under the policy), never the embedded file.
 */
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';

/** Where the image builder puts the manifest CA (initramfs/build.mjs --trust-ca). */
export const EMBEDDED_CA_PATH = '/etc/mos/trust/manifest-ca.pem';
/** How long the trust phase waits for a `device:` TPM node to appear (the driver probes async). */
export const TPM_DEVICE_WAIT_MS = 5_000;
/** How long it waits for a `mos.store=/dev/...` block device to appear (virtio_blk probes async). */
export const STORE_DEVICE_WAIT_MS = 10_000;
/** The OCI layout's directory inside the store. */
export const STORE_LAYOUT_DIR = 'oci';
/** Largest CA file read (a certificate PEM is ~1 KB; an RSA-8192 one ~3 KB). */
export const MAX_CA_FILE_BYTES = 64 * 1024;

export type TrustFailureCode =
  /** A trust key on the kernel command line is unreadable, or not allowed in this mode. */
  | 'E_TRUST_CONFIG'
  /** The embedded or given CA file is not a certificate (or public key) mos can use. */
  | 'E_TRUST_CA_INVALID'
  /** `mosctl provision` without --ca on an image that embeds no CA. */
  | 'E_TRUST_CA_MISSING'
  /** The TPM device did not appear. */
  | 'E_TPM_MISSING'
  /** The store (device or directory) is missing, unmountable or holds no `oci/` layout. */
  | 'E_STORE_MISSING'
  | 'E_STORE_MOUNT'
  | 'E_STORE_INVALID'
  /** init/trust/trust-root.ts and verify-install.ts codes pass through as they are. */
  | (string & {});

export interface Failure {
  ok: false;
  code: TrustFailureCode;
  message: string;
}

export type Outcome<T> = ({ ok: true } & T) | Failure;

export function failure(code: TrustFailureCode, message: string): Failure {
  return { ok: false, code, message };
}

/** The command line's trust keys (init/boot/cmdline.ts), and the mode mos runs in. */
export interface TrustConfigInput {
  store: string | null;
  manifestTag: string;
  /** `mos.product=`: the product this machine is; null accepts any the CA signed for. */
  product?: string | null;
  tpm: string;
  trustPcrs: readonly number[];
  /** Unreadable `mos.*` values (`MosCmdline.invalid`). */
  invalid: readonly { key: string; reason: string }[];
  /** PID 1 of a PID namespace on a host (tests): a `device:` TPM there would be the host's. */
  namespaceMode: boolean;
}

/** Why a TCTI may not be used in this mode, or null. */
export function checkTcti(tcti: string, namespaceMode: boolean): string | null {
  if (namespaceMode && tcti.startsWith('device:')) {
    return `mos.tpm=${tcti}: namespace mode talks only to a software TPM (swtpm:host=...,port=...), never to the host's TPM`;
  }
  return null;
}

export type EmbeddedCa =
  | { kind: 'none'; path: string }
  | { kind: 'ok'; path: string; spki: Buffer }
  | { kind: 'invalid'; path: string; message: string };

/** SHA-256 of a trust root (DER SPKI) as shown on the console: `sha256:` + its first 16 hex. */
export function rootFingerprint(spki: Buffer): string {
  return `sha256:${createHash('sha256').update(spki).digest('hex').slice(0, 16)}`;
}

/** `0x01806d6f` */
export function formatNvIndex(index: number): string {
  return `0x${index.toString(16).padStart(8, '0')}`;
}

/**
 * A manifest CA as an operator or the image gives it: a PEM certificate (its SPKI is the trust
 * root) or a PEM/DER public key. Returns the DER SPKI or why not.
 */
export function parseManifestCa(data: Buffer | string, what: string): { ok: true; spki: Buffer } | Failure {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  if (bytes.length === 0) return failure('E_TRUST_CA_INVALID', `${what} is empty`);
  if (bytes.length > MAX_CA_FILE_BYTES) return failure('E_TRUST_CA_INVALID', `${what} has ${bytes.length} bytes; a CA certificate is at most ${MAX_CA_FILE_BYTES}`);
  const text = bytes.toString('latin1');
  try {
    if (text.includes('-----BEGIN PUBLIC KEY-----')) {
      return { ok: true, spki: createPublicKey({ key: text, format: 'pem' }).export({ type: 'spki', format: 'der' }) };
    }
    const certificate = new X509Certificate(bytes);
    if (!certificate.ca) return failure('E_TRUST_CA_INVALID', `${what} (${certificate.subject.replace(/\n/g, ', ')}) is not a CA certificate`);
    return { ok: true, spki: certificate.publicKey.export({ type: 'spki', format: 'der' }) };
  } catch (error) {
    return failure('E_TRUST_CA_INVALID', `${what} is not a PEM certificate or public key: ${(error as Error).message}`);
  }
}

// ── the facts gathered so far, and the next step ────────────────────────────────────────────

export type RootRead = Outcome<{ spki: Buffer }>;
export type ProvisionOutcome = Outcome<{ status: 'provisioned' | 'already-provisioned' }>;
export type StoreOutcome = Outcome<{ dir: string; mounted: { device: string; fstype: string } | null }>;
export interface VerifiedSummary {
  /** The install artifact's manifest digest (what `mosb manifest publish` prints as `install`). */
  install: string;
  /** install.json's digest: the signed bytes. */
  installJson: string;
  tag: string;
  product: string;
  targets: number;
  certificate: string;
}
export type VerifyOutcome = Outcome<{ summary: VerifiedSummary }>;

export interface TrustFacts {
  config: TrustConfigInput;
  embeddedCa: EmbeddedCa;
  nvIndex: number;
  read?: RootRead;
  provision?: ProvisionOutcome;
  /** The read after provisioning. */
  reread?: RootRead;
  store?: StoreOutcome;
  verify?: VerifyOutcome;
}

/** What `mosctl status` (SupervisorInfo.trust) shows. */
export type TrustState =
  | { state: 'pending' }
  | { state: 'not-configured' }
  | {
      state: 'verified';
      install: string;
      installJson: string;
      tag: string;
      product: string;
      targets: number;
      /** `sha256:<16 hex>` of the trust root (the CA's SPKI) read from the TPM. */
      root: string;
      /** Whether this boot provisioned the root. */
      provisioned: boolean;
      nvIndex: string;
      pcrs: number[];
      store: string;
    }
  | { state: 'failed'; code: string; message: string };

export type TrustStep =
  | { op: 'skip'; reason: string; state: TrustState; say: string[] }
  | { op: 'read-root'; tcti: string; pcrs: number[]; say: string[] }
  | { op: 'provision'; tcti: string; pcrs: number[]; root: Buffer; say: string[] }
  | { op: 'reread-root'; tcti: string; pcrs: number[]; say: string[] }
  | { op: 'open-store'; store: string; say: string[] }
  | { op: 'verify'; root: Buffer; dir: string; tag: string; say: string[] }
  | { op: 'done'; state: TrustState; say: string[]; emergency: string | null };

export const NO_STORE_REASON = 'no manifest store configured';

/** The command-line keys the trust phase reads: an unreadable one fails the phase. */
export const TRUST_KEYS: readonly string[] = ['mos.store', 'mos.manifest_tag', 'mos.product', 'mos.tpm', 'mos.trust_pcrs'];

/** Read-root failures that mean "nothing (complete) there yet": provisioning may fill them. */
const PROVISIONABLE = new Set(['E_TRUST_ROOT_NOT_PROVISIONED', 'E_TRUST_ROOT_NOT_LOCKED']);

function fail(code: string, message: string): TrustStep {
  return { op: 'done', state: { state: 'failed', code, message }, say: [], emergency: trustEmergencyReason(code, message) };
}

/** The emergency reason, and so the console's `mos: emergency: trust: <CODE>: <message>`. */
export function trustEmergencyReason(code: string, message: string): string {
  return `trust: ${code}: ${message}`;
}

export function provisionedLine(spki: Buffer, nvIndex: number, pcrs: readonly number[]): string {
  return `mos: trust: provisioned manifest CA ${rootFingerprint(spki)} into TPM NV ${formatNvIndex(nvIndex)} (PCRs ${pcrs.join(',')})`;
}

export function verifiedLine(summary: VerifiedSummary): string {
  return `mos: trust: verified install ${summary.install} (product ${summary.product}, ${summary.targets} targets)`;
}

/** The next step of the trust phase, from the facts so far. */
export function nextTrustStep(facts: TrustFacts): TrustStep {
  const { config, embeddedCa, nvIndex } = facts;
  const trustProblems = config.invalid.filter((entry) => TRUST_KEYS.includes(entry.key));
  if (trustProblems.length > 0) {
    return fail('E_TRUST_CONFIG', trustProblems.map((entry) => `${entry.key}: ${entry.reason}`).join('; '));
  }
  if (config.store === null) return { op: 'skip', reason: NO_STORE_REASON, state: { state: 'not-configured' }, say: [] };
  const tctiProblem = checkTcti(config.tpm, config.namespaceMode);
  if (tctiProblem !== null) return fail('E_TRUST_CONFIG', tctiProblem);
  const tcti = config.tpm;
  const pcrs = [...config.trustPcrs];

  // 1. the trust root.
  if (facts.read === undefined) return { op: 'read-root', tcti, pcrs, say: [] };
  let root: Buffer;
  let provisioned = false;
  if (facts.read.ok) {
    root = facts.read.spki;
  } else {
    const read = facts.read;
    if (!PROVISIONABLE.has(read.code)) return fail(read.code, read.message);
    if (embeddedCa.kind === 'none') {
      return fail(
        read.code,
        `${read.message}; the image embeds no manifest CA (${embeddedCa.path}) to provision: provision one with mosctl provision --ca FILE, then reboot`,
      );
    }
    if (embeddedCa.kind === 'invalid') return fail('E_TRUST_CA_INVALID', `${read.message}; cannot provision the embedded CA: ${embeddedCa.message}`);
    if (facts.provision === undefined) return { op: 'provision', tcti, pcrs, root: embeddedCa.spki, say: [] };
    if (!facts.provision.ok) return fail(facts.provision.code, facts.provision.message);
    const say = facts.provision.status === 'provisioned' ? [provisionedLine(embeddedCa.spki, nvIndex, pcrs)] : [];
    if (facts.reread === undefined) return { op: 'reread-root', tcti, pcrs, say };
    if (!facts.reread.ok) return fail(facts.reread.code, `after provisioning: ${facts.reread.message}`);
    if (!facts.reread.spki.equals(embeddedCa.spki)) {
      return fail('E_TRUST_ROOT_VERIFY', `NV index ${formatNvIndex(nvIndex)} reads back ${rootFingerprint(facts.reread.spki)}, not the CA just provisioned (${rootFingerprint(embeddedCa.spki)})`);
    }
    root = facts.reread.spki;
    provisioned = facts.provision.status === 'provisioned';
  }

  // 2. the store and the layout in it.
  if (facts.store === undefined) return { op: 'open-store', store: config.store, say: [] };
  if (!facts.store.ok) return fail(facts.store.code, facts.store.message);
  if (facts.verify === undefined) return { op: 'verify', root, dir: facts.store.dir, tag: config.manifestTag, say: [] };
  if (!facts.verify.ok) return fail(facts.verify.code, facts.verify.message);
  const summary = facts.verify.summary;
  // The certificate binds install.json to a product; this binds the product to the machine.
  if (config.product != null && summary.product !== config.product) {
    return fail('E_PRODUCT_MISMATCH', `install ${summary.install} is for product ${summary.product}, but this machine is product ${config.product} (mos.product)`);
  }

  // 3. verified.
  return {
    op: 'done',
    state: {
      state: 'verified',
      install: summary.install,
      installJson: summary.installJson,
      tag: summary.tag,
      product: summary.product,
      targets: summary.targets,
      root: rootFingerprint(root),
      provisioned,
      nvIndex: formatNvIndex(nvIndex),
      pcrs,
      store: config.store,
    },
    say: [verifiedLine(summary)],
    emergency: null,
  };
}

/** One line for `mosctl status`: `verified install sha256:… (product …)`, `not configured`, … */
export function describeTrust(state: TrustState): string {
  switch (state.state) {
    case 'pending':
      return 'not checked yet';
    case 'not-configured':
      return 'not configured';
    case 'verified':
      return `verified install ${state.install} (product ${state.product})`;
    case 'failed':
      return `failed: ${state.code}: ${state.message}`;
  }
}

// ── mosctl provision ────────────────────────────────────────────────────────────────────────

export interface ProvisionRequestFacts {
  /** The CA PEM the operator sent, if any. */
  ca: string | undefined;
  embeddedCa: EmbeddedCa;
  /** `--pcrs`, else the command line's mos.trust_pcrs. */
  pcrs: readonly number[] | undefined;
  config: TrustConfigInput;
}

export type ProvisionPlanned = Outcome<{ root: Buffer; source: 'given' | 'embedded'; pcrs: number[]; tcti: string }>;

/** What `mosctl provision` will write, or why it cannot. */
export function planProvisionRequest(facts: ProvisionRequestFacts): ProvisionPlanned {
  const { config } = facts;
  const tpmProblem = config.invalid.find((entry) => entry.key === 'mos.tpm' || (facts.pcrs === undefined && entry.key === 'mos.trust_pcrs'));
  if (tpmProblem) return failure('E_TRUST_CONFIG', `${tpmProblem.key}: ${tpmProblem.reason}`);
  const tctiProblem = checkTcti(config.tpm, config.namespaceMode);
  if (tctiProblem !== null) return failure('E_TRUST_CONFIG', tctiProblem);
  const pcrs = [...new Set(facts.pcrs ?? config.trustPcrs)].sort((a, b) => a - b);
  if (facts.ca !== undefined) {
    const parsed = parseManifestCa(facts.ca, 'the CA given');
    if (!parsed.ok) return parsed;
    return { ok: true, root: parsed.spki, source: 'given', pcrs, tcti: config.tpm };
  }
  switch (facts.embeddedCa.kind) {
    case 'ok':
      return { ok: true, root: facts.embeddedCa.spki, source: 'embedded', pcrs, tcti: config.tpm };
    case 'invalid':
      return failure('E_TRUST_CA_INVALID', facts.embeddedCa.message);
    case 'none':
      return failure('E_TRUST_CA_MISSING', `no CA given and the image embeds none (${facts.embeddedCa.path}): say mosctl provision --ca FILE`);
  }
}
