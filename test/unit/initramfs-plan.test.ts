import { describe, expect, it } from 'vitest';
import { compareBytes, computeUkiLayout, decompressedModulePath, defaultCmdline, imageMode, imagePathFor, moduleDecompressor, moduleName, parseKernelConfig, parseLdd, parseModulesBuiltin, parseModulesDep, parseObjdumpSections, peChecksum, planCpioList, planModules, setPeTimestamp, trimModulesDep, DEFAULT_KERNEL, KERNELS, kernelOutDir, selectKernel } from '../../initramfs/plan.mjs';

describe('cpio file list', () => {
  it('adds parents, drops duplicates and sorts bytewise with each directory before its contents', () => {
    const list = planCpioList(['usr/lib/mos/mos-init.cjs', './init', '/usr/bin/node', 'usr/lib-x/a', 'usr/lib/mos/', 'init', 'Z']);
    expect(list).toEqual(['Z', 'init', 'usr', 'usr/bin', 'usr/bin/node', 'usr/lib', 'usr/lib-x', 'usr/lib-x/a', 'usr/lib/mos', 'usr/lib/mos/mos-init.cjs']);
    for (const [index, entry] of list.entries()) {
      const parent = entry.split('/').slice(0, -1).join('/');
      if (parent) expect(list.indexOf(parent)).toBeLessThan(index);
    }
  });

  it('is independent of input order and locale', () => {
    const paths = ['b/ä', 'b/a', 'B', 'a.b', 'a/b', 'a-b'];
    expect(planCpioList([...paths].reverse())).toEqual(planCpioList(paths));
    expect(compareBytes('B', 'a')).toBeLessThan(0);
    expect(compareBytes('a', 'ä')).toBeLessThan(0);
  });

  it('rejects paths that climb out of the image', () => {
    expect(() => planCpioList(['usr/../etc/passwd'])).toThrow(/bad path/);
  });

  it('gives fixed modes whatever the host had', () => {
    expect(imageMode('tmp', 'dir')).toBe(0o1777);
    expect(imageMode('root', 'dir')).toBe(0o700);
    expect(imageMode('usr/lib/mos', 'dir', 0o700)).toBe(0o755);
    expect(imageMode('usr/bin/node', 'file', 0o700)).toBe(0o755);
    expect(imageMode('etc/mos/services.yaml', 'file', 0o666)).toBe(0o644);
    expect(imageMode('usr/lib/x86_64-linux-gnu/libc.so.6', 'file', 0o644)).toBe(0o755);
    expect(imageMode('usr/lib/mos/mos_native.node', 'file', 0o644)).toBe(0o755);
  });
});

