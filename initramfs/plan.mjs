// Pure parts of the image build (no I/O): file-list ordering, ldd parsing, kernel-module
// selection and modules.dep trimming, kernel config parsing and the UKI section layout.
// build.mjs does the effects; test/unit/initramfs-plan.test.ts tests these.
// Plain ESM with no dependencies: build.mjs runs before (and without) `npm ci`.

/** Byte-wise comparison of two strings (what `LC_ALL=C sort` does), independent of locale. */
export function compareBytes(a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * The cpio member list: relative paths (no leading "/" or "./"), with every parent directory
 * present, unique, in byte order. Byte order puts each directory before everything inside it
 * (a prefix sorts first), which the kernel's initramfs unpacker needs.
 */
export function planCpioList(paths) {
  const all = new Set();
  for (const raw of paths) {
    const clean = raw.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
    if (clean === '' || clean === '.') continue;
    const parts = clean.split('/');
    if (parts.some((part) => part === '' || part === '.' || part === '..')) throw new Error(`bad path in image: ${raw}`);
    for (let i = 1; i <= parts.length; i++) all.add(parts.slice(0, i).join('/'));
  }
  return [...all].sort(compareBytes);
}

/**
 * The fixed mode of an image entry (the host's umask and file modes never leak in):
 * directories 0755 (tmp 1777, root 0700), executables and shared objects 0755, the rest 0644.
 */
export function imageMode(relPath, kind, hostMode = 0) {
  if (kind === 'symlink') return 0o777;
  if (kind === 'dir') {
    if (relPath === 'tmp') return 0o1777;
    if (relPath === 'root') return 0o700;
    return 0o755;
  }
  const executable = (hostMode & 0o111) !== 0 || /\.so(\.\d+)*$/.test(relPath) || relPath.endsWith('.node');
  return executable ? 0o755 : 0o644;
}

/**
 * `ldd` output → the absolute paths of the shared objects it names, including the dynamic
 * loader, without the vDSO. Throws on "not found" (an image with a missing library must not
 * be built).
 */
export function parseLdd(text) {
  const found = [];
  const missing = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('linux-vdso.so') || line.startsWith('linux-gate.so')) continue;
    if (line === 'statically linked' || line === 'not a dynamic executable') continue;
    let match = /^(\S+) => not found$/.exec(line);
    if (match) {
      missing.push(match[1]);
      continue;
    }
    match = /^\S+ => (\/\S+) \(0x[0-9a-f]+\)$/.exec(line) ?? /^(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
    if (match) {
      found.push(match[1]);
      continue;
    }
    // `libfoo.so => (0x...)` with no path: virtual objects; anything else is unexpected.
    if (/^\S+ => +\(0x[0-9a-f]+\)$/.test(line)) continue;
    throw new Error(`unexpected ldd line: ${line}`);
  }
  if (missing.length > 0) throw new Error(`shared libraries not found: ${missing.join(', ')}`);
  return [...new Set(found)];
}

/**
 * Where a host path goes in the image. The image is merged-/usr like Debian 12: /bin, /sbin,
 * /lib and /lib64 are symlinks into /usr, so files are stored under usr/.
 */
export function imagePathFor(hostPath) {
  const rel = hostPath.replace(/^\/+/, '');
  const match = /^(bin|sbin|lib|lib64)(\/.*)?$/.exec(rel);
  return match ? `usr/${rel}` : rel;
}

/** `dm-verity.ko.xz`, `kernel/drivers/md/dm-verity.ko` or `dm_verity` → `dm_verity`. */
export function moduleName(pathOrName) {
  const base = pathOrName.split('/').pop() ?? pathOrName;
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replaceAll('-', '_');
}

/** A module path with any compression suffix dropped: what the image stores. */
export function decompressedModulePath(modulePath) {
  return modulePath.replace(/\.ko\.(xz|zst|gz)$/, '.ko');
}

/** The decompressor for a module file (argv without the file), or null when it is plain. */
export function moduleDecompressor(modulePath) {
  if (modulePath.endsWith('.ko.xz')) return ['xz', '-dc'];
  if (modulePath.endsWith('.ko.zst')) return ['zstd', '-dcq'];
  if (modulePath.endsWith('.ko.gz')) return ['gzip', '-dc'];
  return null;
}

/** `modules.dep` text → name → { path, deps (paths) }, in file order. */
export function parseModulesDep(text) {
  const modules = new Map();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`bad modules.dep line: ${line}`);
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    modules.set(moduleName(path), { path, deps });
  }
  return modules;
}

/** `modules.builtin` text → the set of built-in module names. */
export function parseModulesBuiltin(text) {
  return new Set(text.split('\n').map((line) => line.trim()).filter(Boolean).map(moduleName));
}

