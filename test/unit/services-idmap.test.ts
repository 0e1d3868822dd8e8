/** nsgroup id ranges: disjoint, aligned, stable across updates, never overlapping the host's. */
import { describe, expect, it } from 'vitest';
import { assignIdRanges, EMPTY_ASSIGNMENT, parseSubordinateIds, RANGE_SIZE, type IdAssignment } from '../../services/idmap.ts';

const R = RANGE_SIZE;

describe('assignIdRanges', () => {
  it('gives each named nsgroup its own aligned range above the host\'s ids; none and "" get none', () => {
    const result = assignIdRanges(EMPTY_ASSIGNMENT, ['web', 'db', 'none', '', 'web'], []);
    expect(result).toEqual({
      ok: true,
      assignment: { ranges: { db: { hostId: R, size: R }, web: { hostId: 2 * R, size: R } }, retired: {} },
      added: ['db', 'web'],
      retired: [],
    });
  });

  it('keeps every range across updates; a new nsgroup takes the lowest free slot; a dropped one is retired, not reused', () => {
    const first = assignIdRanges(EMPTY_ASSIGNMENT, ['a', 'b', 'c'], []);
    if (!first.ok) throw new Error(first.message);
    const second = assignIdRanges(first.assignment, ['c', 'a', 'd'], []);
    if (!second.ok) throw new Error(second.message);
    expect(second.assignment.ranges).toEqual({ a: { hostId: R, size: R }, c: { hostId: 3 * R, size: R }, d: { hostId: 4 * R, size: R } });
    expect(second.assignment.retired).toEqual({ b: { hostId: 2 * R, size: R } });
    expect(second.retired).toEqual(['b']);
    // b comes back: its old range, so its files on a persistent volume are still its own.
    const third = assignIdRanges(second.assignment, ['a', 'b', 'c', 'd'], []);
    if (!third.ok) throw new Error(third.message);
    expect(third.assignment.ranges.b).toEqual({ hostId: 2 * R, size: R });
    expect(third.assignment.retired).toEqual({});
  });

  it('takes names that are also Object.prototype\'s (constructor, toString) as plain nsgroups', () => {
    const first = assignIdRanges(EMPTY_ASSIGNMENT, ['constructor', 'tostring', 'toString'.toLowerCase()], []);
    if (!first.ok) throw new Error(first.message);
    expect({ ...first.assignment.ranges }).toEqual({ constructor: { hostId: R, size: R }, tostring: { hostId: 2 * R, size: R } });
    const dropped = assignIdRanges(first.assignment, ['tostring'], []);
    if (!dropped.ok) throw new Error(dropped.message);
    expect({ ...dropped.assignment.retired }).toEqual({ constructor: { hostId: R, size: R } });
    expect(dropped.retired).toEqual(['constructor']);
  });

  it('steps around the host\'s subordinate ids', () => {
    const { ranges } = parseSubordinateIds('root:100000:65536\n# comment\nbuild:131072:131072\n', '/etc/subuid');
    const result = assignIdRanges(EMPTY_ASSIGNMENT, ['web', 'db'], ranges);
    if (!result.ok) throw new Error(result.message);
    // 65536..131071 overlaps root's 100000..165535; 131072..262143 is build's.
    expect(result.assignment.ranges).toEqual({ db: { hostId: 4 * R, size: R }, web: { hostId: 5 * R, size: R } });
  });

  it('refuses a stored state that overlaps itself or the host, or is not aligned (edited, or the host changed)', () => {
    const overlapping: IdAssignment = { ranges: { a: { hostId: R, size: R }, b: { hostId: R, size: R } }, retired: {} };
    expect(assignIdRanges(overlapping, ['a', 'b'], [])).toMatchObject({ ok: false, code: 'E_NSGROUP_OVERLAP', message: 'nsgroup b: its range 65536..131071 overlaps nsgroup a' });
    const intoSubuid: IdAssignment = { ranges: { a: { hostId: 2 * R, size: R } }, retired: {} };
    expect(assignIdRanges(intoSubuid, ['a'], [{ name: 'root', start: 100000, count: 65536 }])).toMatchObject({ ok: false, code: 'E_NSGROUP_OVERLAP' });
    const unaligned: IdAssignment = { ranges: { a: { hostId: R + 1, size: R } }, retired: {} };
    expect(assignIdRanges(unaligned, ['a'], [])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    const hostIds: IdAssignment = { ranges: { a: { hostId: 0, size: R } }, retired: {} };
    expect(assignIdRanges(hostIds, ['a'], [])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
  });

  it('says when no range is left', () => {
    const everything = [{ name: 'root', start: R, count: 0xfffffffe - R + 1 }];
    expect(assignIdRanges(EMPTY_ASSIGNMENT, ['web'], everything)).toMatchObject({ ok: false, code: 'E_NSGROUP_EXHAUSTED' });
  });
});

describe('parseSubordinateIds', () => {
  it('names malformed lines', () => {
    expect(parseSubordinateIds('root:100000\nok:1:2\nzero:5:0\n', '/etc/subgid')).toEqual({
      ranges: [{ name: 'ok', start: 1, count: 2 }],
      problems: [
        '/etc/subgid:1: expected name:start:count within 0..4294967294, got "root:100000"',
        '/etc/subgid:3: expected name:start:count within 0..4294967294, got "zero:5:0"',
      ],
    });
  });
});
