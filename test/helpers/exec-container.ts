/**
 * Set-up shared by the privileged tests that exec into a real crun container (mosctl exec, and
 * exec relayed by mos): a busybox bundle from planBundleConfig, the container run by crun under
 * `unshare -m` with its own cgroup2 mount and `--cgroup-manager=disabled` (and removed again),
 * esbuild bundles of the current source for Node (mosctl, stand-ins), and running a program to its
 * end with its output collected.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { planBundleConfig } from '../../services/bundle.ts';
import { planCrunDelete, planCrunRun, type CrunCommand, type CrunPlanResult } from '../../services/crun.ts';
import { cleanEnv, repoRoot, waitFor } from './host-mos.ts';

export const CRUN = '/usr/bin/crun';
/** Whether crun, busybox (for the rootfs) and unshare (for the mount namespace) are installed. */
export const hasCrunTools = [CRUN, '/bin/busybox', '/usr/bin/unshare'].every((file) => existsSync(file));
/** The container's user namespace: an nsgroup-like id range. */
export const ID_RANGE = { hostId: 200000, size: 65536 };
/**
 * `unshare -m /bin/sh -c NAMESPACE_SCRIPT sh crun run …`: a private mount namespace with a fresh
 * cgroup2 mount, for `--cgroup-manager=disabled` on the host's hybrid cgroups.
 */
export const NAMESPACE_SCRIPT = '/bin/mount --make-rprivate / && /bin/mount -t cgroup2 none /sys/fs/cgroup && exec "$@"';
/** The service's own user in config.json's process (its cwd is /srv), which exec must keep by default. */
export const SERVICE_USER = { uid: 70, gid: 71 };

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The command of a crun plan that must succeed. */
export function plannedCommand(result: CrunPlanResult): CrunCommand {
  if (!result.ok) throw new Error(result.message);
  return result.command;
}

/** Runs a program to its end, feeding `input` on stdin (or /dev/null), collecting its output. */
export function runToEnd(file: string, args: string[], input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: cleanEnv(), stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    if (input !== undefined) child.stdin!.end(input);
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Host pids of processes whose argv is exactly `argv`. */
export function pidsOf(argv: string[]): number[] {
  const wanted = `${argv.join('\0')}\0`;
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8') === wanted) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

export interface BusyboxBundleOptions {
  /** The test's work directory; the bundle is `<work>/bundles/<name>`. */
  work: string;
  name: string;
  /** The container's init: `/bin/busybox sh -c <script>`. */
  script: string;
  /** Commands in the rootfs besides busybox itself, as busybox links (found through PATH=/bin). */
  applets: readonly string[];
}

/**
 * A bundle whose rootfs holds busybox and its applet links, with the config.json planBundleConfig
 * makes: SERVICE_USER in /srv, PATH=/bin and FROM_CONFIG=yes, ID_RANGE, no network. Returns its
 * directory.
 */
export function makeBusyboxBundle({ work, name, script, applets }: BusyboxBundleOptions): string {
  const dir = path.join(work, 'bundles', name);
  const rootfs = path.join(dir, 'rootfs');
  for (const sub of ['bin', 'proc', 'dev', 'sys', 'tmp', 'run', 'srv']) mkdirSync(path.join(rootfs, sub), { recursive: true });
  copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
  for (const applet of applets) symlinkSync('busybox', path.join(rootfs, 'bin', applet));
  const planned = planBundleConfig({
    name,
    rootfs,
    process: { argv: ['/bin/busybox', 'sh', '-c', script], env: { PATH: '/bin', FROM_CONFIG: 'yes' }, cwd: '/srv', uid: SERVICE_USER.uid, gid: SERVICE_USER.gid },
    idRange: ID_RANGE,
    network: 'none',
    netnsPath: null,
    limits: { pids: 64 },
    mounts: [],
    notifySocket: null,
  });
  if (!planned.ok) throw new Error(planned.message);
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(planned.config, null, 2));
  return dir;
}

export interface CrunContainerRun {
  /** `unshare -m … crun run`, which lives as long as the container. */
  child: ChildProcess;
  /** Resolves once the container's init has printed `up`; rejects with crun's output if crun ends first. */
  started: Promise<void>;
}

/**
 * Runs the container `id` from `bundleDir` with `crun run` (state in `stateRoot`, the init's host
 * pid in `pidFile`) in a fresh mount namespace. The bundle's init announces itself with a line
 * `up`. The child is returned at once, so that it can be cleaned up whether or not it starts.
 */
export function runCrunContainer({ stateRoot, bundleDir, id, pidFile }: { stateRoot: string; bundleDir: string; id: string; pidFile: string }): CrunContainerRun {
  const run = plannedCommand(planCrunRun({ crunPath: CRUN, stateRoot, cgroupManager: 'disabled', bundleDir, id, pidFile }));
  const child = spawn('/usr/bin/unshare', ['-m', '/bin/sh', '-c', NAMESPACE_SCRIPT, 'sh', ...run.argv], { env: {}, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  let exited = false;
  child.on('exit', () => (exited = true));
  const started = (async () => {
    await waitFor(() => output.includes('up\n') || exited, 30_000, () => `the container to start: ${JSON.stringify(output)}`);
    if (exited) throw new Error(`crun run ended: ${output}`);
  })();
  return { child, started };
}

/** Removes the container `id` (`crun delete --force`), then kills its `crun run` if still there. */
export async function removeCrunContainer({ stateRoot, id, child }: { stateRoot: string; id: string; child: ChildProcess | undefined }): Promise<void> {
  await runToEnd(CRUN, plannedCommand(planCrunDelete({ crunPath: CRUN, stateRoot, cgroupManager: 'disabled', id, force: true })).argv.slice(1));
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

/** What to bundle: entry files, or source text resolved from a directory. */
export type BundleSource = { entryPoints: string[] } | { stdin: { contents: string; resolveDir: string; loader: 'ts' } };

/**
 * Bundles the current source into one ES module for Node at `outfile`, as scripts/build-bundle.mjs
 * does (dist/ may be older), with a `require` for the CommonJS parts.
 */
export async function bundleForNode(outfile: string, source: BundleSource): Promise<void> {
  await build({
    ...source,
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    banner: { js: "import { createRequire as __mosCreateRequire } from 'node:module';\nconst require = __mosCreateRequire(import.meta.url);" },
    logLevel: 'warning',
  });
}

/** mosctl from the current source (mosctl/cli.ts), bundled for Node at `outfile`. */
export function bundleMosctl(outfile: string): Promise<void> {
  return bundleForNode(outfile, { entryPoints: [path.join(repoRoot, 'mosctl', 'cli.ts')] });
}
