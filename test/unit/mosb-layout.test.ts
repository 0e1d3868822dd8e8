/** The layout effects on temporary directories (no root, no openssl): refusals and write order. */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ANNOTATION, MEDIA_TYPE } from '../../init/trust/formats.ts';
import { applyLayoutWrite, readOutputLayout, readSourceImage } from '../../mosb/layout-io.ts';
import { computeIndexUpdate, imageIndexEntry, planArtifacts, sha256Digest } from '../../mosb/oci.ts';
import { blobPath, makeSourceImage, readIndex } from '../helpers/manifest-fixtures.ts';

const scratch = mkdtempSync(path.join(os.tmpdir(), 'mosb-layout-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let counter = 0;
const fresh = () => path.join(scratch, `d${counter++}`);
const artifacts = () => planArtifacts({ installJson: Buffer.from('{}'), signature: Buffer.from('s'), certificate: Buffer.from('c'), created: '2024-01-01T00:00:00Z' });

describe('readSourceImage', () => {
  it('finds the tagged image manifest and verifies it', async () => {
    const dir = fresh();
    const made = makeSourceImage({ layoutDir: path.join(dir, 'img'), tag: 'v1' });
    const image = await readSourceImage({ dir: 'img', tag: 'v1' }, dir);
    expect(image.manifest).toEqual({ mediaType: MEDIA_TYPE.imageManifest, digest: made.manifestDigest, size: made.manifestSize });
    expect(image.parsed.layers.map((layer) => layer.digest)).toEqual(made.layerDigests);
  });

  it('names the tags there are when the one asked for is missing', async () => {
    const dir = fresh();
    makeSourceImage({ layoutDir: dir, tag: 'v1' });
    makeSourceImage({ layoutDir: dir, tag: 'v2', files: { '/b': 'b' } });
    await expect(readSourceImage({ dir, tag: 'v3' }, '/')).rejects.toMatchObject({ code: 'E_SOURCE', message: expect.stringContaining('no image is tagged v3 (tags: v1, v2)') });
  });

  it('refuses a directory that is not a layout, an image index, and a manifest that does not match its digest', async () => {
    const dir = fresh();
    mkdirSync(dir);
    await expect(readSourceImage({ dir, tag: 'x' }, '/')).rejects.toMatchObject({ code: 'E_SOURCE', message: expect.stringContaining('cannot open') });

    const indexed = fresh();
    const made = makeSourceImage({ layoutDir: indexed, tag: 'v1' });
    const index = readIndex(indexed);
    index.manifests[0]!.mediaType = MEDIA_TYPE.imageIndex;
    writeFileSync(path.join(indexed, 'index.json'), JSON.stringify(index));
    await expect(readSourceImage({ dir: indexed, tag: 'v1' }, '/')).rejects.toMatchObject({ message: expect.stringContaining('is an image index') });

    index.manifests[0]!.mediaType = MEDIA_TYPE.imageManifest;
    writeFileSync(path.join(indexed, 'index.json'), JSON.stringify(index));
    const manifestFile = blobPath(indexed, made.manifestDigest);
    writeFileSync(manifestFile, readFileSync(manifestFile, 'utf8').replace('"schemaVersion":2', '"schemaVersion":3'));
    await expect(readSourceImage({ dir: indexed, tag: 'v1' }, '/')).rejects.toMatchObject({ code: 'E_DIGEST_MISMATCH' });
  });
});

describe('readOutputLayout', () => {
  it('starts a new layout in a missing or empty directory', async () => {
    expect(await readOutputLayout(fresh())).toMatchObject({ initialized: false, index: { manifests: [] } });
    const empty = fresh();
    mkdirSync(empty);
    expect(await readOutputLayout(empty)).toMatchObject({ initialized: false });
  });

  it('refuses to write into a directory that holds something else', async () => {
    const dir = fresh();
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'notes.txt'), 'mine');
    await expect(readOutputLayout(dir)).rejects.toMatchObject({ code: 'E_LAYOUT', message: expect.stringContaining('not an OCI image layout') });
    writeFileSync(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"2.0.0"}');
    await expect(readOutputLayout(dir)).rejects.toMatchObject({ code: 'E_LAYOUT' });
  });

  it('reads the subjects of the referrers it finds, and refuses one whose blob is missing', async () => {
    const dir = fresh();
    const plan = artifacts();
    const output = await readOutputLayout(dir);
    await applyLayoutWrite(output, { blobs: plan.blobs, images: [], index: computeIndexUpdate(output.index, { tag: 'v1', install: plan.install, referrers: [plan.signature, plan.certificate], images: [] }, output.subjects) });
    const again = await readOutputLayout(dir);
    expect(again.initialized).toBe(true);
    expect([...again.subjects]).toEqual([
      [plan.signature.digest, plan.install.digest],
      [plan.certificate.digest, plan.install.digest],
    ]);
    rmSync(blobPath(dir, plan.signature.digest));
    await expect(readOutputLayout(dir)).rejects.toMatchObject({ code: 'E_LAYOUT' });
  });
});

describe('applyLayoutWrite', () => {
  it('writes oci-layout, the blobs and index.json, and no temporary files', async () => {
    const dir = fresh();
    const source = makeSourceImage({ layoutDir: path.join(dir, 'src'), tag: 'v1' });
    const image = await readSourceImage({ dir: 'src', tag: 'v1' }, dir);
    const plan = artifacts();
    const out = path.join(dir, 'out');
    const output = await readOutputLayout(out);
    const index = computeIndexUpdate(output.index, { tag: 'v1', install: plan.install, referrers: [plan.signature, plan.certificate], images: [imageIndexEntry(image.manifest)] }, output.subjects);
    await applyLayoutWrite(output, { blobs: plan.blobs, images: [image], index });
    expect(JSON.parse(readFileSync(path.join(out, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });
    expect(readIndex(out)).toEqual(index);
    const names = readdirSync(path.join(out, 'blobs', 'sha256'));
    expect(names.filter((name) => name.startsWith('.'))).toEqual([]);
    for (const digest of [source.manifestDigest, source.configDigest, ...source.layerDigests, ...plan.blobs.map((blob) => blob.digest)]) {
      expect(sha256Digest(readFileSync(blobPath(out, digest)))).toBe(digest);
    }
    expect(index.manifests.find((entry) => entry.annotations?.[ANNOTATION.refName] === source.manifestDigest.slice(7))).toBeDefined();
  });

  it('stops at a blob already there with other contents, before index.json changes', async () => {
    const dir = fresh();
    const plan = artifacts();
    const output = await readOutputLayout(dir);
    const update = { tag: 'v1', install: plan.install, referrers: [plan.signature, plan.certificate], images: [] };
    await applyLayoutWrite(output, { blobs: plan.blobs, images: [], index: computeIndexUpdate(output.index, update, output.subjects) });
    const before = readFileSync(path.join(dir, 'index.json'));
    writeFileSync(blobPath(dir, plan.install.digest), 'corrupt');
    const next = await readOutputLayout(dir);
    await expect(applyLayoutWrite(next, { blobs: plan.blobs, images: [], index: computeIndexUpdate(next.index, { ...update, tag: 'v2' }, next.subjects) })).rejects.toMatchObject({
      code: 'E_LAYOUT',
      message: expect.stringContaining('the output layout is corrupt'),
    });
    expect(readFileSync(path.join(dir, 'index.json'))).toEqual(before);
    expect(existsSync(path.join(dir, 'index.json'))).toBe(true);
  });
});
