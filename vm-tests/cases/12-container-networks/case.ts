/**
 * Issue 6 in a real guest: container targets under crun, each in its nsgroup's user namespace,
 * one of them on a `simple` network with a port forward, reached from the host.
 *
 *   web     nsgroup `web`, network simple 10.0.3.2/24, ports [{host: 8080, container: 80}]:
 *           busybox httpd on TCP 80 serving /www/index.html from its image, and a tiny static UDP
 *           echo (udp-echo.c, built by this case: busybox-static has no UDP server) on UDP 80: ports
 *           below 1024, which its root may bind only because mos sets the namespace's
 *           ip_unprivileged_port_start to 0 (see FORWARD). Its volume `webdata` at /data. Limits
 *           memory 64 MiB, 64 tasks.
 *   worker  nsgroup `batch`, network none. Its volume `batchdata` at /data. Limits memory 32 MiB,
 *           16 tasks, put to the kernel: it starts 40 background sleeps (the fork past 16 tasks is refused)
 *           and a dd with a 48 MiB buffer (killed by the OOM killer); `mosctl status` from the host
 *           shows the limits, the tasks in use and the OOM kill.
 *   snoop   nsgroup `batch`, asks for web's volume: refused, E_VOLUME_NSGROUP, never started.
 *
 * The machine has a user-mode NIC (QEMU slirp) configured by `mos.uplink=eth0,10.0.2.15/24,10.0.2.2`;
 * QEMU forwards free ports on the host's 127.0.0.1 (TCP and UDP) to the guest's port 8080.
 * From the host: a real HTTP GET (Node's http client) and a UDP datagram go
 * host 127.0.0.1:P → QEMU → guest eth0 10.0.2.15:8080 → nftables DNAT → 10.0.3.2:8000 in web's netns.
 *
 * Isolation, and why it is shown this way. mos gives two nsgroups no shared place on purpose: a
 * volume is reachable only from its own nsgroup (snoop shows the refusal), and every container has
 * its own mount, PID and IPC namespaces (no /proc/<pid>/root of another). What separates two
 * nsgroups in the kernel is ids: a container's files are owned by host ids of its nsgroup's range,
 * and root in another nsgroup's user namespace has no capability over ids its namespace does not
 * map. To put that to the kernel, a file of the other nsgroup's ids must be within reach, which mos
 * never arranges; so the case puts one there the only way there is, before the boot, as a disk
 * carried over from elsewhere would: each volume is made on the host (`mkfs.ext4 -d`, root owned
 * by its nsgroup's root as mos would make it) holding `mine` (owned by its nsgroup's root) and
 * `other` (owned by the other nsgroup's root), both mode 0600. Volumes are bound into containers
 * as they are (no idmapped mount), on every kernel, so these host ids reach the kernel unchanged:
 * web reads its `mine` (it sees uid 0) and gets EACCES on `other` (host 65536, batch's root,
 * unmapped: 65534); worker the other way round (host 131072, web's root). The ranges are the ones a
 * fresh TPM gives (names sorted: `batch` slot 1, `web` slot 2), asserted from the console. Each
 * service also writes a 0600 file on its volume and sees it owned by its uid 0, i.e. its range's
 * first host id (its uid_map): exactly the owner the other nsgroup was refused.
 *
 * The uid maps come from the services themselves (`mosctl logs`), and once more from `mosctl exec`
 * on the host: over the control port mos runs `crun exec` itself and relays its stdio and status.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';
import { repoRoot } from '../../harness/images.ts';
import { httpGetWhenUp, udpExchange } from '../../harness/net.ts';
import { USER_NET, USER_NET_UPLINK } from '../../harness/qemu.ts';
import { makeStore } from '../../harness/store.ts';
import { bootWithStore, describeStore } from '../../harness/trust.ts';
import type { ExtraDrive } from '../../harness/qemu.ts';
import type { FixtureTarget } from '../../../test/helpers/manifest-fixtures.ts';
import type { ServiceStatus } from '../../harness/guest-types.ts';

// run.mjs runs a bundle from a cache dir: find the C source in the checkout.
const UDP_ECHO_SOURCE = path.join(repoRoot, 'vm-tests', 'cases', '12-container-networks', 'udp-echo.c');

/** The ranges a fresh TPM gives: nsgroups in name order take slots 1, 2, … (docs/nsgroups.md). */
export const RANGES = { batch: 65536, web: 131072 } as const;
const RANGE_SIZE = 65536;
/**
 * The forward: host port on the machine → web's port. The container port is below 1024 on purpose:
 * root in a container's user namespace has no CAP_NET_BIND_SERVICE over the `simple` netns (mos
 * makes it with `ip netns add`, so the initial user namespace owns it), so binding port 80 works
 * only because mos sets the namespace's `net.ipv4.ip_unprivileged_port_start` to 0 (docs/networks.md).
 */
