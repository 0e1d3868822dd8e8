/**
 * Service images squashed into one squashfs+verity layer (mosb/squash-tools.ts), judged by tools
 * that share no code with mosb: the source image is made by umoci (two layers, the second
 * deleting a file through a whiteout), the squashfs is listed by `unsquashfs`, the tree is
 * checked by `veritysetup verify` / `dump`, the output layout read by skopeo and umoci. Then
 * `mosb manifest publish` of that source, and the bundle's `image squash`. Needs root (umoci
 * unpacks with the image's owners).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { ANNOTATION, MEDIA_TYPE } from '../../init/trust/formats.ts';
import { publishManifest } from '../../mosb/publish.ts';
import { SQUASHED_BY, SQUASHFS_VERITY_MEDIA_TYPE, VERITY_ROOT_HASH_ANNOTATION, verityUuid } from '../../mosb/squash.ts';
import { squashToLayout, type SquashToLayoutResult } from '../../mosb/squash-tools.ts';
import { blobPath, type KeysetFixture, makeKeysetFixture, makeSourceImage, makeTar, readBlobJson, readIndex } from '../helpers/manifest-fixtures.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bundle = path.join(root, 'dist', 'mosb.mjs');
const SEARCH_PATH = ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'];
const has = (command: string) => SEARCH_PATH.some((dir) => existsSync(path.join(dir, command)));
const missing = ['umoci', 'mksquashfs', 'unsquashfs', 'veritysetup', 'skopeo', 'openssl', 'tar'].filter((command) => !has(command));
const isRoot = process.geteuid?.() === 0;

function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C' };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.SOURCE_DATE_EPOCH;
  delete env.MOS_KEYS_DIR;
  return env;
}
const run = (command: string, args: string[]) => execFileSync(command, args, { env: childEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const status = (command: string, args: string[]) => spawnSync(command, args, { env: childEnv(), encoding: 'utf8' });
const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** The source's created time; every inode of the squashfs gets it. */
const SOURCE_CREATED = '2024-05-06T07:08:09Z';

/**
 * A two-layer image made with umoci alone: layer 1 has files of uid 0 and 1000, a symlink, a
 * setuid file and /etc/gone; layer 2 deletes /etc/gone (umoci writes the `.wh.gone` whiteout)
 * and adds /etc/added. The config names entrypoint, env, user, ports, labels.
 */
function makeUmociSource(layout: string, tag: string): { digest: string; layerDigests: string[] } {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'mosb-squash-src-'));
  try {
    run('umoci', ['init', '--layout', layout]);
    run('umoci', ['new', '--image', `${layout}:base`]);
    const first = path.join(scratch, 'b1');
    run('umoci', ['unpack', '--image', `${layout}:base`, first]);
    const rootfs = path.join(first, 'rootfs');
    mkdirSync(path.join(rootfs, 'etc'), { recursive: true });
    mkdirSync(path.join(rootfs, 'home', 'user'), { recursive: true });
    mkdirSync(path.join(rootfs, 'srv'), { recursive: true });
    writeFileSync(path.join(rootfs, 'etc', 'hello'), 'hello\n', { mode: 0o644 });
    writeFileSync(path.join(rootfs, 'etc', 'gone'), 'deleted in layer 2\n', { mode: 0o644 });
    writeFileSync(path.join(rootfs, 'home', 'user', 'notes'), 'mine\n', { mode: 0o600 });
    writeFileSync(path.join(rootfs, 'srv', 'web'), '#!/bin/sh\necho web\n', { mode: 0o755 });
    writeFileSync(path.join(rootfs, 'srv', 'suid'), 'x', { mode: 0o644 });
    chmodSync(path.join(rootfs, 'srv', 'suid'), 0o4755);
    execFileSync('chown', ['-R', '1000:1000', path.join(rootfs, 'home', 'user')]);
    execFileSync('ln', ['-s', '/etc/hello', path.join(rootfs, 'link')]);
    run('umoci', ['repack', '--image', `${layout}:one`, first]);
    const second = path.join(scratch, 'b2');
    run('umoci', ['unpack', '--image', `${layout}:one`, second]);
    rmSync(path.join(second, 'rootfs', 'etc', 'gone'));
    writeFileSync(path.join(second, 'rootfs', 'etc', 'added'), 'layer 2\n');
    run('umoci', ['repack', '--image', `${layout}:two`, second]);
    run('umoci', [
      'config',
      '--image', `${layout}:two`,
      '--tag', tag,
      '--config.entrypoint', '/srv/web',
      '--config.cmd', '--port=80',
      '--config.env', 'MODE=test',
      '--config.user', '1000:1000',
      '--config.workingdir', '/srv',
      '--config.exposedports', '80/tcp',
      '--config.label', 'org.example.name=web',
      '--created', SOURCE_CREATED,
    ]);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const raw = run('skopeo', ['inspect', '--raw', `oci:${layout}:${tag}`]);
  return { digest: sha256(Buffer.from(raw)), layerDigests: JSON.parse(raw).layers.map((layer: { digest: string }) => layer.digest) };
}

