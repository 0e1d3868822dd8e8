#!/usr/bin/env node
// `npm run demo`: boots the demo machine in QEMU (OVMF + Secure Boot + swtpm) and steers it
// from the host with mosctl (vm-tests/demo.ts). `npm run demo:host` runs services like the demo
// machine's without a VM, in host mode.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { importTypeScript } from '../vm-tests/import-ts.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
process.env.MOS_REPO_ROOT = root;
// Adds ~70 ms to every Node start, mosctl's included.
delete process.env.NODE_EXTRA_CA_CERTS;
const demo = await importTypeScript(path.join(root, 'vm-tests', 'demo.ts'));
process.exit(await demo.main());
