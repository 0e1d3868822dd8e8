/**
 * A validated manifest.yaml + what its sources resolved to → install.json, the signed bytes.
 *
 * The object is built field by field in project-machine's order (formats.ts `InstallFile`) and
 * serialized the way Go's `json.Marshal` does: compact, no `omitempty` (absent lists are `null`),
 * and `<`, `>`, `&`, U+2028, U+2029 escaped. So for the same data the bytes are the ones
 * project-machine's mosb would have signed.
 */
import { type InstallFile, type InstallTarget, MAX_BYTES } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import type { ImportFile, UserTarget } from './manifest-yaml.ts';

/** A target's image manifest as published: what install.json names. */
export interface ResolvedImage {
  digest: string;
  size: number;
  /**
   * The source image manifest it was made from (squash-tools.ts), when that differs: what
   * manifest.yaml's `digest` and `size` pins name. Without it the pins name the image itself.
   */
  source?: { digest: string; size: number };
}

/**
 * manifest.yaml's optional pins against the SOURCE image manifest (the one `source` names, before
 * mosb squashes it): what the author can see with `skopeo inspect` before publishing.
 */
export function checkSourcePins(target: Pick<UserTarget, 'service_name' | 'digest' | 'size'>, source: { digest: string; size: number }): void {
  if (target.digest !== null && target.digest !== source.digest) {
    throw new MosbError('E_DIGEST_MISMATCH', `target ${target.service_name}: manifest.yaml pins digest ${target.digest}, but its source's image manifest is ${source.digest}`);
  }
  if (target.size !== null && target.size !== source.size) {
    throw new MosbError('E_DIGEST_MISMATCH', `target ${target.service_name}: manifest.yaml pins size ${target.size}, but its source's image manifest is ${source.size} bytes`);
  }
}

/**
 * `productUuid` is the keyset product's (from its `uuid` file); manifest.yaml's `product`, when
 * given, must be the same. `images` maps each service name to its published image manifest.
 */
export function computeInstallFile(manifest: ImportFile, productUuid: string, images: ReadonlyMap<string, ResolvedImage>): InstallFile {
  if (manifest.product !== null && manifest.product !== productUuid) {
    throw new MosbError(
      'E_PRODUCT_MISMATCH',
      `manifest.yaml names product ${manifest.product}, but the signing certificate is for product ${productUuid}`,
    );
  }
  const targets = manifest.targets.map((target): InstallTarget => {
    const image = images.get(target.service_name);
    if (!image) throw new MosbError('E_SOURCE', `no image resolved for target ${target.service_name}`);
    checkSourcePins(target, image.source ?? image);
    return {
      service_name: target.service_name,
      version: target.version,
      service_type: target.service_type,
      network: {
        type: target.network.type,
        ipv4: target.network.ipv4,
        ipv6: target.network.ipv6,
        ports: target.network.ports === null ? null : target.network.ports.map((port) => ({ host: port.host, container: port.container })),
      },
      nsgroup: target.nsgroup,
      digest: image.digest,
      storage: target.storage === null ? null : target.storage.map((item) => ({ dest: item.dest, label: item.label })),
      size: image.size,
      // Written only when set: without limits, install.json keeps project-machine's fields.
      ...(target.limits !== null ? { limits: { ...(target.limits.memory_max !== undefined ? { memory_max: target.limits.memory_max } : {}), ...(target.limits.pids_max !== undefined ? { pids_max: target.limits.pids_max } : {}) } } : {}),
    };
  });
  return {
    version: manifest.version,
    product: productUuid,
    storage:
      manifest.storage === null
        ? null
        : manifest.storage.map((item) => ({ label: item.label, persistent: item.persistent, nsgroup: item.nsgroup, size: item.size })),
    targets,
    update_type: manifest.update_type,
  };
}

/** install.json's bytes, as Go's `json.Marshal` writes them. */
export function serializeInstallFile(file: InstallFile): Buffer {
  const bytes = Buffer.from(goJson(file), 'utf8');
  if (bytes.length > MAX_BYTES.install) {
    throw new MosbError('E_TOO_LARGE', `install.json would be ${bytes.length} bytes; the boot side accepts at most ${MAX_BYTES.install}`);
  }
  return bytes;
}

/**
 * Compact JSON with Go's HTML-safe escapes. The characters replaced can only occur inside
 * strings of `JSON.stringify`'s output, so replacing them there is exact.
 */
export function goJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
