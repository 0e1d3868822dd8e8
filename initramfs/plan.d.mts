// Types for plan.mjs (plain ESM so build.mjs runs on Node without a TypeScript step).

export interface ModuleDepEntry {
  path: string;
  deps: string[];
}

export interface ModulePlan {
  /** Module names in load order, dependencies first. */
  load: string[];
  /** Wanted names the kernel has built in (nothing to ship). */
  builtin: string[];
  /** modules.dep paths of `load`, same order. */
  paths: string[];
}

export interface Section {
  name: string;
  size: number;
  vma: number;
}

export function compareBytes(a: string, b: string): number;
export function planCpioList(paths: Iterable<string>): string[];
export function imageMode(relPath: string, kind: 'file' | 'dir' | 'symlink', hostMode?: number): number;
export function parseLdd(text: string): string[];
export function imagePathFor(hostPath: string): string;
export function moduleName(pathOrName: string): string;
export function decompressedModulePath(modulePath: string): string;
export function moduleDecompressor(modulePath: string): string[] | null;
export function parseModulesDep(text: string): Map<string, ModuleDepEntry>;
export function parseModulesBuiltin(text: string): Set<string>;
export function planModules(dep: Map<string, ModuleDepEntry>, builtin: Set<string>, wanted: readonly string[]): ModulePlan;
export function trimModulesDep(dep: Map<string, ModuleDepEntry>, names: readonly string[]): string;
export function parseKernelConfig(text: string): Map<string, string>;
export function parseObjdumpSections(text: string): Section[];
export const UKI_SECTION_ALIGN: number;
export function computeUkiLayout(
  stubSections: readonly Section[],
  added: readonly { name: string; size: number }[],
  align?: number,
): Section[];
export function defaultCmdline(variant: 'prod' | 'test'): string;
export function setPeTimestamp(image: Buffer, epoch: number): Buffer;
export function peChecksum(image: Buffer, checksumOffset: number): number;

export interface KernelPin {
  /** The Debian package (`apt-get download <package>=<version>`). */
  package: string;
  version: string;
  /** `uname -r` in the guest: the modules directory's name. */
  release: string;
  /** The .deb's sha256. */
  sha256: string;
}
export interface SelectedKernel extends KernelPin {
  /** A key of KERNELS (`6.1`, `6.12`). */
  id: string;
}
export const KERNELS: Readonly<Record<string, Readonly<KernelPin>>>;
export const DEFAULT_KERNEL: string;
export const KERNEL_ENV: 'MOS_KERNEL';
export function selectKernel(choice?: string | null): SelectedKernel;
export function kernelOutDir(buildRoot: string, id: string): string;
