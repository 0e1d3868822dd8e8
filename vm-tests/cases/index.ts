/** Every case, in order. A case is a folder `NN-name/` with a `case.ts`; list new ones here. */
import type { VmCase } from '../harness/case.ts';
import directBoot from './01-direct-boot/case.ts';
import secureBoot from './02-secure-boot/case.ts';
import serviceRestart from './03-service-restart/case.ts';
import pid1Crash from './04-pid1-crash/case.ts';
import ctrlAltDel from './05-ctrl-alt-del/case.ts';
import trustProvisionVerify from './06-trust-provision-verify/case.ts';
import trustCmdlinePcr from './07-trust-cmdline-pcr/case.ts';
import trustForeignKeyset from './08-trust-foreign-keyset/case.ts';
import trustTamperedBlob from './09-trust-tampered-blob/case.ts';
import verityImages from './10-verity-images/case.ts';
import storageVolumes from './11-storage-volumes/case.ts';
import containerNetworks from './12-container-networks/case.ts';

export const cases: readonly VmCase[] = [
  directBoot,
  secureBoot,
  serviceRestart,
  pid1Crash,
  ctrlAltDel,
  trustProvisionVerify,
  trustCmdlinePcr,
  trustForeignKeyset,
  trustTamperedBlob,
  verityImages,
  storageVolumes,
  containerNetworks,
];

/** Cases matching any selector: a number (`1`, `01`), a folder name, or part of one. */
export function selectCases(selectors: readonly string[]): VmCase[] {
  if (selectors.length === 0) return [...cases];
  return cases.filter((c) =>
    selectors.some((s) => (/^\d+$/.test(s) ? Number(c.id.slice(0, 2)) === Number(s) : c.id.includes(s))),
  );
}
