/**
 * The only loader of the native addon (`mos_native.node`, built by `npm run build:addon`).
 *
 * This file is also bundled into `dist/*.mjs`, where the build copies the addon next to the
 * bundle; hence the search in `nativeAddonPath()`.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Native } from './types.ts';

const ADDON_FILE = 'mos_native.node';

/** The methods the addon must export: exactly those of `Native`. */
const NATIVE_METHODS = [
  'spawn',
  'reap',
  'kill',
  'killProcessGroup',
  'setChildSubreaper',
  'pipe',
  'close',
  'setNonBlocking',
  'bindCredDatagramSocket',
  'receiveCredDatagrams',
  'peerCredentials',
  'watchReadable',
  'mount',
  'umount',
  'reboot',
  'loadModule',
  'watchSignal',
  'setCtrlAltDelSignal',
  'bootTimeMs',
  'mknod',
  'sync',
  'killAll',
  'signalNumber',
  'tpmNvReadPublic',
  'tpmNvDefine',
  'tpmNvWrite',
  'tpmNvWriteLock',
  'tpmNvUndefine',
  'tpmNvReadWithPcrPolicy',
  'tpmPcrRead',
] as const satisfies readonly (keyof Native)[];

// Compile-time proof that the list above names every method of `Native`.
type AssertTrue<T extends true> = T;
export type EveryNativeMethodListed = AssertTrue<
  [Exclude<keyof Native, (typeof NATIVE_METHODS)[number]>] extends [never] ? true : false
>;

/** Where the addon may be, most explicit first. */
function addonCandidates(): string[] {
  const explicit = process.env.MOS_NATIVE_ADDON;
  if (explicit) return [path.resolve(explicit)];
  const runningFile = fileURLToPath(import.meta.url);
  return [
    // Bundled: dist/mos-init.mjs next to dist/mos_native.node.
    path.join(path.dirname(runningFile), ADDON_FILE),
    // From source: native/index.ts and native/build/Release/mos_native.node.
    fileURLToPath(new URL('./build/Release/mos_native.node', import.meta.url)),
  ];
}

/**
 * The addon file to load: `$MOS_NATIVE_ADDON` when set (and then only that), else the copy next
 * to the running file, else the build output in the source tree. Undefined when none exists.
 */
export function nativeAddonPath(): string | undefined {
  return addonCandidates().find((candidate) => existsSync(candidate));
}

let loaded: Native | undefined;

/** Loads the addon once per process; throws a clear error when it has not been built. */
export function loadNative(): Native {
  if (loaded) return loaded;
  const addonPath = nativeAddonPath();
  if (addonPath === undefined) {
    throw new Error(
      `mos native addon not built: run npm run build:addon (looked for ${addonCandidates().join(', ')})`,
    );
  }
  const require = createRequire(import.meta.url);
  let addon: Record<string, unknown>;
  try {
    addon = require(addonPath) as Record<string, unknown>;
  } catch (cause) {
    throw new Error(`mos native addon at ${addonPath} failed to load: ${(cause as Error).message}`, {
      cause,
    });
  }
  const missing = NATIVE_METHODS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `mos native addon at ${addonPath} is stale (missing ${missing.join(', ')}): run npm run build:addon`,
    );
  }
  // The addon's exports are the `Native` methods themselves (signal names are mapped in C++).
  loaded = addon as unknown as Native;
  return loaded;
}
