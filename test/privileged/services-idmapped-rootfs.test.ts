/**
 * An image's files keep their owners inside a user-namespaced container (issue 6), with the real
 * kernel and the real crun on the host: both strategies of services/rootfs-idmap.ts, each carried
 * out step by step by a small python3 executor (ctypes for open_tree / mount_setattr /
 * move_mount, which util-linux 2.38 cannot do), then containers run by crun from bundles made by
 * services/bundle.ts.
 *
 * For each strategy, two nsgroups use one squashfs image: A (container 0 → host 200000, 65536
 * ids) and B (0 → 300000). The test checks that A sees the image's owners (0 and 1000, never
 * 65534), that its root and its uid 1000 can write what they own in the overlay's upper layer
 * and nothing else, that B cannot read A's 0600 files (the image's and one A made), and that the
 * shift never follows a symlink out of the image. `idmapped-lower` needs squashfs idmapped mounts
 * (6.2+; the host has 6.18); `shifted-upper` is what Debian's 6.1 gets.
 *
 * Everything runs in one private mount namespace per strategy (`unshare -m`), with cgroup2
 * mounted and `--cgroup-manager=disabled` (FACTS: the host has hybrid cgroups).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planBundleConfig } from '../../services/bundle.ts';
import { kernelIdmapSupport, MOUNT_ATTR, planRootfsIdmap, planShiftEntry, type RootfsPlan, type RootfsStrategy } from '../../services/rootfs-idmap.ts';

const isRoot = process.getuid?.() === 0;
const hasTools = ['/usr/bin/crun', '/bin/busybox', '/usr/bin/unshare', '/usr/bin/mksquashfs', '/usr/bin/python3'].every((file) => fs.existsSync(file));
const hasSetcap = fs.existsSync('/usr/sbin/setcap') && fs.existsSync('/usr/sbin/getcap');
const support = kernelIdmapSupport(os.release());
const squashfsIdmap = support?.squashfs === true && support.overlayLayers;

const A = { hostId: 200_000, size: 65_536 };
const B = { hostId: 300_000, size: 65_536 };

/**
 * Carries out a RootfsPlan (argv[1]: {"plan": ..., "mountAttr": ...}). For shift-tree it prints
 * one `SHIFT {json}` line per entry with lstat before and after, so the test can hold every entry
 * to planShiftEntry.
 */
