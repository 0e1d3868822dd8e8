/**
 * OVMF with Secure Boot (Debian's snakeoil keys enrolled) and a TPM from swtpm: the signed UKI
 * boots and the kernel reports "Secure boot enabled" and finds the TPM; the unsigned UKI is
 * refused by the firmware ("Access Denied") and no kernel starts. Both VMs run side by side.
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';

export default defineCase({
  id: '02-secure-boot',
  title: 'Secure Boot: the signed UKI boots, the unsigned one is refused',
  images: ['uefi'],
  timeoutMs: 360_000,
  async run(t) {
    const [signed, unsigned] = await Promise.all([
      t.boot({ name: 'signed', boot: 'uefi', secureBoot: true, tpm: true, control: false }),
      t.boot({ name: 'unsigned', boot: 'uefi', secureBoot: true, unsigned: true, control: false }),
    ]);

    const refused = (async () => {
      await unsigned.waitFor(Markers.accessDenied, Timeouts.uefiBoot);
      assert.doesNotMatch(unsigned.console.content, Markers.linuxBooting, 'no kernel started from the unsigned UKI');
      t.step(`unsigned UKI refused after ${unsigned.elapsed}`);
      await unsigned.quit();
    })();

    const booted = (async () => {
      await signed.waitFor(Markers.secureBootEnabled, Timeouts.uefiBoot);
      t.step(`signed UKI: kernel reports Secure Boot after ${signed.elapsed}`);
      await signed.waitFor(/tpm_tis \S+: 2\.0 TPM/, 30_000);
      await signed.waitFor(Markers.servicesReady, Timeouts.uefiBoot);
      t.step(`signed UKI: services ready after ${signed.elapsed}`);
    })();

    await Promise.all([refused, booted]);
  },
});
