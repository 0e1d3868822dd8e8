/**
 * The rootfs id mapping plan (services/rootfs-idmap.ts): which strategy a kernel gets, the exact
 * steps of each, the refusals, and the per-entry shift rule. The plans are carried out against
 * real mounts and crun in test/privileged/services-idmapped-rootfs.test.ts.
 */
import { describe, expect, it } from 'vitest';
import {
  chooseRootfsStrategy,
  kernelIdmapSupport,
  planRootfsIdmap,
  planShiftEntry,
  type RootfsIdmapInput,
  type RootfsPlan,
} from '../../services/rootfs-idmap.ts';

const RANGE = { hostId: 200_000, size: 65_536 };

function input(overrides: Partial<RootfsIdmapInput> = {}): RootfsIdmapInput {
  return {
    name: 'web',
    imageDir: '/run/mos/targets/web/image',
    lowerDir: '/run/mos/targets/web/lower',
    rootDir: '/run/mos/targets/web/root',
    upperDir: '/run/mos/scratch/web/upper',
    workDir: '/run/mos/scratch/web/work',
    idRange: RANGE,
    kernelRelease: '6.1.0-56-cloud-amd64',
    ...overrides,
  };
}

function plan(overrides: Partial<RootfsIdmapInput> = {}): RootfsPlan {
  const result = planRootfsIdmap(input(overrides));
  if (!result.ok) throw new Error(`unexpected refusal: ${result.code} ${result.message}`);
  return result.plan;
}

function refusal(overrides: Partial<RootfsIdmapInput>): { code: string; message: string } {
  const result = planRootfsIdmap(input(overrides));
  if (result.ok) throw new Error('expected a refusal');
  return { code: result.code, message: result.message };
}

describe('kernelIdmapSupport', () => {
  it('reads what Debian 6.1, Debian 6.12 and the 6.18 host allow', () => {
    expect(kernelIdmapSupport('6.1.0-56-cloud-amd64')).toEqual({ mountSetattr: true, ext4: true, overlayLayers: true, squashfs: false, tmpfs: false, overlay: false });
    expect(kernelIdmapSupport('6.12.117+deb12-cloud-amd64')).toEqual({ mountSetattr: true, ext4: true, overlayLayers: true, squashfs: true, tmpfs: true, overlay: false });
    expect(kernelIdmapSupport('6.18.44-fc-v769')).toMatchObject({ squashfs: true, tmpfs: true, overlay: false });
  });

  it('places each feature at the release that brought it', () => {
    expect(kernelIdmapSupport('5.11.0')).toMatchObject({ mountSetattr: false, ext4: false });
    expect(kernelIdmapSupport('5.12.0')).toMatchObject({ mountSetattr: true, ext4: true, overlayLayers: false });
    expect(kernelIdmapSupport('5.19.0')).toMatchObject({ overlayLayers: true, squashfs: false });
    expect(kernelIdmapSupport('6.2.0')).toMatchObject({ squashfs: true, tmpfs: false });
    expect(kernelIdmapSupport('6.3')).toMatchObject({ tmpfs: true });
    expect(kernelIdmapSupport('7.0.1')).toMatchObject({ squashfs: true, tmpfs: true });
  });

  it('does not guess from a release it cannot read', () => {
    expect(kernelIdmapSupport('')).toBeNull();
    expect(kernelIdmapSupport('linux-6.1')).toBeNull();
    expect(kernelIdmapSupport('6')).toBeNull();
    expect(kernelIdmapSupport('6.12abc')).toBeNull();
  });
});

describe('chooseRootfsStrategy', () => {
  it('idmaps the squashfs where the kernel allows it and shifts an upper layer where it does not', () => {
    expect(chooseRootfsStrategy(RANGE, '6.1.0-56-cloud-amd64')).toBe('shifted-upper');
    expect(chooseRootfsStrategy(RANGE, '6.2.0')).toBe('idmapped-lower');
    expect(chooseRootfsStrategy(RANGE, '6.12.117+deb12-cloud-amd64')).toBe('idmapped-lower');
    expect(chooseRootfsStrategy(RANGE, 'unknown')).toBe('shifted-upper');
  });

  it('leaves host ids alone without a range', () => {
    expect(chooseRootfsStrategy(null, '6.12.117')).toBe('host-ids');
  });
});

