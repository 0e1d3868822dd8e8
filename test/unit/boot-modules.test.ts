import { describe, expect, it } from 'vitest';
import {
  isCompressedModule,
  loadModules,
  moduleName,
  parseModuleList,
  parseModulesBuiltin,
  parseModulesDep,
  planModuleLoads,
} from '../../init/boot/modules.ts';
import { FakeNative } from '../../native/fake.ts';

// Shaped like Debian 6.1's modules.dep (depmod lists the whole closure of each module).
const MODULES_DEP = `kernel/drivers/md/dm-verity.ko: kernel/lib/reed_solomon/reed_solomon.ko kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/fs/squashfs/squashfs.ko.xz:
kernel/drivers/char/virtio_console.ko.zst: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
`;

describe('module names', () => {
  it('normalise paths, suffixes and dashes', () => {
    expect(moduleName('kernel/drivers/md/dm-verity.ko.xz')).toBe('dm_verity');
    expect(moduleName('dm-verity')).toBe('dm_verity');
    expect(moduleName('virtio_console.ko.zst')).toBe('virtio_console');
    expect(isCompressedModule('a.ko')).toBe(false);
    expect(['a.ko.xz', 'a.ko.zst', 'a.ko.gz'].every(isCompressedModule)).toBe(true);
  });
});

describe('parseModulesDep and planModuleLoads', () => {
  const deps = parseModulesDep(MODULES_DEP);

  it('loads dependencies first, each module once', () => {
    const plan = planModuleLoads(parseModuleList('dm-verity\ndm_mod\n'), deps);
    expect(plan.loads.map((l) => l.name)).toEqual(['reed_solomon', 'dm_mod', 'dm_bufio', 'dm_verity']);
    expect(plan.loads.find((l) => l.name === 'dm_mod')!.why).toBe('needed by dm_bufio');
    expect(plan.missing).toEqual([]);
  });

  it('orders a closure even when modules.dep lists it out of order', () => {
    const plan = planModuleLoads([{ name: 'virtio_pci', params: '' }, { name: 'virtio_console', params: '' }], deps);
    const order = plan.loads.map((l) => l.name);
    expect(order).toEqual(['virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_ring', 'virtio', 'virtio_pci', 'virtio_console']);
    expect(plan.loads.at(-1)).toMatchObject({ file: 'kernel/drivers/char/virtio_console.ko.zst', compressed: true });
  });

  it('reports unknown modules and drops built-in ones', () => {
    const builtin = parseModulesBuiltin('kernel/drivers/md/dm-mod.ko\n');
    const plan = planModuleLoads(parseModuleList('dm-verity\nno-such-module\n'), deps, builtin);
    expect(plan.loads.map((l) => l.name)).toEqual(['reed_solomon', 'dm_bufio', 'dm_verity']);
    expect(plan.builtin).toEqual(['dm_mod']);
    expect(plan.missing).toEqual(['no_such_module']);
  });

  it('survives a dependency cycle', () => {
    const cyclic = parseModulesDep('a.ko: b.ko\nb.ko: a.ko\n');
    expect(planModuleLoads([{ name: 'a', params: '' }], cyclic).loads.map((l) => l.name)).toEqual(['b', 'a']);
  });

  it('reads the module list with parameters and comments', () => {
    expect(parseModuleList('# storage\nloop max_loop=16\n\n squashfs ; inline\n')).toEqual([
      { name: 'loop', params: 'max_loop=16' },
      { name: 'squashfs', params: '' },
    ]);
  });
});

describe('loadModules', () => {
  const deps = parseModulesDep(MODULES_DEP);

  it('loads in order, counts EEXIST as loaded, skips modules whose dependency failed', async () => {
    const native = new FakeNative();
    native.failModules.set('/lib/modules/6.1/kernel/drivers/md/dm-mod.ko', 'EEXIST');
    native.failModules.set('/lib/modules/6.1/kernel/lib/reed_solomon/reed_solomon.ko', 'ENOENT');
    const plan = planModuleLoads([{ name: 'dm_verity', params: 'x=1' }], deps);
    const outcomes = await loadModules(native, '/lib/modules/6.1', plan, () => 0, deps);
    expect(outcomes.map((o) => [o.name, o.result])).toEqual([
      ['reed_solomon', 'failed'],
      ['dm_mod', 'already-loaded'],
      ['dm_bufio', 'loaded'],
      ['dm_verity', 'failed'],
    ]);
    expect(outcomes[0]!.detail).toBe('finit_module ENOENT /lib/modules/6.1/kernel/lib/reed_solomon/reed_solomon.ko');
    expect(outcomes[3]!.detail).toBe('dependency reed_solomon failed');
    expect(native.loadedModules.map((m) => m.path.split('/').pop())).toEqual(['reed_solomon.ko', 'dm-mod.ko', 'dm-bufio.ko']);
  });

  it('reports ENODEV (nothing to drive, e.g. efivarfs without EFI) as no-device, not a failure', async () => {
    const native = new FakeNative();
    native.failModules.set('/m/kernel/drivers/md/dm-mod.ko', 'ENODEV');
    const outcomes = await loadModules(native, '/m', planModuleLoads([{ name: 'dm_mod', params: '' }], deps), () => 0, deps);
    expect(outcomes).toEqual([{ name: 'dm_mod', result: 'no-device', durationMs: 0, detail: 'finit_module ENODEV /m/kernel/drivers/md/dm-mod.ko' }]);
  });

  it('passes compressed modules with the flag and explains a kernel that cannot take them', async () => {
    const native = new FakeNative();
    native.failModules.set('/m/kernel/fs/squashfs/squashfs.ko.xz', 'EINVAL');
    const outcomes = await loadModules(native, '/m', planModuleLoads([{ name: 'squashfs', params: '' }], deps), () => 0, deps);
    expect(native.loadedModules).toEqual([{ path: '/m/kernel/fs/squashfs/squashfs.ko.xz', params: '', compressed: true }]);
    expect(outcomes[0]!.detail).toContain('CONFIG_MODULE_DECOMPRESS is off; ship kernel/fs/squashfs/squashfs.ko uncompressed');
  });
});
