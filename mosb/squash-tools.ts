/**
 * Making the squashed service images squash.ts plans, with real tools: `umoci raw unpack` turns
 * the source's tar layers into a root filesystem (whiteouts, owners, modes, xattrs: umoci's
 * business, not ours), `mksquashfs` packs it, `veritysetup format` appends the hash tree in
 * place and prints the root hash. An image that is already one squashfs+verity layer is kept
 * byte for byte once `veritysetup verify` accepts its tree.
 *
 * Everything happens in a work directory the caller owns (under os.tmpdir()), never in the
 * source layout or the output: each squashed image ends up as a small OCI layout of its own
 * there, which `applyLayoutWrite` copies from (verifying every blob again) only once every
 * target has been squashed.
 */
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, open, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ANNOTATION, MEDIA_TYPE } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import { applyLayoutWrite, blobPath, copyBlob, hashFile, readOutputLayout, readSourceImage, type SourceImage } from './layout-io.ts';
import { describeSource, type OciSource } from './manifest-yaml.ts';
import { checkTag } from './names.ts';
import { type Descriptor, digestHex, encodeJson, type ImageManifest, OCI_LAYOUT_FILE, sha256Digest, tagImageInIndex } from './oci.ts';
import {
  checkVerityHeader,
  classifySourceImage,
  isZstdLayer,
  MAX_CONFIG_BYTES,
  parseSourceConfig,
  parseVerityDump,
  parseVerityRootHash,
  planSquashedImage,
  SQUASHFS_SUPERBLOCK_SIZE,
  squashfsBytesUsed,
  squashfsDataSize,
  squashTime,
  VERITY_BLOCK_SIZE,
  veritySalt,
  verityUuid,
} from './squash.ts';

/** A service image as published: its own layout in the work directory, and where it came from. */
export interface SquashedImage extends SourceImage {
  /** The source image manifest (what manifest.yaml's pins name). */
  source: Descriptor;
  /** true: the source already was one squashfs+verity layer and is published as it is. */
  kept: boolean;
  layer: Descriptor;
  rootHash: string;
}

/** The Debian package that provides each tool, for the "not installed" message. */
const TOOL_PACKAGES: Record<string, string> = { umoci: 'umoci', zstd: 'zstd', mksquashfs: 'squashfs-tools', veritysetup: 'cryptsetup-bin' };

/**
 * The tools' environment: LC_ALL=C because veritysetup's output is parsed; the sbin directories
 * on PATH because veritysetup lives there and a user's PATH may lack them; no SOURCE_DATE_EPOCH,
 * which mksquashfs refuses next to its explicit -mkfs-time/-all-time.
 */
function toolEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C' };
  delete env.SOURCE_DATE_EPOCH;
  delete env.NODE_EXTRA_CA_CERTS;
  const dirs = (env.PATH ?? '').split(':').filter(Boolean);
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) if (!dirs.includes(dir)) dirs.push(dir);
  env.PATH = dirs.join(':');
  return env;
}

/** The last lines of a tool's stderr: enough to say why, bounded for a one-line message. */
export function stderrTail(stderr: string, maxLines = 12, maxChars = 2000): string {
  const lines = stderr.split('\n').map((line) => line.trimEnd()).filter((line) => line !== '');
  const tail = lines.slice(-maxLines).join(' | ');
  return tail.length > maxChars ? `…${tail.slice(-maxChars)}` : tail;
}

interface ToolFailure {
  exitCode: number | null;
  signal: string | null;
  stderr: string;
}

/** Runs `tool args` (no shell); resolves with stdout, or with the failure for the caller to word. */
function runTool(tool: string, args: string[], what: string): Promise<{ ok: true; stdout: string } | { ok: false; failure: ToolFailure }> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { env: toolEnv(), encoding: 'utf8', maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      if (!error) return resolve({ ok: true, stdout });
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        return reject(new MosbError('E_SQUASH_TOOL', `${what}: ${tool} is not installed (Debian package ${TOOL_PACKAGES[tool] ?? tool})`, { cause: error }));
      }
      resolve({ ok: false, failure: { exitCode: typeof code === 'number' ? code : null, signal: (error as { signal?: string | null }).signal ?? null, stderr } });
    });
  });
}

