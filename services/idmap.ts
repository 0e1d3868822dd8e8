/**
 * nsgroup id ranges: each named nsgroup gets 65,536 uids and gids (the same numbers for both),
 * aligned to 65,536, disjoint from every other nsgroup and from what the host reserves (its own
 * ids below 65,536 and every /etc/subuid and /etc/subgid entry). Pure: the previous assignment
 * comes in, the next one goes out; persisting it (where an offline edit is noticed) is the
 * caller's.
 *
 * Stability: an nsgroup keeps its range for as long as it is assigned, across boots and updates,
 * whatever other nsgroups come and go; a new one takes the lowest free slot. A range that is no
 * longer wanted is kept in `retired` so it is not handed to a new nsgroup while files on a
 * persistent volume may still carry its ids.
 */

export const RANGE_SIZE = 65_536;
/** Ids a range may reach: uid_t is 32 bits and 2^32 - 1 means "no id". */
export const MAX_ID = 0xfffffffe;
/** The first slot: the host's own ids (0..65535) are never a container's. */
export const FIRST_SLOT = 1;
export const NSGROUP_NONE = ['', 'none'] as const;

export interface IdRange {
  /** The host id that container id 0 maps to. */
  hostId: number;
  size: number;
}

export interface IdAssignment {
  /** nsgroup name → its range. */
  ranges: Record<string, IdRange>;
  /** Ranges of nsgroups no longer in the install, not handed out again. */
  retired: Record<string, IdRange>;
}

export const EMPTY_ASSIGNMENT: IdAssignment = { ranges: {}, retired: {} };

/** One line of /etc/subuid or /etc/subgid: `name:start:count`. */
export interface SubordinateRange {
  name: string;
  start: number;
  count: number;
}

/** Parses /etc/subuid or /etc/subgid; malformed lines are reported, not skipped silently. */
export function parseSubordinateIds(text: string, file: string): { ranges: SubordinateRange[]; problems: string[] } {
  const ranges: SubordinateRange[] = [];
  const problems: string[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const match = /^([^:\s]+):(\d{1,10}):(\d{1,10})$/.exec(line);
    const start = match ? Number(match[2]) : NaN;
    const count = match ? Number(match[3]) : NaN;
    if (!match || count === 0 || start + count - 1 > MAX_ID) {
      problems.push(`${file}:${index + 1}: expected name:start:count within 0..${MAX_ID}, got ${JSON.stringify(line.slice(0, 80))}`);
      return;
    }
    ranges.push({ name: match[1]!, start, count });
  });
  return { ranges, problems };
}

function overlaps(a: { start: number; end: number }, b: { start: number; end: number }): boolean {
  return a.start <= b.end && b.start <= a.end;
}

function span(range: IdRange): { start: number; end: number } {
  return { start: range.hostId, end: range.hostId + range.size - 1 };
}

export type AssignResult =
  | { ok: true; assignment: IdAssignment; added: string[]; retired: string[] }
  | { ok: false; code: 'E_NSGROUP_OVERLAP' | 'E_NSGROUP_EXHAUSTED' | 'E_NSGROUP_STATE'; message: string };

/** Whether an nsgroup name means "no user namespace" (host ids). */
export function isHostNsgroup(name: string): boolean {
  return (NSGROUP_NONE as readonly string[]).includes(name);
}

/**
 * The assignment for the nsgroups `wanted` (the install's, `none`/`""` left out), keeping every
 * range `previous` gave, and refusing a previous state that overlaps itself or the host's
 * reservations (it was edited, or the host changed under it: never silently re-own files).
 */