/** `unsquashfs -lln` as path → "mode uid/gid" (and the link target for symlinks). */
function listSquashfs(blob: string): Map<string, string> {
  const entries = new Map<string, string>();
  for (const line of run('unsquashfs', ['-lln', blob]).split('\n')) {
    const match = /^(\S+) (\d+)\/(\d+)\s+\d+ (\d{4}-\d{2}-\d{2} \d{2}:\d{2}) squashfs-root(\S*)(?: -> (\S+))?$/.exec(line);
    if (!match) continue;
    const [, mode, uid, gid, time, name, target] = match;
    entries.set(name === '' ? '/' : name!, `${mode} ${uid}/${gid} ${time}${target ? ` -> ${target}` : ''}`);
  }
  return entries;
}

/** The squashfs size recorded in its superblock (bytes_used at 40), rounded up to 4096. */
function hashOffset(blob: string): number {
  const bytesUsed = Number(readFileSync(blob).readBigUInt64LE(40));
  return Math.ceil(bytesUsed / 4096) * 4096;
}

let work: string;
let tmp: string;
const previousTmpdir = process.env.TMPDIR;
beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'mosb-squash-test-'));
  // mosb's work directories go under os.tmpdir(): a private one shows what is left behind.
  tmp = path.join(work, 'tmp');
  mkdirSync(tmp);
  process.env.TMPDIR = tmp;
});
afterAll(() => {
  if (previousTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = previousTmpdir;
  rmSync(work, { recursive: true, force: true });
});

describe.skipIf(missing.length > 0 || !isRoot)('mosb image squash', () => {
  let source: { layout: string; tag: string; digest: string; layerDigests: string[] };
  let squashed: SquashToLayoutResult;
  let out: string;
  let blob: string;

  beforeAll(async () => {
    const layout = path.join(work, 'src');
    source = { layout, tag: 'web', ...makeUmociSource(layout, 'web') };
    out = path.join(work, 'out');
    squashed = await squashToLayout({ source: { dir: 'src', tag: 'web' }, baseDir: work, outDir: out, tag: 'web-squashed' });
    blob = blobPath(out, squashed.layer.digest);
  });

  it('has a two-layer source with a whiteout (the test is about something)', () => {
    expect(source.layerDigests).toHaveLength(2);
    const second = run('tar', ['-tzf', blobPath(source.layout, source.layerDigests[1]!)]);
    expect(second).toContain('etc/.wh.gone');
    expect(squashed.source.digest).toBe(source.digest);
    expect(squashed.kept).toBe(false);
  });

  it('writes one squashfs+verity layer whose annotation is the root hash, and keeps the config', () => {
    const manifest = readBlobJson(out, squashed.manifest.digest);
    expect(manifest).toEqual({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.imageManifest,
      config: { mediaType: MEDIA_TYPE.imageConfig, digest: expect.stringMatching(/^sha256:/), size: expect.any(Number) },
      layers: [{ mediaType: SQUASHFS_VERITY_MEDIA_TYPE, digest: squashed.layer.digest, size: squashed.layer.size, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: squashed.rootHash } }],
    });
    expect(squashed.rootHash).toMatch(/^[0-9a-f]{64}$/);
    const config = readBlobJson(out, manifest.config.digest);
    const sourceConfig = JSON.parse(run('skopeo', ['inspect', '--config', `oci:${source.layout}:${source.tag}`]));
    expect(config.config).toEqual(sourceConfig.config);
    expect(config.config).toMatchObject({ Entrypoint: ['/srv/web'], Cmd: ['--port=80'], User: '1000:1000', WorkingDir: '/srv', ExposedPorts: { '80/tcp': {} }, Labels: { 'org.example.name': 'web' } });
    expect(config.config.Env).toContain('MODE=test');
    expect([config.architecture, config.os, config.created]).toEqual([sourceConfig.architecture, sourceConfig.os, sourceConfig.created]);
    expect(config.rootfs).toEqual({ type: 'layers', diff_ids: [squashed.layer.digest] });
    expect(config.history).toEqual([{ created: sourceConfig.created, created_by: SQUASHED_BY, comment: `squashfs with dm-verity from ${source.digest}` }]);
    // The output holds the squashed image only.
    expect(readdirSync(path.join(out, 'blobs', 'sha256')).sort()).toEqual([squashed.manifest.digest, manifest.config.digest, squashed.layer.digest].map((d) => d.slice(7)).sort());
  });

  it('unsquashfs lists the merged tree with its owners and modes, and no deleted file or whiteout', () => {
    const entries = listSquashfs(blob);
    const time = '2024-05-06 07:08';
    expect(Object.fromEntries(entries)).toEqual({
      '/': `drwxr-xr-x 0/0 ${time}`,
      '/etc': `drwxr-xr-x 0/0 ${time}`,
      '/etc/added': `-rw-r--r-- 0/0 ${time}`,
      '/etc/hello': `-rw-r--r-- 0/0 ${time}`,
      '/home': `drwxr-xr-x 0/0 ${time}`,
      '/home/user': `drwxr-xr-x 1000/1000 ${time}`,
      '/home/user/notes': `-rw------- 1000/1000 ${time}`,
      '/link': `lrwxrwxrwx 0/0 ${time} -> /etc/hello`,
      '/srv': `drwxr-xr-x 0/0 ${time}`,
      '/srv/suid': `-rwsr-xr-x 0/0 ${time}`,
      '/srv/web': `-rwxr-xr-x 0/0 ${time}`,
    });
    expect(run('unsquashfs', ['-cat', blob, 'etc/hello'])).toBe('hello\n');
  });

  it('veritysetup verifies the tree after the squashfs with the annotated root hash; dump shows D/4096 data blocks', () => {
    const size = readFileSync(blob).length;
    const offset = hashOffset(blob);
    expect(offset % 4096).toBe(0);
    expect(size).toBeGreaterThan(offset);
    expect(size % 4096).toBe(0);
    expect(status('veritysetup', ['verify', blob, blob, squashed.rootHash, `--hash-offset=${offset}`]).status).toBe(0);
    const dump = run('veritysetup', ['dump', blob, `--hash-offset=${offset}`]);
    expect(dump).toMatch(new RegExp(`^Data blocks:\\s+${offset / 4096}$`, 'm'));
    expect(dump).toMatch(/^Data block size:\s+4096$/m);
    expect(dump).toMatch(/^Hash block size:\s+4096$/m);
    expect(dump).toMatch(/^Hash algorithm:\s+sha256$/m);
    // The salt is the squashfs's SHA-256, the uuid derived from it.
    const salt = createHash('sha256').update(readFileSync(blob).subarray(0, offset)).digest('hex');
    expect(dump).toMatch(new RegExp(`^Salt:\\s+${salt}$`, 'm'));
    expect(dump).toMatch(new RegExp(`^UUID:\\s+${verityUuid(salt)}$`, 'm'));
    // Another root hash does not verify.
    expect(status('veritysetup', ['verify', blob, blob, 'ab'.repeat(32), `--hash-offset=${offset}`]).status).not.toBe(0);
  });

  it('a flipped byte in the squashfs area fails veritysetup verify', () => {
    const copy = path.join(work, 'flipped');
    const bytes = readFileSync(blob);
    const offset = hashOffset(blob);
    bytes[Math.floor(offset / 2)]! ^= 0x01;
    writeFileSync(copy, bytes);
    const result = status('veritysetup', ['verify', copy, copy, squashed.rootHash, `--hash-offset=${offset}`]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/Verification/);
  });

  it('skopeo and umoci read the output layout', () => {
    const raw = run('skopeo', ['inspect', '--raw', `oci:${out}:web-squashed`]);
    expect(raw).toBe(readFileSync(blobPath(out, squashed.manifest.digest), 'utf8'));
    const inspected = JSON.parse(run('skopeo', ['inspect', `oci:${out}:web-squashed`]));
    expect(inspected.Digest).toBe(squashed.manifest.digest);
    expect(inspected.Layers).toEqual([squashed.layer.digest]);
    expect(run('umoci', ['ls', '--layout', out]).split('\n').filter(Boolean)).toEqual(['web-squashed']);
  });

  it('is reproducible: squashing again gives the same bytes; an already-squashed image is kept as it is', async () => {
    const again = await squashToLayout({ source: { dir: source.layout, tag: source.tag }, baseDir: '/', outDir: path.join(work, 'again'), tag: 'x' });
    expect([again.manifest.digest, again.layer.digest, again.rootHash]).toEqual([squashed.manifest.digest, squashed.layer.digest, squashed.rootHash]);
    const kept = await squashToLayout({ source: { dir: out, tag: 'web-squashed' }, baseDir: '/', outDir: path.join(work, 'kept'), tag: 'x' });
    expect(kept.kept).toBe(true);
    expect(kept.manifest).toEqual(squashed.manifest);
    expect(readFileSync(blobPath(path.join(work, 'kept'), squashed.layer.digest))).toEqual(readFileSync(blob));
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('takes an image archive (skopeo oci-archive:) as well as a layout, with the same result', async () => {
    const archive = path.join(work, 'web.tar');
    run('skopeo', ['copy', '--quiet', `oci:${source.layout}:${source.tag}`, `oci-archive:${archive}:${source.tag}`]);
    const fromArchive = await squashToLayout({ source: { dir: '', tag: source.tag, archive }, baseDir: '/', outDir: path.join(work, 'from-archive'), tag: 'x' });
    expect(fromArchive.manifest.digest).toBe(squashed.manifest.digest);
    expect(fromArchive.rootHash).toBe(squashed.rootHash);
    await expect(squashToLayout({ source: { dir: '', tag: 'nope', archive }, baseDir: '/', outDir: path.join(work, 'from-archive-bad'), tag: 'x' })).rejects.toThrow(
      `oci-archive:${archive}:nope: no image is tagged nope`,
    );
  });

  it('the same tree from a tar+zstd layer or a tar+gzip layer gives the same squashfs layer', async () => {
    if (!has('zstd')) return;
    const scratch = path.join(work, 'zstd-scratch');
    const tar = makeTar({ '/bin/app': '#!/bin/sh\n', '/etc/app.conf': 'x=1\n' }, scratch);
    const gz = makeSourceImage({ layoutDir: path.join(work, 'gz'), tag: 'v1', files: { '/bin/app': '#!/bin/sh\n', '/etc/app.conf': 'x=1\n' } });
    writeFileSync(path.join(scratch, 'layer.tar'), tar);
    run('zstd', ['-q', '-f', path.join(scratch, 'layer.tar'), '-o', path.join(scratch, 'layer.tar.zst')]);
    const zstdLayout = path.join(work, 'zstd');
    makeSourceImage({ layoutDir: zstdLayout, tag: 'v1', layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', data: readFileSync(path.join(scratch, 'layer.tar.zst')) }] });
    // makeSourceImage names the compressed blob as diff_id; a zstd layer's diff_id is its tar's.
    fixDiffIds(zstdLayout, 'v1', [sha256(tar)]);
    const fromGzip = await squashToLayout({ source: { dir: gz.layoutDir, tag: 'v1' }, baseDir: '/', outDir: path.join(work, 'gz-out'), tag: 'x' });
    const fromZstd = await squashToLayout({ source: { dir: zstdLayout, tag: 'v1' }, baseDir: '/', outDir: path.join(work, 'zstd-out'), tag: 'x' });
    expect(fromZstd.layer.digest).toBe(fromGzip.layer.digest);
    expect(fromZstd.manifest.digest).not.toBe(fromGzip.manifest.digest); // the history names another source
    expect([...listSquashfs(blobPath(path.join(work, 'zstd-out'), fromZstd.layer.digest)).keys()]).toEqual(['/', '/bin', '/bin/app', '/etc', '/etc/app.conf']);
  });

  it('refuses a squashfs layer whose tree does not verify, and a layer umoci cannot read, naming the image and tool', async () => {
    const good = readFileSync(blob);
    const bad = Buffer.from(good);
    bad[100]! ^= 0x01;
    const corrupt = makeSourceImage({ layoutDir: path.join(work, 'corrupt'), tag: 'v1', layers: [{ mediaType: SQUASHFS_VERITY_MEDIA_TYPE, data: bad, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: squashed.rootHash } }] });
    const badOut = path.join(work, 'bad-out');
    await expect(squashToLayout({ source: { dir: corrupt.layoutDir, tag: 'v1' }, baseDir: '/', outDir: badOut, tag: 'x' })).rejects.toMatchObject({
      code: 'E_SQUASH_FORMAT',
      message: expect.stringMatching(/corrupt:v1: its squashfs layer does not verify against its root hash .*veritysetup verify failed/),
    });
    const notGzip = makeSourceImage({ layoutDir: path.join(work, 'not-gzip'), tag: 'v1', layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', data: Buffer.from('not gzip at all') }] });
    await expect(squashToLayout({ source: { dir: notGzip.layoutDir, tag: 'v1' }, baseDir: '/', outDir: badOut, tag: 'x' })).rejects.toMatchObject({
      code: 'E_SQUASH_TOOL',
      message: expect.stringMatching(/not-gzip:v1: umoci failed \(exit 1\): .+/),
    });
    expect(existsSync(badOut)).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('squashes through the bundle, and as an unprivileged user only keeps already-squashed images', () => {
    if (!existsSync(bundle)) return;
    const cli = (args: string[], user?: number) =>
      spawnSync(user === undefined ? process.execPath : 'setpriv', user === undefined ? [bundle, ...args] : ['--reuid', String(user), '--regid', String(user), '--clear-groups', process.execPath, bundle, ...args], {
        cwd: work,
        env: { ...childEnv(), TMPDIR: '/tmp' },
        encoding: 'utf8',
      });
    const ok = cli(['image', 'squash', 'oci:src:web', '--out', 'oci:cli-out:v1']);
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain(`squashed oci:src:web → oci:cli-out:v1`);
    expect(ok.stdout).toContain(`manifest   ${squashed.manifest.digest}`);
    expect(ok.stdout).toContain(`root hash  ${squashed.rootHash}`);

    // nobody can read the layouts and write to a directory of its own.
    chmodSync(work, 0o755);
    execFileSync('chmod', ['-R', 'a+rX', path.join(work, 'src'), out]);
    const nobodyDir = path.join(work, 'nobody');
    mkdirSync(nobodyDir);
    execFileSync('chown', ['65534:65534', nobodyDir]);
    const refused = cli(['image', 'squash', 'oci:src:web', '--out', 'oci:nobody/a:v1'], 65534);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain('oci:src:web: squashing tar layers needs root');
    const kept = cli(['image', 'squash', 'oci:out:web-squashed', '--out', 'oci:nobody/b:v1'], 65534);
    expect(kept.stderr).toBe('');
    expect(kept.stdout).toContain('kept oci:out:web-squashed → oci:nobody/b:v1');
  });
});

/** Rewrites a fixture layout's config diff_ids (and the manifest and index that name it). */
function fixDiffIds(layout: string, tag: string, diffIds: string[]): void {
  const index = readIndex(layout);
  const entry = index.manifests.find((e) => e.annotations?.[ANNOTATION.refName] === tag)!;
  const manifest = readBlobJson(layout, entry.digest);
  const config = readBlobJson(layout, manifest.config.digest);
  const put = (value: unknown) => {
    const bytes = Buffer.from(JSON.stringify(value));
    writeFileSync(blobPath(layout, sha256(bytes)), bytes);
    return { digest: sha256(bytes), size: bytes.length };
  };
  manifest.config = { ...manifest.config, ...put({ ...config, rootfs: { type: 'layers', diff_ids: diffIds } }) };
  Object.assign(entry, put(manifest));
  writeFileSync(path.join(layout, 'index.json'), JSON.stringify(index));
}

describe.skipIf(missing.length > 0 || !isRoot)('mosb manifest publish squashes every target', () => {
  let keys: KeysetFixture;
  let dir: string;
  let source: { digest: string; layerDigests: string[] };

  beforeAll(async () => {
    dir = path.join(work, 'publish');
    mkdirSync(dir, { recursive: true });
    keys = await makeKeysetFixture({ dir });
    source = makeUmociSource(path.join(dir, 'src'), 'web');
  });

  const publish = (manifest: unknown, outDir: string) => {
    const manifestPath = path.join(dir, `manifest-${path.basename(outDir)}.yaml`);
    writeFileSync(manifestPath, YAML.stringify(manifest));
    return publishManifest({ manifestPath, keysDir: keys.keysDir, keyset: keys.keyset, product: keys.product, outDir, tag: 'v1', created: '2024-01-01T00:00:00Z' });
  };
  const target = (name: string, sourceRef: string, extra: Record<string, unknown> = {}) => ({ service_name: name, source: sourceRef, version: '1', service_type: 'container', nsgroup: name, ...extra });

  it('signs the squashed image manifest; pins name the source; the layout holds only squashed images', async () => {
    const outDir = path.join(dir, 'layout');
    const result = await publish({ version: 1, targets: [target('web', 'oci:src:web', { digest: source.digest }), target('web2', 'oci:src:web')] }, outDir);
    const squashed = await squashToLayout({ source: { dir: path.join(dir, 'src'), tag: 'web' }, baseDir: '/', outDir: path.join(dir, 'standalone'), tag: 'x' });
    const install = JSON.parse(result.installJson.toString('utf8'));
    for (const t of install.targets) {
      expect(t.digest).toBe(squashed.manifest.digest);
      expect(t.size).toBe(squashed.manifest.size);
    }
    expect(result.images.map((image) => [image.serviceName, image.source, image.kept, image.rootHash])).toEqual([
      ['web', source.digest, false, squashed.rootHash],
      ['web2', source.digest, false, squashed.rootHash],
    ]);
    const hex = squashed.manifest.digest.slice('sha256:'.length);
    const raw = JSON.parse(run('skopeo', ['inspect', '--raw', `oci:${outDir}:${hex}`]));
    expect(raw.layers).toEqual([{ mediaType: SQUASHFS_VERITY_MEDIA_TYPE, digest: squashed.layer.digest, size: squashed.layer.size, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: squashed.rootHash } }]);
    expect(run('umoci', ['ls', '--layout', outDir]).split('\n').filter(Boolean).sort()).toEqual([hex, 'v1'].sort());
    for (const layer of source.layerDigests) expect(existsSync(blobPath(outDir, layer))).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('refuses a pin naming the squashed digest, and writes nothing when any target fails', async () => {
    const outDir = path.join(dir, 'layout');
    const indexBefore = readFileSync(path.join(outDir, 'index.json'));
    const blobsBefore = readdirSync(path.join(outDir, 'blobs', 'sha256')).sort();
    const squashedDigest = JSON.parse(readFileSync(path.join(dir, 'standalone', 'index.json'), 'utf8')).manifests[0].digest;
    await expect(publish({ version: 1, targets: [target('web', 'oci:src:web', { digest: squashedDigest })] }, outDir)).rejects.toMatchObject({
      code: 'E_DIGEST_MISMATCH',
      message: expect.stringContaining(`but its source's image manifest is ${source.digest}`),
    });
    makeSourceImage({ layoutDir: path.join(dir, 'plain-squashfs'), tag: 'v1', layers: [{ mediaType: 'application/vnd.stacker.image.layer.squashfs+gzip', data: gzipSync('x') }] });
    await expect(publish({ version: 1, targets: [target('web', 'oci:src:web'), target('db', 'oci:plain-squashfs:v1')] }, outDir)).rejects.toMatchObject({
      code: 'E_SQUASH_FORMAT',
      message: expect.stringMatching(/^target db \(oci:plain-squashfs:v1\): its squashfs layer .* has no dm-verity hash tree/),
    });
    expect(readFileSync(path.join(outDir, 'index.json'))).toEqual(indexBefore);
    expect(readdirSync(path.join(outDir, 'blobs', 'sha256')).sort()).toEqual(blobsBefore);
    const fresh = path.join(dir, 'fresh');
    await expect(publish({ version: 1, targets: [target('web', 'oci:src:web'), target('db', 'oci:plain-squashfs:v1')] }, fresh)).rejects.toMatchObject({ code: 'E_SQUASH_FORMAT' });
    expect(existsSync(fresh)).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
  });
});
