/**
 * Volumes at boot with fake effects: made or checked by the tools, mounted, bound into the
 * services that name them; a missing or broken volume fails only its own services.
 */
import { describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import type { ToolRun } from '../../init/boot/run-tool.ts';
import type { NsgroupRanges } from '../../services/idmap.ts';
import { prepareVolumes, releaseVolumes, type VolumeEffects } from '../../init/storage/volume-phase.ts';
import type { BlockDeviceInfo } from '../../init/storage/volumes.ts';
import type { StorageItem } from '../../init/trust/formats.ts';

const MiB = 1024 * 1024;

function disk(name: string, serial: string, sizeMiB: number): BlockDeviceInfo {
  return { name, path: `/dev/${name}`, major: 254, minor: 16, sizeBytes: sizeMiB * MiB, readOnly: false, serial, partName: null, isPartition: false };
}

function ext4Head(label: string, sizeMiB: number): Buffer {
  const head = Buffer.alloc(MiB);
  const sb = 1024;
  head.writeUInt32LE((sizeMiB * MiB) / 4096, sb + 4); // blocks count
  head.writeUInt32LE(2, sb + 24); // log block size: 4096
  head.writeUInt32LE(32768, sb + 32); // blocks per group
  head.writeUInt32LE(8192, sb + 40); // inodes per group
  head.writeUInt32LE(8192, sb); // inodes count
  head.writeUInt16LE(0xef53, sb + 56);
  head.writeUInt16LE(1, sb + 58); // state: clean
  head.writeUInt32LE(1, sb + 76); // rev level
  head.writeUInt16LE(256, sb + 88); // inode size
  head.write(label, sb + 120, 'latin1');
  Buffer.from('00112233445566778899aabbccddeeff', 'hex').copy(head, sb + 104);
  return head;
}

function effects(devices: BlockDeviceInfo[], heads: Map<string, Buffer>, tool: (argv: string[]) => Partial<ToolRun> = () => ({})) {
  const native = new FakeNative();
  const lines: string[] = [];
  const tools: string[][] = [];
  const fx: VolumeEffects = {
    native,
    listBlockDevices: () => devices,
    readHead: async (device, length) => heads.get(device)?.subarray(0, length) ?? Buffer.alloc(length),
    runTool: async (argv) => {
      tools.push(argv);
      return { code: 0, signal: null, output: '', timedOut: false, ...tool(argv) };
    },
    mkdirp: () => {},
    say: (line) => void lines.push(line),
    log: () => {},
  };
  return { native, lines, tools, fx };
}

const item = (label: string, persistent: boolean, nsgroup = 'notes', size = 16): StorageItem => ({ label, persistent, nsgroup, size });
/** nsgroup notes owns ids 131072..196607 (slot 2). */
const NSGROUPS: NsgroupRanges = { ok: true, assignment: { ranges: { notes: { hostId: 131072, size: 65536 } }, retired: {} } };

describe('prepareVolumes', () => {
  it('makes a blank persistent volume, remakes a recreated one, checks an existing one; mounts all', async () => {
    const { native, lines, tools, fx } = effects(
      [disk('vdb', 'keep', 32), disk('vdc', 'temp', 32), disk('vdd', 'old', 32)],
      new Map([['/dev/vdd', ext4Head('old', 32)]]),
    );
    const volumes = await prepareVolumes([item('keep', true), item('temp', false), item('old', true)], '/run/mos/volumes', fx, NSGROUPS);
    expect([...volumes.values()].map((v) => [v.label, v.plan?.action, v.mounted, v.failure])).toEqual([
      ['keep', 'mkfs', true, null],
      ['temp', 'mkfs', true, null],
      ['old', 'check', true, null],
    ]);
    expect(tools.map((argv) => `${argv[0]} ${argv.at(-1)}`)).toEqual(['mke2fs /dev/vdb', 'mke2fs /dev/vdc', 'e2fsck /dev/vdd']);
    // The volume's root belongs to the nsgroup's root (container uid 0 = host uid 131072).
    expect(tools[0]!.join(' ')).toMatch(/root_owner=131072:131072/);
    expect(native.mounts.map((m) => `${m.source} ${m.target} ${m.fstype} ${m.flags}`)).toEqual([
      '/dev/vdb /run/mos/volumes/keep ext4 6',
      '/dev/vdc /run/mos/volumes/temp ext4 6',
      '/dev/vdd /run/mos/volumes/old ext4 6',
    ]);
    expect(lines).toEqual([
      'mos: storage: volume keep (persistent) made (first boot) and mounted at /run/mos/volumes/keep, root owned by 131072:131072 (nsgroup "notes")',
      'mos: storage: volume temp (recreated each boot) made afresh and mounted at /run/mos/volumes/temp, root owned by 131072:131072 (nsgroup "notes")',
      'mos: storage: volume old (persistent) checked and mounted at /run/mos/volumes/old, root owned by 131072:131072 (nsgroup "notes")',
    ]);
    expect(await releaseVolumes(volumes, fx)).toEqual([]);
    expect(native.umounts.map((u) => u.target)).toEqual(['/run/mos/volumes/old', '/run/mos/volumes/temp', '/run/mos/volumes/keep']);
  });

  it('names each failure with its code and goes on with the next volume', async () => {
    const { native, lines, fx } = effects(
      [disk('vdb', 'small', 8), disk('vdc', 'broken', 32), disk('vdd', 'nomkfs', 32)],
      new Map([['/dev/vdc', ext4Head('broken', 32)]]),
      (argv) => (argv[0] === 'e2fsck' ? { code: 4, output: 'broken: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.' } : argv.at(-1) === '/dev/vdd' ? { code: 1, output: 'mke2fs: Device size reported to be zero.' } : {}),
    );
    const volumes = await prepareVolumes(
      [item('absent', true), item('small', true), item('broken', true), item('nomkfs', false), item('fine', false)],
      '/run/mos/volumes',
      fx,
      NSGROUPS,
    );
    expect([...volumes.values()].map((v) => [v.label, v.failure?.code ?? 'ok'])).toEqual([
      ['absent', 'E_VOLUME_MISSING'],
      ['small', 'E_VOLUME_TOO_SMALL'],
      ['broken', 'E_VOLUME_CORRUPT'],
      ['nomkfs', 'E_VOLUME_MKFS'],
      ['fine', 'E_VOLUME_MISSING'],
    ]);
    expect(lines[3]).toBe('mos: storage: volume nomkfs: E_VOLUME_MKFS: volume nomkfs on /dev/vdd: mke2fs exited with 1: mke2fs: Device size reported to be zero.');
    expect(native.mounts).toEqual([]);
  });
});

describe('volume ownership by nsgroup', () => {
  it('the host nsgroups own theirs as root; a named nsgroup without a range fails only its volumes, with the reason', async () => {
    const { lines, tools, fx } = effects([disk('vdb', 'hostly', 32), disk('vdc', 'grouped', 32)], new Map());
    const refused: NsgroupRanges = { ok: false, code: 'E_NSGROUP_STATE', message: 'TPM NV index 0x01806d70 is not mos\'s nsgroup state' };
    const volumes = await prepareVolumes([item('hostly', true, 'none'), item('grouped', true, 'notes')], '/run/mos/volumes', fx, refused);
    expect([...volumes.values()].map((v) => [v.label, v.failure?.code ?? 'ok'])).toEqual([
      ['hostly', 'ok'],
      ['grouped', 'E_NSGROUP_STATE'],
    ]);
    expect(tools.map((argv) => argv.join(' '))).toEqual([expect.stringMatching(/root_owner=0:0.* \/dev\/vdb$/)]);
    expect(lines[1]).toBe("mos: storage: volume grouped: E_NSGROUP_STATE: volume grouped: nsgroup notes has no id range: TPM NV index 0x01806d70 is not mos's nsgroup state");
  });
});
