/**
 * `npm run demo`: boots the demo machine the way a device boots: OVMF with Secure Boot, a signed
 * UKI from an ESP, a TPM from swtpm, and a signed store of service images on a second disk. Then,
 * from the host: `mosctl status`, the container web service reached with `curl` through QEMU's
 * port forward → the machine's nftables DNAT → the container, `mosctl exec` into it, the two
 * nsgroups' id maps, a
 * service that crashes on purpose shown recovering, the boot timeline, and `mosctl poweroff` to a
 * clean power-down. Each step prints with its time.
 *
 * The store (published with mosb on the host, signed by the test keyset the image trusts):
 *   web     nsgroup `web`, network simple 10.0.3.2/24, port 8080 on the machine → 80 in the
 *           container: busybox httpd serving a page it writes at start (its uid map, hostname).
 *           Limits: memory 64 MiB, 64 tasks (`mosctl status web` shows its use of them).
 *   worker  nsgroup `batch`, network none: says which ids it runs as, then idles.
 *   flaky   nsgroup `batch`, network none: exits with status 3 after 3 s, every run; restarted.
 * The UKI's signed command line names the store and configures the machine's NIC (QEMU
 * user-mode networking): `mos.store=/dev/vdb mos.uplink=eth0,10.0.2.15/24,10.0.2.2`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { defineCase, runCase } from './harness/case.ts';
import { ensureVmPackages } from './harness/deps.ts';
import type { Machine } from './harness/machine.ts';
import { Markers, Timeouts } from './harness/markers.ts';
import type { ServiceStatus } from './harness/guest-types.ts';
import { httpGetWhenUp } from './harness/net.ts';
import { USER_NET_UPLINK } from './harness/qemu.ts';
import { makeStore } from './harness/store.ts';
import { bootWithStore, describeStore, trustUkiCmdline } from './harness/trust.ts';
import { ukiVariant } from './harness/uki.ts';
import type { FixtureTarget } from '../test/helpers/manifest-fixtures.ts';

const bold = (text: string) => (process.stdout.isTTY ? `\x1b[1m${text}\x1b[0m` : text);

/** Port 8080 on the machine → 80 in web (mos lets a container bind low ports in its own netns). */
const WEB_PORTS = { host: 8080, container: 80 } as const;
/** web's cgroup limits (install.json `limits`). */
const WEB_LIMITS = { memory_max: 64 * 1024 * 1024, pids_max: 64 } as const;

async function show(vm: Machine, ...args: string[]): Promise<void> {
  const result = await vm.mosctl(...args);
  process.stdout.write(`$ mosctl ${args.join(' ')}\n${result.stdout}${result.stderr}`);
  if (result.code !== 0) throw new Error(`mosctl ${args.join(' ')} exited ${result.code}`);
}

/** The demo's store targets: static busybox images (no libraries), one per service. */
export function demoTargets(): FixtureTarget[] {
  const busybox = readFileSync('/bin/busybox');
  const page = [
    'mkdir -p /dev/shm/www',
    'set -- $(cat /proc/self/uid_map)',
    'printf "<!doctype html>\\n<title>mos demo</title>\\n<h1>hello from the web container</h1>\\n<p>host %s, uid map %s %s %s (nsgroup web)</p>\\n" "$(hostname)" "$1" "$2" "$3" > /dev/shm/www/index.html',
  ].join('; ');
  const ids = (who: string) => `set -- $(cat /proc/self/uid_map); echo "${who}: running as uid $(id -u), which is host uid $2 (uid map $1 $2 $3)"`;
  return [
    {
      service_name: 'web',
      nsgroup: 'web',
      network: { type: 'simple', ipv4: '10.0.3.2/24', ports: [WEB_PORTS] },
      files: { '/bin/busybox': busybox },
      // The shell is the container's init: it handles TERM so that stopping is quick (docs/crun.md §1).
      entrypoint: ['/bin/busybox', 'sh', '-c', `${page}; ${ids('web')}; trap 'exit 0' TERM; httpd -f -p ${WEB_PORTS.container} -h /dev/shm/www & wait`],
      extra: { limits: WEB_LIMITS },
    },
    {
      service_name: 'worker',
      nsgroup: 'batch',
      network: { type: 'none' },
      files: { '/bin/busybox': busybox },
      entrypoint: ['/bin/busybox', 'sh', '-c', `${ids('worker')}; trap 'exit 0' TERM; sleep 1000000 & wait`],
    },
    {
      service_name: 'flaky',
      nsgroup: 'batch',
      network: { type: 'none' },
      files: { '/bin/busybox': busybox },
      entrypoint: ['/bin/busybox', 'sh', '-c', 'echo "flaky: up, failing in 3 s"; sleep 3; echo "flaky: failing on purpose (exit 3)" >&2; exit 3'],
    },
  ];
}