function failureText(tool: string, failure: ToolFailure): string {
  const how = failure.signal ? `killed by ${failure.signal}` : `exit ${failure.exitCode}`;
  const tail = stderrTail(failure.stderr);
  return `${tool} failed (${how})${tail === '' ? '' : `: ${tail}`}`;
}

/** Runs a tool whose failure is a tool failure (E_SQUASH_TOOL); returns its stdout. */
async function mustRun(tool: string, args: string[], what: string): Promise<string> {
  const result = await runTool(tool, args, what);
  if (!result.ok) throw new MosbError('E_SQUASH_TOOL', `${what}: ${failureText(tool, result.failure)}`);
  return result.stdout;
}

/**
 * Turns `source` into the published image, in a new directory under `workDir`. `what` names the
 * image in messages (`target web (oci:src:v1)`). The source's blobs are copied into the work
 * directory first, each verified against its digest, so the tools only ever read bytes that
 * match the manifest that was read.
 */
export async function squashImage(source: SourceImage, workDir: string, what: string): Promise<SquashedImage> {
  const classified = classifySourceImage(source.parsed, what);
  if (source.parsed.config.size > MAX_CONFIG_BYTES) throw new MosbError('E_TOO_LARGE', `${what}: its config is ${source.parsed.config.size} bytes; the boot side accepts at most ${MAX_CONFIG_BYTES}`);
  if (classified.kind === 'layers' && process.geteuid?.() !== 0) {
    throw new MosbError(
      'E_SQUASH_TOOL',
      `${what}: squashing tar layers needs root (umoci must give files the owners the image names, and create its device nodes); run mosb as root, or publish an image that is already squashfs+verity`,
    );
  }
  const dir = await mkdtemp(path.join(workDir, 'image-'));
  const imageLayout = path.join(dir, 'image');
  await initLayout(imageLayout);
  if (classified.kind === 'squashed') {
    // Kept as it is: config, layer and manifest bytes are the source's.
    await copyBlob(source.layout, imageLayout, source.parsed.config, `${what} config`);
    await copyBlob(source.layout, imageLayout, classified.layer, `${what} layer`);
    await writeBlobFile(imageLayout, source.manifest.digest, source.manifestBytes);
    await checkKeptLayer(blobPath(imageLayout, classified.layer.digest), classified.rootHash, what);
    return { ...source, layout: imageLayout, source: source.manifest, kept: true, layer: classified.layer, rootHash: classified.rootHash };
  }

  // 1. A private copy of the source (verified), with zstd layers made plain tar for umoci.
  const unpackLayout = path.join(dir, 'source');
  await initLayout(unpackLayout);
  await copyBlob(source.layout, unpackLayout, source.parsed.config, `${what} config`);
  const sourceConfig = await readSmallFile(blobPath(unpackLayout, source.parsed.config.digest));
  const config = parseSourceConfig(sourceConfig, what);
  const layers: Descriptor[] = [];
  for (const [i, layer] of source.parsed.layers.entries()) {
    await copyBlob(source.layout, unpackLayout, layer, `${what} layers[${i}]`);
    layers.push(isZstdLayer(layer.mediaType) ? await decompressZstdLayer(unpackLayout, layer, `${what} layers[${i}]`) : layer);
  }
  const unchanged = layers.every((layer, i) => layer === source.parsed.layers[i]);
  const unpackManifest = unchanged ? source.manifestBytes : encodeJson({ ...source.parsed, layers } satisfies ImageManifest);
  const unpackDigest = await writeBlobBytes(unpackLayout, unpackManifest);
  const unpackTag = 'source';
  await writeFile(
    path.join(unpackLayout, 'index.json'),
    encodeJson({ schemaVersion: 2, mediaType: MEDIA_TYPE.imageIndex, manifests: [{ mediaType: MEDIA_TYPE.imageManifest, digest: unpackDigest, size: unpackManifest.length, annotations: { [ANNOTATION.refName]: unpackTag } }] }),
  );

  // 2. The root filesystem, by umoci (as root: owners, modes, device nodes as in the image).
  const rootfs = path.join(dir, 'rootfs');
  await mkdir(rootfs);
  // A layer without a `./` entry leaves the root directory as created: make that the usual 0755.
  await chmod(rootfs, 0o755);
  await mustRun('umoci', ['--log', 'error', 'raw', 'unpack', '--image', `${unpackLayout}:${unpackTag}`, rootfs], what);
  await rm(unpackLayout, { recursive: true, force: true });

  // 3. The squashfs, reproducibly: fixed times from the source (squash.ts `squashTime`).
  const blob = path.join(dir, 'layer');
  const time = String(squashTime(config));
  await mustRun(
    'mksquashfs',
    [rootfs, blob, '-noappend', '-comp', 'gzip', '-reproducible', '-exit-on-error', '-no-progress', '-quiet', '-mkfs-time', time, '-all-time', time],
    what,
  );
  await rm(rootfs, { recursive: true, force: true });
  const dataSize = (await stat(blob)).size;
  if (dataSize === 0 || dataSize % VERITY_BLOCK_SIZE !== 0) {
    throw new MosbError('E_SQUASH_TOOL', `${what}: mksquashfs wrote ${dataSize} bytes, not a multiple of ${VERITY_BLOCK_SIZE} (was it built without padding?)`);
  }
  const bytesUsed = squashfsBytesUsed(await readHead(blob, SQUASHFS_SUPERBLOCK_SIZE), what);
  if (Math.ceil(bytesUsed / VERITY_BLOCK_SIZE) * VERITY_BLOCK_SIZE !== dataSize) {
    throw new MosbError('E_SQUASH_TOOL', `${what}: mksquashfs wrote ${dataSize} bytes but its superblock says ${bytesUsed} are used`);
  }

  // 4. The verity tree, appended in place; salt and uuid derived from the squashfs bytes.
  const salt = veritySalt(await hashFile(blob));
  const formatted = await mustRun(
    'veritysetup',
    [
      'format',
      blob,
      blob,
      `--hash-offset=${dataSize}`,
      `--data-blocks=${dataSize / VERITY_BLOCK_SIZE}`,
      `--data-block-size=${VERITY_BLOCK_SIZE}`,
      `--hash-block-size=${VERITY_BLOCK_SIZE}`,
      '--hash=sha256',
      `--salt=${salt}`,
      `--uuid=${verityUuid(salt)}`,
    ],
    what,
  );
  const rootHash = parseVerityRootHash(formatted);
  if (rootHash === undefined) throw new MosbError('E_SQUASH_TOOL', `${what}: veritysetup format printed no root hash (output: ${stderrTail(formatted)})`);
  // A self-check of what was just written, with the tool the machine's kernel agrees with.
  await mustRun('veritysetup', ['verify', blob, blob, rootHash, `--hash-offset=${dataSize}`], what);

  // 5. The image: the blob under its digest, then the planned config and manifest.
  const layerDigest = await hashFile(blob);
  const layerSize = (await stat(blob)).size;
  await rename(blob, blobPath(imageLayout, layerDigest));
  const plan = planSquashedImage({ sourceConfig, sourceManifestDigest: source.manifest.digest, layer: { digest: layerDigest, size: layerSize, rootHash }, what });
  await writeBlobFile(imageLayout, plan.config.digest, plan.config.bytes);
  await writeBlobFile(imageLayout, plan.manifest.digest, plan.manifest.bytes);
  return {
    layout: imageLayout,
    manifest: plan.manifest.descriptor,
    manifestBytes: plan.manifest.bytes,
    parsed: plan.manifest.parsed,
    source: source.manifest,
    kept: false,
    layer: plan.layer,
    rootHash,
  };
}