export const FORWARD = { host: 8080, container: 80 } as const;
/** The containers' cgroup limits (install.json `limits`), and what the worker does against its own. */
export const LIMITS = {
  web: { memory_max: 64 * 1024 * 1024, pids_max: 64 },
  worker: { memory_max: 32 * 1024 * 1024, pids_max: 16 },
} as const;
const WORKER_SLEEPS = 40;
const WORKER_DD_BUFFER = '48M';
export const WEB_ADDRESS = '10.0.3.2';
export const INDEX_HTML = '<!doctype html>\n<title>mos web</title>\n<h1>hello from the web container</h1>\n';

/** The volumes: each nsgroup's own, made on the host before the boot (see the header). */
export const VOLUMES = { web: 'webdata', batch: 'batchdata' } as const;

/**
 * What a service reports before it settles: its uid map and ids, how it sees its image's files,
 * whether it can read `mine` and `other` on its volume (and whom it sees owning them), and a 0600
 * file it writes there.
 */
const PROBE = (who: string) =>
  [
    `set -- $(cat /proc/self/uid_map); echo "${who}: uid_map $1 $2 $3"`,
    `echo "${who}: id $(id -u):$(id -g)"`,
    // 0: the image is idmapped (its owners kept inside); 65534: it is not (the kernel cannot idmap squashfs).
    `echo "${who}: image /bin/busybox owned $(stat -c %u /bin/busybox)"`,
    'for f in mine other; do',
    `  if out=$(cat /data/$f 2>&1); then echo "${who}: read /data/$f owned $(stat -c %u /data/$f): $out";`,
    `  else echo "${who}: cannot read /data/$f owned $(stat -c %u /data/$f): $out"; fi;`,
    'done',
    'umask 077',
    `echo "${who} wrote this" > /data/written`,
    `echo "${who}: wrote /data/written mode $(stat -c %a /data/written) owner $(stat -c %u:%g /data/written): $(cat /data/written)"`,
  ].join('\n');

/** What a container sees of its own cgroup (its cgroup namespace's root is its cgroup). */
const CGROUP_PROBE = (who: string) => `echo "${who}: cgroup pids.max $(cat /sys/fs/cgroup/pids.max) memory.max $(cat /sys/fs/cgroup/memory.max)"`;

const WEB_SCRIPT = [
  PROBE('web'),
  CGROUP_PROBE('web'),
  // The container's init is this shell: it must handle TERM to stop politely (docs/crun.md §1).
  "trap 'exit 0' TERM",
  `/usr/bin/udp-echo ${FORWARD.container} &`,
  `httpd -f -p ${FORWARD.container} -h /www &`,
  'echo "web: serving"',
  'wait',
].join('\n');

const WORKER_SCRIPT = [
  PROBE('worker'),
  CGROUP_PROBE('worker'),
  // A buffer larger than memory.max: dd touches it all, the memory cgroup's OOM killer ends dd.
  `dd if=/dev/zero of=/dev/null bs=${WORKER_DD_BUFFER} count=1 2>/dev/null; echo "worker: dd bs=${WORKER_DD_BUFFER} exit $?"`,
  "trap 'exit 0' TERM",
  // The idle child first, while there is room for it.
  'sleep 1000000 &',
  // More tasks than pids.max: the subshell stops at the first refused fork (ash gives up with
  // "can't fork"). Until its sleeps end no fork can succeed, so the result is read back with
  // builtins only; `wait` then reaps the orphaned sleeps (this shell is the container's init).
  `( i=0; while [ $i -lt ${WORKER_SLEEPS} ]; do sleep 1 >/dev/null 2>&1 & i=$((i+1)); done; echo "all ${WORKER_SLEEPS} started" ) >/dev/shm/forks 2>&1`,
  `while read -r line; do echo "worker: ${WORKER_SLEEPS} sleeps: $line"; done </dev/shm/forks`,
  'echo "worker: idle"',
  'wait',
].join('\n');

