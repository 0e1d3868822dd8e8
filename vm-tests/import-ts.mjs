// Node 20 cannot run TypeScript: bundle one entry with esbuild (a devDependency, ~0.1 s) into a
// temp file and import it. Used by the by-hand runners (vm-tests/run.mjs, scripts/demo.mjs).
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export async function importTypeScript(entry) {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'mos-ts-'));
  const outfile = path.join(tmp, `${path.basename(entry, '.ts')}.mjs`);
  await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    logLevel: 'warning',
  });
  try {
    return await import(pathToFileURL(outfile).href);
  } finally {
    // Loaded once imported: the temp copy can go at once.
    rmSync(tmp, { recursive: true, force: true });
  }
}
