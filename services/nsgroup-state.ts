/**
 * The persisted nsgroup id assignment: its encoding, the TPM NV index that holds it, and the
 * decision of what to do with what the TPM holds at boot (`planNsgroupState`). Pure: the TPM
 * calls are in init/trust/nsgroup-nv.ts.
 *
 * Why the TPM: the issue asks for state "that an offline disk edit cannot change unnoticed". An
 * NV index cannot be reached by editing the disk at all, so the assignment is kept there whole
 * (not a digest of a file on disk: that would need the same index plus a file to lose).
 *
 * The encoding is canonical JSON, NUL-padded to the index's size:
 *
 *   {"v":1,"ranges":{"db":2,"web":1},"retired":{"old":3}}\0\0\0...
 *
 * A number is a slot: the range of slot k is host ids k*65536 .. k*65536+65535 (services/idmap.ts
 * `RANGE_SIZE`), so a stored range is aligned and full-sized by construction. Names are sorted,
 * there is no whitespace, and decoding re-encodes and demands the same bytes: one assignment has
 * exactly one encoding, and anything else (a hand edit with a space, a duplicate key, trailing
 * bytes after the padding) is refused, not interpreted. JSON over a smaller binary format because
 * an operator can read it with `tpm2_nvread` alone; the capacity cost is about three bytes per
 * nsgroup.
 *
 * Size: every write covers the whole index in one TPM2_NV_Write (TPMA_NV_WRITEALL), and one
 * NV_Write carries at most TPM2_PT_NV_BUFFER_MAX bytes. That is 1024 on swtpm, 768 on Infineon's
 * SLB 9670 and at least 512 on every PC-Client TPM, hence 512. It holds about 35 nsgroups
 * (current and retired together) with names of 8 characters, 7 with names of the full 63.
 */
import { NSGROUP_PATTERN } from '../init/trust/install-schema.ts';
import { formatNvAttributes, TPMA_NV } from '../init/trust/tpm-policy.ts';
import type { TpmHashAlg, TpmNvDefinition, TpmNvPublic } from '../native/types.ts';
import { assignIdRanges, isHostNsgroup, MAX_ID, RANGE_SIZE, type IdAssignment, type IdRange, type SubordinateRange } from './idmap.ts';

/**
 * The NV index. In the TCG owner range next to the trust root's 0x01806d6f (init/trust/trust-root.ts),
 * clear of project-machine's 0x015000xx.
 */
export const NSGROUP_STATE_NV_INDEX = 0x0180_6d70;
/** Bytes in the index: one NV buffer on every PC-Client TPM (see above). */
export const NSGROUP_STATE_SIZE = 512;
export const NSGROUP_STATE_NAME_ALG: TpmHashAlg = 'sha256';
/** The encoding's version (`"v"`); another one is refused, never overwritten. */
export const NSGROUP_STATE_VERSION = 1;
/** The highest slot whose range ends at or below MAX_ID: 65534 (ids 0xfffe0000..0xfffeffff). */
export const MAX_SLOT = Math.floor((MAX_ID + 1) / RANGE_SIZE) - 1;
/** Above this share of the index, a boot warns that the state is filling up. */
export const NSGROUP_STATE_WARN_FILL = 0.75;

/**
 * The index's attributes (type ordinary):
 *
 * - AUTHREAD: read with the index's own authValue, which is empty. The assignment is not secret
 *   (the same facts are in every container's uid_map), and a read bound to the PCRs as the trust
 *   root's is would make it unreadable after every UKI update: the stability the issue asks for
 *   across updates would be lost, and with it every retired range.
 * - OWNERWRITE: written with owner authorization (empty: mos does not take ownership), as the
 *   trust root is. Not POLICYWRITE with a PCR policy: a new UKI could then not record a new
 *   nsgroup, and whoever has owner authorization can undefine and redefine the index anyway, so a
 *   write policy would protect nothing that owner authorization does not already reach.
 * - WRITEALL: every write is the whole index in one command; never half an old and half a new
 *   assignment, as between the chunks of a larger write.
 * - NO_DA: there is no secret to guess.
 *
 * Left clear: OWNERREAD/PPREAD/POLICYREAD (one way to read is enough), AUTHWRITE (writing would
 * not even need owner authorization), WRITEDEFINE/WRITE_STCLEAR (the index is rewritten when
 * the nsgroups change; a lock would stop only a writer who could undefine it instead), ORDERLY and
 * CLEAR_STCLEAR (it must survive any shutdown), READ_STCLEAR, GLOBALLOCK, PLATFORMCREATE,
 * POLICY_DELETE. The authPolicy is empty, so no policy session can authorize anything on it:
 * in particular TPM2_NV_ChangeAuth (admin role, policy only) cannot give it a password that
 * would stop the next boot from reading it.
 */
