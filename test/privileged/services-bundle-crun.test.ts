/**
 * The OCI config.json mos generates (services/bundle.ts), run by the real crun on the host: a
 * plain container, and one in a user namespace with the expected id map. crun runs here only in
 * a private mount namespace with cgroup2 mounted and `--cgroup-manager=disabled` (FACTS: the host
 * has hybrid cgroups).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planBundleConfig, type BundleInput } from '../../services/bundle.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare'].every((file) => existsSync(file));

describe.skipIf(!isRoot || !hasTools)('generated bundles under crun', () => {
  let work: string;
  beforeAll(() => {
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-bundle-crun-'));
    // The mapped root of a user namespace is "other" to the host's files: the path to the rootfs
    // must be searchable by others (mkdtemp makes 0700).
    chmodSync(work, 0o755);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  function run(name: string, idRange: BundleInput['idRange']): string {
    const bundle = path.join(work, name);
    const rootfs = path.join(bundle, 'rootfs');
    for (const dir of ['bin', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(path.join(rootfs, dir), { recursive: true });
    copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
    const planned = planBundleConfig({
      name,
      rootfs,
      process: { argv: ['/bin/busybox', 'sh', '-c', 'echo "hello from $(/bin/busybox hostname)"; /bin/busybox cat /proc/self/uid_map'], env: {}, cwd: '/', uid: 0, gid: 0 },
      idRange,
      network: 'none',
      netnsPath: null,
      limits: { pids: 64 },
      mounts: [],
      notifySocket: null,
    });
    if (!planned.ok) throw new Error(planned.message);
    writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(planned.config, null, 2));
    const state = path.join(work, 'crun-state');
    const script = `mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec crun --root ${state} --cgroup-manager=disabled run -b ${bundle} mos-test-${name}`;
    return execFileSync('unshare', ['-m', 'sh', '-c', script], { encoding: 'utf8', timeout: 30_000, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  }

  it('runs a container on host ids', () => {
    const output = run('plain', null);
    expect(output).toMatch(/^hello from plain\n/);
    expect(output.split('\n')[1]!.trim().split(/\s+/)).toEqual(['0', '0', '4294967295']);
  });

  it('runs a container in a user namespace with the nsgroup\'s id range', () => {
    const output = run('mapped', { hostId: 200000, size: 65536 });
    expect(output).toMatch(/^hello from mapped\n/);
    expect(output.split('\n')[1]!.trim().split(/\s+/)).toEqual(['0', '200000', '65536']);
  });
});
