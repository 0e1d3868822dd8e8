/**
 * The supervisor end to end on a host: the bundled mos-init in host mode, real processes, real
 * sockets, asserted through the control API and mos's own structured log.
 */
import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import type { ServiceStatus } from '../../init/supervisor/types.ts';
import { HostMos, cleanEnv, controlRequest, isRoot, mosctlBundle, notifyClient, waitFor } from '../helpers/host-mos.ts';

const run = promisify(execFile);
let mos: HostMos | null = null;

async function startMos(config: unknown): Promise<HostMos> {
  mos = await new HostMos(config).start();
  return mos;
}

afterEach(async () => {
  await mos?.dispose();
  mos = null;
});

const sh = (script: string) => ['/bin/sh', '-c', script];
const notify = (...message: string[]) => `/usr/bin/python3 ${notifyClient} ${message.join(' ')}`;

describe.skipIf(!isRoot)('host mode supervisor', () => {
  it('restarts a crashing service with growing backoff', async () => {
    const m = await startMos({
      services: [{ name: 'crashy', argv: sh('echo up; exit 1'), backoff: { initial: '100ms', max: '10s' }, startLimit: { burst: 100 } }],
    });
    const status = await m.waitForStatus('crashy', (s) => s.restarts >= 3);
    expect(status.lastExit?.text).toBe('status=1/FAILURE');
    const delays = m.records.filter((r) => r.service === 'crashy' && r.to === 'backoff').map((r) => r.reason);
    expect(delays.slice(0, 3)).toEqual([
      'restarting in 100ms after status=1/FAILURE',
      'restarting in 200ms after status=1/FAILURE',
      'restarting in 400ms after status=1/FAILURE',
    ]);
  });

  it('restarts at once with zero backoff through the armed respawn: each run ready on its own pipe, no fd left behind', async () => {
    const m = await startMos({
      services: [
        {
          name: 'flappy',
          argv: sh('echo ready >&3; echo "run $INVOCATION_ID"; sleep 0.02; exit 1'),
          readiness: { fd: 3 },
          backoff: { initial: 0 },
          startLimit: { burst: 10_000, interval: '1s' },
        },
      ],
    });
    // Pipes and files only: control connections (sockets) come and go with our own requests.
    const fdsOfMos = () =>
      readdirSync(`/proc/${m.pid}/fd`).filter((fd) => {
        try {
          return !readlinkSync(`/proc/${m.pid}/fd/${fd}`).startsWith('socket:');
        } catch {
          return false;
        }
      }).length;
    await m.waitForStatus('flappy', (s) => s.restarts >= 5);
    await controlRequest(m.socketPath, { cmd: 'stop', service: 'flappy' });
    const baseline = fdsOfMos();
    await controlRequest(m.socketPath, { cmd: 'start', service: 'flappy' });
    await m.waitForStatus('flappy', (s) => s.restarts >= 30);
    const stopped = await controlRequest<ServiceStatus>(m.socketPath, { cmd: 'stop', service: 'flappy' });
    expect(stopped.state).toBe('stopped');
    expect(fdsOfMos()).toBe(baseline);

    // Every run became ready through its own pipe, with its own invocation id.
    const readyRuns = m.records.filter((r) => r.service === 'flappy' && r.from === 'starting' && r.to === 'running').length;
    expect(readyRuns).toBeGreaterThanOrEqual(30);
    const { lines } = await controlRequest<{ lines: { text: string }[] }>(m.socketPath, { cmd: 'logs', service: 'flappy', n: 1000, follow: false });
    const ids = lines.map((line) => /^run ([0-9a-f]{32})$/.exec(line.text)?.[1]).filter(Boolean);
    expect(ids.length).toBeGreaterThanOrEqual(30);
    expect(new Set(ids).size).toBe(ids.length);
    const restarts = m.records.filter((r) => r.service === 'flappy' && r.to === 'backoff').map((r) => r.reason);
    expect(new Set(restarts)).toEqual(new Set(['restarting in 0ms after status=1/FAILURE']));
  });

  it('ends in failed with the reason once the start limit is hit', async () => {
    const m = await startMos({
      services: [{ name: 'doomed', argv: sh('exit 3'), backoff: { initial: '10ms' }, startLimit: { burst: 3, interval: '30s' } }],
    });
    const status = await m.waitForStatus('doomed', (s) => s.state === 'failed');
    expect(status).toMatchObject({ errorCode: 'E_START_LIMIT', reason: 'start limit hit: more than 3 starts within 30s', restarts: 3 });
    expect(status.lastExit?.text).toBe('status=3/NOTIMPLEMENTED');
  });

  it('starts dependents only after READY=1 (sd_notify) and after the s6 notification fd', async () => {
    const m = await startMos({
      services: [
        { name: 'db', argv: sh(`sleep 0.4; ${notify('STATUS=accepting', 'READY=1')}; exec sleep 1000`), readiness: 'notify' },
        { name: 'cache', argv: sh('sleep 0.3; echo >&4; exec sleep 1000'), readiness: { fd: 4 }, after: ['db'] },
        { name: 'web', argv: ['/bin/sleep', '1000'], requires: ['db', 'cache'] },
      ],
    });
    const web = await m.waitForStatus('web', (s) => s.state === 'running');
    const db = await m.status('db');
    const cache = await m.status('cache');
    expect(db).toMatchObject({ state: 'running', statusText: 'accepting', readiness: 'notify' });
    expect(cache.readiness).toBe('fd');
    expect(cache.startedAt!).toBeGreaterThanOrEqual(db.readyAt!);
    expect(web.startedAt!).toBeGreaterThanOrEqual(cache.readyAt!);
    expect(m.transitions('web')).toEqual(['stopped->waiting', 'waiting->starting', 'starting->running']);
  });

  it('restarts a service that misses its watchdog, with SIGABRT, and sets WATCHDOG_PID/USEC', async () => {
    const m = await startMos({
      services: [
        {
          name: 'hangs',
          readiness: 'notify',
          watchdog: '400ms',
          argv: sh(`echo "pid=$$ wpid=$WATCHDOG_PID usec=$WATCHDOG_USEC"; ${notify('READY=1')}; for i in 1 2 3; do sleep 0.1; ${notify('WATCHDOG=1')}; done; exec sleep 1000`),
        },
      ],
    });
    const status = await m.waitForStatus('hangs', (s) => s.restarts >= 1 && s.lastExit !== null);
    expect(status.lastExit).toMatchObject({ cause: 'watchdog', signal: 'SIGABRT' });
    const lines = await m.request<{ lines: { text: string }[] }>({ cmd: 'logs', service: 'hangs', n: 10, follow: false });
    const envLine = lines.lines.map((l) => l.text).find((t) => t.startsWith('pid='))!;
    const [, pid, watchdogPid, usec] = /^pid=(\d+) wpid=(\d+) usec=(\d+)$/.exec(envLine)!;
    expect(watchdogPid).toBe(pid);
    expect(usec).toBe('400000');
  });

  it('runs a oneshot to completion before the service that needs it', async () => {
    const m = await startMos({
      services: [
        { name: 'app', argv: sh(`cat "$MARKER"; exec sleep 1000`), requires: ['setup'], env: { MARKER: '/proc/self/comm' } },
        { name: 'setup', kind: 'oneshot', argv: sh('sleep 0.3; echo migrated') },
      ],
    });
    await m.waitForStatus('app', (s) => s.state === 'running');
    const setup = await m.status('setup');
    const app = await m.status('app');
    expect(setup.state).toBe('done');
    expect(app.startedAt!).toBeGreaterThanOrEqual(setup.lastExit!.at);
    expect(m.transitions('setup')).toEqual(['stopped->waiting', 'waiting->starting', 'starting->done']);
  });

  it('captures a burst of 100,000 lines without losing one', async () => {
    const m = await startMos({ services: [{ name: 'chatty', argv: sh('seq 1 100000; echo burst-done; exec sleep 1000') }] });
    const logDir = path.join(m.stateDir, 'logs');
    const readAll = () =>
      (existsSync(logDir) ? readdirSync(logDir) : [])
        .filter((f) => f.startsWith('chatty.log'))
        .sort((a, b) => (b.split('.')[2] ? Number(b.split('.')[2]) : 0) - (a.split('.')[2] ? Number(a.split('.')[2]) : 0))
        .map((f) => readFileSync(path.join(logDir, f), 'utf8'))
        .join('');
    await waitFor(() => readAll().includes('burst-done'), 30_000, 'the burst in the log files');
    const stdout = readAll()
      .split('\n')
      .filter((line) => / stdout \d+$/.test(line))
      .map((line) => line.slice(line.indexOf(' stdout ') + 8));
    expect(stdout.length).toBe(100_000);
    expect(stdout.every((text, i) => text === String(i + 1))).toBe(true);
    const tail = await m.request<{ lines: { seq: number; text: string }[] }>({ cmd: 'logs', service: 'chatty', n: 2, follow: false });
    expect(tail.lines.map((l) => [l.seq, l.text])).toEqual([
      [100_000, '100000'],
      [100_001, 'burst-done'],
    ]);
  });

  it('stops a TERM-ignoring service with SIGKILL at its deadline, in bounded time, and names it', async () => {
    const m = await startMos({
      services: [
        { name: 'stubborn', argv: sh('trap "" TERM; echo armed; while :; do sleep 0.05; done'), stopTimeout: '1s' },
        { name: 'polite', argv: ['/bin/sleep', '1000'], after: ['stubborn'] },
      ],
    });
    await m.waitForStatus('polite', (s) => s.state === 'running');
    await waitFor(async () => (await m.request<{ lines: unknown[] }>({ cmd: 'logs', service: 'stubborn', n: 1, follow: false })).lines.length > 0, 5000, 'trap armed');
    const stubborn = await m.status('stubborn');
    const began = Date.now();
    expect(await m.stop()).toBe(0);
    expect(Date.now() - began).toBeLessThan(8000);
    const report = m.records.find((r) => r.msg.startsWith('stopped all services'))!;
    expect(report.killed).toEqual(['stubborn']);
    // Reverse order: polite (which comes after stubborn) stopped before stubborn was signalled.
    const stops = m.records.filter((r) => r.to === 'stopping').map((r) => r.service);
    expect(stops).toEqual(['polite', 'stubborn']);
    expect(() => process.kill(stubborn.pid!, 0)).toThrow();
  });

  it('leaves no zombie after 10,000 orphaned grandchildren', async () => {
    const storm = 'for (1..10000) { my $p = fork; if (!$p) { fork or exit 0; exit 0 } waitpid($p, 0) } print "storm-done\\n"';
    const m = await startMos({ services: [{ name: 'storm', argv: ['/usr/bin/perl', '-e', storm] , restart: 'no'}] });
    await m.waitForStatus('storm', (s) => s.state === 'stopped', 120_000);
    const zombiesOf = (ppid: number) =>
      readdirSync('/proc')
        .filter((entry) => /^\d+$/.test(entry))
        .filter((pid) => {
          try {
            const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
            const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
            return fields[0] === 'Z' && Number(fields[1]) === ppid;
          } catch {
            return false;
          }
        });
    await waitFor(() => zombiesOf(m.pid).length === 0, 20_000, () => `zombies of mos: ${zombiesOf(m.pid).length}`);
    const reaped = m.records.filter((r) => r.msg === 'reaped a process that is no service').length;
    expect(reaped).toBeGreaterThan(0);
    expect(zombiesOf(m.pid)).toEqual([]);
  });

  it('refuses a non-root peer on the control socket, even when file permissions would let it in', async () => {
    const m = await startMos({ services: [] });
    // The client only listens: mos answers a refused peer at once, and a write racing that
    // answer could fail with EPIPE before the answer is read.
    const client = `const s=require('net').connect(process.argv[1]);s.on('error',e=>{console.log('ERR',e.code);});s.on('data',d=>{console.log(d.toString().trim());s.destroy()});`;
    const asNobody = () =>
      new Promise<string>((resolve) => {
        const child = spawn(process.execPath, ['-e', client, m.socketPath], { uid: 65534, gid: 65534, env: cleanEnv() });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.on('exit', () => resolve(out.trim()));
      });
    // As installed: the directory and socket are root-only, so the kernel already says no.
    expect(await asNobody()).toBe('ERR EACCES');
    // Misconfigured permissions: mos still checks the peer's credentials itself.
    chmodSync(m.stateDir, 0o755);
    chmodSync(m.socketPath, 0o777);
    const response = JSON.parse(await asNobody());
    expect(response).toMatchObject({ ok: false, error: { code: 'E_PERMISSION' } });
    expect(response.error.message).toContain('uid 65534');
    // And it keeps serving root.
    expect(await m.request({ cmd: 'list' })).toEqual([]);
  });
});

