/**
 * `node vm-tests/run.mjs [case...]`: runs VM cases by hand with the guest console shown live,
 * then a table of timings. A case is picked by number (`1`, `01`), folder name, or part of one.
 * Options: --quiet (no live console), --list.
 */
import { runCase, type CaseResult } from './harness/case.ts';
import { ensureVmPackages } from './harness/deps.ts';
import { cases, selectCases } from './cases/index.ts';

export async function main(argv: string[]): Promise<number> {
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  const selectors = argv.filter((a) => !a.startsWith('--'));
  if (flags.has('--help') || flags.has('-h')) {
    process.stdout.write('usage: node vm-tests/run.mjs [--quiet] [--list] [case...]\n');
    return 0;
  }
  if (flags.has('--list')) {
    for (const c of cases) process.stdout.write(`${c.id}\t${c.title}\n`);
    return 0;
  }
  const chosen = selectCases(selectors);
  if (chosen.length === 0) {
    process.stderr.write(`no case matches ${selectors.join(' ')} (see --list)\n`);
    return 64;
  }
  ensureVmPackages();
  const log = (line: string) => process.stderr.write(`\x1b[36m${line}\x1b[0m\n`);
  const results: (CaseResult & { ok: boolean; error?: string })[] = [];
  for (const vmCase of chosen) {
    log(`=== ${vmCase.id}: ${vmCase.title}`);
    const started = Date.now();
    try {
      const timeout = new Promise<never>((_, reject) => {
        setTimeout(() => reject(new Error(`${vmCase.id} exceeded its ${vmCase.timeoutMs} ms limit`)), vmCase.timeoutMs).unref();
      });
      const result = await Promise.race([runCase(vmCase, { live: !flags.has('--quiet'), log }), timeout]);
      results.push({ ...result, ok: true });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      log(`${vmCase.id} FAILED: ${message}`);
      results.push({ id: vmCase.id, seconds: (Date.now() - started) / 1000, steps: [], ok: false, error: message.split('\n')[0] });
    }
  }
  process.stdout.write('\n');
  for (const r of results) {
    process.stdout.write(`${r.ok ? 'PASS' : 'FAIL'}  ${r.id.padEnd(22)} ${r.seconds.toFixed(1).padStart(6)} s${r.error ? `  ${r.error}` : ''}\n`);
    for (const s of r.steps) process.stdout.write(`        +${s.seconds.toFixed(1).padStart(5)} s  ${s.label}\n`);
  }
  return results.every((r) => r.ok) ? 0 : 1;
}
