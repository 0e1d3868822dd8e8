/**
 * Ctrl-Alt-Del on the guest's keyboard (QMP send-key): the kernel hands it to PID 1 as SIGINT
 * (once PID 1 has turned CAD off), and PID 1 shuts down in order: the reboot marker, then QEMU
 * exits by itself (-no-reboot turns the guest's reboot into QEMU's exit).
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers, TEST_FLAGS, Timeouts } from '../../harness/markers.ts';

export default defineCase({
  id: '05-ctrl-alt-del',
  title: 'ctrl-alt-del gives an orderly shutdown',
  images: ['direct'],
  timeoutMs: 240_000,
  async run(t) {
    const vm = await t.boot({ name: 'vm', boot: 'direct', cmdline: TEST_FLAGS });
    await vm.waitFor(Markers.servicesReady, Timeouts.directBoot);
    t.step(`services ready after ${vm.elapsed}`);

    const since = vm.console.mark();
    const qmp = await vm.qmp();
    await qmp.sendCtrlAltDel();
    const [, action] = await vm.waitFor(Markers.reboot, Timeouts.shutdown, { since });
    t.step(`shutdown marker (${action}) after ${vm.elapsed}`);
    await vm.waitForExit(Timeouts.shutdown);
    assert.doesNotMatch(vm.console.content, Markers.kernelPanic);
    // An orderly shutdown, not the kernel's immediate CAD reboot: PID 1 printed its marker first.
    assert.ok(action === 'reboot' || action === 'poweroff' || action === 'halt');
    t.step(`QEMU exited after ${vm.elapsed}`);
  },
});
