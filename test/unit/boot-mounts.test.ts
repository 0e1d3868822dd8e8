import { describe, expect, it } from 'vitest';
import {
  EARLY_MOUNTS,
  decideMount,
  parseMountInfo,
  planEarlyMounts,
  planUnmounts,
  unmountAll,
} from '../../init/boot/mounts.ts';
import { FakeNative } from '../../native/fake.ts';
import { MountFlags } from '../../native/types.ts';

const MOUNTINFO = `22 1 0:20 / / rw shared:1 - rootfs rootfs rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=1000k,mode=755
26 25 0:23 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620
27 22 0:24 / /run rw,nosuid,nodev,relatime - tmpfs tmpfs rw,mode=755
30 22 7:0 / /mnt/store ro,relatime - squashfs /dev/loop0 ro
31 30 0:30 / /mnt/store/with\\040space rw - tmpfs tmpfs rw
32 22 0:31 / /sysroot rw - overlay overlay rw,lowerdir=/a
`;

const none = { mounted: new Set<string>(), exists: () => false };

describe('the early mount table', () => {
  it('mounts the API filesystems in order, parents before children', () => {
    const plan = planEarlyMounts(EARLY_MOUNTS, 'early', none);
    expect(plan.map((p) => p.entry.target)).toEqual([
      '/proc',
      '/sys',
      '/dev',
      '/dev/pts',
      '/dev/shm',
      '/run',
      '/tmp',
      '/sys/fs/cgroup',
      '/sys/kernel/security',
    ]);
    expect(plan.every((p) => p.decision.action === 'mount')).toBe(true);
    const byTarget = new Map(EARLY_MOUNTS.map((entry) => [entry.target, entry]));
    expect(byTarget.get('/dev')).toMatchObject({ fstype: 'devtmpfs', data: 'mode=0755' });
    expect(byTarget.get('/sys/fs/cgroup')).toMatchObject({ fstype: 'cgroup2', data: 'nsdelegate' });
    expect(byTarget.get('/proc')!.flags & MountFlags.NOEXEC).toBeTruthy();
    expect(byTarget.get('/tmp')).toMatchObject({ fstype: 'tmpfs', data: 'mode=1777' });
  });

  it('skips what /proc/self/mountinfo already has', () => {
    const mounted = new Set(parseMountInfo(MOUNTINFO).map((entry) => entry.target));
    const plan = planEarlyMounts(EARLY_MOUNTS, 'early', { mounted, exists: () => true });
    const skipped = plan.filter((p) => p.decision.action === 'skip').map((p) => p.entry.target);
    expect(skipped).toEqual(['/proc', '/sys', '/dev', '/dev/pts', '/run']);
    expect(decideMount(EARLY_MOUNTS[0]!, { mounted, exists: () => true })).toEqual({ action: 'skip', reason: 'already mounted' });
  });

  it('mounts efivarfs late, and only when /sys/firmware/efi exists', () => {
    const bios = planEarlyMounts(EARLY_MOUNTS, 'late', none);
    expect(bios).toEqual([
      { entry: expect.objectContaining({ fstype: 'efivarfs' }), decision: { action: 'skip', reason: '/sys/firmware/efi does not exist' } },
    ]);
    const efi = planEarlyMounts(EARLY_MOUNTS, 'late', { mounted: new Set(), exists: (p) => p === '/sys/firmware/efi' });
    expect(efi[0]!.decision).toEqual({ action: 'mount' });
    expect(efi[0]!.entry.target).toBe('/sys/firmware/efi/efivars');
  });
});

describe('parseMountInfo', () => {
  it('reads targets, types and sources, unescaping octal escapes', () => {
    const entries = parseMountInfo(MOUNTINFO);
    expect(entries).toHaveLength(9);
    expect(entries[6]).toEqual({ id: 30, parentId: 22, target: '/mnt/store', fstype: 'squashfs', source: '/dev/loop0' });
    expect(entries[7]!.target).toBe('/mnt/store/with space');
  });
});

describe('planUnmounts', () => {
  it('on a machine: everything but / and the API filesystems, deepest first', () => {
    expect(planUnmounts(parseMountInfo(MOUNTINFO), { scope: 'all' })).toEqual(['/mnt/store/with space', '/mnt/store', '/sysroot']);
  });

  it('in a namespace: only what mos mounted itself', () => {
    const text = `${MOUNTINFO}40 22 0:40 / /tmp/mos-x/logs rw - tmpfs tmpfs rw\n`;
    expect(planUnmounts(parseMountInfo(text), { scope: 'own', own: ['/tmp/mos-x/logs'] })).toEqual(['/tmp/mos-x/logs']);
  });

  it('remounts a busy filesystem read-only instead', async () => {
    const native = new FakeNative();
    native.failNextUmount = 'EBUSY';
    const outcomes = await unmountAll(native, ['/mnt/store', '/sysroot']);
    expect(outcomes).toEqual([
      { target: '/mnt/store', result: 'read-only', detail: 'umount2 EBUSY /mnt/store' },
      { target: '/sysroot', result: 'unmounted' },
    ]);
    expect(native.mounts).toEqual([{ source: '', target: '/mnt/store', fstype: '', flags: MountFlags.REMOUNT | MountFlags.RDONLY }]);
  });
});
