/** A FAT ESP image with one EFI binary at EFI/BOOT/BOOTX64.EFI (mkfs.vfat + mtools, no mount). */
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';

export function makeEsp(efiBinary: string, image: string): string {
  const sizeKiB = Math.ceil((statSync(efiBinary).size * 1.1) / 1024) + 4096;
  execFileSync('mkfs.vfat', ['-C', '-n', 'ESP', image, String(sizeKiB)], { stdio: 'pipe' });
  execFileSync('mmd', ['-i', image, '::/EFI', '::/EFI/BOOT'], { stdio: 'pipe' });
  execFileSync('mcopy', ['-i', image, efiBinary, '::/EFI/BOOT/BOOTX64.EFI'], { stdio: 'pipe' });
  return image;
}
