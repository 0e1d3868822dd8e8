/**
 * The real addon against the real kernel: processes, fds, sockets, mounts. Needs root and a
 * built addon (`npm run build:addon`).
 */
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative, nativeAddonPath } from '../../native/index.ts';
import type { ChildExit, CredDatagram, FdMapping, Native, NativeError, SpawnOptions } from '../../native/types.ts';

const isRoot = process.getuid?.() === 0;
const PYTHON = '/usr/bin/python3';
const ENV = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C'];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(!isRoot)('native addon (root)', () => {
  let native: Native;
  let devNull: number;
  let scratchDir: string;
  /** Exits reaped while waiting for another pid: kept for whoever waits for them. */
  const reaped = new Map<number, ChildExit>();

  beforeAll(() => {
    native = loadNative();
    devNull = fs.openSync('/dev/null', 'r+');
    scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-native-'));
    // Orphans of our children come to us and are reaped through reap() like children.
    native.setChildSubreaper();
  });

  afterAll(() => {
    fs.closeSync(devNull);
    fs.rmSync(scratchDir, { recursive: true, force: true });
  });

  async function waitForExit(pid: number, timeoutMs = 10_000): Promise<ChildExit> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const exit of native.reap()) reaped.set(exit.pid, exit);
      const exit = reaped.get(pid);
      if (exit) {
        reaped.delete(pid);
        return exit;
      }
      if (Date.now() > deadline) throw new Error(`pid ${pid} did not exit within ${timeoutMs} ms`);
      await sleep(5);
    }
  }

  function readToEnd(fd: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = new net.Socket({ fd, readable: true, writable: false });
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (text += chunk));
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
  }

  function readFirstLine(fd: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = new net.Socket({ fd, readable: true, writable: false });
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        text += chunk;
        const newline = text.indexOf('\n');
        if (newline >= 0) {
          socket.destroy();
          resolve(text.slice(0, newline));
        }
      });
      socket.on('error', reject);
    });
  }

  type RunOptions = Partial<SpawnOptions> & Pick<SpawnOptions, 'file' | 'argv'>;

  /** Spawns with stdout and stderr on a pipe; resolves with the output and the reaped exit. */
  async function run(options: RunOptions): Promise<{ pid: number; output: string; exit: ChildExit }> {
    const [readFd, writeFd] = native.pipe();
    let pid: number;
    try {
      pid = native.spawn({
        env: ENV,
        fds: [
          { child: 0, parent: devNull },
          { child: 1, parent: writeFd },
          { child: 2, parent: writeFd },
        ],
        ...options,
      });
    } catch (error) {
      native.close(readFd);
      throw error;
    } finally {
      native.close(writeFd);
    }
    const output = await readToEnd(readFd);
    return { pid, output, exit: await waitForExit(pid) };
  }

  function spawnError(options: RunOptions): NativeError {
    try {
      native.spawn({ env: ENV, fds: [], ...options });
    } catch (error) {
      return error as NativeError;
    }
    throw new Error('spawn did not throw');
  }

  /** Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]. */
  function procStat(pid: number): string[] | undefined {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    } catch {
      return undefined;
    }
  }

  function statusField(statusText: string, name: string): string {
    const match = new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(statusText);
    if (!match?.[1]) throw new Error(`no ${name} in status`);
    return match[1];
  }

  it('loads from the build output (or $MOS_NATIVE_ADDON)', () => {
    const explicit = process.env.MOS_NATIVE_ADDON;
    if (explicit) expect(nativeAddonPath()).toBe(path.resolve(explicit));
    else expect(nativeAddonPath()).toMatch(/native\/build\/Release\/mos_native\.node$/);
  });

  it('reap returns [] when no child has exited', () => {
    expect(native.reap()).toEqual([]);
  });

  it('spawns and reaps an exit code', async () => {
    const { exit, pid } = await run({ file: '/bin/sh', argv: ['sh', '-c', 'exit 7'] });
    expect(exit).toEqual({ pid, code: 7, signal: null, core: false });
  });

  it('reaps on SIGCHLD delivered through process.on', async () => {
    let sigchldCount = 0;
    let wake: () => void = () => {};
    const arrived = new Promise<void>((resolve) => (wake = resolve));
    const onSigchld = () => {
      sigchldCount++;
      for (const exit of native.reap()) reaped.set(exit.pid, exit);
      wake();
    };
    process.on('SIGCHLD', onSigchld);
    try {
      const pid = native.spawn({ file: '/bin/sh', argv: ['sh', '-c', 'exit 3'], env: ENV, fds: [] });
      await arrived;
      expect(sigchldCount).toBeGreaterThan(0);
      expect(reaped.get(pid)).toMatchObject({ pid, code: 3 });
      reaped.delete(pid);
    } finally {
      process.removeListener('SIGCHLD', onSigchld);
    }
  });

  it('reports death by signal, and kill of a dead pid returns false', async () => {
    const pid = native.spawn({ file: '/bin/sleep', argv: ['sleep', '30'], env: ENV, fds: [] });
    expect(native.kill(pid, 'SIGKILL')).toBe(true);
    const exit = await waitForExit(pid);
    expect(exit).toEqual({ pid, code: null, signal: 'SIGKILL', core: false });
    expect(native.kill(pid, 'SIGTERM')).toBe(false);
  });

  it('rejects unknown signal names and pids that address groups', () => {
    expect(() => native.kill(process.pid, 'SIGNOPE')).toThrow(TypeError);
    expect(() => native.kill(0, 'SIGTERM')).toThrow(TypeError);
    expect(() => native.kill(-1, 'SIGTERM')).toThrow(TypeError);
    expect(() => native.killProcessGroup(1, 'SIGTERM')).toThrow(TypeError);
  });

  it('throws execve ENOENT with the pid of the failed child, which exits 127', async () => {
    const error = spawnError({ file: '/no/such/file', argv: ['nope'] });
    expect(error.message).toBe('execve ENOENT /no/such/file');
    expect(error).toMatchObject({ syscall: 'execve', code: 'ENOENT', errno: os.constants.errno.ENOENT, path: '/no/such/file' });
    expect(error.pid).toBeGreaterThan(0);
    const exit = await waitForExit(error.pid!);
    expect(exit).toMatchObject({ code: 127, signal: null });
  });

  it('throws chdir ENOENT for a missing cwd', async () => {
    const error = spawnError({ file: '/bin/true', argv: ['true'], cwd: '/missing/dir' });
    expect(error.message).toBe('chdir ENOENT /missing/dir');
    expect(error.syscall).toBe('chdir');
    expect((await waitForExit(error.pid!)).code).toBe(127);
  });

  it('throws dup2 EBADF for an fd map naming a closed parent fd', async () => {
    const error = spawnError({ file: '/bin/true', argv: ['true'], fds: [{ child: 0, parent: 999_999 }] });
    expect(error.message).toBe('dup2 EBADF');
    expect((await waitForExit(error.pid!)).code).toBe(127);
  });

  it('rejects an fd map that names a child fd twice', () => {
    const fds: FdMapping[] = [
      { child: 1, parent: devNull },
      { child: 1, parent: devNull },
    ];
    expect(() => native.spawn({ file: '/bin/true', argv: ['true'], env: ENV, fds })).toThrow(TypeError);
  });

  it('maps fds: the child writes to fd 1 and fd 5 of its own', async () => {
    const { output, exit } = await run({ file: '/bin/sh', argv: ['sh', '-c', 'echo hello; echo world >&2'] });
    expect(exit.code).toBe(0);
    expect(output).toBe('hello\nworld\n');

    const [readFd, writeFd] = native.pipe();
    const pid = native.spawn({
      file: '/bin/sh',
      argv: ['sh', '-c', 'echo five >&5'],
      env: ENV,
      fds: [
        { child: 0, parent: devNull },
        { child: 1, parent: devNull },
        { child: 2, parent: devNull },
        { child: 5, parent: writeFd },
      ],
    });
    native.close(writeFd);
    expect(await readToEnd(readFd)).toBe('five\n');
    expect((await waitForExit(pid)).code).toBe(0);
  });

  it('handles swapped fds (child 1 <- parent 2, child 2 <- parent 1)', async () => {
    const [outRead, outWrite] = native.pipe();
    const [errRead, errWrite] = native.pipe();
    const pid = native.spawn({
      file: '/bin/sh',
      argv: ['sh', '-c', 'echo to-out; echo to-err >&2'],
      env: ENV,
      fds: [
        { child: 0, parent: devNull },
        { child: 1, parent: errWrite },
        { child: 2, parent: outWrite },
      ],
    });
    native.close(outWrite);
    native.close(errWrite);
    const [out, err] = await Promise.all([readToEnd(outRead), readToEnd(errRead)]);
    expect({ out, err }).toEqual({ out: 'to-err\n', err: 'to-out\n' });
    expect((await waitForExit(pid)).code).toBe(0);
  });

  it('lets no fd outside the map reach the child', async () => {
    const { output, exit } = await run({ file: '/bin/ls', argv: ['ls', '/proc/self/fd'] });
    expect(exit.code).toBe(0);
    // 3 is the directory ls itself opened to list.
    expect(output.trim().split('\n')).toEqual(['0', '1', '2', '3']);
  });

  it('starts a session with setsid, and killProcessGroup kills the grandchild too', async () => {
    const [readFd, writeFd] = native.pipe();
    const pid = native.spawn({
      file: '/bin/sh',
      argv: ['sh', '-c', 'sleep 30 >/dev/null 2>&1 & echo $!; wait'],
      env: ENV,
      fds: [
        { child: 0, parent: devNull },
        { child: 1, parent: writeFd },
        { child: 2, parent: devNull },
      ],
      setsid: true,
    });
    native.close(writeFd);
    const grandchild = Number(await readFirstLine(readFd));
    expect(grandchild).toBeGreaterThan(0);

    const [, , pgrp, session] = procStat(pid)!;
    expect(Number(pgrp)).toBe(pid);
    expect(Number(session)).toBe(pid);
    expect(Number(procStat(grandchild)![2])).toBe(pid);

    expect(native.killProcessGroup(pid, 'SIGKILL')).toBe(true);
    expect(await waitForExit(pid)).toMatchObject({ signal: 'SIGKILL' });
    // As subreaper we inherit the orphaned grandchild and reap it ourselves.
    expect(await waitForExit(grandchild)).toMatchObject({ signal: 'SIGKILL' });
    expect(native.killProcessGroup(pid, 'SIGKILL')).toBe(false);
  });

  it('does not start a session without setsid', async () => {
    const { output } = await run({ file: '/bin/sh', argv: ['sh', '-c', 'cut -d" " -f5 /proc/$$/stat'] });
    expect(Number(output.trim())).toBe(Number(procStat(process.pid)![2]));
  });

  it('sets pidEnv variables to the child pid, replacing same-named entries', async () => {
    const { output, pid } = await run({
      file: '/bin/sh',
      argv: ['sh', '-c', 'echo "$WATCHDOG_PID $LISTEN_PID"; env | grep -c WATCHDOG_PID'],
      env: [...ENV, 'WATCHDOG_PID=stale'],
      pidEnv: ['WATCHDOG_PID', 'LISTEN_PID'],
    });
    expect(output).toBe(`${pid} ${pid}\n1\n`);
  });

  it('drops uid, gid and supplementary groups', async () => {
    const script = 'id -u; id -g; id -G';
    const dropped = await run({ file: '/bin/sh', argv: ['sh', '-c', script], uid: 65534, gid: 65534 });
    expect(dropped.output).toBe('65534\n65534\n65534\n');

    const withGroups = await run({
      file: '/bin/sh',
      argv: ['sh', '-c', script],
      uid: 65534,
      gid: 65534,
      groups: [100, 65534],
    });
    expect(withGroups.output.split('\n').slice(0, 2)).toEqual(['65534', '65534']);
    expect(withGroups.output.split('\n')[2]!.split(' ').sort()).toEqual(['100', '65534']);
  });

  it('resets signal dispositions and the signal mask in the child', async () => {
    const own = fs.readFileSync('/proc/self/status', 'utf8');
    // Meaningful only because Node ignores SIGPIPE (signal 13 = bit 12) in this process.
    expect(BigInt(`0x${statusField(own, 'SigIgn')}`) & (1n << 12n)).toBe(1n << 12n);

    const { output } = await run({ file: '/bin/cat', argv: ['cat', '/proc/self/status'] });
    expect(statusField(output, 'SigIgn')).toBe('0000000000000000');
    expect(statusField(output, 'SigBlk')).toBe('0000000000000000');
  });

  it('leaves the calling thread signal mask as it was', async () => {
    const before = statusField(fs.readFileSync('/proc/thread-self/status', 'utf8'), 'SigBlk');
    await run({ file: '/bin/true', argv: ['true'] });
    const after = statusField(fs.readFileSync('/proc/thread-self/status', 'utf8'), 'SigBlk');
    expect(after).toBe(before);
  });

  describe('armed respawns', () => {
    /** A child that lives until `release()` closes the pipe it waits on (it cannot exit before arming). */
    function heldChild(): { pid: number; release: () => void } {
      const [readFd, writeFd] = native.pipe();
      const pid = native.spawn({ file: '/bin/sh', argv: ['sh', '-c', 'read line; exit 4'], env: ENV, fds: [{ child: 0, parent: readFd }] });
      native.close(readFd);
      return { pid, release: () => native.close(writeFd) };
    }

    it('spawns the armed run when the pid is reaped, with a fresh readiness pipe', async () => {
      const held = heldChild();
      native.armRespawn(
        held.pid,
        { file: '/bin/sh', argv: ['sh', '-c', 'echo "ready $MARK" >&5; exit 0'], env: [...ENV, 'MARK=second'], fds: [], setsid: true },
        5,
      );
      held.release();
      const exit = await waitForExit(held.pid);
      expect(exit).toMatchObject({ pid: held.pid, code: 4, signal: null });
      const respawn = exit.respawn as { pid: number; readinessFd: number };
      expect(respawn.pid).toBeGreaterThan(0);
      expect(respawn.readinessFd).toBeGreaterThan(2);
      expect(await readFirstLine(respawn.readinessFd)).toBe('ready second');
      // One-shot: the new run's own exit respawns nothing.
      const second = await waitForExit(respawn.pid);
      expect(second).toEqual({ pid: respawn.pid, code: 0, signal: null, core: false });
    });

    it('runs nothing once disarmed', async () => {
      const held = heldChild();
      native.armRespawn(held.pid, { file: '/bin/true', argv: ['true'], env: ENV, fds: [] });
      expect(native.disarmRespawn(held.pid)).toBe(true);
      expect(native.disarmRespawn(held.pid)).toBe(false);
      held.release();
      const exit = await waitForExit(held.pid);
      expect(exit.respawn).toBeUndefined();
    });

    it('reports a respawn that could not exec as the spawn error, with the dead child', async () => {
      const held = heldChild();
      native.armRespawn(held.pid, { file: '/nonexistent/program', argv: ['program'], env: ENV, fds: [] });
      held.release();
      const exit = await waitForExit(held.pid);
      const { error } = exit.respawn as { error: NativeError & { pid: number } };
      expect(error.message).toBe('execve ENOENT /nonexistent/program');
      expect(error.syscall).toBe('execve');
      expect((await waitForExit(error.pid)).code).toBe(127);
    });

    it('checks the plan when it is armed', () => {
      expect(() => native.armRespawn(1234567, { file: '/bin/true', argv: ['true'], env: ENV, fds: [{ child: 5, parent: devNull }] }, 5)).toThrow(
        'readinessChildFd 5 is already mapped in options.fds',
      );
      expect(() => native.armRespawn(1234567, { file: 7 as unknown as string, argv: [], env: [], fds: [] })).toThrow(TypeError);
      expect(native.disarmRespawn(1234567)).toBe(false);
    });

    it('watchChildren reaps on SIGCHLD before calling back, respawns included', async () => {
      const batches: ChildExit[][] = [];
      let wake: () => void = () => {};
      const watch = native.watchChildren((exits) => {
        batches.push(exits);
        for (const exit of exits) reaped.set(exit.pid, exit);
        wake();
      });
      try {
        const held = heldChild();
        native.armRespawn(held.pid, { file: '/bin/sh', argv: ['sh', '-c', 'exit 9'], env: ENV, fds: [] });
        const first = new Promise<void>((resolve) => (wake = resolve));
        held.release();
        await first;
        const exit = await waitForExit(held.pid);
        const respawned = (exit.respawn as { pid: number }).pid;
        expect((await waitForExit(respawned)).code).toBe(9);
        expect(batches.flat().map((e) => e.pid)).toContain(held.pid);
      } finally {
        watch.close();
      }
    });
  });

  it('reaps a double-forked orphan as subreaper', async () => {
    const { output, exit } = await run({
      file: '/bin/sh',
      argv: ['sh', '-c', 'sleep 0.2 >/dev/null 2>&1 & echo $!; exit 0'],
    });
    expect(exit.code).toBe(0);
    const orphan = Number(output.trim());
    expect(await waitForExit(orphan)).toEqual({ pid: orphan, code: 0, signal: null, core: false });
  });

  it('spawns many children quickly', async () => {
    const started = Date.now();
    const pids = Array.from({ length: 100 }, () =>
      native.spawn({ file: '/bin/true', argv: ['true'], env: ENV, fds: [] }),
    );
    const spawnMs = Date.now() - started;
    for (const pid of pids) expect((await waitForExit(pid)).code).toBe(0);
    expect(spawnMs).toBeLessThan(5_000);
  });

  it('pipe, setNonBlocking and close', () => {
    const [readFd, writeFd] = native.pipe();
    const flags = (fd: number) =>
      parseInt(/^flags:\s*(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
    const O_NONBLOCK = 0o4000;
    const O_CLOEXEC = 0o2000000;
    expect(flags(readFd) & O_CLOEXEC).toBe(O_CLOEXEC);
    expect(flags(readFd) & O_NONBLOCK).toBe(0);
    native.setNonBlocking(readFd, true);
    expect(flags(readFd) & O_NONBLOCK).toBe(O_NONBLOCK);
    native.setNonBlocking(readFd, false);
    expect(flags(readFd) & O_NONBLOCK).toBe(0);
    native.close(readFd);
    native.close(writeFd);
    expect(() => native.close(999_999)).not.toThrow();
  });

  describe('watchReadable', () => {
    it('fires on readable and stops after close (idempotent)', async () => {
      const [readFd, writeFd] = native.pipe();
      let calls = 0;
      let wake: () => void = () => {};
      const watch = native.watchReadable(readFd, () => {
        calls++;
        const buffer = Buffer.alloc(64);
        fs.readSync(readFd, buffer);
        wake();
      });
      const fired = new Promise<void>((resolve) => (wake = resolve));
      fs.writeSync(writeFd, 'x');
      await fired;
      expect(calls).toBe(1);
      watch.close();
      watch.close();
      fs.writeSync(writeFd, 'y');
      await sleep(50);
      expect(calls).toBe(1);
      native.close(readFd);
      native.close(writeFd);
    });

    it('refuses a second watch on the same fd', () => {
      const [readFd, writeFd] = native.pipe();
      const watch = native.watchReadable(readFd, () => {});
      expect(() => native.watchReadable(readFd, () => {})).toThrow('watchReadable EEXIST');
      watch.close();
      native.watchReadable(readFd, () => {}).close();
      native.close(readFd);
      native.close(writeFd);
    });

    /** Runs a CommonJS script in a Node child that loads the addon; returns its output. */
    async function runNodeScript(script: string) {
      return run({
        file: process.execPath,
        argv: ['node', '-e', script],
        env: [...ENV, `MOS_NATIVE_ADDON=${nativeAddonPath()}`],
      });
    }

    it('turns a throwing callback into an uncaughtException', async () => {
      const { output, exit } = await runNodeScript(`
        const native = require(process.env.MOS_NATIVE_ADDON);
        process.on('uncaughtException', (error) => { console.log('uncaught: ' + error.message); process.exit(0); });
        const [readFd, writeFd] = native.pipe();
        native.watchReadable(readFd, () => { throw new Error('boom'); });
        require('fs').writeSync(writeFd, 'x');
      `);
      expect(output).toBe('uncaught: boom\n');
      expect(exit.code).toBe(0);
    });

    it('runs promise jobs right after the callback and lets the loop end once closed', async () => {
      const { output, exit } = await runNodeScript(`
        const native = require(process.env.MOS_NATIVE_ADDON);
        const [readFd, writeFd] = native.pipe();
        const watch = native.watchReadable(readFd, () => {
          watch.close();
          Promise.resolve().then(() => console.log('microtask'));
          process.nextTick(() => console.log('tick'));
          setImmediate(() => console.log('immediate'));
        });
        require('fs').writeSync(writeFd, 'x');
      `);
      expect(output).toBe('tick\nmicrotask\nimmediate\n');
      expect(exit.code).toBe(0);
    });

    it('closes open watches when a worker thread is terminated', async () => {
      const { output, exit } = await runNodeScript(`
        const { Worker } = require('node:worker_threads');
        const worker = new Worker(
          "const native = require(process.env.MOS_NATIVE_ADDON);" +
          "const [readFd] = native.pipe();" +
          "native.watchReadable(readFd, () => {});" +
          "require('node:worker_threads').parentPort.postMessage('watching');",
          { eval: true });
        worker.once('message', async () => { await worker.terminate(); console.log('terminated'); });
      `);
      expect(output).toBe('terminated\n');
      expect(exit.code).toBe(0);
    });
  });

  describe('credential datagram socket', () => {
    const hasPython = fs.existsSync(PYTHON);

    /** A Python child that sends `READY=1`, one fd (its stdin) with `FDSTORE=1`, and 5000 bytes. */
    function spawnSender(address: string): number {
      const script = [
        'import socket, sys',
        'address = sys.argv[1]',
        "address = '\\0' + address[1:] if address.startswith('@') else address",
        's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
        's.connect(address)',
        "s.send(b'READY=1')",
        "socket.send_fds(s, [b'FDSTORE=1'], [0])",
        "s.send(b'x' * 5000)",
      ].join('\n');
      return native.spawn({
        file: PYTHON,
        argv: ['python3', '-c', script, address],
        env: ENV,
        fds: [
          { child: 0, parent: devNull },
          { child: 1, parent: devNull },
          { child: 2, parent: devNull },
        ],
      });
    }

    async function receiveFrom(address: string): Promise<{ pid: number; datagrams: CredDatagram[] }> {
      const fd = native.bindCredDatagramSocket(address);
      const datagrams: CredDatagram[] = [];
      let complete: () => void = () => {};
      const allThere = new Promise<void>((resolve) => (complete = resolve));
      const watch = native.watchReadable(fd, () => {
        datagrams.push(...native.receiveCredDatagrams(fd, 16));
        if (datagrams.length >= 3) complete();
      });
      try {
        const pid = spawnSender(address);
        const exit = await waitForExit(pid);
        expect(exit.code).toBe(0);
        // The sender is done, so every datagram is queued: the watch fires promptly or never.
        await Promise.race([
          allThere,
          sleep(5_000).then(() => {
            throw new Error(`received only ${datagrams.length} datagrams`);
          }),
        ]);
        return { pid, datagrams };
      } finally {
        watch.close();
        native.close(fd);
      }
    }

    function expectDatagrams(pid: number, datagrams: CredDatagram[]) {
      expect(datagrams).toHaveLength(3);
      const [ready, fdStore, large] = datagrams as [CredDatagram, CredDatagram, CredDatagram];
      expect(ready.data.toString()).toBe('READY=1');
      expect(ready.cred).toEqual({ pid, uid: 0, gid: 0 });
      expect(ready.fds).toEqual([]);
      expect(fdStore.data.toString()).toBe('FDSTORE=1');
      expect(fdStore.fds).toHaveLength(1);
      const passed = fdStore.fds[0]!;
      expect(fs.readlinkSync(`/proc/self/fd/${passed}`)).toBe('/dev/null');
      native.close(passed);
      expect(large.data.length).toBe(4096);
    }

    it.skipIf(!hasPython)('receives data, credentials and fds on a path socket', async () => {
      const address = path.join(scratchDir, 'notify.sock');
      const { pid, datagrams } = await receiveFrom(address);
      expectDatagrams(pid, datagrams);
      expect(fs.statSync(address).isSocket()).toBe(true);
      fs.unlinkSync(address);
    });

    it.skipIf(!hasPython)('works in the abstract namespace (@name)', async () => {
      const address = `@mos-native-test-${process.pid}-${Date.now()}`;
      const { pid, datagrams } = await receiveFrom(address);
      expectDatagrams(pid, datagrams);
    });

    it('returns [] when nothing is queued, and fails bind on a taken path', () => {
      const address = path.join(scratchDir, 'taken.sock');
      const fd = native.bindCredDatagramSocket(address);
      expect(native.receiveCredDatagrams(fd, 16)).toEqual([]);
      let error: NativeError | undefined;
      try {
        native.bindCredDatagramSocket(address);
      } catch (caught) {
        error = caught as NativeError;
      }
      expect(error?.message).toBe(`bind EADDRINUSE ${address}`);
      expect(error).toMatchObject({ syscall: 'bind', code: 'EADDRINUSE', path: address });
      native.close(fd);
      fs.unlinkSync(address);
    });
  });

  it('peerCredentials of a connected unix stream socket', async () => {
    const address = path.join(scratchDir, 'peer.sock');
    const server = net.createServer();
    server.listen(address);
    await once(server, 'listening');
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const client = net.connect(address);
    await once(client, 'connect');
    const [serverSide] = await accepted;
    const fd = (serverSide as unknown as { _handle: { fd: number } })._handle.fd;
    expect(native.peerCredentials(fd)).toEqual({ pid: process.pid, uid: 0, gid: process.getgid!() });
    client.destroy();
    serverSide.destroy();
    server.close();
    await once(server, 'close');
  });

  it('mounts a tmpfs and unmounts it, off the main thread', async () => {
    const target = fs.mkdtempSync(path.join(scratchDir, 'mnt-'));
    const mounted = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${target} `);
    await expect(
      native.mount({ source: 'mos-test', target, fstype: 'tmpfs', flags: 2 | 4 | 8, data: 'size=1m,mode=0700' }),
    ).resolves.toBeUndefined();
    expect(mounted()).toBe(true);
    fs.writeFileSync(path.join(target, 'file'), 'on tmpfs');
    await expect(native.umount(target, 0)).resolves.toBeUndefined();
    expect(mounted()).toBe(false);
    expect(fs.existsSync(path.join(target, 'file'))).toBe(false);
    fs.rmdirSync(target);
  });

  it('rejects mount on a missing directory with mount ENOENT <target>', async () => {
    const target = path.join(scratchDir, 'no-such-dir');
    const error = (await native
      .mount({ source: 'tmpfs', target, fstype: 'tmpfs', flags: 0 })
      .then(() => undefined, (caught: unknown) => caught)) as NativeError;
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toBe(`mount ENOENT ${target}`);
    expect(error).toMatchObject({ syscall: 'mount', code: 'ENOENT', path: target });
    await expect(native.umount(target, 0)).rejects.toThrow(`umount2 ENOENT ${target}`);
  });

  it('reboot refuses an unknown command before doing anything', () => {
    expect(() => native.reboot('sideways' as 'halt')).toThrow(TypeError);
  });
});
