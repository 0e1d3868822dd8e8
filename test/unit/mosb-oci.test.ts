import { describe, expect, it } from 'vitest';
import { ANNOTATION, ARTIFACT_TYPE, EMPTY_DESCRIPTOR, MEDIA_TYPE, TITLE } from '../../init/trust/formats.ts';
import { checkTag, DEFAULT_TAG, parseOutSpec } from '../../mosb/names.ts';
import {
  computeIndexUpdate,
  type Descriptor,
  EMPTY_BLOB,
  emptyIndex,
  type ImageIndex,
  imageIndexEntry,
  parseImageIndex,
  parseImageManifest,
  planArtifacts,
  referrerCandidates,
  sha256Digest,
} from '../../mosb/oci.ts';

const CREATED = '2024-01-01T00:00:00Z';
const plan = (installJson = '{"version":1}', signature = 'sig') =>
  planArtifacts({ installJson: Buffer.from(installJson), signature: Buffer.from(signature), certificate: Buffer.from('-----BEGIN CERTIFICATE-----\n'), created: CREATED });
const blobJson = (p: ReturnType<typeof plan>, digest: string) => JSON.parse(p.blobs.find((blob) => blob.digest === digest)!.bytes.toString());
const image = (n: number) => imageIndexEntry({ digest: `sha256:${String(n).repeat(64)}`, size: 100 + n });

/** One publish on top of `index`: the subjects map is what the effect side reads from blobs. */
function publish(index: ImageIndex, tag: string, p: ReturnType<typeof plan>, images: Descriptor[], subjects: Map<string, string>): ImageIndex {
  const next = computeIndexUpdate(index, { tag, install: p.install, referrers: [p.signature, p.certificate], images }, subjects);
  subjects.set(p.signature.digest, p.install.digest);
  subjects.set(p.certificate.digest, p.install.digest);
  return next;
}
const tagsOf = (index: ImageIndex) => index.manifests.map((entry) => entry.annotations?.[ANNOTATION.refName] ?? `(${entry.artifactType ?? 'untagged'})`);

describe('planArtifacts', () => {
  it('makes the install artifact with the empty config, one titled layer and a created annotation', () => {
    const p = plan();
    const install = blobJson(p, p.install.digest);
    expect(install).toEqual({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.imageManifest,
      artifactType: ARTIFACT_TYPE.install,
      config: EMPTY_DESCRIPTOR,
      layers: [{ mediaType: ARTIFACT_TYPE.install, digest: sha256Digest(Buffer.from('{"version":1}')), size: 13, annotations: { [ANNOTATION.title]: TITLE.install } }],
      annotations: { [ANNOTATION.created]: CREATED },
    });
    expect(p.install).toMatchObject({ mediaType: MEDIA_TYPE.imageManifest, artifactType: ARTIFACT_TYPE.install });
    expect(p.blobs.map((blob) => blob.digest)).toContain(EMPTY_DESCRIPTOR.digest);
    expect(sha256Digest(EMPTY_BLOB)).toBe(EMPTY_DESCRIPTOR.digest);
  });

  it('links the signature and the certificate to it by subject, as tar layers with their titles', () => {
    const p = plan();
    const subject = { mediaType: MEDIA_TYPE.imageManifest, digest: p.install.digest, size: p.install.size };
    for (const [descriptor, type, title, bytes] of [
      [p.signature, ARTIFACT_TYPE.signature, TITLE.signature, 'sig'],
      [p.certificate, ARTIFACT_TYPE.certificate, TITLE.certificate, '-----BEGIN CERTIFICATE-----\n'],
    ] as const) {
      const manifest = blobJson(p, descriptor.digest);
      expect(manifest.artifactType).toBe(type);
      expect(manifest.config).toEqual(EMPTY_DESCRIPTOR);
      expect(manifest.subject).toEqual(subject);
      expect(manifest.layers).toEqual([{ mediaType: MEDIA_TYPE.layerTar, digest: sha256Digest(Buffer.from(bytes)), size: bytes.length, annotations: { [ANNOTATION.title]: title } }]);
      expect(descriptor.artifactType).toBe(type);
    }
  });

  it('is deterministic, and every blob matches its digest', () => {
    expect(plan()).toEqual(plan());
    for (const blob of plan().blobs) expect(sha256Digest(blob.bytes)).toBe(blob.digest);
    expect(new Set(plan().blobs.map((blob) => blob.digest)).size).toBe(plan().blobs.length);
  });

  it('refuses a signature or certificate the boot side would not read', () => {
    expect(() => plan('{}', 'x'.repeat(5000))).toThrow(expect.objectContaining({ code: 'E_TOO_LARGE' }));
  });
});

