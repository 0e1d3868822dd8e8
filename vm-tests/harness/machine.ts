/**
 * One guest: QEMU (TCG) with its serial console in a file that a `ConsoleWatcher` follows, QMP,
 * the `mos.control` virtio-serial port for mosctl, and optionally swtpm. Every process is
 * registered with the case's cleanup and killed by pid.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { CleanupRegistry } from './cleanup.ts';
import { ConsoleWatcher, MarkerTimeoutError, type MarkerWaitOptions } from './console.ts';
import { makeEsp } from './esp.ts';
import type { TestImages } from './images.ts';
import { Markers } from './markers.ts';
import { runMosctl, type MosctlResult } from './mosctl.ts';
import { QmpClient } from './qmp.ts';
import {
  OVMF_PLAIN_CODE,
  OVMF_PLAIN_VARS,
  OVMF_SNAKEOIL_CODE,
  OVMF_SNAKEOIL_VARS,
  QEMU_BINARY,
  buildCmdline,
  buildQemuArgs,
  type ExtraDrive,
  type HostForward,
  type QemuConfig,
} from './qemu.ts';
import { freePort, type ForwardProtocol } from './net.ts';
import { releaseStateDir, startSwtpm, type Swtpm } from './swtpm.ts';

export interface BootOptions {
  /** A label, unique within the case (file names, logs). */
  name: string;
  boot: 'direct' | 'uefi';
  /** Direct boot only: flags appended to the image's command line. */
  cmdline?: readonly string[];
  /** UEFI only: the snakeoil firmware with Secure Boot on (default true for uefi). */
  secureBoot?: boolean;
  /** UEFI only: boot the unsigned UKI (on an ESP made for it) instead of the signed one. */
  unsigned?: boolean;
  /** UEFI only: boot this ESP image instead of the build's (a UKI variant: harness/uki.ts). */
  esp?: string;
  /**
   * Disks after the ESP, in this order (virtio-blk, found by serial; with UEFI the first is
   * /dev/vdb, with direct boot /dev/vda). Read-only ones are read-only to the guest.
   */
  drives?: readonly ExtraDrive[];
  tpm?: boolean;
  /**
   * With `tpm`: swtpm's state directory. Give several boots the same one to keep the TPM (its NV
   * indices) across them; the next swtpm waits for the previous one to exit. Default: a fresh
   * TPM in the machine's own dir.
   */
  tpmStateDir?: string;
  /** Attach the `mos.control` port (default true). */
  control?: boolean;
  memoryMiB?: number;
  /**
   * A virtio-net NIC on QEMU's user-mode network (the guest's eth0; configure it with
   * `USER_NET_UPLINK` on the command line), each guest port forwarded from a free port on the
   * host's 127.0.0.1 (`Machine.hostPort`). Without it the guest has no NIC.
   */
  userNet?: { forwards: readonly { protocol: ForwardProtocol; guestPort: number }[] };
}

