/**
 * The `exec-target` control request (`mosctl exec`), server side: who may ask (root peers of mos's
 * own socket only, never a stream), what the provider's answers and refusals become on the wire,
 * and how PID 1's and host mode's providers (init/control/exec-target.ts) judge a service.
 */
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ControlError, type ExecTarget, type ExecTargetProvider, type SupervisorApi } from '../../init/control/api.ts';
import {
  parseBundleProcess,
  readBundleProcess,
  refuseExecInHostMode,
  resolveExecTarget,
  type BundleProcess,
  type ExecContainer,
} from '../../init/control/exec-target.ts';
import { BadRequestError, parseRequest, READ_ONLY_COMMANDS } from '../../init/control/protocol.ts';
import { serveControlStream, startControlServer, type ControlServer } from '../../init/control/server.ts';
import type { ServiceState, ServiceStatus } from '../../init/supervisor/types.ts';
import { ControlClient } from '../../mosctl/client.ts';
import { loadNative } from '../../native/index.ts';
import type { Credentials } from '../../native/types.ts';
import { planBundleConfig } from '../../services/bundle.ts';
import { makeStatus } from '../helpers/specs.ts';

const sockets = loadNative();

const TARGET: ExecTarget = {
  service: 'web',
  containerId: 'mos-web',
  crunPath: '/usr/bin/crun',
  crunRoot: '/run/mos/crun',
  cgroupManager: 'cgroupfs',
  env: ['PATH=/usr/bin:/bin', 'SECRET=s3cret'],
  cwd: '/srv',
  user: { uid: 0, gid: 0 },
};

/** A supervisor with services `web` (a running container) and `tool` (a running host process). */
function fakeApi(): SupervisorApi {
  const statuses = new Map<string, ServiceStatus>([
    ['web', makeStatus({ name: 'web', state: 'running', pid: 4242 })],
    ['tool', makeStatus({ name: 'tool', state: 'running', pid: 4343 })],
  ]);
  const status = (name: string) => {
    const found = statuses.get(name);
    if (!found) throw new ControlError('E_UNKNOWN_SERVICE', `unknown service "${name}"`);
    return found;
  };
  const never = () => Promise.reject(new Error('not used'));
  return {
    info: () => ({ mode: 'pid1', pid: 1, startedAt: 0, health: 'ok', reason: null, configPath: null }),
    list: () => [...statuses.values()],
    status,
    start: never,
    stop: never,
    restart: never,
    logs: () => [],
    followLogs: () => () => {},
  };
}

const asRoot = (): Credentials => ({ pid: 1, uid: 0, gid: 0 });
const asOwner = (): Credentials => ({ pid: 77, uid: 1000, gid: 1000 });

let dir: string;
let socketPath: string;
let server: ControlServer | undefined;
let asked: string[];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mos-control-exec-'));
  socketPath = join(dir, 'control.sock');
  asked = [];
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

/** PID 1's provider over the fake: `web` is a container, `tool` a host process. */
function pid1Provider(api: SupervisorApi): ExecTargetProvider {
  return (name) => {
    asked.push(name);
    const status = api.status(name);
    return resolveExecTarget({ status, container: name === 'web' ? { id: TARGET.containerId, stateRoot: TARGET.crunRoot, crunPath: TARGET.crunPath, cgroupManager: TARGET.cgroupManager, process: { env: TARGET.env, cwd: TARGET.cwd, user: TARGET.user } } : null });
  };
}

async function serve(options: { peer?: () => Credentials; allowedUids?: number[]; execTarget?: ExecTargetProvider | null } = {}): Promise<void> {
  const api = fakeApi();
  const execTarget = options.execTarget === null ? undefined : (options.execTarget ?? pid1Provider(api));
  server = await startControlServer({
    sockets,
    path: socketPath,
    api,
    peerCredentials: options.peer ?? asRoot,
    ...(options.allowedUids ? { allowedUids: options.allowedUids } : {}),
    ...(execTarget ? { execTarget } : {}),
  });
}

