/**
 * Networks of container services, planned from the verified install (pure: data in, data out).
 *
 * - `host`: the service stays in the machine's network namespace. Nothing to plan.
 * - `none`: crun gives it a fresh network namespace with only loopback (crun brings `lo` up).
 * - `simple`: a network namespace of its own, pinned at /run/netns/<prefix><service> so that it
 *   outlives container restarts and crun joins it by path (services/bundle.ts `netnsPath`). A veth
 *   pair links it to the bridge `mos0`; the container's end is `eth0` with the manifest's static
 *   addresses and a default route via the bridge's address in that subnet (the *gateway*, always
 *   the subnet's first address). Outbound traffic is masqueraded to the machine's addresses.
 *   Inside it, `net.ipv4.ip_unprivileged_port_start` is 0, so the container can bind ports
 *   below 1024 without CAP_NET_BIND_SERVICE over the namespace (see planService).
 * - Port forwards: every manifest port is forwarded for TCP and UDP by nftables DNAT, for
 *   packets to any of the machine's own addresses: arriving on any interface (prerouting) and
 *   generated on the machine itself (output), including 127.0.0.1 (see `planRuleset`).
 *
 * What the caller does with a plan (in this order; argv lists are spawned as they are, never
 * through a shell):
 *   1. `machine.setup` (the bridge), then write `machine.sysctls`, then run `machine.ruleset`
 *      (`nft -f -` with the ruleset on stdin: one atomic transaction that replaces the whole
 *      `inet mos` table, so re-applying is safe);
 *   2. per simple service, `setup` before its first start; crun then joins `netnsPath`. Keep the
 *      namespace across restarts; `teardown` when the service goes away for good;
 *   3. at shutdown, every service's `teardown`, then `machine.teardown`.
 * Teardown commands are independent: run all of them even if one fails (they fail only on
 * objects that are already gone). Setup assumes a clean slate: run the teardown first to clear
 * what a crashed earlier run left. Sysctls are not restored at teardown.
 */
import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';

/** The bridge every simple service's veth is a port of. */
export const BRIDGE = 'mos0';
/** The nftables table mos owns entirely (it never touches another table). */
export const NFT_TABLE = 'mos';
/** Network namespaces are named <prefix><service> under /run/netns (iproute2's directory). */
export const NETNS_PREFIX = 'mos-';
export const NETNS_DIR = '/run/netns';
/** The container's end of its veth, inside its own namespace (no clash possible there). */
export const CONTAINER_INTERFACE = 'eth0';
/** Linux interface names hold at most 15 bytes (IFNAMSIZ 16 with the NUL). */
export const MAX_INTERFACE_NAME = 15;
/** The machine's end of a service's veth: `mv-<service>` when that fits. */
export const VETH_PREFIX = 'mv-';
/** Forwards carry both; the manifest has no protocol field (project-machine forwarded TCP only). */
export const FORWARD_PROTOCOLS = ['tcp', 'udp'] as const;

// ── addresses ───────────────────────────────────────────────────────────────────────────────

export type IpFamily = 4 | 6;
const BITS: Record<IpFamily, number> = { 4: 32, 6: 128 };
const FIELD: Record<IpFamily, 'ipv4' | 'ipv6'> = { 4: 'ipv4', 6: 'ipv6' };

/** An interface address with its prefix, as the manifest gives it (`10.0.3.2/24`). */
export interface InterfaceAddress {
  family: IpFamily;
  address: bigint;
  prefix: number;
}

export interface Subnet {
  family: IpFamily;
  network: bigint;
  prefix: number;
}

function parseIPv4(text: string): bigint {
  return text.split('.').reduce((value, part) => (value << 8n) | BigInt(Number(part)), 0n);
}

