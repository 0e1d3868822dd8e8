/**
 * `mosctl exec` end to end with the real crun: a container service runs (crun 1.8, a bundle from
 * planBundleConfig, in a user namespace with an nsgroup-like id range), a control server serves
 * `exec-target` over a real unix socket with the provider PID 1 uses (resolveExecTarget plus
 * readBundleProcess on the real config.json), and mosctl, bundled from the current source and run
 * as its own process, asks for the target and runs `crun exec` with its own stdio.
 *
 * crun runs the container as in services-crun-runner.test.ts: `unshare -m` with a fresh cgroup2
 * mount and `--cgroup-manager=disabled` (the host's hybrid cgroups). mosctl's `crun exec` runs
 * from the host's own mount namespace: with the cgroup manager disabled it needs only the state
 * in `--root` and the container's namespaces.
 *
 * Nothing here is timed: tests wait for events (a line, a file, an exit) with generous limits.
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlError, type SupervisorApi } from '../../init/control/api.ts';
import { readBundleProcess, resolveExecTarget, type ExecContainer } from '../../init/control/exec-target.ts';
import { startControlServer, type ControlServer } from '../../init/control/server.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import { loadNative } from '../../native/index.ts';
import { crunContainerId, parseCrunPidFile } from '../../services/crun.ts';
import { bundleMosctl, CRUN, hasCrunTools, makeBusyboxBundle, removeCrunContainer, runCrunContainer, runToEnd } from '../helpers/exec-container.ts';
import { isRoot, waitFor } from '../helpers/host-mos.ts';
import { makeStatus } from '../helpers/specs.ts';

const hasScript = existsSync('/usr/bin/script');

/** Commands in the rootfs besides busybox itself, as busybox links (found through PATH=/bin). */
const APPLETS = ['sh', 'cat', 'echo', 'env', 'id', 'readlink', 'tty', 'pwd', 'sleep', 'true'];

