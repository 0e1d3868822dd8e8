/**
 * Issue 5, service filesystems in a real guest (dm-verity only exists there): a store whose
 * install has three container targets, each one squashfs layer with its hash tree (mosb), each
 * image holding a static busybox:
 *   web       untouched: activated (loop → dm-verity → squashfs → overlay), runs chroot'ed in its
 *             overlay and says so; stopping it releases its overlay, dm and loop devices, and
 *             starting it activates them again.
 *   corrupt   one byte of its squashfs data flipped after signing: activation passes (block 0 and
 *             the tree are intact), the service reads its whole binary, the kernel refuses the bad
 *             block with EIO, and it ends `failed` with E_VERITY_CORRUPT; its "read it all" line
 *             never appears (the corrupted data never reached it).
 *   badhash   one byte of its hash tree's top block flipped: the signed root hash no longer
 *             matches the image, refused at activation with E_VERITY_ROOT_HASH, never spawned.
 * At power-off every target is released: no loop or dm device left.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';
import { makeStore, tamperTargetLayer, tamperTargetVerityTree } from '../../harness/store.ts';
import { bootWithStore, describeStore } from '../../harness/trust.ts';
import type { FixtureTarget } from '../../../test/helpers/manifest-fixtures.ts';

interface ServiceStatusJson {
  name: string;
  state: string;
  pid: number | null;
  errorCode: string | null;
  reason: string | null;
}

function busyboxTarget(name: string, script: string): FixtureTarget {
  return {
    service_name: name,
    files: { '/bin/busybox': readFileSync('/bin/busybox'), '/etc/motd': `image of ${name}\n` },
    entrypoint: ['/bin/busybox', 'sh', '-c', script],
  };
}

export default defineCase({
  id: '10-verity-images',
  title: 'service images: dm-verity activation, a corrupted layer, a wrong root hash, release',
  images: ['direct'],
  timeoutMs: 420_000,
  async run(t) {
    const targets = [
      busyboxTarget('web', 'echo "hello from $(/bin/busybox cat /etc/motd)"; exec /bin/busybox sleep 1000000'),
      busyboxTarget('corrupt', '/bin/busybox md5sum /bin/busybox && echo "read it all"; exit 1'),
      busyboxTarget('badhash', 'echo "must never run"; exec /bin/busybox sleep 1000000'),
    ];
    const store = await makeStore({
      dir: t.scratch('store'),
      targets,
      tamper: (published) => [tamperTargetLayer('corrupt')(published), tamperTargetVerityTree('badhash')(published)].join('; '),
    });
    assert.ok(store.expected.ok, `the host verifier (which checks layer sizes, not their bytes) accepts it: ${JSON.stringify(store.expected)}`);
    t.step(describeStore(store));

    const vm = await bootWithStore(t, { name: 'vm', kind: 'direct', store });
    const failOn = [Markers.kernelPanic, Markers.emergency];
    await vm.waitFor(Markers.trustVerified, Timeouts.directBoot, { failOn });
    await vm.waitFor(/mos: storage: web \(container\) verified and mounted at (\S+)/, Timeouts.directBoot, { failOn });
    const [, badCode] = await vm.waitFor(/mos: storage: badhash: (E_[A-Z_]+): [^\n]*\n/, Timeouts.directBoot, { failOn });
    assert.equal(badCode, 'E_VERITY_ROOT_HASH');
    t.step(`booted after ${vm.elapsed}: web mounted, badhash refused with ${badCode}`);

    // corrupt: activated, then its run hits the bad block and it ends failed, not in a restart loop.
    const [, corruptCode] = await vm.waitFor(/mos: storage: corrupt: (E_[A-Z_]+): [^\n]*\n/, Timeouts.directBoot, { failOn });
    assert.equal(corruptCode, 'E_VERITY_CORRUPT');
    const deadline = Date.now() + 60_000;
    let services: ServiceStatusJson[] = [];
    for (;;) {
      services = (await vm.mosctlJson<{ services: ServiceStatusJson[] }>('status')).services;
      const byName = new Map(services.map((s) => [s.name, s]));
      if (byName.get('corrupt')?.state === 'failed' && byName.get('web')?.state === 'running') break;
      if (Date.now() > deadline) throw new Error(`services did not settle: ${JSON.stringify(services)}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const byName = new Map(services.map((s) => [s.name, s]));
    assert.equal(byName.get('corrupt')!.errorCode, 'E_VERITY_CORRUPT');
    assert.equal(byName.get('badhash')!.state, 'failed');
    assert.equal(byName.get('badhash')!.errorCode, 'E_VERITY_ROOT_HASH');
    assert.equal(byName.get('badhash')!.pid, null);
    t.step(`corrupt failed with ${corruptCode} after ${vm.elapsed}; badhash failed with E_VERITY_ROOT_HASH, never spawned`);

    const logs = async (name: string) => (await vm.mosctl('logs', '-n', '200', name)).stdout;
    assert.match(await logs('web'), /hello from image of web/);
    assert.doesNotMatch(await logs('corrupt'), /read it all/, 'the corrupted data never reached the service');
    assert.doesNotMatch(await logs('badhash'), /must never run/);
    if (/device-mapper: verity: [^\n]*data block \d+ is corrupted/.test(vm.console.content)) t.log('the kernel logged the corrupted block');

    // Stop releases web's devices; start activates them again.
    const since = vm.console.content.length;
    assert.equal((await vm.mosctl('stop', 'web')).code, 0);
    const [, loopBefore, loopAfter, dmBefore, dmAfter] = await vm.waitFor(
      /mos: storage: web released \(loop devices (\d+) -> (\d+), dm devices (\d+) -> (\d+)\)/,
      60_000,
      { since, failOn },
    );
    assert.equal(Number(loopBefore) - Number(loopAfter), 1, 'one loop device released');
    assert.equal(Number(dmBefore) - Number(dmAfter), 1, 'one dm device released');
    t.step(`web stopped: loop devices ${loopBefore} -> ${loopAfter}, dm devices ${dmBefore} -> ${dmAfter}`);
    assert.equal((await vm.mosctl('start', 'web')).code, 0);
    await vm.waitFor(/mos: storage: web \(container\) verified and mounted at/, 60_000, { since, failOn });
    const web = (await vm.mosctlJson<ServiceStatusJson>('status', 'web'));
    assert.equal(web.state, 'running');
    t.step('web started again on a fresh activation');

    const offAt = vm.console.content.length;
    await vm.powerOff(Timeouts.shutdown);
    const [, loopsLeft, dmLeft] = /mos: storage: released all targets \(loop devices left (\d+), dm devices left (\d+)\)/.exec(vm.console.content.slice(offAt)) ?? [];
    assert.equal(loopsLeft, '0', 'no loop device left at power-off');
    assert.equal(dmLeft, '0', 'no dm device left at power-off');
    t.step(`powered off after ${vm.elapsed}: no loop or dm device left`);
  },
});
