import { constants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { createNativeError, FakeNative } from '../../native/fake.ts';
import type { NativeError, SpawnOptions } from '../../native/types.ts';

const options = (overrides: Partial<SpawnOptions> = {}): SpawnOptions => ({
  file: '/bin/service',
  argv: ['service'],
  env: [],
  fds: [],
  ...overrides,
});

function thrown(action: () => unknown): NativeError {
  try {
    action();
  } catch (error) {
    return error as NativeError;
  }
  throw new Error('did not throw');
}

describe('createNativeError', () => {
  it('reads like the addon: syscall, errno name, path', () => {
    const error = createNativeError('mount', 'ENOENT', '/sysroot');
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toBe('mount ENOENT /sysroot');
    expect(error).toMatchObject({ code: 'ENOENT', errno: constants.errno.ENOENT, syscall: 'mount', path: '/sysroot' });
  });

  it('leaves out path and pid when not given', () => {
    const error = createNativeError('pipe2', 'EMFILE');
    expect(error.message).toBe('pipe2 EMFILE');
    expect('path' in error).toBe(false);
    expect('pid' in error).toBe(false);
    expect(createNativeError('execve', 'EACCES', '/x', { pid: 7 }).pid).toBe(7);
  });
});

describe('FakeNative', () => {
  it('hands out increasing pids from 1000 and records the options', () => {
    const native = new FakeNative();
    const first = native.spawn(options());
    const second = native.spawn(options({ setsid: true }));
    expect([first, second]).toEqual([1000, 1001]);
    expect(native.spawned.map((entry) => entry.pid)).toEqual([1000, 1001]);
    expect(native.spawned[1]!.options.setsid).toBe(true);
    expect(native.isAlive(first)).toBe(true);
  });

  it('queues exits for reap and forgets the pid', () => {
    const native = new FakeNative();
    const pid = native.spawn(options());
    expect(native.reap()).toEqual([]);
    native.exit(pid, { signal: 'SIGKILL' });
    expect(native.reap()).toEqual([{ pid, code: null, signal: 'SIGKILL', core: false }]);
    expect(native.reap()).toEqual([]);
    expect(native.kill(pid, 'SIGTERM')).toBe(false);
  });

  it('fails the next spawn like a child that could not exec, which then exits 127', () => {
    const native = new FakeNative();
    native.failNextSpawn = { stage: 'execve', code: 'ENOENT' };
    const error = thrown(() => native.spawn(options({ file: '/no/such/file' })));
    expect(error.message).toBe('execve ENOENT /no/such/file');
    expect(error).toMatchObject({ syscall: 'execve', code: 'ENOENT', pid: 1000 });
    expect(native.reap()).toEqual([{ pid: 1000, code: 127, signal: null, core: false }]);
    // Only the next spawn fails.
    expect(native.spawn(options())).toBe(1001);
  });

  it('names the cwd for chdir failures and has no pid for clone failures', () => {
    const native = new FakeNative();
    native.failNextSpawn = { stage: 'chdir', code: 'ENOENT' };
    expect(thrown(() => native.spawn(options({ cwd: '/missing' }))).message).toBe('chdir ENOENT /missing');
    native.failNextSpawn = { stage: 'clone', code: 'EAGAIN' };
    const error = thrown(() => native.spawn(options()));
    expect(error.message).toBe('clone EAGAIN');
    expect(error.pid).toBeUndefined();
  });

  it('records signals and knows process groups', () => {
    const native = new FakeNative();
    const leader = native.spawn(options({ setsid: true }));
    expect(native.kill(leader, 'SIGTERM')).toBe(true);
    expect(native.killProcessGroup(leader, 'SIGKILL')).toBe(true);
    native.exit(leader, { signal: 'SIGKILL' });
    expect(native.killProcessGroup(leader, 'SIGKILL')).toBe(false);
    expect(native.signals).toEqual([
      { pid: leader, signal: 'SIGTERM' },
      { pgid: leader, signal: 'SIGKILL' },
      { pgid: leader, signal: 'SIGKILL' },
    ]);
  });

  it('delivers datagrams to watchers and drains them up to max', () => {
    const native = new FakeNative();
    const fd = native.bindCredDatagramSocket('/run/mos/notify');
    expect(native.boundSockets.get(fd)).toBe('/run/mos/notify');
    const received: string[] = [];
    const watch = native.watchReadable(fd, () => {
      for (const datagram of native.receiveCredDatagrams(fd, 1)) received.push(datagram.data.toString());
    });
    native.deliverDatagram(fd, 'READY=1', { pid: 1000, uid: 0, gid: 0 });
    expect(received).toEqual(['READY=1']);
    watch.close();
    watch.close();
    expect(native.readableWatchers.has(fd)).toBe(false);
    native.deliverDatagram(fd, 'STOPPING=1', { pid: 1000, uid: 0, gid: 0 });
    expect(received).toEqual(['READY=1']);
    expect(native.receiveCredDatagrams(fd, 8).map((datagram) => datagram.data.toString())).toEqual(['STOPPING=1']);
  });

  it('hands out fresh pipe fds and records closes', () => {
    const native = new FakeNative();
    const [readFd, writeFd] = native.pipe();
    const [otherRead] = native.pipe();
    expect(new Set([readFd, writeFd, otherRead]).size).toBe(3);
    native.close(writeFd);
    expect(native.openFds.has(writeFd)).toBe(false);
    expect(native.closedFds).toEqual([writeFd]);
  });

  it('records mounts, umounts and reboots, and can fail a mount', async () => {
    const native = new FakeNative();
    await native.mount({ source: 'proc', target: '/proc', fstype: 'proc', flags: 0 });
    native.failNextMount = 'ENOENT';
    await expect(native.mount({ source: 'tmpfs', target: '/sysroot', fstype: 'tmpfs', flags: 0 })).rejects.toThrow(
      'mount ENOENT /sysroot',
    );
    await native.umount('/proc', 2);
    native.reboot('poweroff');
    expect(native.mounts.map((request) => request.target)).toEqual(['/proc', '/sysroot']);
    expect(native.umounts).toEqual([{ target: '/proc', flags: 2 }]);
    expect(native.reboots).toEqual(['poweroff']);
  });
});
