/**
 * mos-init as PID 1 of a fresh PID + mount namespace on the host (no VM): the real bundle, real
 * processes, real signals from outside, reboot(2) ending the namespace. In namespace mode
 * (`--no-early-mounts`) mos makes one real tmpfs mount (<state>/logs) instead of the machine's
 * API filesystems, loads no modules and leaves ctrl-alt-del alone.
 *
 * Safety: before any signal that leads to reboot(2), each test checks that the process it
 * signals is PID 1 of a child PID namespace (NSpid `<host pid> 1`, a pid namespace other than
 * ours); mos-init itself refuses reboot(2) and kill(-1) unless it is PID 1.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import type { BootTimeline } from '../../init/boot/timeline.ts';
import type { SupervisorInfo } from '../../init/control/api.ts';
import { loadNative } from '../../native/index.ts';
import { cleanEnv, isRoot, mosctlBundle, waitFor } from '../helpers/host-mos.ts';
import { NamespacePid1, productionBundle, testBundle } from '../helpers/namespace-pid1.ts';

const run = promisify(execFile);
const sh = (script: string) => ['/bin/sh', '-c', script];

interface LogRecord {
  msg: string;
  [key: string]: unknown;
}

/** One mos-init as PID 1 of a PID namespace, over its own state dir and service file. */
class NamespaceMos extends NamespacePid1 {
  constructor(config: unknown) {
    const stateDir = mkdtempSync(path.join(os.tmpdir(), 'mos-ns-'));
    const configPath = path.join(stateDir, 'services.json');
    writeFileSync(configPath, JSON.stringify(config));
    super(stateDir, configPath);
  }

  records(): LogRecord[] {
    const file = path.join(this.stateDir, 'init.log');
    if (!existsSync(file)) return [];
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as LogRecord);
  }

  /** Zombie children of PID 1, seen from the host. */
  zombies(): number[] {
    return readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .filter((pid) => {
        try {
          const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
          const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
          return fields[0] === 'Z' && Number(fields[1]) === this.pid1;
        } catch {
          return false;
        }
      })
      .map(Number);
  }

  alive(): boolean {
    try {
      process.kill(this.pid1, 0);
      return true;
    } catch {
      return false;
    }
  }

  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}

let mos: NamespaceMos | null = null;
afterEach(async () => {
  await mos?.dispose();
  mos = null;
});

async function mosctl(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [mosctlBundle, '--socket', mos!.socketPath, ...args], { env: cleanEnv() });
    return { code: 0, stdout };
  } catch (error) {
    const e = error as { code: number; stdout: string };
    return { code: e.code, stdout: e.stdout };
  }
}

