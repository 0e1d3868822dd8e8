/**
 * A service that exits non-zero on purpose in the test image is restarted by PID 1, and the host
 * sees its restart count: `mosctl --json status <svc>` → restarts ≥ 1.
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { crashyServiceName, type ServiceStatus, type StatusJson } from '../../harness/guest-types.ts';
import { Markers, TEST_FLAGS, Timeouts } from '../../harness/markers.ts';

export default defineCase({
  id: '03-service-restart',
  title: 'a crashing service is restarted and shows its restart count',
  images: ['direct'],
  timeoutMs: 240_000,
  async run(t) {
    const vm = await t.boot({ name: 'vm', boot: 'direct', cmdline: TEST_FLAGS });
    await vm.waitFor(Markers.servicesReady, Timeouts.directBoot);
    t.step(`services ready after ${vm.elapsed}`);

    const { services } = await vm.mosctlJson<StatusJson>('status');
    const name = crashyServiceName(services);
    assert.ok(name, `the test image has no crashing service (want one named *crash*/*flaky*, or set MOS_VM_CRASHY_SERVICE); services: ${services.map((s) => s.name).join(', ')}`);

    // Poll the control API (each poll is one mosctl run, ~0.1-0.3 s) until a restart shows.
    const deadline = Date.now() + 90_000;
    let status: ServiceStatus;
    for (;;) {
      status = await vm.mosctlJson<ServiceStatus>('status', name);
      if (status.restarts >= 1) break;
      assert.ok(Date.now() < deadline, `${name} never restarted; last status ${JSON.stringify(status)}`);
      assert.ok(!vm.hasExited, 'QEMU exited');
    }
    assert.ok(status.lastExit, `${name} has a last exit`);
    assert.notEqual(status.lastExit.text, 'status=0/SUCCESS', `${name} exited non-zero`);
    t.step(`${name}: restarts=${status.restarts} last exit ${status.lastExit.text} after ${vm.elapsed}`);

    const text = await vm.mosctl('status', name);
    assert.equal(text.code, 0, `${text.command}: ${text.stderr}${text.stdout}`);
    assert.match(text.stdout, new RegExp(name));
    assert.doesNotMatch(vm.console.content, Markers.kernelPanic);
  },
});