describe('computeIndexUpdate', () => {
  it('adds images under their hex, then the tagged install artifact, then its referrers', () => {
    const p = plan();
    const index = publish(emptyIndex(), 'v1', p, [image(1), image(2)], new Map());
    expect(index.schemaVersion).toBe(2);
    expect(index.mediaType).toBe(MEDIA_TYPE.imageIndex);
    expect(tagsOf(index)).toEqual(['1'.repeat(64), '2'.repeat(64), 'v1', `(${ARTIFACT_TYPE.signature})`, `(${ARTIFACT_TYPE.certificate})`]);
    expect(index.manifests[2]).toEqual({ ...p.install, annotations: { [ANNOTATION.refName]: 'v1' } });
    expect(referrerCandidates(index).map((entry) => entry.digest)).toEqual([p.signature.digest, p.certificate.digest]);
  });

  it('re-publishing a tag replaces its install artifact and referrers; other tags and images stay', () => {
    const subjects = new Map<string, string>();
    const first = plan('{"a":1}');
    const other = plan('{"b":1}');
    const second = plan('{"a":2}');
    let index = publish(emptyIndex(), 'stable', first, [image(1)], subjects);
    index = publish(index, 'next', other, [image(2)], subjects);
    index = publish(index, 'stable', second, [image(1), image(3)], subjects);
    expect(tagsOf(index)).toEqual([
      '1'.repeat(64),
      '2'.repeat(64),
      'next',
      `(${ARTIFACT_TYPE.signature})`,
      `(${ARTIFACT_TYPE.certificate})`,
      '3'.repeat(64),
      'stable',
      `(${ARTIFACT_TYPE.signature})`,
      `(${ARTIFACT_TYPE.certificate})`,
    ]);
    const digests = index.manifests.map((entry) => entry.digest);
    expect(digests).not.toContain(first.install.digest);
    expect(digests).not.toContain(first.signature.digest);
    expect(digests).toContain(other.signature.digest);
  });

  it('keeps one signature per subject when two tags share an install artifact', () => {
    const subjects = new Map<string, string>();
    const a = plan('{"same":1}', 'sig-a');
    const b = plan('{"same":1}', 'sig-b'); // ECDSA: the same install.json signed again differs
    expect(a.install.digest).toBe(b.install.digest);
    let index = publish(emptyIndex(), 'one', a, [], subjects);
    index = publish(index, 'two', b, [], subjects);
    const signatures = index.manifests.filter((entry) => entry.artifactType === ARTIFACT_TYPE.signature);
    expect(signatures.map((entry) => entry.digest)).toEqual([b.signature.digest]);
    // Re-tagging `one` elsewhere keeps the referrers: `two` still names that install artifact.
    index = publish(index, 'one', plan('{"other":1}'), [], subjects);
    expect(index.manifests.filter((entry) => subjects.get(entry.digest) === b.install.digest)).toHaveLength(2);
  });

  it('leaves entries it did not write alone', () => {
    const foreign: Descriptor = { mediaType: MEDIA_TYPE.imageIndex, digest: `sha256:${'f'.repeat(64)}`, size: 9, annotations: { [ANNOTATION.refName]: 'multiarch' } };
    const untagged: Descriptor = { mediaType: MEDIA_TYPE.imageManifest, digest: `sha256:${'e'.repeat(64)}`, size: 9 };
    const start: ImageIndex = { schemaVersion: 2, manifests: [foreign, untagged], annotations: { keep: 'me' } };
    const index = publish(start, 'v1', plan(), [], new Map());
    expect(index.manifests.slice(0, 2)).toEqual([foreign, untagged]);
    expect(index.annotations).toEqual({ keep: 'me' });
  });

  it('does not add an image twice, and refuses a hex name that holds another digest', () => {
    const subjects = new Map<string, string>();
    let index = publish(emptyIndex(), 'a', plan('{"a":1}'), [image(1)], subjects);
    index = publish(index, 'b', plan('{"b":1}'), [image(1), image(1)], subjects);
    expect(index.manifests.filter((entry) => entry.digest === image(1).digest)).toHaveLength(1);
    const forged: Descriptor = { ...image(1), digest: `sha256:${'9'.repeat(64)}` };
    expect(() => computeIndexUpdate(index, { tag: 'c', install: plan().install, referrers: [], images: [forged] }, subjects)).toThrow(
      expect.objectContaining({ code: 'E_LAYOUT' }),
    );
  });
});

