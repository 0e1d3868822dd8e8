/**
 * QEMU command lines, built by one pure function so that what we pass QEMU is unit-tested
 * (test/unit/vm-qemu-args.test.ts): TCG only, never KVM; OVMF pflash and Secure Boot wiring;
 * the swtpm TPM; the virtio-serial control channel `mos.control`; QMP; the serial console.
 *
 * Facts behind the choices (docs FACTS.md): the host has /dev/kvm but no VMX/SVM, so KVM hangs or
 * aborts: `-accel tcg` is always explicit and nothing here auto-detects. `-smp 1` is faster than
 * multi-threaded TCG on 2 cores. `-cpu qemu64,+rdrand` keeps Node from blocking on the kernel's
 * random pool. The uncompressed `vmlinux` (PVH entry) breaks an attached TPM: a TPM needs the
 * bzImage.
 */
import path from 'node:path';

export const QEMU_BINARY = 'qemu-system-x86_64';
/** The name the guest's PID 1 looks for under /sys/class/virtio-ports/. */
export const CONTROL_PORT_NAME = 'mos.control';
export const OVMF_DIR = '/usr/share/OVMF';
export const OVMF_SNAKEOIL_CODE = `${OVMF_DIR}/OVMF_CODE_4M.snakeoil.fd`;
export const OVMF_SNAKEOIL_VARS = `${OVMF_DIR}/OVMF_VARS_4M.snakeoil.fd`;
export const OVMF_PLAIN_CODE = `${OVMF_DIR}/OVMF_CODE_4M.fd`;
export const OVMF_PLAIN_VARS = `${OVMF_DIR}/OVMF_VARS_4M.fd`;

