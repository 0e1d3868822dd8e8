/**
 * The Debian packages the VM tests need, installed idempotently (only the vm project calls this):
 * nothing happens when every command and firmware file is already there.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** What must exist → the package providing it. */
export const VM_REQUIREMENTS: Record<string, string> = {
  '/usr/bin/qemu-system-x86_64': 'qemu-system-x86',
  '/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd': 'ovmf',
  '/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd': 'ovmf',
  '/usr/bin/swtpm': 'swtpm',
  '/usr/bin/swtpm_setup': 'swtpm-tools',
  '/usr/bin/mcopy': 'mtools', // building a throwaway ESP for the unsigned UKI
  '/usr/sbin/mkfs.vfat': 'dosfstools',
  '/usr/bin/setpriv': 'util-linux', // QEMU under --pdeathsig KILL
  '/usr/bin/mksquashfs': 'squashfs-tools', // the trust cases' store disk
};

export function missingVmPackages(exists: (file: string) => boolean = existsSync): string[] {
  return [...new Set(Object.entries(VM_REQUIREMENTS).filter(([file]) => !exists(file)).map(([, pkg]) => pkg))];
}

export function ensureVmPackages(): void {
  const missing = missingVmPackages();
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`the VM tests need these Debian packages (run as root to install): ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  // Wait for another apt/dpkg (a colleague's install) instead of failing on its lock.
  const lock = ['-o', 'DPkg::Lock::Timeout=300'];
  execFileSync('apt-get', [...lock, 'update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', [...lock, 'install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
  const still = missingVmPackages();
  if (still.length) throw new Error(`still missing after apt-get install: ${still.join(' ')}`);
}
