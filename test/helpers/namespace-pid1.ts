/**
 * mos-init as PID 1 of `unshare --pid --fork --mount --mount-proc` on the host (no VM): starts
 * it, reads its console (stderr with `--console -`), finds its host pid and control socket, and
 * ends the namespace. Before any signal that can end in reboot(2) or kill(-1), it checks that the
 * process is PID 1 of a child PID namespace, never ours.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { cleanEnv, controlRequest, repoRoot, waitFor } from './host-mos.ts';

/** mos-init with the test hooks (`--trust-ca`, `mos.test_crash=`); the production one beside it. */
export const testBundle = path.join(repoRoot, 'dist', 'mos-init-test.cjs');
export const productionBundle = path.join(repoRoot, 'dist', 'mos-init.cjs');

export interface NamespaceStartOptions {
  bundle?: string;
  /** `--cmdline`: what PID 1 takes for the kernel command line. */
  cmdline?: string;
  /** More mos-init arguments (e.g. `--trust-ca FILE`, test bundle only). */
  extraArgs?: readonly string[];
}

export class NamespacePid1 {
  readonly socketPath: string;
  readonly consoleLines: string[] = [];
  /** PID 1 of the namespace, as the host sees it. */
  pid1 = 0;
  private unshare: ChildProcess | null = null;
  private exited: Promise<{ code: number | null; signal: string | null }> | null = null;

  constructor(
    readonly stateDir: string,
    readonly configPath: string,
  ) {
    this.socketPath = path.join(stateDir, 'control.sock');
  }

  async start(options: NamespaceStartOptions = {}): Promise<this> {
    const args = ['--pid', '--fork', '--mount', '--mount-proc', '--propagation', 'private'];
    args.push(process.execPath, options.bundle ?? testBundle, '--pid1', '--no-early-mounts');
    args.push('--config', this.configPath, '--state-dir', this.stateDir, '--console', '-');
    if (options.cmdline !== undefined) args.push('--cmdline', options.cmdline);
    args.push(...(options.extraArgs ?? []));
    const child = spawn('unshare', args, { env: cleanEnv({ MOS_LOG_LEVEL: 'debug' }), stdio: ['ignore', 'ignore', 'pipe'] });
    this.unshare = child;
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    let pending = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop()!;
      this.consoleLines.push(...lines);
    });
    await waitFor(() => this.findPid1(), 10_000, 'PID 1 of the namespace');
    await waitFor(() => existsSync(this.socketPath), 20_000, () => `control socket; console: ${this.consoleLines.join(' | ')}`);
    return this;
  }

  private findPid1(): boolean {
    const pid = this.unshare?.pid;
    if (!pid) return false;
    try {
      const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      if (children === '') return false;
      this.pid1 = Number(children.split(' ')[0]);
      return true;
    } catch {
      return false;
    }
  }

  /** True when `pid1` is PID 1 of a child PID namespace (NSpid `<host pid> 1`, not our namespace). */
  isChildNamespacePid1(): boolean {
    try {
      const status = readFileSync(`/proc/${this.pid1}/status`, 'utf8');
      return /^NSpid:\s+\d+\s+1$/m.test(status) && readlinkSync(`/proc/${this.pid1}/ns/pid`) !== readlinkSync('/proc/self/ns/pid');
    } catch {
      return false;
    }
  }

  /** The double check before any signal that ends in reboot(2), as a test assertion. */
  assertChildNamespacePid1(): void {
    const status = readFileSync(`/proc/${this.pid1}/status`, 'utf8');
    expect(/^NSpid:\s+(\d+)\s+(\d+)$/m.exec(status)?.slice(1)).toEqual([String(this.pid1), '1']);
    expect(readlinkSync(`/proc/${this.pid1}/ns/pid`)).not.toBe(readlinkSync('/proc/self/ns/pid'));
  }

  signal(signal: NodeJS.Signals | number): void {
    this.assertChildNamespacePid1();
    process.kill(this.pid1, signal);
  }

  async waitForExit(timeoutMs: number): Promise<{ code: number | null; signal: string | null }> {
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the namespace did not end')), timeoutMs));
    const result = await Promise.race([this.exited!, timeout]);
    this.unshare = null;
    return result;
  }

  async waitForConsole(pattern: string | RegExp, timeoutMs = 20_000): Promise<string> {
    const matches = (line: string) => (typeof pattern === 'string' ? line.includes(pattern) : pattern.test(line));
    await waitFor(() => this.consoleLines.some(matches), timeoutMs, () => `console line ${pattern}; console: ${this.consoleLines.join(' | ')}`);
    return this.consoleLines.find(matches)!;
  }

  request<T>(request: Record<string, unknown>): Promise<T> {
    return controlRequest<T>(this.socketPath, request);
  }

  /** Ends the namespace: SIGKILL to its init ends every process in it. */
  async kill(): Promise<void> {
    if (this.unshare && this.pid1 > 0) {
      if (this.isChildNamespacePid1()) {
        try {
          process.kill(this.pid1, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      await this.exited;
    }
    this.unshare = null;
  }
}
