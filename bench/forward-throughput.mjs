#!/usr/bin/env node
// Throughput through a port forward against a direct connection to the container (issue 6):
// "Measure throughput through the port forward against a direct connection to the container,
// with wrk in the same run. The target is at least 0.9× direct."
//
// On the host, in network namespaces this script creates (the host's own is never touched): mos's
// network plan for one `simple` service (services/network.ts planNetworks, applied with the real
// ip and nft as PID 1 applies it), busybox httpd in the service's namespace, and wrk in an
// "outside" namespace standing in for another machine on the LAN:
//
//   outside 192.168.77.2, .3 ──veth── machine 192.168.77.1 ──bridge mos0 10.0.3.1── web 10.0.3.2:8000
//
//   forward  wrk (from .2) → http://192.168.77.1:8080/…   prerouting DNAT 8080 → 10.0.3.2:8000, routed to mos0
//   direct   wrk (from .3) → http://10.0.3.2:8000/…       the same route, the same rules, no DNAT
//
// See bench/README.md. Usage: node bench/forward-throughput.mjs [--rounds=N] [--duration=S] [--no-results] [--setup-only]
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { hostFacts } from './host-facts.mjs';
import { createQuietWaiter } from './host-quiet.mjs';

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const BENCH_DIR = path.join(ROOT, 'bench');
const WORK_DIR = path.join(BENCH_DIR, 'work', 'forward-throughput');
const RESULTS_DIR = path.join(BENCH_DIR, 'results');

const argValue = (name) => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
/** Rounds per workload; each round measures both paths, in alternating order. */
const ROUNDS = Math.max(1, Number(argValue('rounds') ?? 5));
/** Seconds of each wrk run. */
const DURATION_S = Math.max(1, Number(argValue('duration') ?? 10));
const NO_RESULTS = process.argv.includes('--no-results');
/** `--setup-only`: set the namespaces up, print how to reach both paths, wait for Ctrl-C (investigation). */
const SETUP_ONLY = process.argv.includes('--setup-only');
/**
 * wrk's threads (one per core) and open connections: 8 stays below busybox httpd's listen backlog
 * (9: more connections than that waiting to be accepted overflow the queue and wait for a SYN
 * retransmission).
 */
const WRK_THREADS = os.cpus().length;
const WRK_CONNECTIONS = 8;

/** Other work (share of all CPUs) during a run that makes its round be taken again, and how often. */
const DISTURBED_SHARE = 0.1;
const MAX_ATTEMPTS = 3;

/** The issue's target: forward ≥ 0.9 × direct. */
const TARGET_RATIO = 0.9;

const TAG = `fwb${process.pid}-`;
const MACHINE = `${TAG}machine`;
const OUTSIDE = `${TAG}outside`;
const MACHINE_ADDRESS = '192.168.77.1';
/**
 * The outside machine's two addresses: the forward path's connections come from the first, the
 * direct path's from the second (a route with `src`). The server sees both paths' connections
 * with the same destination (10.0.3.2:8000, DNAT rewrites the forward's), so one client address
 * would give the two paths the same server-side and conntrack reply tuples: a TIME_WAIT of one
 * path then refuses the other's SYN (PAWS: the client's TCP timestamp offset differs per
 * destination) and a forward's NAT binding clashes with a direct connection's reply tuple
 * (dropped, SYN retransmitted after 1 s). Measured: with one address, requests/s fell 3-6×
 * within seconds once both paths had run.
 */
const OUTSIDE_ADDRESS = '192.168.77.2';
const OUTSIDE_DIRECT_ADDRESS = '192.168.77.3';
const SERVICE = { name: 'web', ipv4: '10.0.3.2/24', address: '10.0.3.2', hostPort: 8080, containerPort: 8000 };

/**
 * The workloads: `page` is a small page, one request per connection (busybox httpd answers with
 * `Connection: close`), so it measures connection set-up through the path (for the forward:
 * a conntrack entry and its NAT binding per connection); `bulk` moves 1 MiB per request, the
 * path's byte throughput.
 */
const WORKLOADS = [
  { name: 'page', file: 'index.html', bytes: 4096, metric: 'requests/s' },
  { name: 'bulk', file: 'bulk.bin', bytes: 1024 * 1024, metric: 'MiB/s' },
];

const ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };
for (const key of Object.keys(process.env)) if (key.startsWith('NODE_')) delete process.env[key];

function log(message) {
  process.stderr.write(`bench: ${message}\n`);
}

function run(command, args, options = {}) {
  return execFileSync(command, args, { encoding: 'utf8', env: ENV, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000, ...options });
}

/** Runs argv with only the network namespace changed. */
function inNetns(netns, argv, input) {
  return run('nsenter', [`--net=/run/netns/${netns}`, ...argv], input === undefined ? {} : { input, stdio: ['pipe', 'pipe', 'pipe'] });
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

// ---------------------------------------------------------------------------------------------
// Tools

/** What must exist → its Debian package. wrk is installed here if missing (not by setup.mjs). */
const TOOLS = { '/usr/bin/wrk': 'wrk', '/usr/sbin/ip': 'iproute2', '/usr/sbin/nft': 'nftables', '/usr/bin/nsenter': 'util-linux', '/bin/busybox': 'busybox-static' };

function ensureTools() {
  const missing = [...new Set(Object.entries(TOOLS).filter(([file]) => !existsSync(file)).map(([, pkg]) => pkg))];
  if (missing.length === 0) return;
  log(`apt-get install ${missing.join(' ')}`);
  const env = { ...ENV, DEBIAN_FRONTEND: 'noninteractive' };
  const lock = ['-o', 'DPkg::Lock::Timeout=300'];
  execFileSync('apt-get', [...lock, 'update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', [...lock, 'install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
  const still = Object.keys(TOOLS).filter((file) => !existsSync(file));
  if (still.length) throw new Error(`still missing after apt-get install: ${still.join(' ')}`);
}

function toolVersion(command, args, pattern) {
  const result = spawnSync(command, args, { encoding: 'utf8', env: ENV });
  const text = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  return pattern.exec(text)?.[1] ?? 'unknown';
}

// ---------------------------------------------------------------------------------------------
// A quiet machine (see host-quiet.mjs), and other work during each round

const quiet = createQuietWaiter({ log });
const CLOCK_TICKS = 100;

function processTable() {
  const table = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(Number(entry), { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]) });
    } catch {
      // exited while we looked
    }
  }
  return table;
}

/**
 * Processes that are not other work: ours (this process and its descendants: nsenter, wrk,
 * httpd and its children), PID 1, and the kernel's threads (kthreadd, pid 2, and its children:
 * ksoftirqd moves this benchmark's own packets).
 */
function notOthers(table) {
  const mine = new Set([1, 2, process.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, { ppid }] of table) if (!mine.has(pid) && (mine.has(ppid) && ppid !== 1)) (mine.add(pid), (grew = true));
  }
  return mine;
}

function cpuSnapshot() {
  return { atMs: performance.now(), table: processTable() };
}

/** Share of all CPUs that other processes used between two snapshots. */
function otherCpuShare(before, after) {
  const mine = notOthers(after.table);
  let ticks = 0;
  for (const [pid, { ticks: total }] of after.table) if (!mine.has(pid)) ticks += total - (before.table.get(pid)?.ticks ?? 0);
  return ticks / CLOCK_TICKS / (((after.atMs - before.atMs) / 1000) * os.cpus().length);
}

// ---------------------------------------------------------------------------------------------
// The namespaces

async function loadPlanner() {
  const { importTypeScript } = await import('../vm-tests/import-ts.mjs');
  return importTypeScript(path.join(ROOT, 'services', 'network.ts'));
}

let httpd = null;

function teardown() {
  if (httpd && httpd.exitCode === null && httpd.signalCode === null) httpd.kill('SIGKILL');
  // Every namespace this run pinned (services/network.ts pins the service's under /run/netns too).
  for (const name of existsSync('/run/netns') ? readdirSync('/run/netns') : []) {
    if (name.startsWith(TAG)) spawnSync('ip', ['netns', 'del', name], { env: ENV });
  }
}

