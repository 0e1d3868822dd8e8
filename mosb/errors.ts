/** mosb's errors: a stable code, a message that names what is wrong, and the cause if any. */

export type MosbErrorCode =
  /** manifest.yaml is not valid YAML, or not one document. */
  | 'E_MANIFEST_YAML'
  /** manifest.yaml breaks the schema (see `issues`). */
  | 'E_MANIFEST_INVALID'
  /** manifest.yaml's `product` is not the keyset product's uuid. */
  | 'E_PRODUCT_MISMATCH'
  /** A target's source is not a supported reference (`docker://` needs a network). */
  | 'E_SOURCE_UNSUPPORTED'
  /** A target's source layout is missing, malformed, or lacks the tag. */
  | 'E_SOURCE'
  /** A blob or manifest does not match its digest or size (source, or manifest.yaml's pins). */
  | 'E_DIGEST_MISMATCH'
  /** The output directory is not an OCI layout mosb can add to, or its index is inconsistent. */
  | 'E_LAYOUT'
  /** Something would exceed the size the boot-side verifier accepts. */
  | 'E_TOO_LARGE'
  | 'E_KEYSET_EXISTS'
  | 'E_KEYSET_NOT_FOUND'
  | 'E_PRODUCT_EXISTS'
  | 'E_PRODUCT_NOT_FOUND'
  /** A keyset file is malformed: bad uuid, cert/key pair mismatch, wrong CN, foreign CA, expired. */
  | 'E_KEYSET_INVALID'
  /**
   * A tool turning an image into squashfs + dm-verity (umoci, zstd, mksquashfs, veritysetup) is
   * missing or failed (its stderr tail is in the message), or squashing needs root.
   */
  | 'E_SQUASH_TOOL'
  /** A source image cannot be squashed, or an already-squashed one is not what it claims. */
  | 'E_SQUASH_FORMAT'
  /** The openssl CLI failed (its stderr is in the message; it never prints key material there). */
  | 'E_OPENSSL'
  /** A value given on the command line or to the API is not acceptable. */
  | 'E_ARGUMENT';

export interface ManifestIssue {
  /** Where, as `targets[0].network.ports[1].host`; empty for the document itself. */
  path: string;
  message: string;
}

export class MosbError extends Error {
  constructor(
    readonly code: MosbErrorCode,
    message: string,
    options?: { cause?: unknown; issues?: ManifestIssue[] },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MosbError';
    this.issues = options?.issues ?? [];
  }

  readonly issues: ManifestIssue[];
}
