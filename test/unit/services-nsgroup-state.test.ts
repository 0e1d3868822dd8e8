/**
 * The persisted nsgroup id assignment: its encoding and index (services/nsgroup-state.ts), the
 * boot's decisions (`planNsgroupState`) and the loader over the fake TPM (init/trust/nsgroup-nv.ts),
 * including a TPM whose index was tampered with.
 */
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import type { TpmNvPublic } from '../../native/types.ts';
import { formatNvAttributes, TPMA_NV, TRUST_ROOT_NV_ATTRIBUTES } from '../../init/trust/tpm-policy.ts';
import { TRUST_ROOT_NV_INDEX } from '../../init/trust/trust-root.ts';
import { loadNsgroupRanges } from '../../init/trust/nsgroup-nv.ts';
import { assignIdRanges, RANGE_SIZE, type IdAssignment } from '../../services/idmap.ts';
import {
  checkKeepsRanges,
  checkNsgroupStateIndex,
  decodeNsgroupState,
  emptyAssignment,
  encodeNsgroupState,
  MAX_SLOT,
  NSGROUP_STATE_NV_ATTRIBUTES,
  NSGROUP_STATE_NV_INDEX,
  NSGROUP_STATE_SIZE,
  nsgroupStateDefinition,
  planNsgroupState,
  type NsgroupStateFacts,
} from '../../services/nsgroup-state.ts';

const R = RANGE_SIZE;
const TCTI = 'device:/dev/tpmrm0';
const INDEX = NSGROUP_STATE_NV_INDEX;
const range = (slot: number) => ({ hostId: slot * R, size: R });
const assignment = (ranges: Record<string, number>, retired: Record<string, number> = {}): IdAssignment => ({
  ranges: Object.fromEntries(Object.entries(ranges).map(([name, slot]) => [name, range(slot)])),
  retired: Object.fromEntries(Object.entries(retired).map(([name, slot]) => [name, range(slot)])),
});
/** The index content for a text: the text, then NULs to the index size. */
const padded = (text: string, size = NSGROUP_STATE_SIZE) => {
  const data = Buffer.alloc(size);
  data.write(text, 'latin1');
  return data;
};
const encoded = (value: IdAssignment) => {
  const result = encodeNsgroupState(value);
  if (!result.ok) throw new Error(result.message);
  return result.data;
};
const ourPublic = (written = true): TpmNvPublic => ({
  index: INDEX,
  size: NSGROUP_STATE_SIZE,
  attributes: (NSGROUP_STATE_NV_ATTRIBUTES | (written ? TPMA_NV.WRITTEN : 0)) >>> 0,
  authPolicy: Buffer.alloc(0),
  nameAlg: 'sha256',
});
/** A name of `length` characters, distinct per `n`. */
const longName = (n: number, length: number) => `g${String(n).padStart(length - 1, '0')}`;

describe('the nsgroup state index', () => {
  it('is an owner-range index next to the trust root, readable with its empty authValue, written by the owner whole', () => {
    expect(INDEX).toBe(0x0180_6d70);
    expect(INDEX).not.toBe(TRUST_ROOT_NV_INDEX);
    expect(INDEX >= 0x0180_0000 && INDEX <= 0x01bf_ffff).toBe(true);
    const definition = nsgroupStateDefinition();
    expect(definition).toEqual({ index: INDEX, size: 512, attributes: NSGROUP_STATE_NV_ATTRIBUTES, authPolicy: Buffer.alloc(0), nameAlg: 'sha256' });
    expect(formatNvAttributes(definition.attributes).split('|').sort()).toEqual(['authread', 'no_da', 'ownerwrite', 'writeall']);
    // One NV_Write on every PC-Client TPM (TPM2_PT_NV_BUFFER_MAX >= 512).
    expect(definition.size).toBeLessThanOrEqual(512);
  });

  it('accepts only its own kind: attributes (but WRITTEN), size, nameAlg, no policy', () => {
    expect(checkNsgroupStateIndex(ourPublic(false))).toBeNull();
    expect(checkNsgroupStateIndex(ourPublic(true))).toBeNull();
    const other = (change: Partial<TpmNvPublic>) => checkNsgroupStateIndex({ ...ourPublic(), ...change });
    expect(other({ attributes: TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.WRITTEN })).toMatch(/attributes ownerwrite\|ownerread, expected ownerwrite\|writeall\|authread\|no_da/);
    expect(other({ attributes: NSGROUP_STATE_NV_ATTRIBUTES | TPMA_NV.AUTHWRITE })).toMatch(/authwrite/);
    expect(other({ attributes: TRUST_ROOT_NV_ATTRIBUTES })).toMatch(/policyread/);
    expect(other({ size: 2048 })).toBe('size 2048, expected 512');
    expect(other({ nameAlg: 'sha1' })).toBe('nameAlg sha1, expected sha256');
    expect(other({ authPolicy: Buffer.alloc(32) })).toBe('an authPolicy, expected none');
  });
});

