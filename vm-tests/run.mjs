#!/usr/bin/env node
// Runs VM cases by hand with the console live: `node vm-tests/run.mjs [case...]` (see README.md).
// Node 20 cannot run TypeScript, so this bundles vm-tests/cli.ts with esbuild (a devDependency)
// into a temp file first (~0.1 s) and runs that.
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'mos-vm-cli-'));
const outfile = path.join(tmp, 'cli.mjs');
process.env.MOS_REPO_ROOT = path.dirname(here);
delete process.env.NODE_EXTRA_CA_CERTS;
await build({
  entryPoints: [path.join(here, 'cli.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  logLevel: 'warning',
});
let cli;
try {
  cli = await import(pathToFileURL(outfile).href);
} finally {
  // Loaded once imported: the temp copy can go at once.
  rmSync(tmp, { recursive: true, force: true });
}
// Exit explicitly (cleanup has run inside each case): nothing we started may keep us alive.
cli.main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
