/**
 * The boot images the cases use, from `build/` (made by `node initramfs/build.mjs --variant
 * test`, which this module only calls, when an output is missing or older than its sources).
 *
 * The guest kernel: MOS_KERNEL (an id of initramfs/plan.mjs KERNELS, e.g. `6.12`; unset = the
 * build's default). The default kernel's images are in build/, another's in build/kernel-<id>/;
 * images built for another kernel than the one chosen count as stale.
 *
 * Overrides for trying the harness on other images (documented in vm-tests/README.md):
 * MOS_VM_KERNEL, MOS_VM_INITRD, MOS_VM_CMDLINE, MOS_VM_UKI, MOS_VM_UKI_UNSIGNED, MOS_VM_ESP;
 * MOS_VM_BUILD=never|auto|always (default auto).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KERNEL_ENV, kernelOutDir, selectKernel, type SelectedKernel } from '../../initramfs/plan.mjs';

// run.mjs runs an esbuild bundle from a temp dir and says where the checkout is.
export const repoRoot = process.env.MOS_REPO_ROOT ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The build root (shared by every kernel: build/keys, build/cache). */
export const buildDir = path.join(repoRoot, 'build');
/** The guest kernel the cases boot ($MOS_KERNEL, else the build's default). */
export const guestKernel: SelectedKernel = selectKernel(process.env[KERNEL_ENV]);
/** Where that kernel's images are: build/ for the default kernel, build/kernel-<id>/ otherwise. */
export const imagesDir = kernelOutDir(buildDir, guestKernel.id);

/** The kernel command line of the test image when neither the manifest nor MOS_VM_CMDLINE says. */
export const FALLBACK_TEST_CMDLINE = 'console=ttyS0 panic=-1 mos.debug_control=1';

export interface TestImages {
  kernel: string;
  initrd: string;
  /** Base command line for direct boot (a case appends its own flags). */
  cmdline: string;
  /** Signed UKI, its unsigned twin, and an ESP image holding the signed one. */
  uki: string;
  ukiUnsigned: string;
  esp: string;
  manifest: Record<string, unknown> | null;
}

export type ImageKind = 'direct' | 'uefi';

export function defaultImages(env: NodeJS.ProcessEnv = process.env): TestImages {
  const manifestPath = path.join(imagesDir, 'manifest.json');
  let manifest: Record<string, unknown> | null = null;
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Record<string, unknown>;
  } catch {
    manifest = null;
  }
  return {
    kernel: env.MOS_VM_KERNEL ?? path.join(imagesDir, 'vmlinuz'),
    initrd: env.MOS_VM_INITRD ?? path.join(imagesDir, 'initramfs-test.cpio'),
    cmdline: env.MOS_VM_CMDLINE ?? manifestCmdline(manifest) ?? FALLBACK_TEST_CMDLINE,
    uki: env.MOS_VM_UKI ?? path.join(imagesDir, 'mos-test.efi'),
    ukiUnsigned: env.MOS_VM_UKI_UNSIGNED ?? path.join(imagesDir, 'mos-test-unsigned.efi'),
    esp: env.MOS_VM_ESP ?? path.join(imagesDir, 'esp-test.img'),
    manifest,
  };
}

/** The test variant's command line as the manifest records it, in whichever shape it has. */
export function manifestCmdline(manifest: Record<string, unknown> | null): string | null {
  if (!manifest) return null;
  const variants = manifest.variants as Record<string, Record<string, unknown>> | undefined;
  const candidates = [variants?.test?.cmdline, (manifest.test as Record<string, unknown> | undefined)?.cmdline, manifest.cmdline];
  for (const candidate of candidates) {
    if (typeof candidate === 'string' && candidate.trim()) return candidate.trim();
    if (candidate && typeof candidate === 'object' && typeof (candidate as { test?: unknown }).test === 'string') {
      return (candidate as { test: string }).test;
    }
  }
  return null;
}

function requiredFiles(images: TestImages, kinds: readonly ImageKind[]): string[] {
  const files: string[] = [];
  if (kinds.includes('direct')) files.push(images.kernel, images.initrd);
  if (kinds.includes('uefi')) files.push(images.uki, images.ukiUnsigned);
  return files;
}

/** Newest mtime (ms) of the files under `dirs` (relative to the repo), skipping build outputs. */
export function newestSourceMtime(dirs: readonly string[] = ['initramfs', 'init', 'native/src', 'mosctl', 'scripts/build-bundle.mjs']): number {
  let newest = 0;
  const visit = (p: string) => {
    let st;
    try {
      st = statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const entry of readdirSync(p)) if (entry !== 'node_modules' && entry !== 'build') visit(path.join(p, entry));
    } else newest = Math.max(newest, st.mtimeMs);
  };
  for (const dir of dirs) visit(path.join(repoRoot, dir));
  return newest;
}

