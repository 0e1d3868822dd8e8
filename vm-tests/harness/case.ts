/**
 * A VM case (LinuxKit style: one numbered folder under vm-tests/cases/ per case) and the context
 * it runs in. Cases assert with node:assert, so the same case runs under vitest (vm.test.ts) and
 * by hand (run.mjs). Whatever a case starts is cleaned up when it ends, pass or fail; on failure
 * the consoles are kept in test/.artifacts/vm/<case>/.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CleanupRegistry, isAlive } from './cleanup.ts';
import { ensureImages, repoRoot, type ImageKind, type TestImages } from './images.ts';
import { Machine, type BootOptions } from './machine.ts';

export interface VmCase {
  /** The folder name, e.g. `01-direct-boot`. */
  id: string;
  title: string;
  /** Images the case boots: `direct` (kernel + initramfs) and/or `uefi` (UKIs). */
  images: readonly ImageKind[];
  /** Whole-case limit (the vitest timeout); each wait inside has its own, shorter one. */
  timeoutMs: number;
  run(t: CaseContext): Promise<void>;
}

export function defineCase(vmCase: VmCase): VmCase {
  return vmCase;
}

export const artifactsRoot = path.join(repoRoot, 'test', '.artifacts', 'vm');

export interface CaseRunOptions {
  /** Print console text as it arrives (run.mjs). */
  live?: boolean;
  log?: (line: string) => void;
}

export class CaseContext {
  readonly workDir: string;
  readonly cleanup = new CleanupRegistry();
  readonly machines: Machine[] = [];
  readonly steps: { label: string; seconds: number }[] = [];
  private readonly started = Date.now();
  private lastStep = Date.now();
  private bootCount = 0;

  constructor(
    readonly vmCase: VmCase,
    readonly images: TestImages,
    private readonly options: CaseRunOptions = {},
  ) {
    sweepDeadWorkDirs();
    // Short paths: unix socket paths must stay under 108 bytes. The pid in the name lets a later
    // run remove the dirs of a run that was SIGKILLed (its QEMU died with it: --pdeathsig).
    this.workDir = mkdtempSync(path.join(os.tmpdir(), `mos-vm-${vmCase.id.slice(0, 2)}-${process.pid}-`));
    this.cleanup.directory(this.workDir);
  }

  log(line: string): void {
    (this.options.log ?? (() => undefined))(`[${this.vmCase.id} +${((Date.now() - this.started) / 1000).toFixed(1)}s] ${line}`);
  }

  /** Records how long the case took since the previous step. */
  step(label: string): void {
    const now = Date.now();
    this.steps.push({ label, seconds: (now - this.lastStep) / 1000 });
    this.lastStep = now;
    this.log(label);
  }

  /** A TPM state directory in the case's work dir, for boots that share one TPM (`tpmStateDir`). */
  tpmState(name = 'tpm-state'): string {
    const dir = path.join(this.workDir, name);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  /** A fresh directory in the case's work dir (stores, keysets). */
  scratch(name: string): string {
    const dir = path.join(this.workDir, name);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  async boot(options: BootOptions): Promise<Machine> {
    const live = this.options.live;
    // Live console: once a case has booted more than one machine, each line carries its name
    // (chunks end mid-line: the prefix goes only where a line starts).
    let atLineStart = true;
    this.bootCount += 1;
    const show = (name: string, chunk: string) => {
      if (this.bootCount > 1) {
        process.stdout.write(prefixLines(name, chunk, atLineStart));
      } else process.stdout.write(chunk);
      atLineStart = chunk.endsWith('\n');
    };
    const machine = await Machine.start(
      {
        workDir: this.workDir,
        cleanup: this.cleanup,
        images: this.images,
        log: (line) => this.log(line),
        onConsole: live ? show : undefined,
      },
      options,
    );
    this.machines.push(machine);
    return machine;
  }

  /** Ends everything; keeps the consoles as artifacts when the case failed. */
  async finish(failed: boolean): Promise<void> {
    await Promise.all(this.machines.map((m) => m.quit().catch(() => undefined)));
    const dir = path.join(artifactsRoot, this.vmCase.id);
    rmSync(dir, { recursive: true, force: true });
    if (failed) {
      mkdirSync(dir, { recursive: true });
      const parts: string[] = [];
      for (const machine of this.machines) {
        machine.console.end('the case ended');
        const file = path.join(machine.dir, 'console.log');
        const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
        parts.push(this.machines.length > 1 ? `===== ${machine.name} =====\n${text}` : text);
        const args = path.join(machine.dir, 'qemu.args');
        if (existsSync(args)) writeFileSync(path.join(dir, `${machine.name}.qemu-args`), readFileSync(args));
        if (machine.qemuStderr.length) writeFileSync(path.join(dir, `${machine.name}.qemu-stderr`), machine.qemuStderr.join(''));
      }
      writeFileSync(path.join(dir, 'console.log'), parts.join('\n'));
      this.log(`kept the console in ${path.relative(repoRoot, dir)}/console.log`);
    }
    await this.cleanup.runAll();
  }
}

/** Removes /tmp/mos-vm-NN-<pid>-* dirs whose process is gone. */
function sweepDeadWorkDirs(): void {
  for (const name of readdirSync(os.tmpdir())) {
    const match = /^mos-vm-\d\d-(\d+)-/.exec(name);
    if (match && !isAlive(Number(match[1]))) rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
  }
}

/** Prefixes every line that starts in `chunk` (the first only when the last chunk ended a line). */
export function prefixLines(name: string, chunk: string, atLineStart = true): string {
  const prefixed = chunk.replace(/\n(?=.)/g, `\n${name}| `);
  return atLineStart && chunk.length > 0 ? `${name}| ${prefixed}` : prefixed;
}

export interface CaseResult {
  id: string;
  seconds: number;
  steps: { label: string; seconds: number }[];
}

/** Runs one case from start to cleanup; rethrows its failure after cleaning up. */
export async function runCase(vmCase: VmCase, options: CaseRunOptions = {}): Promise<CaseResult> {
  const images = ensureImages(vmCase.images, options.log);
  const t = new CaseContext(vmCase, images, options);
  const started = Date.now();
  try {
    await vmCase.run(t);
  } catch (error) {
    // The case's own failure is the one to report; a cleanup problem is only logged then.
    await t.finish(true).catch((cleanupError) => t.log(String(cleanupError)));
    throw error;
  }
  await t.finish(false);
  return { id: vmCase.id, seconds: (Date.now() - started) / 1000, steps: t.steps };
}
