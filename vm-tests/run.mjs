#!/usr/bin/env node
// Runs VM cases by hand with the console live: `node vm-tests/run.mjs [case...]` (see README.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { importTypeScript } from './import-ts.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
process.env.MOS_REPO_ROOT = path.dirname(here);
delete process.env.NODE_EXTRA_CA_CERTS;
const cli = await importTypeScript(path.join(here, 'cli.ts'));
// Exit explicitly (cleanup has run inside each case): nothing we started may keep us alive.
cli.main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