describe('encodeNsgroupState / decodeNsgroupState', () => {
  it('is canonical JSON of slots, names sorted, NUL-padded to the index size, and round-trips', () => {
    const value = assignment({ web: 1, db: 2 }, { old: 3 });
    const result = encodeNsgroupState(value);
    const text = '{"v":1,"ranges":{"db":2,"web":1},"retired":{"old":3}}';
    expect(result).toEqual({ ok: true, data: padded(text), used: text.length });
    expect(decodeNsgroupState(padded(text))).toEqual({ ok: true, assignment: value, used: text.length });
    expect(decodeNsgroupState(encoded(emptyAssignment()))).toEqual({ ok: true, assignment: { ranges: {}, retired: {} }, used: 32 });
    // The highest slot ends at MAX_ID's side of 2^32.
    expect(MAX_SLOT).toBe(65534);
    expect(decodeNsgroupState(encoded(assignment({ top: MAX_SLOT }))).ok).toBe(true);
  });

  it('gives records without a prototype: an nsgroup named like an Object method is just a name', () => {
    const decoded = decodeNsgroupState(padded('{"v":1,"ranges":{"web":1},"retired":{}}'));
    if (!decoded.ok) throw new Error(decoded.message);
    expect(decoded.assignment.ranges.constructor).toBeUndefined();
    expect(decoded.assignment.retired.toString).toBeUndefined();
  });

  it.each([
    ['garbage', randomBytes(NSGROUP_STATE_SIZE), /not (printable ASCII|JSON)|bytes after/],
    ['an erased index (all 0xff)', Buffer.alloc(NSGROUP_STATE_SIZE, 0xff), /not printable ASCII/],
    ['nothing but NULs', Buffer.alloc(NSGROUP_STATE_SIZE), /it is empty/],
    ['bytes after the padding', Buffer.concat([padded('{"v":1,"ranges":{},"retired":{}}', 500), Buffer.alloc(12, 0x41)]), /bytes after the end of the text/],
    ['whitespace', padded('{"v":1, "ranges":{},"retired":{}}'), /canonical/],
    ['keys out of order', padded('{"ranges":{},"retired":{},"v":1}'), /canonical/],
    ['names out of order', padded('{"v":1,"ranges":{"web":1,"db":2},"retired":{}}'), /canonical/],
    ['a duplicate key', padded('{"v":1,"ranges":{"db":2,"db":3},"retired":{}}'), /canonical/],
    ['another spelling of a number', padded('{"v":1,"ranges":{"db":2.0},"retired":{}}'), /canonical/],
    ['truncated JSON', padded('{"v":1,"ranges":{"db":2},"ret'), /not JSON/],
    ['a JSON array', padded('[1]'), /not a JSON object/],
    ['a missing key', padded('{"v":1,"ranges":{}}'), /expected the keys v, ranges and retired/],
    ['an extra key', padded('{"v":1,"ranges":{},"retired":{},"x":0}'), /expected the keys/],
    ['slot 0 (the host\'s ids)', padded('{"v":1,"ranges":{"db":0},"retired":{}}'), /ranges.db is 0, not a slot/],
    ['a slot past 2^32', padded('{"v":1,"ranges":{"db":65535},"retired":{}}'), /not a slot in 1-65534/],
    ['a fractional slot', padded('{"v":1,"ranges":{"db":1.5},"retired":{}}'), /not a slot/],
    ['a slot as a string', padded('{"v":1,"ranges":{"db":"1"},"retired":{}}'), /not a slot/],
    ['a name that is not an nsgroup', padded('{"v":1,"ranges":{"Web":1},"retired":{}}'), /"Web", which is not an nsgroup/],
    ['"none" with a range', padded('{"v":1,"ranges":{"none":1},"retired":{}}'), /"none", which is not an nsgroup/],
    ['__proto__', padded('{"v":1,"ranges":{"__proto__":1},"retired":{}}'), /not an nsgroup/],
    ['a name both assigned and retired', padded('{"v":1,"ranges":{"db":1},"retired":{"db":2}}'), /both assigned and retired/],
    ['two nsgroups in one slot', padded('{"v":1,"ranges":{"db":1},"retired":{"old":1}}'), /db and old both have slot 1/],
    ['a retired range shared with another retired one', padded('{"v":1,"ranges":{},"retired":{"a":4,"b":4}}'), /both have slot 4/],
  ])('refuses %s', (_what, data, message) => {
    const result = decodeNsgroupState(data);
    expect(result).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    expect((result as { message: string }).message).toMatch(message);
  });

  it('refuses another format version, saying so', () => {
    expect(decodeNsgroupState(padded('{"v":2,"groups":[]}'))).toEqual({
      ok: false,
      code: 'E_NSGROUP_STATE',
      message: 'nsgroup state has format version 2; this mos reads version 1 and will not overwrite another',
    });
  });

  it('refuses to encode what cannot be stored', () => {
    expect(encodeNsgroupState(assignment({ 'Bad Name': 1 }))).toMatchObject({ ok: false, code: 'E_NSGROUP_NAME' });
    expect(encodeNsgroupState(assignment({ none: 1 }))).toMatchObject({ ok: false, code: 'E_NSGROUP_NAME' });
    expect(encodeNsgroupState({ ranges: { a: { hostId: R + 1, size: R } }, retired: {} })).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    expect(encodeNsgroupState({ ranges: { a: { hostId: R, size: 1000 } }, retired: {} })).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    expect(encodeNsgroupState(assignment({ a: 0 }))).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    expect(encodeNsgroupState(assignment({ a: 1 }, { b: 1 }))).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: 'nsgroups a and b both have slot 1' });
    expect(encodeNsgroupState(assignment({ a: 1 }, { a: 2 }))).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: 'nsgroup a is both assigned and retired' });
  });

  it('holds about 35 nsgroups with 8-character names, 7 with 63-character names, and says when it is full', () => {
    const fits = (count: number, length: number) => {
      const ranges = Object.fromEntries(Array.from({ length: count }, (_, i) => [longName(i, length), i + 1]));
      return encodeNsgroupState(assignment(ranges)).ok;
    };
    expect(fits(35, 8)).toBe(true);
    expect(fits(7, 63)).toBe(true);
    expect(fits(8, 63)).toBe(false);
    const full = encodeNsgroupState(assignment(Object.fromEntries(Array.from({ length: 8 }, (_, i) => [longName(i, 63), i + 1]))));
    expect(full).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE_FULL' });
    expect((full as { message: string }).message).toMatch(/8 nsgroups, 0 retired\) needs \d+ bytes; the state index holds 512\. Too many nsgroups/);
  });
});

