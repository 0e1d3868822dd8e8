#!/usr/bin/env node
// Makes a fresh Debian 12 checkout ready to test, demo and benchmark: installs what is missing
// (Debian packages, npm dependencies), builds the addon and the bundles. Idempotent and quiet
// when everything is already there. Plain Node with no dependencies: it runs before `npm ci`.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

/** Debian packages the tests use as real peers and test clients (command → package). */
const APT_COMMANDS = {
  python3: 'python3', // sd_notify test clients (Node cannot send unix datagrams)
  perl: 'perl', // the orphan-storm generator
  make: 'make',
  g: 'g++',
  'pkg-config': 'pkg-config', // native/binding.gyp finds the TSS libraries with it
  '/usr/include/tss2/tss2_esys.h': 'libtss2-dev', // the addon's TPM port (native/src/tpm.cc)
  tpm2_nvread: 'tpm2-tools', // the TPM test oracle
  swtpm: 'swtpm', // the software TPM of the TPM tests
  skopeo: 'skopeo', // reads mosb's OCI layouts in its tests (an independent reader)
  umoci: 'umoci', // lists mosb's OCI layouts in its tests (an independent reader)
  openssl: 'openssl', // mosb makes keys and certificates with it; the signature oracle in its tests
  mksquashfs: 'squashfs-tools', // mosb turns service images into squashfs layers with it
  veritysetup: 'cryptsetup-bin', // mosb appends the dm-verity hash tree; the verity oracle in tests
  'mkfs.ext4': 'e2fsprogs', // storage volumes (test images; the initramfs ships its own copy)
  '/bin/busybox': 'busybox-static', // the program in the VM tests' service images (runs without libraries)
  zstd: 'zstd', // mosb reads tar+zstd source layers through it (umoci cannot)
  crun: 'crun', // runs the generated OCI bundles in the privileged tests (and in the image)
  ip: 'iproute2', // simple networks (bridge, veth, netns) in the network tests
  nft: 'nftables', // port forwards and outbound NAT in the network tests
  nsenter: 'util-linux', // the network tests run commands inside their namespaces
  curl: 'curl', // npm run demo reaches the container web service through the port forward
  '/usr/share/containers/seccomp.json': 'golang-github-containers-common', // the seccomp template of every container (services/seccomp.ts)
};

function run(command, args, options = {}) {
  execFileSync(command, args, { stdio: 'inherit', cwd: root, ...options });
}

function hasCommand(name) {
  if (name.startsWith('/')) return existsSync(name); // a file the package installs (headers)
  const command = name === 'g' ? 'g++' : name;
  return ['/usr/bin', '/bin', '/usr/sbin', '/sbin', '/usr/local/bin'].some((dir) => existsSync(path.join(dir, command)));
}

function ensureAptPackages(commands) {
  const missing = [...new Set(Object.entries(commands).filter(([command]) => !hasCommand(command)).map(([, pkg]) => pkg))];
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`missing Debian packages (run as root to install): ${missing.join(' ')}`);
  console.log(`setup: apt-get install ${missing.join(' ')}`);
  run('apt-get', ['update', '-qq']);
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

function ensureNodeModules() {
  const installed = path.join(root, 'node_modules', '.package-lock.json');
  const lock = path.join(root, 'package-lock.json');
  if (existsSync(installed) && statSync(installed).mtimeMs >= statSync(lock).mtimeMs) return;
  console.log('setup: npm ci');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

export function setup({ aptCommands = {} } = {}) {
  ensureAptPackages({ ...APT_COMMANDS, ...aptCommands });
  ensureNodeModules();
  run(process.execPath, [path.join(root, 'scripts', 'build-addon.mjs')]);
  run(process.execPath, [path.join(root, 'scripts', 'build-bundle.mjs')]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) setup();