const EXECUTOR = String.raw`
import ctypes, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_open_tree, SYS_move_mount, SYS_mount_setattr = 428, 429, 442
OPEN_TREE_CLONE = 1
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 4
MS_NODEV = 4
CLONE_NEWUSER = 0x10000000

class MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64), ('propagation', ctypes.c_uint64), ('userns_fd', ctypes.c_uint64)]

def check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ': ' + os.strerror(err))
    return result

def userns_fd(host, size):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0 if libc.unshare(CLONE_NEWUSER) == 0 else 1
        os.write(ready_w, b'u')
        os.read(go_r, 1)
        os._exit(code)
    os.read(ready_r, 1)
    try:
        for name in ('uid_map', 'gid_map'):
            with open('/proc/%d/%s' % (pid, name), 'w') as fh:
                fh.write('0 %d %d\n' % (host, size))
        return os.open('/proc/%d/ns/user' % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.write(go_w, b'g')
        os.waitpid(pid, 0)

def idmap_bind(step, mount_attr):
    ns = userns_fd(step['hostId'], step['size'])
    fd = check(libc.syscall(SYS_open_tree, AT_FDCWD, step['source'].encode(), OPEN_TREE_CLONE | os.O_CLOEXEC), 'open_tree ' + step['source'])
    mask = mount_attr['idmap']
    for name in step['attrs']:
        mask |= mount_attr[name]
    attr = MountAttr(mask, 0, 0, ns)
    check(libc.syscall(SYS_mount_setattr, fd, b'', AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)), 'mount_setattr ' + step['source'])
    check(libc.syscall(SYS_move_mount, fd, b'', AT_FDCWD, step['target'].encode(), MOVE_MOUNT_F_EMPTY_PATH), 'move_mount ' + step['target'])
    os.close(fd)
    os.close(ns)

def mount_overlay(step):
    check(libc.mount(b'overlay', step['target'].encode(), b'overlay', ctypes.c_ulong(MS_NODEV), step['data'].encode()), 'mount overlay ' + step['target'])

def require_option(step):
    found = None
    with open('/proc/self/mountinfo') as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == step['target']:
                found = fields[fields.index('-') + 3].split(',')
    if found is None or step['option'] not in found:
        sys.exit('%s: %s is not among the mount options %s' % (step['target'], step['option'], found))

def owner(st):
    return {'uid': st.st_uid, 'gid': st.st_gid, 'mode': st.st_mode}

def shift_tree(step):
    host, size = step['hostId'], step['size']
    def entries(root):
        yield root
        for parent, dirs, files in os.walk(root):
            for name in dirs + files:
                yield os.path.join(parent, name)
    for path in entries(step['root']):
        before = os.lstat(path)
        uid, gid = before.st_uid, before.st_gid
        if uid < size and gid < size:
            kept = {}
            for name in step['keepXattrs']:
                try:
                    kept[name] = os.getxattr(path, name, follow_symlinks=False)
                except OSError:
                    pass
            os.chown(path, uid + host, gid + host, follow_symlinks=False)
            if not stat.S_ISLNK(before.st_mode) and before.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(before.st_mode))
            for name, value in kept.items():
                os.setxattr(path, name, value, follow_symlinks=False)
        elif not (host <= uid < host + size and host <= gid < host + size):
            sys.exit('%s is owned by %d:%d, outside the image ids and the range' % (path, uid, gid))
        print('SHIFT ' + json.dumps({'path': path, 'before': owner(before), 'after': owner(os.lstat(path))}))

def mirror_root(step):
    st = os.lstat(step['from'])
    os.chown(step['to'], st.st_uid, st.st_gid)
    os.chmod(step['to'], stat.S_IMODE(st.st_mode))

with open(sys.argv[1]) as fh:
    job = json.load(fh)
for step in job['plan']['steps']:
    op = step['op']
    if op == 'mkdir':
        os.mkdir(step['path'])
        os.chmod(step['path'], step['mode'])
    elif op == 'idmap-bind':
        idmap_bind(step, job['mountAttr'])
    elif op == 'mirror-root':
        mirror_root(step)
    elif op == 'mount-overlay':
        mount_overlay(step)
    elif op == 'require-option':
        require_option(step)
    elif op == 'shift-tree':
        shift_tree(step)
    else:
        sys.exit('unknown step ' + op)
    print('STEP ' + op)
`;

interface Shifted {
  path: string;
  before: { uid: number; gid: number; mode: number };
  after: { uid: number; gid: number; mode: number };
}

/** The lines after `prefix `, in order. */
function lines(output: string, prefix: string): string[] {
  return output
    .split('\n')
    .filter((line) => line.startsWith(`${prefix} `))
    .map((line) => line.slice(prefix.length + 1));
}

type BundleMount = { source: string; destination: string; readOnly: boolean };

/** Writes dir/bundle-NAME/config.json for busybox sh -c SCRIPT, as services/bundle.ts plans it. */
function writeBundle(dir: string, name: string, rootfs: string, idRange: typeof A, uid: number, script: string, mounts: BundleMount[] = []): string {
  const bundleDir = path.join(dir, `bundle-${name}`);
  fs.mkdirSync(bundleDir);
  const planned = planBundleConfig({
    name,
    rootfs,
    process: { argv: ['/bin/busybox', 'sh', '-c', script], env: {}, cwd: '/', uid, gid: uid },
    idRange,
    network: 'none',
    netnsPath: null,
    limits: { pids: 64 },
    mounts,
    notifySocket: null,
  });
  if (!planned.ok) throw new Error(planned.message);
  fs.writeFileSync(path.join(bundleDir, 'config.json'), JSON.stringify(planned.config, null, 2));
  return bundleDir;
}

