/**
 * Boot phase `networks` (after `nsgroups`, before `storage`): the verified install's container
 * networks, planned by services/network.ts and applied with iproute2 and nftables: the bridge
 * mos0, the kernel settings, the one nftables table with the port forwards and outbound NAT,
 * then each `simple` service's pinned network namespace with its veth and addresses.
 *
 * What a failure means: the machine's part (bridge, settings, table) failing fails every
 * `simple` service; one service's namespace failing fails that service only (its half-made
 * namespace is torn down). `host` and `none` services need nothing here (crun makes a `none`
 * service's namespace itself).
 */
import type { ToolRun } from './run-tool.ts';
import type { InstallTarget } from '../trust/formats.ts';
import type { Uplink } from './cmdline.ts';
import { planNetworks, type Command, type NetworkPlan } from '../../services/network.ts';

export interface NetworkPhaseEffects {
  /** Runs `argv` (argv[0] a bare tool name: ip, nft) with `input` on its stdin. */
  runTool(argv: string[], input: string | null): Promise<ToolRun>;
  writeSysctl(path: string, value: string): void;
  say(line: string): void;
  log(fields: object, message: string): void;
}

export interface NetworkFailure {
  code: 'E_NETWORK';
  message: string;
}

export interface NetworkPhaseResult {
  plan: NetworkPlan | null;
  /** Services whose network could not be made, by name. */
  failures: Map<string, NetworkFailure>;
  note: string;
}

function describeRun(command: Command, run: ToolRun): string {
  const how = run.timedOut ? 'timed out' : run.signal !== null ? `was killed by ${run.signal}` : `exited with ${run.code}`;
  const output = run.output.trim().split('\n').slice(-3).join(' / ');
  return `${command.argv.join(' ')} ${how}${output ? `: ${output}` : ''}`;
}

/** Runs the commands in order, stopping at the first failure: null when all succeeded, else why. */
async function runAll(commands: readonly Command[], fx: NetworkPhaseEffects): Promise<string | null> {
  for (const command of commands) {
    const run = await fx.runTool(command.argv, command.stdin);
    if (run.code !== 0) return describeRun(command, run);
  }
  return null;
}

/** Runs every teardown command whatever happens ("already gone" is fine). */
async function runEach(commands: readonly Command[], fx: NetworkPhaseEffects): Promise<void> {
  for (const command of commands) await fx.runTool(command.argv, command.stdin);
}

/**
 * The machine's own links: loopback up (the kernel leaves it down; forwards from the machine
 * itself and every local service need it), and the uplink from `mos.uplink=` when there is one.
 */
export function planMachineLinks(uplink: Uplink | null): Command[] {
  const ip = (...argv: string[]): Command => ({ argv: ['ip', ...argv], stdin: null });
  const commands = [ip('link', 'set', 'lo', 'up')];
  if (uplink !== null) {
    commands.push(ip('link', 'set', uplink.device, 'up'), ip('addr', 'add', uplink.address, 'dev', uplink.device));
    if (uplink.gateway !== null) commands.push(ip('route', 'add', 'default', 'via', uplink.gateway, 'dev', uplink.device));
  }
  return commands;
}

/** Brings the machine's links up; a failure is reported, and the service networks go on without it. */
export async function runMachineLinks(uplink: Uplink | null, fx: NetworkPhaseEffects): Promise<string> {
  const failed = await runAll(planMachineLinks(uplink), fx);
  const what = uplink === null ? 'lo up' : `lo up; ${uplink.device} ${uplink.address}${uplink.gateway ? ` via ${uplink.gateway}` : ''}`;
  if (failed !== null) {
    fx.say(`mos: networks: machine links: ${failed}`);
    return `machine links failed: ${failed}`;
  }
  fx.say(`mos: networks: ${what}`);
  return what;
}

export async function runNetworkPhase(targets: readonly InstallTarget[], fx: NetworkPhaseEffects): Promise<NetworkPhaseResult> {
  const containers = targets.filter((target) => target.service_type === 'container');
  const failures = new Map<string, NetworkFailure>();
  const planned = planNetworks(containers);
  const simple = containers.filter((target) => target.network.type === 'simple').map((target) => target.service_name);
  const failAll = (message: string): NetworkPhaseResult => {
    for (const name of simple) failures.set(name, { code: 'E_NETWORK', message: `network of ${name}: ${message}` });
    fx.say(`mos: networks: E_NETWORK: ${message}; services ${simple.join(', ')} will not start`);
    return { plan: null, failures, note: `E_NETWORK: ${message}` };
  };
  // The install's verification ran the same checks; a refusal here means the two disagree.
  if (!planned.ok) return failAll(`${planned.code}: ${planned.message}`);
  const { plan } = planned;
  if (plan.machine === null) return { plan, failures, note: 'no simple networks' };

  const machine = plan.machine;
  const bridgeFailed = await runAll(machine.setup, fx);
  if (bridgeFailed !== null) return failAll(`bridge ${machine.bridge.name}: ${bridgeFailed}`);
  for (const sysctl of machine.sysctls) {
    try {
      fx.writeSysctl(sysctl.path, sysctl.value);
    } catch (error) {
      return failAll(`${sysctl.key}=${sysctl.value}: ${(error as Error).message}`);
    }
  }
  const rulesFailed = await runAll([machine.ruleset], fx);
  if (rulesFailed !== null) return failAll(`nftables table: ${rulesFailed}`);

  const made: string[] = [];
  for (const service of plan.services) {
    if (service.type !== 'simple') continue;
    const failed = await runAll(service.setup, fx);
    if (failed !== null) {
      await runEach(service.teardown, fx);
      failures.set(service.service, { code: 'E_NETWORK', message: `network of ${service.service}: ${failed}` });
      fx.say(`mos: networks: ${service.service}: E_NETWORK: ${failed}`);
      continue;
    }
    const addresses = [service.ipv4, service.ipv6].filter((address) => address !== null).map((address) => address!.cidr);
    made.push(`${service.service} ${addresses.join(' ') || '(no address)'}`);
  }
  const forwards = plan.forwards.map((forward) => `${forward.hostPort}→${forward.service}:${forward.containerPort}`);
  const line = `bridge ${machine.bridge.name}; ${made.join(', ') || 'no namespace made'}${forwards.length > 0 ? `; forwards (tcp+udp) ${forwards.join(', ')}` : ''}`;
  fx.say(`mos: networks: ${line}`);
  fx.log({ bridge: machine.bridge, services: made, forwards: plan.forwards, failed: [...failures.keys()] }, `networks: ${line}`);
  return { plan, failures, note: line };
}
