/**
 * Runs the bundled mos-init in host mode as a child of the test, with a temp state dir, and
 * talks to its control socket. Tests wait on conditions (polling the control API), never on
 * fixed sleeps.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceStatus } from '../../init/supervisor/types.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const mosInitBundle = path.join(repoRoot, 'dist', 'mos-init.cjs');
export const mosctlBundle = path.join(repoRoot, 'dist', 'mosctl.mjs');
export const notifyClient = path.join(repoRoot, 'test', 'fixtures', 'sd-notify.py');
export const isRoot = process.getuid?.() === 0;

/** The environment for processes under test: no test-runner or CA-bundle leakage. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...extra };
  return env;
}

export interface LogRecord {
  msg: string;
  service?: string;
  from?: string;
  to?: string;
  event?: string;
  [key: string]: unknown;
}

let nextId = 1;

/** One request over a fresh connection; returns the `result` or throws with the error code. */
export function controlRequest<T = unknown>(socketPath: string, request: Record<string, unknown>): Promise<T> {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    const socket = net.createConnection(socketPath);
    let buffer = '';
    socket.on('connect', () => socket.write(`${JSON.stringify({ v: 1, id, ...request })}\n`));
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      const newline = buffer.indexOf('\n');
      if (newline < 0) return;
      const response = JSON.parse(buffer.slice(0, newline));
      socket.destroy();
      if (response.ok) resolve(response.result as T);
      else reject(Object.assign(new Error(response.error.message), { code: response.error.code }));
    });
    socket.on('error', reject);
  });
}

export class HostMos {
  readonly stateDir: string;
  readonly configPath: string;
  readonly socketPath: string;
  readonly records: LogRecord[] = [];
  private child: ChildProcess | null = null;
  private exited: Promise<number | null> | null = null;

  constructor(config: unknown) {
    this.stateDir = mkdtempSync(path.join(os.tmpdir(), 'mos-test-'));
    this.configPath = path.join(this.stateDir, 'services.json');
    this.socketPath = path.join(this.stateDir, 'control.sock');
    writeFileSync(this.configPath, typeof config === 'string' ? config : JSON.stringify(config));
  }

  async start(): Promise<this> {
    const child = spawn(process.execPath, [mosInitBundle, '--host', '--config', this.configPath, '--state-dir', this.stateDir], {
      env: cleanEnv({ MOS_LOG_LEVEL: 'debug' }),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child = child;
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    let pending = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        try {
          this.records.push(JSON.parse(line) as LogRecord);
        } catch {
          this.records.push({ msg: line });
        }
      }
    });
    await waitFor(() => existsSync(this.socketPath), 20_000, 'control socket');
    return this;
  }

  get pid(): number {
    return this.child!.pid!;
  }

  request<T = unknown>(request: Record<string, unknown>): Promise<T> {
    return controlRequest<T>(this.socketPath, request);
  }

  status(service: string): Promise<ServiceStatus> {
    return this.request<ServiceStatus>({ cmd: 'status', service });
  }

  /** Polls the service's status until `predicate` holds; returns that status. */
  async waitForStatus(service: string, predicate: (status: ServiceStatus) => boolean, timeoutMs = 20_000): Promise<ServiceStatus> {
    let last: ServiceStatus | undefined;
    await waitFor(
      async () => {
        last = await this.status(service);
        return predicate(last);
      },
      timeoutMs,
      () => `${service} status; last: ${JSON.stringify(last)}`,
    );
    return last!;
  }

  /** Transition records for one service, as `from->to` strings. */
  transitions(service: string): string[] {
    return this.records.filter((r) => r.service === service && r.from && r.to).map((r) => `${r.from}->${r.to}`);
  }

  /** SIGTERM, then waits for a clean exit. */
  async stop(): Promise<number | null> {
    if (!this.child) return null;
    this.child.kill('SIGTERM');
    const code = await this.exited;
    this.child = null;
    return code;
  }

  async dispose(): Promise<void> {
    if (this.child) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}

export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string | (() => string),
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