describe('ldd output', () => {
  const ldd = `\tlinux-vdso.so.1 (0x00007ffd4b1f0000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f30ae400000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f30ae21e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f30ae68f000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f30ae21e000)
`;

  it('lists the libraries and the loader, not the vDSO, once each', () => {
    expect(parseLdd(ldd)).toEqual(['/lib/x86_64-linux-gnu/libstdc++.so.6', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']);
  });

  it('refuses a missing library and unknown lines', () => {
    expect(() => parseLdd('\tlibfoo.so.1 => not found\n')).toThrow(/libfoo\.so\.1/);
    expect(() => parseLdd('\tsomething odd\n')).toThrow(/unexpected ldd line/);
    expect(parseLdd('\tstatically linked\n')).toEqual([]);
  });

  it('maps host paths into the merged-/usr image', () => {
    expect(imagePathFor('/lib/x86_64-linux-gnu/libc.so.6')).toBe('usr/lib/x86_64-linux-gnu/libc.so.6');
    expect(imagePathFor('/lib64/ld-linux-x86-64.so.2')).toBe('usr/lib64/ld-linux-x86-64.so.2');
    expect(imagePathFor('/usr/sbin/nft')).toBe('usr/sbin/nft');
    expect(imagePathFor('/sbin/ip')).toBe('usr/sbin/ip');
    expect(imagePathFor('/library/x')).toBe('library/x');
  });
});

describe('kernel modules', () => {
  const depText = [
    'kernel/drivers/md/dm-verity.ko.xz: kernel/lib/reed_solomon/reed_solomon.ko.xz kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz',
    'kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz',
    'kernel/drivers/md/dm-mod.ko.xz:',
    'kernel/lib/reed_solomon/reed_solomon.ko.xz:',
    'kernel/fs/squashfs/squashfs.ko.xz:',
    'kernel/drivers/virtio/virtio_ring.ko.xz:',
    'kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz',
    'kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz',
    'kernel/drivers/net/unrelated.ko.xz:',
    '',
  ].join('\n');
  const dep = parseModulesDep(depText);
  const builtin = parseModulesBuiltin('kernel/drivers/block/loop.ko\nkernel/fs/overlayfs/overlay.ko\n');

  it('normalises names and compression suffixes', () => {
    expect(moduleName('kernel/drivers/md/dm-verity.ko.xz')).toBe('dm_verity');
    expect(moduleName('dm-mod')).toBe('dm_mod');
    expect(decompressedModulePath('kernel/a/b-c.ko.zst')).toBe('kernel/a/b-c.ko');
    expect(decompressedModulePath('kernel/a/b.ko')).toBe('kernel/a/b.ko');
    expect(moduleDecompressor('x.ko.xz')).toEqual(['xz', '-dc']);
    expect(moduleDecompressor('x.ko.zst')).toEqual(['zstd', '-dcq']);
    expect(moduleDecompressor('x.ko')).toBeNull();
  });

  it('picks the wanted modules and their dependencies in load order, skipping built-ins', () => {
    const plan = planModules(dep, builtin, ['virtio_blk', 'loop', 'dm-verity', 'squashfs', 'dm_mod']);
    expect(plan.builtin).toEqual(['loop']);
    expect(plan.load).toEqual(['virtio_ring', 'virtio', 'virtio_blk', 'dm_mod', 'dm_bufio', 'reed_solomon', 'dm_verity', 'squashfs']);
    expect(plan.paths[0]).toBe('kernel/drivers/virtio/virtio_ring.ko.xz');
    for (const [index, name] of plan.load.entries()) {
      for (const depPath of dep.get(name)!.deps) expect(plan.load.indexOf(moduleName(depPath))).toBeLessThan(index);
    }
  });

  it('refuses a module the kernel has neither built in nor as a module', () => {
    expect(() => planModules(dep, builtin, ['no_such_module'])).toThrow(/no_such_module/);
  });

  it('trims modules.dep to the shipped modules, with decompressed paths', () => {
    const plan = planModules(dep, builtin, ['dm-verity']);
    expect(trimModulesDep(dep, plan.load)).toBe(
      [
        'kernel/drivers/md/dm-verity.ko: kernel/lib/reed_solomon/reed_solomon.ko kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko',
        'kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko',
        'kernel/drivers/md/dm-mod.ko:',
        'kernel/lib/reed_solomon/reed_solomon.ko:',
        '',
      ].join('\n'),
    );
    expect(() => trimModulesDep(dep, ['dm_verity'])).toThrow(/not kept/);
  });

  it('reads a kernel config', () => {
    const config = parseKernelConfig('CONFIG_SQUASHFS=m\nCONFIG_TCG_TIS=y\n# CONFIG_DEVTMPFS_MOUNT is not set\nCONFIG_LOCALVERSION="-x"\n');
    expect(config.get('SQUASHFS')).toBe('m');
    expect(config.get('TCG_TIS')).toBe('y');
    expect(config.has('DEVTMPFS_MOUNT')).toBe(false);
    expect(config.get('LOCALVERSION')).toBe('-x');
  });
});

describe('UKI layout', () => {
  // `objdump -h /usr/lib/systemd/boot/efi/linuxx64.efi.stub` (systemd 252, Debian 12).
  const objdump = `
/usr/lib/systemd/boot/efi/linuxx64.efi.stub:     file format pei-x86-64

Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         0000bff0  0000000000004000  0000000000004000  00000400  2**4
                  CONTENTS, ALLOC, LOAD, READONLY, CODE
  1 .reloc        0000000c  0000000000010000  0000000000010000  0000c400  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  2 .data         000034b8  0000000000011000  0000000000011000  0000c600  2**4
                  CONTENTS, ALLOC, LOAD, DATA
  6 .sbat         000000e2  0000000000019000  0000000000019000  00011000  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  7 .sdmagic      00000034  0000000000019100  0000000000019100  00011200  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
`;

  it('parses objdump -h', () => {
    const sections = parseObjdumpSections(objdump);
    expect(sections.map((s) => s.name)).toEqual(['.text', '.reloc', '.data', '.sbat', '.sdmagic']);
    expect(sections[4]).toEqual({ name: '.sdmagic', size: 0x34, vma: 0x19100 });
  });

  it('places the sections 64 KiB aligned after the stub (the addresses FACTS.md measured)', () => {
    const layout = computeUkiLayout(parseObjdumpSections(objdump), [
      { name: '.osrel', size: 120 },
      { name: '.cmdline', size: 22 },
      { name: '.linux', size: 14_186_432 },
      { name: '.initrd', size: 40_000_000 },
    ]);
    expect(layout.map((s) => s.vma)).toEqual([0x20000, 0x30000, 0x40000, 0x40000 + Math.ceil(14_186_432 / 0x10000) * 0x10000]);
    expect(layout[3]!.vma % 0x10000).toBe(0);
  });

  it('refuses empty and duplicate sections', () => {
    const stub = parseObjdumpSections(objdump);
    expect(() => computeUkiLayout(stub, [{ name: '.linux', size: 0 }])).toThrow(/empty/);
    expect(() => computeUkiLayout(stub, [{ name: '.sbat', size: 1 }])).toThrow(/already/);
  });

  it('pins the PE timestamp and keeps the checksum valid', () => {
    // A minimal PE: MZ, e_lfanew = 0x40, "PE\\0\\0", a COFF header and an optional header.
    const image = Buffer.alloc(0x200);
    image.write('MZ', 0, 'latin1');
    image.writeUInt32LE(0x40, 0x3c);
    image.write('PE\0\0', 0x40, 'latin1');
    image.writeUInt32LE(0x12345678, 0x48);
    image.fill(7, 0x100);
    setPeTimestamp(image, 0);
    expect(image.readUInt32LE(0x48)).toBe(0);
    const checksumOffset = 0x40 + 4 + 20 + 64;
    expect(image.readUInt32LE(checksumOffset)).toBe(peChecksum(image, checksumOffset));
    expect(() => setPeTimestamp(Buffer.alloc(0x100), 0)).toThrow(/MZ/);
  });

  it('bakes a command line per variant', () => {
    expect(defaultCmdline('test')).toBe('console=ttyS0 panic=-1 mos.debug_control=1');
    expect(defaultCmdline('prod')).toContain('quiet');
  });
});

describe('the guest kernel', () => {
  it('is one pinned setting: the default, or a known id; anything else is refused with the choices', () => {
    expect(selectKernel(undefined)).toMatchObject({ id: DEFAULT_KERNEL, ...KERNELS[DEFAULT_KERNEL as keyof typeof KERNELS] });
    expect(selectKernel('')).toMatchObject({ id: DEFAULT_KERNEL });
    expect(selectKernel('6.1')).toMatchObject({ id: '6.1', package: 'linux-image-6.1.0-56-cloud-amd64' });
    expect(() => selectKernel('5.10')).toThrow(/unknown kernel "5.10" \(MOS_KERNEL or --kernel\): one of 6.1, 6.12/);
    expect(() => selectKernel('constructor')).toThrow(/unknown kernel/);
  });

  it('builds the default kernel\'s images in the build root, another\'s beside them', () => {
    expect(kernelOutDir('/work/build', DEFAULT_KERNEL)).toBe('/work/build');
    expect(kernelOutDir('/work/build/', '6.1')).toBe('/work/build/kernel-6.1');
  });
});