/**
 * The modules to ship for `wanted` names: each wanted module that is not built in, plus its
 * dependencies, in a load order (dependencies first; ties in `wanted` order). Names in
 * `wanted` may use "-" or "_". Throws when a name is neither a module nor built in.
 */
export function planModules(dep, builtin, wanted) {
  const builtinWanted = [];
  const order = [];
  const seen = new Set();
  const visit = (name, chain) => {
    if (seen.has(name)) return;
    const entry = dep.get(name);
    if (!entry) throw new Error(`module ${name} (needed by ${chain.join(' <- ')}) is not in modules.dep`);
    seen.add(name);
    // modules.dep lists a module's dependencies so that the last is loaded first.
    for (const depPath of [...entry.deps].reverse()) visit(moduleName(depPath), [moduleName(depPath), ...chain]);
    order.push(name);
  };
  for (const raw of wanted) {
    const name = moduleName(raw);
    if (builtin.has(name)) {
      if (!builtinWanted.includes(name)) builtinWanted.push(name);
      continue;
    }
    if (!dep.has(name)) throw new Error(`module ${raw} is neither built in nor in modules.dep`);
    visit(name, [name]);
  }
  return { load: order, builtin: builtinWanted, paths: order.map((name) => dep.get(name).path) };
}

/**
 * A `modules.dep` holding only `names`, with module paths as stored in the image
 * (decompressed to .ko), in the original file's order (so `modprobe` and init read it alike).
 */
export function trimModulesDep(dep, names) {
  const keep = new Set(names.map(moduleName));
  const lines = [];
  for (const [name, { path, deps }] of dep) {
    if (!keep.has(name)) continue;
    for (const depPath of deps) {
      if (!keep.has(moduleName(depPath))) throw new Error(`${name} depends on ${depPath}, which is not kept`);
    }
    const depText = deps.map(decompressedModulePath).join(' ');
    lines.push(`${decompressedModulePath(path)}:${depText ? ` ${depText}` : ''}`);
  }
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}

/** A kernel `config-<ver>` → symbol (without CONFIG_) → "y" | "m" | string value; unset → absent. */
export function parseKernelConfig(text) {
  const config = new Map();
  for (const line of text.split('\n')) {
    const match = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (match) config.set(match[1], match[2].replace(/^"(.*)"$/, '$1'));
  }
  return config;
}

/** `objdump -h` output → [{ name, size, vma }] (numbers). */
export function parseObjdumpSections(text) {
  const sections = [];
  for (const line of text.split('\n')) {
    const match = /^\s*\d+\s+(\S+)\s+([0-9a-fA-F]+)\s+([0-9a-fA-F]+)\s+[0-9a-fA-F]+\s+[0-9a-fA-F]+\s+2\*\*\d+\s*$/.exec(line);
    if (match) sections.push({ name: match[1], size: parseInt(match[2], 16), vma: parseInt(match[3], 16) });
  }
  return sections;
}

export const UKI_SECTION_ALIGN = 0x10000;

const alignUp = (value, align) => Math.ceil(value / align) * align;

/**
 * Addresses for the sections added to the systemd-stub, in the given order: each starts at the
 * next 64 KiB boundary after the stub's last section or the previous added one. With systemd
 * 252's stub (image base 0, last section ends at 0x19134) and a small .osrel and .cmdline this
 * gives .osrel=0x20000 .cmdline=0x30000 .linux=0x40000 .initrd=<after .linux>.
 */
export function computeUkiLayout(stubSections, added, align = UKI_SECTION_ALIGN) {
  if (stubSections.length === 0) throw new Error('the stub has no sections');
  let next = alignUp(Math.max(...stubSections.map((s) => s.vma + s.size)), align);
  const taken = new Set(stubSections.map((s) => s.name));
  return added.map(({ name, size }) => {
    if (taken.has(name)) throw new Error(`the stub already has a ${name} section`);
    if (!(size > 0)) throw new Error(`section ${name} is empty`);
    taken.add(name);
    const vma = next;
    next = alignUp(vma + size, align);
    return { name, size, vma };
  });
}

/** The kernel command line baked into a variant's UKI (direct boot passes its own -append). */
export function defaultCmdline(variant) {
  // test: every kernel line on the console (the harness reads it) and panic=-1, so a dead PID 1
  // reboots at once and QEMU's -no-reboot ends the run instead of a hang until the timeout.
  // prod: quiet, and panic=10: a device reboots by itself, but a person at the console gets
  // 10 s to read why. The test (and demo) machine lets the host steer it over the virtio-serial
  // control port (mos.debug_control=1): that is part of its signed command line, so a prod UKI
  // cannot be given it.
  return variant === 'test' ? 'console=ttyS0 panic=-1 mos.debug_control=1' : 'console=ttyS0 quiet panic=10';
}

