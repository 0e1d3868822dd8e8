/**
 * The nsgroup id assignment in a real (software) TPM: init/trust/nsgroup-nv.ts through the addon
 * against swtpm over TCP, with tpm2-tools as the independent oracle (tpm2_nvreadpublic,
 * tpm2_nvread) and as the tamperer. A "boot" is a TPM reset: TPM2_Shutdown(CLEAR), a power cycle
 * through swtpm's control channel, TPM2_Startup(CLEAR), as a reboot does to a real TPM. Needs
 * root, swtpm, tpm2-tools and a built addon.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadNative } from '../../native/index.ts';
import type { Native, TpmError } from '../../native/types.ts';
import { formatNvAttributes, TPMA_NV } from '../../init/trust/tpm-policy.ts';
import { loadNsgroupRanges, type NsgroupTpm } from '../../init/trust/nsgroup-nv.ts';
import { RANGE_SIZE } from '../../services/idmap.ts';
import { NSGROUP_STATE_NV_ATTRIBUTES, NSGROUP_STATE_NV_INDEX, NSGROUP_STATE_SIZE } from '../../services/nsgroup-state.ts';
import { startSwtpm, swtpmUnavailableReason, type Swtpm } from '../helpers/swtpm.ts';

const unavailable = swtpmUnavailableReason();
const INDEX_HEX = `0x${NSGROUP_STATE_NV_INDEX.toString(16).padStart(8, '0')}`;
const SPARE_INDEX = 0x0180_0124;
const SPARE_INDEX_HEX = '0x01800124';
const SWTPM_IOCTL = ['/usr/bin/swtpm_ioctl', '/usr/local/bin/swtpm_ioctl'].find((file) => existsSync(file));

const R = RANGE_SIZE;
const slots = (ranges: Record<string, { hostId: number }>) => Object.fromEntries(Object.entries(ranges).map(([name, range]) => [name, range.hostId / R]));

async function rejection(promise: Promise<unknown>): Promise<TpmError> {
  try {
    await promise;
  } catch (error) {
    return error as TpmError;
  }
  throw new Error('did not reject');
}

describe.skipIf(unavailable !== null)(`nsgroup state in swtpm${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let native: Native;
  let tpm: Swtpm;
  let work: string;
  /** The TPM calls that change NV, as the loader made them. */
  let nvChanges: string[];
  let recording: NsgroupTpm;

  beforeAll(() => {
    native = loadNative();
  });

  beforeEach(async () => {
    tpm = await startSwtpm();
    work = mkdtempSync(path.join(os.tmpdir(), 'mos-nsgroup-test-'));
    nvChanges = [];
    recording = {
      tpmNvReadPublic: (tcti, index) => native.tpmNvReadPublic(tcti, index),
      tpmNvRead: (tcti, index) => native.tpmNvRead(tcti, index),
      tpmNvDefine: (tcti, definition) => (nvChanges.push('define'), native.tpmNvDefine(tcti, definition)),
      tpmNvWrite: (tcti, index, data) => (nvChanges.push('write'), native.tpmNvWrite(tcti, index, data)),
    };
  });

  afterEach(async () => {
    await tpm.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const file = (name: string) => path.join(work, name);
  const boot = (wanted: string[]) => loadNsgroupRanges(recording, tpm.tcti, wanted, []);

  /** A reboot as the TPM sees it (TPM Reset); without swtpm_ioctl the TPM just keeps running. */
  function reboot() {
    if (!SWTPM_IOCTL) return;
    tpm.tool('tpm2_shutdown', ['-c']);
    execFileSync(SWTPM_IOCTL, ['--tcp', `127.0.0.1:${tpm.port + 1}`, '-i'], { stdio: 'ignore' });
    tpm.tool('tpm2_startup', ['-c']);
  }

  /** tpm2_nvreadpublic's view of the index. */
  function oraclePublic(indexHex = INDEX_HEX) {
    const out = tpm.tool('tpm2_nvreadpublic', [indexHex]);
    return {
      attributes: Number(/attributes:\s*\n\s*friendly: \S+\s*\n\s*value: (0x[0-9a-f]+)/i.exec(out)?.[1]),
      size: Number(/size: (\d+)/.exec(out)?.[1]),
      nameAlg: /hash algorithm:\s*\n\s*friendly: (\S+)/.exec(out)?.[1],
      hasPolicy: /authorization policy: \S/.test(out),
    };
  }

  /** tpm2_nvread with the index's own (empty) auth: the bytes, and for our state the JSON and padding. */
  function oracleRead(indexHex = INDEX_HEX) {
    tpm.tool('tpm2_nvread', [indexHex, '-o', file('read.bin')]);
    const data = readFileSync(file('read.bin'));
    const end = data.indexOf(0);
    return {
      data,
      get json(): unknown {
        return JSON.parse(data.subarray(0, end).toString('latin1'));
      },
      padding: data.subarray(end),
    };
  }

  it('first boot defines and writes; tpm2-tools sees the index and reads the assignment with no authorization but the index\'s own', async () => {
    const result = await boot(['web', 'db', 'none']);
    expect(result).toMatchObject({ ok: true, persisted: true, changed: true, steps: ['define', 'write'], added: ['db', 'web'] });
    expect(nvChanges).toEqual(['define', 'write']);

    expect(oraclePublic()).toEqual({ attributes: NSGROUP_STATE_NV_ATTRIBUTES | TPMA_NV.WRITTEN, size: NSGROUP_STATE_SIZE, nameAlg: 'sha256', hasPolicy: false });
    expect(tpm.tool('tpm2_nvreadpublic', [INDEX_HEX])).toContain(`friendly: ${formatNvAttributes(NSGROUP_STATE_NV_ATTRIBUTES | TPMA_NV.WRITTEN)}`);
    const stored = oracleRead();
    expect(stored.json).toEqual({ v: 1, ranges: { db: 1, web: 2 }, retired: {} });
    expect(stored.data).toHaveLength(NSGROUP_STATE_SIZE);
    expect(stored.padding.every((byte) => byte === 0)).toBe(true);

    // The write needs the owner; a write of part of the index is refused (WRITEALL).
    writeFileSync(file('part.bin'), '{"v":1}');
    expect(tpm.tryTool('tpm2_nvwrite', [INDEX_HEX, '-i', file('part.bin')]).status).not.toBe(0);
    expect(tpm.tryTool('tpm2_nvwrite', [INDEX_HEX, '-C', 'o', '-i', file('part.bin')]).status).not.toBe(0);
    expect(oracleRead().data).toEqual(stored.data);
  });

  it('every later boot reads the same ranges and writes nothing', async () => {
    const first = await boot(['web', 'db']);
    const written = oracleRead().data;
    for (let n = 0; n < 2; n++) {
      tpm.tool('tpm2_pcrextend', [`7:sha256=${'07'.repeat(32)}`]);
      reboot();
      // A TPM Reset indeed (PCRs back to zero), when swtpm_ioctl can power-cycle it.
      if (SWTPM_IOCTL) expect(await native.tpmPcrRead(tpm.tcti, 'sha256', [7])).toEqual([Buffer.alloc(32)]);
      nvChanges.length = 0;
      const again = await boot(['db', 'web']);
      expect(again).toMatchObject({ ok: true, changed: false, steps: [] });
      expect(again.ok && again.assignment).toEqual(first.ok && first.assignment);
      expect(nvChanges).toEqual([]);
    }
    expect(oracleRead().data).toEqual(written);
  });

  it('updates: adding a group keeps the old ranges, removing one retires it, a new one never gets a retired range', async () => {
    await boot(['web', 'db']);
    reboot();
    const added = await boot(['web', 'db', 'cache']);
    expect(added.ok && slots(added.assignment.ranges)).toEqual({ db: 1, web: 2, cache: 3 });
    expect(oracleRead().json).toEqual({ v: 1, ranges: { cache: 3, db: 1, web: 2 }, retired: {} });

    reboot();
    const removed = await boot(['web', 'cache']);
    expect(removed).toMatchObject({ ok: true, retired: ['db'], steps: ['write'] });
    expect(oracleRead().json).toEqual({ v: 1, ranges: { cache: 3, web: 2 }, retired: { db: 1 } });

    reboot();
    const fresh = await boot(['web', 'cache', 'mail']);
    expect(fresh.ok && slots(fresh.assignment.ranges)).toEqual({ web: 2, cache: 3, mail: 4 });
    expect(oracleRead().json).toEqual({ v: 1, ranges: { cache: 3, mail: 4, web: 2 }, retired: { db: 1 } });

    reboot();
    const back = await boot(['db', 'web', 'cache', 'mail']);
    expect(back.ok && slots(back.assignment.ranges)).toEqual({ db: 1, web: 2, cache: 3, mail: 4 });
    expect(oracleRead().json).toEqual({ v: 1, ranges: { cache: 3, db: 1, mail: 4, web: 2 }, retired: {} });
  });

  it('tampering with tpm2-tools: garbage, or the index redefined with other attributes, is refused and left as found', async () => {
    await boot(['web']);
    writeFileSync(file('garbage.bin'), randomBytes(NSGROUP_STATE_SIZE));
    tpm.tool('tpm2_nvwrite', [INDEX_HEX, '-C', 'o', '-i', file('garbage.bin')]);
    nvChanges.length = 0;
    expect(await boot(['web'])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: expect.stringMatching(/nsgroup state is not valid/) });
    expect(nvChanges).toEqual([]);
    expect(oracleRead().data).toEqual(readFileSync(file('garbage.bin')));

    tpm.tool('tpm2_nvundefine', [INDEX_HEX, '-C', 'o']);
    tpm.tool('tpm2_nvdefine', [INDEX_HEX, '-C', 'o', '-s', String(NSGROUP_STATE_SIZE), '-a', 'ownerread|ownerwrite|authread|authwrite|no_da']);
    const forged = Buffer.alloc(NSGROUP_STATE_SIZE);
    forged.write('{"v":1,"ranges":{"web":7},"retired":{}}', 'latin1');
    writeFileSync(file('forged.bin'), forged);
    tpm.tool('tpm2_nvwrite', [INDEX_HEX, '-i', file('forged.bin')]);
    expect(await boot(['web'])).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE', message: expect.stringMatching(/is not mos's nsgroup state \(attributes/) });
    expect(nvChanges).toEqual([]);
    expect(oraclePublic().attributes).toBe(TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA | TPMA_NV.WRITTEN);
  });

  it('recovery as docs/nsgroups.md has it: a state written by hand is read; an undefined index starts afresh', async () => {
    await boot(['web']);
    const json = '{"v":1,"ranges":{"web":5},"retired":{"old":2}}';
    writeFileSync(file('state.bin'), Buffer.concat([Buffer.from(json), Buffer.alloc(NSGROUP_STATE_SIZE - json.length)]));
    // After a TPM clear: defined by hand with the attributes the doc gives, then written.
    tpm.tool('tpm2_nvundefine', [INDEX_HEX, '-C', 'o']);
    tpm.tool('tpm2_nvdefine', [INDEX_HEX, '-C', 'o', '-s', '512', '-a', 'ownerwrite|writeall|authread|no_da']);
    tpm.tool('tpm2_nvwrite', [INDEX_HEX, '-C', 'o', '-i', file('state.bin')]);
    expect(tpm.tool('tpm2_nvread', [INDEX_HEX]).replace(/\0+$/, '')).toBe(json);
    const kept = await boot(['web', 'db']);
    expect(kept.ok && { ranges: slots(kept.assignment.ranges), retired: slots(kept.assignment.retired) }).toEqual({ ranges: { web: 5, db: 1 }, retired: { old: 2 } });

    tpm.tool('tpm2_nvundefine', [INDEX_HEX, '-C', 'o']);
    const anew = await boot(['web', 'db']);
    expect(anew).toMatchObject({ ok: true, steps: ['define', 'write'] });
    expect(anew.ok && slots(anew.assignment.ranges)).toEqual({ db: 1, web: 2 });
  });

  it('tpmNvRead reads an AUTHREAD index larger than one NV buffer in chunks, as tpm2_nvread does', async () => {
    const bufferMax = Number(/TPM2_PT_NV_BUFFER_MAX:\s*raw: (0x[0-9a-f]+)/i.exec(tpm.tool('tpm2_getcap', ['properties-fixed']))![1]);
    const data = randomBytes(bufferMax + 300);
    writeFileSync(file('big.bin'), data);
    tpm.tool('tpm2_nvdefine', [SPARE_INDEX_HEX, '-C', 'o', '-s', String(data.length), '-a', 'authread|ownerwrite|no_da']);
    const unwritten = await rejection(native.tpmNvRead(tpm.tcti, SPARE_INDEX));
    expect(unwritten).toMatchObject({ code: 'TPM_RC_NV_UNINITIALIZED', syscall: 'Esys_NV_Read', message: `Esys_NV_Read TPM_RC_NV_UNINITIALIZED ${SPARE_INDEX_HEX}` });
    tpm.tool('tpm2_nvwrite', [SPARE_INDEX_HEX, '-C', 'o', '-i', file('big.bin')]);
    expect(await native.tpmNvRead(tpm.tcti, SPARE_INDEX)).toEqual(data);
    expect(oracleRead(SPARE_INDEX_HEX).data).toEqual(data);
  });

  it('tpmNvRead of an index without AUTHREAD fails as the fake says: TPM_RC_AUTH_UNAVAILABLE', async () => {
    tpm.tool('tpm2_nvdefine', [SPARE_INDEX_HEX, '-C', 'o', '-s', '8', '-a', 'ownerread|ownerwrite|no_da']);
    writeFileSync(file('eight.bin'), Buffer.alloc(8, 1));
    tpm.tool('tpm2_nvwrite', [SPARE_INDEX_HEX, '-C', 'o', '-i', file('eight.bin')]);
    const error = await rejection(native.tpmNvRead(tpm.tcti, SPARE_INDEX));
    expect(error).toMatchObject({ code: 'TPM_RC_AUTH_UNAVAILABLE', rc: 0x12f, syscall: 'Esys_NV_Read', subject: SPARE_INDEX_HEX });
    await expect(native.tpmNvRead(tpm.tcti, SPARE_INDEX + 1)).rejects.toMatchObject({ code: 'TPM_RC_HANDLE' });
    expect(() => native.tpmNvRead(tpm.tcti, 0x8100_0001)).toThrow(TypeError);
  });
});
