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
  mosb: { entry: 'mosb/cli.ts', testHooks: false },
};
/**
 * The YAML parser is its own file, dist/mos-yaml.mjs, which the bundles import on demand
 * (`await import('yaml')` in init/supervisor/spec.ts): inlined, its ~250 KB of source would stay
 * in every mos-init's memory even when every service file is JSON.
 */
const yamlOnDemand = {
  name: 'yaml-on-demand',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^yaml$/ }, (args) =>
      args.kind === 'dynamic-import' ? { path: './mos-yaml.mjs', external: true } : undefined,
    );
  },
};
await build({
  stdin: { contents: "export { parseDocument } from 'yaml';", resolveDir: root, loader: 'js' },
  outfile: path.join(dist, 'mos-yaml.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // yaml is CommonJS and calls require('process').
  banner: { js: "import { createRequire as __mosCreateRequire } from 'node:module';\nconst require = __mosCreateRequire(import.meta.url);" },
  logLevel: 'warning',
  legalComments: 'none',
  charset: 'ascii',
  minifyWhitespace: true,
});
for (const [name, { entry, testHooks }] of Object.entries(entries)) {
  await build({
    plugins: [yamlOnDemand],
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
    // V8 keeps the source for lazy compiling for the life of the process, as UTF-16 if a single
    // character (of a comment, too) is not ASCII: ASCII only and no comments or indentation
    // halve it. Names stay, so stack traces still read (their line:column are the bundle's).
    charset: 'ascii',
    minifyWhitespace: true,
  });
}
for (const file of ['mos_native.node', 'mos_tpm.node']) {
  const addon = path.join(root, 'native', 'build', 'Release', file);
  if (!existsSync(addon)) continue;
  // A running mos-init has the old addon mapped: overwriting that file in place would change
  // code under it (SIGSEGV on its next native call). A new file renamed over the old name
  // leaves the mapped one intact.
  const target = path.join(dist, file);
  const staging = `${target}.${process.pid}.tmp`;
  copyFileSync(addon, staging);
  renameSync(staging, target);
}
console.log(`bundled ${[...Object.keys(entries), 'mos-yaml'].map((name) => `dist/${name}.mjs`).join(', ')}`);