/**
 * A persistent volume as a disk image: ext4 labelled `label` with its root owned by `owner` (as mos's
 * mke2fs -E root_owner makes it), holding 0600 files with the owners given (mkfs.ext4 -d copies
 * owners and modes). mos finds it by its serial, checks it (e2fsck -p) and mounts it.
 */
function makeVolume(dir: string, label: string, owner: number, files: { name: string; text: string; owner: number }[]): ExtraDrive {
  const staging = path.join(dir, `${label}-root`);
  mkdirSync(staging, { recursive: true });
  chmodSync(staging, 0o755);
  chownSync(staging, owner, owner);
  for (const file of files) {
    const target = path.join(staging, file.name);
    writeFileSync(target, file.text, { mode: 0o600 });
    chownSync(target, file.owner, file.owner);
  }
  const image = path.join(dir, `${label}.img`);
  execFileSync('truncate', ['-s', '32M', image]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', label, '-E', `root_owner=${owner}:${owner}`, '-b', '4096', '-m', '0', '-d', staging, image], { stdio: ['ignore', 'pipe', 'pipe'] });
  return { file: image, serial: label, format: 'raw' };
}

/** `cc -static` of udp-echo.c into `dir`, or null when there is no C compiler (the UDP checks are then skipped). */
function buildUdpEcho(dir: string): string | null {
  const cc = ['/usr/bin/cc', '/usr/bin/gcc'].find((file) => existsSync(file));
  if (!cc) return null;
  const out = path.join(dir, 'udp-echo');
  execFileSync(cc, ['-static', '-Os', '-s', '-o', out, UDP_ECHO_SOURCE], { stdio: ['ignore', 'pipe', 'pipe'] });
  return out;
}

/** Polls `mosctl logs` until every pattern is in a service's log. */
async function logsUntil(read: () => Promise<string>, patterns: readonly RegExp[], timeoutMs: number, what: string): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await read();
    if (patterns.every((p) => p.test(text))) return text;
    if (Date.now() > deadline) throw new Error(`${what}: ${patterns.filter((p) => !p.test(text)).join(', ')} not in its log:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

export default defineCase({
  id: '12-container-networks',
  title: 'containers: two nsgroups isolated, a simple network reached from the host through QEMU → DNAT',
  images: ['direct'],
  timeoutMs: 420_000,
  async run(t) {
    const bin = t.scratch('bin');
    const udpEcho = buildUdpEcho(bin);
    if (!udpEcho) t.log('no C compiler (cc): the UDP echo is not built, UDP is not checked');
    const busybox = readFileSync('/bin/busybox');
    const web: FixtureTarget = {
      service_name: 'web',
      nsgroup: 'web',
      network: { type: 'simple', ipv4: `${WEB_ADDRESS}/24`, ports: [FORWARD] },
      // Image files are world-readable (the fixture's tar: u=rwX,go=rX).
      files: { '/bin/busybox': busybox, '/www/index.html': INDEX_HTML, ...(udpEcho ? { '/usr/bin/udp-echo': readFileSync(udpEcho) } : {}) },
      entrypoint: ['/bin/busybox', 'sh', '-c', WEB_SCRIPT],
      extra: { storage: [{ dest: '/data', label: VOLUMES.web }], limits: LIMITS.web },
    };
    const worker: FixtureTarget = {
      service_name: 'worker',
      nsgroup: 'batch',
      network: { type: 'none' },
      files: { '/bin/busybox': busybox },
      entrypoint: ['/bin/busybox', 'sh', '-c', WORKER_SCRIPT],
      extra: { storage: [{ dest: '/data', label: VOLUMES.batch }], limits: LIMITS.worker },
    };
    const snoop: FixtureTarget = {
      service_name: 'snoop',
      nsgroup: 'batch',
      network: { type: 'none' },
      files: { '/bin/busybox': busybox },
      entrypoint: ['/bin/busybox', 'sh', '-c', 'echo "snoop: must never run"; cat /data/*; exec sleep 1000000'],
      extra: { storage: [{ dest: '/data', label: VOLUMES.web }] },
    };
    const store = await makeStore({
      dir: t.scratch('store'),
      targets: [web, worker, snoop],
      manifest: {
        storage: [
          { label: VOLUMES.web, persistent: true, nsgroup: 'web', size: 16 },
          { label: VOLUMES.batch, persistent: true, nsgroup: 'batch', size: 16 },
        ],
      },
    });
    assert.ok(store.expected.ok, `the host verifier accepts the store: ${JSON.stringify(store.expected)}`);
    const disks = t.scratch('disks');
    const volumes = [
      makeVolume(disks, VOLUMES.web, RANGES.web, [
        { name: 'mine', text: "web's file", owner: RANGES.web },
        { name: 'other', text: "batch's file", owner: RANGES.batch },
      ]),
      makeVolume(disks, VOLUMES.batch, RANGES.batch, [
        { name: 'mine', text: "batch's file", owner: RANGES.batch },
        { name: 'other', text: "web's file", owner: RANGES.web },
      ]),
    ];
    t.step(`${describeStore(store)}; volumes ${VOLUMES.web} (root ${RANGES.web}) and ${VOLUMES.batch} (root ${RANGES.batch}), each with a 0600 file of either nsgroup's root`);

    const forwards = [{ protocol: 'tcp' as const, guestPort: FORWARD.host }, ...(udpEcho ? [{ protocol: 'udp' as const, guestPort: FORWARD.host }] : [])];
    const vm = await bootWithStore(t, { name: 'vm', kind: 'direct', store, extraDrives: volumes, cmdline: [USER_NET_UPLINK], userNet: { forwards } });
    const failOn = [Markers.kernelPanic, Markers.emergency];
    await vm.waitFor(Markers.trustVerified, Timeouts.directBoot, { failOn });

    // nsgroups: two ranges, disjoint, the ones the volumes were made for.
    const [, nsLine] = await vm.waitFor(/mos: nsgroups: ([^\n]*)\n/, Timeouts.directBoot, { failOn });
    const ranges = new Map([...nsLine!.matchAll(/([a-z0-9][a-z0-9_.-]*) (\d+)-(\d+)/g)].map((m) => [m[1]!, { first: Number(m[2]), last: Number(m[3]) }]));
    const webRange = ranges.get('web');
    const batchRange = ranges.get('batch');
    assert.ok(webRange && batchRange, `the nsgroups line names web and batch: ${nsLine}`);
    assert.ok(webRange.last < batchRange.first || batchRange.last < webRange.first, `web and batch get disjoint ranges: ${nsLine}`);
    assert.deepEqual(webRange, { first: RANGES.web, last: RANGES.web + RANGE_SIZE - 1 }, `web's range (${nsLine})`);
    assert.deepEqual(batchRange, { first: RANGES.batch, last: RANGES.batch + RANGE_SIZE - 1 }, `batch's range (${nsLine})`);
    t.step(`nsgroups: ${nsLine}`);

    // networks: the uplink, the bridge, web's namespace and the forward.
    // A network the machine could not make fails at once (its line says why), not at the timeout.
    const netFailOn = [...failOn, /mos: networks: [^\n]*E_NETWORK[^\n]*\n/, /mos: networks: machine links: [^\n]*\n/];
    const [, uplinkLine] = await vm.waitFor(/mos: networks: (lo up[^\n]*)\n/, Timeouts.directBoot, { failOn: netFailOn });
    assert.equal(uplinkLine, `lo up; eth0 ${USER_NET.guest}/${USER_NET.prefix} via ${USER_NET.gateway}`);
    const [, netLine] = await vm.waitFor(/mos: networks: (bridge [^\n]*)\n/, Timeouts.directBoot, { failOn: netFailOn });
    assert.equal(netLine, `bridge mos0; web ${WEB_ADDRESS}/24; forwards (tcp+udp) ${FORWARD.host}→web:${FORWARD.container}`);
    // snoop fails by design, so there is no "services ready": the supervise phase is the mark.
    await vm.waitFor(/mos: phase supervise ok/, Timeouts.directBoot, { failOn });
    t.step(`services started after ${vm.elapsed}: networks: ${uplinkLine} | ${netLine}`);

    // Both services got as far as serving / idling (their logs say what they saw on the way).
    const webLog = () => vm.mosctl('logs', '-n', '200', 'web').then((r) => r.stdout + r.stderr);
    const workerLog = () => vm.mosctl('logs', '-n', '200', 'worker').then((r) => r.stdout + r.stderr);
    const webText = await logsUntil(webLog, [/web: serving/], 60_000, 'web');
    const workerText = await logsUntil(workerLog, [/worker: idle/], 60_000, 'worker');

    // From the host: a real HTTP GET through QEMU's forward → the guest's DNAT → web's httpd.
    const tcpPort = vm.hostPort('tcp', FORWARD.host);
    const page = await httpGetWhenUp(`http://127.0.0.1:${tcpPort}/`, 60_000).catch(async (error: Error) => {
      throw new Error(`${error.message}\n--- web's log ---\n${await webLog()}`);
    });
    assert.equal(page.status, 200, `GET / through the forward: ${page.status} ${page.body}`);
    assert.equal(page.body, INDEX_HTML, 'the index page from web\'s image');
    t.step(`GET http://127.0.0.1:${tcpPort}/ → QEMU → ${USER_NET.guest}:${FORWARD.host} → DNAT → ${WEB_ADDRESS}:${FORWARD.container}: ${page.status}, ${page.body.length} bytes, the image's index.html (try ${page.tries})`);

    if (udpEcho) {
      const udpPort = vm.hostPort('udp', FORWARD.host);
      const payload = `ping ${process.pid}`;
      const { reply, sends } = await udpExchange(udpPort, payload, 30_000).catch(async (error: Error) => {
        throw new Error(`${error.message}\n--- web's log ---\n${await webLog()}`);
      });
      assert.equal(reply, `udp-echo: ${payload}`);
      // DNAT keeps the client's address: web sees QEMU's gateway (slirp's side of the host), not 127.0.0.1 or mos0's.
      const logged = await logsUntil(webLog, [new RegExp(`udp-echo: ${payload.length} bytes from ${USER_NET.gateway.replace(/\./g, '\\.')}:\\d+`)], 30_000, 'web');
      const from = /udp-echo: \d+ bytes from (\S+)/.exec(logged)![1];
      t.step(`UDP 127.0.0.1:${udpPort} → … → ${WEB_ADDRESS}:${FORWARD.container}: "${reply}" (${sends} datagram${sends > 1 ? 's' : ''}); web saw it from ${from}`);
    }

    // Each container's own view: its uid map, its volume's two files, a 0600 file of its own.
    t.log(`web's log:\n${webText.trim()}`);
    t.log(`worker's log:\n${workerText.trim()}`);
    assert.match(webText, new RegExp(`web: uid_map 0 ${RANGES.web} ${RANGE_SIZE}\\n`));
    assert.match(workerText, new RegExp(`worker: uid_map 0 ${RANGES.batch} ${RANGE_SIZE}\\n`));
    assert.match(webText, /web: id 0:0\n/);
    assert.match(workerText, /worker: id 0:0\n/);
    // A file of its own nsgroup's root is its uid 0 and readable; one of the other nsgroup's root is
    // unmapped (65534) and refused, mode 0600, to the container's root.
    assert.match(webText, /web: read \/data\/mine owned 0: web's file\n/);
    assert.match(webText, /web: cannot read \/data\/other owned 65534: cat: can't open '\/data\/other': Permission denied\n/);
    assert.match(workerText, /worker: read \/data\/mine owned 0: batch's file\n/);
    assert.match(workerText, /worker: cannot read \/data\/other owned 65534: cat: can't open '\/data\/other': Permission denied\n/);
    // What each writes is its uid 0, i.e. its range's first host id: the owner the other was refused.
    assert.match(webText, /web: wrote \/data\/written mode 600 owner 0:0: web wrote this\n/);
    assert.match(workerText, /worker: wrote \/data\/written mode 600 owner 0:0: worker wrote this\n/);
    const imageOwner = /web: image \/bin\/busybox owned (\d+)\n/.exec(webText)?.[1];
    t.step(`isolated: web maps 0→${RANGES.web}, worker (batch) 0→${RANGES.batch}; a 0600 file of host owner ${RANGES.batch} is EACCES to web's root, one of ${RANGES.web} to worker's, each reads its own; each one's own new 0600 file is its uid 0 (image ${imageOwner === '0' ? 'idmapped: its owners kept inside' : 'not idmapped: its files are nobody\'s inside'})`);

    // cgroup limits: each container sees its own, and the worker's are enforced.
    assert.match(webText, new RegExp(`web: cgroup pids.max ${LIMITS.web.pids_max} memory.max ${LIMITS.web.memory_max}\\n`));
    assert.match(workerText, new RegExp(`worker: cgroup pids.max ${LIMITS.worker.pids_max} memory.max ${LIMITS.worker.memory_max}\\n`));
    assert.match(workerText, new RegExp(`worker: ${WORKER_SLEEPS} sleeps: [^\\n]*can't fork`), 'the fork past pids.max is refused');
    assert.match(workerText, new RegExp(`worker: dd bs=${WORKER_DD_BUFFER} exit 137\\n`), 'dd over memory.max is killed (SIGKILL: 128+9)');
    const workerNow = await vm.mosctlJson<ServiceStatus>('status', 'worker');
    assert.deepEqual(workerNow.limits, { memoryBytes: LIMITS.worker.memory_max, pids: LIMITS.worker.pids_max });
    assert.ok(workerNow.usage && workerNow.usage.pids !== null && workerNow.usage.pids >= 2 && workerNow.usage.pids <= LIMITS.worker.pids_max, `worker's tasks in use: ${JSON.stringify(workerNow.usage)}`);
    assert.ok((workerNow.usage?.oomKills ?? 0) >= 1, `worker's OOM kill is counted: ${JSON.stringify(workerNow.usage)}`);
    const workerStatus = (await vm.mosctl('status', 'worker')).stdout;
    assert.match(workerStatus, /Memory: [0-9.]+ [KM]i?B of 32 MiB; \d+ OOM kills?\n/);
    assert.match(workerStatus, /Tasks: \d+ of 16\n/);
    const resources = workerStatus.split('\n').filter((line) => /^\s*(Memory|Tasks):/.test(line)).map((line) => line.trim());
    t.step(`limits: web sees pids.max ${LIMITS.web.pids_max}, memory.max ${LIMITS.web.memory_max}; worker's fork past ${LIMITS.worker.pids_max} tasks refused ("can't fork"), its dd over 32 MiB OOM-killed (exit 137); mosctl status worker: ${resources.join('; ')}`);

    // The only shared place there could be, a volume, is refused across nsgroups.
    const [, snoopCode] = /mos: storage: snoop: (E_[A-Z_]+): [^\n]*\n/.exec(vm.console.content) ?? [];
    assert.equal(snoopCode, 'E_VOLUME_NSGROUP', 'snoop (nsgroup batch) asking for web\'s volume is refused');
    const services = (await vm.mosctlJson<{ services: ServiceStatus[] }>('status')).services;
    for (const name of ['web', 'worker']) assert.equal(services.find((s) => s.name === name)?.state, 'running', `${name} runs: ${JSON.stringify(services)}`);
    const snooped = services.find((s) => s.name === 'snoop');
    assert.equal(snooped?.state, 'failed');
    assert.equal(snooped?.errorCode, 'E_VOLUME_NSGROUP');
    assert.equal(snooped?.pid, null, 'snoop never ran');
    assert.doesNotMatch((await vm.mosctl('logs', '-n', '50', 'snoop')).stdout, /must never run/);
    t.step('snoop (nsgroup batch) asking for web\'s volume: failed with E_VOLUME_NSGROUP, never started');

    // mosctl exec from the host: over the control port mos relays crun exec (the test image's port
    // has root access: mos.debug_control=1): the command runs in web's namespaces, as its user.
    const exec = await vm.mosctl('exec', 'web', '--', '/bin/busybox', 'sh', '-c', 'set -- $(cat /proc/self/uid_map); echo "uid_map $1 $2 $3 uid $(id -u) host $(hostname)"; echo "to stderr" >&2; exit 3');
    assert.equal(exec.code, 3, `mosctl exec passes the command's status through: ${exec.stdout}${exec.stderr}`);
    assert.equal(exec.stdout, `uid_map 0 ${RANGES.web} ${RANGE_SIZE} uid 0 host web\n`);
    assert.match(exec.stderr, /^to stderr\n/);
    t.step(`mosctl exec web (relayed by mos over the control port): "${exec.stdout.trim()}", stderr apart, exit 3 passed through`);

    await vm.powerOff(Timeouts.shutdown);
    t.step(`powered off after ${vm.elapsed}`);
  },
});
