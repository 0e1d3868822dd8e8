/**
 * The TypeScript half of bench/verity-mount.mjs (loaded with vm-tests/import-ts.mjs, as
 * vm-tests/run.mjs loads its cases): squashing a benchmark image with mosb, the store that holds
 * them, and the boots. The .mjs decides what to build (and what is cached), and judges the numbers.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { blobPath, makeSourceImage, publishFixture, type FixtureTarget } from '../test/helpers/manifest-fixtures.ts';
import { squashToLayout } from '../mosb/squash-tools.ts';
import { SQUASHFS_VERITY_MEDIA_TYPE, VERITY_ROOT_HASH_ANNOTATION } from '../mosb/squash.ts';
import { defineCase, runCase, type CaseContext } from '../vm-tests/harness/case.ts';
import { ensureVmPackages } from '../vm-tests/harness/deps.ts';
import { Markers, Timeouts } from '../vm-tests/harness/markers.ts';
import { makeSquashfs, STORE_SERIAL, testKeys, verifyOnHost, type Store } from '../vm-tests/harness/store.ts';
import { bootWithStore } from '../vm-tests/harness/trust.ts';

export { ensureVmPackages };

/** A squashed image as mosb made it: its layer blob (squashfs + verity tree) and root hash. */
export interface SquashedBenchImage {
  layerBlob: string;
  layerDigest: string;
  layerSize: number;
  rootHash: string;
}

/**
 * `rootfs` → one tar layer (GNU tar with the flags test/helpers' makeTar uses: same input, same
 * bytes) → a source OCI image (makeSourceImage) → `mosb image squash` (squashToLayout: umoci
 * unpack, mksquashfs, veritysetup format + verify) into `outDir`, tag `v1`. The tar is written to
 * a file, not a pipe: makeTar buffers at most 64 MiB, and the large image is 1 GiB.
 */
