/**
 * Kernel modules: which files to load, in which order, from `modules.dep`.
 *
 * Pure: `parseModulesDep`, `parseModuleList`, `planModuleLoads` (dependency closure, dependencies
 * first, built-ins and duplicates dropped). Effectful: `loadModules` through `native.loadModule`
 * (finit_module on the thread pool).
 *
 * Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel with
 * MODULE_INIT_COMPRESSED_FILE. That needs CONFIG_MODULE_DECOMPRESS (kernel >= 5.17), which
 * Debian 12's 6.1 kernels do NOT set (checked in linux-image-6.1.0-56-cloud-amd64's config; they
 * also ship every module uncompressed): ship uncompressed `.ko` files in the initramfs. A
 * compressed module on such a kernel fails with a message saying so.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Native } from '../../native/types.ts';
import { monotonicMs } from '../monotonic.ts';

const MODULE_SUFFIX = /\.ko(\.(xz|zst|gz))?$/;

/** `dm-verity`, `dm_verity` and `kernel/drivers/md/dm-verity.ko.xz` all name `dm_verity`. */
export function moduleName(fileOrName: string): string {
  return path.basename(fileOrName).replace(MODULE_SUFFIX, '').replaceAll('-', '_');
}

export function isCompressedModule(file: string): boolean {
  return /\.ko\.(xz|zst|gz)$/.test(file);
}

export interface ModuleDep {
  /** Path relative to /lib/modules/<version>/, as modules.dep has it. */
  file: string;
  /** Direct and indirect dependencies as depmod lists them (files). */
  deps: string[];
}

/** `kernel/a.ko: kernel/b.ko kernel/c.ko` lines, keyed by module name. */
export function parseModulesDep(text: string): Map<string, ModuleDep> {
  const modules = new Map<string, ModuleDep>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const file = line.slice(0, colon).trim();
    if (!MODULE_SUFFIX.test(file)) continue;
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((dep) => dep !== '');
    modules.set(moduleName(file), { file, deps });
  }
  return modules;
}

/** `modules.builtin`: one path per line; the names of modules compiled into the kernel. */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '')
      .map(moduleName),
  );
}

export interface ModuleRequest {
  name: string;
  /** Module parameters, `key=value ...`, passed to finit_module. */
  params: string;
}

/**
 * `/etc/mos/modules` (modules-load.d style): one module per line, optional parameters after
 * the name, `#` and `;` comments.
 */
export function parseModuleList(text: string): ModuleRequest[] {
  const requests: ModuleRequest[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    if (line === '') continue;
    const [name, ...params] = line.split(/\s+/);
    requests.push({ name: moduleName(name!), params: params.join(' ') });
  }
  return requests;
}

export interface ModuleLoad {
  name: string;
  /** Path relative to the modules directory. */
  file: string;
  params: string;
  compressed: boolean;
  /** Why it is loaded: `requested`, or `needed by <name>`. */
  why: string;
}

export interface ModulePlan {
  loads: ModuleLoad[];
  /** Requested modules (or dependencies) that modules.dep does not know. */
  missing: string[];
  /** Requested modules compiled into the kernel: nothing to load. */
  builtin: string[];
}

/**
 * Every requested module and its dependencies, each once, dependencies before their users,
 * requests in the order given. modules.dep already lists the whole closure of each module, but
 * not in load order, so the order is computed here by a depth-first walk.
 */
export function planModuleLoads(
  requests: readonly ModuleRequest[],
  deps: ReadonlyMap<string, ModuleDep>,
  builtin: ReadonlySet<string> = new Set(),
): ModulePlan {
  const loads: ModuleLoad[] = [];
  const missing: string[] = [];
  const builtinHit: string[] = [];
  const placed = new Set<string>();
  const visiting = new Set<string>();
  const paramsOf = new Map(requests.map((request) => [request.name, request.params]));

  const visit = (name: string, why: string) => {
    if (placed.has(name) || visiting.has(name)) return;
    if (builtin.has(name)) {
      if (!builtinHit.includes(name)) builtinHit.push(name);
      placed.add(name);
      return;
    }
    const entry = deps.get(name);
    if (!entry) {
      if (!missing.includes(name)) missing.push(name);
      return;
    }
    visiting.add(name);
    for (const dep of entry.deps) visit(moduleName(dep), `needed by ${name}`);
    visiting.delete(name);
    placed.add(name);
    loads.push({ name, file: entry.file, params: paramsOf.get(name) ?? '', compressed: isCompressedModule(entry.file), why });
  };
  for (const request of requests) visit(request.name, 'requested');
  return { loads, missing, builtin: builtinHit };
}

export interface ModuleLoadOutcome {
  name: string;
  /** `no-device`: the module refused with ENODEV, i.e. what it drives is absent (efivarfs on a BIOS boot). */
  result: 'loaded' | 'already-loaded' | 'no-device' | 'failed';
  durationMs: number;
  detail?: string;
}

/** Explains an errno from finit_module for the log. */
function describeLoadError(load: ModuleLoad, error: Error & { code?: string }): string {
  if (load.compressed && (error.code === 'EINVAL' || error.code === 'EOPNOTSUPP')) {
    return `${error.message} (compressed module: this kernel cannot decompress modules, CONFIG_MODULE_DECOMPRESS is off; ship ${load.file.replace(/\.(xz|zst|gz)$/, '')} uncompressed)`;
  }
  return error.message;
}

/**
 * Loads the plan in order. A module whose dependency failed is not tried. EEXIST (already
 * loaded, e.g. by a previous boot stage) counts as loaded; ENODEV (no such device, e.g. efivarfs
 * without EFI) is reported as `no-device`, not as a failure.
 */
export async function loadModules(
  native: Native,
  modulesDir: string,
  plan: ModulePlan,
  now: () => number = () => monotonicMs(),
  deps?: ReadonlyMap<string, ModuleDep>,
): Promise<ModuleLoadOutcome[]> {
  const outcomes: ModuleLoadOutcome[] = [];
  const failed = new Set<string>();
  for (const load of plan.loads) {
    const began = now();
    const brokenDep = deps?.get(load.name)?.deps.map(moduleName).find((dep) => failed.has(dep));
    if (brokenDep !== undefined) {
      failed.add(load.name);
      outcomes.push({ name: load.name, result: 'failed', durationMs: 0, detail: `dependency ${brokenDep} failed` });
      continue;
    }
    try {
      await native.loadModule(path.join(modulesDir, load.file), load.params, { compressed: load.compressed });
      outcomes.push({ name: load.name, result: 'loaded', durationMs: now() - began });
    } catch (error) {
      const nativeError = error as Error & { code?: string };
      if (nativeError.code === 'EEXIST') {
        outcomes.push({ name: load.name, result: 'already-loaded', durationMs: now() - began });
        continue;
      }
      if (nativeError.code === 'ENODEV') {
        // Not a failure of the machine: nothing for it to drive (modprobe reports it the same way).
        outcomes.push({ name: load.name, result: 'no-device', durationMs: now() - began, detail: nativeError.message });
        continue;
      }
      failed.add(load.name);
      outcomes.push({ name: load.name, result: 'failed', durationMs: now() - began, detail: describeLoadError(load, nativeError) });
    }
  }
  return outcomes;
}

/** Reads a file or returns null when it does not exist. */
export function readOptional(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}
