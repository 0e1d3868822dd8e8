/**
 * The OCI config.json planned for a container service (services/bundle.ts).
 *
 * The two whole configs are compared byte for byte with golden files in test/fixtures/bundles/.
 * After an intended change to the output, rewrite them with
 *
 *   UPDATE_GOLDEN=1 npx vitest run --project unit test/unit/services-bundle.test.ts
 *
 * and review the diff before keeping it.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { planBundleConfig, type BundleInput, type OciConfig } from '../../services/bundle.ts';

const GOLDEN_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'bundles');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

function expectGolden(file: string, config: OciConfig): void {
  const text = JSON.stringify(config, null, 2) + '\n';
  const path = join(GOLDEN_DIR, file);
  if (UPDATE) {
    mkdirSync(GOLDEN_DIR, { recursive: true });
    writeFileSync(path, text);
  }
  expect(existsSync(path), `${path} is missing: run with UPDATE_GOLDEN=1`).toBe(true);
  expect(text).toBe(readFileSync(path, 'utf8'));
}

function plan(input: BundleInput): OciConfig {
  const result = planBundleConfig(input);
  if (!result.ok) throw new Error(`unexpected refusal: ${result.message}`);
  return result.config;
}

function refusal(input: BundleInput): string {
  const result = planBundleConfig(input);
  if (result.ok) throw new Error('expected a refusal');
  return result.message;
}

/** Host network, no user namespace. */
const hostInput: BundleInput = {
  name: 'dns',
  rootfs: '/run/mos/targets/dns/root',
  process: { argv: ['/usr/sbin/unbound', '-d'], env: { LANG: 'C.UTF-8' }, cwd: '/', uid: 0, gid: 0 },
  idRange: null,
  network: 'host',
  netnsPath: null,
  limits: {},
  mounts: [],
  notifySocket: null,
};

/** A user namespace, network simple joining a prepared netns, limits, a volume and the notify socket. */
const usernsInput: BundleInput = {
  name: 'web',
  rootfs: '/run/mos/targets/web/root',
  process: {
    argv: ['/usr/bin/httpd', '-f', '-p', '8080'],
    env: { PATH: '/usr/bin:/bin', HOME: '/var/www', APP_MODE: 'production' },
    cwd: '/var/www',
    uid: 33,
    gid: 33,
  },
  idRange: { hostId: 200000, size: 65536 },
  network: 'simple',
  netnsPath: '/run/netns/mos-web',
  limits: { pids: 512, memoryBytes: 256 * 1024 * 1024 },
  mounts: [
    { source: '/var/lib/mos/volumes/web-data', destination: '/var/www/data', readOnly: false },
    { source: '/run/mos/notify/web.sock', destination: '/run/mos/notify.sock', readOnly: true },
  ],
  notifySocket: '/run/mos/notify.sock',
};