const demo = defineCase({
  id: '00-demo',
  title: 'the demo machine',
  images: ['uefi'],
  timeoutMs: 600_000,
  async run(t) {
    const store = await makeStore({ dir: t.scratch('store'), targets: demoTargets() });
    if (!store.expected.ok) throw new Error(`the demo store does not verify on the host: ${JSON.stringify(store.expected)}`);
    const uki = await ukiVariant(trustUkiCmdline(t.images.cmdline, [USER_NET_UPLINK]));
    t.step(`signed store of 3 container images (${describeStore(store)}); UKI ${uki.cached ? 'reused' : 'built'}, command line: ${uki.cmdline}`);

    t.step('booting: OVMF (Secure Boot on) → signed UKI → Node as PID 1, a TPM from swtpm, the store on a disk, a NIC on QEMU user networking');
    const vm = await bootWithStore(t, { name: 'demo', kind: 'uefi', store, esp: uki.esp, userNet: { forwards: [{ protocol: 'tcp', guestPort: WEB_PORTS.host }] } });
    const failOn = [Markers.kernelPanic, Markers.emergency];
    await vm.waitFor(Markers.secureBootEnabled, Timeouts.uefiBoot, { failOn });
    t.step(`the kernel reports Secure Boot enabled (${vm.elapsed})`);
    const [verified] = await vm.waitFor(Markers.trustVerified, Timeouts.uefiBoot, { failOn });
    t.step(`${verified} (${vm.elapsed})`);
    await vm.waitFor(Markers.servicesReady, Timeouts.uefiBoot, { failOn });
    for (const line of vm.console.content.match(/mos: (?:nsgroups|networks): [^\n]*/g) ?? []) process.stdout.write(`${line}\n`);
    t.step(`mos reports every service ready (${vm.elapsed}); asking it from the host:`);
    await show(vm, 'status');

    const port = vm.hostPort('tcp', WEB_PORTS.host);
    const url = `http://127.0.0.1:${port}/`;
    t.step(`web from the host: 127.0.0.1:${port} → QEMU → the machine's port ${WEB_PORTS.host} → DNAT → 10.0.3.2:${WEB_PORTS.container} in web's network namespace`);
    await httpGetWhenUp(url, 60_000); // httpd may start listening a moment after "services ready"
    if (existsSync('/usr/bin/curl')) {
      process.stdout.write(`$ curl -sS -i ${url}\n`);
      process.stdout.write(execFileSync('curl', ['-sS', '-i', '--max-time', '10', url], { encoding: 'utf8' }));
    } else {
      const page = await httpGetWhenUp(url, 10_000);
      process.stdout.write(`(curl is not installed: Node's http client instead)\nGET ${url} → ${page.status}\n${page.body}`);
    }

    t.step('web in detail: its memory and tasks against its limits');
    await show(vm, 'status', 'web');

    t.step('a command inside web\'s container, from the host (mos relays crun exec over the control port)');
    await show(vm, 'exec', 'web', '--', '/bin/busybox', 'sh', '-c', 'set -- $(cat /proc/self/uid_map); echo "$(hostname): uid $(id -u) = host uid $2; processes in its PID namespace: $(ls /proc | grep -c "^[0-9]")"');

    t.step('two nsgroups, two id ranges: what each service says about itself');
    await show(vm, 'logs', '-n', '1', 'web');
    await show(vm, 'logs', '-n', '1', 'worker');

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
