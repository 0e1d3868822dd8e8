/**
 * The addon's idmappedBind against the real kernel: a squashfs image and a tmpfs seen through an
 * idmapped bind (image ids 0 and 1000 as host ids 200000 and 201000), the errors of each step
 * (ENOENT naming the path, EINVAL from mount_setattr for a filesystem that cannot be idmapped),
 * no mount left by a failure, no child left by any call, and nothing of the temporary user
 * namespace's child ever reaching mos's reaper (watchChildren and reap run throughout).
 *
 * Each scenario runs in a Node child inside `unshare -m --propagation private` that loads the
 * addon as the other privileged tests' scripts do (`require(process.env.MOS_NATIVE_ADDON)`), so
 * its mounts are private to it and go with it. Needs root, mksquashfs, util-linux's unshare and
 * setpriv, a built addon (`npm run build:addon`), and kernels >= 6.2 (squashfs) / 6.3 (tmpfs).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative, nativeAddonPath } from '../../native/index.ts';
import type { IdmappedBindOptions } from '../../native/types.ts';

const isRoot = process.getuid?.() === 0;
const hasTool = (file: string, args: string[]) => {
  try {
    execFileSync(file, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const hasTools = hasTool('mksquashfs', ['-version']) && hasTool('unshare', ['--version']) && hasTool('setpriv', ['--version']);
const [kernelMajor = 0, kernelMinor = 0] = os.release().split(/[.-]/).map(Number);
const kernelAtLeast = (major: number, minor: number) => kernelMajor > major || (kernelMajor === major && kernelMinor >= minor);

const HOST_ID = 200000;
const SIZE = 65536;

/** What a scenario reports of an error. */
interface ErrorFacts {
  message: string;
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

/** Helpers every scenario script starts with (CommonJS, run by `node -e`). */
const PRELUDE = String.raw`
const native = require(process.env.MOS_NATIVE_ADDON);
const fs = require('fs');
const path = require('path');
const cp = require('child_process');
const scratch = process.env.SCRATCH;
const result = {};
const mountLines = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\n');
/** The mount options (per-mount, then the superblock's) of what is mounted at p, innermost last. */
const mountsAt = (p) => mountLines().map((line) => line.split(' ')).filter((f) => f[4] === p)
  .map((f) => f[5] + ' ' + f[f.length - 1]);
/** Our children in any state (zombies included), from every process's stat. */
const children = () => fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).flatMap((n) => {
  try {
    const stat = fs.readFileSync('/proc/' + n + '/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[1]) === process.pid ? [n + ' ' + fields[0]] : [];
  } catch { return []; }
});
const owner = (p) => { const s = fs.lstatSync(p); return [s.uid, s.gid, s.mode & 0o7777]; };
const errorOf = async (promise) => {
  try { await promise; return null; }
  catch (e) { return { message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path }; }
};
const sh = (command) => cp.execFileSync('sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
/** The reaper as mos runs it: SIGCHLD reaps (watchChildren), and here reap() on every loop turn too. */
const reaperSaw = [];
function startReaper() {
  const watch = native.watchChildren((exits) => reaperSaw.push(...exits));
  let running = true;
  const poll = () => { reaperSaw.push(...native.reap()); if (running) setImmediate(poll); };
  poll();
  return () => { running = false; watch.close(); };
}
/** A private tmpfs for the scenario's directories (an overlay upper needs one). */
fs.mkdirSync(scratch + '/ns', { recursive: true });
cp.execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'mos-idmap-test', scratch + '/ns']);
const ns = scratch + '/ns';
`;

describe.skipIf(!isRoot || !hasTools)('native idmappedBind (root)', () => {
  let scratchDir: string;
  let image: string;

  beforeAll(() => {
    scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-idmap-'));
    // Walkable by the mapped ids the tmpfs scenario writes as.
    fs.chmodSync(scratchDir, 0o755);
    // The image: root's 0600 secret, uid 1000's home, a set-user-ID file, and one owner outside
    // the mapped range (70000: no container id maps to it).
    const tree = path.join(scratchDir, 'tree');
    fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
    fs.mkdirSync(path.join(tree, 'home', 'app'), { recursive: true });
    fs.mkdirSync(path.join(tree, 'bin'));
    fs.writeFileSync(path.join(tree, 'etc', 'secret'), 'root-only\n', { mode: 0o600 });
    fs.writeFileSync(path.join(tree, 'home', 'app', 'note'), 'hello\n');
    fs.writeFileSync(path.join(tree, 'bin', 'suid'), '#!/bin/sh\n');
    fs.chmodSync(path.join(tree, 'bin', 'suid'), 0o4755);
    fs.writeFileSync(path.join(tree, 'far'), 'far\n');
    fs.chownSync(path.join(tree, 'home', 'app'), 1000, 1000);
    fs.chownSync(path.join(tree, 'home', 'app', 'note'), 1000, 1000);
    fs.chownSync(path.join(tree, 'far'), 70000, 70000);
    image = path.join(scratchDir, 'image.sqfs');
    execFileSync('mksquashfs', [tree, image, '-noappend', '-quiet', '-no-progress'], { stdio: 'ignore' });
  });

  afterAll(async () => {
    if (!scratchDir) return;
    try {
      // The scenarios' namespaces are gone with their processes: nothing of ours is mounted, and
      // the loop devices (autoclear) are free again.
      const deadline = Date.now() + 5_000;
      const leftovers = () => [
        ...fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((line) => line.includes(scratchDir)),
        ...fs
          .readdirSync('/sys/block')
          .filter((name) => /^loop\d+$/.test(name))
          .filter((name) => {
            try {
              return fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').startsWith(scratchDir);
            } catch {
              return false;
            }
          }),
      ];
      while (leftovers().length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(leftovers()).toEqual([]);
    } finally {
      fs.rmSync(scratchDir, { recursive: true, force: true });
    }
  });

  /** Runs PRELUDE + `body` in `unshare -m`; the body fills `result`, which comes back parsed. */
  function scenario(body: string): Record<string, unknown> {
    const script = `${PRELUDE}\n(async () => {\n${body}\n})().then(() => process.stdout.write(JSON.stringify(result)), (e) => { console.error(e.stack); process.exit(1); });`;
    const output = execFileSync('unshare', ['-m', '--propagation', 'private', process.execPath, '-e', script], {
      env: { ...process.env, MOS_NATIVE_ADDON: nativeAddonPath(), SCRATCH: scratchDir, IMAGE: image },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return JSON.parse(output) as Record<string, unknown>;
  }

  it.skipIf(!kernelAtLeast(6, 2))('shows a squashfs image with its ids shifted by hostId, read-only, nosuid, nodev', () => {
    const result = scenario(`
      fs.mkdirSync(ns + '/img'); fs.mkdirSync(ns + '/idm');
      cp.execFileSync('mount', ['-o', 'loop,ro', process.env.IMAGE, ns + '/img']);
      const stopReaper = startReaper();
      await native.idmappedBind({ source: ns + '/img', target: ns + '/idm', hostId: ${HOST_ID}, size: ${SIZE}, readOnly: true });
      stopReaper();
      result.children = children();
      result.reaperSaw = reaperSaw;
      result.image = ['etc/secret', 'home/app', 'home/app/note', 'bin/suid', 'far'].map((f) => owner(ns + '/img/' + f));
      result.mapped = ['etc/secret', 'home/app', 'home/app/note', 'bin/suid', 'far', ''].map((f) => owner(ns + '/idm/' + f));
      result.secret = fs.readFileSync(ns + '/idm/etc/secret', 'utf8');
      result.mounts = mountsAt(ns + '/idm');
      result.write = await errorOf(fs.promises.writeFile(ns + '/idm/new', 'x'));
      await native.umount(ns + '/idm', 0);
      await native.umount(ns + '/img', 0);
      result.after = mountLines().filter((line) => line.includes(ns + '/i'));
    `);
    // The image as built, and through the idmapped bind: 0 → 200000, 1000 → 201000, 70000 (out
    // of the range) → the overflow id; modes, set-user-ID included, as they are.
    expect(result.image).toEqual([[0, 0, 0o600], [1000, 1000, 0o755], [1000, 1000, 0o644], [0, 0, 0o4755], [70000, 70000, 0o644]]);
    expect(result.mapped).toEqual([
      [200000, 200000, 0o600],
      [201000, 201000, 0o755],
      [201000, 201000, 0o644],
      [200000, 200000, 0o4755],
      [65534, 65534, 0o644],
      [200000, 200000, 0o755],
    ]);
    expect(result.secret).toBe('root-only\n');
    const [options] = result.mounts as string[];
    expect(result.mounts).toHaveLength(1);
    expect(options!.split(' ')[0]!.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev', 'idmapped']));
    expect(result.write).toMatchObject({ code: 'EROFS' });
    // The helper child is reaped by the call, and the reaper never saw it.
    expect(result.children).toEqual([]);
    expect(result.reaperSaw).toEqual([]);
    expect(result.after).toEqual([]);
  });

  it.skipIf(!kernelAtLeast(6, 3))('binds a tmpfs writable: host id hostId + x writes as x, host root is not mapped', () => {
    const result = scenario(`
      fs.mkdirSync(ns + '/src'); fs.mkdirSync(ns + '/idm');
      fs.mkdirSync(ns + '/src/home'); fs.chownSync(ns + '/src/home', 1000, 1000);
      fs.writeFileSync(ns + '/src/file', 'x');
      await native.idmappedBind({ source: ns + '/src', target: ns + '/idm', hostId: ${HOST_ID}, size: ${SIZE}, readOnly: false });
      result.children = children();
      result.mapped = ['', 'home', 'file'].map((f) => owner(ns + '/idm/' + f));
      result.mounts = mountsAt(ns + '/idm');
      // As host uid 201000 (container uid 1000) through the mapping, and as host root.
      sh('setpriv --reuid=${HOST_ID + 1000} --regid=${HOST_ID + 1000} --clear-groups sh -c "echo made > ' + ns + '/idm/home/made"');
      result.made = [owner(ns + '/idm/home/made'), owner(ns + '/src/home/made')];
      result.rootWrite = await errorOf(fs.promises.writeFile(ns + '/idm/by-root', 'x'));
      await native.umount(ns + '/idm', 0);
      result.after = mountsAt(ns + '/idm');
    `);
    expect(result.mapped).toEqual([
      [200000, 200000, 0o755],
      [201000, 201000, 0o755],
      [200000, 200000, 0o644],
    ]);
    const [options] = result.mounts as string[];
    expect(options!.split(' ')[0]!.split(',')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'idmapped']));
    // The file made by host uid 201000 is container uid 1000's in the filesystem itself.
    expect(result.made).toEqual([
      [201000, 201000, 0o644],
      [1000, 1000, 0o644],
    ]);
    // Host root (uid 0) has no id in the filesystem through this mount.
    expect(result.rootWrite).toMatchObject({ code: 'EOVERFLOW' });
    expect(result.children).toEqual([]);
    expect(result.after).toEqual([]);
  });

  it.skipIf(!kernelAtLeast(6, 3))('names the failed step and its path, and leaves neither a mount nor a child', () => {
    const result = scenario(`
      fs.mkdirSync(ns + '/src'); fs.mkdirSync(ns + '/idm');
      fs.mkdirSync(ns + '/lower'); fs.mkdirSync(ns + '/upper'); fs.mkdirSync(ns + '/work'); fs.mkdirSync(ns + '/ovl');
      cp.execFileSync('mount', ['-t', 'overlay', '-o', 'lowerdir=' + ns + '/lower,upperdir=' + ns + '/upper,workdir=' + ns + '/work', 'overlay', ns + '/ovl']);
      const before = mountLines().length;
      const stopReaper = startReaper();
      const bind = (source, target) => native.idmappedBind({ source, target, hostId: ${HOST_ID}, size: ${SIZE}, readOnly: true });
      result.noSource = await errorOf(bind(ns + '/missing', ns + '/idm'));
      result.noTarget = await errorOf(bind(ns + '/src', ns + '/missing'));
      // Overlayfs cannot be idmapped by any kernel so far: what squashfs gives before 6.2.
      result.overlay = await errorOf(bind(ns + '/ovl', ns + '/idm'));
      // A mount that is already idmapped cannot be idmapped again.
      fs.mkdirSync(ns + '/idm2');
      await bind(ns + '/src', ns + '/idm');
      result.twice = await errorOf(bind(ns + '/idm', ns + '/idm2'));
      await native.umount(ns + '/idm', 0);
      stopReaper();
      result.reaperSaw = reaperSaw;
      result.children = children();
      result.mountsAdded = mountLines().length - before;
      result.atTarget = mountsAt(ns + '/idm');
    `);
    expect(result.noSource).toMatchObject({
      syscall: 'open_tree',
      code: 'ENOENT',
      errno: os.constants.errno.ENOENT,
      path: `${scratchDir}/ns/missing`,
      message: `open_tree ENOENT ${scratchDir}/ns/missing`,
    });
    expect(result.noTarget).toMatchObject({
      syscall: 'move_mount',
      code: 'ENOENT',
      path: `${scratchDir}/ns/missing`,
      message: `move_mount ENOENT ${scratchDir}/ns/missing`,
    });
    expect(result.overlay).toMatchObject({
      syscall: 'mount_setattr',
      code: 'EINVAL',
      errno: os.constants.errno.EINVAL,
      path: `${scratchDir}/ns/ovl`,
      message: `mount_setattr EINVAL ${scratchDir}/ns/ovl`,
    });
    expect(result.twice).toMatchObject({ syscall: 'mount_setattr', code: 'EPERM', path: `${scratchDir}/ns/idm` });
    expect(result.mountsAdded).toBe(0);
    expect(result.atTarget).toEqual([]);
    expect(result.children).toEqual([]);
    expect(result.reaperSaw).toEqual([]);
  });

  it.skipIf(!kernelAtLeast(6, 3))('runs concurrent calls (one helper child at a time) while children of mos come and go', () => {
    const result = scenario(`
      fs.mkdirSync(ns + '/src');
      fs.writeFileSync(ns + '/src/file', 'x'); fs.chownSync(ns + '/src/file', 1000, 1000);
      const targets = Array.from({ length: 8 }, (_, i) => ns + '/idm' + i);
      for (const target of targets) fs.mkdirSync(target);
      const stopReaper = startReaper();
      // Children of mos exit meanwhile: the reaper collects exactly those.
      const devNull = fs.openSync('/dev/null', 'r+');
      const spawned = [];
      const spawnTrue = () => spawned.push(native.spawn({ file: '/bin/true', argv: ['true'], env: [],
        fds: [0, 1, 2].map((child) => ({ child, parent: devNull })) }));
      const calls = targets.map((target, i) => { spawnTrue(); return native.idmappedBind({ source: ns + '/src', target,
        hostId: ${HOST_ID} + i * ${SIZE}, size: ${SIZE}, readOnly: i % 2 === 0 }); });
      result.outcomes = await Promise.all(calls.map((call) => errorOf(call)));
      while (reaperSaw.length < spawned.length) await new Promise((resolve) => setTimeout(resolve, 5));
      stopReaper();
      result.owners = targets.map((target) => owner(target + '/file')[0]);
      result.reaped = reaperSaw.map((exit) => exit.pid).sort((a, b) => a - b);
      result.spawned = spawned.sort((a, b) => a - b);
      result.children = children();
      for (const target of targets) await native.umount(target, 0);
    `);
    expect(result.outcomes).toEqual(Array.from({ length: 8 }, () => null));
    expect(result.owners).toEqual(Array.from({ length: 8 }, (_, i) => HOST_ID + i * SIZE + 1000));
    expect(result.reaped).toEqual(result.spawned);
    expect(result.children).toEqual([]);
  });

  it('refuses arguments outside the contract with a TypeError before any syscall', () => {
    const native = loadNative();
    const valid: IdmappedBindOptions = { source: '/nonexistent-a', target: '/nonexistent-b', hostId: HOST_ID, size: SIZE, readOnly: true };
    const call = (options: Record<string, unknown>) => () => native.idmappedBind(options as unknown as IdmappedBindOptions);
    expect(call({ ...valid, size: 0 })).toThrow(TypeError);
    expect(call({ ...valid, hostId: -1 })).toThrow(TypeError);
    expect(call({ ...valid, hostId: 1.5 })).toThrow(TypeError);
    expect(call({ ...valid, hostId: 4294967295 - 10, size: 11 })).toThrow('options.hostId + options.size must not exceed 4294967295');
    expect(call({ ...valid, source: '' })).toThrow('options.source must not be empty');
    expect(call({ ...valid, target: 'a\0b' })).toThrow('options.target must not contain NUL');
    expect(call({ source: '/a', target: '/b', hostId: HOST_ID, size: SIZE })).toThrow('options.readOnly must be a boolean');
    expect(() => native.idmappedBind(undefined as unknown as IdmappedBindOptions)).toThrow('options must be an object');
  });
});