describe('planBundleConfig', () => {
  it('plans host network without a user namespace (golden)', () => {
    expectGolden('host-no-userns.json', plan(hostInput));
  });

  it('plans a user namespace, a joined netns, limits and bind mounts (golden)', () => {
    expectGolden('userns-simple-netns.json', plan(usernsInput));
  });

  it('is deterministic whatever the order of the env object', () => {
    const reordered = { ...usernsInput, process: { ...usernsInput.process, env: { APP_MODE: 'production', HOME: '/var/www', PATH: '/usr/bin:/bin' } } };
    expect(JSON.stringify(plan(reordered), null, 2)).toBe(JSON.stringify(plan(usernsInput), null, 2));
  });

  it('defaults PATH, sorts env by key and sets NOTIFY_SOCKET', () => {
    const config = plan({ ...hostInput, process: { ...hostInput.process, env: { Z: '1', A: 'x=y' } }, notifySocket: '/run/n.sock' });
    expect(config.process.env).toEqual([
      'A=x=y',
      'NOTIFY_SOCKET=/run/n.sock',
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'Z=1',
    ]);
  });

  it('binds /sys instead of mounting sysfs for a user namespace on the host network', () => {
    const config = plan({ ...usernsInput, network: 'host', netnsPath: null });
    const sys = config.mounts.find((m) => m.destination === '/sys');
    expect(sys).toEqual({ destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] });
    expect(config.linux.namespaces.map((n) => n.type)).not.toContain('network');
    expect(config.linux.namespaces.map((n) => n.type)).toContain('user');
  });

  it('creates a fresh network namespace for none and for simple without a path', () => {
    for (const network of ['none', 'simple'] as const) {
      const config = plan({ ...hostInput, network });
      expect(config.linux.namespaces).toContainEqual({ type: 'network' });
      expect(config.mounts.find((m) => m.destination === '/sys')?.type).toBe('sysfs');
    }
  });

  it('keeps gid=5 on devpts only without a user namespace', () => {
    const devpts = (c: OciConfig) => c.mounts.find((m) => m.destination === '/dev/pts')?.options ?? [];
    expect(devpts(plan(hostInput))).toContain('gid=5');
    expect(devpts(plan(usernsInput)).some((o) => o.startsWith('gid='))).toBe(false);
  });

  it('emits no seccomp section (the caller adds it)', () => {
    expect('seccomp' in plan(usernsInput).linux).toBe(false);
  });

  describe('refuses', () => {
    const cases: [string, BundleInput, string | RegExp][] = [
      ['an empty argv', { ...hostInput, process: { ...hostInput.process, argv: [] } }, 'process argv is empty'],
      ['a NUL in argv', { ...hostInput, process: { ...hostInput.process, argv: ['/bin/sh', 'a\0b'] } }, /^process argv contains a NUL byte/],
      ['a NUL in an env value', { ...hostInput, process: { ...hostInput.process, env: { X: 'a\0' } } }, 'environment variable X contains a NUL byte'],
      ['an env name with =', { ...hostInput, process: { ...hostInput.process, env: { 'A=B': '1' } } }, 'invalid environment variable name "A=B"'],
      ['a relative rootfs', { ...hostInput, rootfs: 'root' }, 'rootfs must be an absolute path: "root"'],
      ['a relative cwd', { ...hostInput, process: { ...hostInput.process, cwd: 'www' } }, 'process cwd must be an absolute path: "www"'],
      ['a negative uid', { ...hostInput, process: { ...hostInput.process, uid: -1 } }, 'process uid -1 is not an id in 0..4294967294'],
      ['gid 2^32-1', { ...hostInput, process: { ...hostInput.process, gid: 2 ** 32 - 1 } }, 'process gid 4294967295 is not an id in 0..4294967294'],
      ['a fractional uid', { ...hostInput, process: { ...hostInput.process, uid: 1.5 } }, 'process uid 1.5 is not an id in 0..4294967294'],
      ['an empty id range', { ...usernsInput, idRange: { hostId: 200000, size: 0 } }, 'id range size 0 must be an integer >= 1'],
      ['an id range past the top', { ...usernsInput, idRange: { hostId: 2 ** 32 - 10, size: 65536 } }, /runs past the highest id/],
      ['an unmapped uid', { ...usernsInput, process: { ...usernsInput.process, uid: 70000 } }, 'process uid 70000 is outside the mapped range 0..65535'],
      ['an unmapped uid in a small range', { ...usernsInput, idRange: { hostId: 200000, size: 10 } }, 'process uid 33 is outside the mapped range 0..9'],
      ['an unmapped gid', { ...usernsInput, process: { ...usernsInput.process, gid: 65536 } }, 'process gid 65536 is outside the mapped range 0..65535'],
      ['a netns path for host', { ...hostInput, netnsPath: '/run/netns/x' }, 'a network namespace path is only joined for network simple, not host'],
      ['a zero pids limit', { ...hostInput, limits: { pids: 0 } }, 'pids limit must be a positive integer: 0'],
      ['a negative memory limit', { ...hostInput, limits: { memoryBytes: -1 } }, 'memory limit must be a positive integer: -1'],
      ['a fractional memory limit', { ...hostInput, limits: { memoryBytes: 1.5 } }, 'memory limit must be a positive integer: 1.5'],
      [
        'a relative destination',
        { ...hostInput, mounts: [{ source: '/v', destination: 'data', readOnly: false }] },
        'mount destination must be an absolute, normalized path other than /: "data"',
      ],
      [
        'an unnormalized destination',
        { ...hostInput, mounts: [{ source: '/v', destination: '/srv/../etc', readOnly: false }] },
        'mount destination must be an absolute, normalized path other than /: "/srv/../etc"',
      ],
      [
        'a trailing slash',
        { ...hostInput, mounts: [{ source: '/v', destination: '/data/', readOnly: false }] },
        'mount destination must be an absolute, normalized path other than /: "/data/"',
      ],
      [
        'a duplicated destination',
        {
          ...hostInput,
          mounts: [
            { source: '/a', destination: '/data', readOnly: false },
            { source: '/b', destination: '/data', readOnly: true },
          ],
        },
        'mount destination /data is used twice',
      ],
      [
        'a destination over a default mount',
        { ...hostInput, mounts: [{ source: '/a', destination: '/dev/shm', readOnly: false }] },
        'mount destination /dev/shm is used twice',
      ],
      [
        'a relative source',
        { ...hostInput, mounts: [{ source: 'vol', destination: '/data', readOnly: false }] },
        'mount source for /data must be an absolute path: "vol"',
      ],
    ];
    it.each(cases)('%s', (_label, input, message) => {
      if (typeof message === 'string') expect(refusal(input)).toBe(message);
      else expect(refusal(input)).toMatch(message);
    });
  });
});
