/** The network planner (services/network.ts): names, addresses, argv lists and the nft ruleset. */
import { describe, expect, it } from 'vitest';
import {
  checkNetworkConflicts,
  formatAddress,
  hostInterfaceName,
  parseInterfaceAddress,
  planNetworks,
  stableMac,
  subnetOf,
  subnetsOverlap,
  type NetworkPlan,
  type NetworkTarget,
} from '../../services/network.ts';

function target(service_name: string, network: Partial<NetworkTarget['network']> & { type: NetworkTarget['network']['type'] }, service_type: NetworkTarget['service_type'] = 'container'): NetworkTarget {
  return { service_name, service_type, network: { ipv4: '', ipv6: '', ports: null, ...network } };
}

const TARGETS: NetworkTarget[] = [
  target('web', { type: 'simple', ipv4: '10.0.3.2/24', ipv6: 'fd00:3:0::2/64', ports: [{ host: 8080, container: 5000 }] }),
  target('db', { type: 'simple', ipv4: '10.0.4.2/24', ports: [{ host: 5432, container: 5432 }, { host: 15432, container: 5432 }] }),
  target('quiet', { type: 'none' }),
  target('hostnet', { type: 'host' }),
  target('hostfs', { type: 'host' }, 'hostfs'),
];

function plan(targets: NetworkTarget[], options = {}): NetworkPlan {
  const result = planNetworks(targets, options);
  if (!result.ok) throw new Error(result.message);
  return result.plan;
}

const argvs = (commands: { argv: string[] }[]) => commands.map((command) => command.argv.join(' '));

describe('addresses', () => {
  it('parses address/prefix of one family and prints it canonically (RFC 5952 for IPv6)', () => {
    const cases: [string, string][] = [
      ['10.0.3.2/24', '10.0.3.2'],
      ['fd00:3:0::2/64', 'fd00:3::2'],
      ['FD00:0:0:0:0:0:0:1/64', 'fd00::1'],
      ['1:0:0:1:0:0:0:1/64', '1:0:0:1::1'],
      ['1:0:0:0:1:0:0:1/64', '1::1:0:0:1'],
      ['2001:db8:0:1:1:1:1:1/64', '2001:db8:0:1:1:1:1:1'],
      ['::/96', '::'],
    ];
    for (const [text, canonical] of cases) {
      const family = text.includes(':') ? 6 : 4;
      const parsed = parseInterfaceAddress(text, family);
      expect(parsed && formatAddress(family, parsed.address), text).toBe(canonical);
    }
    for (const bad of ['10.0.3.2', '10.0.3.2/33', '10.0.3.2/0', '10.0.3.2/024', '10.0.3.256/24', 'fd00::2/24', '10.0.3.2/24/1', ' 10.0.3.2/24']) {
      expect(parseInterfaceAddress(bad, 4), bad).toBeNull();
    }
    for (const bad of ['fd00::2', 'fd00::2/129', 'fe80::1%eth0/64', '10.0.3.2/24', 'fd00:::2/64']) expect(parseInterfaceAddress(bad, 6), bad).toBeNull();
  });

  it('knows subnets and whether they overlap', () => {
    const subnet = (text: string) => subnetOf(parseInterfaceAddress(text, text.includes(':') ? 6 : 4)!);
    expect(subnet('10.0.3.77/24')).toEqual({ family: 4, network: 0x0a000300n, prefix: 24 });
    expect(subnetsOverlap(subnet('10.0.3.2/24'), subnet('10.0.0.9/16'))).toBe(true);
    expect(subnetsOverlap(subnet('10.0.3.2/24'), subnet('10.0.4.2/24'))).toBe(false);
    expect(subnetsOverlap(subnet('fd00:0:0:3::2/64'), subnet('fd00::2/48'))).toBe(true);
    expect(subnetsOverlap(subnet('fd00:3::2/64'), subnet('fd00::2/48'))).toBe(false);
    expect(subnetsOverlap(subnet('fd00:3::2/64'), subnet('fd00:4::2/64'))).toBe(false);
  });
});