function parseIPv6(text: string): bigint {
  // A trailing dotted quad (::ffff:1.2.3.4) is two groups.
  let body = text;
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  if (quad) {
    const v4 = parseIPv4(quad[1]!);
    body = `${body.slice(0, quad.index)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, tail] = body.includes('::') ? body.split('::') : [body, null];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const groups = tail === null ? headGroups : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  return groups.reduce((value, group) => (value << 16n) | BigInt(parseInt(group, 16)), 0n);
}

/** Parses `address/prefix` of one family; null unless it is exactly that (prefix 1..32 or 1..128). */
export function parseInterfaceAddress(text: string, family: IpFamily): InterfaceAddress | null {
  const match = /^([^/]+)\/(\d{1,3})$/.exec(text);
  if (!match) return null;
  const [, address, prefixText] = match as unknown as [string, string, string];
  const prefix = Number(prefixText);
  if (String(prefix) !== prefixText || prefix < 1 || prefix > BITS[family]) return null;
  if (family === 4 ? !isIPv4(address) : !isIPv6(address) || address.includes('%')) return null;
  return { family, address: family === 4 ? parseIPv4(address) : parseIPv6(address), prefix };
}

/** Canonical text: dotted quad, or RFC 5952 (lowercase, longest run of zero groups as `::`). */
export function formatAddress(family: IpFamily, value: bigint): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 0xffn)).join('.');
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => Number((value >> shift) & 0xffffn));
  let bestStart = -1;
  let bestLength = 1; // a single zero group is not shortened
  for (let start = 0; start < 8; ) {
    if (groups[start] !== 0) {
      start++;
      continue;
    }
    let end = start;
    while (end < 8 && groups[end] === 0) end++;
    if (end - start > bestLength) [bestStart, bestLength] = [start, end - start];
    start = end;
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

function hostMask(family: IpFamily, prefix: number): bigint {
  return (1n << BigInt(BITS[family] - prefix)) - 1n;
}

export function subnetOf(address: InterfaceAddress): Subnet {
  return { family: address.family, network: address.address & ~hostMask(address.family, address.prefix), prefix: address.prefix };
}

export function formatSubnet(subnet: Subnet): string {
  return `${formatAddress(subnet.family, subnet.network)}/${subnet.prefix}`;
}

function lastAddress(subnet: Subnet): bigint {
  return subnet.network | hostMask(subnet.family, subnet.prefix);
}

/** Whether two subnets share any address (one contains the other). */
export function subnetsOverlap(a: Subnet, b: Subnet): boolean {
  return a.family === b.family && a.network <= lastAddress(b) && b.network <= lastAddress(a);
}

function sameSubnet(a: Subnet, b: Subnet): boolean {
  return a.family === b.family && a.network === b.network && a.prefix === b.prefix;
}

/** The bridge's address in a subnet, which its services route through: the first address. */
export function gatewayOf(subnet: Subnet): bigint {
  return subnet.network + 1n;
}

/**
 * Smallest subnets (largest prefixes) a service may use: the network address, mos's gateway, the
 * service itself and (IPv4) the broadcast address must all fit.
 */
export const MAX_PREFIX: Record<IpFamily, number> = { 4: 30, 6: 126 };

/** Blocks no service subnet may touch: they mean something else to every host. */
const RESERVED_BLOCKS: Record<IpFamily, { block: string; what: string }[]> = {
  4: [
    { block: '0.0.0.0/8', what: '"this network"' },
    { block: '127.0.0.0/8', what: 'loopback' },
    { block: '169.254.0.0/16', what: 'link-local' },
    { block: '224.0.0.0/4', what: 'multicast' },
    { block: '240.0.0.0/4', what: 'reserved and broadcast' },
  ],
  6: [
    { block: '::/96', what: 'unspecified, loopback and IPv4-compatible' },
    { block: '::ffff:0:0/96', what: 'IPv4-mapped' },
    { block: 'fe80::/10', what: 'link-local' },
    { block: 'ff00::/8', what: 'multicast' },
  ],
};

function reservedBlocks(family: IpFamily): { subnet: Subnet; what: string }[] {
  return RESERVED_BLOCKS[family].map(({ block, what }) => ({ subnet: subnetOf(parseInterfaceAddress(block, family)!), what }));
}

// ── conflict checks (run when the manifest is verified) ─────────────────────────────────────

/** What the network checks and the planner read of an install target (formats.ts `InstallTarget`). */
export interface NetworkTarget {
  service_name: string;
  service_type: 'hostfs' | 'container' | 'fs-only';
  network: {
    type: 'host' | 'none' | 'simple';
    ipv4: string;
    ipv6: string;
    ports: { host: number; container: number }[] | null;
  };
}

/**
 * Every network rule that needs more than one field or more than one target. Empty when fine.
 * Messages name the target as install-schema.ts does (`targets[i] (name).network…`).
 *
 * - only `simple` carries addresses and ports, and only container targets are `simple`;
 * - addresses parse as `address/prefix` with room for network, gateway, service (and broadcast);
 * - an address is not its subnet's network, broadcast or gateway (the subnet's first address,
 *   which the bridge takes);
 * - no subnet touches loopback, link-local, multicast and the like;
 * - no two services share an address; services share a subnet only with the same prefix (a
 *   /16 around a /24 would give the bridge two overlapping routes);
 * - ports need an ipv4 address; a host port is forwarded once across the whole install.
 */
export function checkNetworkConflicts(targets: readonly NetworkTarget[]): string[] {
  const problems: string[] = [];
  const hostPorts = new Map<number, string>();
  const addresses: Record<IpFamily, Map<bigint, string>> = { 4: new Map(), 6: new Map() };
  const subnets: Record<IpFamily, { subnet: Subnet; service: string }[]> = { 4: [], 6: [] };
  targets.forEach((target, i) => {
    const at = `targets[${i}] (${target.service_name})`;
    const net = target.network;
    const ports = net.ports ?? [];
    if (net.type !== 'simple') {
      if (net.ipv4 !== '' || net.ipv6 !== '' || ports.length > 0) problems.push(`${at}.network: ipv4, ipv6 and ports are only for type simple, not ${net.type}`);
      return;
    }
    if (target.service_type !== 'container') problems.push(`${at}.network: type simple is only for container targets, not ${target.service_type}`);
    for (const family of [4, 6] as const) {
      const field = FIELD[family];
      const text = net[field];
      if (text === '') continue;
      const parsed = parseInterfaceAddress(text, family);
      if (!parsed) {
        problems.push(`${at}.network.${field}: expected an address/prefix such as ${family === 4 ? '10.0.3.2/24' : 'fd00::2/64'}`);
        continue;
      }
      const address = formatAddress(family, parsed.address);
      if (parsed.prefix > MAX_PREFIX[family]) {
        problems.push(`${at}.network.${field}: prefix /${parsed.prefix} leaves no room for the network's addresses and mos's gateway; expected /${MAX_PREFIX[family]} or shorter`);
        continue;
      }
      const subnet = subnetOf(parsed);
      const subnetText = formatSubnet(subnet);
      const reserved = reservedBlocks(family).find((block) => subnetsOverlap(block.subnet, subnet));
      if (reserved) {
        problems.push(`${at}.network.${field}: subnet ${subnetText} overlaps ${formatSubnet(reserved.subnet)} (${reserved.what}), which cannot be a service network`);
        continue;
      }
      if (parsed.address === subnet.network) problems.push(`${at}.network.${field}: ${address} is the network address of ${subnetText}`);
      else if (family === 4 && parsed.address === lastAddress(subnet)) problems.push(`${at}.network.${field}: ${address} is the broadcast address of ${subnetText}`);
      else if (parsed.address === gatewayOf(subnet)) problems.push(`${at}.network.${field}: ${address} is the gateway mos reserves for ${subnetText} (the subnet's first address, on the bridge)`);
      const other = addresses[family].get(parsed.address);
      if (other !== undefined) problems.push(`${at}.network.${field}: address ${address} is also ${other}'s`);
      else addresses[family].set(parsed.address, target.service_name);
      const clash = subnets[family].find((known) => subnetsOverlap(known.subnet, subnet) && !sameSubnet(known.subnet, subnet));
      if (clash) {
        problems.push(`${at}.network.${field}: subnet ${subnetText} overlaps ${formatSubnet(clash.subnet)} of ${clash.service}; services share a subnet only with the same prefix`);
      } else if (!subnets[family].some((known) => sameSubnet(known.subnet, subnet))) {
        subnets[family].push({ subnet, service: target.service_name });
      }
    }
    if (ports.length > 0 && net.ipv4 === '') problems.push(`${at}.network.ports: forwarding ports needs a static ipv4 address`);
    ports.forEach((port, p) => {
      const other = hostPorts.get(port.host);
      if (other !== undefined) problems.push(`${at}.network.ports[${p}].host: port ${port.host} is already forwarded to ${other}`);
      else hostPorts.set(port.host, target.service_name);
    });
  });
  return problems;
}

