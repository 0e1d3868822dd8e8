/**
 * Direct kernel boot → services up → `mosctl status` from the host over virtio-serial →
 * `mosctl poweroff` → the poweroff marker, and QEMU exits by itself.
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers, TEST_FLAGS, Timeouts } from '../../harness/markers.ts';
import { crashyServiceName, type StatusJson } from '../../harness/guest-types.ts';

export default defineCase({
  id: '01-direct-boot',
  title: 'direct boot, mosctl status from the host, mosctl poweroff',
  images: ['direct'],
  timeoutMs: 240_000,
  async run(t) {
    const vm = await t.boot({ name: 'vm', boot: 'direct', cmdline: TEST_FLAGS });
    await vm.waitFor(Markers.servicesReady, Timeouts.directBoot);
    t.step(`services ready after ${vm.elapsed}`);

    const text = await vm.mosctl('status');
    assert.equal(text.code, 0, `${text.command}: ${text.stderr}${text.stdout}`);
    assert.match(text.stdout, /health: ok/);
    const status = await vm.mosctlJson<StatusJson>('status');
    assert.equal(status.info.mode, 'pid1');
    assert.equal(status.info.pid, 1);
    assert.equal(status.info.health, 'ok', `health ${status.info.health}: ${status.info.reason}`);
    assert.ok(status.services.length > 0, 'the test image runs services');
    // Every service but the one that crashes on purpose (case 03) is up.
    const crashy = crashyServiceName(status.services);
    const broken = status.services.filter((s) => s.state === 'failed' && s.name !== crashy);
    assert.deepEqual(broken.map((s) => `${s.name}: ${s.reason}`), [], 'no service failed');
    t.step(`mosctl status: ${status.services.map((s) => `${s.name}=${s.state}`).join(' ')}`);

    // The boot timeline (PID 1's phases) from the host.
    const analyze = await vm.mosctl('analyze');
    assert.equal(analyze.code, 0, `${analyze.command}: ${analyze.stderr}${analyze.stdout}`);
    t.log(`mosctl analyze:\n${analyze.stdout.trimEnd()}`);

    const since = vm.console.mark();
    const off = await vm.mosctl('poweroff');
    assert.equal(off.code, 0, `${off.command}: ${off.stderr}${off.stdout}`);
    await vm.waitFor(Markers.poweroff, Timeouts.shutdown, { since });
    await vm.waitForExit(Timeouts.shutdown);
    assert.doesNotMatch(vm.console.content, Markers.kernelPanic);
    t.step(`powered off after ${vm.elapsed}`);
  },
});
