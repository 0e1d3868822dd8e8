/**
 * mos-init entry point: parses the command line and wires the ports. No logic lives here.
 *
 *   mos-init --host --config FILE --state-dir DIR   supervise FILE's services as a normal process
 *   mos-init --check --config FILE                  validate FILE and exit (0 valid, 1 invalid)
 *   mos-init                                         as PID 1: boot the machine (docs/boot.md)
 *   mos-init --pid1 --no-early-mounts [--config FILE] [--state-dir DIR] [--console PATH|-]
 *            [--cmdline TEXT] [--trust-ca FILE]      PID 1 of a PID namespace (tests; --trust-ca
 *                                                    only in the test bundle)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadNative } from '../native/index.ts';
import { createLogger } from './log/logger.ts';
import { ConfigError, parseServiceFile } from './supervisor/spec.ts';

/**
 * A supervisor is mostly idle and must stay small: without the optimizing compilers and with a
 * young generation that does not grow, mos at 100 services uses ~9 MB less (RSS 60 → 51 MB,
 * measured on the host); baseline-compiled code keeps log bursts fast.
 */
const V8_FLAGS = '--no-opt --no-maglev --semi-space-growth-factor=1';

const USAGE = `usage: mos-init --host --config FILE --state-dir DIR
       mos-init --check --config FILE
       mos-init --pid1 [--no-early-mounts] [--config FILE] [--state-dir DIR] [--console PATH|-] [--cmdline TEXT] [--trust-ca FILE]`;

/** Set by esbuild's `define` for dist/mos-init-test.cjs only; undefined everywhere else. */
declare const MOS_TEST_HOOKS: boolean | undefined;
const TEST_HOOKS = typeof MOS_TEST_HOOKS !== 'undefined' && MOS_TEST_HOOKS === true;

/**
 * PID 1 never exits, whatever fails here: without the addon it cannot even reap, so it says why
 * on the console and waits (the kernel would panic if it exited).
 */
function pid1CannotStart(message: string): void {
  try {
    writeFileSync('/dev/console', `mos: emergency: ${message}\n`);
  } catch {
    // No console either: nothing more to do.
  }
  setInterval(() => {}, 1 << 30);
}

async function pid1Main(): Promise<void> {
  // The kernel passes unknown command-line words to init as arguments: never fail on them.
  const { values } = parseArgs({
    options: {
      pid1: { type: 'boolean' },
      'no-early-mounts': { type: 'boolean' },
      config: { type: 'string' },
      'state-dir': { type: 'string' },
      console: { type: 'string' },
      cmdline: { type: 'string' },
      'trust-ca': { type: 'string' },
    },
    strict: false,
    allowPositionals: true,
  });
  const text = (value: unknown) => (typeof value === 'string' ? value : null);
  let native;
  try {
    native = loadNative();
  } catch (error) {
    pid1CannotStart((error as Error).message);
    return;
  }
  native.setV8Flags(V8_FLAGS);
  const initMainMs = native.bootTimeMs();
  // Each mode loads only its own code: the boot and trust modules' start-up work and memory
  // have no business in host mode, nor host mode's in PID 1 (dynamic imports stay in the one
  // bundle file, evaluated on first use).
  const { PID1_DEFAULTS, runPid1 } = await import('./boot/pid1.ts');
  runPid1({
    native,
    configPath: text(values.config),
    stateDir: text(values['state-dir']) ?? PID1_DEFAULTS.stateDir,
    earlyMounts: values['no-early-mounts'] !== true,
    consolePath: text(values.console) ?? PID1_DEFAULTS.consolePath,
    cmdlineText: text(values.cmdline),
    testHooks: TEST_HOOKS,
    // The embedded manifest CA is part of the signed image: only a test bundle started with
    // --pid1 (a namespace test) may name another one.
    ...(TEST_HOOKS && values.pid1 === true && text(values['trust-ca']) !== null ? { trustCaPath: text(values['trust-ca'])! } : {}),
    initExecMs: initMainMs - process.uptime() * 1000,
    initMainMs,
  });
}

function fail(message: string, code = 64): never {
  process.stderr.write(`mos-init: ${message}\n${USAGE}\n`);
  process.exit(code);
}

async function check(configPath: string): Promise<never> {
  try {
    const specs = await parseServiceFile(readFileSync(configPath, 'utf8'), configPath);
    process.stdout.write(`${configPath}: ${specs.length} services, valid\n`);
    process.exit(0);
  } catch (error) {
    const message = error instanceof ConfigError ? error.problems.map((p) => `  ${p}`).join('\n') : `  ${(error as Error).message}`;
    process.stderr.write(`${configPath}: invalid\n${message}\n`);
    process.exit(1);
  }
}

async function main(): Promise<void> {
  if (process.pid === 1) return pid1Main();
  if (process.argv.includes('--pid1')) {
    // Only as PID 1 of a PID namespace: reboot(2) and kill(-1) from anywhere else hit the host.
    fail('--pid1 needs to run as PID 1 (e.g. unshare --pid --fork --mount --mount-proc ...)');
  }
  let args;
  try {
    args = parseArgs({
      options: {
        host: { type: 'boolean' },
        check: { type: 'boolean' },
        config: { type: 'string' },
        'state-dir': { type: 'string' },
      },
      strict: true,
    }).values;
  } catch (error) {
    fail((error as Error).message);
  }
  if (args.check) {
    if (!args.config) fail('--check needs --config FILE');
    await check(args.config);
  }
  if (!args.host) fail('say --host to supervise as an ordinary process (PID-1 mode starts only as PID 1)');
  if (!args.config || !args['state-dir']) fail('--host needs --config FILE and --state-dir DIR');

  // Synchronous writes: a log line must never be lost to a crash or wait on the event loop.
  let logger;
  try {
    logger = createLogger({ level: process.env.MOS_LOG_LEVEL ?? 'info', base: { mos: process.pid }, destination: { fd: 2 } });
  } catch (error) {
    fail(`MOS_LOG_LEVEL: ${(error as Error).message}`);
  }
  const native = loadNative();
  native.setV8Flags(V8_FLAGS);
  const { runHostMode } = await import('./host-mode.ts');
  const host = await runHostMode({ configPath: args.config, stateDir: args['state-dir'], native, logger });

  // An unexpected error must not take the services down with the supervisor: report it and
  // show it in the status; the supervisor keeps running.
  process.on('uncaughtException', (error) => {
    logger.fatal({ err: error }, 'unexpected error');
    host.supervisor.setHealth('emergency', `unexpected error: ${error.message}`);
  });
  process.on('unhandledRejection', (error) => {
    logger.fatal({ err: error }, 'unhandled rejection');
    host.supervisor.setHealth('emergency', `unhandled rejection: ${String(error)}`);
  });
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      void host.shutdown(signal).then(() => process.exit(0));
    });
  }
}

void main().catch((error: unknown) => {
  if (process.pid === 1) return pid1CannotStart((error as Error).stack ?? String(error));
  process.stderr.write(`mos-init: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(70);
});
