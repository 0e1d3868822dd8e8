/**
 * What the supervisor relies on for a container's readiness and watchdog, with the real crun and
 * the bundle services/container.ts plans: mos's own notify socket, bound into the container,
 * receives the service's messages as sent (READY=1 with STATUS=, WATCHDOG=1), from a sender the
 * kernel names as the container's init (its host pid, as crun's pid file says) with the
 * nsgroup's mapped uid; the watchdog's variables are in the service's environment. crun runs in a
 * private mount namespace with cgroup2 mounted and `--cgroup-manager=disabled` (FACTS).
 */
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../../native/index.ts';
import type { CredDatagram, Native } from '../../native/types.ts';
import { NOTIFY_SOCKET_IN_CONTAINER, planContainer } from '../../services/container.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare', '/usr/bin/python3'].every((file) => existsSync(file));

/** Sends as a service would (sd_notify), then prints the watchdog's variables. */
const SERVICE = [
  'import os, socket',
  's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
  "s.sendto(b'READY=1\\nSTATUS=serving', os.environ['NOTIFY_SOCKET'])",
  "s.sendto(b'WATCHDOG=1', os.environ['NOTIFY_SOCKET'])",
  "print(os.environ['NOTIFY_SOCKET'], os.environ['WATCHDOG_USEC'], os.environ['WATCHDOG_PID'], os.getpid(), flush=True)",
].join('\n');

describe.skipIf(!isRoot || !hasTools)('a container service\'s sd_notify under crun', () => {
  let work: string;
  let native: Native;
  beforeAll(() => {
    native = loadNative();
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-container-notify-'));
    chmodSync(work, 0o755);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('reaches mos\'s socket as sent, from the container\'s init, with the nsgroup\'s uid', async () => {
    const socketPath = path.join(work, 'notify');
    const fd = native.bindCredDatagramSocket(socketPath);
    chmodSync(socketPath, 0o666); // as the supervisor does
    try {
      const rootfs = path.join(work, 'rootfs');
      // The mount points activation makes, and the host's python (read-only) to send with.
      for (const dir of ['bin', 'proc', 'dev', 'sys', 'usr', 'lib', 'lib64', 'run/mos']) mkdirSync(path.join(rootfs, dir), { recursive: true });
      writeFileSync(path.join(rootfs, NOTIFY_SOCKET_IN_CONTAINER.slice(1)), '');
      copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
      const plan = planContainer({
        name: 'notes',
        rootfs,
        process: { argv: ['/usr/bin/python3', '-c', SERVICE], env: {}, cwd: '/' },
        idRange: { hostId: 200000, size: 65536 },
        network: { type: 'none', netnsPath: null },
        notifySocket: socketPath,
        watchdogMs: 3000,
        limits: {},
        dirs: { bundlesDir: path.join(work, 'bundles'), crunStateRoot: path.join(work, 'crun') },
        crun: { path: '/usr/bin/crun', cgroupManager: 'disabled', noPivot: false },
      });
      if (!plan.ok) throw new Error(plan.message);
      for (const dir of ['/usr', '/lib', '/lib64']) plan.config.mounts.push({ destination: dir, type: 'bind', source: dir, options: ['rbind', 'ro'] });
      mkdirSync(plan.bundleDir, { recursive: true, mode: 0o711 });
      writeFileSync(path.join(plan.bundleDir, 'config.json'), JSON.stringify(plan.config));

      const script = 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"';
      const crun = spawn('unshare', ['-m', 'sh', '-c', script, 'sh', ...plan.argv], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
      let output = '';
      crun.stdout.on('data', (chunk) => (output += chunk));
      crun.stderr.on('data', (chunk) => (output += chunk));
      const code = await new Promise<number | null>((resolve) => crun.on('exit', resolve));
      expect(output, output).toMatch(/^\/run\/mos\/notify 3000000 1 1\n$/);
      expect(code).toBe(0);

      const datagrams: CredDatagram[] = native.receiveCredDatagrams(fd, 16);
      expect(datagrams.map((d) => d.data.toString())).toEqual(['READY=1\nSTATUS=serving', 'WATCHDOG=1']);
      const init = Number(readFileSync(plan.run.pidFile, 'utf8'));
      expect(init).toBeGreaterThan(1);
      // The sender is the container's pid 1 as the host sees it: what the supervisor attributes.
      for (const datagram of datagrams) expect(datagram.cred).toMatchObject({ pid: init, uid: 200000, gid: 200000 });
    } finally {
      native.close(fd);
    }
  });
});