// ── the plan ────────────────────────────────────────────────────────────────────────────────

/** A program to spawn: argv[0] is looked up on PATH (`ip`, `nft`); stdin is written then closed. */
export interface Command {
  argv: string[];
  stdin: string | null;
}

/** A sysctl to write (`path` is under /proc/sys, as seen from the machine's network namespace). */
export interface Sysctl {
  key: string;
  path: string;
  value: string;
}

/** One of a service's addresses, in canonical text. */
export interface PlannedAddress {
  /** `10.0.3.2/24` */
  cidr: string;
  address: string;
  prefix: number;
  /** The subnet, `10.0.3.0/24`. */
  subnet: string;
  /** The bridge's address in that subnet, the default route's next hop. */
  gateway: string;
}

export interface ServiceNetworkPlan {
  service: string;
  type: 'host' | 'none' | 'simple';
  /** simple only: the namespace's name under /run/netns (for `ip -n`). */
  netns: string | null;
  /** For crun (BundleInput.netnsPath): the namespace to join, simple only. host and none: null. */
  netnsPath: string | null;
  /** simple only: the veth's end in the machine's namespace, a port of the bridge. */
  hostInterface: string | null;
  /** simple only: `eth0`, inside the service's namespace. */
  containerInterface: string | null;
  /** simple only: eth0's MAC, stable per service so neighbours' caches stay right across restarts. */
  mac: string | null;
  ipv4: PlannedAddress | null;
  ipv6: PlannedAddress | null;
  setup: Command[];
  teardown: Command[];
}