describe('planRootfsIdmap', () => {
  it('plans an idmapped lower layer under a plain upper layer on 6.2 and later', () => {
    expect(plan({ kernelRelease: '6.12.117+deb12-cloud-amd64' })).toEqual({
      strategy: 'idmapped-lower',
      steps: [
        { op: 'mkdir', path: '/run/mos/targets/web/lower', mode: 0o700 },
        {
          op: 'idmap-bind',
          source: '/run/mos/targets/web/image',
          target: '/run/mos/targets/web/lower',
          hostId: 200_000,
          size: 65_536,
          attrs: ['rdonly', 'nosuid', 'nodev'],
        },
        { op: 'mirror-root', from: '/run/mos/targets/web/lower', to: '/run/mos/scratch/web/upper' },
        {
          op: 'mount-overlay',
          target: '/run/mos/targets/web/root',
          data: 'lowerdir=/run/mos/targets/web/lower,upperdir=/run/mos/scratch/web/upper,workdir=/run/mos/scratch/web/work',
        },
      ],
      unmount: ['/run/mos/targets/web/root', '/run/mos/targets/web/lower'],
    });
  });

  it('plans a metacopy overlay shifted by the range on 6.1', () => {
    expect(plan()).toEqual({
      strategy: 'shifted-upper',
      steps: [
        {
          op: 'mount-overlay',
          target: '/run/mos/targets/web/root',
          data: 'lowerdir=/run/mos/targets/web/image,upperdir=/run/mos/scratch/web/upper,workdir=/run/mos/scratch/web/work,metacopy=on',
        },
        { op: 'require-option', target: '/run/mos/targets/web/root', option: 'metacopy=on' },
        { op: 'shift-tree', root: '/run/mos/targets/web/root', hostId: 200_000, size: 65_536, keepXattrs: ['security.capability'] },
      ],
      unmount: ['/run/mos/targets/web/root'],
    });
  });

  it('plans the plain overlay for nsgroup none', () => {
    expect(plan({ idRange: null, kernelRelease: '6.12.117' })).toEqual({
      strategy: 'host-ids',
      steps: [
        {
          op: 'mount-overlay',
          target: '/run/mos/targets/web/root',
          data: 'lowerdir=/run/mos/targets/web/image,upperdir=/run/mos/scratch/web/upper,workdir=/run/mos/scratch/web/work',
        },
      ],
      unmount: ['/run/mos/targets/web/root'],
    });
  });

  it('takes an explicit strategy over the release (a refused mount_setattr falls back)', () => {
    expect(plan({ kernelRelease: '6.12.117', strategy: 'shifted-upper' }).strategy).toBe('shifted-upper');
    expect(plan({ kernelRelease: '6.1.0', strategy: 'idmapped-lower' }).strategy).toBe('idmapped-lower');
  });

  it('refuses a strategy that does not fit the range', () => {
    expect(refusal({ idRange: null, strategy: 'shifted-upper' }).code).toBe('E_ROOTFS_STRATEGY');
    expect(refusal({ idRange: null, strategy: 'idmapped-lower' }).code).toBe('E_ROOTFS_STRATEGY');
    expect(refusal({ strategy: 'host-ids' }).code).toBe('E_ROOTFS_STRATEGY');
    expect(refusal({ strategy: 'bogus' as never }).code).toBe('E_ROOTFS_STRATEGY');
  });

  it('refuses ranges that would alias image ids or run past the last id', () => {
    expect(refusal({ idRange: { hostId: 1000, size: 65_536 } })).toEqual({
      code: 'E_ROOTFS_RANGE',
      message: 'web: id range host id 1000 must be at least the range size 65536',
    });
    expect(refusal({ idRange: { hostId: 0xffff0000, size: 65_536 } }).code).toBe('E_ROOTFS_RANGE');
    expect(refusal({ idRange: { hostId: 200_000, size: 0 } }).code).toBe('E_ROOTFS_RANGE');
    expect(refusal({ idRange: { hostId: 200_000.5, size: 65_536 } }).code).toBe('E_ROOTFS_RANGE');
    expect(refusal({ idRange: { hostId: -65_536, size: 65_536 } }).code).toBe('E_ROOTFS_RANGE');
    expect(planRootfsIdmap(input({ idRange: { hostId: 0xffff0000 - 65_536, size: 65_536 } })).ok).toBe(true);
  });

  it('refuses paths an overlay option string cannot carry', () => {
    for (const bad of ['relative/dir', '/run/mos/../etc', '/run/mos/a,upperdir=/x', '/run/mos/a:b', '/run/mos/a\\b', '/run/mos/a b', '/run/mos/dir/', '/run/\0x']) {
      expect(refusal({ upperDir: bad }).code, bad).toBe('E_ROOTFS_PATH');
    }
    expect(refusal({ lowerDir: '/run/mos/targets/web/image' }).message).toMatch(/five different paths/);
  });
});

