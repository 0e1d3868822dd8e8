/**
 * The pure half of squashing service images (mosb/squash.ts): the squashed config and manifest
 * (golden JSON), what an already-squashed source must look like, the derived salt and uuid, the
 * squashfs/verity header arithmetic and parsing; and the `image squash` command line. No tools,
 * no root: test/privileged/mosb-squash.test.ts runs the real ones.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ANNOTATION, ARTIFACT_TYPE, MEDIA_TYPE } from '../../init/trust/formats.ts';
import { checkSourcePins, computeInstallFile } from '../../mosb/install-file.ts';
import { ExitCode, main } from '../../mosb/main.ts';
import { parseManifestYaml } from '../../mosb/manifest-yaml.ts';
import { emptyIndex, type ImageManifest, sha256Digest, tagImageInIndex } from '../../mosb/oci.ts';
import {
  checkVerityHeader,
  classifySourceImage,
  parseSourceConfig,
  parseVerityDump,
  parseVerityRootHash,
  planSquashedImage,
  SQUASHED_BY,
  SQUASHFS_VERITY_MEDIA_TYPE,
  squashfsBytesUsed,
  squashfsDataSize,
  squashTime,
  VERITY_ROOT_HASH_ANNOTATION,
  veritySalt,
  verityUuid,
} from '../../mosb/squash.ts';
import { stderrTail } from '../../mosb/squash-tools.ts';

const D = (n: string) => `sha256:${n.repeat(64)}`;
const ROOT_HASH = 'ab'.repeat(32);
const LAYER = { digest: D('7'), size: 12288, rootHash: ROOT_HASH };

describe('planSquashedImage', () => {
  const sourceConfig = Buffer.from(
    JSON.stringify({
      created: '2024-05-06T07:08:09.123456789Z',
      author: 'someone',
      architecture: 'arm64',
      os: 'linux',
      config: {
        User: '1000:1000',
        ExposedPorts: { '80/tcp': {} },
        Env: ['PATH=/usr/bin:/bin'],
        Entrypoint: ['/srv/web'],
        Cmd: ['--port', '80'],
        WorkingDir: '/srv',
        Labels: { 'org.example': 'yes' },
      },
      rootfs: { type: 'layers', diff_ids: [D('1'), D('2')] },
      history: [{ created_by: 'a' }, { created_by: 'b', empty_layer: true }, { created_by: 'c' }],
    }),
  );

  it('keeps the source config, in its order, with rootfs naming the one layer and one history entry (golden)', () => {
    const plan = planSquashedImage({ sourceConfig, sourceManifestDigest: D('3'), layer: LAYER, what: 'target web' });
    const expectedConfig =
      '{"created":"2024-05-06T07:08:09.123456789Z","author":"someone","architecture":"arm64","os":"linux",' +
      '"config":{"User":"1000:1000","ExposedPorts":{"80/tcp":{}},"Env":["PATH=/usr/bin:/bin"],"Entrypoint":["/srv/web"],"Cmd":["--port","80"],"WorkingDir":"/srv","Labels":{"org.example":"yes"}},' +
      `"rootfs":{"type":"layers","diff_ids":["${D('7')}"]},` +
      `"history":[{"created":"2024-05-06T07:08:09.123456789Z","created_by":"mosb image squash","comment":"squashfs with dm-verity from ${D('3')}"}]}`;
    expect(plan.config.bytes.toString()).toBe(expectedConfig);
    expect(plan.config.digest).toBe(sha256Digest(Buffer.from(expectedConfig)));
    const expectedManifest =
      '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' +
      `"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"${plan.config.digest}","size":${expectedConfig.length}},` +
      `"layers":[{"mediaType":"application/vnd.stacker.image.layer.squashfs+gzip+verity","digest":"${D('7')}","size":12288,` +
      `"annotations":{"io.stackeroci.stacker.squashfs_verity_root_hash":"${ROOT_HASH}"}}]}`;
    expect(plan.manifest.bytes.toString()).toBe(expectedManifest);
    expect(plan.manifest.digest).toBe(sha256Digest(Buffer.from(expectedManifest)));
    expect(plan.manifest.descriptor).toEqual({ mediaType: MEDIA_TYPE.imageManifest, digest: plan.manifest.digest, size: expectedManifest.length });
    expect(plan.manifest.parsed.layers).toEqual([plan.layer]);
    expect(plan.layer).toEqual({ mediaType: SQUASHFS_VERITY_MEDIA_TYPE, digest: D('7'), size: 12288, annotations: { [VERITY_ROOT_HASH_ANNOTATION]: ROOT_HASH } });
  });

  it('is the same bytes for the same input, and adds rootfs/history when the source had none', () => {
    const input = { sourceConfig: Buffer.from('{"architecture":"amd64","os":"linux"}'), sourceManifestDigest: D('4'), layer: LAYER, what: 'x' };
    const a = planSquashedImage(input);
    expect(a.manifest.bytes).toEqual(planSquashedImage(input).manifest.bytes);
    expect(a.config.bytes.toString()).toBe(
      `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["${D('7')}"]},"history":[{"created_by":"${SQUASHED_BY}","comment":"squashfs with dm-verity from ${D('4')}"}]}`,
    );
    // Another source manifest or another root hash gives another image manifest.
    expect(planSquashedImage({ ...input, sourceManifestDigest: D('5') }).manifest.digest).not.toBe(a.manifest.digest);
    expect(planSquashedImage({ ...input, layer: { ...LAYER, rootHash: 'cd'.repeat(32) } }).manifest.digest).not.toBe(a.manifest.digest);
  });

  it('refuses a source config that is not an image config', () => {
    expect(() => parseSourceConfig(Buffer.from('[1]'), 'target a')).toThrow(expect.objectContaining({ code: 'E_SOURCE', message: 'target a: its image config is not a JSON object' }));
    expect(() => parseSourceConfig(Buffer.from('{'), 'target a')).toThrow(expect.objectContaining({ code: 'E_SOURCE' }));
    expect(() => parseSourceConfig(Buffer.from('{"os":"linux"}'), 'target a')).toThrow(expect.objectContaining({ message: 'target a: its image config has no architecture' }));
  });
});

describe('classifySourceImage', () => {
  const manifest = (layers: ImageManifest['layers']): ImageManifest => ({ schemaVersion: 2, config: { mediaType: MEDIA_TYPE.imageConfig, digest: D('c'), size: 2 }, layers });
  const layer = (mediaType: string, annotations?: Record<string, string>) => ({ mediaType, digest: D('e'), size: 8192, ...(annotations ? { annotations } : {}) });
  const verity = (rootHash: string = ROOT_HASH, mediaType = SQUASHFS_VERITY_MEDIA_TYPE) => layer(mediaType, { [VERITY_ROOT_HASH_ANNOTATION]: rootHash });

  it('squashes tar layers (plain, gzip, zstd, non-distributable) and no layers at all', () => {
    for (const type of ['tar', 'tar+gzip', 'tar+zstd']) {
      expect(classifySourceImage(manifest([layer(`application/vnd.oci.image.layer.v1.${type}`), layer(`application/vnd.oci.image.layer.nondistributable.v1.${type}`)]), 'x')).toEqual({ kind: 'layers' });
    }
    expect(classifySourceImage(manifest([]), 'x')).toEqual({ kind: 'layers' });
  });

  it('keeps one squashfs+verity layer with its root hash, whatever its compression', () => {
    expect(classifySourceImage(manifest([verity()]), 'x')).toEqual({ kind: 'squashed', layer: verity(), rootHash: ROOT_HASH });
    const zstd = verity(ROOT_HASH, 'application/vnd.stacker.image.layer.squashfs+zstd+verity');
    expect(classifySourceImage(manifest([zstd]), 'x')).toMatchObject({ kind: 'squashed', rootHash: ROOT_HASH });
  });

  it('refuses what is neither, naming the target', () => {
    const refused = (layers: ImageManifest['layers'], message: string | RegExp) =>
      expect(() => classifySourceImage(manifest(layers), 'target web')).toThrow(expect.objectContaining({ code: 'E_SQUASH_FORMAT', message: expect.stringMatching(message) }));
    refused([layer('application/vnd.docker.image.rootfs.diff.tar.gzip')], /^target web: layers\[0\] has media type application\/vnd\.docker/);
    refused([layer('application/vnd.stacker.image.layer.squashfs+gzip')], /^target web: its squashfs layer .* has no dm-verity hash tree/);
    refused([verity(ROOT_HASH, 'application/vnd.stacker.image.layer.squashfsy+verity')], /^target web: its layer's media type .*squashfsy\+verity is not application/);
    refused([layer(SQUASHFS_VERITY_MEDIA_TYPE)], /^target web: its squashfs layer has no io\.stackeroci\.stacker\.squashfs_verity_root_hash annotation/);
    refused([verity('AB'.repeat(32))], /is not 64 lowercase hex digits/);
    refused([verity('ab'.repeat(31))], /is not 64 lowercase hex digits/);
    refused([verity(), verity()], /^target web: has 2 layers, 2 of them squashfs/);
    refused([layer('application/vnd.oci.image.layer.v1.tar'), verity()], /^target web: has 2 layers, 1 of them squashfs/);
  });
});

describe('verity salt and uuid', () => {
  it('takes the salt from the squashfs digest, and a v4-shaped uuid from the salt', () => {
    const digest = sha256Digest(Buffer.from('squashfs bytes'));
    const salt = veritySalt(digest);
    expect(salt).toBe(digest.slice('sha256:'.length));
    const uuid = verityUuid(salt);
    expect(uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(verityUuid(salt)).toBe(uuid);
    // Golden (computed independently with Python's hashlib and uuid): the derivation must not
    // drift, or re-squashing stops reproducing published layers.
    expect(verityUuid('00'.repeat(32))).toBe('098458c8-07b3-4546-bf5c-3cc00215db23');
    expect(verityUuid('01'.repeat(32))).not.toBe(verityUuid('00'.repeat(32)));
    expect(() => veritySalt('abc')).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
  });
});

describe('squash time', () => {
  it("is the source config's created, in whole seconds, else 0", () => {
    expect(squashTime({ created: '2024-05-06T07:08:09.999999999Z' })).toBe(1714979289);
    expect(squashTime({ created: '2024-05-06T09:08:09+02:00' })).toBe(1714979289);
    expect(squashTime({ created: '1970-01-01T00:00:00Z' })).toBe(0);
    expect(squashTime({})).toBe(0);
    expect(squashTime({ created: 'yesterday' })).toBe(0);
    expect(squashTime({ created: 17 })).toBe(0);
    expect(squashTime({ created: '1969-12-31T23:59:59Z' })).toBe(0);
    expect(squashTime({ created: '2200-01-01T00:00:00Z' })).toBe(0xffff_ffff);
  });
});

describe('squashfs and verity headers', () => {
  const superblock = (bytesUsed: bigint, magic = 0x73717368) => {
    const bytes = Buffer.alloc(96);
    bytes.writeUInt32LE(magic, 0);
    bytes.writeBigUInt64LE(bytesUsed, 40);
    return bytes;
  };

  it('reads bytes_used and rounds it up to the verity block for the hash offset', () => {
    expect(squashfsBytesUsed(superblock(5000n), 'x')).toBe(5000);
    expect(squashfsDataSize(superblock(5000n), 8192 + 4096, 'x')).toBe(8192);
    expect(squashfsDataSize(superblock(8192n), 8192 + 512, 'x')).toBe(8192);
  });

  it('refuses a blob that is not squashfs, or has no room for the tree', () => {
    const refused = (run: () => unknown, message: RegExp) => expect(run).toThrow(expect.objectContaining({ code: 'E_SQUASH_FORMAT', message: expect.stringMatching(message) }));
    refused(() => squashfsBytesUsed(superblock(5000n, 0x12345678), 'target a'), /^target a: its layer does not start with a squashfs superblock/);
    refused(() => squashfsBytesUsed(Buffer.from('hsqs'), 'target a'), /does not start with a squashfs superblock/);
    refused(() => squashfsBytesUsed(superblock(0n), 'target a'), /claims 0 bytes used/);
    refused(() => squashfsDataSize(superblock(8192n), 8192, 'target a'), /^target a: its layer is 8192 bytes and the squashfs takes 8192; there is no dm-verity tree/);
  });

  it('parses what veritysetup prints, and checks the tree has the shape the boot side mounts', () => {
    const format = `VERITY header information for blob\nUUID:            \t2bd08704-9d67-40c5-bdcf-6c3fe71fad7a\nHash type:       \t1\nData blocks:     \t1029\nData block size: \t4096\nHash blocks:     \t10\nHash block size: \t4096\nHash algorithm:  \tsha256\nSalt:            \t${'fa'.repeat(32)}\nRoot hash:      \t${ROOT_HASH}\n`;
    expect(parseVerityRootHash(format)).toBe(ROOT_HASH);
    expect(parseVerityRootHash('Root hash: xyz\n')).toBeUndefined();
    const header = parseVerityDump(format);
    expect(header).toEqual({ hashType: 1, dataBlocks: 1029, dataBlockSize: 4096, hashBlockSize: 4096, hashAlgorithm: 'sha256' });
    expect(() => checkVerityHeader(header, 1029 * 4096, 'x')).not.toThrow();
    expect(() => checkVerityHeader(header, 1030 * 4096, 'target a')).toThrow(expect.objectContaining({ code: 'E_SQUASH_FORMAT', message: 'target a: its verity superblock says dataBlocks 1029, expected 1030' }));
    expect(() => checkVerityHeader(parseVerityDump(format.replace('sha256', 'sha1')), 1029 * 4096, 'x')).toThrow(/hashAlgorithm sha1, expected sha256/);
    expect(() => checkVerityHeader(parseVerityDump('nothing'), 4096, 'x')).toThrow(/did not show a verity header/);
  });

  it('keeps the tail of a tool’s stderr, bounded', () => {
    expect(stderrTail('a\n\nb  \nc\n')).toBe('a | b | c');
    expect(stderrTail(Array.from({ length: 30 }, (_, i) => `line ${i}`).join('\n'))).toBe(Array.from({ length: 12 }, (_, i) => `line ${i + 18}`).join(' | '));
    expect(stderrTail('x'.repeat(5000)).length).toBe(2001);
  });
});

describe('pins and tags', () => {
  const UUID = '3f7e0a58-6b2c-4c1e-9d1a-0d2b7c9e4f10';
  const yaml = (pins: string) =>
    parseManifestYaml(`
version: 1
targets:
  - {service_name: web, source: "oci:w:1", version: "1", service_type: fs-only, ${pins}}
`);
  const squashed = { digest: D('5'), size: 548, source: { digest: D('1'), size: 401 } };

  it("checks manifest.yaml's pins against the source image, and signs the squashed one", () => {
    const file = computeInstallFile(yaml(`digest: "${D('1')}", size: 401`), UUID, new Map([['web', squashed]]));
    expect(file.targets[0]).toMatchObject({ digest: D('5'), size: 548 });
    expect(() => computeInstallFile(yaml(`digest: "${D('5')}"`), UUID, new Map([['web', squashed]]))).toThrow(
      expect.objectContaining({ code: 'E_DIGEST_MISMATCH', message: expect.stringContaining(`but its source's image manifest is ${D('1')}`) }),
    );
    expect(() => checkSourcePins({ service_name: 'web', digest: null, size: 400 }, squashed.source)).toThrow(expect.objectContaining({ message: expect.stringContaining('pins size 400') }));
    expect(() => checkSourcePins({ service_name: 'web', digest: null, size: null }, squashed.source)).not.toThrow();
  });

  it('tags a squashed image in an index, replacing the tag, never an install artifact', () => {
    const first = tagImageInIndex(emptyIndex(), 'web', { digest: D('1'), size: 10 });
    const second = tagImageInIndex(tagImageInIndex(first, 'db', { digest: D('2'), size: 20 }), 'web', { digest: D('3'), size: 30 });
    expect(second.manifests).toEqual([
      { mediaType: MEDIA_TYPE.imageManifest, digest: D('2'), size: 20, annotations: { [ANNOTATION.refName]: 'db' } },
      { mediaType: MEDIA_TYPE.imageManifest, digest: D('3'), size: 30, annotations: { [ANNOTATION.refName]: 'web' } },
    ]);
    const install = { ...emptyIndex(), manifests: [{ mediaType: MEDIA_TYPE.imageManifest, digest: D('4'), size: 5, artifactType: ARTIFACT_TYPE.install, annotations: { [ANNOTATION.refName]: 'v1' } }] };
    expect(() => tagImageInIndex(install, 'v1', { digest: D('1'), size: 10 })).toThrow(expect.objectContaining({ code: 'E_LAYOUT' }));
  });
});

describe('mosb image squash usage', () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'mosb-squash-cli-'));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));
  async function mosb(...args: string[]) {
    let out = '';
    let err = '';
    const code = await main(['node', 'mosb', ...args], { out: (text) => (out += text), err: (text) => (err += text) });
    return { code, out, err };
  }

  it('shows its usage line, and exits 64 for usage errors before touching anything', async () => {
    const help = await mosb('image', 'squash', '--help');
    expect(help.code).toBe(ExitCode.Ok);
    expect(help.out).toContain('Usage: mosb image squash oci:SRC:TAG --out oci:DIR:TAG');
    const out = path.join(scratch, 'out');
    for (const args of [
      ['image', 'squash'],
      ['image', 'squash', 'oci:src:v1'],
      ['image', 'squash', 'src:v1', '--out', `oci:${out}:v1`],
      ['image', 'squash', 'docker://example/x:1', '--out', `oci:${out}:v1`],
      ['image', 'squash', 'oci:src:v1', '--out', out],
      ['image', 'squash', 'oci:src:v1', '--out', `oci:${out}:bad/tag`],
      ['image', 'squash', 'oci:src:v1', '--out', `oci:${out}:${'a'.repeat(64)}`],
    ]) {
      const result = await mosb(...args);
      expect(result.code, args.join(' ')).toBe(ExitCode.Usage);
      expect(result.err, args.join(' ')).toMatch(/^(mosb: |Usage: mosb)/);
    }
    const missing = await mosb('image', 'squash', `oci:${path.join(scratch, 'absent')}:v1`, '--out', `oci:${out}:v1`);
    expect(missing.code).toBe(ExitCode.Failure);
    expect(missing.err).toMatch(/absent:v1: cannot open/);
    expect(() => rmSync(out)).toThrow(/ENOENT/);
  });
});