describe('names', () => {
  it('a veth name fits in 15 bytes, says whose it is when it can, and depends on the service name alone', () => {
    expect(hostInterfaceName('web')).toBe('mv-web');
    expect(hostInterfaceName('abcdefghijkl')).toBe('mv-abcdefghijkl');
    expect(hostInterfaceName('abcdefghijklm')).toBe('mv-abc-ff10304f');
    expect(hostInterfaceName('a-rather-long-service-name')).toBe('mv-a-r-269d135e');
    expect(hostInterfaceName('a-rather-long-service-name-2')).not.toBe(hostInterfaceName('a-rather-long-service-name'));
    for (const name of ['x', 'x'.repeat(12), 'x'.repeat(13), 'x'.repeat(63)]) expect(hostInterfaceName(name).length, name).toBeLessThanOrEqual(15);
  });

  it('MACs are locally administered unicast and stable', () => {
    expect(stableMac('service web')).toBe('02:12:fc:80:7a:43');
    expect(stableMac('bridge mos0')).toMatch(/^02(:[0-9a-f]{2}){5}$/);
  });

  it('refuses a plan where two services would share an interface name', () => {
    // A 12-character name can spell another name's hashed form: refused, never shared.
    const long = 'abcdefghijklm';
    const impostor = hostInterfaceName(long).slice(3);
    const result = planNetworks([target(long, { type: 'simple', ipv4: '10.0.3.2/24' }), target(impostor, { type: 'simple', ipv4: '10.0.3.3/24' })]);
    expect(result).toMatchObject({ ok: false, code: 'E_NETWORK_NAME', message: `services ${long} and ${impostor} would both get interface mv-abc-ff10304f; rename one` });
  });

  it('takes a namespace prefix (tests keep theirs apart), only a plain one', () => {
    expect(plan(TARGETS, { netnsPrefix: 't1-' }).services[0]).toMatchObject({ netns: 't1-web', netnsPath: '/run/netns/t1-web' });
    expect(planNetworks(TARGETS, { netnsPrefix: '../x' })).toMatchObject({ ok: false, code: 'E_NETWORK_NAME' });
  });
});