describe('exec-target on the control socket', () => {
  it("answers a root peer with the running container's target", async () => {
    await serve();
    const client = await ControlClient.connect(socketPath);
    expect(await client.request({ cmd: 'exec-target', service: 'web' })).toEqual(TARGET);
    expect(asked).toEqual(['web']);
    client.close();
  });

  it('passes the refusals on with their codes: unknown service, host process, not running', async () => {
    const api = fakeApi();
    const stopped = makeStatus({ name: 'web', state: 'stopped', pid: null });
    const container: ExecContainer = { id: 'mos-web', stateRoot: '/run/mos/crun', crunPath: '/usr/bin/crun', cgroupManager: 'cgroupfs', process: { env: [], cwd: '/', user: { uid: 0, gid: 0 } } };
    server = await startControlServer({
      sockets,
      path: socketPath,
      api,
      peerCredentials: asRoot,
      execTarget: (name) => (name === 'web' ? resolveExecTarget({ status: stopped, container }) : pid1Provider(api)(name)),
    });
    const client = await ControlClient.connect(socketPath);
    await expect(client.request({ cmd: 'exec-target', service: 'nope' })).rejects.toMatchObject({ code: 'E_UNKNOWN_SERVICE', message: 'unknown service "nope"' });
    await expect(client.request({ cmd: 'exec-target', service: 'tool' })).rejects.toMatchObject({
      code: 'E_NOT_CONTAINER',
      message: "service tool is not a container (it runs as a plain host process): mosctl exec only enters container services' namespaces",
    });
    await expect(client.request({ cmd: 'exec-target', service: 'web' })).rejects.toMatchObject({
      code: 'E_NOT_RUNNING',
      message: 'service web is not running (stopped): there is no container to run a command in',
    });
    // The connection survives every refusal.
    expect((await client.request({ cmd: 'list' })).length).toBe(2);
    client.close();
  });

  it("refuses a peer the socket admits but that is not root (host mode's own uid), without asking the provider", async () => {
    await serve({ peer: asOwner, allowedUids: [0, 1000] });
    const client = await ControlClient.connect(socketPath);
    await expect(client.request({ cmd: 'exec-target', service: 'web' })).rejects.toMatchObject({
      code: 'E_PERMISSION',
      message: 'permission denied: exec needs root (peer uid 1000)',
    });
    expect(asked).toEqual([]);
    // Everything else still works for that peer.
    expect((await client.request({ cmd: 'status', service: 'web' })).state).toBe('running');
    client.close();
  });

  it('answers E_UNSUPPORTED when no provider is wired', async () => {
    await serve({ execTarget: null });
    const client = await ControlClient.connect(socketPath);
    await expect(client.request({ cmd: 'exec-target', service: 'web' })).rejects.toMatchObject({
      code: 'E_UNSUPPORTED',
      message: 'exec is not available: this mos (pid1 mode) runs no containers',
    });
    client.close();
  });

  it('a provider failing with a plain error answers E_INTERNAL and keeps serving', async () => {
    await serve({
      execTarget: () => {
        throw new Error('config.json vanished');
      },
    });
    const client = await ControlClient.connect(socketPath);
    await expect(client.request({ cmd: 'exec-target', service: 'web' })).rejects.toMatchObject({ code: 'E_INTERNAL', message: 'config.json vanished' });
    expect((await client.request({ cmd: 'list' })).length).toBe(2);
    client.close();
  });

  it('an async provider is awaited', async () => {
    await serve({ execTarget: async () => TARGET });
    const client = await ControlClient.connect(socketPath);
    expect(await client.request({ cmd: 'exec-target', service: 'web' })).toEqual(TARGET);
    client.close();
  });
});

