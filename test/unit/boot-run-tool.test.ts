/** runTool: spawn through the addon, the exit from the reaper, output tail, SIGKILL at the deadline. */
import { mkdtempSync, readdirSync, readSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runTool } from '../../init/boot/run-tool.ts';
import { FakeNative } from '../../native/fake.ts';
import type { ChildExit } from '../../native/types.ts';

let scratchDir: string;
beforeEach(() => void (scratchDir = mkdtempSync(path.join(os.tmpdir(), 'run-tool-'))));
afterEach(() => rmSync(scratchDir, { recursive: true, force: true }));

function runner(native: FakeNative, onSpawn: (fds: { child: number; parent: number }[]) => ChildExit | null) {
  const waiting = new Map<number, (exit: ChildExit) => void>();
  let sleepers: (() => void)[] = [];
  return {
    runner: {
      native,
      scratchDir,
      waitForExit: (pid: number) =>
        new Promise<ChildExit>((resolve) => {
          waiting.set(pid, resolve);
          const spawned = native.spawned.find((s) => s.pid === pid)!;
          const exit = onSpawn(spawned.options.fds);
          if (exit) queueMicrotask(() => resolve({ ...exit, pid }));
        }),
      sleep: () => new Promise<void>((resolve) => sleepers.push(resolve)),
    },
    expire: () => {
      for (const wake of sleepers) wake();
      sleepers = [];
    },
    exitLater: (pid: number, exit: Omit<ChildExit, 'pid'>) => waiting.get(pid)!({ ...exit, pid }),
  };
}

describe('runTool', () => {
  it('runs the program with its output in a file, returns its status and output, leaves no file', async () => {
    const native = new FakeNative();
    const spawn = native.spawn.bind(native);
    // The child writes while it runs, i.e. before spawn returns and the parent closes its copy.
    native.spawn = (options) => {
      writeSync(options.fds[1]!.parent, 'mke2fs 1.47.0\n');
      return spawn(options);
    };
    const { runner: r } = runner(native, () => ({ pid: 0, code: 0, signal: null, core: false }));
    const run = await runTool(r, '/usr/sbin/mke2fs', ['mke2fs', '-q', '/dev/vdb'], 60_000);
    expect(run).toEqual({ code: 0, signal: null, output: 'mke2fs 1.47.0\n', timedOut: false });
    expect(native.spawned[0]!.options).toMatchObject({ file: '/usr/sbin/mke2fs', argv: ['mke2fs', '-q', '/dev/vdb'], setsid: true });
    expect(readdirSync(scratchDir)).toEqual([]);
  });

  it('gives the program its input on stdin (an nft ruleset), from a file already unlinked', async () => {
    const native = new FakeNative();
    const spawn = native.spawn.bind(native);
    let stdin = '';
    native.spawn = (options) => {
      const buffer = Buffer.alloc(64);
      stdin = buffer.subarray(0, readSync(options.fds[0]!.parent, buffer, 0, 64, 0)).toString();
      return spawn(options);
    };
    const { runner: r } = runner(native, () => ({ pid: 0, code: 0, signal: null, core: false }));
    const run = await runTool(r, '/usr/sbin/nft', ['nft', '-f', '-'], 60_000, 'table inet mos {}\n');
    expect(run.code).toBe(0);
    expect(stdin).toBe('table inet mos {}\n');
    expect(readdirSync(scratchDir)).toEqual([]);
  });

  it('kills a program that overruns its deadline and says so', async () => {
    const native = new FakeNative();
    const t = runner(native, () => null);
    const running = runTool(t.runner, '/usr/sbin/e2fsck', ['e2fsck', '-p', '/dev/vdc'], 1000);
    await new Promise((resolve) => setTimeout(resolve, 0));
    t.expire();
    await new Promise((resolve) => setTimeout(resolve, 0));
    const pid = native.spawned[0]!.pid;
    expect(native.signals).toEqual([{ pid, signal: 'SIGKILL' }]);
    t.exitLater(pid, { code: null, signal: 'SIGKILL', core: false });
    expect(await running).toMatchObject({ signal: 'SIGKILL', timedOut: true });
  });

  it('reports a program that could not start', async () => {
    const native = new FakeNative();
    native.failNextSpawn = { stage: 'execve', code: 'ENOENT' };
    const { runner: r } = runner(native, () => null);
    expect(await runTool(r, '/usr/sbin/mke2fs', ['mke2fs'], 1000)).toEqual({ code: null, signal: null, output: 'execve ENOENT /usr/sbin/mke2fs', timedOut: false });
  });
});