/** The kernel release the manifest says the images carry (null: no manifest or no record). */
export function manifestKernelRelease(manifest: Record<string, unknown> | null): string | null {
  const kernel = (manifest?.inputs as { kernel?: { release?: unknown } } | undefined)?.kernel;
  return typeof kernel?.release === 'string' ? kernel.release : null;
}

/** Why the images need a build, or null when they are usable as they are. */
export function staleReason(images: TestImages, kinds: readonly ImageKind[], env: NodeJS.ProcessEnv = process.env): string | null {
  const files = requiredFiles(images, kinds).filter((file) => !isOverridden(file, env));
  const missing = files.filter((file) => !existsSync(file));
  if (missing.length) return `missing ${missing.map((f) => path.relative(repoRoot, f)).join(', ')}`;
  if (files.length === 0) return null;
  const release = manifestKernelRelease(images.manifest);
  if (release !== guestKernel.release) return `the images carry kernel ${release ?? '(unrecorded)'}, ${KERNEL_ENV}=${guestKernel.id} is ${guestKernel.release}`;
  const oldest = Math.min(...files.map((file) => statSync(file).mtimeMs));
  const newest = newestSourceMtime();
  return newest > oldest ? 'sources are newer than the images' : null;
}

function isOverridden(file: string, env: NodeJS.ProcessEnv): boolean {
  return ['MOS_VM_KERNEL', 'MOS_VM_INITRD', 'MOS_VM_UKI', 'MOS_VM_UKI_UNSIGNED', 'MOS_VM_ESP'].some((key) => env[key] === file);
}

/**
 * Makes sure the images for `kinds` exist and are fresh, building the test variant when needed
 * (MOS_VM_BUILD=auto, the default), and returns their paths.
 */
let builtInThisProcess = false;

export function ensureImages(kinds: readonly ImageKind[] = ['direct', 'uefi'], log: (line: string) => void = () => undefined): TestImages {
  const mode = process.env.MOS_VM_BUILD ?? 'auto';
  let images = defaultImages();
  const reason = mode === 'always' ? 'MOS_VM_BUILD=always' : staleReason(images, kinds);
  // One build per run: colleagues edit sources while a suite runs, and every case of a run must
  // boot the same images.
  if (reason && mode !== 'never' && !builtInThisProcess) {
    builtInThisProcess = true;
    const script = path.join(repoRoot, 'initramfs', 'build.mjs');
    if (!existsSync(script)) throw new Error(`cannot build the VM images (${reason}): initramfs/build.mjs does not exist yet`);
    withLock(path.join(repoRoot, 'test', '.artifacts', 'vm', '.build.lock'), () => {
      // Another run may have built them while we waited for the lock.
      if (mode !== 'always' && !staleReason(defaultImages(), kinds)) return;
      const env = { ...process.env };
      delete env.NODE_EXTRA_CA_CERTS;
      const run = (args: string[]) => execFileSync(process.execPath, args, { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'], env });
      // build.mjs packs dist/ as it is: refresh the addon (skipped when current) and the bundles.
      const buildArgs = ['--variant', 'test', '--kernel', guestKernel.id, '--out', imagesDir];
      log(`building the test images (${reason}): scripts/build-addon.mjs, scripts/build-bundle.mjs, initramfs/build.mjs ${buildArgs.join(' ')}`);
      run([path.join(repoRoot, 'scripts', 'build-addon.mjs')]);
      run([path.join(repoRoot, 'scripts', 'build-bundle.mjs')]);
      run([script, ...buildArgs]);
    });
    images = defaultImages();
  }
  const missing = requiredFiles(images, kinds).filter((file) => !existsSync(file));
  if (missing.length) throw new Error(`VM images missing: ${missing.join(', ')}`);
  // Never boot another kernel than the one chosen without saying so (MOS_VM_BUILD=never, a
  // build for another kernel in the same directory): only MOS_VM_KERNEL/_INITRD/_UKI override it.
  const release = manifestKernelRelease(images.manifest);
  const own = requiredFiles(images, kinds).filter((file) => !isOverridden(file, process.env));
  if (own.length > 0 && release !== guestKernel.release) {
    throw new Error(`${path.relative(repoRoot, imagesDir) || '.'}/manifest.json: the images carry kernel ${release ?? '(unrecorded)'}, not ${guestKernel.release} (${KERNEL_ENV}=${guestKernel.id}); build them or set MOS_VM_BUILD=auto`);
  }
  return images;
}

function withLock(lock: string, action: () => void): void {
  execFileSync('mkdir', ['-p', path.dirname(lock)]);
  const deadline = Date.now() + 20 * 60_000;
  for (;;) {
    try {
      closeSync(openSync(lock, 'wx'));
      break;
    } catch {
      // A lock older than 20 minutes belongs to a dead run.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 20 * 60_000) rmSync(lock, { force: true });
      } catch {
        // gone meanwhile
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
    }
  }
  try {
    action();
  } finally {
    rmSync(lock, { force: true });
  }
}