export const NSGROUP_STATE_NV_ATTRIBUTES = TPMA_NV.AUTHREAD | TPMA_NV.OWNERWRITE | TPMA_NV.WRITEALL | TPMA_NV.NO_DA;

export type NsgroupStateErrorCode =
  /** The index or its content is not an acceptable nsgroup state (tampered, foreign, other version). */
  | 'E_NSGROUP_STATE'
  /** The assignment does not fit in the index. */
  | 'E_NSGROUP_STATE_FULL'
  /** The index is absent but the caller knows the state existed (e.g. the TPM was cleared). */
  | 'E_NSGROUP_STATE_LOST'
  /** A wanted nsgroup name cannot be stored (not NSGROUP_PATTERN). */
  | 'E_NSGROUP_NAME'
  /** A TPM command failed (see `cause`). */
  | 'E_NSGROUP_TPM';

/** Every code loading the state can end with: its own and services/idmap.ts's. */
export type NsgroupErrorCode = NsgroupStateErrorCode | 'E_NSGROUP_OVERLAP' | 'E_NSGROUP_EXHAUSTED';

export interface NsgroupRefusal {
  ok: false;
  code: NsgroupErrorCode;
  message: string;
}

const hex = (index: number) => `0x${index.toString(16).padStart(8, '0')}`;
const refuse = (code: NsgroupErrorCode, message: string): NsgroupRefusal => ({ ok: false, code, message });

/** The index as mos defines it. */
export function nsgroupStateDefinition(index: number = NSGROUP_STATE_NV_INDEX): TpmNvDefinition {
  return { index, size: NSGROUP_STATE_SIZE, attributes: NSGROUP_STATE_NV_ATTRIBUTES, authPolicy: Buffer.alloc(0), nameAlg: NSGROUP_STATE_NAME_ALG };
}

/**
 * Why an index is not mos's nsgroup state (attributes other than ours apart from WRITTEN, another
 * size, nameAlg or an authPolicy), or null when it is.
 */
export function checkNsgroupStateIndex(pub: TpmNvPublic): string | null {
  const problems: string[] = [];
  const attributes = (pub.attributes & ~TPMA_NV.WRITTEN) >>> 0;
  if (attributes !== NSGROUP_STATE_NV_ATTRIBUTES) {
    problems.push(`attributes ${formatNvAttributes(attributes) || 'none'}, expected ${formatNvAttributes(NSGROUP_STATE_NV_ATTRIBUTES)}`);
  }
  if (pub.size !== NSGROUP_STATE_SIZE) problems.push(`size ${pub.size}, expected ${NSGROUP_STATE_SIZE}`);
  if (pub.nameAlg !== NSGROUP_STATE_NAME_ALG) problems.push(`nameAlg ${pub.nameAlg}, expected ${NSGROUP_STATE_NAME_ALG}`);
  if (pub.authPolicy.length !== 0) problems.push('an authPolicy, expected none');
  return problems.length === 0 ? null : problems.join('; ');
}

/** A record without a prototype: an nsgroup called `constructor` is not found on Object.prototype. */
function record<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

/** An empty assignment whose records have no prototype (see `record`). */
export function emptyAssignment(): IdAssignment {
  return { ranges: record(), retired: record() };
}

/** Whether `name` can be an nsgroup with a range (and so be stored). */
export function isStorableNsgroup(name: string): boolean {
  return NSGROUP_PATTERN.test(name) && !isHostNsgroup(name);
}

/** The names in `wanted` that can neither be stored nor mean host ids; [] when all are fine. */
export function invalidNsgroupNames(wanted: readonly string[]): string[] {
  return [...new Set(wanted.filter((name) => !isHostNsgroup(name) && !NSGROUP_PATTERN.test(name)))];
}

function slotOf(range: IdRange): number | null {
  if (range.size !== RANGE_SIZE || !Number.isInteger(range.hostId) || range.hostId % RANGE_SIZE !== 0) return null;
  const slot = range.hostId / RANGE_SIZE;
  return slot >= 1 && slot <= MAX_SLOT ? slot : null;
}