/** An already-squashed layer: its tree must verify with its root hash and have the right shape. */
async function checkKeptLayer(blob: string, rootHash: string, what: string): Promise<void> {
  const blobSize = (await stat(blob)).size;
  const dataSize = squashfsDataSize(await readHead(blob, SQUASHFS_SUPERBLOCK_SIZE), blobSize, what);
  const verified = await runTool('veritysetup', ['verify', blob, blob, rootHash, `--hash-offset=${dataSize}`], what);
  if (!verified.ok) {
    throw new MosbError('E_SQUASH_FORMAT', `${what}: its squashfs layer does not verify against its root hash ${rootHash.slice(0, 16)}… (${failureText('veritysetup verify', verified.failure)})`);
  }
  checkVerityHeader(parseVerityDump(await mustRun('veritysetup', ['dump', blob, `--hash-offset=${dataSize}`], what)), dataSize, what);
}

/** A tar+zstd layer as plain tar (umoci 0.4 reads no zstd); its digest is then its diff_id. */
async function decompressZstdLayer(layout: string, layer: Descriptor, what: string): Promise<Descriptor> {
  const compressed = blobPath(layout, layer.digest);
  const tar = path.join(layout, 'layer.tar');
  await mustRun('zstd', ['-d', '-q', '-f', compressed, '-o', tar], what);
  const digest = await hashFile(tar);
  const { size } = await stat(tar);
  await rename(tar, blobPath(layout, digest));
  if (digest !== layer.digest) await unlink(compressed);
  const { annotations } = layer;
  return { mediaType: layer.mediaType.replace(/\+zstd$/, ''), digest, size, ...(annotations ? { annotations } : {}) };
}

