/**
 * Signed UKIs (and ESPs holding them) with another kernel command line, for the cases whose
 * trust state depends on it: `buildUkiVariant` from initramfs/build.mjs, the same stub, layout,
 * os-release and snakeoil signature as the build's own `mos-test.efi` (identical bytes for the
 * test command line), cached under build/uki-variants/ by a hash of the command line and inputs.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { imagesDir, repoRoot } from './images.ts';

export interface UkiVariant {
  /** The signed UKI. */
  uki: string;
  /** A FAT image holding it at EFI/BOOT/BOOTX64.EFI (attach with `BootOptions.esp`). */
  esp: string;
  cmdline: string;
  dir: string;
  /** Whether it came from the cache. */
  cached: boolean;
}

interface BuildModule {
  buildUkiVariant(options: { cmdline: string; variant?: string; out?: string; cacheDir?: string }): UkiVariant;
}

let loaded: Promise<BuildModule> | null = null;

/** initramfs/build.mjs, imported at run time (never bundled: run.mjs bundles the harness). */
function buildModule(): Promise<BuildModule> {
  loaded ??= import(pathToFileURL(path.join(repoRoot, 'initramfs', 'build.mjs')).href) as Promise<BuildModule>;
  return loaded;
}

/**
 * The signed UKI + ESP of the test image with `cmdline` (the whole command line, not an
 * addition), built from the chosen kernel's images (build/vmlinuz and build/initramfs-test.cpio.zst
 * for the default kernel, build/kernel-<id>/… for another: images.ts) (~2 s) or reused.
 */
export async function ukiVariant(cmdline: string, options: { cacheDir?: string } = {}): Promise<UkiVariant> {
  const build = await buildModule();
  if (typeof build.buildUkiVariant !== 'function') throw new Error('initramfs/build.mjs does not export buildUkiVariant');
  return build.buildUkiVariant({ cmdline, variant: 'test', out: imagesDir, cacheDir: options.cacheDir });
}