/** The canonical text of checked entries: names sorted by code unit, no whitespace. */
function canonicalText(ranges: [string, number][], retired: [string, number][]): string {
  const object = (entries: [string, number][]) =>
    `{${[...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, slot]) => `${JSON.stringify(name)}:${slot}`).join(',')}}`;
  return `{"v":${NSGROUP_STATE_VERSION},"ranges":${object(ranges)},"retired":${object(retired)}}`;
}

export type EncodeResult = { ok: true; data: Buffer; used: number } | NsgroupRefusal;

/**
 * The index content for `assignment`: canonical JSON, NUL-padded to `size` bytes. Refuses an
 * assignment that cannot be stored (bad name, a range that is not a slot, a name or slot twice)
 * and one that does not fit (E_NSGROUP_STATE_FULL).
 */
export function encodeNsgroupState(assignment: IdAssignment, size: number = NSGROUP_STATE_SIZE): EncodeResult {
  const slots = new Map<number, string>();
  const lists: { ranges: [string, number][]; retired: [string, number][] } = { ranges: [], retired: [] };
  for (const kind of ['ranges', 'retired'] as const) {
    for (const name of Object.keys(assignment[kind])) {
      if (!isStorableNsgroup(name)) return refuse('E_NSGROUP_NAME', `nsgroup ${JSON.stringify(name)} cannot be stored: expected ${NSGROUP_PATTERN}, not "none"`);
      if (kind === 'retired' && Object.hasOwn(assignment.ranges, name)) {
        return refuse('E_NSGROUP_STATE', `nsgroup ${name} is both assigned and retired`);
      }
      const range = assignment[kind][name]!;
      const slot = slotOf(range);
      if (slot === null) {
        return refuse('E_NSGROUP_STATE', `nsgroup ${name}: range ${range.hostId}+${range.size} is not an aligned range of ${RANGE_SIZE} ids in slots 1-${MAX_SLOT}`);
      }
      const other = slots.get(slot);
      if (other !== undefined) return refuse('E_NSGROUP_STATE', `nsgroups ${other} and ${name} both have slot ${slot}`);
      slots.set(slot, name);
      lists[kind].push([name, slot]);
    }
  }
  const text = canonicalText(lists.ranges, lists.retired);
  if (text.length > size) {
    return refuse(
      'E_NSGROUP_STATE_FULL',
      `the nsgroup assignment (${lists.ranges.length} nsgroups, ${lists.retired.length} retired) needs ${text.length} bytes; ` +
        `the state index holds ${size}. Too many nsgroups: see docs/nsgroups.md (recovery) for dropping retired ones`,
    );
  }
  const data = Buffer.alloc(size);
  data.write(text, 'latin1');
  return { ok: true, data, used: text.length };
}

export type DecodeResult = { ok: true; assignment: IdAssignment; used: number } | NsgroupRefusal;

/**
 * The assignment in an index's content, or why it is not one. Strict: printable ASCII JSON of
 * exactly the canonical form, then only NULs; version 1; names that can be stored; slots in
 * 1-MAX_SLOT; no name or slot twice.
 */
