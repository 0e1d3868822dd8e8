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

// mos-init-test.cjs is mos-init with the test hooks compiled in (MOS_TEST_HOOKS: the kernel
// command line's mos.test_crash= is honoured). Only test images ship it; in the production bundle
// the define is false, so that code is unreachable.
//
// mos-init is CommonJS: PID 1 then never loads Node's ESM loader (~1.7 MB of RSS for the life
// of the machine). The tools stay ESM.
const entries = {
  'mos-init': { entry: 'init/main.ts', testHooks: false, format: 'cjs' },
  'mos-init-test': { entry: 'init/main.ts', testHooks: true, format: 'cjs' },
  mosctl: { entry: 'mosctl/cli.ts', testHooks: false, format: 'esm' },
  mosb: { entry: 'mosb/cli.ts', testHooks: false, format: 'esm' },
};
const BANNER = {
  // Some dependencies are CommonJS and call require(); give the ESM bundles one.
  esm: "#!/usr/bin/env node\nimport { createRequire as __mosCreateRequire } from 'node:module';\nconst require = __mosCreateRequire(import.meta.url);",
  // import.meta.url (native/index.ts finds the addon beside the bundle) in CommonJS terms.
  cjs: "#!/usr/bin/env node\n'use strict';\nconst __mosImportMetaUrl = require('node:url').pathToFileURL(__filename).href;",
};
/**
 * The YAML parser is its own file, dist/mos-yaml.cjs, which mos-init requires on first use
 * (init/supervisor/yaml-loader.ts, replaced here): inlined, its ~250 KB of source would stay in
 * every mos-init's memory even when every service file is JSON.
 */
const yamlOnDemand = {
  name: 'yaml-on-demand',
  setup(pluginBuild) {
    pluginBuild.onLoad({ filter: /init\/supervisor\/yaml-loader\.ts$/ }, () => ({
      contents: "export async function loadYaml() { return require('./mos-yaml.cjs'); }",
      loader: 'js',
    }));
    pluginBuild.onResolve({ filter: /^\.\/mos-yaml\.cjs$/ }, (args) => ({ path: args.path, external: true }));
  },
};
await build({
  stdin: { contents: "module.exports = { parseDocument: require('yaml').parseDocument };", resolveDir: root, loader: 'js' },
  outfile: path.join(dist, 'mos-yaml.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'warning',
  legalComments: 'none',
  charset: 'ascii',
  minifyWhitespace: true,
});
for (const [name, { entry, testHooks, format }] of Object.entries(entries)) {
  await build({
    plugins: format === 'cjs' ? [yamlOnDemand] : [],
    define: { MOS_TEST_HOOKS: testHooks ? 'true' : 'false', ...(format === 'cjs' ? { 'import.meta.url': '__mosImportMetaUrl' } : {}) },
    entryPoints: [path.join(root, entry)],
    outfile: path.join(dist, `${name}.${format === 'cjs' ? 'cjs' : 'mjs'}`),
    bundle: true,
    platform: 'node',
    format,
    target: 'node20',
    banner: { js: BANNER[format] },
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
console.log(`bundled ${Object.entries(entries).map(([name, { format }]) => `dist/${name}.${format === 'cjs' ? 'cjs' : 'mjs'}`).join(', ')}, dist/mos-yaml.cjs`);
