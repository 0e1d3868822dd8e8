/**
 * What mos relies on when crun is a service's main process (docs/crun.md), proved with the real
 * crun 1.8 and the command lines of services/crun.ts: exit codes, signal forwarding, where the
 * container's init lives (its own session), the orphan a SIGKILLed crun leaves and its cleanup,
 * stdio, crun's sd_notify proxy against a socket mos binds itself, and `crun exec` with pipes.
 *
 * Every container runs in a user namespace with an nsgroup-like id range, from a config.json made
 * by planBundleConfig. Every crun command runs as `unshare -m sh -c 'mount…; exec crun …'`: a
 * private mount namespace with a fresh cgroup2 (FACTS: the host's hybrid cgroups make crun refuse
 * otherwise). unshare and sh exec in place, so a spawned child's pid is crun's pid.
 *
 * Nothing here is timed: tests wait for events (a line, a file, an exit) with generous limits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planBundleConfig, type BundleInput } from '../../services/bundle.ts';
import {
  crunContainerId,
  interpretCrunExit,
  parseCrunPidFile,
  planCrunDelete,
  planCrunExec,
  planCrunKill,
  planCrunRun,
  type CrunCommand,
  type CrunGlobalInput,
  type CrunPlanResult,
} from '../../services/crun.ts';
import { notifyClient, waitFor } from '../helpers/host-mos.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare', '/usr/bin/python3'].every((file) => existsSync(file));

const ID_RANGE = { hostId: 200000, size: 65536 };
const NAMESPACE_SCRIPT = '/bin/mount --make-rprivate / && /bin/mount -t cgroup2 none /sys/fs/cgroup && exec "$@"';

/** A receiver like mos's notify socket: SO_PASSCRED, passed fds closed at once, one JSON line per datagram. */
const RECEIVER = String.raw`
import array, json, os, select, socket, sys
path = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o666)  # the container's root is uid 200000 on the host: it needs write permission
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print(json.dumps({"bound": path}), flush=True)
def receive():
    data, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 16))
    pid = uid = gid = -1
    fds = []
    for level, kind, payload in ancillary:
        if kind == socket.SCM_CREDENTIALS:
            pid, uid, gid = array.array("i", payload[:12])
        elif kind == socket.SCM_RIGHTS:
            fds = list(array.array("i", payload[: len(payload) - len(payload) % 4]))
    try:
        session = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[3])
    except Exception:
        session = -1
    for fd in fds:
        os.close(fd)  # crun's BARRIER=1 (and sd-notify.py's) wait for this close
    print(json.dumps({"pid": pid, "uid": uid, "session": session, "fds": len(fds), "data": data.decode()}), flush=True)
poller = select.poll()
poller.register(sock, select.POLLIN)
poller.register(sys.stdin, select.POLLIN | select.POLLHUP)
while True:
    events = dict(poller.poll())
    if sock.fileno() in events:
        receive()
    elif sys.stdin.fileno() in events:
        sock.setblocking(False)  # stdin closed: drain what is queued, then stop
        try:
            while True:
                receive()
        except BlockingIOError:
            break
`;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * A spawned process's output as it arrives, and its exit. `exited` is the process's own end;
 * `closed` also waits for its stdout and stderr to close, which an orphaned container holding
 * them delays indefinitely.
 */
class Proc {
  stdout = '';
  stderr = '';
  exit: Exit | null = null;
  readonly exited: Promise<Exit>;
  readonly closed: Promise<Exit>;

  constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (this.stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.exited = new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    this.closed = new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code, signal }));
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  async line(pattern: RegExp): Promise<RegExpMatchArray> {
    await waitFor(() => pattern.test(this.stdout) || this.exit !== null, 15_000, () => `${pattern} in ${JSON.stringify(this.stdout)}`);
    const match = this.stdout.match(pattern);
    if (!match) throw new Error(`exited (${JSON.stringify(this.exit)}) before ${pattern}; stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)}`);
    return match;
  }
}

function command(result: CrunPlanResult): CrunCommand {
  if (!result.ok) throw new Error(result.message);
  return result.command;
}

