/**
 * The boot's networks phase over a recorded tool runner: the plan's commands in order (bridge,
 * settings, the nftables table on stdin, each simple service's namespace); a machine failure
 * fails every simple service, a service's failure only that one, with its half-made namespace
 * torn down.
 */
import { describe, expect, it } from 'vitest';
import { planMachineLinks, runMachineLinks, runNetworkPhase, type NetworkPhaseEffects } from '../../init/boot/network-phase.ts';
import type { InstallTarget } from '../../init/trust/formats.ts';
import type { ToolRun } from '../../init/boot/run-tool.ts';

const target = (name: string, network: Partial<InstallTarget['network']> & { type: InstallTarget['network']['type'] }, type: InstallTarget['service_type'] = 'container') =>
  ({ service_name: name, service_type: type, network: { ipv4: '', ipv6: '', ports: null, ...network } }) as InstallTarget;

const TARGETS = [
  target('web', { type: 'simple', ipv4: '10.0.3.2/24', ports: [{ host: 8080, container: 80 }] }),
  target('api', { type: 'simple', ipv4: '10.0.3.3/24' }),
  target('tools', { type: 'host' }),
  target('quiet', { type: 'none' }),
];

function effects(fails: (argv: string[]) => boolean = () => false) {
  const runs: { argv: string[]; input: string | null }[] = [];
  const sysctls: string[] = [];
  const lines: string[] = [];
  const fx: NetworkPhaseEffects = {
    runTool: async (argv, input): Promise<ToolRun> => {
      runs.push({ argv, input });
      return fails(argv) ? { code: 2, signal: null, output: 'RTNETLINK answers: File exists\n', timedOut: false } : { code: 0, signal: null, output: '', timedOut: false };
    },
    writeSysctl: (path, value) => void sysctls.push(`${path}=${value}`),
    say: (line) => void lines.push(line),
    log: () => {},
  };
  return { fx, runs, sysctls, lines };
}

describe('networks phase', () => {
  it('makes the bridge, writes the settings, loads the table from stdin, then each simple service\'s namespace', async () => {
    const { fx, runs, sysctls, lines } = effects();
    const result = await runNetworkPhase(TARGETS, fx);
    expect(result.failures.size).toBe(0);
    const commands = runs.map((run) => run.argv.join(' '));
    expect(commands.slice(0, 3)).toEqual([expect.stringMatching(/^ip link add mos0 /), 'ip addr add 10.0.3.1/24 dev mos0', 'ip link set mos0 up']);
    expect(commands[3]).toBe('nft -f -');
    expect(runs[3]!.input).toMatch(/dnat ip to 10\.0\.3\.2:80/);
    expect(commands.slice(4)).toContain('ip netns add mos-web');
    expect(commands.slice(4)).toContain('ip netns add mos-api');
    // Run through the same runner (argv[0] ip): containers may bind ports below 1024.
    expect(commands.slice(4)).toContain('ip netns exec mos-web sysctl -q -w net.ipv4.ip_unprivileged_port_start=0');
    expect(commands.some((command) => /tools|quiet/.test(command))).toBe(false);
    expect(sysctls).toContain('/proc/sys/net/ipv4/ip_forward=1');
    expect(lines).toEqual(['mos: networks: bridge mos0; web 10.0.3.2/24, api 10.0.3.3/24; forwards (tcp+udp) 8080→web:80']);
    expect(result.plan?.services.find((s) => s.service === 'web')?.netnsPath).toBe('/run/netns/mos-web');
  });

  it('a failing service namespace fails that service only, and is torn down', async () => {
    const { fx, runs, lines } = effects((argv) => argv.join(' ').startsWith('ip link add mv-api'));
    const result = await runNetworkPhase(TARGETS, fx);
    expect([...result.failures.keys()]).toEqual(['api']);
    expect(result.failures.get('api')!.message).toMatch(/^network of api: ip link add mv-api .* exited with 2: RTNETLINK answers: File exists$/);
    expect(runs.map((run) => run.argv.join(' '))).toContain('ip netns del mos-api');
    expect(lines.at(-1)).toBe('mos: networks: bridge mos0; web 10.0.3.2/24; forwards (tcp+udp) 8080→web:80');
  });

  it('a failing bridge or table fails every simple service, and nothing more is tried', async () => {
    const { fx, runs, lines } = effects((argv) => argv[0] === 'nft');
    const result = await runNetworkPhase(TARGETS, fx);
    expect([...result.failures.keys()]).toEqual(['web', 'api']);
    expect(runs.at(-1)!.argv).toEqual(['nft', '-f', '-']);
    expect(lines).toEqual([expect.stringMatching(/^mos: networks: E_NETWORK: nftables table: nft -f - exited with 2: .*; services web, api will not start$/)]);
  });

  it('does nothing without simple networks', async () => {
    const none = effects();
    expect((await runNetworkPhase([target('tools', { type: 'host' })], none.fx)).note).toBe('no simple networks');
    expect(none.runs).toEqual([]);
  });
});

describe('machine links', () => {
  it('loopback always; the uplink from mos.uplink= with its address and default route', async () => {
    expect(planMachineLinks(null).map((c) => c.argv.join(' '))).toEqual(['ip link set lo up']);
    expect(planMachineLinks({ device: 'eth0', address: '10.0.2.15/24', gateway: '10.0.2.2' }).map((c) => c.argv.join(' '))).toEqual([
      'ip link set lo up',
      'ip link set eth0 up',
      'ip addr add 10.0.2.15/24 dev eth0',
      'ip route add default via 10.0.2.2 dev eth0',
    ]);
    const { fx, lines } = effects((argv) => argv.includes('eth9'));
    expect(await runMachineLinks({ device: 'eth9', address: '10.0.2.15/24', gateway: null }, fx)).toMatch(/^machine links failed: ip link set eth9 up exited with 2/);
    expect(lines).toEqual([expect.stringMatching(/^mos: networks: machine links: ip link set eth9 up exited with 2/)]);
  });
});