export interface PortForward {
  service: string;
  hostPort: number;
  containerPort: number;
  protocols: readonly ('tcp' | 'udp')[];
  /** DNAT target addresses: IPv4 always (the manifest requires it), IPv6 when the service has one. */
  ipv4: string;
  ipv6: string | null;
}

export interface BridgePlan {
  name: string;
  /** Set explicitly: a bridge otherwise takes its lowest port's MAC, which changes as ports come and go. */
  mac: string;
  /** The gateway of each distinct subnet, `10.0.3.1/24`, IPv4 first, in manifest order. */
  addresses: string[];
  subnets4: string[];
  subnets6: string[];
}

export interface MachineNetworkPlan {
  bridge: BridgePlan;
  /** The bridge and its addresses. */
  setup: Command[];
  /** Written after `setup` (one of them names the bridge), before the ruleset. */
  sysctls: Sysctl[];
  /** The whole `table inet mos`, for `nft -f -`. */
  rulesetText: string;
  /** `nft -f -` with `rulesetText` on stdin. */
  ruleset: Command;
  teardown: Command[];
}

export interface NetworkPlan {
  /** null when no service has a simple network: no bridge, no ruleset, no sysctls. */
  machine: MachineNetworkPlan | null;
  /** Every container target, in manifest order. */
  services: ServiceNetworkPlan[];
  forwards: PortForward[];
}