export interface MachineEnv {
  workDir: string;
  cleanup: CleanupRegistry;
  images: TestImages;
  /** Called with console text as it arrives (run.mjs shows it live). */
  onConsole?: (name: string, chunk: string) => void;
  log: (line: string) => void;
}

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Machine {
  private qmpClient: Promise<QmpClient> | null = null;
  private exitInfo: QemuExit | null = null;
  readonly qemuStderr: string[] = [];

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly args: string[],
    readonly console: ConsoleWatcher,
    readonly pid: number,
    readonly exited: Promise<QemuExit>,
    readonly controlSocket: string,
    readonly qmpSocket: string,
    readonly startedAt: number,
    /** The machine's swtpm, when it has a TPM. */
    readonly tpm?: Swtpm,
    /** QEMU's host forwards (`BootOptions.userNet`), with the host ports chosen. */
    readonly forwards: readonly HostForward[] = [],
  ) {
    void exited.then((info) => (this.exitInfo = info));
  }

  static async start(env: MachineEnv, options: BootOptions): Promise<Machine> {
    const dir = path.join(env.workDir, options.name);
    mkdirSync(dir, { recursive: true });
    const consoleLog = path.join(dir, 'console.log');
    const qmpSocket = path.join(dir, 'qmp.sock');
    const controlSocket = path.join(dir, 'control.sock');
    const config: QemuConfig = {
      boot: { kind: 'direct', kernel: env.images.kernel, initrd: env.images.initrd, cmdline: buildCmdline(env.images.cmdline, options.cmdline) },
      consoleLog,
      qmpSocket,
      memoryMiB: options.memoryMiB,
    };
    if (options.control ?? true) config.controlSocket = controlSocket;
    if (options.boot === 'uefi') {
      const secureBoot = options.secureBoot ?? true;
      // A private copy of the variable store: OVMF writes to it.
      const vars = path.join(dir, 'OVMF_VARS.fd');
      copyFileSync(secureBoot ? OVMF_SNAKEOIL_VARS : OVMF_PLAIN_VARS, vars);
      const esp = options.unsigned ? makeEsp(env.images.ukiUnsigned, path.join(dir, 'esp-unsigned.img')) : (options.esp ?? env.images.esp);
      config.boot = { kind: 'uefi', code: secureBoot ? OVMF_SNAKEOIL_CODE : OVMF_PLAIN_CODE, vars, esp, secureBoot };
    }
    if (options.drives?.length) config.drives = [...options.drives];
    const forwards: HostForward[] = [];
    for (const forward of options.userNet?.forwards ?? []) {
      forwards.push({ protocol: forward.protocol, hostAddress: '127.0.0.1', hostPort: await freePort(forward.protocol), guestPort: forward.guestPort });
    }
    if (options.userNet) config.userNet = { forwards };
    const tpm = options.tpm ? await startSwtpm(dir, env.cleanup, options.tpmStateDir) : undefined;
    if (tpm) config.tpmSocket = tpm.socket;

    const args = buildQemuArgs(config);
    writeFileSync(path.join(dir, 'qemu.args'), `${QEMU_BINARY} ${args.map(shellQuote).join(' ')}\n`);
    const watcher = ConsoleWatcher.followFile(consoleLog, [Markers.kernelPanic]);
    if (env.onConsole) watcher.onData((chunk) => env.onConsole!(options.name, chunk));

    // setpriv --pdeathsig: QEMU dies with the test process even if that is SIGKILLed.
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', QEMU_BINARY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    if (!child.pid) throw new Error('QEMU did not start');
    const exited = new Promise<QemuExit>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    env.cleanup.process(`qemu ${options.name}`, child.pid, exited);
    const machine = new Machine(options.name, dir, args, watcher, child.pid, exited, controlSocket, qmpSocket, Date.now(), tpm, forwards);
    const collect = (chunk: Buffer) => machine.qemuStderr.push(chunk.toString());
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    void exited.then(({ code, signal }) => {
      const how = signal ? `signal ${signal}` : `code ${code}`;
      const stderr = machine.qemuStderr.join('').trim();
      watcher.end(`QEMU exited (${how})${stderr ? `: ${stderr}` : ''}`);
    });
    env.cleanup.add(`qmp ${options.name}`, async () => {
      const qmp = await machine.qmpClient?.catch(() => null);
      qmp?.close();
    });
    const extras = [
      options.tpm ? (options.tpmStateDir ? `tpm ${path.basename(options.tpmStateDir)}` : 'tpm') : '',
      ...(options.drives ?? []).map((d) => `disk ${d.serial}`),
      ...forwards.map((f) => `${f.protocol} 127.0.0.1:${f.hostPort} → guest :${f.guestPort}`),
    ].filter(Boolean);
    env.log(`${options.name}: started QEMU pid ${child.pid} (${options.boot}${extras.length ? `, ${extras.join(', ')}` : ''})`);
    return machine;
  }

  /** The host port (on 127.0.0.1) QEMU forwards to `guestPort` over `protocol`; throws when there is none. */
  hostPort(protocol: ForwardProtocol, guestPort: number): number {
    const forward = this.forwards.find((f) => f.protocol === protocol && f.guestPort === guestPort);
    if (!forward) throw new Error(`${this.name} has no ${protocol} forward to guest port ${guestPort}`);
    return forward.hostPort;
  }

  /** Seconds since QEMU started, for step timings. */
  get elapsed(): string {
    return `${((Date.now() - this.startedAt) / 1000).toFixed(1)} s`;
  }

  get hasExited(): boolean {
    return this.exitInfo !== null;
  }

  waitFor(regex: RegExp, timeoutMs: number, options?: MarkerWaitOptions): Promise<RegExpExecArray> {
    return this.console.waitForMarker(regex, timeoutMs, options);
  }

  qmp(): Promise<QmpClient> {
    this.qmpClient ??= QmpClient.connect(this.qmpSocket);
    return this.qmpClient;
  }

  /** Runs `mosctl --socket <control.sock> ...args` on the host. */
  mosctl(...args: string[]): Promise<MosctlResult> {
    return runMosctl(this.controlSocket, args);
  }

  /** `mosctl --json ...args`, parsed; throws with mosctl's output unless it exits 0. */
  async mosctlJson<T = unknown>(...args: string[]): Promise<T> {
    const result = await this.mosctl('--json', ...args);
    if (result.code !== 0) throw new Error(`${result.command} exited ${result.code}: ${result.stderr}${result.stdout}`);
    return JSON.parse(result.stdout) as T;
  }

  /** Waits for QEMU to exit by itself (a guest poweroff, or a reboot under -no-reboot). */
  async waitForExit(timeoutMs: number): Promise<QemuExit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new MarkerTimeoutError(`QEMU did not exit within ${timeoutMs} ms\n--- console tail ---\n${this.console.tail()}\n--- end ---`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * An orderly power-off from the host: `mosctl poweroff`, the poweroff marker, QEMU's exit, and
   * (with a TPM) swtpm's, so the next boot on the same TPM state can start at once.
   */
  async powerOff(timeoutMs = 60_000): Promise<void> {
    const since = this.console.mark();
    const off = await this.mosctl('poweroff');
    if (off.code !== 0) throw new Error(`${off.command} exited ${off.code}: ${off.stderr}${off.stdout}`);
    await this.waitFor(Markers.poweroff, timeoutMs, { since });
    await this.waitForExit(timeoutMs);
    if (this.tpm) await releaseStateDir(this.tpm.stateDir);
  }

  /** Ends the VM now (QMP quit, then the cleanup kills the pid if needed). */
  async quit(): Promise<void> {
    if (this.hasExited) return;
    const qmp = await this.qmp().catch(() => null);
    await qmp?.quit();
    await this.waitForExit(5_000).catch(() => undefined);
  }
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
