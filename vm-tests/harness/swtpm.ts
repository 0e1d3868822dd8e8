/**
 * swtpm as the guest's TPM 2.0: `swtpm socket --tpm2 --tpmstate dir=D --ctrl type=unixio,path=S
 * --terminate` (it exits when QEMU disconnects). Reuse `stateDir` across boots to keep NV indices:
 * a later swtpm on the same state dir first waits for the earlier one to exit (swtpm locks it).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { killPid, type CleanupRegistry } from './cleanup.ts';

export interface Swtpm {
  pid: number;
  socket: string;
  stateDir: string;
  exited: Promise<number | null>;
  log: string[];
}

/** Pure: swtpm's argv. */
export function buildSwtpmArgs(stateDir: string, socket: string): string[] {
  return ['socket', '--tpm2', '--tpmstate', `dir=${stateDir}`, '--ctrl', `type=unixio,path=${socket}`, '--terminate'];
}

/** The swtpm last started on each state dir (by resolved path) and its exit. */
const byStateDir = new Map<string, { pid: number; exited: Promise<unknown> }>();

/** Waits for the swtpm last started on `stateDir` to exit (it does once its QEMU is gone); kills it after `timeoutMs`. */
export async function releaseStateDir(stateDir: string, timeoutMs = 10_000): Promise<void> {
  const previous = byStateDir.get(path.resolve(stateDir));
  if (!previous) return;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
  try {
    if ((await Promise.race([previous.exited.then(() => 'gone' as const), timeout])) === 'timeout') {
      killPid(previous.pid, 'SIGKILL');
      await previous.exited;
    }
  } finally {
    clearTimeout(timer);
  }
}

export async function startSwtpm(workDir: string, cleanup: CleanupRegistry, stateDir = path.join(workDir, 'tpm')): Promise<Swtpm> {
  await releaseStateDir(stateDir);
  mkdirSync(stateDir, { recursive: true });
  const socket = path.join(workDir, 'swtpm.sock');
  const child = spawn('swtpm', buildSwtpmArgs(stateDir, socket), { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  child.stdout.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  if (!child.pid) throw new Error('swtpm did not start');
  cleanup.process('swtpm', child.pid, exited);
  byStateDir.set(path.resolve(stateDir), { pid: child.pid, exited });
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket)) {
    if (gone) throw new Error(`swtpm exited before creating ${socket}: ${log.join('')}`);
    if (Date.now() > deadline) throw new Error(`swtpm did not create ${socket} within 10 s: ${log.join('')}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { pid: child.pid, socket, stateDir, exited, log };
}
