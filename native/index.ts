/**
 * The only loader of the native addons (built by `npm run build:addon`): `mos_native.node`, and
 * `mos_tpm.node` beside it, which is loaded on the first TPM call only (the TSS and libcrypto
 * cost ~2 MB of RSS in a process that maps them; most processes never talk to the TPM).
 *
 * This file is also bundled into `dist/*.mjs`, where the build copies the addons next to the
 * bundle; hence the search in `nativeAddonPath()`.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Native } from './types.ts';

const ADDON_FILE = 'mos_native.node';
const TPM_ADDON_FILE = 'mos_tpm.node';

/** The methods mos_native.node must export: those of `Native` but the TPM's. */
const CORE_METHODS = [
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
  'listenUnixStream',
  'acceptConnection',
  'watchReadable',
  'mount',
  'umount',
  'reboot',
  'loadModule',
  'watchSignal',
  'setCtrlAltDelSignal',
  'bootTimeMs',
  'mknod',
  'rootOntoBindMount',
  'sync',
  'killAll',
  'signalNumber',
  'setV8Flags',
  'yieldCpu',
  'armRespawn',
  'disarmRespawn',
  'watchChildren',
  'loopAttach',
  'loopDetach',
  'dmCreate',
  'dmStatus',
  'dmRemove',
  'idmappedBind',
] as const satisfies readonly (keyof Native)[];

/** The methods of mos_tpm.node. */
const TPM_METHODS = [
  'tpmNvReadPublic',
  'tpmNvDefine',
  'tpmNvWrite',
  'tpmNvWriteLock',
  'tpmNvUndefine',
  'tpmNvRead',
  'tpmNvReadWithPcrPolicy',
  'tpmPcrRead',
] as const satisfies readonly (keyof Native)[];

// Compile-time proof that the lists above name every method of `Native`.
type AssertTrue<T extends true> = T;
export type EveryNativeMethodListed = AssertTrue<
  [Exclude<keyof Native, (typeof CORE_METHODS)[number] | (typeof TPM_METHODS)[number]>] extends [never] ? true : false
>;

/** Where the addon may be, most explicit first. */
function addonCandidates(): string[] {
  const explicit = process.env.MOS_NATIVE_ADDON;
  if (explicit) return [path.resolve(explicit)];
  const runningFile = fileURLToPath(import.meta.url);
  return [
    // Bundled: dist/mos-init.cjs next to dist/mos_native.node.
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
  const addon = requireAddon(addonPath, CORE_METHODS);
  let tpm: Record<string, unknown> | undefined;
  const tpmAddon = () => (tpm ??= requireAddon(path.join(path.dirname(addonPath), TPM_ADDON_FILE), TPM_METHODS));
  const native: Record<string, unknown> = { ...addon };
  for (const name of TPM_METHODS) {
    // The TPM calls return promises: a TPM addon that cannot load rejects them, like a TPM error.
    native[name] = (...args: unknown[]) => {
      let tpmExports: Record<string, unknown>;
      try {
        tpmExports = tpmAddon();
      } catch (error) {
        return Promise.reject(error);
      }
      // Argument errors still throw at once, as every other native call's do.
      return (tpmExports[name] as (...a: unknown[]) => Promise<unknown>)(...args);
    };
  }
  // The addons' exports are the `Native` methods themselves (signal names are mapped in C++).
  loaded = native as unknown as Native;
  return loaded;
}

function requireAddon(addonPath: string, methods: readonly string[]): Record<string, unknown> {
  const require = createRequire(import.meta.url);
  let addon: Record<string, unknown>;
  try {
    addon = require(addonPath) as Record<string, unknown>;
  } catch (cause) {
    throw new Error(`mos native addon at ${addonPath} failed to load: ${(cause as Error).message}`, {
      cause,
    });
  }
  const missing = methods.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `mos native addon at ${addonPath} is stale (missing ${missing.join(', ')}): run npm run build:addon`,
    );
  }
  return addon;
}