describe.skipIf(!isRoot)('bad input keeps the supervisor running', () => {
  it('a malformed service file runs nothing and says why in mosctl status', async () => {
    const m = await startMos('services:\n  - name: web\n    argv: [/bin/sleep, "1000"]\n    restart: sometimes\n    colour: blue\n');
    const info = await m.request<{ health: string; reason: string }>({ cmd: 'info' });
    expect(info.health).toBe('config-error');
    expect(info.reason).toContain('services[0].restart: expected always, on-failure or no');
    expect(info.reason).toContain('services[0].colour: unknown field');
    expect(await m.request({ cmd: 'list' })).toEqual([]);
    const { stdout } = await run(process.execPath, [mosctlBundle, '--socket', m.socketPath, 'status'], { env: cleanEnv() });
    expect(stdout).toContain('config-error');
  });

  it('a dependency cycle is refused as a whole', async () => {
    const m = await startMos({
      services: [
        { name: 'a', argv: ['/bin/true'], requires: ['b'] },
        { name: 'b', argv: ['/bin/true'], requires: ['a'] },
      ],
    });
    const info = await m.request<{ reason: string }>({ cmd: 'info' });
    expect(info.reason).toContain('dependency cycle: a -> b -> a');
  });

  it('a missing executable fails that service with 203/EXEC; the others run', async () => {
    const m = await startMos({
      services: [
        { name: 'ghost', argv: ['/no/such/program'], restart: 'no' },
        { name: 'ghost-in-path', argv: ['no-such-program-anywhere'], restart: 'no' },
        { name: 'fine', argv: ['/bin/sleep', '1000'] },
      ],
    });
    const ghost = await m.waitForStatus('ghost', (s) => s.state === 'failed');
    expect(ghost.lastExit).toMatchObject({ code: 203, text: 'status=203/EXEC', cause: 'executable not found: /no/such/program' });
    const inPath = await m.waitForStatus('ghost-in-path', (s) => s.state === 'failed');
    expect(inPath.lastExit?.cause).toMatch(/^executable not found: no-such-program-anywhere in PATH /);
    expect((await m.status('fine')).state).toBe('running');
  });

  it('an exec failure inside the child (not executable as that user) is reported by stage', async () => {
    const m = await startMos({ services: [{ name: 'nowhere', argv: ['/bin/true'], cwd: '/no/such/dir', restart: 'no' }] });
    const status = await m.waitForStatus('nowhere', (s) => s.state === 'failed');
    expect(status.lastExit).toMatchObject({ code: 200, text: 'status=200/CHDIR', cause: 'chdir ENOENT /no/such/dir' });
  });
});