describe('index and manifest parsing', () => {
  const entry = { mediaType: MEDIA_TYPE.imageManifest, digest: `sha256:${'a'.repeat(64)}`, size: 1 };
  const parse = (value: unknown) => parseImageIndex(Buffer.from(JSON.stringify(value)), 'index.json');
  it('accepts an image index and refuses what is not one', () => {
    expect(parse({ schemaVersion: 2, manifests: [entry] }).manifests).toEqual([entry]);
    expect(() => parseImageIndex(Buffer.from('{'), 'index.json')).toThrow(/invalid JSON/);
    expect(() => parse({ schemaVersion: 1, manifests: [] })).toThrow(/not an OCI image index/);
    expect(() => parse({ schemaVersion: 2, manifests: [{ ...entry, digest: 'sha256:../../etc/passwd' }] })).toThrow(/manifests\[0\]: digest/);
    expect(() => parse({ schemaVersion: 2, manifests: [{ ...entry, digest: `sha512:${'a'.repeat(128)}` }] })).toThrow(/is not sha256/);
    expect(() => parse({ schemaVersion: 2, manifests: [{ ...entry, size: -1 }] })).toThrow(/invalid size/);
    expect(() => parse({ schemaVersion: 2, manifests: [{ ...entry, annotations: { a: 1 } }] })).toThrow(/annotations/);
  });
  it('checks an image manifest’s config and layers', () => {
    const manifest = { schemaVersion: 2, mediaType: MEDIA_TYPE.imageManifest, config: entry, layers: [entry] };
    expect(parseImageManifest(Buffer.from(JSON.stringify(manifest)), 'm').layers).toHaveLength(1);
    expect(() => parseImageManifest(Buffer.from(JSON.stringify({ ...manifest, mediaType: MEDIA_TYPE.imageIndex })), 'm')).toThrow(/mediaType/);
    expect(() => parseImageManifest(Buffer.from(JSON.stringify({ ...manifest, layers: [{ ...entry, digest: 'x' }] })), 'm')).toThrow(/layers\[0\]/);
  });
});

describe('--out and tags', () => {
  it('splits DIR[:TAG], defaulting the tag to latest', () => {
    expect(parseOutSpec('out')).toEqual({ dir: 'out', tag: DEFAULT_TAG });
    expect(DEFAULT_TAG).toBe('latest');
    expect(parseOutSpec('/srv/oci:v1.2-rc1')).toEqual({ dir: '/srv/oci', tag: 'v1.2-rc1' });
    expect(() => parseOutSpec(':v1')).toThrow(/expected DIR\[:TAG\]/);
    expect(() => parseOutSpec('a:b:c')).toThrow(/invalid tag "b:c"/);
    expect(() => parseOutSpec('out:')).toThrow(/invalid tag ""/);
  });
  it('refuses tags that could be paths or that look like a service image’s name', () => {
    expect(() => checkTag('../x')).toThrow(/invalid tag/);
    expect(() => checkTag('a/b')).toThrow(/invalid tag/);
    expect(() => checkTag('a'.repeat(64))).toThrow(/name service images/);
    expect(checkTag('A'.repeat(64))).toBe('A'.repeat(64));
  });
});
