/**
 * The planned networks (services/network.ts) applied with the real `ip` and `nft`, inside network
 * namespaces this test creates (the host's own namespace is never touched):
 *
 *   outside ──veth── machine ──bridge mos0── web (10.0.3.2, fd00:3::2; forward 8080 → 5000)
 *   .77.2            .77.1                 └─ a-rather-long-service-name (10.0.3.3; 9090 → 6000)
 *
 * "machine" stands in for the machine's own namespace: every planned command runs in it through
 * `nsenter --net` (only the network namespace changes, so `ip netns add` pins its namespaces in
 * the host's /run/netns as on a real machine). Echo servers (node) run in the service namespaces
 * and in "outside" and answer with their name and the peer address they saw, so each answer says
 * which way the packets went and whether they were NATed.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planBundleConfig } from '../../services/bundle.ts';
import { planNetworks, type Command, type NetworkPlan, type NetworkTarget, type ServiceNetworkPlan } from '../../services/network.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/sbin/ip', '/usr/sbin/nft', '/usr/bin/nsenter'].every((file) => existsSync(file));
const hasCrun = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare'].every((file) => existsSync(file));

// Every name this test creates under /run/netns starts with this.
const TAG = `mt${process.pid}-`;
const MACHINE = `${TAG}machine`;
const OUTSIDE = `${TAG}outside`;
const LONG = 'a-rather-long-service-name';

const targets: NetworkTarget[] = [
  { service_name: 'web', service_type: 'container', network: { type: 'simple', ipv4: '10.0.3.2/24', ipv6: 'fd00:3::2/64', ports: [{ host: 8080, container: 5000 }] } },
  { service_name: LONG, service_type: 'container', network: { type: 'simple', ipv4: '10.0.3.3/24', ipv6: '', ports: [{ host: 9090, container: 6000 }] } },
  { service_name: 'quiet', service_type: 'container', network: { type: 'none', ipv4: '', ipv6: '', ports: null } },
  { service_name: 'hostnet', service_type: 'container', network: { type: 'host', ipv4: '', ipv6: '', ports: null } },
];

const ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/** Runs argv in a namespace's network (nothing else changes); throws on failure. */
function inNetns(netns: string, argv: string[], stdin: string | null = null): string {
  return execFileSync('nsenter', [`--net=/run/netns/${netns}`, ...argv], { encoding: 'utf8', input: stdin ?? undefined, env: ENV, timeout: 30_000 });
}

function runInMachine(command: Command): void {
  inNetns(MACHINE, command.argv, command.stdin);
}

function ip(...argv: string[]): void {
  execFileSync('ip', argv, { env: ENV, timeout: 30_000 });
}