export interface NetworkPlanOptions {
  /** Prefix of the namespaces' names under /run/netns; tests use their own. Default `mos-`. */
  netnsPrefix?: string;
}

export type NetworkPlanResult =
  | { ok: true; plan: NetworkPlan }
  | { ok: false; code: 'E_NETWORK_CONFLICT' | 'E_NETWORK_NAME'; message: string; problems: string[] };

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * The machine's end of a service's veth. `mv-<service>` when that fits in 15 bytes (service names
 * of up to 12 characters); longer names become `mv-<first 3>-<8 hex of sha256(name)>`, exactly 15
 * bytes. A short form is at most 15 bytes and a long form exactly 15 with a `-` at byte 7 followed
 * by hex; the two can meet only if a 12-character name looks like a long form, and two long forms
 * only if their names share a prefix and a 32-bit hash: `planNetworks` checks and refuses both
 * (E_NETWORK_NAME) rather than letting one service take another's interface. Depends on the name
 * alone, so it is the same on every boot.
 */
export function hostInterfaceName(service: string): string {
  const short = `${VETH_PREFIX}${service}`;
  if (Buffer.byteLength(short) <= MAX_INTERFACE_NAME) return short;
  return `${VETH_PREFIX}${service.slice(0, 3)}-${digest(service).subarray(0, 4).toString('hex')}`;
}

/** A locally administered unicast MAC (02:…) from a label: stable, and unlikely to repeat. */
export function stableMac(label: string): string {
  const bytes = [0x02, ...digest(`mos mac ${label}`).subarray(0, 5)];
  return bytes.map((byte) => byte.toString(16).padStart(2, '0')).join(':');
}

function planAddress(text: string, family: IpFamily): PlannedAddress | null {
  if (text === '') return null;
  const parsed = parseInterfaceAddress(text, family)!;
  const subnet = subnetOf(parsed);
  const address = formatAddress(family, parsed.address);
  return { cidr: `${address}/${parsed.prefix}`, address, prefix: parsed.prefix, subnet: formatSubnet(subnet), gateway: formatAddress(family, gatewayOf(subnet)) };
}

function ip(...argv: string[]): Command {
  return { argv: ['ip', ...argv], stdin: null };
}

function planService(service: string, type: 'host' | 'none' | 'simple', ipv4: PlannedAddress | null, ipv6: PlannedAddress | null, netnsPrefix: string): ServiceNetworkPlan {
  if (type !== 'simple') {
    return { service, type, netns: null, netnsPath: null, hostInterface: null, containerInterface: null, mac: null, ipv4: null, ipv6: null, setup: [], teardown: [] };
  }
  const netns = `${netnsPrefix}${service}`;
  const veth = hostInterfaceName(service);
  const mac = stableMac(`service ${service}`);
  const inside = (...argv: string[]) => ip('-n', netns, ...argv);
  const setup: Command[] = [
    ip('netns', 'add', netns),
    // Ports below 1024 for the container's own users. The namespace belongs to the machine's
    // user namespace and the container runs in its nsgroup's, so even the container's root holds
    // no CAP_NET_BIND_SERVICE over it, and under the kernel's default (1024) a web server could
    // not bind port 80. Docker sets 0 in every container's namespace for the same reason. The
    // setting is the namespace's own and the container is alone in it, so it opens nothing on the
    // machine or in another container. Set before anything else can use the namespace.
    // (`ip netns exec` gives sysctl a /proc/sys/net of that namespace; sysctl is procps'.)
    ip('netns', 'exec', netns, 'sysctl', '-q', '-w', 'net.ipv4.ip_unprivileged_port_start=0'),
    // The container's end is created directly in its namespace: no temporary name in the
    // machine's namespace that could clash with another interface.
    ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', CONTAINER_INTERFACE, 'address', mac, 'netns', netns),
    ip('link', 'set', veth, 'master', BRIDGE),
    ip('link', 'set', veth, 'up'),
    inside('link', 'set', 'lo', 'up'),
  ];
  if (ipv4) setup.push(inside('addr', 'add', ipv4.cidr, 'dev', CONTAINER_INTERFACE));
  // nodad: the address is static and the conflict checks made it unique on this bridge;
  // duplicate address detection would only hold the address back for a second or more.
  if (ipv6) setup.push(inside('-6', 'addr', 'add', ipv6.cidr, 'dev', CONTAINER_INTERFACE, 'nodad'));
  setup.push(inside('link', 'set', CONTAINER_INTERFACE, 'up'));
  if (ipv4) setup.push(inside('route', 'add', 'default', 'via', ipv4.gateway, 'dev', CONTAINER_INTERFACE));
  if (ipv6) setup.push(inside('-6', 'route', 'add', 'default', 'via', ipv6.gateway, 'dev', CONTAINER_INTERFACE));
  // Deleting one end of a veth deletes both; deleting the namespace's name lets it go once no
  // process is left in it.
  const teardown = [ip('link', 'del', veth), ip('netns', 'del', netns)];
  return { service, type, netns, netnsPath: `${NETNS_DIR}/${netns}`, hostInterface: veth, containerInterface: CONTAINER_INTERFACE, mac, ipv4, ipv6, setup, teardown };
}

