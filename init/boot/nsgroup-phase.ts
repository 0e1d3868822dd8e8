/**
 * Boot phase `nsgroups` (after `trust`, before `storage`): every nsgroup the verified install
 * names gets its id range from the state kept in the TPM (init/trust/nsgroup-nv.ts), the same
 * on every boot. Its failure means: the services and volumes of named nsgroups cannot run (they
 * end `failed` with the code); those of the host's nsgroup (`none`, `""`) still do.
 */
import { isHostNsgroup, parseSubordinateIds, type NsgroupRanges, type SubordinateRange } from '../../services/idmap.ts';
import { loadNsgroupRanges, type NsgroupTpm } from '../trust/nsgroup-nv.ts';
import type { VerifiedInstall } from '../trust/verify-install.ts';

/** Where the host lists subordinate ids it hands out itself (newuidmap); nsgroups stay clear of them. */
export const SUBORDINATE_ID_FILES = ['/etc/subuid', '/etc/subgid'] as const;

export interface NsgroupPhaseEffects {
  native: NsgroupTpm;
  withTpm<T>(run: () => Promise<T>): Promise<T>;
  /** The file's text, or null when it does not exist. */
  readText(path: string): string | null;
  say(line: string): void;
  log(fields: object, message: string): void;
}

export interface NsgroupPhaseResult {
  ranges: NsgroupRanges;
  /** One line for the boot timeline. */
  note: string;
  warnings: string[];
}

/** The nsgroups a verified install uses: its container targets' and its storage items', sorted. */
export function installNsgroups(install: VerifiedInstall): string[] {
  const names = new Set<string>();
  for (const { target } of install.targets) if (target.service_type === 'container') names.add(target.nsgroup);
  for (const item of install.install.storage ?? []) names.add(item.nsgroup);
  return [...names].filter((name) => !isHostNsgroup(name)).sort();
}

export async function runNsgroupPhase(install: VerifiedInstall, tcti: string, fx: NsgroupPhaseEffects): Promise<NsgroupPhaseResult> {
  const wanted = installNsgroups(install);
  const reserved: SubordinateRange[] = [];
  const warnings: string[] = [];
  for (const file of SUBORDINATE_ID_FILES) {
    const text = fx.readText(file);
    if (text === null) continue;
    const parsed = parseSubordinateIds(text, file);
    reserved.push(...parsed.ranges);
    warnings.push(...parsed.problems);
  }
  if (wanted.length === 0) {
    return { ranges: { ok: true, assignment: { ranges: {}, retired: {} } }, note: 'no named nsgroups', warnings };
  }
  const loaded = await fx.withTpm(() => loadNsgroupRanges(fx.native, tcti, wanted, reserved));
  if (!loaded.ok) {
    fx.say(`mos: nsgroups: ${loaded.code}: ${loaded.message}; services and volumes of nsgroups ${wanted.join(', ')} will not start`);
    fx.log({ code: loaded.code, wanted }, `nsgroups: ${loaded.message}`);
    return { ranges: { ok: false, code: loaded.code, message: loaded.message }, note: `${loaded.code}: ${loaded.message}`, warnings };
  }
  warnings.push(...loaded.warnings);
  const list = wanted.map((name) => {
    const range = loaded.assignment.ranges[name]!;
    return `${name} ${range.hostId}-${range.hostId + range.size - 1}`;
  });
  const where = loaded.persisted ? `TPM NV 0x${loaded.index!.toString(16).padStart(8, '0')}` : 'memory only';
  const changes = [loaded.added.length > 0 ? `new: ${loaded.added.join(', ')}` : '', loaded.retired.length > 0 ? `retired: ${loaded.retired.join(', ')}` : '']
    .filter(Boolean)
    .join('; ');
  fx.say(`mos: nsgroups: ${list.join(', ')} (${where}${changes ? `; ${changes}` : ''})`);
  for (const warning of warnings) fx.say(`mos: nsgroups: warning: ${warning}`);
  fx.log({ ranges: loaded.assignment.ranges, retired: loaded.assignment.retired, steps: loaded.steps, warnings }, `nsgroups: ${loaded.reason}`);
  return { ranges: { ok: true, assignment: loaded.assignment }, note: `${list.join(', ')} (${where})`, warnings };
}
