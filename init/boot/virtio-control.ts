/**
 * The control protocol over a virtio-serial port named `mos.control`, so that a host reaches a
 * VM's mos with `mosctl --socket HOST.sock` through QEMU's
 *   -chardev socket,id=ctl,path=HOST.sock,server=on,wait=off
 *   -device virtio-serial-pci -device virtserialport,chardev=ctl,name=mos.control
 *
 * The port is one byte stream, so it carries one connection at a time. Its kernel semantics
 * (drivers/char/virtio_console.c) shape this code:
 *   - with the host side disconnected, read() returns 0 (EOF) at once, poll() reports POLLHUP,
 *     and write() fails with EAGAIN; a poll watch would spin, so while disconnected the port is
 *     probed by a non-blocking read on a timer instead;
 *   - once a host connects, read() answers EAGAIN (no data yet) or data: a new session begins;
 *   - close() discards buffered input, so the fd stays open across host sessions.
 * Each host session is a fresh `ControlConnection` (its own line buffer and follow streams).
 *
 * Trust: there is no SO_PEERCRED on a port. Its peer is whoever runs the VM; by default it gets
 * read-only access (info, list, status, logs, analyze), and full root access only when the
 * signed kernel command line says `mos.debug_control=1`.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, readSync, readdirSync, writeSync } from 'node:fs';
import path from 'node:path';
import { Duplex } from 'node:stream';
import type { Native } from '../../native/types.ts';
import type { ExecRunner, SupervisorApi } from '../control/api.ts';
import { serveControlStream, type ControlAccess } from '../control/server.ts';

export const CONTROL_PORT_NAME = 'mos.control';
const S_IFCHR = 0o020000;

export interface VirtioPortEntry {
  /** `vport0p1` */
  dev: string;
  /** The port's name from the host (`name=` of the virtserialport). */
  name: string;
  /** `major:minor` from /sys/class/virtio-ports/<dev>/dev. */
  devNumbers: string;
}

export interface ControlPortLocation {
  dev: string;
  major: number;
  minor: number;
}

/** The port named `mos.control`, with its device numbers; null when there is none (yet). */
export function findControlPort(entries: readonly VirtioPortEntry[], name = CONTROL_PORT_NAME): ControlPortLocation | null {
  for (const entry of entries) {
    if (entry.name.trim() !== name) continue;
    const match = /^(\d+):(\d+)$/.exec(entry.devNumbers.trim());
    if (!match) continue;
    return { dev: entry.dev, major: Number(match[1]), minor: Number(match[2]) };
  }
  return null;
}

/** /sys/class/virtio-ports/* (trivial sysfs reads). */
export function readVirtioPorts(sysDir = '/sys/class/virtio-ports'): VirtioPortEntry[] {
  let devs: string[];
  try {
    devs = readdirSync(sysDir);
  } catch {
    return [];
  }
  const entries: VirtioPortEntry[] = [];
  for (const dev of devs) {
    try {
      const name = readFileSync(path.join(sysDir, dev, 'name'), 'utf8');
      const devNumbers = readFileSync(path.join(sysDir, dev, 'dev'), 'utf8');
      entries.push({ dev, name, devNumbers });
    } catch {
      // A port without a name (unnamed virtserialport) or half set up: not ours.
    }
  }
  return entries;
}

/** /dev/<dev>; devtmpfs normally has it, else (no udev) it is made from sysfs's numbers. */
export function ensureDeviceNode(native: Native, location: ControlPortLocation, devDir = '/dev'): string {
  const node = path.join(devDir, location.dev);
  if (!existsSync(node)) native.mknod(node, S_IFCHR | 0o600, location.major, location.minor);
  return node;
}

/** The port's syscalls; injected so that tests can play the kernel's part. */
export interface PortIo {
  open(path: string): number;
  /** Bytes read; 0 means the host is not connected; throws EAGAIN when connected and idle. */
  read(fd: number, buffer: Buffer): number;
  /** Bytes written; throws EAGAIN when the host is not connected or the queue is full. */
  write(fd: number, data: Buffer): number;
  close(fd: number): void;
  watchReadable(fd: number, onReadable: () => void): { close(): void };
}

export function systemPortIo(native: Native): PortIo {
  return {
    open: (file) => openSync(file, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOCTTY),
    read: (fd, buffer) => readSync(fd, buffer, 0, buffer.length, null),
    write: (fd, data) => writeSync(fd, data),
    close: (fd) => closeSync(fd),
    watchReadable: (fd, onReadable) => native.watchReadable(fd, onReadable),
  };
}

function isAgain(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR';
}

/**
 * One host session as a Duplex for the control server. Writes the port refuses for now (EAGAIN)
 * are retried on a short timer; once the host is gone they are dropped.
 */
class PortSession extends Duplex {
  private readonly pending: { data: Buffer; done: (error?: Error | null) => void }[] = [];
  private retry: NodeJS.Timeout | null = null;
  private retryMs = 5;
  private gone = false;

  constructor(
    private readonly io: PortIo,
    private readonly fd: number,
  ) {
    super({ allowHalfOpen: true });
  }