/** Direct kernel boot: SeaBIOS loads the kernel and initramfs itself (fastest under TCG). */
export interface DirectBoot {
  kind: 'direct';
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** UEFI boot: OVMF from pflash, a UKI at EFI/BOOT/BOOTX64.EFI on a FAT image. */
export interface UefiBoot {
  kind: 'uefi';
  /** Read-only firmware code, e.g. OVMF_CODE_4M.snakeoil.fd. */
  code: string;
  /** A PRIVATE, writable copy of the matching OVMF_VARS (never the file in /usr/share). */
  vars: string;
  /** The ESP image; attached with snapshot=on so the build output is never written. */
  esp: string;
  /** Secure Boot needs SMM and a secure pflash: q35,smm=on + cfi.pflash01 secure=on. */
  secureBoot: boolean;
}

export interface ExtraDrive {
  file: string;
  /** Seen in the guest as /sys/block/vd* /serial: find disks by serial, never by /dev/vdX order. */
  serial: string;
  readOnly?: boolean;
  format?: 'raw' | 'qcow2';
}

/** One QEMU user-net host forward: `<protocol>:<hostAddress>:<hostPort>` on the host → `:<guestPort>` in the guest. */
export interface HostForward {
  protocol: 'tcp' | 'udp';
  /** Default 127.0.0.1: test traffic stays on the host's loopback (FACTS.md). */
  hostAddress?: string;
  hostPort: number;
  guestPort: number;
}

/**
 * A NIC on QEMU's user-mode network (slirp): the guest is 10.0.2.15/24 with the gateway 10.0.2.2
 * (`mos.uplink=eth0,10.0.2.15/24,10.0.2.2`, see USER_NET_UPLINK), reachable from the host only through
 * `forwards`. With TCP forwards only, `restrict=on` also keeps the guest from reaching the host or
 * anything beyond it (the forwards still work); a UDP forward needs the NIC unrestricted
 * (`userNetdev`). Nothing in the test guests opens connections of its own either way.
 */
export interface UserNet {
  forwards: readonly HostForward[];
}

/** QEMU user-net's fixed addresses: the guest's interface, prefix and gateway. */
export const USER_NET = { network: '10.0.2.0/24', guest: '10.0.2.15', prefix: 24, gateway: '10.0.2.2' } as const;
/** The kernel command-line word that configures the guest's end of the user-net NIC (init/boot/cmdline.ts). */
export const USER_NET_UPLINK = `mos.uplink=eth0,${USER_NET.guest}/${USER_NET.prefix},${USER_NET.gateway}`;

export interface QemuConfig {
  boot: DirectBoot | UefiBoot;
  /** The serial console (ttyS0) is written to this file. */
  consoleLog: string;
  /** QMP on a unix socket (server, no wait). */
  qmpSocket: string;
  /** Host end of the virtio-serial port `mos.control`, a unix socket QEMU listens on. */
  controlSocket?: string;
  /** swtpm's control socket (`--ctrl type=unixio,path=...`): attaches a TPM 2.0 (tpm-tis). */
  tpmSocket?: string;
  memoryMiB?: number;
  drives?: ExtraDrive[];
  /** Guest reboot makes QEMU exit (default true): a test sees a reboot as an end, not a loop. */
  noReboot?: boolean;
  /** A virtio-net NIC on QEMU's user-mode network with host forwards; without it the guest has no NIC (-nodefaults). */
  userNet?: UserNet;
}

/** Builds QEMU's argv (without the binary). Pure: no file system, no environment. */
export function buildQemuArgs(config: QemuConfig): string[] {
  const { boot } = config;
  const args: string[] = [];
  const secure = boot.kind === 'uefi' && boot.secureBoot;

  args.push('-accel', 'tcg');
  args.push('-machine', secure ? 'q35,smm=on' : 'q35');
  args.push('-cpu', 'qemu64,+rdrand', '-smp', '1', '-m', String(config.memoryMiB ?? 1024));
  args.push('-nodefaults', '-no-user-config', '-display', 'none');
  if (config.noReboot ?? true) args.push('-no-reboot');

  // The serial console goes to a file: it survives the test process and becomes the artifact.
  args.push('-chardev', `file,id=serial0,path=${config.consoleLog}`, '-serial', 'chardev:serial0');
  args.push('-qmp', `unix:${config.qmpSocket},server=on,wait=off`);

  if (boot.kind === 'direct') {
    if (config.tpmSocket && /^vmlinux/.test(path.basename(boot.kernel))) {
      throw new Error(`a TPM needs the bzImage: ${boot.kernel} is an uncompressed vmlinux (PVH), which breaks the TPM`);
    }
    args.push('-kernel', boot.kernel, '-initrd', boot.initrd, '-append', boot.cmdline);
  } else {
    if (secure) args.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${boot.code}`);
    args.push('-drive', `if=pflash,format=raw,unit=1,file=${boot.vars}`);
    args.push('-drive', `if=none,id=esp,format=raw,snapshot=on,file=${boot.esp}`);
    args.push('-device', 'virtio-blk-pci,drive=esp,serial=esp,bootindex=0');
  }

  config.drives?.forEach((drive, index) => {
    const id = `disk${index}`;
    const ro = drive.readOnly ? ',readonly=on' : '';
    args.push('-drive', `if=none,id=${id},format=${drive.format ?? 'raw'}${ro},file=${drive.file}`);
    args.push('-device', `virtio-blk-pci,drive=${id},serial=${drive.serial}`);
  });

  if (config.tpmSocket) {
    args.push('-chardev', `socket,id=chrtpm,path=${config.tpmSocket}`);
    args.push('-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0');
  }

  if (config.userNet) {
    // romfile= (empty): no iPXE option ROM; the firmware boots from disk or -kernel, never the network.
    args.push('-netdev', userNetdev(config.userNet), '-device', 'virtio-net-pci,netdev=net0,romfile=');
  }

  if (config.controlSocket) {
    args.push('-device', 'virtio-serial-pci');
    args.push('-chardev', `socket,id=mosctl,path=${config.controlSocket},server=on,wait=off`);
    args.push('-device', `virtserialport,chardev=mosctl,name=${CONTROL_PORT_NAME}`);
  }

  assertTcgOnly(args);
  return args;
}

/** `-netdev`'s value for `userNet`: `user,id=net0[,restrict=on],net=…,host=…,hostfwd=tcp:127.0.0.1:P-:G,…`. */
export function userNetdev(userNet: UserNet): string {
  // restrict=on drops the guest's answers to UDP forwards (measured with QEMU 7.2: the datagram
  // reached the guest's service, its answer never came back; TCP works). Likely cause, not
  // verified in slirp's source: an answer to 10.0.2.2 looks like the guest contacting the host,
  // which restrict forbids. With a UDP forward the NIC is unrestricted.
  const restrict = !userNet.forwards.some((forward) => forward.protocol === 'udp');
  const parts = ['user', 'id=net0', ...(restrict ? ['restrict=on'] : []), `net=${USER_NET.network}`, `host=${USER_NET.gateway}`];
  for (const forward of userNet.forwards) {
    const { protocol, hostPort, guestPort } = forward;
    const hostAddress = forward.hostAddress ?? '127.0.0.1';
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(hostAddress)) throw new Error(`host forward address must be IPv4: ${hostAddress}`);
    for (const port of [hostPort, guestPort]) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`host forward port out of range: ${port}`);
    }
    parts.push(`hostfwd=${protocol}:${hostAddress}:${hostPort}-:${guestPort}`);
  }
  return parts.join(',');
}

/** Throws unless the argv selects TCG explicitly and nothing that could reach KVM. */
export function assertTcgOnly(args: readonly string[]): void {
  const accel = args.flatMap((arg, i) => (arg === '-accel' ? [args[i + 1]] : []));
  if (accel.length !== 1 || accel[0] !== 'tcg') throw new Error(`QEMU must run with exactly "-accel tcg", got ${JSON.stringify(accel)}`);
  for (const [i, arg] of args.entries()) {
    if (arg === '-enable-kvm' || /kvm/i.test(arg)) throw new Error(`KVM is forbidden on these hosts: ${arg}`);
    if (arg === '-cpu' && /^(host|max)\b/.test(args[i + 1] ?? '')) throw new Error(`-cpu ${args[i + 1]} is forbidden (needs KVM)`);
    if (arg === '-machine' && /accel=/.test(args[i + 1] ?? '')) throw new Error('select the accelerator only with -accel tcg');
  }
}

/** The guest kernel command line for the test image, with `extra` appended. */
export function buildCmdline(base: string, extra: readonly string[] = []): string {
  return [base, ...extra].map((part) => part.trim()).filter(Boolean).join(' ');
}