describe('planNetworks', () => {
  it('host and none: nothing to set up; crun makes none\'s namespace (loopback only); non-container targets have no network', () => {
    const { services } = plan(TARGETS);
    expect(services.map((service) => service.service)).toEqual(['web', 'db', 'quiet', 'hostnet']);
    for (const service of services.slice(2)) {
      expect(service).toEqual({ service: service.service, type: service.type, netns: null, netnsPath: null, hostInterface: null, containerInterface: null, mac: null, ipv4: null, ipv6: null, setup: [], teardown: [] });
    }
  });

  it('simple: a pinned namespace, a veth on the bridge, the static addresses and default routes', () => {
    const web = plan(TARGETS).services[0]!;
    expect(web).toMatchObject({
      netns: 'mos-web',
      netnsPath: '/run/netns/mos-web',
      hostInterface: 'mv-web',
      containerInterface: 'eth0',
      mac: '02:12:fc:80:7a:43',
      ipv4: { cidr: '10.0.3.2/24', address: '10.0.3.2', prefix: 24, subnet: '10.0.3.0/24', gateway: '10.0.3.1' },
      ipv6: { cidr: 'fd00:3::2/64', address: 'fd00:3::2', prefix: 64, subnet: 'fd00:3::/64', gateway: 'fd00:3::1' },
    });
    expect(argvs(web.setup)).toEqual([
      'ip netns add mos-web',
      'ip netns exec mos-web sysctl -q -w net.ipv4.ip_unprivileged_port_start=0',
      'ip link add mv-web type veth peer name eth0 address 02:12:fc:80:7a:43 netns mos-web',
      'ip link set mv-web master mos0',
      'ip link set mv-web up',
      'ip -n mos-web link set lo up',
      'ip -n mos-web addr add 10.0.3.2/24 dev eth0',
      'ip -n mos-web -6 addr add fd00:3::2/64 dev eth0 nodad',
      'ip -n mos-web link set eth0 up',
      'ip -n mos-web route add default via 10.0.3.1 dev eth0',
      'ip -n mos-web -6 route add default via fd00:3::1 dev eth0',
    ]);
    expect(argvs(web.teardown)).toEqual(['ip link del mv-web', 'ip netns del mos-web']);
    expect(web.setup.every((command) => command.stdin === null)).toBe(true);
  });

  it('simple: low ports are opened to the container\'s users in its namespace before anything else is put in it', () => {
    // The container holds no CAP_NET_BIND_SERVICE over a namespace of the machine's user
    // namespace; without the setting it could not bind port 80. First after the namespace
    // exists, so that no interface (and no process) is in the namespace before the setting is.
    for (const service of plan(TARGETS).services.filter((s) => s.type === 'simple')) {
      const commands = argvs(service.setup);
      const setting = commands.indexOf(`ip netns exec ${service.netns} sysctl -q -w net.ipv4.ip_unprivileged_port_start=0`);
      expect(setting, service.service).toBe(commands.indexOf(`ip netns add ${service.netns}`) + 1);
      expect(setting, service.service).toBeLessThan(commands.findIndex((command) => command.startsWith('ip link add ')));
    }
  });

  it('a simple service without addresses gets its link and loopback only', () => {
    const lone = plan([target('lone', { type: 'simple' })]);
    expect(argvs(lone.services[0]!.setup)).toEqual([
      'ip netns add mos-lone',
      'ip netns exec mos-lone sysctl -q -w net.ipv4.ip_unprivileged_port_start=0',
      `ip link add mv-lone type veth peer name eth0 address ${stableMac('service lone')} netns mos-lone`,
      'ip link set mv-lone master mos0',
      'ip link set mv-lone up',
      'ip -n mos-lone link set lo up',
      'ip -n mos-lone link set eth0 up',
    ]);
    expect(lone.machine!.sysctls).toEqual([]);
  });

  it('the machine: the bridge with one gateway per subnet, sysctls, and how to undo it', () => {
    const machine = plan(TARGETS).machine!;
    expect(machine.bridge).toEqual({ name: 'mos0', mac: stableMac('bridge mos0'), addresses: ['10.0.3.1/24', '10.0.4.1/24', 'fd00:3::1/64'], subnets4: ['10.0.3.0/24', '10.0.4.0/24'], subnets6: ['fd00:3::/64'] });
    expect(argvs(machine.setup)).toEqual([
      `ip link add mos0 address ${stableMac('bridge mos0')} type bridge`,
      'ip addr add 10.0.3.1/24 dev mos0',
      'ip addr add 10.0.4.1/24 dev mos0',
      'ip -6 addr add fd00:3::1/64 dev mos0 nodad',
      'ip link set mos0 up',
    ]);
    expect(machine.sysctls).toEqual([
      { key: 'net.ipv4.ip_forward', path: '/proc/sys/net/ipv4/ip_forward', value: '1' },
      { key: 'net.ipv4.conf.mos0.route_localnet', path: '/proc/sys/net/ipv4/conf/mos0/route_localnet', value: '1' },
      { key: 'net.ipv6.conf.all.forwarding', path: '/proc/sys/net/ipv6/conf/all/forwarding', value: '1' },
    ]);
    expect(machine.ruleset).toEqual({ argv: ['nft', '-f', '-'], stdin: machine.rulesetText });
    expect(machine.teardown).toEqual([
      { argv: ['nft', '-f', '-'], stdin: 'table inet mos\ndelete table inet mos\n' },
      { argv: ['ip', 'link', 'del', 'mos0'], stdin: null },
    ]);
  });

  it('the forwards: TCP and UDP, to the IPv4 address and to the IPv6 one when there is one', () => {
    expect(plan(TARGETS).forwards).toEqual([
      { service: 'web', hostPort: 8080, containerPort: 5000, protocols: ['tcp', 'udp'], ipv4: '10.0.3.2', ipv6: 'fd00:3::2' },
      { service: 'db', hostPort: 5432, containerPort: 5432, protocols: ['tcp', 'udp'], ipv4: '10.0.4.2', ipv6: null },
      { service: 'db', hostPort: 15432, containerPort: 5432, protocols: ['tcp', 'udp'], ipv4: '10.0.4.2', ipv6: null },
    ]);
  });

  it('the ruleset (golden)', () => {
    expect(plan(TARGETS).machine!.rulesetText).toBe(`# mos: networks of the simple services (services/network.ts). The whole table is replaced at once.
table inet mos
delete table inet mos
table inet mos {
\tchain guard {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname != "lo" ip daddr 127.0.0.0/8 drop
\t}
\tchain forwards {
\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } th dport 8080 dnat ip to 10.0.3.2:5000 comment "web"
\t\tip6 daddr != ::1 meta l4proto { tcp, udp } th dport 8080 dnat ip6 to [fd00:3::2]:5000 comment "web"
\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } th dport 5432 dnat ip to 10.0.4.2:5432 comment "db"
\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } th dport 15432 dnat ip to 10.0.4.2:5432 comment "db"
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local jump forwards
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local jump forwards
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "mos0" ct status dnat ip saddr 127.0.0.0/8 masquerade
\t\toifname "mos0" ct status dnat ip saddr 10.0.3.0/24 masquerade
\t\toifname "mos0" ct status dnat ip saddr 10.0.4.0/24 masquerade
\t\toifname "mos0" ct status dnat ip6 saddr fd00:3::/64 masquerade
\t\toifname != "mos0" ip saddr 10.0.3.0/24 masquerade
\t\toifname != "mos0" ip saddr 10.0.4.0/24 masquerade
\t\toifname != "mos0" ip6 saddr fd00:3::/64 masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname != "mos0" oifname "mos0" ct state new ct status ! dnat drop
\t}
}
`);
  });

  it('without forwards: outbound NAT only, no loopback route, no guard', () => {
    const machine = plan([target('v6only', { type: 'simple', ipv6: 'fd00:9::5/64' })]).machine!;
    expect(machine.sysctls.map((sysctl) => sysctl.key)).toEqual(['net.ipv6.conf.all.forwarding']);
    expect(machine.rulesetText).toBe(`# mos: networks of the simple services (services/network.ts). The whole table is replaced at once.
table inet mos
delete table inet mos
table inet mos {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname != "mos0" ip6 saddr fd00:9::/64 masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname != "mos0" oifname "mos0" ct state new ct status ! dnat drop
\t}
}
`);
  });

  it('no simple service: no bridge, no ruleset, no sysctls', () => {
    expect(plan(TARGETS.slice(2))).toEqual({ machine: null, services: expect.any(Array), forwards: [] });
  });

  it('services sharing a subnet share one gateway; addresses are written canonically', () => {
    const machine = plan([target('a', { type: 'simple', ipv4: '10.0.3.2/24', ipv6: 'FD00:0:0:0::2/64' }), target('b', { type: 'simple', ipv4: '10.0.3.3/24', ipv6: 'fd00::3/64' })]).machine!;
    expect(machine.bridge.addresses).toEqual(['10.0.3.1/24', 'fd00::1/64']);
  });

  it('never plans from conflicting data', () => {
    const result = planNetworks([target('a', { type: 'simple', ipv4: '10.0.3.2/24' }), target('b', { type: 'simple', ipv4: '10.0.3.2/24' })]);
    expect(result).toEqual({ ok: false, code: 'E_NETWORK_CONFLICT', message: "targets[1] (b).network.ipv4: address 10.0.3.2 is also a's", problems: ["targets[1] (b).network.ipv4: address 10.0.3.2 is also a's"] });
  });
});