function validInterfaceName(name: string): boolean {
  // The kernel's dev_valid_name: 1..15 bytes, not "." or "..", no "/", ":" or white space.
  return Buffer.byteLength(name) >= 1 && Buffer.byteLength(name) <= MAX_INTERFACE_NAME && name !== '.' && name !== '..' && !/[/:\s]/.test(name);
}

/**
 * The networks of every container target. `targets` should have passed the install checks
 * (install-schema.ts); the network rules are checked again here so that a plan is never made
 * from conflicting data.
 */
export function planNetworks(targets: readonly NetworkTarget[], options: NetworkPlanOptions = {}): NetworkPlanResult {
  const netnsPrefix = options.netnsPrefix ?? NETNS_PREFIX;
  const problems = checkNetworkConflicts(targets);
  if (problems.length > 0) return { ok: false, code: 'E_NETWORK_CONFLICT', message: problems.join('; '), problems };
  if (!/^[a-z0-9][a-z0-9_.-]{0,31}$/.test(netnsPrefix)) {
    return { ok: false, code: 'E_NETWORK_NAME', message: `namespace prefix ${JSON.stringify(netnsPrefix)} is not a plain name`, problems: [] };
  }

  const services: ServiceNetworkPlan[] = [];
  const forwards: PortForward[] = [];
  for (const target of targets) {
    if (target.service_type !== 'container') continue;
    const net = target.network;
    const ipv4 = net.type === 'simple' ? planAddress(net.ipv4, 4) : null;
    const ipv6 = net.type === 'simple' ? planAddress(net.ipv6, 6) : null;
    services.push(planService(target.service_name, net.type, ipv4, ipv6, netnsPrefix));
    for (const port of net.ports ?? []) {
      forwards.push({ service: target.service_name, hostPort: port.host, containerPort: port.container, protocols: FORWARD_PROTOCOLS, ipv4: ipv4!.address, ipv6: ipv6?.address ?? null });
    }
  }

  // Interface names and MACs must not repeat (see hostInterfaceName).
  const simple = services.filter((service) => service.type === 'simple');
  const bridgeMac = stableMac(`bridge ${BRIDGE}`);
  const names = new Map<string, string>();
  const macs = new Map<string, string>([[bridgeMac, `the bridge ${BRIDGE}`]]);
  for (const service of simple) {
    const name = service.hostInterface!;
    if (!validInterfaceName(name) || name === BRIDGE) return { ok: false, code: 'E_NETWORK_NAME', message: `service ${service.service}: interface name ${name} is not usable`, problems: [] };
    const other = names.get(name);
    if (other !== undefined) return { ok: false, code: 'E_NETWORK_NAME', message: `services ${other} and ${service.service} would both get interface ${name}; rename one`, problems: [] };
    names.set(name, service.service);
    const sameMac = macs.get(service.mac!);
    if (sameMac !== undefined) return { ok: false, code: 'E_NETWORK_NAME', message: `service ${service.service} would get the MAC of ${sameMac}; rename one`, problems: [] };
    macs.set(service.mac!, `service ${service.service}`);
  }

  if (simple.length === 0) return { ok: true, plan: { machine: null, services, forwards } };
  return { ok: true, plan: { machine: planMachine(simple, forwards, bridgeMac), services, forwards } };
}

