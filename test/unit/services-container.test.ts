/**
 * A container target as the supervisor runs it: the bundle in its nsgroup's user namespace and
 * network, mos's notify socket bound in, `crun run` as the program; and the boot step that turns
 * the storage phase's services into such containers.
 */
import { describe, expect, it } from 'vitest';
import { CONTAINER_MOUNT_POINTS, NOTIFY_SOCKET_IN_CONTAINER, planContainer, rootfsMountPoints, type ContainerInput } from '../../services/container.ts';
import { prepareContainers, type ContainerPhaseContext } from '../../init/boot/container-phase.ts';
import type { StoragePhaseResult } from '../../init/storage/storage-phase.ts';
import type { InstallTarget } from '../../init/trust/formats.ts';
import { makeSpec } from '../helpers/specs.ts';

const INPUT: ContainerInput = {
  name: 'web',
  rootfs: '/run/mos/targets/web/root',
  process: { argv: ['/bin/httpd', '-f'], env: { MODE: 'demo' }, cwd: '/srv', uid: 33, gid: 33 },
  idRange: { hostId: 196608, size: 65536 },
  network: { type: 'simple', netnsPath: '/run/netns/mos-web' },
  notifySocket: '/run/mos/notify',
  watchdogMs: 2000,
  limits: {},
  dirs: { bundlesDir: '/run/mos/bundles', crunStateRoot: '/run/mos/crun' },
  crun: { path: '/usr/bin/crun', cgroupManager: 'cgroupfs', noPivot: false },
};

describe('planContainer', () => {
  it('a bundle in the nsgroup\'s user namespace and the service\'s netns, with mos\'s notify socket bound in; crun run as the program', () => {
    const plan = planContainer(INPUT);
    if (!plan.ok) throw new Error(plan.message);
    expect(plan.bundleDir).toBe('/run/mos/bundles/web');
    expect(plan.argv).toEqual(['/usr/bin/crun', '--root=/run/mos/crun', '--cgroup-manager=cgroupfs', 'run', '--bundle=/run/mos/bundles/web', '--pid-file=/run/mos/bundles/web/init.pid', 'mos-web']);
    expect(plan.run).toEqual({ id: 'mos-web', stateRoot: '/run/mos/crun', pidFile: '/run/mos/bundles/web/init.pid', cgroupDir: '/sys/fs/cgroup/mos/web' });
    const { config } = plan;
    expect(config.linux.uidMappings).toEqual([{ containerID: 0, hostID: 196608, size: 65536 }]);
    expect(config.linux.namespaces).toContainEqual({ type: 'network', path: '/run/netns/mos-web' });
    expect(config.process.user).toEqual({ uid: 33, gid: 33 });
    expect(config.process.env).toEqual(expect.arrayContaining(['MODE=demo', `NOTIFY_SOCKET=${NOTIFY_SOCKET_IN_CONTAINER}`, 'WATCHDOG_USEC=2000000', 'WATCHDOG_PID=1']));
    expect(config.mounts).toContainEqual({ destination: NOTIFY_SOCKET_IN_CONTAINER, type: 'bind', source: '/run/mos/notify', options: ['rbind'] });
  });

  it('every mount point the bundle needs in the rootfs is one activation makes', () => {
    for (const network of [{ type: 'host', netnsPath: null }, { type: 'none', netnsPath: null }] as const) {
      for (const idRange of [null, INPUT.idRange]) {
        const plan = planContainer({ ...INPUT, network, idRange, notifySocket: null });
        if (!plan.ok) throw new Error(plan.message);
        expect(rootfsMountPoints(plan.config).every((dir) => CONTAINER_MOUNT_POINTS.dirs.includes(dir))).toBe(true);
      }
    }
  });

  it('nsgroup none: no user namespace; no notify socket: none in the env or the mounts', () => {
    const plan = planContainer({ ...INPUT, idRange: null, notifySocket: null, network: { type: 'host', netnsPath: null } });
    if (!plan.ok) throw new Error(plan.message);
    expect(plan.config.linux.uidMappings).toBeUndefined();
    expect(plan.config.linux.namespaces.map((ns) => ns.type)).not.toContain('user');
    expect(plan.config.linux.namespaces.map((ns) => ns.type)).not.toContain('network');
    expect(plan.config.process.env.some((entry) => entry.startsWith('NOTIFY_SOCKET=') || entry.startsWith('WATCHDOG_'))).toBe(false);
  });

  it('its own cgroup below /mos; the limits become linux.resources and are carried for mosctl status', () => {
    const plan = planContainer({ ...INPUT, limits: { memoryBytes: 64 * 1024 * 1024, pids: 64 } });
    if (!plan.ok) throw new Error(plan.message);
    expect(plan.config.linux.cgroupsPath).toBe('/mos/web');
    expect(plan.config.linux.resources).toEqual({ pids: { limit: 64 }, memory: { limit: 67108864 } });
    expect(plan.run).toMatchObject({ cgroupDir: '/sys/fs/cgroup/mos/web', limits: { memoryBytes: 67108864, pids: 64 } });
    const unlimited = planContainer(INPUT);
    if (!unlimited.ok) throw new Error(unlimited.message);
    expect(unlimited.config.linux.resources).toBeUndefined();
    expect(unlimited.run.limits).toBeUndefined();
  });

  it('limits without a cgroup manager are refused rather than run unenforced', () => {
    const disabled = { ...INPUT.crun, cgroupManager: 'disabled' as const };
    expect(planContainer({ ...INPUT, crun: disabled, limits: { pids: 64 } })).toEqual({
      ok: false,
      message: "container web: its limits need crun's cgroupfs manager, and this machine runs crun with cgroups disabled",
    });
    const plan = planContainer({ ...INPUT, crun: disabled });
    if (!plan.ok) throw new Error(plan.message);
    expect(plan.run.cgroupDir).toBeUndefined();
  });

  it('refuses what bundle.ts refuses, naming the container', () => {
    expect(planContainer({ ...INPUT, process: { ...INPUT.process, uid: 70000 } })).toEqual({ ok: false, message: 'container web: process uid 70000 is outside the mapped range 0..65535' });
  });
});

