/**
 * Issue 5, storage volumes in a real guest: the install's `storage` items become ext4
 * filesystems on disks named by their label (the virtio serial), mounted into the services at
 * their `dest`. `keep` is persistent, `temp` is recreated at each boot, `absent` has no disk.
 *   notes     uses keep (/keep) and temp (/temp): writes a marker into each when it finds none,
 *             and says what it found. Boot 1: both empty. Boot 2 (same disks): keep has the marker,
 *             temp is empty again.
 *   lost      uses absent: fails with E_VOLUME_MISSING; notes runs regardless.
 * A disk labelled machine-scratch holds the writable layers, made afresh at each boot.
 * Each volume's root belongs to its nsgroup's root: nsgroup ranges are assigned at the first
 * boot, kept in the TPM, and found the same at the second.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';
import { makeStore } from '../../harness/store.ts';
import { bootWithStore, describeStore } from '../../harness/trust.ts';
import type { ExtraDrive } from '../../harness/qemu.ts';

const SCRIPT = [
  'for d in keep temp; do',
  '  if [ -f /$d/marker ]; then echo "volume $d: found $(/bin/busybox cat /$d/marker)";',
  '  else echo "volume $d: empty"; echo "written at boot $BOOT" > /$d/marker; fi;',
  'done;',
  'exec /bin/busybox sleep 1000000',
].join(' ');

interface ServiceStatusJson {
  name: string;
  state: string;
  errorCode: string | null;
}

export default defineCase({
  id: '11-storage-volumes',
  title: 'storage volumes: a persistent one keeps a file across a reboot, a recreated one does not',
  images: ['direct'],
  timeoutMs: 420_000,
  async run(t) {
    const busybox = readFileSync('/bin/busybox');
    const store = await makeStore({
      dir: t.scratch('store'),
      targets: [
        {
          service_name: 'notes',
          files: { '/bin/busybox': busybox },
          entrypoint: ['/bin/busybox', 'sh', '-c', SCRIPT],
          extra: { storage: [{ dest: '/keep', label: 'keep' }, { dest: '/temp', label: 'temp' }] },
        },
        {
          service_name: 'lost',
          files: { '/bin/busybox': busybox },
          entrypoint: ['/bin/busybox', 'sleep', '1000000'],
          extra: { storage: [{ dest: '/data', label: 'absent' }] },
        },
      ],
      manifest: {
        storage: [
          { label: 'keep', persistent: true, nsgroup: 'notes', size: 16 },
          { label: 'temp', persistent: false, nsgroup: 'notes', size: 16 },
          { label: 'absent', persistent: true, nsgroup: 'lost', size: 16 },
        ],
      },
    });
    assert.ok(store.expected.ok, `the host verifier accepts the store: ${JSON.stringify(store.expected)}`);
    t.step(describeStore(store));

    // Blank disks named by the volume labels (sparse files; the guest makes the filesystems).
    const disk = (label: string): ExtraDrive => {
      const file = path.join(t.scratch('disks'), `${label}.img`);
      execFileSync('truncate', ['-s', '32M', file]);
      return { file, serial: label, format: 'raw' };
    };
    // And the machine's scratch disk: the writable layers go there, made afresh at every boot.
    const disks = [disk('keep'), disk('temp'), disk('machine-scratch')];
    const tpmStateDir = t.tpmState();
    const failOn = [Markers.kernelPanic, Markers.emergency];

    const boot = async (name: string) => {
      const vm = await bootWithStore(t, { name, kind: 'direct', store, tpmStateDir, extraDrives: disks });
      await vm.waitFor(Markers.trustVerified, Timeouts.directBoot, { failOn });
      const [, missing] = await vm.waitFor(/mos: storage: lost: (E_[A-Z_]+): [^\n]*\n/, Timeouts.directBoot, { failOn });
      assert.equal(missing, 'E_VOLUME_MISSING');
      await vm.waitFor(/mos: storage: notes \(container\) verified and mounted/, Timeouts.directBoot, { failOn });
      const deadline = Date.now() + 60_000;
      let lines = '';
      for (;;) {
        lines = (await vm.mosctl('logs', '-n', '50', 'notes')).stdout;
        if (/volume temp: /.test(lines)) break;
        if (Date.now() > deadline) throw new Error(`notes said nothing about its volumes: ${lines}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      const services = (await vm.mosctlJson<{ services: ServiceStatusJson[] }>('status')).services;
      const lost = services.find((s) => s.name === 'lost')!;
      assert.equal(lost.state, 'failed');
      assert.equal(lost.errorCode, 'E_VOLUME_MISSING');
      assert.equal(services.find((s) => s.name === 'notes')!.state, 'running');
      return { vm, lines };
    };

    const first = await boot('boot1');
    assert.match(first.lines, /volume keep: empty/);
    assert.match(first.lines, /volume temp: empty/);
    assert.match(first.vm.console.content, /mos: storage: volume keep \(persistent\) made \(first boot\) and mounted/);
    // nsgroups sorted: lost gets the first range above the host's ids, notes the next; both kept in the TPM.
    assert.match(first.vm.console.content, /mos: nsgroups: lost 65536-131071, notes 131072-196607 \(TPM NV 0x01806d70; new: lost, notes\)/);
    assert.match(first.vm.console.content, /mos: storage: volume keep \(persistent\) made \(first boot\) and mounted at \S+, root owned by 131072:131072 \(nsgroup "notes"\)/);
    t.step(`boot 1 after ${first.vm.elapsed}: both volumes empty, markers written, owned by nsgroup notes' root (131072); lost failed with E_VOLUME_MISSING`);
    await first.vm.powerOff(Timeouts.shutdown);

    const second = await boot('boot2');
    assert.match(second.lines, /volume keep: found written at boot/);
    assert.match(second.lines, /volume temp: empty/);
    assert.match(second.vm.console.content, /mos: storage: volume keep \(persistent\) checked and mounted/);
    assert.match(second.vm.console.content, /mos: storage: volume temp \(recreated each boot\) made afresh and mounted/);
    assert.match(second.vm.console.content, /mos: storage: volume machine-scratch \(recreated each boot\) made afresh and mounted/);
    // The same ranges from the TPM, nothing new; the kept volume still belongs to notes' root.
    assert.match(second.vm.console.content, /mos: nsgroups: lost 65536-131071, notes 131072-196607 \(TPM NV 0x01806d70\)/);
    assert.match(second.vm.console.content, /mos: storage: volume keep \(persistent\) checked and mounted at \S+, root owned by 131072:131072/);
    t.step(`boot 2 after ${second.vm.elapsed}: the same nsgroup ranges from the TPM; keep kept its file, temp was recreated`);
    await second.vm.powerOff(Timeouts.shutdown);
  },
});
