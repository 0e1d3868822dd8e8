#!/usr/bin/env node
// `npm run demo`: boots the demo machine in QEMU (OVMF + Secure Boot + swtpm) and steers it
// from the host with mosctl (vm-tests/demo.ts). Node 20 cannot run TypeScript, so this bundles
// the demo with esbuild (a devDependency) first. `npm run demo:host` runs the same services
// without a VM, in host mode.
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
process.env.MOS_REPO_ROOT = root;
// Adds ~70 ms to every Node start, mosctl's included.
delete process.env.NODE_EXTRA_CA_CERTS;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'mos-demo-'));
const outfile = path.join(tmp, 'demo.mjs');
await build({
  entryPoints: [path.join(root, 'vm-tests', 'demo.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  logLevel: 'warning',
});
let demo;
try {
  demo = await import(pathToFileURL(outfile).href);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(await demo.main());
