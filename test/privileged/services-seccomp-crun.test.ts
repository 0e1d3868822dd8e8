/**
 * The seccomp filter planSeccomp resolves from Debian's containers-common template, in a bundle
 * from planBundleConfig, under the real crun: the container runs filtered (Seccomp: 2), ordinary
 * work succeeds, and a syscall the profile denies without CAP_SYS_ADMIN fails with EPERM where
 * the kernel alone would allow it. The control run without a filter proves the EPERM is the
 * filter's: sethostname() in a nested user + UTS namespace that the process owns needs no
 * capability of the container's, so only seccomp can refuse it.
 *
 * crun runs in a private mount namespace with cgroup2 mounted and `--cgroup-manager=disabled`,
 * as in services-bundle-crun.test.ts (the host's hybrid cgroups).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planBundleConfig, type BundleInput } from '../../services/bundle.ts';
import { SECCOMP_TEMPLATE_PATH, planDefaultSeccomp, planSeccomp, seccompArchOf } from '../../services/seccomp.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare', SECCOMP_TEMPLATE_PATH].every((file) => existsSync(file));
const arch = seccompArchOf(process.arch);

/** Runs in the container (busybox sh); every step reports its exit status on its own line. */
const SCRIPT = [
  'grep -E "^(NoNewPrivs|Seccomp|Seccomp_filters):" /proc/self/status',
  'echo "echo works"',
  'cat /etc/greeting',
  'sleep 0; echo "sleep=$?"',
  // Denied by the profile without CAP_SYS_ADMIN; allowed by the kernel in a namespace the process owns.
  'busybox unshare -U -u -r busybox hostname inner 2>&1; echo "sethostname=$?"',
  // In the profile's general allow list and its CAP_SYS_ADMIN deny list: the first rule wins.
  'busybox unshare -U -u -r busybox nsenter -u/proc/self/ns/uts true 2>&1; echo "setns=$?"',
  // Allowed by the profile: the kernel's capability checks decide.
  'busybox unshare -U -r -m busybox mount -t tmpfs x /mnt 2>&1; echo "nested mount=$?"',
  'busybox mount -t tmpfs x /mnt 2>&1; echo "mount=$?"',
].join('\n');

describe.skipIf(!isRoot || !hasTools || arch === null)('seccomp from the containers-common template under crun', () => {
  let work: string;
  let template: unknown;
  beforeAll(() => {
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-seccomp-crun-'));
    // The mapped root of a user namespace is "other" to the host's files.
    chmodSync(work, 0o755);
    template = JSON.parse(readFileSync(SECCOMP_TEMPLATE_PATH, 'utf8'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  function run(name: string, idRange: BundleInput['idRange'], withSeccomp: boolean): string {
    const bundle = path.join(work, name);
    const rootfs = path.join(bundle, 'rootfs');
    for (const dir of ['bin', 'proc', 'dev', 'sys', 'tmp', 'mnt', 'etc']) mkdirSync(path.join(rootfs, dir), { recursive: true });
    copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
    writeFileSync(path.join(rootfs, 'etc', 'greeting'), 'cat works\n');
    const planned = planBundleConfig({
      name,
      rootfs,
      process: { argv: ['/bin/busybox', 'sh', '-c', SCRIPT], env: { PATH: '/bin' }, cwd: '/', uid: 0, gid: 0 },
      idRange,
      network: 'none',
      netnsPath: null,
      limits: {},
      mounts: [],
      notifySocket: null,
    });
    if (!planned.ok) throw new Error(planned.message);
    // The filter is resolved for the bundle's own bounding set (what podman compares).
    const resolved = planSeccomp(template, {
      arch: arch!,
      capabilities: planned.config.process.capabilities.bounding,
      kernel: os.release(),
    });
    if (!resolved.ok) throw new Error(resolved.message);
    const config = withSeccomp ? { ...planned.config, linux: { ...planned.config.linux, seccomp: resolved.seccomp } } : planned.config;
    writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(config, null, 2));
    const state = path.join(work, 'crun-state');
    const script = `mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec crun --root ${state} --cgroup-manager=disabled run -b ${bundle} mos-seccomp-${name}`;
    return execFileSync('unshare', ['-m', 'sh', '-c', script], { encoding: 'utf8', timeout: 30_000, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  }

  function expectOrdinaryWork(output: string): void {
    expect(output).toContain('NoNewPrivs:\t1\n');
    expect(output).toContain('echo works\n');
    expect(output).toContain('cat works\n');
    expect(output).toContain('sleep=0\n');
  }

  it('resolves a filter that denies sethostname without CAP_SYS_ADMIN', () => {
    const planned = planDefaultSeccomp(template, { arch: arch!, kernel: os.release() });
    if (!planned.ok) throw new Error(planned.message);
    expect(planned.seccomp.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(planned.seccomp.syscalls.some((rule) => rule.names.includes('sethostname') && rule.action === 'SCMP_ACT_ERRNO' && rule.errnoRet === 1)).toBe(true);
  });

  for (const [mode, idRange] of [
    ['mapped', { hostId: 200000, size: 65536 }],
    ['plain', null],
  ] as const) {
    it(`filters a ${mode} container: ordinary work runs, sethostname fails with EPERM`, () => {
      const output = run(`filtered-${mode}`, idRange, true);
      expect(output).toMatch(/^Seccomp:\t2$/m);
      expect(output).toMatch(/^Seccomp_filters:\t1$/m);
      expectOrdinaryWork(output);
      expect(output).toContain('hostname: sethostname: Operation not permitted\n');
      expect(output).toContain('sethostname=1\n');
      // As measured (docs/seccomp.md): the earlier allow rule for setns wins over the later EPERM one.
      expect(output).toContain('setns=0\n');
      // mount is not filtered: allowed in a namespace the process owns, refused by the kernel otherwise.
      expect(output).toContain('nested mount=0\n');
      expect(output).toContain('mount=1\n');
    });
  }

  it('without the filter the same sethostname succeeds (the control)', () => {
    const output = run('unfiltered', { hostId: 200000, size: 65536 }, false);
    expect(output).toMatch(/^Seccomp:\t0$/m);
    expectOrdinaryWork(output);
    expect(output).toContain('sethostname=0\n');
  });
});