async function initLayout(layout: string): Promise<void> {
  await mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(layout, 'oci-layout'), encodeJson(OCI_LAYOUT_FILE));
}

async function writeBlobFile(layout: string, digest: string, bytes: Buffer): Promise<void> {
  await writeFile(path.join(layout, 'blobs', 'sha256', digestHex(digest)), bytes);
}

async function writeBlobBytes(layout: string, bytes: Buffer): Promise<string> {
  const digest = sha256Digest(bytes);
  await writeBlobFile(layout, digest, bytes);
  return digest;
}

async function readHead(file: string, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function readSmallFile(file: string): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** A fresh work directory under os.tmpdir() ($TMPDIR), removed by `removeWorkDir`. */
export const makeWorkDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'mosb-squash-'));
export const removeWorkDir = (dir: string): Promise<void> => rm(dir, { recursive: true, force: true, maxRetries: 3 });

export interface SquashToLayoutOptions {
  source: OciSource;
  /** Where a relative source directory is resolved from. */
  baseDir: string;
  outDir: string;
  tag: string;
}

export interface SquashToLayoutResult {
  outDir: string;
  tag: string;
  /** The image manifest now tagged in `outDir`. */
  manifest: Descriptor;
  source: Descriptor;
  kept: boolean;
  layer: Descriptor;
  rootHash: string;
}

/** `mosb image squash oci:SRC:TAG --out oci:DIR:TAG`: one image, squashed, tagged in DIR. */
export async function squashToLayout(options: SquashToLayoutOptions): Promise<SquashToLayoutResult> {
  const tag = checkTag(options.tag);
  const workDir = await makeWorkDir();
  try {
    const [unpacked] = await unpackArchiveSources([{ source: options.source }], options.baseDir, workDir);
    const image = await readSourceImage(unpacked!.source, options.baseDir);
    const output = await readOutputLayout(options.outDir);
    const squashed = await squashImage(image, workDir, describeSource(options.source));
    const index = tagImageInIndex(output.index, tag, squashed.manifest);
    await applyLayoutWrite(output, { blobs: [], images: [squashed], index });
    return { outDir: options.outDir, tag, manifest: squashed.manifest, source: squashed.source, kept: squashed.kept, layer: squashed.layer, rootHash: squashed.rootHash };
  } finally {
    await removeWorkDir(workDir);
  }
}

/**
 * Unpacks every `oci-archive:` source into `workDir` (GNU tar: no absolute names, no `..`,
 * symlinks made last so nothing is written through one) and points its `dir` there; `oci:`
 * sources are returned as they are. The caller removes `workDir` when done.
 */
export async function unpackArchiveSources<T extends { source: OciSource }>(items: readonly T[], baseDir: string, workDir: string): Promise<T[]> {
  const unpacked: T[] = [];
  let count = 0;
  for (const item of items) {
    const { archive } = item.source;
    if (archive === undefined) {
      unpacked.push(item);
      continue;
    }
    const dir = path.join(workDir, `archive-${++count}`);
    await mkdir(dir);
    const what = `oci-archive:${archive}:${item.source.tag}`;
    const result = await runTool('tar', ['--extract', '--no-same-owner', '--no-same-permissions', '--file', path.resolve(baseDir, archive), '--directory', dir], what);
    if (!result.ok) throw new MosbError('E_SOURCE', `${what}: cannot unpack it: ${failureText('tar', result.failure)}`);
    unpacked.push({ ...item, source: { ...item.source, dir } });
  }
  return unpacked;
}
