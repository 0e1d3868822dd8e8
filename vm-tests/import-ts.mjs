// Node 20 cannot run TypeScript: bundle one entry with esbuild (a devDependency, ~0.1 s) into a
// temp file and import it. Used by the by-hand runners (vm-tests/run.mjs, scripts/demo.mjs).
// The temp file lives under the checkout's node_modules/.cache so that the packages left
// external (yaml, valibot: mosb and init/trust, which the trust cases use) resolve from it.
import { build } from 'esbuild';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export async function importTypeScript(entry) {
  const cache = path.join(path.dirname(path.dirname(fileURLToPath(import.meta.url))), 'node_modules', '.cache');
  let tmp;
  try {
    mkdirSync(cache, { recursive: true });
    tmp = mkdtempSync(path.join(cache, 'mos-ts-'));
  } catch {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'mos-ts-'));
  }
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