/**
 * Sets a PE image's COFF TimeDateStamp (objcopy writes the current time and ignores
 * SOURCE_DATE_EPOCH) and recomputes the optional header's CheckSum. Edits `image` in place.
 */
export function setPeTimestamp(image, epoch) {
  if (image.readUInt16LE(0) !== 0x5a4d) throw new Error('not a PE image (no MZ)');
  const pe = image.readUInt32LE(0x3c);
  if (image.readUInt32LE(pe) !== 0x00004550) throw new Error('not a PE image (no PE signature)');
  image.writeUInt32LE(epoch >>> 0, pe + 8);
  const checksumOffset = pe + 4 + 20 + 64; // signature, COFF header, then CheckSum in the optional header
  image.writeUInt32LE(0, checksumOffset);
  image.writeUInt32LE(peChecksum(image, checksumOffset), checksumOffset);
  return image;
}

/** The PE CheckSum: 16-bit one's-complement-style sum of the file (CheckSum field as 0) plus its length. */
export function peChecksum(image, checksumOffset) {
  let sum = 0;
  const words = Math.floor(image.length / 2);
  for (let i = 0; i < words; i++) {
    const offset = i * 2;
    if (offset === checksumOffset || offset === checksumOffset + 2) continue;
    sum += image.readUInt16LE(offset);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  if (image.length % 2) {
    sum += image[image.length - 1];
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return ((sum & 0xffff) + image.length) >>> 0;
}

// ---- The guest kernel ------------------------------------------------------------------------
/**
 * The guest kernels an image can carry: Debian's signed cloud kernels (bzImage with Debian's
 * Secure Boot signature; modules signed), fetched with `apt-get download`, unpacked, never
 * installed. Pinned by version and sha256 (bump deliberately). Both come from bookworm-security.
 *
 * - `6.1`: Debian 12's own kernel. Modules are plain `.ko`; virtio, virtio_pci and virtio_console
 *   are modules; squashfs and tmpfs cannot be idmapped (docs/idmapped-mounts.md).
 * - `6.12`: Debian's 6.12 for bookworm (source linux-signed-6.12-amd64). Modules are `.ko.xz`
 *   (CONFIG_MODULE_COMPRESS_XZ, CONFIG_MODULE_DECOMPRESS=y; the image ships them decompressed,
 *   signature kept); virtio, virtio_ring, virtio_pci(_modern_dev/_legacy_dev) and virtio_console
 *   are built in; squashfs (6.2+) and tmpfs (6.3+) can be idmapped.
 */
export const KERNELS = Object.freeze({
  '6.1': Object.freeze({
    package: 'linux-image-6.1.0-56-cloud-amd64',
    version: '6.1.192-2',
    release: '6.1.0-56-cloud-amd64',
    sha256: 'e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee',
  }),
  '6.12': Object.freeze({
    package: 'linux-image-6.12.117+deb12-cloud-amd64',
    version: '6.12.117-1~deb12u1',
    release: '6.12.117+deb12-cloud-amd64',
    sha256: '5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37',
  }),
});

/**
 * The kernel a build uses when neither `--kernel` nor $MOS_KERNEL chooses one: 6.12, whose squashfs
 * and tmpfs can be idmapped (containers see their image's owners; docs/idmapped-mounts.md). 6.1
 * stays selectable (`MOS_KERNEL=6.1`): there a container's image files show as nobody.
 */
export const DEFAULT_KERNEL = '6.12';

/** The environment variable that chooses the kernel (build.mjs and the VM harness both read it). */
export const KERNEL_ENV = 'MOS_KERNEL';

/**
 * The kernel to build for or boot: `choice` (an id of KERNELS; undefined or "" means the
 * default) → `{ id, package, version, release, sha256 }`. Throws on an unknown id.
 */
export function selectKernel(choice) {
  const id = choice === undefined || choice === null || choice === '' ? DEFAULT_KERNEL : String(choice);
  if (!Object.hasOwn(KERNELS, id)) {
    throw new Error(`unknown kernel "${id}" (${KERNEL_ENV} or --kernel): one of ${Object.keys(KERNELS).join(', ')}`);
  }
  return { id, ...KERNELS[id] };
}

/**
 * Where the images of kernel `id` go under the build root: the default kernel's in the root
 * itself (build/, as always), any other's in `<root>/kernel-<id>`, so the two builds never
 * overwrite each other (their work trees, UKI variants and build locks are separate too).
 */
export function kernelOutDir(buildRoot, id) {
  const root = buildRoot.replace(/\/+$/, '') || '/';
  return id === DEFAULT_KERNEL ? root : `${root === '/' ? '' : root}/kernel-${id}`;
}