  feed(data: Buffer): void {
    if (!this.gone) this.push(data);
  }

  /** The host disconnected: end the input, drop what waits to be written. */
  hostGone(): void {
    if (this.gone) return;
    this.gone = true;
    this.push(null);
    this.dropPending();
  }

  override _read(): void {
    // Data is pushed as the port becomes readable.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    if (this.gone) return done();
    this.pending.push({ data: chunk, done });
    this.pump();
  }

  override _final(done: (error?: Error | null) => void): void {
    done();
  }

  override _destroy(error: Error | null, done: (error?: Error | null) => void): void {
    this.gone = true;
    this.dropPending();
    done(error);
  }

  private dropPending(): void {
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    for (const { done } of this.pending.splice(0)) done();
  }

  private pump(): void {
    while (this.pending.length > 0 && !this.gone) {
      const head = this.pending[0]!;
      let written: number;
      try {
        written = this.io.write(this.fd, head.data);
      } catch (error) {
        if (isAgain(error)) {
          this.scheduleRetry();
          return;
        }
        this.pending.shift();
        head.done(error as Error);
        continue;
      }
      this.retryMs = 5;
      if (written >= head.data.length) {
        this.pending.shift();
        head.done();
      } else {
        head.data = head.data.subarray(written);
      }
    }
  }

  private scheduleRetry(): void {
    if (this.retry !== null) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.pump();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 100);
  }
}

export interface VirtioControlOptions {
  /** The port's device node, e.g. /dev/vport0p1. */
  path: string;
  api: SupervisorApi;
  access: ControlAccess;
  io: PortIo;
  /** Runs `exec-run` (mosctl exec from the host) when the access is `root`. */
  execRunner?: ExecRunner;
  logger?: { info(message: string): void; warn(message: string): void };
  /** How often a disconnected port is probed for a host. */
  probeMs?: number;
}

/** Serves the control protocol over the port, one host session after another, until closed. */
export class VirtioControlChannel {
  private fd: number | null = null;
  private session: PortSession | null = null;
  private watch: { close(): void } | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly buffer = Buffer.alloc(64 * 1024);
  sessions = 0;

  constructor(private readonly options: VirtioControlOptions) {}

  /** Opens the port (throws if it cannot) and starts waiting for a host. */
  start(): void {
    this.fd = this.options.io.open(this.options.path);
    this.probe();
  }

  get connected(): boolean {
    return this.session !== null;
  }

  /** One non-blocking read decides: host there (EAGAIN or data) or not (0). */
  private probe(): void {
    this.probeTimer = null;
    if (this.closed || this.fd === null) return;
    let count: number;
    try {
      count = this.options.io.read(this.fd, this.buffer);
    } catch (error) {
      if (isAgain(error)) {
        this.beginSession(null);
        return;
      }
      this.options.logger?.warn(`control port ${this.options.path}: ${(error as Error).message}`);
      this.scheduleProbe();
      return;
    }
    if (count === 0) {
      this.scheduleProbe();
      return;
    }
    this.beginSession(Buffer.from(this.buffer.subarray(0, count)));
  }

  private scheduleProbe(): void {
    if (this.closed || this.probeTimer !== null) return;
    this.probeTimer = setTimeout(() => this.probe(), this.options.probeMs ?? 250);
  }

  private beginSession(initial: Buffer | null): void {
    const fd = this.fd!;
    const session = new PortSession(this.options.io, fd);
    this.session = session;
    this.sessions++;
    this.options.logger?.info(`control port ${this.options.path}: host connected (${this.options.access})`);
    serveControlStream(session, this.options.api, {
      access: this.options.access,
      logger: this.options.logger,
      accessHint: 'boot with mos.debug_control=1 to allow changes over the virtio-serial port',
      ...(this.options.execRunner ? { execRunner: this.options.execRunner } : {}),
    });
    if (initial) session.feed(initial);
    this.watch = this.options.io.watchReadable(fd, () => this.onReadable());
  }

  private onReadable(): void {
    if (this.fd === null || this.session === null) return;
    for (;;) {
      let count: number;
      try {
        count = this.options.io.read(this.fd, this.buffer);
      } catch (error) {
        if (isAgain(error)) return;
        this.options.logger?.warn(`control port ${this.options.path}: ${(error as Error).message}`);
        this.endSession();
        return;
      }
      if (count === 0) {
        this.endSession();
        return;
      }
      this.session.feed(Buffer.from(this.buffer.subarray(0, count)));
    }
  }

  /** EOF or POLLHUP: the host left. Stop watching (it would spin on POLLHUP) and probe again. */
  private endSession(): void {
    this.watch?.close();
    this.watch = null;
    this.session?.hostGone();
    this.session = null;
    this.options.logger?.info(`control port ${this.options.path}: host disconnected`);
    this.scheduleProbe();
  }

  close(): void {
    this.closed = true;
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.watch?.close();
    this.watch = null;
    this.session?.destroy();
    this.session = null;
    if (this.fd !== null) this.options.io.close(this.fd);
    this.fd = null;
  }
}