export function assignIdRanges(previous: IdAssignment, wanted: readonly string[], reserved: readonly SubordinateRange[]): AssignResult {
  const taken: { who: string; start: number; end: number }[] = [{ who: 'the host (ids 0..65535)', start: 0, end: RANGE_SIZE * FIRST_SLOT - 1 }];
  for (const entry of reserved) taken.push({ who: `subordinate ids of ${entry.name}`, start: entry.start, end: entry.start + entry.count - 1 });

  // The previous state must be sound: aligned, full-size, disjoint from all of the above.
  const kept: { name: string; range: IdRange; retired: boolean }[] = [
    ...Object.entries(previous.ranges).map(([name, range]) => ({ name, range, retired: false })),
    ...Object.entries(previous.retired).map(([name, range]) => ({ name, range, retired: true })),
  ];
  for (const { name, range } of kept) {
    if (range.size !== RANGE_SIZE || range.hostId % RANGE_SIZE !== 0 || range.hostId + range.size - 1 > MAX_ID || range.hostId < RANGE_SIZE) {
      return { ok: false, code: 'E_NSGROUP_STATE', message: `nsgroup ${name}: stored range ${range.hostId}+${range.size} is not an aligned range of ${RANGE_SIZE} ids above the host's` };
    }
    const clash = taken.find((other) => overlaps(span(range), other));
    if (clash) return { ok: false, code: 'E_NSGROUP_OVERLAP', message: `nsgroup ${name}: its range ${range.hostId}..${range.hostId + range.size - 1} overlaps ${clash.who}` };
    taken.push({ who: `nsgroup ${name}`, start: range.hostId, end: range.hostId + range.size - 1 });
  }

  // No prototype: an nsgroup may be called `constructor` or `toString`.
  const ranges: Record<string, IdRange> = Object.create(null);
  const retired: Record<string, IdRange> = Object.assign(Object.create(null), previous.retired);
  const want = [...new Set(wanted.filter((name) => !isHostNsgroup(name)))].sort();
  const added: string[] = [];
  for (const name of want) {
    const existing = ownRange(previous.ranges, name) ?? ownRange(previous.retired, name);
    if (existing) {
      ranges[name] = existing;
      delete retired[name];
      continue;
    }
    let slot = FIRST_SLOT;
    for (;;) {
      const candidate = { start: slot * RANGE_SIZE, end: slot * RANGE_SIZE + RANGE_SIZE - 1 };
      if (candidate.end > MAX_ID) return { ok: false, code: 'E_NSGROUP_EXHAUSTED', message: `no free range of ${RANGE_SIZE} ids left for nsgroup ${name}` };
      if (!taken.some((other) => overlaps(candidate, other))) break;
      slot++;
    }
    ranges[name] = { hostId: slot * RANGE_SIZE, size: RANGE_SIZE };
    taken.push({ who: `nsgroup ${name}`, start: slot * RANGE_SIZE, end: slot * RANGE_SIZE + RANGE_SIZE - 1 });
    added.push(name);
  }
  const newlyRetired: string[] = [];
  for (const [name, range] of Object.entries(previous.ranges)) {
    if (!Object.hasOwn(ranges, name)) {
      retired[name] = range;
      newlyRetired.push(name);
    }
  }
  return { ok: true, assignment: { ranges, retired }, added, retired: newlyRetired };
}

function ownRange(table: Record<string, IdRange>, name: string): IdRange | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}

/** The boot's nsgroup ranges, or why there are none (the state in the TPM was refused). */
export type NsgroupRanges = { ok: true; assignment: IdAssignment } | { ok: false; code: string; message: string };

/**
 * The host ids of an nsgroup's root (container uid 0 and gid 0): what owns the nsgroup's
 * volumes. `none` and `""` are the host's own root; a named nsgroup without a range (its state
 * was refused) has none, and whatever needs it fails with the reason.
 */
export function nsgroupRoot(name: string, ranges: NsgroupRanges): { ok: true; uid: number; gid: number } | { ok: false; code: string; message: string } {
  if (isHostNsgroup(name)) return { ok: true, uid: 0, gid: 0 };
  if (!ranges.ok) return { ok: false, code: ranges.code, message: `nsgroup ${name} has no id range: ${ranges.message}` };
  const range = ownRange(ranges.assignment.ranges, name);
  if (range === undefined) return { ok: false, code: 'E_NSGROUP_STATE', message: `nsgroup ${name} has no id range in this boot's assignment` };
  return { ok: true, uid: range.hostId, gid: range.hostId };
}
