/**
 * An exception injected into PID 1 (the test image's hook `mos.test_crash=<phase>`) gives the
 * emergency state: the console shows the reason, the host sees `health: emergency` with it
 * through mosctl, and the kernel does not panic (PID 1 stays alive).
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import type { StatusJson } from '../../harness/guest-types.ts';
import { Markers, TEST_FLAGS, Timeouts } from '../../harness/markers.ts';

/** Which phase throws (see init/boot/); override with MOS_VM_CRASH_PHASE. */
export const CRASH_PHASE = process.env.MOS_VM_CRASH_PHASE ?? 'supervise';

export default defineCase({
  id: '04-pid1-crash',
  title: 'an exception in PID 1 gives the emergency state, not a kernel panic',
  images: ['direct'],
  timeoutMs: 240_000,
  async run(t) {
    const vm = await t.boot({ name: 'vm', boot: 'direct', cmdline: [...TEST_FLAGS, `mos.test_crash=${CRASH_PHASE}`] });
    const [, reason] = await vm.waitFor(Markers.emergency, Timeouts.directBoot);
    t.step(`emergency after ${vm.elapsed}: ${reason}`);

    const status = await vm.mosctlJson<StatusJson>('status');
    assert.equal(status.info.health, 'emergency');
    assert.ok(status.info.reason, 'the emergency has a reason');
    assert.equal(status.info.reason, reason, 'mosctl shows the reason the console printed');
    assert.match(reason!, new RegExp(`mos\\.test_crash=${CRASH_PHASE}`));
    const text = await vm.mosctl('status');
    assert.match(text.stdout, /health: emergency/);

    // PID 1 is still alive and serving (a second request after the first), and no panic.
    const again = await vm.mosctlJson<StatusJson>('status');
    assert.equal(again.info.pid, 1);
    assert.ok(!vm.hasExited, 'QEMU is still running');
    assert.doesNotMatch(vm.console.content, Markers.kernelPanic);
    t.step(`mosctl shows the emergency after ${vm.elapsed}`);
  },
});
