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

  if (config.controlSocket) {
    args.push('-device', 'virtio-serial-pci');
    args.push('-chardev', `socket,id=mosctl,path=${config.controlSocket},server=on,wait=off`);
    args.push('-device', `virtserialport,chardev=mosctl,name=${CONTROL_PORT_NAME}`);
  }

  assertTcgOnly(args);
  return args;
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
