/**
 * The store disk of the trust cases (issue 4): a read-only squashfs whose `oci/` is an install
 * layout published by mosb (as a library, on the host), attached as a virtio-blk disk and named
 * on the kernel command line as `mos.store=<device>`. The guest mounts it at /run/mos/store,
 * reads the trust root from the TPM and verifies `oci/` before anything from it runs.
 *
 * Each store is also checked on the host by the guest's own verifier (init/trust/verify-install.ts)
 * with the test image's trust root: `expected` is what the guest must conclude, so a refusal case
 * asserts the code the host found, and a broken fixture fails before any VM boots.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { createFsLayoutReader } from '../../init/trust/layout-reader.ts';
import { verifyInstallLayout } from '../../init/trust/verify-install.ts';
import {
  blobPath,
  caSpkiDer,
  DEFAULT_FIXTURE_TARGETS,
  type FixtureTarget,
  type KeysetFixture,
  makeKeysetFixture,
  publishFixture,
  type PublishedFixture,
  readBlobJson,
} from '../../test/helpers/manifest-fixtures.ts';
import { buildDir } from './images.ts';
import type { ExtraDrive } from './qemu.ts';

/** The keyset the test image's build creates once and whose manifest CA the test initramfs embeds. */
export const TEST_KEYSET = 'mos-test';
export const TEST_PRODUCT = 'demo';
/** The store disk's virtio serial (`/sys/block/vd*\/serial`). */
export const STORE_SERIAL = 'mos-store';

/**
 * The store's device node. Disks are probed in PCI order and the harness adds the ESP first,
 * so with UEFI the store is the second disk, `/dev/vdb`; a direct boot has no ESP: `/dev/vda`.
 */
export function storeDevice(boot: 'direct' | 'uefi'): string {
  return boot === 'uefi' ? '/dev/vdb' : '/dev/vda';
}

/** The kernel command-line flag naming the store (the boot side's contract). */
export function storeFlag(boot: 'direct' | 'uefi'): string {
  return `mos.store=${storeDevice(boot)}`;
}

/** Where the test keyset lives: MOS_VM_KEYS_DIR, else build/keys (the image build's MOS_KEYS_DIR). */
export function testKeysDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.MOS_VM_KEYS_DIR ?? path.join(buildDir, 'keys');
}

/** The test keyset (`mos-test`, product `demo`) as the image build made it; never creates one. */
export function testKeys(keysDir = testKeysDir()): KeysetFixture {
  const base = path.join(keysDir, TEST_KEYSET);
  const caCertPath = path.join(base, 'manifest-ca', 'cert.pem');
  const productDir = path.join(base, 'manifest', TEST_PRODUCT);
  for (const file of [caCertPath, path.join(productDir, 'cert.pem'), path.join(productDir, 'privkey.pem'), path.join(productDir, 'uuid')]) {
    if (!existsSync(file)) {
      throw new Error(`${file} is missing: the test keyset (${TEST_KEYSET}, product ${TEST_PRODUCT}) is made by node initramfs/build.mjs --variant test`);
    }
  }
  return {
    keysDir,
    keyset: TEST_KEYSET,
    product: TEST_PRODUCT,
    productUuid: readFileSync(path.join(productDir, 'uuid'), 'utf8').trim(),
    algorithm: 'ecdsa-p256',
    caCertPath,
    caKeyPath: path.join(base, 'manifest-ca', 'privkey.pem'),
    caSpkiDer: caSpkiDer(caCertPath),
    productCertPath: path.join(productDir, 'cert.pem'),
    productKeyPath: path.join(productDir, 'privkey.pem'),
  };
}

/** A keyset of its own (another manifest CA), made in `dir`: what the machine must refuse. */
export function foreignKeys(dir: string): Promise<KeysetFixture> {
  return makeKeysetFixture({ dir, keysDir: path.join(dir, 'keys'), keyset: 'foreign', product: TEST_PRODUCT });
}

export type HostVerdict = { ok: true; targets: number } | { ok: false; code: string; message: string };

/** The guest's verifier, run on the host over `layoutDir` with `trustRoot` (a CA's SPKI DER). */
export function verifyOnHost(layoutDir: string, trustRoot: Buffer, tag = 'latest'): HostVerdict {
  const result = verifyInstallLayout({ reader: createFsLayoutReader(layoutDir), trustRoot, tag, now: new Date() });
  if (result.ok) return { ok: true, targets: result.targets.length };
  return { ok: false, code: result.code, message: result.message };
}

/**
 * The default store's target: one container that the guest runs chroot'ed in its verity-backed
 * overlay, so its image needs a program that runs without libraries: Debian's static busybox.
 */
export function DEFAULT_VM_TARGETS(): FixtureTarget[] {
  return [
    {
      ...DEFAULT_FIXTURE_TARGETS[0]!,
      files: { '/bin/busybox': readFileSync('/bin/busybox') },
      entrypoint: ['/bin/busybox', 'sh', '-c', 'echo hello from web; exec /bin/busybox sleep 1000000'],
    },
  ];
}