describe('exec-target over a stream (the virtio-serial port)', () => {
  async function askOverStream(access: 'root' | 'read-only'): Promise<any> {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const port = Duplex.from({ readable: toServer, writable: toClient });
    serveControlStream(port, fakeApi(), { access });
    const answer = new Promise<any>((resolve) => toClient.once('data', (chunk: Buffer) => resolve(JSON.parse(chunk.toString().trim()))));
    toServer.write('{"v":1,"id":1,"cmd":"exec-target","service":"web"}\n');
    const result = await answer;
    port.destroy();
    return result;
  }

  it('is refused even with root access, as E_NOT_LOCAL: the peer is not on mos\'s machine (mosctl then relays)', async () => {
    const answer = await askOverStream('root');
    expect(answer).toMatchObject({ id: 1, ok: false, error: { code: 'E_NOT_LOCAL' } });
    expect(answer.error.message).toContain("served only on mos's own control socket");
  });

  it('is refused as a change on a read-only stream', async () => {
    expect(await askOverStream('read-only')).toMatchObject({ id: 1, ok: false, error: { code: 'E_PERMISSION' } });
  });
});

describe('the exec-target request', () => {
  it('is parsed with a service name, strictly, and is not read-only', () => {
    expect(parseRequest('{"v":1,"id":3,"cmd":"exec-target","service":"web"}')).toEqual({ v: 1, id: 3, cmd: 'exec-target', service: 'web' });
    const missing = parseRequest('{"v":1,"id":4,"cmd":"exec-target"}');
    expect(missing).toBeInstanceOf(BadRequestError);
    expect((missing as BadRequestError).message).toBe('service: required');
    expect((parseRequest('{"v":1,"id":5,"cmd":"exec-target","service":"../x"}') as BadRequestError).requestId).toBe(5);
    expect((parseRequest('{"v":1,"id":6,"cmd":"exec-target","service":"web","argv":["sh"]}') as BadRequestError).message).toBe('unknown field "argv"');
    expect(READ_ONLY_COMMANDS.has('exec-target')).toBe(false);
  });
});

describe('resolveExecTarget (what PID 1 wires)', () => {
  const container: ExecContainer = {
    id: 'mos-db',
    stateRoot: '/run/mos/crun',
    crunPath: '/usr/bin/crun',
    cgroupManager: 'disabled',
    process: { env: ['PATH=/bin', 'A=1'], cwd: '/var/lib/db', user: { uid: 70, gid: 70 } },
  };

  it('a container whose process is alive (starting, running, stopping) has a target', () => {
    for (const state of ['starting', 'running', 'stopping'] as ServiceState[]) {
      expect(resolveExecTarget({ status: { name: 'db', state, pid: 99 }, container })).toEqual({
        service: 'db',
        containerId: 'mos-db',
        crunPath: '/usr/bin/crun',
        crunRoot: '/run/mos/crun',
        cgroupManager: 'disabled',
        env: ['PATH=/bin', 'A=1'],
        cwd: '/var/lib/db',
        user: { uid: 70, gid: 70 },
      });
    }
  });

  it('any other state, or no process, is E_NOT_RUNNING', () => {
    for (const state of ['stopped', 'waiting', 'backoff', 'failed', 'done'] as ServiceState[]) {
      expect(() => resolveExecTarget({ status: { name: 'db', state, pid: null }, container })).toThrow(
        expect.objectContaining({ code: 'E_NOT_RUNNING', message: `service db is not running (${state}): there is no container to run a command in` }),
      );
    }
    expect(() => resolveExecTarget({ status: { name: 'db', state: 'running', pid: null }, container })).toThrow(expect.objectContaining({ code: 'E_NOT_RUNNING' }));
  });

  it('a host process is E_NOT_CONTAINER, running or not', () => {
    for (const state of ['running', 'stopped'] as ServiceState[]) {
      expect(() => resolveExecTarget({ status: { name: 'tool', state, pid: state === 'running' ? 5 : null }, container: null })).toThrow(
        expect.objectContaining({ code: 'E_NOT_CONTAINER' }),
      );
    }
  });

  it('reads a lazy process only for a running container, so a stopped one is E_NOT_RUNNING even without its bundle', () => {
    let reads = 0;
    const lazy: ExecContainer = {
      ...container,
      process: () => {
        reads++;
        return readBundleProcess(join(dir, 'no-such-bundle'));
      },
    };
    expect(() => resolveExecTarget({ status: { name: 'db', state: 'stopped', pid: null }, container: lazy })).toThrow(expect.objectContaining({ code: 'E_NOT_RUNNING' }));
    expect(reads).toBe(0);
    expect(() => resolveExecTarget({ status: { name: 'db', state: 'running', pid: 99 }, container: lazy })).toThrow(expect.objectContaining({ code: 'E_INTERNAL' }));
    expect(reads).toBe(1);
    expect(resolveExecTarget({ status: { name: 'db', state: 'running', pid: 99 }, container: { ...container, process: () => container.process as BundleProcess } }).cwd).toBe('/var/lib/db');
  });

  it("the target's lists are copies: changing one changes nothing in the supervisor's data", () => {
    const target = resolveExecTarget({ status: { name: 'db', state: 'running', pid: 99 }, container });
    target.env.push('X=1');
    target.user.uid = 0;
    expect((container.process as BundleProcess).env).toEqual(['PATH=/bin', 'A=1']);
    expect((container.process as BundleProcess).user.uid).toBe(70);
  });
});