/** Answers each TCP connection's first data and each UDP datagram: `<name> <proto> from <peer>: <data>`. */
const ECHO_SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
const [name, port] = process.argv.slice(1);
const peer = (address) => address.replace(/^::ffff:/, '');
let listening = 0;
const ready = () => { if (++listening === 2) console.log('ready'); };
net.createServer((socket) => {
  socket.on('error', () => {});
  socket.once('data', (data) => socket.end(name + ' tcp from ' + peer(socket.remoteAddress) + ': ' + data));
}).listen({ host: '::', port: Number(port) }, ready);
const udp = dgram.createSocket({ type: 'udp6', ipv6Only: false });
udp.on('message', (data, rinfo) => udp.send(name + ' udp from ' + peer(rinfo.address) + ': ' + data, rinfo.port, rinfo.address));
udp.bind(Number(port), '::', ready);
`;

/** Sends one message over TCP or UDP and prints the answer, or "no answer" when none comes. */
const CLIENT = `
const net = require('node:net'), dgram = require('node:dgram');
const [proto, host, port, message, patience] = process.argv.slice(1);
setTimeout(() => { console.log('no answer'); process.exit(2); }, Number(patience));
if (proto === 'tcp') {
  let answer = '';
  const socket = net.connect({ host, port: Number(port) }, () => socket.write(message));
  socket.on('data', (data) => (answer += data));
  socket.on('end', () => { console.log(answer); process.exit(0); });
  socket.on('error', (error) => { console.log('error ' + error.code); process.exit(1); });
} else {
  const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
  socket.on('message', (data) => { console.log(String(data)); process.exit(0); });
  socket.send(message, Number(port), host);
}
`;

/** Binds a TCP port and prints `bound`, or the error's code (EACCES) when the kernel refuses. */
const BINDER = `
const server = require('node:net').createServer();
server.on('error', (error) => { console.log(error.code); process.exit(1); });
server.listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => { console.log('bound'); server.close(); });
`;

/**
 * Tries to bind `port` in `netns` as the root of a new user namespace (`unshare -U -r`): mapped
 * to root, it still holds no capability over a network namespace of the host's user namespace,
 * as a container's root in its nsgroup's user namespace holds none over its service namespace.
 */
function bindAsNamespacedRoot(netns: string, port: number): string {
  const result = spawnSync('nsenter', [`--net=/run/netns/${netns}`, 'unshare', '-U', '-r', process.execPath, '-e', BINDER, String(port)], { encoding: 'utf8', env: ENV, timeout: 30_000 });
  return `${result.stdout.trim()}${result.stderr.trim() ? ` (${result.stderr.trim()})` : ''}`;
}

/** The answer a real client in `netns` gets from host:port. A bound on waiting, not a measurement. */
function ask(netns: string, proto: 'tcp' | 'udp', host: string, port: number, patienceMs = 10_000): string {
  const result = spawnSync('nsenter', [`--net=/run/netns/${netns}`, process.execPath, '-e', CLIENT, proto, host, String(port), 'hello', String(patienceMs)], { encoding: 'utf8', env: ENV, timeout: patienceMs + 20_000 });
  return result.stdout.trim();
}

describe.skipIf(!isRoot || !hasTools)('simple networks and port forwards in network namespaces', () => {
  let plan: NetworkPlan;
  let web: ServiceNetworkPlan;
  let long: ServiceNetworkPlan;
  const servers: ChildProcess[] = [];

  async function startServer(netns: string, name: string, port: number): Promise<void> {
    const child = spawn('nsenter', [`--net=/run/netns/${netns}`, process.execPath, '-e', ECHO_SERVER, name, String(port)], { env: ENV, stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(child);
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (data) => {
        out += data;
        if (out.includes('ready')) resolve();
      });
      child.on('exit', (code) => reject(new Error(`echo server ${name} in ${netns} exited with ${code}`)));
    });
  }

  async function stopServers(): Promise<void> {
    await Promise.all(
      servers.splice(0).map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
  }

  beforeAll(async () => {
    const planned = planNetworks(targets, { netnsPrefix: TAG });
    if (!planned.ok) throw new Error(planned.message);
    plan = planned.plan;
    web = plan.services.find((service) => service.service === 'web')!;
    long = plan.services.find((service) => service.service === LONG)!;

    // The machine and the outside world, linked by a veth; outside has a route to the services'
    // subnet through the machine (as a neighbour on a LAN might), to show it is still closed.
    ip('netns', 'add', MACHINE);
    ip('netns', 'add', OUTSIDE);
    ip('-n', MACHINE, 'link', 'add', 'uplink', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', OUTSIDE);
    for (const [netns, dev, v4, v6] of [
      [MACHINE, 'uplink', '192.168.77.1/24', 'fd77::1/64'],
      [OUTSIDE, 'eth0', '192.168.77.2/24', 'fd77::2/64'],
    ] as const) {
      ip('-n', netns, 'link', 'set', 'lo', 'up');
      ip('-n', netns, 'addr', 'add', v4, 'dev', dev);
      ip('-n', netns, '-6', 'addr', 'add', v6, 'dev', dev, 'nodad');
      ip('-n', netns, 'link', 'set', dev, 'up');
    }
    ip('-n', OUTSIDE, 'route', 'add', '10.0.3.0/24', 'via', '192.168.77.1');

    // This host's kernel has br_netfilter, which passes bridged frames through the IP hooks and
    // its conntrack; the machine's kernel loads no such module. Off, as there, so that hairpin
    // traffic depends on the planned rules alone.
    for (const family of ['iptables', 'ip6tables']) {
      inNetns(MACHINE, ['sh', '-c', `f=/proc/sys/net/bridge/bridge-nf-call-${family}; [ ! -e $f ] || echo 0 > $f`]);
    }

    // The plan, as PID 1 applies it: bridge, sysctls, ruleset, then each simple service.
    const machine = plan.machine!;
    for (const command of machine.setup) runInMachine(command);
    for (const sysctl of machine.sysctls) inNetns(MACHINE, ['tee', sysctl.path], sysctl.value);
    runInMachine(machine.ruleset);
    for (const service of plan.services) for (const command of service.setup) runInMachine(command);

    await startServer(web.netns!, 'web', 5000);
    await startServer(long.netns!, LONG, 6000);
    await startServer(OUTSIDE, 'outside', 7000);
    await startServer(MACHINE, 'machine-loopback', 7100);
  });

  afterAll(async () => {
    await stopServers();
    // Whatever a failed run left; each step on its own.
    for (const service of plan?.services ?? []) for (const command of service.teardown) spawnSync('nsenter', [`--net=/run/netns/${MACHINE}`, ...command.argv], { env: ENV });
    for (const name of existsSync('/run/netns') ? readdirSync('/run/netns') : []) {
      if (name.startsWith(TAG)) spawnSync('ip', ['netns', 'del', name], { env: ENV });
    }
  });

  it('plans names for the long service that fit an interface and say whose they are', () => {
    expect(web).toMatchObject({ hostInterface: 'mv-web', netns: `${TAG}web`, netnsPath: `/run/netns/${TAG}web` });
    expect(long.hostInterface).toMatch(/^mv-a-r-[0-9a-f]{8}$/);
    expect(inNetns(MACHINE, ['ip', '-o', 'link', 'show', 'master', 'mos0'])).toContain(long.hostInterface);
  });

  it('gives a simple service its addresses, a default route and loopback', () => {
    const addresses = inNetns(web.netns!, ['ip', '-o', 'addr', 'show']);
    expect(addresses).toMatch(/^\d+: lo +inet 127\.0\.0\.1\/8/m);
    expect(addresses).toMatch(/^\d+: eth0 +inet 10\.0\.3\.2\/24/m);
    expect(addresses).toMatch(/^\d+: eth0 +inet6 fd00:3::2\/64/m);
    expect(inNetns(web.netns!, ['ip', 'route', 'show', 'default'])).toMatch(/^default via 10\.0\.3\.1 dev eth0/);
    expect(inNetns(web.netns!, ['ip', '-6', 'route', 'show', 'default'])).toMatch(/^default via fd00:3::1 dev eth0/);
  });

  it('forwards TCP and UDP from outside the machine (the client\'s address is kept)', () => {
    expect(ask(OUTSIDE, 'tcp', '192.168.77.1', 8080)).toBe('web tcp from 192.168.77.2: hello');
    expect(ask(OUTSIDE, 'udp', '192.168.77.1', 8080)).toBe('web udp from 192.168.77.2: hello');
    expect(ask(OUTSIDE, 'tcp', '192.168.77.1', 9090)).toBe(`${LONG} tcp from 192.168.77.2: hello`);
    expect(ask(OUTSIDE, 'udp', '192.168.77.1', 9090)).toBe(`${LONG} udp from 192.168.77.2: hello`);
    // IPv6 too, to the service's IPv6 address.
    expect(ask(OUTSIDE, 'tcp', 'fd77::1', 8080)).toBe('web tcp from fd77::2: hello');
    expect(ask(OUTSIDE, 'udp', 'fd77::1', 8080)).toBe('web udp from fd77::2: hello');
  });

  it('forwards TCP and UDP from the machine itself: its addresses and 127.0.0.1', () => {
    expect(ask(MACHINE, 'tcp', '192.168.77.1', 8080)).toBe('web tcp from 192.168.77.1: hello');
    expect(ask(MACHINE, 'udp', '192.168.77.1', 8080)).toBe('web udp from 192.168.77.1: hello');
    expect(ask(MACHINE, 'tcp', 'fd77::1', 8080)).toBe('web tcp from fd77::1: hello');
    // Loopback connections leave through the bridge with the gateway as their source.
    expect(ask(MACHINE, 'tcp', '127.0.0.1', 8080)).toBe('web tcp from 10.0.3.1: hello');
    expect(ask(MACHINE, 'udp', '127.0.0.1', 8080)).toBe('web udp from 10.0.3.1: hello');
    expect(ask(MACHINE, 'tcp', '127.0.0.1', 9090)).toBe(`${LONG} tcp from 10.0.3.1: hello`);
    expect(ask(MACHINE, 'tcp', '10.0.3.1', 9090)).toBe(`${LONG} tcp from 10.0.3.1: hello`);
  });

  it('forwards from a container to another container and to itself (hairpin)', () => {
    expect(ask(web.netns!, 'tcp', '10.0.3.1', 9090)).toBe(`${LONG} tcp from 10.0.3.1: hello`);
    expect(ask(web.netns!, 'udp', '192.168.77.1', 9090)).toBe(`${LONG} udp from 10.0.3.1: hello`);
    expect(ask(web.netns!, 'tcp', '192.168.77.1', 8080)).toBe('web tcp from 10.0.3.1: hello');
  });

  it('masquerades what containers send out (TCP and UDP, IPv4 and IPv6)', () => {
    expect(ask(web.netns!, 'tcp', '192.168.77.2', 7000)).toBe('outside tcp from 192.168.77.1: hello');
    expect(ask(long.netns!, 'udp', '192.168.77.2', 7000)).toBe('outside udp from 192.168.77.1: hello');
    expect(ask(web.netns!, 'tcp', 'fd77::2', 7000)).toBe('outside tcp from fd77::1: hello');
    expect(ask(web.netns!, 'udp', 'fd77::2', 7000)).toBe('outside udp from fd77::1: hello');
  });

  it('lets the machine reach a service\'s own address, but not another machine (only forwards are open)', () => {
    expect(ask(MACHINE, 'tcp', '10.0.3.2', 5000)).toBe('web tcp from 10.0.3.1: hello');
    // Outside has a route to 10.0.3.0/24 through the machine; the SYN is dropped on the way.
    expect(ask(OUTSIDE, 'tcp', '10.0.3.2', 5000, 1500)).toBe('no answer');
  });

  it('lets the container\'s users bind ports below 1024 in their namespace, and only there', () => {
    // The setting is the namespace's own: 0 in the services', the kernel's default elsewhere.
    const portStart = (netns: string) => inNetns(netns, ['cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start']).trim();
    expect(portStart(web.netns!)).toBe('0');
    expect(portStart(long.netns!)).toBe('0');
    expect(portStart(MACHINE)).toBe('1024');
    expect(bindAsNamespacedRoot(web.netns!, 80)).toBe('bound');
    expect(bindAsNamespacedRoot(long.netns!, 443)).toBe('bound');

    // Control: a namespace made the same way but without the setting refuses the same process,
    // while the host's root (who holds the capability over it) may bind there; so the setting
    // is what lets the container in, not something else in the plan or this host.
    const bare = `${TAG}bare`;
    ip('netns', 'add', bare);
    try {
      ip('-n', bare, 'link', 'set', 'lo', 'up');
      expect(portStart(bare)).toBe('1024');
      expect(bindAsNamespacedRoot(bare, 80)).toBe('EACCES');
      expect(inNetns(bare, [process.execPath, '-e', BINDER, '80']).trim()).toBe('bound');
      // ...and the very command the plan runs is what changes that.
      const setting = web.setup.find((command) => command.argv.includes('net.ipv4.ip_unprivileged_port_start=0'))!;
      execFileSync(setting.argv[0]!, setting.argv.slice(1).map((arg) => (arg === web.netns ? bare : arg)), { env: ENV, timeout: 30_000 });
      expect(bindAsNamespacedRoot(bare, 80)).toBe('bound');
    } finally {
      ip('netns', 'del', bare);
    }
  });

  it('keeps the machine\'s loopback closed to containers although route_localnet is on for the bridge', () => {
    // Another namespace on the bridge that routes 127.0.0.0/8 to the machine (a container holds
    // CAP_NET_RAW and could as well craft the packets): without the guard the machine would take
    // them in (CVE-2020-8558). Its loopback stays down, so 127.0.0.1 is not its own.
    const attacker = `${TAG}attacker`;
    ip('netns', 'add', attacker);
    try {
      runInMachine({ argv: ['ip', 'link', 'add', 'mv-attacker', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', attacker], stdin: null });
      runInMachine({ argv: ['ip', 'link', 'set', 'mv-attacker', 'master', 'mos0', 'up'], stdin: null });
      ip('-n', attacker, 'addr', 'add', '10.0.3.9/24', 'dev', 'eth0');
      ip('-n', attacker, 'link', 'set', 'eth0', 'up');
      ip('-n', attacker, 'route', 'add', '127.0.0.0/8', 'via', '10.0.3.1', 'dev', 'eth0');
      // Its kernel would drop the answers (from 127.0.0.1) as martians; a packet socket would not.
      inNetns(attacker, ['tee', '/proc/sys/net/ipv4/conf/eth0/route_localnet'], '1');

      expect(ask(attacker, 'tcp', '127.0.0.1', 7100, 1500)).toBe('no answer');
      // Control: the same ruleset without the guard lets it through, so the guard is what holds.
      const unguarded = plan.machine!.rulesetText.replace(/\t\tiifname != "lo" ip daddr 127\.0\.0\.0\/8 drop\n/, '');
      expect(unguarded).not.toBe(plan.machine!.rulesetText);
      inNetns(MACHINE, ['nft', '-f', '-'], unguarded);
      expect(ask(attacker, 'tcp', '127.0.0.1', 7100)).toBe('machine-loopback tcp from 10.0.3.9: hello');
    } finally {
      runInMachine(plan.machine!.ruleset);
      spawnSync('nsenter', [`--net=/run/netns/${MACHINE}`, 'ip', 'link', 'del', 'mv-attacker'], { env: ENV });
      ip('netns', 'del', attacker);
    }
  });

  describe.skipIf(!hasCrun)('under crun (services/bundle.ts)', () => {
    let work: string;
    beforeAll(() => {
      work = mkdtempSync(path.join(os.tmpdir(), 'mos-network-crun-'));
      chmodSync(work, 0o755);
    });
    afterAll(() => rmSync(work, { recursive: true, force: true }));

    function runInContainer(service: ServiceNetworkPlan, script: string): string {
      const bundle = path.join(work, service.service);
      const rootfs = path.join(bundle, 'rootfs');
      for (const dir of ['bin', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(path.join(rootfs, dir), { recursive: true });
      copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
      const planned = planBundleConfig({
        name: service.service,
        rootfs,
        process: { argv: ['/bin/busybox', 'sh', '-c', script], env: { PATH: '/bin' }, cwd: '/', uid: 0, gid: 0 },
        idRange: { hostId: 200000, size: 65536 },
        network: service.type,
        netnsPath: service.netnsPath,
        limits: { pids: 64 },
        mounts: [],
        notifySocket: null,
      });
      if (!planned.ok) throw new Error(planned.message);
      writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(planned.config, null, 2));
      const state = path.join(work, 'crun-state');
      const shell = `mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec crun --root ${state} --cgroup-manager=disabled run -b ${bundle} mos-net-${process.pid}-${service.type}`;
      return execFileSync('unshare', ['-m', 'sh', '-c', shell], { encoding: 'utf8', timeout: 30_000, env: ENV });
    }

    it('none: the container has loopback and nothing else', () => {
      const quiet = plan.services.find((service) => service.service === 'quiet')!;
      expect(quiet).toMatchObject({ type: 'none', netnsPath: null, setup: [] });
      const lines = runInContainer(quiet, '/bin/busybox ip -o link; /bin/busybox ip -o addr').trim().split('\n');
      expect(new Set(lines.map((line) => line.split(/:? +/)[1]))).toEqual(new Set(['lo']));
      expect(lines[0]).toMatch(/^1: lo: <LOOPBACK,UP,LOWER_UP>/);
      expect(lines.join('\n')).toMatch(/lo +inet 127\.0\.0\.1\/8/);
    });

    it('simple: crun joins the planned namespace (addresses and default route inside)', () => {
      const output = runInContainer(web, '/bin/busybox ip -o addr show dev eth0; /bin/busybox ip route');
      expect(output).toMatch(/eth0 +inet 10\.0\.3\.2\/24/);
      expect(output).toMatch(/default via 10\.0\.3\.1 dev eth0/);
    });

    it('simple: the container\'s root, an unprivileged id on the host, listens on port 80', () => {
      // nc either fails at once (bind: Permission denied) or waits for a client; netstat tells.
      const output = runInContainer(web, '/bin/busybox cat /proc/self/uid_map; /bin/busybox nc -l -p 80 </dev/null & sleep 1; /bin/busybox netstat -ltn; kill $!');
      expect(output).toMatch(/^ +0 +200000 +65536$/m);
      expect(output).toMatch(/^tcp +\d+ +\d+ :::80 +:::\* +LISTEN/m);
      // A none service needs no setting: crun makes its namespace inside the container's user
      // namespace, whose root holds CAP_NET_BIND_SERVICE over it.
      const quiet = plan.services.find((service) => service.service === 'quiet')!;
      expect(runInContainer(quiet, '/bin/busybox cat /proc/sys/net/ipv4/ip_unprivileged_port_start; /bin/busybox nc -l -p 80 </dev/null & sleep 1; /bin/busybox netstat -ltn; kill $!')).toMatch(/^1024\n[\s\S]*^tcp +\d+ +\d+ :::80 +:::\* +LISTEN/m);
    });
  });

  it('tears down without a trace, and the host\'s own namespace never saw any of it', async () => {
    await stopServers();
    for (const service of plan.services) for (const command of service.teardown) runInMachine(command);
    for (const command of plan.machine!.teardown) runInMachine(command);

    expect(inNetns(MACHINE, ['ip', '-o', 'link', 'show']).replace(/^\d+: (\S+?)(@\S+)?: .*$/gm, '$1').trim().split('\n')).toEqual(['lo', 'uplink']);
    expect(inNetns(MACHINE, ['nft', 'list', 'ruleset'])).toBe('');
    expect(readdirSync('/run/netns').filter((name) => name.startsWith(TAG)).sort()).toEqual([MACHINE, OUTSIDE]);
    // Running the teardown again fails only where something is already gone; the table's is idempotent.
    runInMachine(plan.machine!.teardown[0]!);

    // Nothing of it ever reached the host's own namespace.
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toMatch(/^\d+: (mos0|mv-)/m);
    expect(execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' })).not.toMatch(/^table inet mos$/m);
  });
});