describe.skipIf(!isRoot || !hasCrunTools)('mosctl exec into a crun container', () => {
  let work: string;
  let mosctlBundle: string;
  let socketPath: string;
  let stateRoot: string;
  let server: ControlServer | undefined;
  let crunRun: ChildProcess | undefined;
  /** The container init's host pid (crun's --pid-file). */
  let initPid = 0;
  const statuses = new Map<string, ServiceStatus>();
  const containers = new Map<string, ExecContainer>();

  /** A bundle whose rootfs holds busybox and its applet links. */
  const makeBundle = (name: string, script: string) => makeBusyboxBundle({ work, name, script, applets: APPLETS });

  function containerOf(name: string, bundleDir: string): ExecContainer {
    return { id: crunContainerId(name), stateRoot, crunPath: CRUN, cgroupManager: 'disabled', process: () => readBundleProcess(bundleDir) };
  }

  /** What PID 1 serves, over a fake supervisor: statuses and containers from the maps above. */
  const api: SupervisorApi = {
    info: () => ({ mode: 'pid1', pid: process.pid, startedAt: 0, health: 'ok', reason: null, configPath: null }),
    list: () => [...statuses.values()],
    status: (name) => {
      const status = statuses.get(name);
      if (!status) throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
      return status;
    },
    start: () => Promise.reject(new Error('unused')),
    stop: () => Promise.reject(new Error('unused')),
    restart: () => Promise.reject(new Error('unused')),
    logs: () => [],
    followLogs: () => () => {},
  };

  const mosctl = (args: string[], input?: string) => runToEnd(process.execPath, [mosctlBundle, '--socket', socketPath, ...args], input);

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-mosctl-exec-'));
    // The container's root is "other" to the host's files: the path to the rootfs must be searchable.
    chmodSync(work, 0o755);
    stateRoot = path.join(work, 'crun');
    socketPath = path.join(work, 'run', 'control.sock');

    // mosctl from the current source, bundled as scripts/build-bundle.mjs does (dist/ may be older).
    mosctlBundle = path.join(work, 'mosctl.mjs');
    await bundleMosctl(mosctlBundle);

    // The container service `app`: running, its init printing `up` and sleeping.
    const bundleDir = makeBundle('app', 'echo up; exec /bin/busybox sleep 100000');
    const pidFile = path.join(work, 'app.pid');
    const container = runCrunContainer({ stateRoot, bundleDir, id: crunContainerId('app'), pidFile });
    crunRun = container.child;
    await container.started;
    await waitFor(() => existsSync(pidFile) && (initPid = parseCrunPidFile(readFileSync(pidFile, 'utf8')) ?? 0) !== 0, 30_000, `a pid in ${pidFile}`);
    statuses.set('app', makeStatus({ name: 'app', state: 'running', pid: crunRun.pid! }));
    containers.set('app', containerOf('app', bundleDir));

    // `idle`: a container service that is stopped. `ghost`: one mos believes runs but crun has
    // no such container (it ended between the status and the exec). `tool`: a host process.
    const idleBundle = makeBundle('idle', 'true');
    statuses.set('idle', makeStatus({ name: 'idle', state: 'stopped', pid: null }));
    containers.set('idle', containerOf('idle', idleBundle));
    statuses.set('ghost', makeStatus({ name: 'ghost', state: 'running', pid: 999_999 }));
    containers.set('ghost', containerOf('ghost', makeBundle('ghost', 'true')));
    statuses.set('tool', makeStatus({ name: 'tool', state: 'running', pid: process.pid }));

    const native = loadNative();
    server = await startControlServer({
      sockets: native,
      path: socketPath,
      api,
      peerCredentials: (fd) => native.peerCredentials(fd),
      allowedUids: [0],
      execTarget: (name) => resolveExecTarget({ status: api.status(name), container: containers.get(name) ?? null }),
    });
  });

  afterAll(async () => {
    await server?.close();
    if (stateRoot) await removeCrunContainer({ stateRoot, id: crunContainerId('app'), child: crunRun });
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("runs the command in the container with pipes: output and stdin pass, as config.json's user, in its cwd and environment", async () => {
    const result = await mosctl(['exec', 'app', '--', 'sh', '-c', 'read line; echo "got [$line]"; pwd; id -u; id -g; echo "FROM_CONFIG=$FROM_CONFIG"; echo oops >&2'], 'hello\n');
    expect(result).toEqual({ code: 0, signal: null, stdout: 'got [hello]\n/srv\n70\n71\nFROM_CONFIG=yes\n', stderr: 'oops\n' });
  });

  it("exits with the command's status: 0, 3, 255 for a program not found, 128+n for a signal", async () => {
    expect((await mosctl(['exec', 'app', '--', 'true'])).code).toBe(0);
    expect((await mosctl(['exec', 'app', '--', 'sh', '-c', 'exit 3'])).code).toBe(3);
    const missing = await mosctl(['exec', 'app', '--', 'no-such-program']);
    expect(missing.code).toBe(255);
    expect(missing.stderr).toContain('no-such-program');
    expect(missing.stderr).toContain('not found');
    expect((await mosctl(['exec', 'app', '--', 'sh', '-c', 'kill -KILL $$'])).code).toBe(137);
  });

  it("runs inside the container's user namespace, with the nsgroup's id map, and its PID namespace", async () => {
    const result = await mosctl(['exec', 'app', '--', 'sh', '-c', 'cat /proc/self/uid_map; readlink /proc/self/ns/user; readlink /proc/self/ns/pid; echo "pid=$$"']);
    expect(result.code).toBe(0);
    const [uidMap, userNs, pidNs, pid] = result.stdout.trim().split('\n');
    expect(uidMap!.trim().split(/\s+/)).toEqual(['0', '200000', '65536']);
    expect(readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/)).toEqual(['0', '0', '4294967295']);
    // The very namespaces of the container's init, which are not the host's.
    expect(userNs).toBe(readlinkSync(`/proc/${initPid}/ns/user`));
    expect(pidNs).toBe(readlinkSync(`/proc/${initPid}/ns/pid`));
    expect(userNs).not.toBe(readlinkSync('/proc/self/ns/user'));
    expect(pidNs).not.toBe(readlinkSync('/proc/self/ns/pid'));
    // In the container's PID namespace, where the init is 1: the shell's pid is a small number.
    expect(Number(pid!.slice('pid='.length))).toBeLessThan(100);
  });

  it("-e adds to config.json's environment rather than replacing it; -w and -u are passed on", async () => {
    const env = await mosctl(['exec', '-e', 'EXTRA=1', '-e', 'FROM_CONFIG=overridden', 'app', '--', 'env']);
    expect(env.code).toBe(0);
    const vars = env.stdout.trim().split('\n').sort();
    expect(vars).toContain('EXTRA=1');
    expect(vars).toContain('FROM_CONFIG=overridden');
    expect(vars).toContain('PATH=/bin');
    const where = await mosctl(['exec', '-w', '/tmp', '-u', '0:0', 'app', '--', 'sh', '-c', 'pwd; id -u; id -g']);
    expect(where).toMatchObject({ code: 0, stdout: '/tmp\n0\n0\n' });
  });

  it.skipIf(!hasScript)('gives the command a terminal when mosctl has one', async () => {
    // script(1) runs mosctl on a pseudo-terminal; -e passes the exit status through.
    const line = [process.execPath, mosctlBundle, '--socket', socketPath, 'exec', 'app', '--', 'sh', '-c', 'tty; echo "TERM=$TERM"; exit 4'].map((arg) => `'${arg}'`).join(' ');
    const result = await runToEnd('/usr/bin/script', ['-qec', line, '/dev/null']);
    expect(result.code).toBe(4);
    expect(result.stdout).toMatch(/\/dev\/pts\/\d+\r?\n/);
    expect(result.stdout).toMatch(/TERM=\S+/);
    const piped = await mosctl(['exec', 'app', '--', 'tty']);
    expect(piped.stdout).toBe('not a tty\n');
  });

  it('refuses clearly what it cannot enter: a host process, a stopped service, an unknown one', async () => {
    const tool = await mosctl(['exec', 'tool', '--', 'true']);
    expect(tool).toMatchObject({ code: 1, stdout: '' });
    expect(tool.stderr).toBe("mosctl: service tool is not a container (it runs as a plain host process): mosctl exec only enters container services' namespaces\n");
    const idle = await mosctl(['exec', 'idle', '--', 'true']);
    expect(idle).toMatchObject({ code: 1, stderr: 'mosctl: service idle is not running (stopped): there is no container to run a command in\n' });
    const unknown = await mosctl(['exec', 'nope', '--', 'true']);
    expect(unknown).toMatchObject({ code: 5, stderr: 'mosctl: unknown service "nope"\n' });
  });

  it("a container that is gone by the time crun looks fails with crun's own message", async () => {
    const ghost = await mosctl(['exec', 'ghost', '--', 'true']);
    expect(ghost.code).toBe(1);
    expect(ghost.stderr).toContain('mos-ghost');
  });

  it('the container is still the one it was: exec left it running', () => {
    expect(crunRun!.exitCode).toBeNull();
    expect(existsSync(`/proc/${initPid}`)).toBe(true);
  });
});
