import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConsoleSink } from '../../init/boot/console.ts';
import { VirtioControlChannel, ensureDeviceNode, findControlPort, type PortIo } from '../../init/boot/virtio-control.ts';
import type { SupervisorApi } from '../../init/control/api.ts';
import { FakeNative } from '../../native/fake.ts';

const again = () => Object.assign(new Error('EAGAIN: resource temporarily unavailable, read'), { code: 'EAGAIN' });

/** A virtio-serial port as drivers/char/virtio_console.c behaves with O_NONBLOCK. */
class FakePort implements PortIo {
  hostConnected = false;
  writesBlocked = false;
  readonly inbound: Buffer[] = [];
  readonly outbound: string[] = [];
  watcher: (() => void) | null = null;
  opened = 0;
  closed = 0;

  open(): number {
    this.opened++;
    return 7;
  }
  read(_fd: number, buffer: Buffer): number {
    const next = this.inbound.shift();
    if (next) return next.copy(buffer);
    if (!this.hostConnected) return 0; // EOF: nobody on the host side
    throw again();
  }
  write(_fd: number, data: Buffer): number {
    if (!this.hostConnected || this.writesBlocked) throw again();
    this.outbound.push(data.toString());
    return data.length;
  }
  close(): void {
    this.closed++;
  }
  watchReadable(_fd: number, onReadable: () => void): { close(): void } {
    this.watcher = onReadable;
    return { close: () => (this.watcher = null) };
  }
  // The host's side:
  connect(): void {
    this.hostConnected = true;
  }
  send(text: string): void {
    this.inbound.push(Buffer.from(text));
    this.watcher?.();
  }
  disconnect(): void {
    this.hostConnected = false;
    this.watcher?.(); // POLLHUP
  }
  answers(): any[] {
    return this.outbound.join('').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line));
  }
}

const api: SupervisorApi = {
  info: () => ({ mode: 'pid1', pid: 1, startedAt: 0, health: 'emergency', reason: 'boom', configPath: null }),
  list: () => [],
  status: () => {
    throw new Error('unused');
  },
  start: () => Promise.reject(new Error('must not be called')),
  stop: () => Promise.reject(new Error('must not be called')),
  restart: () => Promise.reject(new Error('must not be called')),
  logs: () => [],
  followLogs: () => () => {},
};

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

let channel: VirtioControlChannel | null = null;
afterEach(() => {
  channel?.close();
  channel = null;
});

describe('finding the mos.control port', () => {
  it('picks the port by name and reads its device numbers', () => {
    expect(
      findControlPort([
        { dev: 'vport0p1', name: 'org.qemu.guest_agent.0\n', devNumbers: '250:1\n' },
        { dev: 'vport0p2', name: 'mos.control\n', devNumbers: '250:2\n' },
      ]),
    ).toEqual({ dev: 'vport0p2', major: 250, minor: 2 });
    expect(findControlPort([{ dev: 'vport0p1', name: 'other', devNumbers: '250:1' }])).toBeNull();
  });

  it('makes the device node when devtmpfs has none', () => {
    const native = new FakeNative();
    expect(ensureDeviceNode(native, { dev: 'vport9p9', major: 250, minor: 9 }, '/nonexistent-dev')).toBe('/nonexistent-dev/vport9p9');
    expect(native.mknods).toEqual([{ path: '/nonexistent-dev/vport9p9', mode: 0o020600, major: 250, minor: 9 }]);
  });
});

describe('the control protocol over a virtio-serial port', () => {
  it('serves a host, notices it leave, and serves the next one', async () => {
    const port = new FakePort();
    channel = new VirtioControlChannel({ path: '/dev/vport0p2', api, access: 'read-only', io: port, probeMs: 2 });
    channel.start();
    expect(channel.connected).toBe(false);

    port.connect();
    port.inbound.push(Buffer.from('{"v":1,"id":1,"cmd":"info"}\n'));
    await until(() => port.answers().length === 1, 'the first answer');
    expect(port.answers()[0]).toMatchObject({ id: 1, ok: true, result: { health: 'emergency', reason: 'boom' } });
    expect(channel.connected).toBe(true);

    port.disconnect();
    expect(channel.connected).toBe(false);
    expect(port.watcher).toBeNull(); // no poll watch left to spin on POLLHUP

    port.outbound.length = 0;
    port.connect();
    port.send('{"v":1,"id":1,"cmd":"list"}\n{"v":1,"id":2,"cmd":"poweroff"}\n');
    await until(() => port.answers().length === 2, 'answers in the second session');
    expect(port.answers()[0]).toMatchObject({ id: 1, ok: true, result: [] });
    expect(port.answers()[1]).toMatchObject({ id: 2, ok: false, error: { code: 'E_PERMISSION' } });
    expect(channel.sessions).toBe(2);
    expect(port.opened).toBe(1); // the fd stays open across sessions (close would discard input)
  });

  it('retries a write the port refuses for now', async () => {
    const port = new FakePort();
    channel = new VirtioControlChannel({ path: '/dev/vport0p2', api, access: 'root', io: port, probeMs: 2 });
    channel.start();
    port.connect();
    port.writesBlocked = true;
    port.inbound.push(Buffer.from('{"v":1,"id":5,"cmd":"analyze"}\n'));
    await until(() => channel!.connected, 'a session');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(port.outbound).toEqual([]);
    port.writesBlocked = false;
    await until(() => port.answers().length === 1, 'the delayed answer');
    expect(port.answers()[0]).toEqual({ v: 1, id: 5, ok: true, result: null });
  });
});

describe('the console sink', () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes one line per call, flattening embedded newlines', async () => {
    dir = mkdtempSync(join(tmpdir(), 'mos-console-'));
    const file = join(dir, 'console.log');
    const sink = new ConsoleSink({ path: file, kmsgFallback: false });
    sink.line('mos: phase mounts ok (3ms)');
    sink.line('mos: emergency: two\nlines');
    await sink.flush(100);
    expect(readFileSync(file, 'utf8')).toBe('mos: phase mounts ok (3ms)\nmos: emergency: two lines\n');
    expect(sink.droppedLines).toBe(0);
  });

  it('keeps lines (bounded) while there is no console yet', () => {
    dir = mkdtempSync(join(tmpdir(), 'mos-console-'));
    const sink = new ConsoleSink({ path: join(dir, 'missing', 'console'), kmsgFallback: false });
    for (let i = 0; i < 5000; i++) sink.line(`mos: line ${i} ${'x'.repeat(100)}`);
    expect(sink.droppedLines).toBeGreaterThan(0);
    expect(sink.droppedLines).toBeLessThan(5000);
  });
});
