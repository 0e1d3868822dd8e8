/**
 * The VM cases (vm-tests/cases/NN-name/case.ts) under vitest: the `vm` project runs this file with
 * long timeouts and one file at a time. Needs root (QEMU, swtpm, apt-get). MOS_VM=0 skips it.
 * One case by hand, with the console shown live: `node vm-tests/run.mjs 01`.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCase } from './harness/case.ts';
import { ensureVmPackages } from './harness/deps.ts';
import { defaultImages, ensureImages } from './harness/images.ts';
import { ukiVariant } from './harness/uki.ts';
import { cases } from './cases/index.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const isRoot = process.getuid?.() === 0;
const enabled = isRoot && process.env.MOS_VM !== '0';
const log = (line: string) => console.log(line);

describe.skipIf(!enabled)('vm', () => {
  beforeAll(() => {
    ensureVmPackages();
    // Build once up front when needed; a failure here is reported by each case that needs it.
    try {
      ensureImages(['direct', 'uefi'], log);
    } catch (error) {
      log(`vm: images not ready: ${error instanceof Error ? error.message : String(error)}`);
    }
  }, 20 * 60_000);

  it('lists every case folder', () => {
    const folders = readdirSync(path.join(here, 'cases'), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name);
    expect(cases.map((c) => c.id)).toEqual(folders.sort());
  });

  it('a UKI variant with the test command line is the build\'s mos-test.efi, byte for byte', async () => {
    const images = defaultImages();
    if (!existsSync(images.uki) || !existsSync(`${images.initrd}.zst`)) return;
    const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'mos-uki-'));
    try {
      const variant = await ukiVariant(images.cmdline, { cacheDir });
      const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
      expect(variant.cached).toBe(false);
      expect(sha(variant.uki)).toBe(sha(images.uki));
      expect((await ukiVariant(images.cmdline, { cacheDir })).cached).toBe(true);
    } finally {
      rmSync(cacheDir, { recursive: true, force: true });
    }
  }, 120_000);

  for (const vmCase of cases) {
    it(`${vmCase.id}: ${vmCase.title}`, async () => {
      const result = await runCase(vmCase, { log });
      log(`${vmCase.id}: passed in ${result.seconds.toFixed(1)} s`);
    }, vmCase.timeoutMs);
  }
});
