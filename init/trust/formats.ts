/**
 * The signed install manifest's formats, shared by the build side (`mosb`, which writes them)
 * and the boot side (init/trust/verify-*.ts, which trusts nothing in them until verified).
 *
 * Compatible with project-machine's (`../shared/docs/reference-mos.md` §1.2, §1.3): the same
 * install.json fields in the same order, the same artifact types, the signature and the
 * certificate as OCI 1.1 artifacts whose `subject` is the install artifact. docs/trust.md
 * describes the layout in full.
 */

export const MEDIA_TYPE = {
  imageIndex: 'application/vnd.oci.image.index.v1+json',
  imageManifest: 'application/vnd.oci.image.manifest.v1+json',
  imageConfig: 'application/vnd.oci.image.config.v1+json',
  empty: 'application/vnd.oci.empty.v1+json',
  /** The layer type project-machine gives the signature and certificate blobs. */
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
} as const;

export const ARTIFACT_TYPE = {
  install: 'application/vnd.machine.install',
  signature: 'application/vnd.machine.signature',
  certificate: 'application/vnd.machine.pubkeycrt',
} as const;

export const ANNOTATION = {
  refName: 'org.opencontainers.image.ref.name',
  title: 'org.opencontainers.image.title',
  created: 'org.opencontainers.image.created',
} as const;

/** The OCI empty descriptor (`{}`), the config of every artifact manifest. */
export const EMPTY_DESCRIPTOR = {
  mediaType: MEDIA_TYPE.empty,
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
  data: 'e30=',
} as const;

/** Blob titles (the layer's `org.opencontainers.image.title`). */
export const TITLE = {
  install: 'install.json',
  signature: 'install.json.signed',
  certificate: 'cert.pem',
} as const;

/** `sha256:` + 64 lowercase hex digits: the only digest form accepted anywhere. */
export const DIGEST_PATTERN = /^sha256:[0-9a-f]{64}$/;

/**
 * Tags (`org.opencontainers.image.ref.name`) as OCI's image-layout grammar allows them, minus
 * anything that could act as a path: alphanumeric components joined by `.`, `_`, `-`, `+`.
 * Service images in the layout are tagged with their digest's 64 hex digits.
 */
export const REF_NAME_PATTERN = /^[A-Za-z0-9]+(?:[._+-][A-Za-z0-9]+)*$/;

/** The certificate's subject CN that binds it to a product (project-machine's form). */
export function productCommonName(product: string): string {
  return `manifest PRODUCT:${product}`;
}

export const INSTALL_FILE_VERSION = 1;

/** install.json (project-machine's `InstallFile`), fields in its order; no field is omitted. */
export interface InstallFile {
  version: number;
  product: string;
  storage: StorageItem[] | null;
  targets: InstallTarget[];
  update_type: 'complete' | 'partial';
}

export interface StorageItem {
  label: string;
  persistent: boolean;
  nsgroup: string;
  /** MiB. */
  size: number;
}

export interface InstallTarget {
  service_name: string;
  version: string;
  service_type: 'hostfs' | 'container' | 'fs-only';
  network: TargetNetwork;
  nsgroup: string;
  /** `sha256:…` of the target's OCI image manifest blob in the layout. */
  digest: string;
  storage: TargetStorage[] | null;
  /** Byte size of that image manifest blob. */
  size: number;
  /**
   * mos's extension: the container's cgroup v2 limits. Absent when the target sets none, so an
   * install.json without limits has project-machine's exact fields (and bytes).
   */
  limits?: TargetLimits;
}

/** cgroup v2 limits of a container target: `memory.max` and `pids.max`. At least one is set. */
export interface TargetLimits {
  /** Bytes (the kernel rounds down to whole pages). */
  memory_max?: number;
  /** Tasks (processes and threads) in the container at once. */
  pids_max?: number;
}

/**
 * The bounds of `TargetLimits`. Under 1 MiB a container cannot even start its runtime's init; the
 * kernel's pid limit (PID_MAX_LIMIT on 64-bit) is the most pids.max can mean.
 */
export const LIMIT_BOUNDS = {
  memoryMin: 1024 * 1024,
  pidsMax: 4 * 1024 * 1024,
} as const;

export interface TargetNetwork {
  type: 'host' | 'none' | 'simple';
  ipv4: string;
  ipv6: string;
  ports: { host: number; container: number }[] | null;
}

export interface TargetStorage {
  dest: string;
  label: string;
}

/** Size limits: anything larger is refused before it is read (a disk is untrusted input). */
export const MAX_BYTES = {
  ociLayout: 4 * 1024,
  index: 1024 * 1024,
  manifest: 256 * 1024,
  install: 1024 * 1024,
  signature: 4 * 1024,
  certificate: 64 * 1024,
} as const;
