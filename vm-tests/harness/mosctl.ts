/** Runs the repo's own `dist/mosctl.mjs` against a guest's control socket, with a timeout. */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './images.ts';

export const mosctlBundle = path.join(repoRoot, 'dist', 'mosctl.mjs');

export interface MosctlResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The command as typed, for messages. */
  command: string;
}

/** The environment for mosctl: no NODE_EXTRA_CA_CERTS (adds ~70 ms to every Node start). */
export function mosctlEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const clean: NodeJS.ProcessEnv = { ...env };
  delete clean.NODE_EXTRA_CA_CERTS;
  delete clean.MOSCTL_SOCKET;
  return clean;
}

export function runMosctl(socket: string, args: readonly string[], timeoutMs = 30_000): Promise<MosctlResult> {
  if (!existsSync(mosctlBundle)) throw new Error(`${mosctlBundle} is missing: run npm run build:bundle`);
  const argv = [mosctlBundle, '--socket', socket, ...args];
  const command = `mosctl --socket ${socket} ${args.join(' ')}`;
  return new Promise((resolve) => {
    execFile(process.execPath, argv, { env: mosctlEnv(), timeout: timeoutMs, killSignal: 'SIGKILL' }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : error.killed ? 124 : 1) : 0;
      const note = error?.killed ? `\n(mosctl killed after ${timeoutMs} ms)` : '';
      resolve({ code, stdout, stderr: stderr + note, command });
    });
  });
}