describe('checkKeepsRanges: no write ever loses or moves a range', () => {
  const previous = assignment({ a: 1 }, { b: 2 });
  it('accepts keeping, retiring and restoring', () => {
    expect(checkKeepsRanges(previous, assignment({ a: 1, c: 3 }, { b: 2 }), ['a', 'c'])).toBeNull();
    expect(checkKeepsRanges(previous, assignment({ b: 2 }, { a: 1 }), ['b', 'none'])).toBeNull();
  });
  it('refuses a shrunk assignment that hands a retired range to a new nsgroup', () => {
    expect(checkKeepsRanges(previous, assignment({ a: 1, c: 2 }), ['a', 'c'])).toBe(`the range of nsgroup b (host ids ${2 * R}+${R}) would be dropped`);
  });
  it('refuses a moved range and a wanted nsgroup without one', () => {
    expect(checkKeepsRanges(previous, assignment({ a: 3 }, { b: 2 }), ['a'])).toBe(`nsgroup a would move from host ids ${R}+${R} to ${3 * R}+${R}`);
    expect(checkKeepsRanges(previous, assignment({ a: 1 }, { b: 2 }), ['a', 'c'])).toBe('wanted nsgroup c would have no range');
  });
});

describe('planNsgroupState', () => {
  const facts = (change: Partial<NsgroupStateFacts>): NsgroupStateFacts => ({
    index: INDEX,
    existing: null,
    content: null,
    wanted: ['web', 'db'],
    reserved: [],
    ...change,
  });

  it('first boot: defines the index and writes the assignment', () => {
    const plan = planNsgroupState(facts({}));
    expect(plan).toMatchObject({
      kind: 'steps',
      assignment: assignment({ db: 1, web: 2 }),
      previous: { ranges: {}, retired: {} },
      added: ['db', 'web'],
      retired: [],
      warnings: [],
    });
    if (plan.kind !== 'steps') throw new Error(plan.message);
    expect(plan.steps).toEqual([
      { op: 'define', definition: nsgroupStateDefinition() },
      { op: 'write', index: INDEX, data: encoded(assignment({ db: 1, web: 2 })) },
    ]);
    expect(plan.reason).toBe('first boot: defining NV index 0x01806d70 for the nsgroup id assignment; added db, web');
  });

  it('an absent index when state must exist (a cleared TPM) is refused', () => {
    expect(planNsgroupState(facts({ allowDefine: false }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE_LOST', message: expect.stringMatching(/cleared/) });
  });

  it('a defined index never written (first boot cut off) is written', () => {
    const plan = planNsgroupState(facts({ existing: ourPublic(false) }));
    expect(plan).toMatchObject({ kind: 'steps', steps: [{ op: 'write', index: INDEX }], added: ['db', 'web'] });
  });

  it('the same nsgroups: nothing to do', () => {
    const stored = encoded(assignment({ db: 1, web: 2 }));
    const plan = planNsgroupState(facts({ existing: ourPublic(), content: stored, wanted: ['web', 'db', 'none', ''] }));
    expect(plan).toMatchObject({ kind: 'steps', steps: [], assignment: assignment({ db: 1, web: 2 }), added: [], retired: [] });
    expect((plan as { reason: string }).reason).toMatch(/unchanged$/);
  });

  it('an added nsgroup keeps every old range; a removed one is retired; the write is the whole index', () => {
    const stored = encoded(assignment({ db: 1, web: 2 }));
    const plan = planNsgroupState(facts({ existing: ourPublic(), content: stored, wanted: ['web', 'cache'] }));
    expect(plan).toMatchObject({
      kind: 'steps',
      assignment: assignment({ web: 2, cache: 3 }, { db: 1 }),
      added: ['cache'],
      retired: ['db'],
      steps: [{ op: 'write', index: INDEX, data: encoded(assignment({ web: 2, cache: 3 }, { db: 1 })) }],
    });
    expect((plan as { steps: { data: Buffer }[] }).steps[0]!.data).toHaveLength(NSGROUP_STATE_SIZE);
  });

  it('refuses an index with other attributes, size or policy, and garbage content', () => {
    const foreign = planNsgroupState(facts({ existing: { ...ourPublic(), attributes: TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.WRITTEN } }));
    expect(foreign).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE', message: expect.stringMatching(/^NV index 0x01806d70 is not mos's nsgroup state \(attributes/) });
    expect(planNsgroupState(facts({ existing: { ...ourPublic(), size: 256 } }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE' });
    const garbage = planNsgroupState(facts({ existing: ourPublic(), content: randomBytes(NSGROUP_STATE_SIZE) }));
    expect(garbage).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE', message: expect.stringMatching(/^NV index 0x01806d70: nsgroup state is not valid/) });
    expect(planNsgroupState(facts({ existing: ourPublic(), content: null }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE' });
    expect(planNsgroupState(facts({ existing: ourPublic(), content: Buffer.alloc(10) }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE' });
  });

  it('refuses a stored range that now overlaps /etc/subuid rather than re-own its files', () => {
    const stored = encoded(assignment({ db: 1, web: 2 }));
    const plan = planNsgroupState(facts({ existing: ourPublic(), content: stored, reserved: [{ name: 'root', start: 100_000, count: 65_536 }] }));
    expect(plan).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_OVERLAP', message: expect.stringMatching(/subordinate ids of root \(the assignment stored in NV index 0x01806d70\)/) });
  });

  it('refuses names that cannot be stored, and an assignment that no longer fits', () => {
    expect(planNsgroupState(facts({ wanted: ['web', 'Web Server'] }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_NAME', message: expect.stringMatching(/"Web Server"/) });
    const many = Object.fromEntries(Array.from({ length: 7 }, (_, i) => [longName(i, 63), i + 1]));
    const stored = encoded(assignment({}, many));
    expect(planNsgroupState(facts({ existing: ourPublic(), content: stored, wanted: [longName(99, 63)] }))).toMatchObject({ kind: 'refuse', code: 'E_NSGROUP_STATE_FULL' });
  });

  it('warns when the index is more than three quarters full', () => {
    const names = Array.from({ length: 6 }, (_, i) => longName(i, 63));
    const plan = planNsgroupState(facts({ wanted: names }));
    expect(plan).toMatchObject({ kind: 'steps', warnings: [expect.stringMatching(/is 8\d% full \(\d+ of 512 bytes\)/)] });
  });
});

describe('loadNsgroupRanges over the fake TPM', () => {
  let tpm: FakeNative;
  beforeEach(() => {
    tpm = new FakeNative();
  });
  const load = (wanted: string[], options = {}) => loadNsgroupRanges(tpm, TCTI, wanted, [], options);
  const writes = () => tpm.tpmCalls.filter((call) => /^tpmNv(Define|Write|Undefine)/.test(call));
  const stored = () => decodeNsgroupState(tpm.tpmNv.get(INDEX)!.data);

  it('first boot defines and writes; every later boot reads the same ranges and writes nothing', async () => {
    const first = await load(['web', 'db']);
    expect(first).toEqual({
      ok: true,
      assignment: assignment({ db: 1, web: 2 }),
      persisted: true,
      changed: true,
      steps: ['define', 'write'],
      added: ['db', 'web'],
      retired: [],
      index: INDEX,
      reason: expect.stringMatching(/^first boot/),
      warnings: [],
    });
    expect(tpm.tpmNv.get(INDEX)!.public).toEqual({ ...ourPublic(), authPolicy: Buffer.alloc(0) });
    expect(stored()).toMatchObject({ ok: true, assignment: assignment({ db: 1, web: 2 }) });

    tpm.resetTpm();
    tpm.tpmCalls.length = 0;
    const second = await load(['db', 'web']);
    expect(second).toMatchObject({ ok: true, assignment: assignment({ db: 1, web: 2 }), changed: false, steps: [] });
    expect(tpm.tpmCalls).toEqual([`tpmNvReadPublic ${TCTI}`, `tpmNvRead ${TCTI}`]);
  });

  it('across updates: an added nsgroup keeps the old ranges, a removed one is retired and never handed out again', async () => {
    await load(['web', 'db']);
    expect(await load(['web', 'db', 'cache'])).toMatchObject({ ok: true, assignment: assignment({ db: 1, web: 2, cache: 3 }), added: ['cache'], steps: ['write'] });
    expect(await load(['web', 'cache'])).toMatchObject({ ok: true, assignment: assignment({ web: 2, cache: 3 }, { db: 1 }), retired: ['db'], steps: ['write'] });
    // A new nsgroup does not get db's range, though it is the lowest.
    expect(await load(['web', 'cache', 'mail'])).toMatchObject({ ok: true, assignment: assignment({ web: 2, cache: 3, mail: 4 }, { db: 1 }) });
    // db comes back to its own range.
    expect(await load(['db', 'web', 'cache', 'mail'])).toMatchObject({ ok: true, assignment: assignment({ db: 1, web: 2, cache: 3, mail: 4 }), retired: [] });
    // Everything removed: all retired, nothing lost.
    expect(await load(['none'])).toMatchObject({ ok: true, assignment: assignment({}, { db: 1, web: 2, cache: 3, mail: 4 }) });
    expect(stored()).toMatchObject({ ok: true, assignment: assignment({}, { db: 1, web: 2, cache: 3, mail: 4 }) });
  });

  it('an nsgroup named like an Object.prototype member never loses its range', async () => {
    await load(['constructor', 'web']);
    const removed = await load(['web']);
    expect(removed).toMatchObject({ ok: true, retired: ['constructor'] });
    if (removed.ok) expect(removed.assignment.retired.constructor).toEqual(range(1));
    const next = await load(['web', 'fresh']);
    expect(next.ok && next.assignment.ranges.fresh).toEqual(range(3));
    expect(stored()).toMatchObject({ ok: true, assignment: { retired: { constructor: range(1) } } });
  });

  it('tampering: an index redefined with other attributes is refused and left alone', async () => {
    await load(['web']);
    await tpm.tpmNvUndefine(TCTI, INDEX);
    // Writable with the index's empty authValue too: anyone could edit it while the machine runs.
    await tpm.tpmNvDefine(TCTI, { index: INDEX, size: NSGROUP_STATE_SIZE, attributes: NSGROUP_STATE_NV_ATTRIBUTES | TPMA_NV.AUTHWRITE, authPolicy: Buffer.alloc(0) });
    await tpm.tpmNvWrite(TCTI, INDEX, encoded(assignment({ web: 5 })));
    tpm.tpmCalls.length = 0;
    const result = await load(['web']);
    expect(result).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: expect.stringMatching(/is not mos's nsgroup state \(attributes ownerwrite\|authwrite\|writeall\|authread\|no_da, expected/) });
    expect(writes()).toEqual([]);
    // Not even read: the content of a foreign index means nothing.
    expect(tpm.tpmCalls).toEqual([`tpmNvReadPublic ${TCTI}`]);
  });

  it('tampering: garbage in the index is refused and left alone', async () => {
    await load(['web']);
    const garbage = randomBytes(NSGROUP_STATE_SIZE);
    await tpm.tpmNvWrite(TCTI, INDEX, garbage);
    tpm.tpmCalls.length = 0;
    expect(await load(['web'])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: expect.stringMatching(/nsgroup state is not valid/) });
    expect(writes()).toEqual([]);
    expect(tpm.tpmNv.get(INDEX)!.data).toEqual(garbage);
  });

  it('a state of another format version is refused, not overwritten', async () => {
    await load(['web']);
    const newer = padded('{"v":2,"ranges":{"web":1}}');
    await tpm.tpmNvWrite(TCTI, INDEX, newer);
    expect(await load(['web', 'db'])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: expect.stringMatching(/format version 2/) });
    expect(tpm.tpmNv.get(INDEX)!.data).toEqual(newer);
  });

  it('a first boot cut off between define and write is finished by the next', async () => {
    tpm.failNextTpm = { call: 'tpmNvWrite', code: 'TSS2_TCTI_RC_IO_ERROR' };
    const cut = await load(['web']);
    expect(cut).toMatchObject({ ok: false, code: 'E_NSGROUP_TPM', message: expect.stringMatching(/\(write\): Esys_TR_FromTPMPublic TSS2_TCTI_RC_IO_ERROR/), cause: { code: 'TSS2_TCTI_RC_IO_ERROR' } });
    expect(tpm.tpmNv.get(INDEX)!.public.attributes & TPMA_NV.WRITTEN).toBe(0);
    expect(await load(['web'])).toMatchObject({ ok: true, assignment: assignment({ web: 1 }), steps: ['write'], reason: expect.stringMatching(/never written/) });
  });

  it('an absent index with allowDefine false is refused (cleared TPM)', async () => {
    expect(await load(['web'], { allowDefine: false })).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE_LOST' });
    expect(writes()).toEqual([]);
  });

  it('a TPM that does not answer is E_NSGROUP_TPM with the TPM error as cause', async () => {
    tpm.failNextTpm = { call: 'tpmNvReadPublic', code: 'TSS2_TCTI_RC_IO_ERROR' };
    expect(await load(['web'])).toMatchObject({
      ok: false,
      code: 'E_NSGROUP_TPM',
      message: 'reading NV index 0x01806d70: Esys_TR_FromTPMPublic TSS2_TCTI_RC_IO_ERROR 0x01806d70',
      cause: { code: 'TSS2_TCTI_RC_IO_ERROR' },
    });
  });

  it('uses another index when told, and leaves the trust root alone', async () => {
    expect(await loadNsgroupRanges(tpm, TCTI, ['web'], [], { index: 0x0180_0042 })).toMatchObject({ ok: true, index: 0x0180_0042 });
    expect([...tpm.tpmNv.keys()]).toEqual([0x0180_0042]);
  });

  it('steps around /etc/subuid on first boot', async () => {
    const result = await loadNsgroupRanges(tpm, TCTI, ['web'], [{ name: 'root', start: 100_000, count: 65_536 }]);
    expect(result).toMatchObject({ ok: true, assignment: assignment({ web: 3 }) });
  });

  it('without a TPM: assigned in memory, not persisted, with a warning, no TPM call', async () => {
    const result = await loadNsgroupRanges(tpm, null, ['web', 'db', 'none'], []);
    expect(result).toEqual({
      ok: true,
      assignment: assignment({ db: 1, web: 2 }),
      persisted: false,
      changed: false,
      steps: [],
      added: ['db', 'web'],
      retired: [],
      index: null,
      reason: 'no TPM: nsgroup id ranges assigned in memory',
      warnings: [expect.stringMatching(/^no TPM: the nsgroup id ranges are not persisted/)],
    });
    expect(tpm.tpmCalls).toEqual([]);
    expect(await loadNsgroupRanges(tpm, null, ['BAD'], [])).toMatchObject({ ok: false, code: 'E_NSGROUP_NAME' });
  });
});

describe('FakeNative tpmNvRead', () => {
  it('reads an AUTHREAD index whole; refuses others as the TPM does', async () => {
    const tpm = new FakeNative();
    await tpm.tpmNvDefine(TCTI, nsgroupStateDefinition());
    await expect(tpm.tpmNvRead(TCTI, INDEX)).rejects.toMatchObject({ code: 'TPM_RC_NV_UNINITIALIZED', syscall: 'Esys_NV_Read' });
    const data = randomBytes(NSGROUP_STATE_SIZE);
    await tpm.tpmNvWrite(TCTI, INDEX, data);
    expect(await tpm.tpmNvRead(TCTI, INDEX)).toEqual(data);
    await tpm.tpmNvDefine(TCTI, { index: 0x0180_0001, size: 8, attributes: TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE, authPolicy: Buffer.alloc(0) });
    await tpm.tpmNvWrite(TCTI, 0x0180_0001, Buffer.alloc(8));
    await expect(tpm.tpmNvRead(TCTI, 0x0180_0001)).rejects.toMatchObject({ code: 'TPM_RC_AUTH_UNAVAILABLE', rc: 0x12f, message: 'Esys_NV_Read TPM_RC_AUTH_UNAVAILABLE 0x01800001' });
    await expect(tpm.tpmNvRead(TCTI, 0x0180_0002)).rejects.toMatchObject({ code: 'TPM_RC_HANDLE' });
  });
});
