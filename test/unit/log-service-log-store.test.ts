import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ServiceLogStore, type ServiceLogStoreOptions } from '../../init/log/service-log-store.ts';
import type { LogLine } from '../../init/log/types.ts';
import { loadNative } from '../../native/index.ts';

/** The pipes are polled by the addon's libuv poll (no root needed). */
const native = loadNative();

/**
 * Node has no pipe(): a FIFO opened twice with O_RDWR (which never blocks on Linux) is a real
 * kernel pipe without the native addon. The write end is non-blocking for writes from this process
 * (which must not block the loop that reads), blocking for a child's stdout (as pipe2 gives it).
 */
function fifoPipe(dir: string, options: { blockingWriteEnd?: boolean } = {}): () => [number, number] {
  let count = 0;
  return () => {
    const fifo = path.join(dir, `fifo-${count++}`);
    execFileSync('mkfifo', [fifo]);
    const { O_RDWR, O_NONBLOCK } = fs.constants;
    const readFd = fs.openSync(fifo, O_RDWR | O_NONBLOCK);
    const writeFd = fs.openSync(fifo, options.blockingWriteEnd ? O_RDWR : O_RDWR | O_NONBLOCK);
    return [readFd, writeFd];
  };
}

/** Writes all of `text` to a non-blocking fd, letting the event loop read whenever the pipe is full. */
async function writeAll(fd: number, text: string): Promise<void> {
  const data = Buffer.from(text, 'utf8');
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset, Math.min(16 * 1024, data.length - offset));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for log lines');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The texts of every file line, oldest file first (`.log.N` … `.log.1`, `.log`). */
function fileLines(dir: string, service: string): string[] {
  const base = path.join(dir, `${service}.log`);
  const rotated = fs
    .readdirSync(dir)
    .filter((name) => name.startsWith(`${service}.log.`))
    .map((name) => Number(name.slice(`${service}.log.`.length)))
    .sort((a, b) => b - a)
    .map((n) => `${base}.${n}`);
  return [...rotated, base].flatMap((file) => fs.readFileSync(file, 'utf8').split('\n').slice(0, -1));
}

const T0 = Date.parse('2026-11-22T12:00:00.000Z');

let tmp: string;
let logDir: string;
let store: ServiceLogStore | undefined;

function makeStore(options: Partial<ServiceLogStoreOptions> = {}): ServiceLogStore {
  store = new ServiceLogStore({ dir: logDir, pipe: fifoPipe(tmp), watchReadable: (fd, onReadable) => native.watchReadable(fd, onReadable), now: () => T0, ...options });
  return store;
}

const texts = (lines: LogLine[]): string[] => lines.map((line) => line.text);

beforeEach(() => {
  tmp = fs.mkdtempSync(`${os.tmpdir()}/mos-`);
  logDir = path.join(tmp, 'log');
  store = undefined;
});