describe('prepareContainers', () => {
  const target = (name: string, nsgroup: string, type: 'simple' | 'none' = 'none', limits?: InstallTarget['limits']) =>
    ({ service_name: name, service_type: 'container', nsgroup, network: { type, ipv4: type === 'simple' ? '10.0.3.2/24' : '', ipv6: '', ports: null }, ...(limits ? { limits } : {}) }) as InstallTarget;
  const storage = (names: string[]): StoragePhaseResult =>
    ({
      targets: names.map((name) => ({
        name,
        type: 'container',
        active: {},
        failure: null,
        plan: { name, type: 'container', overlay: { rootDir: `/run/mos/targets/${name}/root` }, process: { argv: ['/bin/sh'], env: {}, cwd: '/' } },
      })),
      volumes: new Map(),
      services: names.map((name) => ({ ...makeSpec({ name, argv: ['/bin/sh'] }), root: `/run/mos/targets/${name}/root` })),
    }) as unknown as StoragePhaseResult;
  const context = (targets: InstallTarget[], nsgroups: ContainerPhaseContext['nsgroups']): ContainerPhaseContext => ({
    targets: new Map(targets.map((t) => [t.service_name, t])),
    nsgroups,
    networks: null,
    notifySocketPath: '/run/mos/notify',
    dirs: INPUT.dirs,
    crun: INPUT.crun,
  });
  const effects = (refuse: (file: string) => boolean = () => false) => {
    const written = new Map<string, string>();
    const dirs: string[] = [];
    const lines: string[] = [];
    const writeFile = (file: string, text: string) => {
      if (refuse(file)) throw new Error(`open ${file}: ENOENT`);
      written.set(file, text);
    };
    return { written, dirs, lines, fx: { mkdir: (dir: string, mode: number) => void dirs.push(`${dir} ${mode.toString(8)}`), writeFile, say: (line: string) => void lines.push(line) } };
  };
  const webRange = { ok: true as const, assignment: { ranges: { web: { hostId: 131072, size: 65536 } }, retired: {} } };

  it('enables memory and pids from the cgroup root down to /mos, then writes the limits into the bundle', () => {
    const { written, dirs, fx } = effects();
    const specs = prepareContainers(storage(['web']), context([target('web', 'web', 'none', { memory_max: 67108864, pids_max: 64 })], webRange), fx);
    expect([...written.keys()].slice(0, 2)).toEqual(['/sys/fs/cgroup/cgroup.subtree_control', '/sys/fs/cgroup/mos/cgroup.subtree_control']);
    expect(written.get('/sys/fs/cgroup/cgroup.subtree_control')).toBe('+memory +pids');
    expect(dirs).toContain('/sys/fs/cgroup/mos 755');
    const config = JSON.parse(written.get('/run/mos/bundles/web/config.json')!);
    expect(config.linux.cgroupsPath).toBe('/mos/web');
    expect(config.linux.resources).toEqual({ pids: { limit: 64 }, memory: { limit: 67108864 } });
    expect(specs[0]!.container).toMatchObject({ cgroupDir: '/sys/fs/cgroup/mos/web', limits: { memoryBytes: 67108864, pids: 64 } });
  });

  it('controllers that cannot be enabled: a container with limits is unavailable (E_CGROUP), one without runs', () => {
    const { lines, fx } = effects((file) => file.endsWith('cgroup.subtree_control'));
    const ranges = { ok: true as const, assignment: { ranges: { web: { hostId: 131072, size: 65536 }, db: { hostId: 196608, size: 65536 } }, retired: {} } };
    const specs = prepareContainers(storage(['web', 'db']), context([target('web', 'web', 'none', { pids_max: 64 }), target('db', 'db')], ranges), fx);
    expect(specs[0]!.unavailable).toEqual({ code: 'E_CGROUP', message: 'its limits cannot be applied: enabling memory and pids in /sys/fs/cgroup/cgroup.subtree_control: open /sys/fs/cgroup/cgroup.subtree_control: ENOENT' });
    expect(specs[1]!.unavailable).toBeUndefined();
    expect(specs[1]!.container).toMatchObject({ id: 'mos-db' });
    expect(lines).toContain('mos: containers: web: E_CGROUP: its limits cannot be applied');
  });

  it('crun without cgroups (a host run): no controllers touched, limits refused with E_CONTAINER', () => {
    const { written, fx } = effects();
    const ctx = { ...context([target('web', 'web', 'none', { pids_max: 64 })], webRange), crun: { ...INPUT.crun, cgroupManager: 'disabled' as const } };
    const specs = prepareContainers(storage(['web']), ctx, fx);
    expect([...written.keys()].some((file) => file.startsWith('/sys/fs/cgroup'))).toBe(false);
    expect(specs[0]!.unavailable?.code).toBe('E_CONTAINER');
  });

  it('writes each bundle (searchable, not listable) and runs crun instead of the chroot', () => {
    const { written, dirs, fx } = effects();
    const ranges = { ok: true as const, assignment: { ranges: { web: { hostId: 131072, size: 65536 } }, retired: {} } };
    const specs = prepareContainers(storage(['web', 'tools']), context([target('web', 'web'), target('tools', 'none')], ranges), fx);
    expect(dirs).toEqual(['/run/mos/bundles 711', '/sys/fs/cgroup/mos 755', '/run/mos/bundles/web 711', '/run/mos/bundles/tools 711']);
    const web = JSON.parse(written.get('/run/mos/bundles/web/config.json')!);
    expect(web.linux.uidMappings).toEqual([{ containerID: 0, hostID: 131072, size: 65536 }]);
    expect(JSON.parse(written.get('/run/mos/bundles/tools/config.json')!).linux.uidMappings).toBeUndefined();
    expect(specs[0]).toMatchObject({ name: 'web', argv: expect.arrayContaining(['run', 'mos-web']), container: { id: 'mos-web' }, env: {}, cwd: '/' });
    expect(specs[0]!.root).toBeUndefined();
    // nsgroup none: no user namespace, said in mosctl status.
    expect(specs[0]!.warnings).toBeUndefined();
    expect(specs[1]!.warnings).toEqual(['nsgroup "none": runs with the host\'s user ids (no user namespace): its root is the machine\'s root']);
    // A kernel that could not idmap the image: said too.
    const unmappedStorage = storage(['web']);
    (unmappedStorage.targets[0] as { active: unknown }).active = { idmap: { mapped: false, why: 'this kernel cannot idmap the image\'s squashfs' } };
    expect(prepareContainers(unmappedStorage, context([target('web', 'web')], ranges), fx)[0]!.warnings).toEqual(['this kernel cannot idmap the image\'s squashfs']);
  });

  it('a named nsgroup without a range makes its service unavailable with the nsgroup\'s code', () => {
    const { fx } = effects();
    const refused = { ok: false as const, code: 'E_NSGROUP_STATE', message: 'the TPM index is not ours' };
    const specs = prepareContainers(storage(['web']), context([target('web', 'web')], refused), fx);
    expect(specs[0]!.unavailable).toEqual({ code: 'E_NSGROUP_STATE', message: 'nsgroup web has no id range: the TPM index is not ours' });
  });
});
