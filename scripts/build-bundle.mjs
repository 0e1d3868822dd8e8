#!/usr/bin/env node
// Bundles mos-init and mosctl into single files (esbuild): one file starts about twice as fast
// as the unbundled tree, which matters for PID 1 and for every mosctl call. The addon is copied
// beside the bundles, where native/index.ts looks for it first.
import { copyFileSync, existsSync, mkdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const dist = path.join(root, 'dist');
mkdirSync(dist, { recursive: true });

// mos-init-test.mjs is mos-init with the test hooks compiled in (MOS_TEST_HOOKS: the kernel
// command line's mos.test_crash= is honoured). Only test images ship it; in the production bundle
// the define is false, so that code is unreachable.
const entries = {
  'mos-init': { entry: 'init/main.ts', testHooks: false },
  'mos-init-test': { entry: 'init/main.ts', testHooks: true },
  mosctl: { entry: 'mosctl/cli.ts', testHooks: false },
};
for (const [name, { entry, testHooks }] of Object.entries(entries)) {
  await build({
    define: { MOS_TEST_HOOKS: testHooks ? 'true' : 'false' },
    entryPoints: [path.join(root, entry)],
    outfile: path.join(dist, `${name}.mjs`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Some dependencies are CommonJS and call require(); give the ESM bundle one.
    banner: { js: "#!/usr/bin/env node\nimport { createRequire as __mosCreateRequire } from 'node:module';\nconst require = __mosCreateRequire(import.meta.url);" },
    logLevel: 'warning',
    legalComments: 'none',
  });
}
const addon = path.join(root, 'native', 'build', 'Release', 'mos_native.node');
if (existsSync(addon)) {
  // A running mos-init has the old addon mapped: overwriting that file in place would change
  // code under it (SIGSEGV on its next native call). A new file renamed over the old name
  // leaves the mapped one intact.
  const target = path.join(dist, 'mos_native.node');
  const staging = `${target}.${process.pid}.tmp`;
  copyFileSync(addon, staging);
  renameSync(staging, target);
}
console.log(`bundled ${Object.keys(entries).map((name) => `dist/${name}.mjs`).join(', ')}`);
