/** The VM harness's QEMU command lines (vm-tests/harness/qemu.ts): pure, so tested here. */
import { describe, expect, it } from 'vitest';
import { assertTcgOnly, buildCmdline, buildQemuArgs, USER_NET, USER_NET_UPLINK, userNetdev, type QemuConfig } from '../../vm-tests/harness/qemu.ts';
import { buildSwtpmArgs } from '../../vm-tests/harness/swtpm.ts';
import { cleanConsoleText, ConsoleWatcher } from '../../vm-tests/harness/console.ts';
import { manifestCmdline } from '../../vm-tests/harness/images.ts';
import { missingVmPackages } from '../../vm-tests/harness/deps.ts';

const direct: QemuConfig = {
  boot: { kind: 'direct', kernel: '/b/vmlinuz', initrd: '/b/initramfs-test.cpio', cmdline: 'console=ttyS0 panic=-1' },
  consoleLog: '/w/console.log',
  qmpSocket: '/w/qmp.sock',
};
const secureUefi: QemuConfig = {
  ...direct,
  boot: { kind: 'uefi', code: '/fw/CODE.fd', vars: '/w/VARS.fd', esp: '/b/esp.img', secureBoot: true },
};

/** The value after each occurrence of `flag`. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((arg, i) => (arg === flag ? [args[i + 1]!] : []));
}

describe('buildQemuArgs', () => {
  const variants: [string, QemuConfig][] = [
    ['direct', direct],
    ['direct + tpm + control', { ...direct, tpmSocket: '/w/tpm.sock', controlSocket: '/w/control.sock' }],
    ['uefi secure boot', secureUefi],
    ['uefi plain', { ...secureUefi, boot: { ...(secureUefi.boot as object), secureBoot: false } as QemuConfig['boot'] }],
    ['direct + user-net NIC', { ...direct, userNet: { forwards: [{ protocol: 'tcp', hostPort: 18080, guestPort: 8080 }] } }],
  ];

  it.each(variants)('%s: always -accel tcg, never KVM, one CPU, qemu64+rdrand', (_, config) => {
    const args = buildQemuArgs(config);
    expect(values(args, '-accel')).toEqual(['tcg']);
    expect(args.join(' ')).not.toMatch(/kvm/i);
    expect(args).not.toContain('-enable-kvm');
    expect(values(args, '-cpu')).toEqual(['qemu64,+rdrand']);
    expect(values(args, '-smp')).toEqual(['1']);
    expect(values(args, '-machine').every((m) => !m.includes('accel'))).toBe(true);
    expect(args).toContain('-no-reboot');
  });

  it('wires the serial console to a file and QMP to a unix socket', () => {
    const args = buildQemuArgs(direct);
    expect(values(args, '-chardev')).toContain('file,id=serial0,path=/w/console.log');
    expect(values(args, '-serial')).toEqual(['chardev:serial0']);
    expect(values(args, '-qmp')).toEqual(['unix:/w/qmp.sock,server=on,wait=off']);
  });

  it('direct boot passes kernel, initramfs and command line', () => {
    const args = buildQemuArgs(direct);
    expect(values(args, '-kernel')).toEqual(['/b/vmlinuz']);
    expect(values(args, '-initrd')).toEqual(['/b/initramfs-test.cpio']);
    expect(values(args, '-append')).toEqual(['console=ttyS0 panic=-1']);
    expect(values(args, '-drive').some((d) => d.includes('pflash'))).toBe(false);
  });

  it('attaches swtpm as a TPM 2.0 on tpm-tis', () => {
    const args = buildQemuArgs({ ...direct, tpmSocket: '/w/tpm.sock' });
    expect(values(args, '-chardev')).toContain('socket,id=chrtpm,path=/w/tpm.sock');
    expect(values(args, '-tpmdev')).toEqual(['emulator,id=tpm0,chardev=chrtpm']);
    expect(values(args, '-device')).toContain('tpm-tis,tpmdev=tpm0');
  });

  it('refuses a vmlinux (PVH) kernel when a TPM is attached', () => {
    const pvh = { ...direct, boot: { ...(direct.boot as object), kernel: '/b/vmlinux' } as QemuConfig['boot'] };
    expect(() => buildQemuArgs({ ...pvh, tpmSocket: '/w/tpm.sock' })).toThrow(/bzImage/);
    expect(() => buildQemuArgs(pvh)).not.toThrow();
  });

  it('wires the mos.control virtio-serial port to a listening unix socket', () => {
    const args = buildQemuArgs({ ...direct, controlSocket: '/w/control.sock' });
    expect(values(args, '-device')).toEqual(expect.arrayContaining(['virtio-serial-pci', 'virtserialport,chardev=mosctl,name=mos.control']));
    expect(values(args, '-chardev')).toContain('socket,id=mosctl,path=/w/control.sock,server=on,wait=off');
    expect(values(buildQemuArgs(direct), '-device')).not.toContain('virtio-serial-pci');
  });

  it('Secure Boot: q35 with SMM, secure pflash, read-only code, private vars, ESP as a snapshot', () => {
    const args = buildQemuArgs(secureUefi);
    expect(values(args, '-machine')).toEqual(['q35,smm=on']);
    expect(values(args, '-global')).toEqual(['driver=cfi.pflash01,property=secure,value=on']);
    const drives = values(args, '-drive');
    expect(drives).toContain('if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd');
    expect(drives).toContain('if=pflash,format=raw,unit=1,file=/w/VARS.fd');
    expect(drives).toContain('if=none,id=esp,format=raw,snapshot=on,file=/b/esp.img');
    expect(values(args, '-device')).toContain('virtio-blk-pci,drive=esp,serial=esp,bootindex=0');
    expect(args).not.toContain('-kernel');
  });

  it('UEFI without Secure Boot needs neither SMM nor a secure pflash', () => {
    const args = buildQemuArgs({ ...secureUefi, boot: { ...(secureUefi.boot as object), secureBoot: false } as QemuConfig['boot'] });
    expect(values(args, '-machine')).toEqual(['q35']);
    expect(args).not.toContain('-global');
  });

  it('extra disks carry a serial for the guest to find them by', () => {
    const args = buildQemuArgs({ ...direct, drives: [{ file: '/w/store.img', serial: 'store', readOnly: true }] });
    expect(values(args, '-drive')).toContain('if=none,id=disk0,format=raw,readonly=on,file=/w/store.img');
    expect(values(args, '-device')).toContain('virtio-blk-pci,drive=disk0,serial=store');
  });
});

describe('userNetdev', () => {
  const tcp = { protocol: 'tcp', hostPort: 18080, guestPort: 8080 } as const;
  const udp = { protocol: 'udp', hostPort: 15353, guestPort: 53 } as const;

  it('TCP forwards only: restricted, on QEMU user-net\'s fixed network and gateway, each forward on 127.0.0.1', () => {
    expect(userNetdev({ forwards: [tcp, { protocol: 'tcp', hostPort: 12222, guestPort: 22 }] })).toBe(
      'user,id=net0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:12222-:22',
    );
  });

  it('no forwards: a restricted NIC the host cannot reach', () => {
    expect(userNetdev({ forwards: [] })).toBe('user,id=net0,restrict=on,net=10.0.2.0/24,host=10.0.2.2');
  });

  it('a UDP forward leaves the NIC unrestricted (restrict=on drops the answers), TCP forwards kept', () => {
    const netdev = userNetdev({ forwards: [tcp, udp] });
    expect(netdev).toBe('user,id=net0,net=10.0.2.0/24,host=10.0.2.2,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp:127.0.0.1:15353-:53');
    expect(netdev).not.toContain('restrict');
    expect(userNetdev({ forwards: [udp] })).toBe('user,id=net0,net=10.0.2.0/24,host=10.0.2.2,hostfwd=udp:127.0.0.1:15353-:53');
  });

  it('net= and host= agree with USER_NET and the guest\'s uplink word', () => {
    const netdev = userNetdev({ forwards: [] });
    expect(netdev).toContain(`net=${USER_NET.network}`);
    expect(netdev).toContain(`host=${USER_NET.gateway}`);
    expect(USER_NET_UPLINK).toBe(`mos.uplink=eth0,${USER_NET.guest}/${USER_NET.prefix},${USER_NET.gateway}`);
  });

  it('uses an explicit IPv4 host address', () => {
    expect(userNetdev({ forwards: [{ ...tcp, hostAddress: '0.0.0.0' }] })).toContain('hostfwd=tcp:0.0.0.0:18080-:8080');
  });

  it.each(['::1', 'localhost', '127.0.0', '', '127.0.0.1,hostfwd=tcp::1-:22'])('refuses the host address %j', (hostAddress) => {
    expect(() => userNetdev({ forwards: [{ ...tcp, hostAddress }] })).toThrow(/must be IPv4/);
  });

  it.each([
    ['host', 0],
    ['host', 65536],
    ['host', 80.5],
    ['host', Number.NaN],
    ['guest', 0],
    ['guest', -1],
    ['guest', 70000],
  ] as const)('refuses a %s port of %s', (side, port) => {
    const forward = side === 'host' ? { ...tcp, hostPort: port } : { ...tcp, guestPort: port };
    expect(() => userNetdev({ forwards: [forward] })).toThrow(/port out of range/);
  });

  it('accepts the port range\'s ends', () => {
    expect(userNetdev({ forwards: [{ protocol: 'tcp', hostPort: 1, guestPort: 65535 }] })).toContain('hostfwd=tcp:127.0.0.1:1-:65535');
  });

  it('buildQemuArgs: the netdev on a virtio-net NIC without an option ROM, and no NIC without userNet', () => {
    const userNet = { forwards: [tcp, udp] };
    const args = buildQemuArgs({ ...direct, userNet });
    expect(values(args, '-netdev')).toEqual([userNetdev(userNet)]);
    expect(values(args, '-device')).toContain('virtio-net-pci,netdev=net0,romfile=');
    const plain = buildQemuArgs(direct);
    expect(plain).not.toContain('-netdev');
    expect(values(plain, '-device').some((d) => d.startsWith('virtio-net'))).toBe(false);
  });
});

describe('assertTcgOnly', () => {
  it.each([
    [['-accel', 'kvm']],
    [['-accel', 'tcg', '-enable-kvm']],
    [['-accel', 'tcg', '-cpu', 'host']],
    [['-accel', 'tcg', '-machine', 'q35,accel=kvm']],
    [['-machine', 'q35']],
    [['-accel', 'tcg', '-accel', 'kvm']],
  ])('rejects %j', (args) => {
    expect(() => assertTcgOnly(args)).toThrow();
  });
});

describe('harness helpers', () => {
  it('swtpm runs a TPM 2.0 on a unix control socket and ends with QEMU', () => {
    expect(buildSwtpmArgs('/w/tpm', '/w/swtpm.sock')).toEqual([
      'socket', '--tpm2', '--tpmstate', 'dir=/w/tpm', '--ctrl', 'type=unixio,path=/w/swtpm.sock', '--terminate',
    ]);
  });

  it('joins command-line flags', () => {
    expect(buildCmdline('console=ttyS0 panic=-1', ['mos.debug_control=1', ' '])).toBe('console=ttyS0 panic=-1 mos.debug_control=1');
  });

  it('reads the test command line from the manifest in the shapes it may take', () => {
    expect(manifestCmdline({ variants: { test: { cmdline: 'a b' } } })).toBe('a b');
    expect(manifestCmdline({ cmdline: { test: 'c', prod: 'd' } })).toBe('c');
    expect(manifestCmdline({ cmdline: 'e' })).toBe('e');
    expect(manifestCmdline(null)).toBeNull();
  });

  it('lists the Debian packages to install', () => {
    expect(missingVmPackages(() => true)).toEqual([]);
    expect(missingVmPackages((file) => !file.includes('swtpm'))).toEqual(['swtpm', 'swtpm-tools']);
  });

  it('strips terminal escapes from console text', () => {
    expect(cleanConsoleText('\x1b[2J\x1b[01;01HAccess Denied\r\n')).toBe('Access Denied\n');
  });
});

describe('ConsoleWatcher', () => {
  it('resolves with the match once the marker arrives, searching from a mark', async () => {
    const watcher = new ConsoleWatcher();
    watcher.push('mos: services ready\n');
    const since = watcher.mark();
    const waiting = watcher.waitForMarker(/mos: reboot: (\w+)/, 1000, { since });
    watcher.push('mos: reb');
    watcher.push('oot: poweroff\n');
    const match = await waiting;
    expect(match[1]).toBe('poweroff');
    expect(match.index).toBe(since);
  });

  it('rejects at the timeout with the console tail', async () => {
    const watcher = new ConsoleWatcher();
    watcher.push('booting\nstill booting\n');
    await expect(watcher.waitForMarker(/never/, 20)).rejects.toThrow(/timed out after 20 ms[\s\S]*still booting/);
  });

  it('rejects at once on a kernel panic or when the console ends', async () => {
    const watcher = new ConsoleWatcher();
    const waiting = watcher.waitForMarker(/services ready/, 10_000);
    watcher.push('Kernel panic - not syncing: Attempted to kill init!\n');
    await expect(waiting).rejects.toThrow(/Kernel panic/);
    const ended = new ConsoleWatcher([]);
    const pending = ended.waitForMarker(/services ready/, 10_000);
    ended.end('QEMU exited (code 0)');
    await expect(pending).rejects.toThrow(/QEMU exited \(code 0\) before/);
  });
});