describe.skipIf(!isRoot)('mosctl against a running supervisor', () => {
  const mosctl = async (m: HostMos, ...args: string[]) => {
    try {
      const { stdout, stderr } = await run(process.execPath, [mosctlBundle, '--socket', m.socketPath, ...args], { env: cleanEnv() });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  it('lists, shows status and logs, and stops, starts and restarts services', async () => {
    const m = await startMos({
      services: [
        { name: 'web', argv: sh('echo hello from web; exec sleep 1000'), readiness: 'none' },
        { name: 'worker', argv: ['/bin/sleep', '1000'], requires: ['web'] },
      ],
    });
    await m.waitForStatus('worker', (s) => s.state === 'running');

    const list = await mosctl(m, 'list');
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/NAME\s+STATE\s+PID/);
    expect(list.stdout).toMatch(/web\s+running/);

    const status = await mosctl(m, 'status', 'web');
    expect(status.stdout).toContain('web - running');
    expect(status.stdout).toContain('hello from web');

    const json = JSON.parse((await mosctl(m, '--json', 'status', 'web')).stdout) as ServiceStatus;
    expect(json).toMatchObject({ name: 'web', state: 'running' });

    const logs = await mosctl(m, 'logs', '-n', '5', 'web');
    expect(logs.stdout).toContain('hello from web');

    // Stopping web stops worker first (it requires web).
    expect((await mosctl(m, 'stop', 'web')).code).toBe(0);
    expect((await m.status('web')).state).toBe('stopped');
    expect((await m.status('worker')).state).toBe('stopped');

    // Starting worker pulls web back in.
    expect((await mosctl(m, 'start', 'worker')).code).toBe(0);
    expect((await m.status('web')).state).toBe('running');
    const before = (await m.status('worker')).pid;
    expect((await mosctl(m, 'restart', 'worker')).code).toBe(0);
    const after = await m.status('worker');
    expect(after.state).toBe('running');
    expect(after.pid).not.toBe(before);
  });

  it('follows logs as they are written', async () => {
    const m = await startMos({ services: [{ name: 'ticker', argv: sh('i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done') }] });
    await m.waitForStatus('ticker', (s) => s.state === 'running');
    const follower = spawn(process.execPath, [mosctlBundle, '--socket', m.socketPath, 'logs', '-f', '-n', '1', 'ticker'], { env: cleanEnv() });
    let out = '';
    follower.stdout.on('data', (d) => (out += d));
    await waitFor(() => (out.match(/tick \d+/g) ?? []).length >= 4, 10_000, 'followed lines');
    follower.kill('SIGINT');
    const numbers = (out.match(/tick (\d+)/g) ?? []).map((t) => Number(t.slice(5)));
    expect(numbers.every((n, i) => i === 0 || n === numbers[i - 1]! + 1)).toBe(true);
  });

  it('reports an unknown service and an unreachable socket with distinct exit codes', async () => {
    const m = await startMos({ services: [] });
    const unknown = await mosctl(m, 'status', 'nope');
    expect(unknown.code).toBe(5);
    expect(unknown.stderr).toContain('unknown service "nope"');
    const { code, stderr } = await (async () => {
      try {
        await run(process.execPath, [mosctlBundle, '--socket', '/nonexistent/control.sock', 'list'], { env: cleanEnv() });
        return { code: 0, stderr: '' };
      } catch (error) {
        return error as { code: number; stderr: string };
      }
    })();
    expect(code).toBe(69);
    expect(stderr).toContain('no control socket at /nonexistent/control.sock');
  });
});