describe('checkNetworkConflicts', () => {
  const check = (...targets: NetworkTarget[]) => checkNetworkConflicts(targets);

  it('accepts the fixture', () => {
    expect(check(...TARGETS)).toEqual([]);
  });

  it('refuses the subnet\'s network, broadcast and gateway addresses', () => {
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.0/24' }))).toEqual(['targets[0] (a).network.ipv4: 10.0.3.0 is the network address of 10.0.3.0/24']);
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.255/24' }))).toEqual(['targets[0] (a).network.ipv4: 10.0.3.255 is the broadcast address of 10.0.3.0/24']);
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.1/24' }))).toEqual(['targets[0] (a).network.ipv4: 10.0.3.1 is the gateway mos reserves for 10.0.3.0/24 (the subnet\'s first address, on the bridge)']);
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::1/64' }))).toEqual(['targets[0] (a).network.ipv6: fd00::1 is the gateway mos reserves for fd00::/64 (the subnet\'s first address, on the bridge)']);
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::/64' }))).toEqual(['targets[0] (a).network.ipv6: fd00:: is the network address of fd00::/64']);
    // IPv6 has no broadcast address.
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::ffff:ffff:ffff:ffff/64' }))).toEqual([]);
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/30' }))).toEqual([]);
  });

  it('refuses prefixes too long for network, gateway, service (and broadcast)', () => {
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/31' })).join()).toMatch(/prefix \/31 leaves no room .* expected \/30 or shorter/);
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/32' })).join()).toMatch(/prefix \/32/);
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::2/127' })).join()).toMatch(/ipv6: prefix \/127 .* expected \/126 or shorter/);
  });

  it('refuses subnets that touch loopback, link-local, multicast and the like', () => {
    expect(check(target('a', { type: 'simple', ipv4: '127.0.3.2/24' }))).toEqual(['targets[0] (a).network.ipv4: subnet 127.0.3.0/24 overlaps 127.0.0.0/8 (loopback), which cannot be a service network']);
    expect(check(target('a', { type: 'simple', ipv4: '126.0.0.2/7' })).join()).toMatch(/overlaps 127\.0\.0\.0\/8 \(loopback\)/);
    expect(check(target('a', { type: 'simple', ipv4: '169.254.3.2/24' })).join()).toMatch(/link-local/);
    expect(check(target('a', { type: 'simple', ipv4: '224.0.0.2/24' })).join()).toMatch(/multicast/);
    expect(check(target('a', { type: 'simple', ipv6: 'fe80::2/64' })).join()).toMatch(/link-local/);
    expect(check(target('a', { type: 'simple', ipv6: 'ff02::2/64' })).join()).toMatch(/multicast/);
    expect(check(target('a', { type: 'simple', ipv6: '::ffff:10.0.3.2/120' })).join()).toMatch(/IPv4-mapped/);
  });

  it('refuses the same address twice, in any spelling', () => {
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::5/64' }), target('b', { type: 'simple', ipv6: 'fd00:0:0::5/64' }))).toEqual(["targets[1] (b).network.ipv6: address fd00::5 is also a's"]);
  });

  it('refuses subnets that overlap without being the same', () => {
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/24' }), target('b', { type: 'simple', ipv4: '10.0.0.5/16' }))).toEqual([
      'targets[1] (b).network.ipv4: subnet 10.0.0.0/16 overlaps 10.0.3.0/24 of a; services share a subnet only with the same prefix',
    ]);
    expect(check(target('a', { type: 'simple', ipv6: 'fd00:1:2:3::2/64' }), target('b', { type: 'simple', ipv6: 'fd00:1::2/32' })).join()).toMatch(/subnet fd00:1::\/32 overlaps fd00:1:2:3::\/64 of a/);
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/24' }), target('b', { type: 'simple', ipv4: '10.0.3.3/24' }), target('c', { type: 'simple', ipv4: '10.0.4.3/24' }))).toEqual([]);
  });

  it('refuses a host port twice (within one target too) and ports without an ipv4 address', () => {
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/24', ports: [{ host: 80, container: 80 }, { host: 80, container: 81 }] }))).toEqual(['targets[0] (a).network.ports[1].host: port 80 is already forwarded to a']);
    expect(check(target('a', { type: 'simple', ipv6: 'fd00::2/64', ports: [{ host: 80, container: 80 }] }))).toEqual(['targets[0] (a).network.ports: forwarding ports needs a static ipv4 address']);
  });

  it('simple is for containers; other types carry no addresses or ports', () => {
    expect(check(target('a', { type: 'simple', ipv4: '10.0.3.2/24' }, 'fs-only'))).toEqual(['targets[0] (a).network: type simple is only for container targets, not fs-only']);
    expect(check(target('a', { type: 'none', ipv6: 'fd00::2/64' }))).toEqual(['targets[0] (a).network: ipv4, ipv6 and ports are only for type simple, not none']);
  });
});