describe('planShiftEntry', () => {
  const S_IFREG = 0o100000;
  const S_IFDIR = 0o040000;
  const S_IFLNK = 0o120000;

  it('moves image ids into the range', () => {
    expect(planShiftEntry('/etc/secret', { uid: 0, gid: 0, mode: S_IFREG | 0o600 }, RANGE)).toEqual({ action: 'chown', uid: 200_000, gid: 200_000, chmod: null });
    expect(planShiftEntry('/home/app', { uid: 1000, gid: 1000, mode: S_IFDIR | 0o755 }, RANGE)).toEqual({ action: 'chown', uid: 201_000, gid: 201_000, chmod: null });
    expect(planShiftEntry('/top', { uid: 65_535, gid: 0, mode: S_IFREG | 0o644 }, RANGE)).toEqual({ action: 'chown', uid: 265_535, gid: 200_000, chmod: null });
  });

  it('puts back the set-id bits a chown clears, never on a symlink', () => {
    expect(planShiftEntry('/bin/su', { uid: 0, gid: 0, mode: S_IFREG | 0o4755 }, RANGE)).toMatchObject({ chmod: 0o4755 });
    expect(planShiftEntry('/usr/bin/wall', { uid: 0, gid: 5, mode: S_IFREG | 0o2755 }, RANGE)).toMatchObject({ gid: 200_005, chmod: 0o2755 });
    expect(planShiftEntry('/srv/shared', { uid: 0, gid: 0, mode: S_IFDIR | 0o3777 }, RANGE)).toMatchObject({ chmod: 0o3777 });
    expect(planShiftEntry('/link', { uid: 0, gid: 0, mode: S_IFLNK | 0o777 }, RANGE)).toMatchObject({ chmod: null });
  });

  it('leaves an entry already in the range alone (a second name of a shifted inode)', () => {
    expect(planShiftEntry('/bin/alias', { uid: 200_000, gid: 201_000, mode: S_IFREG | 0o755 }, RANGE)).toEqual({ action: 'skip' });
    expect(planShiftEntry('/x', { uid: 265_535, gid: 265_535, mode: S_IFREG | 0o755 }, RANGE)).toEqual({ action: 'skip' });
  });

  it('refuses ids outside the image ids and the range, and half-shifted owners', () => {
    expect(planShiftEntry('/opt/big', { uid: 70_000, gid: 0, mode: S_IFREG | 0o644 }, RANGE)).toEqual({
      action: 'refuse',
      message: '/opt/big is owned by 70000:0, outside the image ids 0..65535 and the range 200000..265535',
    });
    expect(planShiftEntry('/x', { uid: 200_000, gid: 0, mode: S_IFREG | 0o644 }, RANGE).action).toBe('refuse');
    expect(planShiftEntry('/x', { uid: 265_536, gid: 265_536, mode: S_IFREG | 0o644 }, RANGE).action).toBe('refuse');
    expect(planShiftEntry('/x', { uid: 4_294_967_295, gid: 0, mode: S_IFREG | 0o644 }, RANGE).action).toBe('refuse');
  });
});