function distinct(values: string[]): string[] {
  return [...new Set(values)];
}

function planMachine(simple: ServiceNetworkPlan[], forwards: PortForward[], mac: string): MachineNetworkPlan {
  const gateways4 = distinct(simple.flatMap((service) => (service.ipv4 ? [`${service.ipv4.gateway}/${service.ipv4.prefix}`] : [])));
  const gateways6 = distinct(simple.flatMap((service) => (service.ipv6 ? [`${service.ipv6.gateway}/${service.ipv6.prefix}`] : [])));
  const bridge: BridgePlan = {
    name: BRIDGE,
    mac,
    addresses: [...gateways4, ...gateways6],
    subnets4: distinct(simple.flatMap((service) => (service.ipv4 ? [service.ipv4.subnet] : []))),
    subnets6: distinct(simple.flatMap((service) => (service.ipv6 ? [service.ipv6.subnet] : []))),
  };
  const setup: Command[] = [
    ip('link', 'add', BRIDGE, 'address', mac, 'type', 'bridge'),
    ...gateways4.map((cidr) => ip('addr', 'add', cidr, 'dev', BRIDGE)),
    ...gateways6.map((cidr) => ip('-6', 'addr', 'add', cidr, 'dev', BRIDGE, 'nodad')),
    ip('link', 'set', BRIDGE, 'up'),
  ];
  const sysctls: Sysctl[] = [];
  const sysctl = (key: string, value: string) => sysctls.push({ key, path: `/proc/sys/${key.replace(/\./g, '/')}`, value });
  // Routing between the bridge and the machine's other interfaces: outbound NAT and forwards.
  if (bridge.subnets4.length > 0) sysctl('net.ipv4.ip_forward', '1');
  // Lets forwarded connections to 127.0.0.1 leave through the bridge (a loopback source is
  // otherwise refused on a non-loopback device) and their replies come back; the ruleset drops
  // anything else addressed to 127.0.0.0/8 that arrives on a real interface.
  if (forwards.length > 0) sysctl(`net.ipv4.conf.${BRIDGE}.route_localnet`, '1');
  // Also makes every interface ignore router advertisements unless its accept_ra is 2.
  if (bridge.subnets6.length > 0) sysctl('net.ipv6.conf.all.forwarding', '1');
  const rulesetText = planRuleset(bridge, forwards);
  return {
    bridge,
    setup,
    sysctls,
    rulesetText,
    ruleset: { argv: ['nft', '-f', '-'], stdin: rulesetText },
    teardown: [
      // Declaring the table first makes the delete succeed whether or not it exists.
      { argv: ['nft', '-f', '-'], stdin: `table inet ${NFT_TABLE}\ndelete table inet ${NFT_TABLE}\n` },
      ip('link', 'del', BRIDGE),
    ],
  };
}

function quote(text: string): string {
  return JSON.stringify(text);
}

