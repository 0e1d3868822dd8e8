/**
 * The effects on OCI image layouts: reading a source image, copying its blobs (each verified
 * against its digest while it is copied), and writing the output layout so that a reader only
 * ever sees the old index.json or the new one: blobs first, each written beside its place and
 * renamed in, index.json last, by rename.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { ANNOTATION, MAX_BYTES, MEDIA_TYPE } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import { describeSource, type OciSource } from './manifest-yaml.ts';
import {
  type Blob,
  type Descriptor,
  digestHex,
  emptyIndex,
  encodeJson,
  type ImageIndex,
  type ImageManifest,
  OCI_LAYOUT_FILE,
  parseImageIndex,
  parseImageManifest,
  referrerCandidates,
  sha256Digest,
} from './oci.ts';

export const blobPath = (layout: string, digest: string) => path.join(layout, 'blobs', 'sha256', digestHex(digest));
const tmpName = (file: string) => path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);

/** Reads at most `limit` bytes of a file; a larger file is refused before it is read. */
async function readBounded(file: string, limit: number, what: string, code: 'E_LAYOUT' | 'E_SOURCE'): Promise<Buffer> {
  let handle;
  try {
    handle = await open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (error) {
    throw new MosbError(code, `${what}: cannot open ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`, { cause: error });
  }
  try {
    const { size } = await handle.stat();
    if (size > limit) throw new MosbError('E_TOO_LARGE', `${what}: ${file} is ${size} bytes, more than ${limit}`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** A target's image in its source layout: the manifest's descriptor and bytes, already verified. */
export interface SourceImage {
  layout: string;
  manifest: Descriptor;
  manifestBytes: Buffer;
  parsed: ImageManifest;
}

/** Finds `source.tag` in the OCI layout at `source.dir` (resolved against `baseDir`). */
export async function readSourceImage(source: OciSource, baseDir: string): Promise<SourceImage> {
  const layout = path.resolve(baseDir, source.dir);
  const label = describeSource(source);
  const layoutFile = await readBounded(path.join(layout, 'oci-layout'), MAX_BYTES.ociLayout, label, 'E_SOURCE');
  checkLayoutFile(layoutFile, `${label}: oci-layout`, 'E_SOURCE');
  const index = parseImageIndex(await readBounded(path.join(layout, 'index.json'), MAX_BYTES.index, label, 'E_SOURCE'), `${label}: index.json`, 'E_SOURCE');
  const tagged = index.manifests.filter((entry) => entry.annotations?.[ANNOTATION.refName] === source.tag);
  const digests = new Set(tagged.map((entry) => entry.digest));
  if (digests.size === 0) {
    const tags = index.manifests.map((entry) => entry.annotations?.[ANNOTATION.refName]).filter((tag) => tag !== undefined);
    throw new MosbError('E_SOURCE', `${label}: no image is tagged ${source.tag} (tags: ${tags.length > 0 ? tags.join(', ') : 'none'})`);
  }
  if (digests.size > 1) throw new MosbError('E_SOURCE', `${label}: the tag names ${digests.size} different manifests`);
  const manifest = tagged[0]!;
  if (manifest.mediaType === MEDIA_TYPE.imageIndex) {
    throw new MosbError('E_SOURCE', `${label}: is an image index (several platforms); copy the one platform to install into its own tag (skopeo copy --override-arch …)`);
  }
  if (manifest.mediaType !== MEDIA_TYPE.imageManifest) throw new MosbError('E_SOURCE', `${label}: mediaType ${manifest.mediaType} is not an OCI image manifest`);
  if (manifest.size > MAX_BYTES.manifest) throw new MosbError('E_TOO_LARGE', `${label}: its manifest is ${manifest.size} bytes; the boot side accepts at most ${MAX_BYTES.manifest}`);
  const manifestBytes = await readBounded(blobPath(layout, manifest.digest), MAX_BYTES.manifest, `${label}: manifest`, 'E_SOURCE');
  if (manifestBytes.length !== manifest.size || sha256Digest(manifestBytes) !== manifest.digest) {
    throw new MosbError('E_DIGEST_MISMATCH', `${label}: its manifest blob does not match ${manifest.digest} (${manifest.size} bytes)`);
  }
  const parsed = parseImageManifest(manifestBytes, `${label}: manifest ${manifest.digest}`);
  return { layout, manifest: { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.size }, manifestBytes, parsed };
}

function checkLayoutFile(bytes: Buffer, what: string, code: 'E_LAYOUT' | 'E_SOURCE'): void {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch {
    value = undefined;
  }
  if (!(value !== null && typeof value === 'object' && (value as Record<string, unknown>).imageLayoutVersion === '1.0.0')) {
    throw new MosbError(code, `${what}: not an OCI image layout 1.0.0`);
  }
}

/** The output layout as found: its index (empty for a new layout) and whether it exists yet. */
export interface OutputLayout {
  dir: string;
  index: ImageIndex;
  /** Subject digests of the index's referrer candidates (oci.ts `referrerCandidates`). */
  subjects: Map<string, string>;
  /** false: the directory is new or empty, and needs its `oci-layout` file. */
  initialized: boolean;
}

/**
 * Opens `dir` for adding to: a missing or empty directory starts a new layout; an existing one
 * must be an OCI layout. One whose `oci-layout` exists but whose index.json does not (a first
 * publish that was interrupted) counts as empty.
 */
export async function readOutputLayout(dir: string): Promise<OutputLayout> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { dir, index: emptyIndex(), subjects: new Map(), initialized: false };
    throw new MosbError('E_LAYOUT', `${dir}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
  if (entries.length === 0) return { dir, index: emptyIndex(), subjects: new Map(), initialized: false };
  if (!entries.includes('oci-layout')) throw new MosbError('E_LAYOUT', `${dir} is not empty and not an OCI image layout (no oci-layout file); refusing to write into it`);
  checkLayoutFile(await readBounded(path.join(dir, 'oci-layout'), MAX_BYTES.ociLayout, dir, 'E_LAYOUT'), `${dir}/oci-layout`, 'E_LAYOUT');
  if (!entries.includes('index.json')) return { dir, index: emptyIndex(), subjects: new Map(), initialized: true };
  const index = parseImageIndex(await readBounded(path.join(dir, 'index.json'), MAX_BYTES.index, dir, 'E_LAYOUT'), `${dir}/index.json`);
  const subjects = new Map<string, string>();
  for (const candidate of referrerCandidates(index)) {
    const bytes = await readBounded(blobPath(dir, candidate.digest), MAX_BYTES.manifest, `${dir}: index.json lists ${candidate.digest}`, 'E_LAYOUT');
    if (sha256Digest(bytes) !== candidate.digest) throw new MosbError('E_LAYOUT', `${dir}: blob ${candidate.digest} does not match its digest`);
    let subject: unknown;
    try {
      subject = (JSON.parse(bytes.toString('utf8')) as { subject?: { digest?: unknown } }).subject?.digest;
    } catch (error) {
      throw new MosbError('E_LAYOUT', `${dir}: manifest ${candidate.digest} is not JSON`, { cause: error });
    }
    if (typeof subject === 'string') subjects.set(candidate.digest, subject);
  }
  return { dir, index, subjects, initialized: true };
}

/** Writes `bytes` at `file` through a temporary beside it, synced, then renamed in. */
async function writeFileAtomic(file: string, bytes: Buffer, mode = 0o644): Promise<void> {
  const tmp = tmpName(file);
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
  await handle.close();
  try {
    await rename(tmp, file);
  } catch (error) {
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
}

/** Checks a blob already in the layout: a same-named file with other contents is an error. */
async function existingBlobMatches(file: string, digest: string, size: number): Promise<boolean> {
  let info;
  try {
    info = await stat(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
  if (info.size === size && (await hashFile(file)) === digest) return true;
  throw new MosbError('E_LAYOUT', `${file} exists but does not hold ${digest}; the output layout is corrupt`);
}

/** `sha256:<hex>` of a file's bytes, read in 1 MiB chunks. */
export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(1 << 20);
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
    }
  } finally {
    await handle.close();
  }
  return `sha256:${hash.digest('hex')}`;
}

async function ensureBlobDir(layout: string): Promise<void> {
  await mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
}

export async function writeBlob(layout: string, blob: Blob): Promise<void> {
  if (sha256Digest(blob.bytes) !== blob.digest) throw new Error(`internal: blob does not match ${blob.digest}`);
  const file = blobPath(layout, blob.digest);
  if (await existingBlobMatches(file, blob.digest, blob.bytes.length)) return;
  await writeFileAtomic(file, blob.bytes);
}

/**
 * Copies one blob from a source layout, hashing while copying; a blob whose bytes do not match
 * its descriptor's digest and size is never renamed into the output.
 */
export async function copyBlob(sourceLayout: string, layout: string, descriptor: Descriptor, what: string): Promise<void> {
  const file = blobPath(layout, descriptor.digest);
  if (await existingBlobMatches(file, descriptor.digest, descriptor.size)) return;
  const from = blobPath(sourceLayout, descriptor.digest);
  let input;
  try {
    input = await open(from, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (error) {
    throw new MosbError('E_SOURCE', `${what}: blob ${descriptor.digest} is missing from ${sourceLayout} (${(error as NodeJS.ErrnoException).code ?? String(error)})`, { cause: error });
  }
  const tmp = tmpName(file);
  try {
    const { size } = await input.stat();
    if (size !== descriptor.size) throw new MosbError('E_DIGEST_MISMATCH', `${what}: blob ${descriptor.digest} is ${size} bytes, its descriptor says ${descriptor.size}`);
    const output = await open(tmp, 'wx', 0o644);
    const hash = createHash('sha256');
    let copied = 0;
    try {
      const buffer = Buffer.alloc(1 << 20);
      for (;;) {
        const { bytesRead } = await input.read(buffer, 0, buffer.length, null);
        if (bytesRead === 0) break;
        copied += bytesRead;
        if (copied > descriptor.size) break;
        const chunk = buffer.subarray(0, bytesRead);
        hash.update(chunk);
        await output.write(chunk);
      }
      await output.sync();
    } finally {
      await output.close();
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (copied !== descriptor.size || digest !== descriptor.digest) {
      throw new MosbError('E_DIGEST_MISMATCH', `${what}: blob ${descriptor.digest} in ${sourceLayout} does not match its digest (read ${digest}, ${copied} bytes)`);
    }
    await rename(tmp, file);
  } catch (error) {
    await unlink(tmp).catch(() => undefined);
    throw error;
  } finally {
    await input.close();
  }
}

/** What one publish writes: blobs from memory, images copied from their sources, the index. */
export interface LayoutWrite {
  blobs: Blob[];
  images: SourceImage[];
  index: ImageIndex;
}

/** Blobs first (each renamed in), index.json last (renamed in): never a half-written layout. */
export async function applyLayoutWrite(output: OutputLayout, write: LayoutWrite): Promise<void> {
  const { dir } = output;
  await mkdir(dir, { recursive: true });
  if (!output.initialized) await writeFileAtomic(path.join(dir, 'oci-layout'), encodeJson(OCI_LAYOUT_FILE));
  await ensureBlobDir(dir);
  for (const image of write.images) {
    const what = `oci:${image.layout}`;
    await copyBlob(image.layout, dir, image.parsed.config, `${what} config`);
    for (const [i, layer] of image.parsed.layers.entries()) await copyBlob(image.layout, dir, layer, `${what} layers[${i}]`);
    await writeBlob(dir, { digest: image.manifest.digest, bytes: image.manifestBytes });
  }
  for (const blob of write.blobs) await writeBlob(dir, blob);
  const indexBytes = encodeJson(write.index);
  if (indexBytes.length > MAX_BYTES.index) throw new MosbError('E_TOO_LARGE', `index.json would be ${indexBytes.length} bytes; the boot side accepts at most ${MAX_BYTES.index}`);
  await writeFileAtomic(path.join(dir, 'index.json'), indexBytes);
  await syncDirectory(dir);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