export interface StoreOptions {
  /** A fresh directory for the sources, the layout and the image. */
  dir: string;
  /** Signs with these (default: the test keyset). */
  keys?: KeysetFixture;
  /** The trust root the machine holds (default: the test keyset's CA), for `expected`. */
  trustRoot?: Buffer;
  targets?: FixtureTarget[];
  /** More top-level manifest.yaml fields (e.g. `storage`). */
  manifest?: Record<string, unknown>;
  tag?: string;
  /** Changes the published layout before it is packed; returns what it did (for logs). */
  tamper?: (published: PublishedFixture) => string;
}

export interface Store {
  /** The squashfs image (attach read-only: `drive`). */
  image: string;
  drive: ExtraDrive;
  /** The directory packed into the image; `oci/` is the layout. */
  root: string;
  layoutDir: string;
  tag: string;
  published: PublishedFixture;
  /** The install artifact's manifest digest, and its install.json blob's (either may be printed). */
  installDigest: string;
  installJsonDigest: string;
  tampered: string | null;
  /** What the guest's verifier concludes on the host. */
  expected: HostVerdict;
}

/** Publishes a layout with mosb into `<dir>/root/oci`, optionally tampers with it, packs it. */
export async function makeStore(options: StoreOptions): Promise<Store> {
  const keys = options.keys ?? testKeys();
  const root = path.join(options.dir, 'root');
  const layoutDir = path.join(root, 'oci');
  mkdirSync(root, { recursive: true });
  const published = await publishFixture({
    dir: path.join(options.dir, 'src'),
    keys,
    layoutDir,
    tag: options.tag,
    targets: options.targets ?? DEFAULT_VM_TARGETS(),
    ...(options.manifest ? { manifest: options.manifest } : {}),
  });
  const tampered = options.tamper ? options.tamper(published) : null;
  const trustRoot = options.trustRoot ?? (options.keys ? testKeys().caSpkiDer : keys.caSpkiDer);
  const expected = verifyOnHost(layoutDir, trustRoot, published.tag);
  const image = makeSquashfs(root, path.join(options.dir, 'store.squashfs'));
  const installJsonDigest = `sha256:${path.basename(published.artifacts.installBlob)}`;
  return {
    image,
    drive: { file: image, serial: STORE_SERIAL, readOnly: true, format: 'raw' },
    root,
    layoutDir,
    tag: published.tag,
    published,
    installDigest: published.result.install.digest,
    installJsonDigest,
    tampered,
    expected,
  };
}

/** `mksquashfs DIR IMG -noappend -all-root` (squashfs-tools). */
export function makeSquashfs(dir: string, image: string): string {
  execFileSync('mksquashfs', [dir, image, '-noappend', '-all-root', '-no-progress', '-quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  return image;
}

/** XORs one byte of `file` (default: the middle one) with 0x01; the size stays the same. */
export function flipByte(file: string, offset?: number): number {
  const fd = openSync(file, 'r+');
  try {
    const size = readFileSync(file).length;
    const at = offset ?? Math.floor(size / 2);
    if (at < 0 || at >= size) throw new Error(`offset ${at} is outside ${file} (${size} bytes)`);
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, at);
    byte[0] = byte[0]! ^ 0x01;
    writeSync(fd, byte, 0, 1, at);
    return at;
  } finally {
    closeSync(fd);
  }
}

/** Tamper: flips a byte in the image manifest blob of target `service` (its signed digest no longer matches). */
export function tamperTargetManifest(service: string): (published: PublishedFixture) => string {
  return (published) => {
    const image = published.result.images.find((i) => i.serviceName === service);
    if (!image) throw new Error(`no target ${service} in the published layout`);
    const file = blobPath(published.layoutDir, image.digest);
    const at = flipByte(file);
    return `flipped byte ${at} of ${service}'s image manifest ${image.digest.slice(0, 19)}…`;
  };
}

/**
 * Tamper: flips a byte in the top block of target `service`'s verity hash tree (after the
 * squashfs, its padding and the verity superblock): the signed root hash no longer matches.
 */
export function tamperTargetVerityTree(service: string): (published: PublishedFixture) => string {
  return (published) => {
    const image = published.result.images.find((i) => i.serviceName === service);
    if (!image) throw new Error(`no target ${service} in the published layout`);
    const manifest = readBlobJson<{ layers: { digest: string }[] }>(published.layoutDir, image.digest);
    const layer = manifest.layers[0]!.digest;
    const file = blobPath(published.layoutDir, layer);
    const bytesUsed = Number(readFileSync(file).readBigUInt64LE(40));
    const treeStart = Math.ceil(bytesUsed / 4096) * 4096 + 4096;
    const at = flipByte(file, treeStart + 100);
    return `flipped byte ${at} (hash tree) of ${service}'s layer ${layer.slice(0, 19)}…`;
  };
}

/** Tamper: flips a byte in the first layer blob of target `service`. */
export function tamperTargetLayer(service: string): (published: PublishedFixture) => string {
  return (published) => {
    const image = published.result.images.find((i) => i.serviceName === service);
    if (!image) throw new Error(`no target ${service} in the published layout`);
    const manifest = readBlobJson<{ layers: { digest: string }[] }>(published.layoutDir, image.digest);
    const layer = manifest.layers[0]!.digest;
    const at = flipByte(blobPath(published.layoutDir, layer));
    return `flipped byte ${at} of ${service}'s layer ${layer.slice(0, 19)}…`;
  };
}