export function decodeNsgroupState(data: Buffer): DecodeResult {
  const bad = (why: string) => refuse('E_NSGROUP_STATE', `nsgroup state is not valid: ${why}`);
  const end = data.indexOf(0);
  const textBytes = end < 0 ? data : data.subarray(0, end);
  if (end >= 0 && data.subarray(end).some((byte) => byte !== 0)) return bad(`bytes after the end of the text at offset ${end}`);
  if (textBytes.length === 0) return bad('it is empty');
  if (textBytes.some((byte) => byte < 0x20 || byte > 0x7e)) return bad('it is not printable ASCII');
  const text = textBytes.toString('latin1');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return bad(`it is not JSON (${(error as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return bad('it is not a JSON object');
  const top = parsed as Record<string, unknown>;
  if (typeof top.v === 'number' && top.v !== NSGROUP_STATE_VERSION) {
    return refuse('E_NSGROUP_STATE', `nsgroup state has format version ${top.v}; this mos reads version ${NSGROUP_STATE_VERSION} and will not overwrite another`);
  }
  const keys = Object.keys(top).sort().join(',');
  if (keys !== 'ranges,retired,v') return bad(`expected the keys v, ranges and retired, found ${Object.keys(top).join(', ') || 'none'}`);

  const assignment = emptyAssignment();
  const entries: Record<'ranges' | 'retired', [string, number][]> = { ranges: [], retired: [] };
  const slots = new Map<number, string>();
  for (const kind of ['ranges', 'retired'] as const) {
    const value = top[kind];
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return bad(`${kind} is not an object`);
    for (const [name, slot] of Object.entries(value as Record<string, unknown>)) {
      if (!isStorableNsgroup(name)) return bad(`${kind} names ${JSON.stringify(name)}, which is not an nsgroup`);
      if (typeof slot !== 'number' || !Number.isInteger(slot) || slot < 1 || slot > MAX_SLOT) {
        return bad(`${kind}.${name} is ${JSON.stringify(slot)}, not a slot in 1-${MAX_SLOT}`);
      }
      if (kind === 'retired' && Object.hasOwn(assignment.ranges, name)) return bad(`nsgroup ${name} is both assigned and retired`);
      const other = slots.get(slot);
      if (other !== undefined) return bad(`nsgroups ${other} and ${name} both have slot ${slot}`);
      slots.set(slot, name);
      assignment[kind][name] = { hostId: slot * RANGE_SIZE, size: RANGE_SIZE };
      entries[kind].push([name, slot]);
    }
  }
  // One assignment, one encoding: whitespace, key order, duplicate keys and number spellings
  // that JSON.parse forgives are refused here.
  if (canonicalText(entries.ranges, entries.retired) !== text) return bad('it is not in canonical form');
  return { ok: true, assignment, used: text.length };
}

/**
 * Why `next` may not replace `previous`, or null when it may: every range `previous` holds
 * (assigned or retired) must still be in `next` at the same ids, and every wanted nsgroup must
 * have a range. The last guard before a write: a retired range is never lost, so it is never
 * handed to another nsgroup while files with its ids may remain on a volume.
 */
export function checkKeepsRanges(previous: IdAssignment, next: IdAssignment, wanted: readonly string[]): string | null {
  for (const kind of ['ranges', 'retired'] as const) {
    for (const [name, range] of Object.entries(previous[kind])) {
      const kept = Object.hasOwn(next.ranges, name) ? next.ranges[name] : Object.hasOwn(next.retired, name) ? next.retired[name] : undefined;
      if (!kept) return `the range of nsgroup ${name} (host ids ${range.hostId}+${range.size}) would be dropped`;
      if (kept.hostId !== range.hostId || kept.size !== range.size) {
        return `nsgroup ${name} would move from host ids ${range.hostId}+${range.size} to ${kept.hostId}+${kept.size}`;
      }
    }
  }
  for (const name of wanted) {
    if (!isHostNsgroup(name) && !Object.hasOwn(next.ranges, name)) return `wanted nsgroup ${name} would have no range`;
  }
  return null;
}

export interface NsgroupStateFacts {
  index: number;
  /** The index's public area now, null when it is not defined. */
  existing: TpmNvPublic | null;
  /**
   * Its whole content, read with `tpmNvRead`, when `existing` is ours (`checkNsgroupStateIndex`)
   * and written; null otherwise.
   */
  content: Buffer | null;
  /** The install's nsgroup names (`none` and `""` are left out of the assignment). */
  wanted: readonly string[];
  /** The host's /etc/subuid and /etc/subgid entries. */
  reserved: readonly SubordinateRange[];
  /**
   * Whether an absent index may be defined (first boot). False when the caller knows this machine
   * had nsgroup state before (so an absent index means a cleared TPM): E_NSGROUP_STATE_LOST.
   * Default true.
   */
  allowDefine?: boolean;
}

export type NsgroupStateStep = { op: 'define'; definition: TpmNvDefinition } | { op: 'write'; index: number; data: Buffer };

export type NsgroupStatePlan =
  | {
      kind: 'steps';
      /** In order; empty when the TPM already holds exactly `assignment`. */
      steps: NsgroupStateStep[];
      /** What the TPM held (empty on first boot). */
      previous: IdAssignment;
      assignment: IdAssignment;
      /** Nsgroups given a new range, and those retired, by this plan. */
      added: string[];
      retired: string[];
      /** Bytes of the index the assignment takes. */
      used: number;
      /** Why these steps, for the log. */
      reason: string;
      warnings: string[];
    }
  | { kind: 'refuse'; code: NsgroupErrorCode; message: string };

/**
 * What to do with the nsgroup state the TPM holds, for the nsgroups wanted now:
 *
 * | the index                                | plan                                           |
 * |------------------------------------------|------------------------------------------------|
 * | absent                                   | define + write (refuse when !allowDefine)      |
 * | ours, never written (first boot cut off) | write                                          |
 * | ours, written, holds this assignment     | nothing                                        |
 * | ours, written, nsgroups changed          | write (one NV_Write of the whole index)        |
 * | other attributes, size, nameAlg, policy  | refuse E_NSGROUP_STATE                         |
 * | content undecodable or another version   | refuse E_NSGROUP_STATE                         |
 * | stored range clashes with /etc/subuid    | refuse E_NSGROUP_OVERLAP (from assignIdRanges) |
 * | assignment too large                     | refuse E_NSGROUP_STATE_FULL                    |
 *
 * Nothing is ever undefined: a state that is refused stays as it is for an operator to look at.
 */
export function planNsgroupState(facts: NsgroupStateFacts): NsgroupStatePlan {
  const { index, existing, content, wanted, reserved } = facts;
  const invalid = invalidNsgroupNames(wanted);
  if (invalid.length > 0) {
    return { kind: 'refuse', code: 'E_NSGROUP_NAME', message: `nsgroup names ${invalid.map((name) => JSON.stringify(name)).join(', ')} are not valid: expected ${NSGROUP_PATTERN}` };
  }

  let previous = emptyAssignment();
  const steps: NsgroupStateStep[] = [];
  let why: string;
  if (existing === null) {
    if (facts.allowDefine === false) {
      return {
        kind: 'refuse',
        code: 'E_NSGROUP_STATE_LOST',
        message: `NV index ${hex(index)} holding the nsgroup id assignment is gone (was the TPM cleared?); refusing to assign ranges anew over existing files`,
      };
    }
    steps.push({ op: 'define', definition: nsgroupStateDefinition(index) });
    why = `first boot: defining NV index ${hex(index)} for the nsgroup id assignment`;
  } else {
    const foreign = checkNsgroupStateIndex(existing);
    if (foreign !== null) {
      return { kind: 'refuse', code: 'E_NSGROUP_STATE', message: `NV index ${hex(index)} is not mos's nsgroup state (${foreign}); refusing it` };
    }
    if ((existing.attributes & TPMA_NV.WRITTEN) === 0) {
      why = `NV index ${hex(index)} is defined but was never written (the first boot was cut off): writing it`;
    } else {
      if (content === null) {
        return { kind: 'refuse', code: 'E_NSGROUP_STATE', message: `NV index ${hex(index)} is written but its content was not read` };
      }
      if (content.length !== NSGROUP_STATE_SIZE) {
        return { kind: 'refuse', code: 'E_NSGROUP_STATE', message: `NV index ${hex(index)} read back ${content.length} bytes, expected ${NSGROUP_STATE_SIZE}` };
      }
      const decoded = decodeNsgroupState(content);
      if (!decoded.ok) return { kind: 'refuse', code: decoded.code, message: `NV index ${hex(index)}: ${decoded.message}` };
      previous = decoded.assignment;
      why = `NV index ${hex(index)} holds the nsgroup id assignment`;
    }
  }

  const assigned = assignIdRanges(previous, wanted, reserved);
  if (!assigned.ok) {
    const hint = existing !== null && assigned.code !== 'E_NSGROUP_EXHAUSTED' ? ` (the assignment stored in NV index ${hex(index)})` : '';
    return { kind: 'refuse', code: assigned.code, message: `${assigned.message}${hint}` };
  }
  const lost = checkKeepsRanges(previous, assigned.assignment, wanted);
  if (lost !== null) return { kind: 'refuse', code: 'E_NSGROUP_STATE', message: `refusing to write the nsgroup assignment: ${lost}` };

  const encoded = encodeNsgroupState(assigned.assignment);
  if (!encoded.ok) return { kind: 'refuse', code: encoded.code, message: encoded.message };
  const unchanged = steps.length === 0 && content !== null && content.equals(encoded.data);
  if (!unchanged) steps.push({ op: 'write', index, data: encoded.data });

  const changes = [
    ...(assigned.added.length > 0 ? [`added ${assigned.added.join(', ')}`] : []),
    ...(assigned.retired.length > 0 ? [`retired ${assigned.retired.join(', ')}`] : []),
  ];
  const reason = unchanged ? `${why}, unchanged` : changes.length > 0 ? `${why}; ${changes.join('; ')}` : why;
  const warnings: string[] = [];
  if (encoded.used > NSGROUP_STATE_SIZE * NSGROUP_STATE_WARN_FILL) {
    warnings.push(`the nsgroup state in NV index ${hex(index)} is ${Math.round((encoded.used / NSGROUP_STATE_SIZE) * 100)}% full (${encoded.used} of ${NSGROUP_STATE_SIZE} bytes); see docs/nsgroups.md`);
  }
  return { kind: 'steps', steps, previous, assignment: assigned.assignment, added: assigned.added, retired: assigned.retired, used: encoded.used, reason, warnings };
}