export async function squashBenchImage(options: { rootfs: string; workDir: string; outDir: string; entrypoint: string[] }): Promise<SquashedBenchImage> {
  mkdirSync(options.workDir, { recursive: true });
  const tar = path.join(options.workDir, 'layer.tar');
  execFileSync(
    'tar',
    ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--mode=u=rwX,go=rX', '--format=gnu', '-C', options.rootfs, '-cf', tar, '.'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const sourceDir = path.join(options.workDir, 'source');
  makeSourceImage({
    layoutDir: sourceDir,
    tag: 'v1',
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', data: readFileSync(tar) }],
    entrypoint: options.entrypoint,
  });
  rmSync(tar, { force: true });
  const squashed = await squashToLayout({ source: { dir: sourceDir, tag: 'v1' }, baseDir: '/', outDir: options.outDir, tag: 'v1' });
  rmSync(sourceDir, { recursive: true, force: true });
  const layerBlob = blobPath(options.outDir, squashed.layer.digest);
  return { layerBlob, layerDigest: squashed.layer.digest, layerSize: statSync(layerBlob).size, rootHash: squashed.rootHash };
}

export interface BenchStoreImage {
  name: string;
  image: SquashedBenchImage;
  entrypoint: string[];
}

/** What bench/verity-mount.mjs keeps of a store between runs (JSON). */
export interface BenchStoreInfo {
  image: string;
  imageBytes: number;
  root: string;
  layoutDir: string;
  /** Per install tag: its digests and the target order the guest activates. */
  tags: Record<string, { installDigest: string; installJsonDigest: string; order: string[] }>;
}

/**
 * The store for the benchmark: like the harness's makeStore (publishFixture with the test keyset
 * into `<dir>/root/oci`, checked by the guest's verifier on the host, packed with makeSquashfs),
 * but with one install artifact per tag in the same layout, each listing the same targets in
 * another order: the guest activates targets in install order, and `mos.manifest_tag=` picks the
 * order per boot while the disk stays byte for byte the same. Each target's source is its image
 * as mosb already squashed it (one squashfs+verity layer), which mosb publishes as it is once
 * `veritysetup verify` accepts it: the 1 GiB image is squashed once, not once per tag.
 */
export async function buildBenchStore(options: {
  dir: string;
  images: BenchStoreImage[];
  orders: Record<string, string[]>;
  fs?: 'squashfs' | 'ext4';
  log?: (line: string) => void;
}): Promise<BenchStoreInfo> {
  const log = options.log ?? (() => undefined);
  const keys = testKeys();
  const root = path.join(options.dir, 'root');
  const layoutDir = path.join(root, 'oci');
  mkdirSync(root, { recursive: true });
  const byName = new Map(options.images.map((image) => [image.name, image]));
  const tags: BenchStoreInfo['tags'] = {};
  for (const [tag, order] of Object.entries(options.orders)) {
    const targets: FixtureTarget[] = order.map((name) => {
      const image = byName.get(name);
      if (!image) throw new Error(`no image ${name}`);
      return {
        service_name: name,
        service_type: 'container',
        layers: [{ mediaType: SQUASHFS_VERITY_MEDIA_TYPE, data: readFileSync(image.image.layerBlob), annotations: { [VERITY_ROOT_HASH_ANNOTATION]: image.image.rootHash } }],
        entrypoint: image.entrypoint,
      };
    });
    const src = path.join(options.dir, `src-${tag}`);
    const publishStarted = Date.now();
    const published = await publishFixture({ dir: src, keys, layoutDir, tag, targets });
    rmSync(src, { recursive: true, force: true });
    for (const image of published.result.images) {
      if (!image.kept) throw new Error(`mosb squashed ${image.serviceName} again instead of keeping its squashfs+verity layer`);
    }
    log(`published tag ${tag} in ${((Date.now() - publishStarted) / 1000).toFixed(0)} s`);
    tags[tag] = {
      installDigest: published.result.install.digest,
      installJsonDigest: `sha256:${path.basename(published.artifacts.installBlob)}`,
      order,
    };
  }
  for (const tag of Object.keys(tags)) {
    const verdict = verifyOnHost(layoutDir, keys.caSpkiDer, tag);
    if (!verdict.ok) throw new Error(`the guest's verifier refuses tag ${tag} on the host: ${verdict.code}: ${verdict.message}`);
  }
  const packStarted = Date.now();
  const image = options.fs === 'ext4' ? makeExt4(root, path.join(options.dir, 'store.ext4')) : makeSquashfs(root, path.join(options.dir, 'store.squashfs'));
  log(`packed ${path.basename(image)} (${(statSync(image).size / 1024 / 1024).toFixed(0)} MiB) in ${((Date.now() - packStarted) / 1000).toFixed(0)} s`);
  return { image, imageBytes: statSync(image).size, root, layoutDir, tags };
}

/**
 * For comparison only (`--store-fs=ext4`): the same directory as an ext4 image (mke2fs -d, no
 * journal), which the guest's trust phase mounts too (`noload`). ext4 finds a file's blocks
 * through its extents; squashfs walks the file's block list to reach an offset.
 */
export function makeExt4(dir: string, image: string): string {
  const bytes = Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
  const sizeKiB = Math.ceil((bytes * 1.05 + 64 * 1024 * 1024) / 4096) * 4;
  rmSync(image, { force: true });
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-O', '^has_journal', '-E', 'root_owner=0:0', '-d', dir, image, `${sizeKiB}k`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return image;
}

/** Re-checks a cached store with the guest's verifier (signatures, digests, layer sizes). */
export function checkBenchStore(info: BenchStoreInfo): void {
  const keys = testKeys();
  for (const tag of Object.keys(info.tags)) {
    const verdict = verifyOnHost(info.layoutDir, keys.caSpkiDer, tag);
    if (!verdict.ok) throw new Error(`the cached store's tag ${tag} no longer verifies: ${verdict.code}: ${verdict.message}`);
  }
}

/** One target's console line. */
export interface MountLine {
  name: string;
  type: string;
  dir: string;
  /** The guest's activation time (` in <N> ms`), or null when the guest does not print it. */
  ms: number | null;
  line: string;
}

export interface BootResult {
  index: number;
  tag: string;
  order: string[];
  mounts: MountLine[];
  /** Seconds from QEMU's start to the last mount line, and to `services ready`. */
  mountedAtS: number;
  readyAtS: number;
  /** Whatever the hooks returned (the .mjs's CPU accounting). */
  measuredWhile: unknown;
  console: string;
}

const MOUNT_LINE = /mos: storage: ([\w.-]+) \(([\w-]+)\) verified and mounted at (\S+?)(?: in (\d+(?:\.\d+)?) ms)?[^\n]*\n/;

/** Parses every ` verified and mounted` line of a console text. */
export function parseMountLines(text: string): MountLine[] {
  const all = new RegExp(MOUNT_LINE.source, 'g');
  return [...text.matchAll(all)].map((m) => ({ name: m[1]!, type: m[2]!, dir: m[3]!, ms: m[4] === undefined ? null : Number(m[4]), line: m[0].trimEnd() }));
}

export interface BootPlan {
  tag: string;
  order: string[];
}

/**
 * Boots the test image once per plan entry (direct boot, a fresh swtpm, the store as /dev/vda,
 * `mos.manifest_tag=<tag>`) through the harness (vm-tests/harness: TCG only), one after another:
 * waits for each target's mount line (failing at once on a storage refusal, an emergency or a
 * panic), then `services ready`, then powers off. `beforeBoot` runs before QEMU starts (the
 * .mjs waits for a quiet machine there), `afterMounted` as soon as the last mount line is in.
 */
export async function runBoots(options: {
  store: BenchStoreInfo;
  plans: BootPlan[];
  /** More kernel command-line words for every boot. */
  cmdline?: readonly string[];
  consoleDir: string;
  log: (line: string) => void;
  live?: boolean;
  beforeBoot?: (index: number) => Promise<unknown>;
  afterMounted?: (index: number, before: unknown) => Promise<unknown>;
}): Promise<BootResult[]> {
  ensureVmPackages();
  mkdirSync(options.consoleDir, { recursive: true });
  const store = { image: options.store.image, drive: { file: options.store.image, serial: STORE_SERIAL, readOnly: true, format: 'raw' } } as unknown as Store;
  const results: BootResult[] = [];
  const bench = defineCase({
    id: 'bench-verity-mount',
    title: 'boot-time cost of a 1 GiB layer vs a 10 MiB one',
    images: ['direct'],
    timeoutMs: 3_600_000,
    async run(t: CaseContext) {
      for (const [i, plan] of options.plans.entries()) {
        const index = i + 1;
        const before = options.beforeBoot ? await options.beforeBoot(index) : undefined;
        const vm = await bootWithStore(t, { name: `boot${index}`, kind: 'direct', store, cmdline: [`mos.manifest_tag=${plan.tag}`, ...(options.cmdline ?? [])] });
        const failOn = [Markers.kernelPanic, Markers.emergency, /mos: storage: [\w.-]+: E_[A-Z_]+: [^\n]*\n/];
        try {
          await vm.waitFor(Markers.trustVerified, Timeouts.directBoot, { failOn });
          for (const name of plan.order) {
            await vm.waitFor(new RegExp(`mos: storage: ${name} \\([\\w-]+\\) verified and mounted at [^\\n]*\\n`), Timeouts.directBoot, { failOn });
          }
          const mountedAtS = (Date.now() - vm.startedAt) / 1000;
          const measuredWhile = options.afterMounted ? await options.afterMounted(index, before) : undefined;
          await vm.waitFor(Markers.servicesReady, Timeouts.directBoot, { failOn });
          const readyAtS = (Date.now() - vm.startedAt) / 1000;
          const mounts = parseMountLines(vm.console.content);
          results.push({ index, tag: plan.tag, order: plan.order, mounts, mountedAtS, readyAtS, measuredWhile, console: '' });
          const line = mounts.map((m) => `${m.name} ${m.ms ?? '?'} ms`).join(', ');
          options.log(`boot ${index} (${plan.tag}): ${line}; mounted at ${mountedAtS.toFixed(1)} s, services ready at ${readyAtS.toFixed(1)} s`);
          await vm.powerOff(Timeouts.shutdown);
        } finally {
          const file = path.join(options.consoleDir, `boot${index}-${plan.tag}.console.log`);
          writeFileSync(file, vm.console.content);
          if (results.at(-1)?.index === index) results.at(-1)!.console = file;
        }
      }
    },
  });
  await runCase(bench, { live: options.live ?? false, log: options.log });
  return results;
}
