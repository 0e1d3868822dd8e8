/**
 * `mosb manifest publish`: manifest.yaml → install.json → signed → an OCI layout holding the
 * install artifact, its signature and certificate, and every target's image.
 *
 * The order matters: everything is read and checked first (manifest.yaml, the keyset, each
 * source image and its manifest, the pins against it), then each source is squashed into one
 * squashfs+verity layer in a work directory (squash-tools.ts; docs/service-images.md), then
 * install.json is built from the squashed images' manifests, signed and the signature verified,
 * and only then is anything written to the output; the write itself leaves the old index.json
 * in place until the new one is renamed over it. The work directory is removed either way.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { InstallFile } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import { checkSourcePins, computeInstallFile, type ResolvedImage, serializeInstallFile } from './install-file.ts';
import { loadSigningIdentity } from './keyset.ts';
import { applyLayoutWrite, readOutputLayout, readSourceImage, type SourceImage } from './layout-io.ts';
import { describeSource, parseManifestYaml } from './manifest-yaml.ts';
import { checkTag } from './names.ts';
import { type ArtifactPlan, computeIndexUpdate, type Descriptor, imageIndexEntry, planArtifacts } from './oci.ts';
import { makeWorkDir, removeWorkDir, type SquashedImage, squashImage, unpackArchiveSources } from './squash-tools.ts';
import { signInstallJson, verifyInstallJson } from './sign.ts';

export interface PublishOptions {
  /** manifest.yaml; relative `oci:` sources are resolved against its directory. */
  manifestPath: string;
  keysDir: string;
  keyset: string;
  product: string;
  /** The output OCI layout directory. */
  outDir: string;
  tag: string;
  /** RFC 3339 time for the artifacts' `created` annotation (see `resolveCreated`). */
  created: string;
  /** The time the signing certificate must be valid at (default: now). */
  now?: Date;
}

export interface PublishResult {
  layoutDir: string;
  tag: string;
  productUuid: string;
  installFile: InstallFile;
  /** install.json's exact bytes, as signed. */
  installJson: Buffer;
  signature: Buffer;
  install: Descriptor;
  signatureArtifact: Descriptor;
  certificateArtifact: Descriptor;
  /**
   * Each target's published image (digest and size as in install.json), the source manifest it
   * was squashed from, whether the source was kept as it was, and its dm-verity root hash.
   */
  images: { serviceName: string; digest: string; size: number; source: string; kept: boolean; rootHash: string }[];
}

export async function publishManifest(options: PublishOptions): Promise<PublishResult> {
  const tag = checkTag(options.tag);
  let text: string;
  try {
    text = await readFile(options.manifestPath, 'utf8');
  } catch (error) {
    throw new MosbError('E_MANIFEST_YAML', `cannot read ${options.manifestPath}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
  const manifest = parseManifestYaml(text, options.manifestPath);
  const identity = await loadSigningIdentity(options.keysDir, options.keyset, options.product, options.now);
  // Fail on a wrong product before reading any image.
  if (manifest.product !== null && manifest.product !== identity.uuid) computeInstallFile(manifest, identity.uuid, new Map());

  const baseDir = path.dirname(path.resolve(options.manifestPath));
  const workDir = await makeWorkDir();
  try {
    // Archives (oci-archive:) are unpacked into the work directory first, then read like layouts.
    const targets = await unpackArchiveSources(manifest.targets, baseDir, workDir);
    const sources = new Map<string, SourceImage>();
    for (const target of targets) {
      const image = await readSourceImage(target.source, baseDir);
      // The pins name the source image: checked before any squashing is spent on it.
      checkSourcePins(target, image.manifest);
      sources.set(target.service_name, image);
    }
    // Read now, so that an output that is not a layout fails before the squashing.
    const output = await readOutputLayout(options.outDir);

    // One squash per source image manifest: targets naming the same image share it.
    const bySource = new Map<string, SquashedImage>();
    const squashed = new Map<string, SquashedImage>();
    for (const target of manifest.targets) {
      const source = sources.get(target.service_name)!;
      let image = bySource.get(source.manifest.digest);
      if (!image) {
        image = await squashImage(source, workDir, `target ${target.service_name} (${describeSource(target.source)})`);
        bySource.set(source.manifest.digest, image);
      }
      squashed.set(target.service_name, image);
    }
    const resolved = new Map<string, ResolvedImage>(
      [...squashed].map(([name, image]) => [name, { digest: image.manifest.digest, size: image.manifest.size, source: { digest: image.source.digest, size: image.source.size } }]),
    );
    const installFile = computeInstallFile(manifest, identity.uuid, resolved);
    const installJson = serializeInstallFile(installFile);
    const signature = signInstallJson(installJson, identity.key);
    if (!verifyInstallJson(installJson, signature, identity.certificate)) {
      throw new MosbError('E_KEYSET_INVALID', `the signature made with keyset ${options.keyset} product ${options.product} does not verify with its certificate`);
    }

    const plan = planArtifacts({ installJson, signature, certificate: identity.certificatePem, created: options.created });
    const images = [...bySource.values()];
    const index = computeIndexUpdate(
      output.index,
      { tag, install: plan.install, referrers: [plan.signature, plan.certificate], images: images.map((image) => imageIndexEntry(image.manifest)) },
      output.subjects,
    );
    await applyLayoutWrite(output, { blobs: plan.blobs, images, index });
    return publishResult(options, tag, identity.uuid, { installFile, installJson, signature, plan, squashed });
  } finally {
    await removeWorkDir(workDir);
  }
}

function publishResult(
  options: PublishOptions,
  tag: string,
  productUuid: string,
  made: { installFile: InstallFile; installJson: Buffer; signature: Buffer; plan: ArtifactPlan; squashed: ReadonlyMap<string, SquashedImage> },
): PublishResult {
  const { installFile, installJson, signature, plan } = made;
  return {
    layoutDir: options.outDir,
    tag,
    productUuid,
    installFile,
    installJson,
    signature,
    install: plan.install,
    signatureArtifact: plan.signature,
    certificateArtifact: plan.certificate,
    images: installFile.targets.map((target) => {
      const image = made.squashed.get(target.service_name)!;
      return { serviceName: target.service_name, digest: target.digest, size: target.size, source: image.source.digest, kept: image.kept, rootHash: image.rootHash };
    }),
  };
}

/**
 * The `created` time: `--created` (RFC 3339) if given, else `SOURCE_DATE_EPOCH` (seconds), else
 * now; written as `YYYY-MM-DDTHH:MM:SSZ`. With the same inputs and time the output is the same
 * bytes, except ECDSA signatures (randomized by design) and what depends on them.
 */
export function resolveCreated(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, now: () => Date = () => new Date()): string {
  let date: Date;
  if (flag !== undefined) {
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(flag) || Number.isNaN(Date.parse(flag))) {
      throw new MosbError('E_ARGUMENT', `--created ${JSON.stringify(flag)} is not an RFC 3339 time (2024-01-31T12:00:00Z)`);
    }
    date = new Date(flag);
  } else if (env.SOURCE_DATE_EPOCH !== undefined && env.SOURCE_DATE_EPOCH !== '') {
    if (!/^\d{1,12}$/.test(env.SOURCE_DATE_EPOCH)) throw new MosbError('E_ARGUMENT', `SOURCE_DATE_EPOCH=${env.SOURCE_DATE_EPOCH} is not a number of seconds`);
    date = new Date(Number(env.SOURCE_DATE_EPOCH) * 1000);
  } else {
    date = now();
  }
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
