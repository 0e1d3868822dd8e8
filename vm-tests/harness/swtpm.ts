/**
 * swtpm as the guest's TPM 2.0: `swtpm socket --tpm2 --tpmstate dir=D --ctrl type=unixio,path=S
 * --terminate` (it exits when QEMU disconnects). Reuse `stateDir` across boots to keep NV indices.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { CleanupRegistry } from './cleanup.ts';

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

export async function startSwtpm(workDir: string, cleanup: CleanupRegistry, stateDir = path.join(workDir, 'tpm')): Promise<Swtpm> {
  mkdirSync(stateDir, { recursive: true });
  const socket = path.join(workDir, 'swtpm.sock');
  const child = spawn('swtpm', buildSwtpmArgs(stateDir, socket), { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  child.stdout.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  if (!child.pid) throw new Error('swtpm did not start');
  cleanup.process('swtpm', child.pid, exited);
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
