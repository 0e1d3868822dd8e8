/**
 * `npm run demo`: boots the demo machine the way a device boots: OVMF with Secure Boot, the
 * signed UKI from an ESP, a TPM from swtpm. Then, from the host over the virtio-serial control
 * port: `mosctl status`, a service that crashes on purpose shown recovering, the boot timeline,
 * and `mosctl poweroff` to a clean power-down. Each step prints with its time.
 */
import { defineCase, runCase } from './harness/case.ts';
import { ensureVmPackages } from './harness/deps.ts';
import type { Machine } from './harness/machine.ts';
import { Markers, Timeouts } from './harness/markers.ts';
import type { ServiceStatus } from './harness/guest-types.ts';

const bold = (text: string) => (process.stdout.isTTY ? `\x1b[1m${text}\x1b[0m` : text);

async function show(vm: Machine, ...args: string[]): Promise<void> {
  const result = await vm.mosctl(...args);
  process.stdout.write(`$ mosctl ${args.join(' ')}\n${result.stdout}${result.stderr}`);
  if (result.code !== 0) throw new Error(`mosctl ${args.join(' ')} exited ${result.code}`);
}

const demo = defineCase({
  id: '00-demo',
  title: 'the demo machine',
  images: ['uefi'],
  timeoutMs: 600_000,
  async run(t) {
    t.step('booting: OVMF (Secure Boot on) → signed UKI → Node as PID 1, with a TPM from swtpm');
    const vm = await t.boot({ name: 'demo', boot: 'uefi', secureBoot: true, tpm: true, control: true });
    await vm.waitFor(Markers.secureBootEnabled, Timeouts.uefiBoot);
    t.step(`the kernel reports Secure Boot enabled (${vm.elapsed})`);
    await vm.waitFor(Markers.servicesReady, Timeouts.uefiBoot);
    t.step(`mos reports every service ready (${vm.elapsed}); asking it from the host:`);
    await show(vm, 'status');

    const crashy = 'flaky';
    t.step(`"${crashy}" exits with status 3 on purpose; waiting for mos to restart it`);
    const deadline = Date.now() + 120_000;
    for (;;) {
      const status = await vm.mosctlJson<ServiceStatus>('status', crashy);
      if (status.restarts >= 1 && status.state === 'running') break;
      if (Date.now() > deadline) throw new Error(`${crashy} was not restarted: ${JSON.stringify(status)}`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    await show(vm, 'status', crashy);

    t.step('the boot timeline, from the guest clock');
    await show(vm, 'analyze');

    t.step('powering off through mosctl');
    const since = vm.console.mark();
    await show(vm, 'poweroff');
    await vm.waitFor(Markers.poweroff, Timeouts.shutdown, { since });
    await vm.waitForExit(Timeouts.shutdown);
    t.step(`the machine powered off cleanly (${vm.elapsed})`);
  },
});

export async function main(): Promise<number> {
  ensureVmPackages();
  const log = (line: string) => process.stdout.write(`${bold(line)}\n`);
  try {
    const result = await runCase(demo, { log });
    log(`demo done in ${result.seconds.toFixed(1)} s`);
    return 0;
  } catch (error) {
    process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