async function setUp(planner, wwwDir) {
  const planned = planner.planNetworks(
    [{ service_name: SERVICE.name, service_type: 'container', network: { type: 'simple', ipv4: SERVICE.ipv4, ipv6: '', ports: [{ host: SERVICE.hostPort, container: SERVICE.containerPort }] } }],
    { netnsPrefix: TAG },
  );
  if (!planned.ok) throw new Error(`planNetworks: ${planned.message}`);
  const { plan } = planned;
  const web = plan.services.find((service) => service.service === SERVICE.name);

  run('ip', ['netns', 'add', MACHINE]);
  run('ip', ['netns', 'add', OUTSIDE]);
  run('ip', ['-n', MACHINE, 'link', 'add', 'uplink', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', OUTSIDE]);
  for (const [netns, dev, addresses] of [
    [MACHINE, 'uplink', [`${MACHINE_ADDRESS}/24`]],
    // The first address is the primary: connections to the machine's address come from it.
    [OUTSIDE, 'eth0', [`${OUTSIDE_ADDRESS}/24`, `${OUTSIDE_DIRECT_ADDRESS}/24`]],
  ]) {
    run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    for (const address of addresses) run('ip', ['-n', netns, 'addr', 'add', address, 'dev', dev]);
    run('ip', ['-n', netns, 'link', 'set', dev, 'up']);
  }
  // The load generator's own TCP knobs (wrk closes first, so every request leaves a TIME_WAIT
  // on the client): reuse TIME_WAIT ports for new connections and use the whole port range.
  // Without them, once ~28 000 TIME_WAITs fill the default range, each connect() scans the range
  // for a free port and wrk spends its time in the kernel (measured: 4 000 → 450 requests/s
  // within a minute, wrk at 170 % CPU, all system time). The machine under test is untouched.
  inNetns(OUTSIDE, ['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range']);
  // Another machine on the LAN with a route to the services' subnet through this one (for
  // direct), from its second address.
  run('ip', ['-n', OUTSIDE, 'route', 'add', '10.0.3.0/24', 'via', MACHINE_ADDRESS, 'src', OUTSIDE_DIRECT_ADDRESS]);
  // The host kernel has br_netfilter; the machine's kernel loads no such module: off, as there.
  for (const family of ['iptables', 'ip6tables']) {
    inNetns(MACHINE, ['sh', '-c', `f=/proc/sys/net/bridge/bridge-nf-call-${family}; [ ! -e $f ] || echo 0 > $f`]);
  }

  // The plan, as PID 1 applies it (init/boot/network-phase.ts): bridge, sysctls, ruleset, service.
  const machine = plan.machine;
  for (const command of machine.setup) inNetns(MACHINE, command.argv, command.stdin ?? undefined);
  for (const sysctl of machine.sysctls) inNetns(MACHINE, ['tee', sysctl.path], sysctl.value);
  inNetns(MACHINE, machine.ruleset.argv, machine.ruleset.stdin);
  for (const command of web.setup) inNetns(MACHINE, command.argv, command.stdin ?? undefined);
  // The planned ruleset closes the service's address to other machines (only forwards reach it):
  // for the direct path, one rule at the head of the `forward` chain lets the benchmark's own
  // traffic to it through. Packets of the forward path, DNATed to the same address and port
  // before this hook, match it too: both paths see exactly the same filter rules.
  inNetns(MACHINE, ['nft', 'insert', 'rule', 'inet', 'mos', 'forward', 'ip', 'saddr', '192.168.77.0/24', 'ip', 'daddr', SERVICE.address, 'tcp', 'dport', String(SERVICE.containerPort), 'accept', 'comment', '"bench: the direct path"']);

  // The service: busybox httpd in the service's network namespace (a container's network).
  httpd = spawn('nsenter', [`--net=${web.netnsPath}`, '/bin/busybox', 'httpd', '-f', '-p', String(SERVICE.containerPort), '-h', wwwDir], { env: ENV, stdio: ['ignore', 'ignore', 'pipe'] });
  let httpdErr = '';
  httpd.stderr.on('data', (data) => (httpdErr += data));
  httpd.on('exit', (code, signal) => {
    if (!stopping) log(`httpd exited (${signal ?? code}): ${httpdErr.trim()}`);
  });
  return { plan, web, ruleset: inNetns(MACHINE, ['nft', 'list', 'table', 'inet', 'mos']) };
}

let stopping = false;

/** GETs url from the outside namespace with busybox wget; returns the body's length. */
function fetchLength(url) {
  const out = run('nsenter', [`--net=/run/netns/${OUTSIDE}`, '/bin/busybox', 'wget', '-q', '-O', '-', url], { encoding: 'buffer', maxBuffer: 8 << 20, timeout: 10_000 });
  return out.length;
}

async function waitUntilServing(url) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return fetchLength(url);
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`${url} does not answer: ${error.stderr?.toString() ?? error.message}`);
      await sleep(100);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// wrk

function parseSize(text) {
  const match = /^([\d.]+)([KMGT]?)B$/.exec(text);
  if (!match) return Number.NaN;
  return Number(match[1]) * 1024 ** ' KMGT'.indexOf(match[2] || ' ');
}

/** One wrk run from the outside namespace; requests/s, bytes/s, errors and the other work meanwhile. */
function runWrk(url, seconds) {
  const before = cpuSnapshot();
  const out = run('nsenter', [`--net=/run/netns/${OUTSIDE}`, 'wrk', '-t', String(WRK_THREADS), '-c', String(WRK_CONNECTIONS), '-d', `${seconds}s`, url], { timeout: (seconds + 30) * 1000 });
  const after = cpuSnapshot();
  const requestsPerS = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const bytesPerS = parseSize(/Transfer\/sec:\s+(\S+)/.exec(out)?.[1] ?? '');
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  if (!Number.isFinite(requestsPerS) || !Number.isFinite(bytesPerS)) throw new Error(`cannot read wrk's output:\n${out}`);
  return {
    requestsPerS,
    bytesPerS,
    requests,
    errors: { connect: Number(socketErrors?.[1] ?? 0), read: Number(socketErrors?.[2] ?? 0), write: Number(socketErrors?.[3] ?? 0), timeout: Number(socketErrors?.[4] ?? 0), non2xx },
    otherCpu: otherCpuShare(before, after),
  };
}

/** Entries in the machine namespace's connection tracking table (both paths are tracked). */
function conntrackCount() {
  try {
    return Number(inNetns(MACHINE, ['cat', '/proc/sys/net/netfilter/nf_conntrack_count']).trim());
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Results

function metricOf(workload, sample) {
  return workload.metric === 'requests/s' ? sample.requestsPerS : sample.bytesPerS / (1024 * 1024);
}

function summarize(samples) {
  return WORKLOADS.map((workload) => {
    const of = (pathName) => samples.filter((s) => s.workload === workload.name && s.path === pathName);
    const forward = of('forward');
    const direct = of('direct');
    const fwd = median(forward.map((s) => metricOf(workload, s)));
    const dir = median(direct.map((s) => metricOf(workload, s)));
    // Per round, forward / direct (the two runs of a round are back to back).
    const rounds = [...new Set(forward.map((s) => s.round))].map((round) => metricOf(workload, forward.find((s) => s.round === round)) / metricOf(workload, direct.find((s) => s.round === round)));
    return { workload, forward: fwd, direct: dir, ratio: fwd / dir, rounds, pass: fwd / dir >= TARGET_RATIO };
  });
}

const fmt = (value, workload) => (workload.metric === 'requests/s' ? value.toFixed(0) : value.toFixed(1));

function markdownTable(header, rows) {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`, ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n');
}

function plainTable(header, rows) {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((row) => String(row[i]).length)));
  return all.map((row) => row.map((cell, i) => (i === 0 ? String(cell).padEnd(widths[i]) : String(cell).padStart(widths[i]))).join('  ')).join('\n');
}

function summaryRows(summary) {
  return summary.map(({ workload, forward, direct, ratio, rounds }) => [
    `${workload.name} (${workload.file}, ${workload.bytes >= 1024 * 1024 ? `${workload.bytes / 1024 / 1024} MiB` : `${workload.bytes / 1024} KiB`}), ${workload.metric}`,
    fmt(forward, workload),
    fmt(direct, workload),
    ratio.toFixed(3),
    `${Math.min(...rounds).toFixed(3)}–${Math.max(...rounds).toFixed(3)}`,
  ]);
}

const SUMMARY_HEADER = ['Workload', 'forward (median)', 'direct (median)', 'forward / direct', 'per round'];

function sampleRows(samples) {
  return samples.map((s) => {
    const workload = WORKLOADS.find((w) => w.name === s.workload);
    const errors = Object.entries(s.errors).filter(([, n]) => n > 0).map(([kind, n]) => `${kind} ${n}`).join(', ') || '0';
    return [s.workload, `${s.round}${s.attempt > 1 ? ` (try ${s.attempt})` : ''}`, s.path, s.requestsPerS.toFixed(0), (s.bytesPerS / 1024 / 1024).toFixed(1), `${fmt(metricOf(workload, s), workload)}${s.disturbed ? ' †' : ''}`, errors, `${(s.otherCpu * 100).toFixed(0)} %`, String(s.conntrack ?? '?')];
  });
}

const SAMPLE_HEADER = ['Workload', 'Round', 'Path', 'req/s', 'MiB/s', 'metric', 'wrk errors', 'other work', 'conntrack entries after'];

function methodText(ruleset) {
  return `## Method

**Where.** On the host, not in the guest: under TCG every packet costs emulated instructions, so a
guest measurement would be dominated by the emulator's noise, and wrk is not in the guest image.
The host's kernel runs the very rules the machine runs: this script plans the network of one
\`simple\` service with mos's own planner (\`planNetworks\`, services/network.ts) and applies the
plan with the real \`ip\` and \`nft\` as PID 1 does (init/boot/network-phase.ts: bridge, sysctls,
the \`inet mos\` table in one transaction, the service's pinned namespace with its veth and
address), inside network namespaces it creates and removes (names \`fwb<pid>-*\`):

\`\`\`
outside ${OUTSIDE_ADDRESS}, ${OUTSIDE_DIRECT_ADDRESS} ──veth── machine ${MACHINE_ADDRESS} ──bridge mos0 10.0.3.1── web ${SERVICE.address}:${SERVICE.containerPort}
\`\`\`

"machine" stands for the machine's own network namespace, "outside" for another machine on its
LAN (with a route to 10.0.3.0/24 through it), "web" is the service's namespace, where busybox
httpd (\`busybox httpd -f -p ${SERVICE.containerPort}\`, the VM test's server) serves files from a
directory. bridge-nf-call-iptables/ip6tables are off in "machine", as on the guest kernel (no
br_netfilter).

**The two paths.** wrk runs in "outside" (\`wrk -t ${WRK_THREADS} -c ${WRK_CONNECTIONS} -d ${DURATION_S}s\`; 8 connections stay
below busybox httpd's listen backlog of 9):
- *forward*: \`http://${MACHINE_ADDRESS}:${SERVICE.hostPort}/<file>\`, from ${OUTSIDE_ADDRESS}: the machine's address and the
  forwarded port; prerouting DNATs it to ${SERVICE.address}:${SERVICE.containerPort}, the machine routes it into mos0.
- *direct*: \`http://${SERVICE.address}:${SERVICE.containerPort}/<file>\`, from ${OUTSIDE_DIRECT_ADDRESS} (a route with \`src\`): the
  service's own address, over the same route (outside → machine → mos0 → web), without NAT. The
  planned ruleset closes the service's address to other machines (only forwards reach it), so
  the benchmark inserts one rule at the head of the table's \`forward\` chain:
  \`ip saddr 192.168.77.0/24 ip daddr ${SERVICE.address} tcp dport ${SERVICE.containerPort} accept\`. Forwarded packets are
  already DNATed to that address and port when they reach that hook and match the same rule, so
  both paths pass exactly the same filter rules; what differs is the prerouting DNAT (a NAT
  binding per connection, the rewrite of every packet and its answer). Connection tracking is
  active for both (the table's nat chains load it in "machine").
- The client's namespace has \`net.ipv4.tcp_tw_reuse=1\` and \`ip_local_port_range=1024 65535\`: wrk
  closes first, so every request leaves a TIME_WAIT on the client, and with the defaults each
  connect() ends up scanning the port range for a free port (4 000 → 450 requests/s within a
  minute, wrk at 170 % CPU in the kernel). These are the load generator's knobs; nothing on the
  machine's side is changed.
- Why two client addresses: the server sees both paths' connections with the same destination,
  so with one client address the two paths share server-side and conntrack reply tuples. Tried
  first: requests/s fell 3–6× within seconds once both paths had run, because a TIME_WAIT left
  by one path refused the other's SYN (\`TcpExtPAWSTimewait\`: the client's TCP timestamp offset
  differs per destination address) and a forward's NAT binding clashed with a direct
  connection's reply tuple (the SYN dropped, retransmitted a second later).

**Workloads.** ${WORKLOADS.map((w) => `*${w.name}*: \`${w.file}\`, ${w.bytes} bytes`).join('; ')}. busybox httpd
answers every request with \`Connection: close\`, so each request is a new TCP connection: *page*
measures connection set-up through each path (for the forward a new conntrack entry with its NAT
binding per request), *bulk* the bytes moved. The metric of *page* is requests/s, of *bulk* MiB/s
(wrk's Transfer/sec, headers included).

**Rounds.** ${ROUNDS} rounds per workload after a 2-second warm-up of each path; each round runs
both paths back to back, forward first in odd rounds and direct first in even ones. The result
is the median over the rounds of each path, and their ratio; the per-round ratios show the
spread. Before each run the script waits (up to 3 minutes over the whole run) until the CPUs are
less than 10 % busy over a second, and it records the CPU time that processes other than its own
(wrk, httpd, nsenter) and the kernel's threads (ksoftirqd carries this benchmark's packets) used
during each run ("other work", reaped children included); a round with ≥ ${DISTURBED_SHARE * 100} % other work in
either run is taken again, up to ${MAX_ATTEMPTS} times. Both ends and the kernel share the same ${os.cpus().length} cores, as on a
small machine: the host is shared with other work (VM tests under TCG take a whole core), which
is what moves single runs by up to 2× in either direction.

The ruleset in "machine" during the run (the planned table plus the benchmark's rule):

\`\`\`
${ruleset.trim()}
\`\`\`
`;
}

function writeResults({ info, summary, samples, ruleset, started, versions }) {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const cpuSlug = info.cpu.toLowerCase().replace(/\(r\)|\(tm\)|processor|cpu/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  const file = path.join(RESULTS_DIR, `${date}-forward-throughput-${cpuSlug}-${info.cores}c.md`);
  const targets = summary.map(({ workload, ratio, pass }) => `- **${pass ? 'PASS' : 'FAIL'}** — ${workload.name}: forward ${ratio.toFixed(3)} × direct (target ≥ ${TARGET_RATIO})`);
  const text = `# Port forward vs direct connection to the container — ${date}

## Machine

- CPU: ${info.cpu}, ${info.cores} cores
- RAM: ${info.ramGiB} GiB
- OS: ${info.os}, kernel ${info.kernel}
- Node ${info.node}; wrk ${versions.wrk}, nftables ${versions.nft}, iproute2 ${versions.ip}, BusyBox ${versions.busybox}
- mos: revision ${info.mos} (services/network.ts planNetworks)
- Benchmark: \`node bench/forward-throughput.mjs${ROUNDS !== 5 ? ` --rounds=${ROUNDS}` : ''}${DURATION_S !== 10 ? ` --duration=${DURATION_S}` : ''}\`, ${((Date.now() - started) / 1000).toFixed(0)} s wall time

## Results

${markdownTable(SUMMARY_HEADER, summaryRows(summary))}

Every run kept (a round is taken again, up to ${MAX_ATTEMPTS} times, when other work used ≥ ${DISTURBED_SHARE * 100} % of the CPUs
during either of its runs; † marks the runs of a round that was still disturbed at its last try):

${markdownTable(SAMPLE_HEADER, sampleRows(samples))}

## Target

${targets.join('\n')}

${methodText(ruleset)}`;
  writeFileSync(file, text);
  return path.relative(ROOT, file);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main() {
  const started = Date.now();
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces, nftables)');
  ensureTools();
  const planner = await loadPlanner();
  rmSync(WORK_DIR, { recursive: true, force: true });
  const wwwDir = path.join(WORK_DIR, 'www');
  mkdirSync(wwwDir, { recursive: true });
  // Files world-readable and their directories searchable: httpd runs as root here anyway.
  writeFileSync(path.join(wwwDir, 'index.html'), Buffer.alloc(WORKLOADS[0].bytes, 'mos forward benchmark\n'), { mode: 0o644 });
  writeFileSync(path.join(wwwDir, 'bulk.bin'), Buffer.alloc(WORKLOADS[1].bytes, 0x5a), { mode: 0o644 });

  const versions = {
    wrk: toolVersion('wrk', ['--version'], /wrk (?:debian\/)?(\S+)/),
    nft: toolVersion('nft', ['--version'], /nftables v(\S+)/),
    ip: toolVersion('ip', ['-V'], /iproute2-(\d[\w.]*)/),
    busybox: toolVersion('/bin/busybox', [], /BusyBox v(\S+)/),
  };
  const onSignal = () => {
    stopping = true;
    teardown();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const { ruleset } = await setUp(planner, wwwDir);
    const urls = {
      forward: (file) => `http://${MACHINE_ADDRESS}:${SERVICE.hostPort}/${file}`,
      direct: (file) => `http://${SERVICE.address}:${SERVICE.containerPort}/${file}`,
    };
    // Both paths answer, with the whole file (and the forward can only answer through DNAT:
    // nothing listens on the machine's port ${SERVICE.hostPort}).
    for (const workload of WORKLOADS) {
      for (const [name, url] of Object.entries(urls)) {
        const length = await waitUntilServing(url(workload.file));
        if (length !== workload.bytes) throw new Error(`${name} ${url(workload.file)}: ${length} bytes, expected ${workload.bytes}`);
      }
    }
    if (SETUP_ONLY) {
      log(`set up; from "outside": nsenter --net=/run/netns/${OUTSIDE} wrk … ${urls.forward('index.html')} (forward) or ${urls.direct('index.html')} (direct); machine: /run/netns/${MACHINE}; Ctrl-C ends`);
      await new Promise(() => {});
    }
    log(`both paths serve; wrk -t ${WRK_THREADS} -c ${WRK_CONNECTIONS}, ${ROUNDS} rounds × ${DURATION_S} s per path and workload (~${Math.ceil((WORKLOADS.length * (ROUNDS * 2 * DURATION_S + 4)) / 60)} min)`);

    const samples = [];
    for (const workload of WORKLOADS) {
      for (const name of ['forward', 'direct']) runWrk(urls[name](workload.file), 2); // warm-up
      for (let round = 1; round <= ROUNDS; round++) {
        const order = round % 2 ? ['forward', 'direct'] : ['direct', 'forward'];
        // A round whose runs shared the CPUs with other work (≥ 10 %) is taken again, up to 3 times.
        for (let attempt = 1; ; attempt++) {
          const pair = [];
          for (const name of order) {
            await quiet.untilQuiet(`${workload.name} ${name} round ${round}`);
            const sample = { workload: workload.name, round, path: name, attempt, ...runWrk(urls[name](workload.file), DURATION_S), conntrack: conntrackCount() };
            pair.push(sample);
            const errors = Object.values(sample.errors).reduce((a, b) => a + b, 0);
            log(`${workload.name} round ${round} ${name}: ${sample.requestsPerS.toFixed(0)} req/s, ${(sample.bytesPerS / 1024 / 1024).toFixed(1)} MiB/s${errors ? `, ${errors} errors` : ''}, other work ${(sample.otherCpu * 100).toFixed(0)} %`);
          }
          const disturbed = pair.some((sample) => sample.otherCpu >= DISTURBED_SHARE);
          if (!disturbed || attempt === MAX_ATTEMPTS) {
            for (const sample of pair) samples.push({ ...sample, disturbed });
            break;
          }
          log(`${workload.name} round ${round}: other work during the round; taking it again`);
        }
      }
    }
    const summary = summarize(samples);
    process.stdout.write(`\n${plainTable(SUMMARY_HEADER, summaryRows(summary))}\n\n`);
    for (const { workload, ratio, pass } of summary) process.stdout.write(`${pass ? 'PASS' : 'FAIL'}  ${workload.name}: forward ${ratio.toFixed(3)} × direct (target ≥ ${TARGET_RATIO})\n`);
    mkdirSync(WORK_DIR, { recursive: true });
    writeFileSync(path.join(WORK_DIR, 'last-results.json'), JSON.stringify({ summary: summary.map((s) => ({ ...s, workload: s.workload.name })), samples }, null, 2));
    if (!NO_RESULTS) {
      const info = hostFacts(ROOT);
      const file = writeResults({ info, summary, samples, ruleset, started, versions });
      process.stdout.write(`\nresults: ${file}\n`);
    }
    return summary.every((s) => s.pass) ? 0 : 1;
  } finally {
    stopping = true;
    teardown();
    rmSync(wwwDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    stopping = true;
    teardown();
    process.stderr.write(`bench: ${error.stack ?? error.message}\n`);
    process.exit(2);
  },
);
