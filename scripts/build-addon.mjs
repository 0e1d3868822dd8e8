#!/usr/bin/env node
// Builds the native addon (native/build/Release/mos_native.node) with node-gyp, offline.
//
// npm does not run install scripts of dependencies here, so nothing builds the addon implicitly:
// `npm run build:addon` does. It uses the Node headers already on the machine (--nodedir), never
// downloads any, and skips the build when the addon is newer than its sources (unless --force).
//
// Only Node builtins: this runs before anything else of the project is compiled.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const nativeDir = path.join(repoRoot, 'native');
const addonPath = path.join(nativeDir, 'build', 'Release', 'mos_native.node');
/** Built by the same binding.gyp: the TPM port, loaded on first use (native/index.ts). */
const tpmAddonPath = path.join(nativeDir, 'build', 'Release', 'mos_tpm.node');
const nodeGyp = path.join(repoRoot, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const force = process.argv.includes('--force');

function fail(message) {
  console.error(`build-addon: ${message}`);
  process.exit(1);
}

/** Headers of the running Node: the distro's (/usr/include/node) or those next to the binary. */
function findNodeDir() {
  const candidates = ['/usr', path.dirname(path.dirname(process.execPath))];
  for (const dir of candidates) {
    if (existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) return dir;
  }
  fail(
    `no Node headers found (looked for include/node/node_api.h under ${candidates.join(' and ')}); ` +
      'install them (Debian: apt-get install libnode-dev) or use a Node distribution that ships them',
  );
}

function sourceFiles() {
  const files = [path.join(nativeDir, 'binding.gyp')];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else files.push(full);
    }
  };
  walk(path.join(nativeDir, 'src'));
  return files;
}

function isUpToDate() {
  if (!existsSync(addonPath) || !existsSync(tpmAddonPath)) return false;
  const builtAt = Math.min(statSync(addonPath).mtimeMs, statSync(tpmAddonPath).mtimeMs);
  return sourceFiles().every((file) => statSync(file).mtimeMs < builtAt);
}

if (!existsSync(nodeGyp)) fail(`node-gyp is missing (${nodeGyp}): run npm install first`);

if (!force && isUpToDate()) {
  console.log('addon up to date');
  process.exit(0);
}

const nodeDir = findNodeDir();
const env = {
  ...process.env,
  // binding.gyp runs `node -p` to find node-addon-api; make it the node running this script.
  PATH: [path.dirname(process.execPath), process.env.PATH ?? ''].join(path.delimiter),
  // Belt and braces against any download attempt: headers come from --nodedir, nothing else.
  npm_config_nodedir: nodeDir,
  npm_config_offline: 'true',
};
// A CA bundle is only relevant for downloads, which never happen; a stale path must not matter.
if (env.NODE_EXTRA_CA_CERTS && !existsSync(env.NODE_EXTRA_CA_CERTS)) delete env.NODE_EXTRA_CA_CERTS;

const args = [nodeGyp, 'rebuild', '--directory', nativeDir, `--nodedir=${nodeDir}`, '--jobs=max'];
console.log(`build-addon: node-gyp rebuild (nodedir ${nodeDir})`);
const result = spawnSync(process.execPath, args, { cwd: repoRoot, env, stdio: 'inherit' });
if (result.error) fail(`cannot run node-gyp: ${result.error.message}`);
if (result.status !== 0) fail(`node-gyp failed (exit ${result.status ?? result.signal})`);
for (const built of [addonPath, tpmAddonPath]) {
  if (!existsSync(built)) fail(`node-gyp succeeded but ${built} is missing`);
}
console.log(`build-addon: built ${path.relative(repoRoot, addonPath)} and ${path.relative(repoRoot, tpmAddonPath)}`);