/** Runs SCRIPT with sh in a private mount namespace with cgroup2 mounted (crun needs it here). */
function inPrivateMountNamespace(script: string): string {
  const prelude = ['set -eu', 'mount --make-rprivate /', 'mount -t cgroup2 none /sys/fs/cgroup'];
  return execFileSync('unshare', ['-m', 'sh', '-c', [...prelude, script].join('\n')], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
}

describe.skipIf(!isRoot || !hasTools)('image owners inside user-namespaced containers (real crun)', () => {
  let work: string;
  let image: string;
  let hostFile: string;

  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mos-idmapped-rootfs-'));
    // A container's root is "other" to the host's directories on the way to its rootfs.
    fs.chmodSync(work, 0o755);
    // A host file the image links to: the shift must never follow the link to it.
    hostFile = path.join(work, 'host-file');
    fs.writeFileSync(hostFile, 'host\n');

    const tree = path.join(work, 'tree');
    for (const dir of ['bin', 'etc', 'home/app', 'proc', 'dev', 'sys', 'tmp']) fs.mkdirSync(path.join(tree, dir), { recursive: true });
    fs.chmodSync(path.join(tree, 'tmp'), 0o1777);
    fs.copyFileSync('/bin/busybox', path.join(tree, 'bin', 'busybox'));
    fs.linkSync(path.join(tree, 'bin', 'busybox'), path.join(tree, 'bin', 'sh'));
    fs.writeFileSync(path.join(tree, 'etc', 'secret'), 'root-only\n', { mode: 0o600 });
    fs.chmodSync(path.join(tree, 'etc', 'secret'), 0o600);
    fs.writeFileSync(path.join(tree, 'bin', 'suidfile'), 'x\n');
    fs.chmodSync(path.join(tree, 'bin', 'suidfile'), 0o4755);
    fs.writeFileSync(path.join(tree, 'home', 'app', 'note'), 'hello\n');
    fs.chmodSync(path.join(tree, 'home', 'app', 'note'), 0o644);
    fs.chownSync(path.join(tree, 'home', 'app'), 1000, 1000);
    fs.chownSync(path.join(tree, 'home', 'app', 'note'), 1000, 1000);
    fs.symlinkSync(hostFile, path.join(tree, 'hostlink'));
    if (hasSetcap) {
      fs.copyFileSync('/bin/true', path.join(tree, 'bin', 'captool'));
      execFileSync('/usr/sbin/setcap', ['cap_net_bind_service+ep', path.join(tree, 'bin', 'captool')]);
    }
    image = path.join(work, 'image.sqfs');
    execFileSync('mksquashfs', [tree, image, '-noappend', '-no-progress', '-quiet']);
  });
  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  // The problem itself: the plain overlay (what nsgroup none gets) under a user namespace.
  describe('without a mapping (the plain overlay)', () => {
    let output = '';
    beforeAll(() => {
      const dir = path.join(work, 'baseline');
      for (const sub of ['image', 'root', 'scratch']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
      fs.chmodSync(dir, 0o755);
      const result = planRootfsIdmap({
        name: 'baseline',
        imageDir: path.join(dir, 'image'),
        lowerDir: path.join(dir, 'lower'),
        rootDir: path.join(dir, 'root'),
        upperDir: path.join(dir, 'scratch', 'upper'),
        workDir: path.join(dir, 'scratch', 'work'),
        idRange: null,
        kernelRelease: os.release(),
      });
      if (!result.ok) throw new Error(result.message);
      fs.writeFileSync(path.join(dir, 'plan.json'), JSON.stringify({ plan: result.plan, mountAttr: MOUNT_ATTR }));
      fs.writeFileSync(path.join(dir, 'execute-plan.py'), EXECUTOR);
      const bundleDir = writeBundle(dir, 'baseline', path.join(dir, 'root'), A, 0, [
        "busybox stat -c 'STAT %n %u %g %a' / /etc/secret /home/app/note",
        "busybox cat /etc/secret 2>/dev/null || echo 'DENIED read-secret'",
        "busybox touch /etc/x 2>/dev/null || echo 'DENIED write-etc'",
      ].join('\n'));
      output = inPrivateMountNamespace([
        `mount -t squashfs -o ro,nodev,nosuid,loop ${image} ${dir}/image`,
        `mount -t tmpfs -o mode=755 scratch ${dir}/scratch`,
        `mkdir ${dir}/scratch/upper ${dir}/scratch/work`,
        `python3 ${dir}/execute-plan.py ${dir}/plan.json`,
        `crun --root ${dir}/crun-state --cgroup-manager=disabled run -b ${bundleDir} mos-idm-baseline`,
      ].join('\n'));
    });

    it('shows the image as nobody\'s and keeps the container\'s root out of it', () => {
      expect(lines(output, 'STAT')).toEqual(['/ 65534 65534 755', '/etc/secret 65534 65534 600', '/home/app/note 65534 65534 644']);
      expect(lines(output, 'DENIED')).toEqual(['read-secret', 'write-etc']);
    });
  });

  describe.each<[RootfsStrategy, boolean]>([
    ['idmapped-lower', squashfsIdmap],
    ['shifted-upper', true],
  ])('%s', (strategy, runs) => {
    let output = '';
    let plans: Record<'a' | 'b', RootfsPlan>;
    let dir: string;

    beforeAll(() => {
      if (!runs) return;
      dir = path.join(work, strategy);
      fs.mkdirSync(dir, { mode: 0o755 });
      fs.chmodSync(dir, 0o755);
      const imageDir = path.join(dir, 'image');
      fs.mkdirSync(imageDir);
      const scratch = path.join(dir, 'scratch');
      fs.mkdirSync(scratch);
      const planFor = (name: 'a' | 'b', idRange: typeof A): RootfsPlan => {
        fs.mkdirSync(path.join(dir, `${name}-root`));
        const result = planRootfsIdmap({
          name,
          imageDir,
          lowerDir: path.join(dir, `${name}-lower`),
          rootDir: path.join(dir, `${name}-root`),
          upperDir: path.join(scratch, name, 'upper'),
          workDir: path.join(scratch, name, 'work'),
          idRange,
          kernelRelease: os.release(),
          strategy,
        });
        if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
        fs.writeFileSync(path.join(dir, `plan-${name}.json`), JSON.stringify({ plan: result.plan, mountAttr: MOUNT_ATTR }));
        return result.plan;
      };
      plans = { a: planFor('a', A), b: planFor('b', B) };
      fs.writeFileSync(path.join(dir, 'execute-plan.py'), EXECUTOR);

      const bundle = (name: string, rootfs: string, idRange: typeof A, uid: number, script: string, mounts: BundleMount[] = []): string =>
        writeBundle(dir, name, rootfs, idRange, uid, script, mounts);
      const aRoot = path.join(dir, 'a-root');
      const bRoot = path.join(dir, 'b-root');
      const stat = "busybox stat -c 'STAT %n %u %g %a'";
      const aRootBundle = bundle('a-root', aRoot, A, 0, [
        "busybox sed 's/^ */UIDMAP /' /proc/self/uid_map",
        `${stat} / /etc/secret /home/app /home/app/note /bin/suidfile /bin/busybox`,
        'echo "SECRET $(busybox cat /etc/secret)"',
        "echo new > /etc/newfile && echo 'WROTE etc'",
        "busybox touch /rootfile && echo 'WROTE root'",
        "echo mine > /tmp/mine && busybox chmod 600 /tmp/mine && echo 'WROTE mine'",
      ].join('\n'));
      const aUserBundle = bundle('a-user', aRoot, A, 1000, [
        "echo more >> /home/app/note && echo 'WROTE note'",
        "busybox cat /etc/secret 2>/dev/null || echo 'DENIED read-secret'",
        "(echo x >> /etc/secret) 2>/dev/null || echo 'DENIED write-secret'",
        "busybox touch /etc/app-file 2>/dev/null || echo 'DENIED write-etc'",
      ].join('\n'));
      const bBundle = bundle('b', bRoot, B, 0, [
        `${stat} /other/etc/secret /other/tmp/mine`,
        'echo "OWN $(busybox cat /etc/secret)"',
        "busybox cat /other/etc/secret 2>/dev/null || echo 'DENIED other-secret'",
        "busybox cat /other/tmp/mine 2>/dev/null || echo 'DENIED other-mine'",
      ].join('\n'), [{ source: aRoot, destination: '/other', readOnly: true }]);

      const state = path.join(dir, 'crun-state');
      const crun = (bundleDir: string, id: string): string => `crun --root ${state} --cgroup-manager=disabled run -b ${bundleDir} mos-idm-${strategy}-${id}`;
      const script = [
        `mount -t squashfs -o ro,nodev,nosuid,loop ${image} ${imageDir}`,
        `mount -t tmpfs -o mode=755 scratch ${scratch}`,
        ...['a', 'b'].map((name) => `mkdir -p ${scratch}/${name}/upper ${scratch}/${name}/work`),
        `python3 ${dir}/execute-plan.py ${dir}/plan-a.json`,
        `python3 ${dir}/execute-plan.py ${dir}/plan-b.json`,
        hasSetcap ? `echo "GETCAP $(getcap ${aRoot}/bin/captool)"` : 'true',
        crun(aRootBundle, 'a-root'),
        crun(aUserBundle, 'a-user'),
        crun(bBundle, 'b'),
        `stat -c 'HOST %n %u %g' ${scratch}/a/upper ${scratch}/a/upper/etc/newfile ${scratch}/a/upper/rootfile ${scratch}/a/upper/tmp/mine ${scratch}/a/upper/home/app/note`,
        `stat -c 'BLOCKS %n %b' ${scratch}/a/upper/bin/busybox 2>/dev/null || echo 'BLOCKS none'`,
        `stat -c 'HOSTFILE %u %g' ${hostFile}`,
      ].join('\n');
      output = inPrivateMountNamespace(script);
    });

    it.skipIf(!runs)('plans the strategy it was asked for', () => {
      expect(plans.a.strategy).toBe(strategy);
      expect(plans.b.strategy).toBe(strategy);
      expect(lines(output, 'STEP')).toEqual([...plans.a.steps, ...plans.b.steps].map((step) => step.op));
    });

    it.skipIf(!runs)("shows the image's own owners and modes to the container, never nobody", () => {
      expect(lines(output, 'UIDMAP').map((line) => line.trim().split(/\s+/))).toEqual([['0', '200000', '65536']]);
      expect(lines(output, 'STAT').slice(0, 6)).toEqual([
        '/ 0 0 755',
        '/etc/secret 0 0 600',
        '/home/app 1000 1000 755',
        '/home/app/note 1000 1000 644',
        '/bin/suidfile 0 0 4755',
        '/bin/busybox 0 0 755',
      ]);
      expect(lines(output, 'SECRET')).toEqual(['root-only']);
    });

    it.skipIf(!runs)('lets root and uid 1000 in the container write what they own, and only that', () => {
      expect(lines(output, 'WROTE')).toEqual(['etc', 'root', 'mine', 'note']);
      expect(lines(output, 'DENIED').slice(0, 3)).toEqual(['read-secret', 'write-secret', 'write-etc']);
      // The upper layer holds host ids of A's range.
      expect(lines(output, 'HOST').map((line) => line.split(' ').slice(1).join(' '))).toEqual([
        '200000 200000',
        '200000 200000',
        '200000 200000',
        '200000 200000',
        '201000 201000',
      ]);
    });

    it.skipIf(!runs)("keeps another nsgroup out of A's 0600 files", () => {
      expect(lines(output, 'STAT').slice(6)).toEqual(['/other/etc/secret 65534 65534 600', '/other/tmp/mine 65534 65534 600']);
      expect(lines(output, 'DENIED').slice(3)).toEqual(['other-secret', 'other-mine']);
      // B reads its own copy of the image's secret: its range owns it.
      expect(lines(output, 'OWN')).toEqual(['root-only']);
    });

    it.skipIf(!runs || !hasSetcap)('keeps file capabilities', () => {
      expect(lines(output, 'GETCAP')).toHaveLength(1);
      expect(lines(output, 'GETCAP')[0]).toContain('cap_net_bind_service=ep');
    });

    it.skipIf(!runs)('never follows a symlink of the image out of it', () => {
      expect(lines(output, 'HOSTFILE')).toEqual(['0 0']);
    });

    if (strategy === 'shifted-upper') {
      it.skipIf(!runs)('shifts every entry as planShiftEntry says, and copies no file data up', () => {
        const shifted = lines(output, 'SHIFT').map((line) => JSON.parse(line) as Shifted);
        const aEntries = shifted.filter((entry) => entry.path === path.join(dir, 'a-root') || entry.path.startsWith(`${path.join(dir, 'a-root')}/`));
        // The image's entries: / bin busybox sh suidfile (captool) etc secret home app note proc dev sys tmp hostlink.
        expect(aEntries.length).toBe(hasSetcap ? 16 : 15);
        expect(shifted.length).toBe(2 * aEntries.length);
        for (const entry of shifted) {
          const range = entry.path.startsWith(path.join(dir, 'a-root')) ? A : B;
          const decision = planShiftEntry(entry.path, entry.before, range);
          if (decision.action === 'refuse') throw new Error(decision.message);
          const expected = decision.action === 'chown' ? { uid: decision.uid, gid: decision.gid, mode: entry.before.mode } : entry.before;
          expect(entry.after, entry.path).toEqual(expected);
        }
        // With metacopy the chown copied only the inode: busybox has no data blocks in the upper layer.
        expect(lines(output, 'BLOCKS')).toEqual([`${path.join(dir, 'scratch', 'a', 'upper', 'bin', 'busybox')} 0`]);
      });
    } else {
      it.skipIf(!runs)('copies nothing up that the container did not write', () => {
        expect(lines(output, 'SHIFT')).toEqual([]);
        expect(lines(output, 'BLOCKS')).toEqual(['none']);
      });
    }
  });
});