/** Starts a planned crun command in its own mount namespace; the child's pid is crun's. */
function start(planned: CrunCommand, stdin: 'pipe' | 'ignore' = 'ignore'): Proc {
  const env = Object.fromEntries(planned.env.map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]));
  const child = spawn('/usr/bin/unshare', ['-m', '/bin/sh', '-c', NAMESPACE_SCRIPT, 'sh', ...planned.argv], { env, stdio: [stdin, 'pipe', 'pipe'] });
  return new Proc(child);
}

async function runToEnd(planned: CrunCommand, input?: string): Promise<Proc> {
  const proc = start(planned, input === undefined ? 'ignore' : 'pipe');
  if (input !== undefined) proc.child.stdin!.end(input);
  await proc.closed;
  return proc;
}

/** The state letter, process group and session of a pid (from /proc/PID/stat), or null once it is gone. */
function procStat(pid: number): { state: string; pgrp: number; session: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0]!, pgrp: Number(fields[2]), session: Number(fields[3]) };
}

const isRunning = (pid: number) => {
  const stat = procStat(pid);
  return stat !== null && stat.state !== 'Z';
};

describe.skipIf(!isRoot || !hasTools)('crun as the main process of a service', () => {
  let work: string;
  let global: CrunGlobalInput;
  const started: Proc[] = [];
  const ids = new Set<string>();

  beforeAll(() => {
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-crun-runner-'));
    // The container's root is "other" to the host's files: the path to each rootfs must be searchable.
    chmodSync(work, 0o755);
    global = { crunPath: '/usr/bin/crun', stateRoot: path.join(work, 'state'), cgroupManager: 'disabled' };
  });

  afterAll(async () => {
    for (const id of ids) await runToEnd(command(planCrunDelete({ ...global, id, force: true })));
    for (const proc of started) if (proc.exit === null) proc.child.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  });

  /** A bundle whose rootfs holds busybox (and, with `python`, the host's /usr read-only for python3). */
  function bundle(name: string, script: string, options: { python?: boolean; mounts?: BundleInput['mounts']; notifySocket?: string; argv?: string[] } = {}): string {
    const dir = path.join(work, 'bundles', name);
    const rootfs = path.join(dir, 'rootfs');
    // Every mount point must exist: the container's root (uid 200000) cannot create one in a rootfs owned by host root.
    for (const sub of ['bin', 'proc', 'dev', 'sys', 'tmp', 'run', 'usr', 'fixtures', ...(options.mounts ?? []).map((m) => m.destination.slice(1))]) {
      mkdirSync(path.join(rootfs, sub), { recursive: true });
    }
    copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
    const mounts: BundleInput['mounts'] = [...(options.mounts ?? [])];
    if (options.python) {
      for (const lib of ['lib', 'lib64']) symlinkSync(`usr/${lib}`, path.join(rootfs, lib));
      mounts.push({ source: '/usr', destination: '/usr', readOnly: true }, { source: path.dirname(notifyClient), destination: '/fixtures', readOnly: true });
    }
    const planned = planBundleConfig({
      name,
      rootfs,
      process: { argv: options.argv ?? ['/bin/busybox', 'sh', '-c', script], env: { FROM_CONFIG: 'yes' }, cwd: '/', uid: 0, gid: 0 },
      idRange: ID_RANGE,
      network: 'none',
      netnsPath: null,
      limits: { pids: 64 },
      mounts,
      notifySocket: options.notifySocket ?? null,
    });
    if (!planned.ok) throw new Error(planned.message);
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify(planned.config, null, 2));
    return dir;
  }

  function run(name: string, bundleDir: string, extra: { notifySocket?: string; pidFile?: string } = {}): CrunCommand {
    const id = crunContainerId(name);
    ids.add(id);
    return command(planCrunRun({ ...global, bundleDir, id, ...extra }));
  }

  function startRun(planned: CrunCommand): Proc {
    const proc = start(planned);
    started.push(proc);
    return proc;
  }

  async function readPid(file: string): Promise<number> {
    let pid: number | null = null;
    await waitFor(() => existsSync(file) && (pid = parseCrunPidFile(readFileSync(file, 'utf8'))) !== null, 15_000, `a pid in ${file}`);
    return pid!;
  }

  async function startReceiver(socketPath: string): Promise<Proc> {
    const script = path.join(work, 'receiver.py');
    writeFileSync(script, RECEIVER);
    const proc = new Proc(spawn('/usr/bin/python3', [script, socketPath], { stdio: ['pipe', 'pipe', 'pipe'] }));
    started.push(proc);
    await proc.line(/"bound"/);
    return proc;
  }

  /** Everything the receiver got, once whatever is queued has been read. */
  async function received(receiver: Proc): Promise<{ pid: number; uid: number; session: number; fds: number; data: string }[]> {
    receiver.child.stdin!.end();
    await receiver.closed;
    return receiver.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
      .filter((record) => record.bound === undefined);
  }

  it("exits with the container's exit code", async () => {
    for (const code of [0, 3]) {
      const proc = await runToEnd(run(`exit-${code}`, bundle(`exit-${code}`, `exit ${code}`)));
      expect(proc.exit).toEqual({ code, signal: null });
      expect(interpretCrunExit(proc.exit!.code, proc.exit!.signal)).toEqual({ code, signal: null, crunKilled: false });
    }
  });

  it("forwards signals to the container's init, which runs in its own session; SIGKILL to that pid is the hard stop", async () => {
    const pidFile = path.join(work, 'signals.pid');
    const script = 'for s in HUP INT USR1 WINCH; do trap "echo got-$s" $s; done; echo up; while true; do /bin/busybox sleep 0.05; done';
    const crun = startRun(run('signals', bundle('signals', script), { pidFile }));
    await crun.line(/^up$/m);
    const init = await readPid(pidFile);

    for (const signal of ['SIGHUP', 'SIGINT', 'SIGUSR1'] as const) {
      crun.child.kill(signal);
      await crun.line(new RegExp(`^got-${signal.slice(3)}$`, 'm'));
    }

    // The init has no SIGTERM handler: as PID 1 of its namespace it never sees the signal. crun
    // takes pending signals lowest number first, so once the later WINCH (28) has arrived the
    // TERM (15) was forwarded before it, and dropped.
    crun.child.kill('SIGTERM');
    crun.child.kill('SIGWINCH');
    await crun.line(/^got-WINCH$/m);
    expect(crun.exit).toBeNull();
    expect(isRunning(init)).toBe(true);

    // crun made the init a session leader: signals to crun's process group never reach it.
    const initStat = procStat(init)!;
    expect(initStat.session).toBe(init);
    expect(initStat.pgrp).toBe(init);
    expect(procStat(crun.pid)!.session).not.toBe(init);

    process.kill(init, 'SIGKILL');
    const exit = await crun.exited;
    expect(exit).toEqual({ code: 137, signal: null });
    expect(interpretCrunExit(exit.code, exit.signal)).toEqual({ code: null, signal: 'SIGKILL', crunKilled: false });
    // crun removed the container's state on its way out.
    expect(existsSync(path.join(global.stateRoot, crunContainerId('signals')))).toBe(false);
  });

  it("crun kill reaches an init that handles the signal; crun exits with the init's code", async () => {
    const crun = startRun(run('polite', bundle('polite', 'trap "echo stopping; exit 0" TERM; echo up; while true; do /bin/busybox sleep 0.05; done')));
    await crun.line(/^up$/m);
    const kill = await runToEnd(command(planCrunKill({ ...global, id: crunContainerId('polite'), signal: 'SIGTERM' })));
    expect(kill.exit).toEqual({ code: 0, signal: null });
    expect(await crun.exited).toEqual({ code: 0, signal: null });
    expect(crun.stdout).toMatch(/^stopping$/m);
  });

  it('a SIGKILLed crun leaves its container running and its id taken, until delete --force', async () => {
    const pidFile = path.join(work, 'orphan.pid');
    const crun = startRun(run('orphan', bundle('orphan', 'echo up; exec /bin/busybox sleep 1000'), { pidFile }));
    await crun.line(/^up$/m);
    const init = await readPid(pidFile);

    crun.child.kill('SIGKILL');
    const exit = await crun.exited;
    expect(interpretCrunExit(exit.code, exit.signal)).toEqual({ code: null, signal: 'SIGKILL', crunKilled: true });
    expect(isRunning(init)).toBe(true);

    // The id is still taken: the next run of the service fails before anything runs.
    const again = await runToEnd(run('orphan', bundle('orphan-again', 'echo second')));
    expect(again.exit).toEqual({ code: 1, signal: null });
    expect(again.stderr).toMatch(/container `mos-orphan` already exists/);
    expect(again.stdout).toBe('');

    const del = await runToEnd(command(planCrunDelete({ ...global, id: crunContainerId('orphan'), force: true })));
    expect(del.exit).toEqual({ code: 0, signal: null });
    await waitFor(() => !isRunning(init), 15_000, `the orphaned init ${init} to die`);

    // Idempotent: nothing left to delete is no error, and the id is free again.
    const delAgain = await runToEnd(command(planCrunDelete({ ...global, id: crunContainerId('orphan'), force: true })));
    expect(delAgain.exit).toEqual({ code: 0, signal: null });
    const fresh = await runToEnd(run('orphan', path.join(work, 'bundles', 'orphan-again')));
    expect(fresh.exit).toEqual({ code: 0, signal: null });
    expect(fresh.stdout).toBe('second\n');
  });

  it("gives the container crun's own stdin, stdout and stderr, with no terminal", async () => {
    const script = 'echo out; echo err >&2; /bin/busybox tty; for fd in 0 1 2; do /bin/busybox readlink /proc/self/fd/$fd; done; read line; echo "stdin=$line"; env';
    const proc = start(run('stdio', bundle('stdio', script)), 'pipe');
    started.push(proc);
    const [, ...inside] = (await proc.line(/^not a tty\n(.+)\n(.+)\n(.+)\n/m))!;
    // The very objects crun holds (here Node's socketpairs; the supervisor's pipes alike).
    expect(inside).toEqual([0, 1, 2].map((fd) => readlinkSync(`/proc/${proc.pid}/fd/${fd}`)));
    proc.child.stdin!.end('hello\n');
    expect(await proc.closed).toEqual({ code: 0, signal: null });
    const lines = proc.stdout.split('\n');
    expect(lines[0]).toBe('out');
    expect(lines[5]).toBe('stdin=hello');
    expect(proc.stderr).toBe('err\n');
    // The container's environment is config.json's (crun adds HOME); crun's own is not passed on.
    const shellOwn = /^(PWD|SHLVL)=/;
    expect(lines.filter((line) => /^[A-Z_]+=/.test(line) && !shellOwn.test(line)).sort()).toEqual(['FROM_CONFIG=yes', 'HOME=/', expect.stringMatching(/^PATH=/)]);
  });

  it("crun's notify proxy forwards a bare READY=1 per READY datagram, sent by crun itself, and nothing else", async () => {
    const socketPath = path.join(work, 'proxy.sock');
    const receiver = await startReceiver(socketPath);
    const notify = (...fields: string[]) => `/usr/bin/python3 /fixtures/${path.basename(notifyClient)} ${fields.join(' ')}`;
    const script = [notify('STATUS=starting', 'WATCHDOG=1'), notify('READY=1', 'STATUS=ready', 'MAINPID=1'), notify('WATCHDOG=1', 'STATUS=after'), notify('READY=1'), 'echo "NOTIFY_SOCKET=$NOTIFY_SOCKET"'].join(' && ');
    const dir = bundle('proxy', script, { python: true });
    // crun mounts its socket's directory at the host socket's path inside the container; in a
    // user namespace it cannot create that mount point in a rootfs owned by host root.
    mkdirSync(path.join(dir, 'rootfs', socketPath), { recursive: true });

    const crun = await runToEnd(run('proxy', dir, { notifySocket: socketPath }));
    expect(crun.exit).toEqual({ code: 0, signal: null });
    expect(crun.stdout).toBe(`NOTIFY_SOCKET=${socketPath}/notify\n`);

    const messages = await received(receiver);
    // STATUS=, WATCHDOG=1, MAINPID= are gone, before and after readiness; each READY=1 comes with a barrier.
    expect(messages.map((m) => m.data)).toEqual(['READY=1', 'BARRIER=1', 'READY=1', 'BARRIER=1']);
    for (const message of messages) expect(message).toMatchObject({ pid: crun.pid, uid: 0 });
    expect(messages.map((m) => m.fds)).toEqual([0, 1, 0, 1]);
  });

  it('a socket bind-mounted into the container gets every message, from the sender in the container', async () => {
    const socketDir = path.join(work, 'direct');
    mkdirSync(socketDir);
    const receiver = await startReceiver(path.join(socketDir, 'notify.sock'));
    const pidFile = path.join(work, 'direct.pid');
    const client = `/fixtures/${path.basename(notifyClient)}`;
    const dir = bundle('direct', '', {
      python: true,
      mounts: [{ source: socketDir, destination: '/run/mos-notify', readOnly: true }],
      notifySocket: '/run/mos-notify/notify.sock',
      // A child of the init sends first, then the init (exec'd python) itself.
      argv: ['/bin/busybox', 'sh', '-c', `/usr/bin/python3 ${client} STATUS=from-a-child && exec /usr/bin/python3 ${client} READY=1 STATUS=ready WATCHDOG=1`],
    });

    const crun = await runToEnd(run('direct', dir, { pidFile }));
    expect(crun.exit).toEqual({ code: 0, signal: null });
    const init = parseCrunPidFile(readFileSync(pidFile, 'utf8'))!;

    const messages = (await received(receiver)).filter((m) => m.data !== 'BARRIER=1');
    expect(messages.map((m) => m.data)).toEqual(['STATUS=from-a-child', 'READY=1\nSTATUS=ready\nWATCHDOG=1']);
    // Host pids and host uids: the child is not the init, but it is in the init's session.
    expect(messages[0]).toMatchObject({ uid: ID_RANGE.hostId, session: init });
    expect(messages[0]!.pid).not.toBe(init);
    expect(messages[0]!.pid).not.toBe(crun.pid);
    expect(messages[1]).toMatchObject({ uid: ID_RANGE.hostId, pid: init, session: init });
  });

  it('crun exec runs a command in the container with pipes and passes its exit status', async () => {
    const crun = startRun(run('exec', bundle('exec', 'echo up; exec /bin/busybox sleep 1000')));
    await crun.line(/^up$/m);
    const id = crunContainerId('exec');

    const script = 'read line; echo "stdin=$line"; echo err >&2; /bin/busybox cat /proc/self/uid_map; echo "pid=$$ FOO=$FOO FROM_CONFIG=$FROM_CONFIG"; /bin/busybox tty; exit 7';
    const configEnv = (JSON.parse(readFileSync(path.join(work, 'bundles', 'exec', 'config.json'), 'utf8')) as { process: { env: string[] } }).process.env;
    const exec = await runToEnd(command(planCrunExec({ ...global, id, argv: ['/bin/busybox', 'sh', '-c', script], env: { FOO: 'bar' }, configEnv })), 'hello\n');
    expect(exec.exit).toEqual({ code: 7, signal: null });
    const lines = exec.stdout.split('\n');
    expect(lines[0]).toBe('stdin=hello');
    // The container's user namespace and id map, its PID namespace, its environment plus --env.
    expect(lines[1]!.trim().split(/\s+/)).toEqual(['0', '200000', '65536']);
    expect(lines[2]).toMatch(/^pid=\d+ FOO=bar FROM_CONFIG=yes$/);
    expect(Number(lines[2]!.match(/^pid=(\d+)/)![1])).toBeLessThan(64);
    expect(lines[3]).toBe('not a tty');
    expect(exec.stderr).toBe('err\n');

    const missing = await runToEnd(command(planCrunExec({ ...global, id, argv: ['/no/such/program'] })));
    expect(missing.exit).toEqual({ code: 255, signal: null });

    // Why the planner merges: without --env exec inherits config.json's environment; a bare
    // --env (spliced in by hand here) replaces all of it, PATH included.
    const plain = command(planCrunExec({ ...global, id, argv: ['/bin/busybox', 'env'] }));
    expect((await runToEnd(plain)).stdout).toMatch(/^FROM_CONFIG=yes$/m);
    const afterExec = plain.argv.indexOf('exec') + 1;
    const replaced = await runToEnd({ ...plain, argv: [...plain.argv.slice(0, afterExec), '--env=A=1', ...plain.argv.slice(afterExec)] });
    expect(replaced.stdout.trim().split('\n').sort()).toEqual(['A=1', 'HOME=/']);

    const kill = await runToEnd(command(planCrunKill({ ...global, id, signal: 'SIGKILL' })));
    expect(kill.exit).toEqual({ code: 0, signal: null });
    expect(await crun.exited).toEqual({ code: 137, signal: null });
  });
});