/**
 * The complete `table inet mos`, replaced atomically: `nft -f` applies the file as one
 * transaction, and declaring the table before deleting it makes the delete valid on first use.
 *
 * - guard (prerouting, raw): drops packets addressed to 127.0.0.0/8 that arrive on any interface
 *   but lo. route_localnet on the bridge would otherwise let a container (which holds
 *   CAP_NET_RAW) reach the machine's loopback-only services (the hole kube-proxy had,
 *   CVE-2020-8558). Replies of forwarded connections pass: they are addressed to the gateway
 *   until conntrack rewrites them, after this hook.
 * - forwards: one DNAT rule per port and family, TCP and UDP, jumped to from prerouting (packets
 *   from other machines and from containers) and from output (the machine's own connections),
 *   only for packets to one of the machine's own addresses (`fib daddr type local`), so traffic
 *   routed through the machine is left alone. IPv6 to ::1 is left alone: the kernel never lets
 *   ::1 leave lo.
 * - postrouting: masquerade (1) the machine's own forwarded connections from 127.0.0.0/8, so the
 *   container can answer (to it, 127.0.0.1 is itself); (2) hairpin: a container reaching a
 *   forward (its own or another's) on the same bridge, so the answer comes back through the
 *   machine's conntrack rather than straight over the bridge; (3) outbound NAT from each subnet.
 * - forward: new connections from outside into the bridge pass only through a forward: the
 *   services' addresses themselves are not reachable from other machines.
 */
export function planRuleset(bridge: BridgePlan, forwards: readonly PortForward[]): string {
  const b = quote(bridge.name);
  const lines: string[] = [];
  const add = (text: string) => lines.push(text);
  add(`# mos: networks of the simple services (services/network.ts). The whole table is replaced at once.`);
  add(`table inet ${NFT_TABLE}`);
  add(`delete table inet ${NFT_TABLE}`);
  add(`table inet ${NFT_TABLE} {`);
  if (forwards.length > 0) {
    add(`\tchain guard {`);
    add(`\t\ttype filter hook prerouting priority raw; policy accept;`);
    add(`\t\tiifname != "lo" ip daddr 127.0.0.0/8 drop`);
    add(`\t}`);
    add(`\tchain forwards {`);
    for (const forward of forwards) {
      const match = `meta l4proto { ${forward.protocols.join(', ')} } th dport ${forward.hostPort}`;
      const comment = `comment ${quote(forward.service)}`;
      add(`\t\tmeta nfproto ipv4 ${match} dnat ip to ${forward.ipv4}:${forward.containerPort} ${comment}`);
      if (forward.ipv6) add(`\t\tip6 daddr != ::1 ${match} dnat ip6 to [${forward.ipv6}]:${forward.containerPort} ${comment}`);
    }
    add(`\t}`);
    add(`\tchain prerouting {`);
    add(`\t\ttype nat hook prerouting priority dstnat; policy accept;`);
    add(`\t\tfib daddr type local jump forwards`);
    add(`\t}`);
    add(`\tchain output {`);
    // nft 1.0.6 knows the name dstnat only in prerouting; -100 is the same priority.
    add(`\t\ttype nat hook output priority -100; policy accept;`);
    add(`\t\tfib daddr type local jump forwards`);
    add(`\t}`);
  }
  add(`\tchain postrouting {`);
  add(`\t\ttype nat hook postrouting priority srcnat; policy accept;`);
  if (forwards.length > 0) {
    add(`\t\toifname ${b} ct status dnat ip saddr 127.0.0.0/8 masquerade`);
    // (In postrouting the input interface is not known, hence the source subnets.)
    for (const subnet of bridge.subnets4) add(`\t\toifname ${b} ct status dnat ip saddr ${subnet} masquerade`);
    for (const subnet of bridge.subnets6) add(`\t\toifname ${b} ct status dnat ip6 saddr ${subnet} masquerade`);
  }
  for (const subnet of bridge.subnets4) add(`\t\toifname != ${b} ip saddr ${subnet} masquerade`);
  for (const subnet of bridge.subnets6) add(`\t\toifname != ${b} ip6 saddr ${subnet} masquerade`);
  add(`\t}`);
  add(`\tchain forward {`);
  add(`\t\ttype filter hook forward priority filter; policy accept;`);
  add(`\t\tiifname != ${b} oifname ${b} ct state new ct status ! dnat drop`);
  add(`\t}`);
  add(`}`);
  return `${lines.join('\n')}\n`;
}