describe('refuseExecInHostMode', () => {
  const refuse = refuseExecInHostMode((name) => fakeApi().status(name));

  it('names unknown services as such and refuses known ones as host processes', () => {
    expect(() => refuse('nope')).toThrow(expect.objectContaining({ code: 'E_UNKNOWN_SERVICE' }));
    expect(() => refuse('web')).toThrow(
      expect.objectContaining({
        code: 'E_NOT_CONTAINER',
        message: "service web is not a container (host mode runs no containers): mosctl exec only enters container services' namespaces",
      }),
    );
  });
});

describe("the bundle's process", () => {
  const planned = planBundleConfig({
    name: 'db',
    rootfs: '/var/lib/mos/db/rootfs',
    process: { argv: ['/bin/db'], env: { PATH: '/usr/bin:/bin', B: '2' }, cwd: '/data', uid: 70, gid: 71 },
    idRange: { hostId: 200000, size: 65536 },
    network: 'none',
    netnsPath: null,
    limits: {},
    mounts: [],
    notifySocket: null,
  });
  if (!planned.ok) throw new Error(planned.message);
  const config = planned.config;

  it("is read from planBundleConfig's config.json", () => {
    expect(parseBundleProcess(JSON.parse(JSON.stringify(config)))).toEqual({ env: config.process.env, cwd: '/data', user: { uid: 70, gid: 71 } });
  });

  it('says what is wrong with a config it cannot use', () => {
    expect(parseBundleProcess(null)).toBe('config.json has no process object');
    expect(parseBundleProcess({ process: { ...config.process, env: [1] } })).toBe('config.json process.env is not a list of strings');
    expect(parseBundleProcess({ process: { ...config.process, cwd: 'data' } })).toBe('config.json process.cwd is not an absolute path');
    expect(parseBundleProcess({ process: { ...config.process, user: { uid: -1, gid: 0 } } })).toBe('config.json process.user has no numeric uid and gid');
    // OCI's env is optional: none means an empty environment.
    const { env: _env, ...withoutEnv } = config.process;
    expect(parseBundleProcess({ process: withoutEnv })).toEqual({ env: [], cwd: '/data', user: { uid: 70, gid: 71 } });
  });

  it('is read from the bundle directory, and a missing or broken file is E_INTERNAL naming it', async () => {
    const bundle = join(dir, 'bundle');
    await mkdir(bundle);
    expect(() => readBundleProcess(bundle)).toThrow(expect.objectContaining({ code: 'E_INTERNAL', message: `cannot read the container's ${bundle}/config.json: ENOENT` }));
    await writeFile(join(bundle, 'config.json'), '{"process":');
    expect(() => readBundleProcess(bundle)).toThrow(expect.objectContaining({ code: 'E_INTERNAL' }));
    await writeFile(join(bundle, 'config.json'), JSON.stringify(config));
    expect(readBundleProcess(bundle)).toEqual({ env: config.process.env, cwd: '/data', user: { uid: 70, gid: 71 } });
  });
});
