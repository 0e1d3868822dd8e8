/**
 * A software TPM (swtpm) on the host over TCP, one per caller, with tpm2-tools pointed at it as
 * the test oracle. No VM: `swtpm socket --tpm2 --server type=tcp,port=P --ctrl type=tcp,port=P+1
 * --flags not-need-init,startup-clear` on free ports and a temporary state directory.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const SEARCH_PATH = ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'];
const which = (command: string) => SEARCH_PATH.map((dir) => path.join(dir, command)).find((file) => existsSync(file));

/** Why the swtpm tests cannot run here, or null when they can. */
export function swtpmUnavailableReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!which('swtpm')) return 'swtpm is not installed (apt-get install swtpm)';
  if (!which('tpm2_nvread')) return 'tpm2-tools is not installed (apt-get install tpm2-tools)';
  return null;
}

export interface ToolResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface Swtpm {
  port: number;
  /** The TCTI string for mos's addon (and for tpm2-tools, which use the same syntax). */
  tcti: string;
  stateDir: string;
  /** Runs a tpm2-tools command against this TPM; throws with its stderr when it fails. */
  tool(command: string, args: string[]): string;
  /** Runs a tpm2-tools command and returns its outcome, failed or not. */
  tryTool(command: string, args: string[]): ToolResult;
  stop(): Promise<void>;
}

/** Two consecutive free TCP ports on 127.0.0.1 (swtpm takes P for data and P+1 for control). */
async function freePortPair(): Promise<number> {
  const listen = (port: number) =>
    new Promise<net.Server | null>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(null));
      server.listen(port, '127.0.0.1', () => resolve(server));
    });
  const close = (server: net.Server) => new Promise<void>((resolve) => server.close(() => resolve()));
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await listen(0);
    if (!first) continue;
    const port = (first.address() as net.AddressInfo).port;
    const second = port < 65535 ? await listen(port + 1) : null;
    await close(first);
    if (second) {
      await close(second);
      return port;
    }
  }
  throw new Error('no two consecutive free TCP ports on 127.0.0.1');
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The environment for swtpm and tpm2-tools: no CA bundle or test-runner variables. */
function toolEnv(tcti: string): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? SEARCH_PATH.join(':'), LC_ALL: 'C', TPM2TOOLS_TCTI: tcti };
}

export async function startSwtpm(): Promise<Swtpm> {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'mos-swtpm-'));
  let lastError = '';
  // A port found free can be taken before swtpm binds it: try again with another pair.
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePortPair();
    const child: ChildProcess = spawn(
      which('swtpm')!,
      [
        'socket',
        '--tpm2',
        '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`,
        '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
        '--tpmstate', `dir=${stateDir}`,
        '--flags', 'not-need-init,startup-clear',
      ],
      { env: toolEnv(''), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    let exited = false;
    const exitedPromise = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));

    // Ready when the control port accepts (a connection there uses no TPM state).
    const deadline = Date.now() + 10_000;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      if (await canConnect(port + 1)) {
        ready = true;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (!ready) {
      if (!exited) child.kill('SIGKILL');
      await exitedPromise;
      lastError = stderr.trim() || 'swtpm did not listen within 10 s';
      continue;
    }

    const tcti = `swtpm:host=127.0.0.1,port=${port}`;
    const tryTool = (command: string, args: string[]): ToolResult => {
      try {
        const stdout = execFileSync(which(command) ?? command, args, { env: toolEnv(tcti), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
        return { status: 0, stdout, stderr: '' };
      } catch (error) {
        const failed = error as { status?: number; stdout?: string; stderr?: string };
        return { status: failed.status ?? -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
      }
    };
    return {
      port,
      tcti,
      stateDir,
      tryTool,
      tool(command, args) {
        const result = tryTool(command, args);
        if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr.trim()}`);
        return result.stdout;
      },
      async stop() {
        if (!exited) child.kill('SIGTERM');
        await exitedPromise;
        rmSync(stateDir, { recursive: true, force: true });
      },
    };
  }
  rmSync(stateDir, { recursive: true, force: true });
  throw new Error(`swtpm did not start: ${lastError}`);
}