afterEach(async () => {
  await store?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('ServiceLogStore', () => {
  it('creates one pipe pair per service and returns the same fds on every open', () => {
    const logs = makeStore();
    const first = logs.open('web');
    expect(logs.open('web')).toEqual(first);
    expect(first.stdout).not.toBe(first.stderr);
    const other = logs.open('db');
    expect([other.stdout, other.stderr]).not.toContain(first.stdout);
    expect(logs.has('web')).toBe(true);
    expect(logs.has('nope')).toBe(false);
  });

  it('captures both streams with one gapless seq, the read time and the stream', async () => {
    let now = T0;
    const logs = makeStore({ now: () => now });
    const fds = logs.open('web');
    await writeAll(fds.stdout, 'out 1\nout 2\n');
    await waitFor(() => logs.tail('web', 10).length === 2);
    now = T0 + 1500;
    await writeAll(fds.stderr, 'err 1\n');
    await waitFor(() => logs.tail('web', 10).length === 3);
    logs.append('web', 'stderr', 'exec failed');
    await writeAll(fds.stdout, 'out 3\n');
    await waitFor(() => logs.tail('web', 10).length === 5);

    expect(logs.tail('web', 10)).toEqual([
      { seq: 1, ts: T0, stream: 'stdout', text: 'out 1' },
      { seq: 2, ts: T0, stream: 'stdout', text: 'out 2' },
      { seq: 3, ts: T0 + 1500, stream: 'stderr', text: 'err 1' },
      { seq: 4, ts: T0 + 1500, stream: 'stderr', text: 'exec failed' },
      { seq: 5, ts: T0 + 1500, stream: 'stdout', text: 'out 3' },
    ]);
    expect(logs.tail('web', 2).map((line) => line.seq)).toEqual([4, 5]);
    expect(logs.tail('unknown', 10)).toEqual([]);
  });

  it('writes `<ISO ts> <stream> <text>` lines to <dir>/<service>.log in a 0700 directory', async () => {
    const logs = makeStore();
    const fds = logs.open('web');
    await writeAll(fds.stdout, 'hello\n');
    await waitFor(() => logs.tail('web', 1).length === 1);
    logs.append('web', 'stderr', 'two\nlines');
    await logs.flush();
    expect(fs.readFileSync(path.join(logDir, 'web.log'), 'utf8')).toBe(
      '2026-11-22T12:00:00.000Z stdout hello\n' +
        '2026-11-22T12:00:00.000Z stderr two\n' +
        '2026-11-22T12:00:00.000Z stderr lines\n',
    );
    expect(fs.statSync(logDir).mode & 0o777).toBe(0o700);
  });

  it('flush reads what the pipes hold and waits for the file writes', async () => {
    const logs = makeStore();
    const fds = logs.open('web');
    fs.writeSync(fds.stdout, 'a\nb\n');
    fs.writeSync(fds.stderr, 'c\n');
    await logs.flush();
    expect(texts(logs.tail('web', 10)).sort()).toEqual(['a', 'b', 'c']);
    expect(fs.readFileSync(path.join(logDir, 'web.log'), 'utf8').split('\n')).toHaveLength(4);
  });

  it('keeps a pipe across runs: what several writers send lands in one sequence', async () => {
    const logs = makeStore({ pipe: fifoPipe(tmp, { blockingWriteEnd: true }) });
    const fds = logs.open('job');
    for (const run of ['first', 'second']) {
      const child = spawn('sh', ['-c', `echo ${run} run; echo ${run} oops >&2`], {
        stdio: ['ignore', fds.stdout, fds.stderr],
      });
      await new Promise((resolve) => child.on('exit', resolve));
    }
    await waitFor(() => logs.tail('job', 10).length === 4);
    const lines = logs.tail('job', 10);
    expect(lines.map((line) => line.seq)).toEqual([1, 2, 3, 4]);
    expect(lines.filter((line) => line.stream === 'stdout').map((line) => line.text)).toEqual([
      'first run',
      'second run',
    ]);
    expect(lines.filter((line) => line.stream === 'stderr').map((line) => line.text)).toEqual([
      'first oops',
      'second oops',
    ]);
  });

  it('applies the line cap and ring bounds it was given', async () => {
    const logs = makeStore({ maxLineBytes: 8, ringLines: 3 });
    const fds = logs.open('web');
    await writeAll(fds.stdout, `${'x'.repeat(20)}\nshort\n`);
    await waitFor(() => logs.tail('web', 1)[0]?.text === 'short');
    expect(logs.tail('web', 10).map((line) => [line.seq, line.text])).toEqual([
      [2, 'xxxxxxxx'],
      [3, 'xxxx'],
      [4, 'short'],
    ]);
  });

  it('delivers lines to followers until they unsubscribe', async () => {
    const logs = makeStore();
    const seen: string[] = [];
    const unsubscribe = logs.follow('web', (line) => seen.push(line.text));
    const fds = logs.open('web');
    await writeAll(fds.stdout, 'a\nb\n');
    await waitFor(() => seen.length === 2);
    unsubscribe();
    await writeAll(fds.stdout, 'c\n');
    await waitFor(() => logs.tail('web', 1)[0]?.text === 'c');
    expect(seen).toEqual(['a', 'b']);
  });

  it('isolates a throwing follower: it is dropped and reported, capture goes on', async () => {
    const errors: Error[] = [];
    const logs = makeStore({ onError: (err) => errors.push(err) });
    const seen: string[] = [];
    logs.follow('web', () => {
      throw new Error('subscriber bug');
    });
    logs.follow('web', (line) => seen.push(line.text));
    const fds = logs.open('web');
    await writeAll(fds.stdout, 'one\ntwo\n');
    await waitFor(() => logs.tail('web', 10).length === 2);
    await writeAll(fds.stdout, 'three\n');
    await waitFor(() => logs.tail('web', 10).length === 3);
    expect(seen).toEqual(['one', 'two', 'three']);
    expect(texts(logs.tail('web', 10))).toEqual(['one', 'two', 'three']);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.message).toContain('subscriber bug');
  });

  it('refuses names that would put a file outside dir', () => {
    const logs = makeStore();
    for (const name of ['../escape', 'a/b', '..']) {
      expect(() => logs.open(name)).toThrow(/invalid log name/);
      expect(() => logs.append(name, 'stdout', 'x')).toThrow(/invalid log name/);
      expect(() => logs.follow(name, () => {})).toThrow(/invalid log name/);
      expect(logs.has(name)).toBe(false);
    }
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it('captures a 100,000-line burst without loss, in order, in files and ring', async () => {
    const logs = makeStore({ fileMaxBytes: 256 * 1024, fileKeep: 20 });
    const fds = logs.open('burst');
    let burst = '';
    for (let n = 1; n <= 100_000; n++) burst += `${n}\n`;
    await writeAll(fds.stdout, burst);
    await waitFor(() => logs.tail('burst', 1)[0]?.seq === 100_000);
    await logs.flush();

    const expected = Array.from({ length: 100_000 }, (_, i) => String(i + 1));
    expect(fileLines(logDir, 'burst')).toEqual(expected.map((text) => `2026-11-22T12:00:00.000Z stdout ${text}`));
    const ring = logs.tail('burst', 100_000);
    expect(ring).toHaveLength(10_000);
    expect(ring.every((line, i) => line.seq === 90_001 + i && line.text === String(line.seq))).toBe(true);
  });

  it('captures `seq 1 100000` from a real process without loss', async () => {
    const logs = makeStore({ pipe: fifoPipe(tmp, { blockingWriteEnd: true }), fileMaxBytes: 256 * 1024, fileKeep: 20 });
    const fds = logs.open('seq');
    const child = spawn('seq', ['1', '100000'], { stdio: ['ignore', fds.stdout, fds.stderr] });
    const exitCode = await new Promise((resolve) => child.on('exit', resolve));
    expect(exitCode).toBe(0);
    await waitFor(() => logs.tail('seq', 1)[0]?.seq === 100_000);
    await logs.flush();

    const lines = fileLines(logDir, 'seq');
    expect(lines).toHaveLength(100_000);
    expect(lines.every((line, i) => line === `2026-11-22T12:00:00.000Z stdout ${i + 1}`)).toBe(true);
    expect(logs.tail('seq', 1)[0]).toEqual({ seq: 100_000, ts: T0, stream: 'stdout', text: '100000' });
  });

  it('close records unterminated text, closes both ends of every pipe and refuses open', async () => {
    const createPipe = fifoPipe(tmp);
    const pipeFds: number[] = [];
    const logs = makeStore({
      pipe: () => {
        const pair = createPipe();
        pipeFds.push(...pair);
        return pair;
      },
    });
    const web = logs.open('web');
    const db = logs.open('db');
    await writeAll(web.stdout, 'done\nno newline');
    await writeAll(db.stderr, 'bye');
    await logs.close();
    expect(texts(logs.tail('web', 10))).toEqual(['done', 'no newline']);
    expect(fs.readFileSync(path.join(logDir, 'web.log'), 'utf8')).toContain('stdout no newline\n');
    expect(logs.tail('db', 10)).toEqual([{ seq: 1, ts: T0, stream: 'stderr', text: 'bye' }]);
    expect(pipeFds).toHaveLength(8);
    for (const fd of pipeFds) expect(() => fs.fstatSync(fd)).toThrow(/EBADF/);
    expect(() => logs.open('web')).toThrow(/closed/);
  });
});