describe.skipIf(!isRoot)('mos-init as PID 1 of a PID namespace', () => {
  it('boots, reaps orphans, and SIGTERM (busybox reboot) shuts down in order and ends the namespace', async () => {
    mos = await new NamespaceMos({
      services: [
        { name: 'web', argv: ['/bin/sleep', '1000'] },
        // 50 orphans: each subshell's sleep is re-parented to PID 1 when the subshell exits.
        { name: 'orphans', argv: sh('for i in $(seq 1 50); do (sleep 0.05 &); done; exec sleep 1000') },
      ],
    }).start();
    await mos.waitForConsole('mos: services ready');
    expect(mos.consoleLines[0]).toMatch(/^mos: pid1 starting \(namespace mode/);
    expect(mos.consoleLines).toContain('mos: phase modules skipped: namespace mode (--no-early-mounts)');
    expect(mos.consoleLines.some((line) => /^mos: phase supervise ok \(\d+ms\)$/.test(line))).toBe(true);

    // The one real mount of namespace mode, visible in PID 1's mountinfo.
    const logsDir = path.join(mos.stateDir, 'logs');
    expect(readFileSync(`/proc/${mos.pid1}/mountinfo`, 'utf8')).toMatch(new RegExp(` ${logsDir} .* - tmpfs `));

    const status = await mosctl('status');
    expect(status.code).toBe(0);
    expect(status.stdout).toContain('mode: pid1 (pid 1)');
    expect(status.stdout).toContain('health: ok');
    expect(status.stdout).toMatch(/boot: .*services ready at/);
    expect(status.stdout).toMatch(/web\s+running/);

    const orphans = () => mos!.records().filter((r) => r.msg === 'reaped a process that is no service').length;
    await waitFor(() => orphans() >= 50, 10_000, () => `50 orphans reaped, got ${orphans()}`);
    await waitFor(() => mos!.zombies().length === 0, 5_000, () => `no zombies; have ${mos!.zombies().length}`);

    const timeline = await mos.request<BootTimeline>({ cmd: 'analyze' });
    expect(timeline.phases.map((p) => `${p.name}:${p.status}`)).toEqual([
      'mounts:ok',
      'cmdline:ok',
      'control:ok',
      'ctrl-alt-del:skipped',
      'modules:skipped',
      'mounts-late:skipped',
      'control-port:skipped',
      // No mos.store=: no manifest to verify (test/privileged/trust-boot.test.ts has the rest).
      'trust:skipped',
      'nsgroups:skipped',
      'networks:skipped',
      'storage:skipped',
      'supervise:ok',
    ]);
    expect(timeline.firstServiceExec?.atMs).toBeGreaterThan(timeline.initMainMs);
    expect(timeline.servicesReadyMs).toBeGreaterThanOrEqual(timeline.firstServiceExec!.atMs);
    expect((await mosctl('analyze')).stdout).toContain('all services ready');

    mos.signal('SIGTERM');
    await mos.waitForExit(30_000);
    expect(mos.consoleLines).toContain('mos: shutdown: reboot (SIGTERM (busybox))');
    expect(mos.consoleLines.at(-1)).toBe('mos: reboot: reboot');
    const records = mos.records();
    const step = (name: string) => records.find((r) => r.step === name);
    expect(step('stop-services')).toMatchObject({ killed: [] });
    expect(step('unmount')).toMatchObject({ unmounts: [{ target: logsDir, result: 'unmounted' }] });
    expect(step('reboot')).toMatchObject({ command: 'restart' });
    expect(records.findIndex((r) => r.step === 'stop-services')).toBeLessThan(records.findIndex((r) => r.step === 'reboot'));
  });

  it('SIGRTMIN+4 powers off; a TERM-ignoring process outside any service is SIGKILLed and named', async () => {
    const signum = loadNative().signalNumber('SIGRTMIN+4');
    expect(signum).toBe(38);
    mos = await new NamespaceMos({
      services: [
        // The daemon leaves the service's session (setsid), so stopping the service misses it.
        // An ignored signal stays ignored across exec: the daemon is one TERM-proof `sleep`.
        { name: 'spawner', argv: sh('setsid sh -c \'trap "" TERM; exec sleep 1000\' & exec sleep 1000') },
      ],
    }).start();
    await mos.waitForConsole('mos: services ready');
    const began = Date.now();
    mos.signal(signum);
    await mos.waitForExit(30_000);
    expect(Date.now() - began).toBeLessThan(20_000);
    expect(mos.consoleLines).toContain('mos: shutdown: poweroff (SIGRTMIN+4 (systemd))');
    expect(mos.consoleLines.some((line) => /^mos: shutdown: killed \d+ \(sleep\)$/.test(line))).toBe(true);
    expect(mos.consoleLines.at(-1)).toBe('mos: reboot: poweroff');
    const records = mos.records();
    expect(records.find((r) => r.step === 'kill-all')?.killed).toEqual([expect.stringMatching(/^\d+ \(sleep\)$/)]);
    expect(records.find((r) => r.step === 'reboot')).toMatchObject({ command: 'poweroff' });
  });

  it('an exception injected into PID 1 gives the emergency state; PID 1 stays up, serves mosctl and keeps reaping', async () => {
    mos = await new NamespaceMos({
      services: [{ name: 'breeder', argv: sh('while :; do (sleep 0.01 &); sleep 0.05; done') }],
    }).start({ cmdline: 'quiet mos.test_crash=ready' });
    const line = await mos.waitForConsole('mos: emergency:');
    expect(line).toBe('mos: emergency: unexpected exception: mos.test_crash=ready: injected exception');

    const info = await mos.request<SupervisorInfo>({ cmd: 'info' });
    expect(info).toMatchObject({ mode: 'pid1', health: 'emergency', reason: 'unexpected exception: mos.test_crash=ready: injected exception' });
    expect(info.boot?.emergency?.reason).toBe(info.reason);
    const status = await mosctl('status');
    expect(status.stdout).toContain('health: emergency — unexpected exception: mos.test_crash=ready: injected exception');
    expect(status.stdout).toMatch(/breeder\s+running/);

    // Still alive and still reaping the breeder's orphans well after the exception.
    const reaped = () => mos!.records().filter((r) => r.msg === 'reaped a process that is no service').length;
    const before = reaped();
    await waitFor(() => reaped() >= before + 10, 10_000, () => `more orphans reaped after the emergency (${reaped()} vs ${before})`);
    expect(mos.alive()).toBe(true);
    await waitFor(() => mos!.zombies().length === 0, 5_000, () => `no zombies; have ${mos!.zombies().length}`);
  });

  it('a production bundle ignores mos.test_crash', async () => {
    mos = await new NamespaceMos({ services: [{ name: 'web', argv: ['/bin/sleep', '1000'] }] }).start({
      bundle: productionBundle,
      cmdline: 'mos.test_crash=services',
    });
    await mos.waitForConsole('mos: services ready');
    expect((await mos.request<SupervisorInfo>({ cmd: 'info' })).health).toBe('ok');
    expect(mos.records().some((r) => r.msg === 'mos.test_crash ignored: this bundle has no test hooks')).toBe(true);
  });
});
