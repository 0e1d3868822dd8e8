#!/usr/bin/env node
// Side-by-side benchmark of mos against s6 (s6-svscan + s6-supervise) and runit (runsvdir +
// runsv), all three measured in the same run on the same machine with the same probe service.
// See bench/README.md for what each number means. Usage: node bench/run.mjs [--quick]
//
// Plain Node, no dependencies: it runs right after scripts/setup.mjs.
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { hostFacts } from './host-facts.mjs';
import { QUIET_BUSY_FRACTION, createQuietWaiter } from './host-quiet.mjs';

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const BENCH_DIR = path.join(ROOT, 'bench');
const WORK_DIR = path.join(BENCH_DIR, 'work');
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const PROBE_SOURCE = path.join(BENCH_DIR, 'probe.c');
const PROBE = path.join(WORK_DIR, 'probe');
/** The build to measure: dist/, or another copy of it (`MOS_DIST=DIR`, e.g. an instrumented one). */
const DIST = process.env.MOS_DIST ? path.resolve(process.env.MOS_DIST) : path.join(ROOT, 'dist');
const MOS_FILES = ['mos-init.cjs', 'mosctl.mjs', 'mos-yaml.cjs', 'mos_native.node', 'mos_tpm.node'];
/** mos runs from a private copy of dist/ (see snapshotMos), set in main(). */
let MOS_INIT = path.join(DIST, 'mos-init.cjs');
let MOSCTL = path.join(DIST, 'mosctl.mjs');

const QUICK = process.argv.includes('--quick');
/** `--only=long-mos,long-s6,memory`: measure just these (for working on one number); prints
 * the raw results and writes no results file. Keys: crash-KEY, long-KEY (KEY = mos, mosNone,
 * s6, s6None, runit, floor), memory (all three) and memory-NAME (mos, s6, runit). */
const ONLY = process.argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',') ?? null;
const selected = (key) => ONLY === null || ONLY.includes(key);
/** `--keep-scratch`: leave the scratch directories (probe records, supervisor logs) in bench/work/. */
const KEEP_SCRATCH = process.argv.includes('--keep-scratch');

/** Iteration counts. The full run stays well under 10 minutes on 2 cores. */
const PLAN = QUICK
  ? {
      crashLoopFast: 200, // samples for mos, which restarts a crashing service at once
      crashLoopThrottled: 3, // samples for s6 and runit, which wait ~1 s per crash
      longLived: { services: 24, samples: 100 },
      scales: [100, 300],
      settleMs: 1000,
    }
  : {
      crashLoopFast: 1000,
      crashLoopThrottled: 15,
      longLived: { services: 24, samples: 500 },
      scales: [100, 1000],
      settleMs: 2000,
    };

/** Long-lived restart scenario: each service lives >= 1.1 s (past s6's and runit's 1 s restart
 * throttle), then dies in its own 50 ms slot of a 1.2 s cycle, so deaths never overlap. */
const LONG_LIVED_MIN_LIFE_NS = 1_100_000_000n;
const LONG_LIVED_CYCLE_NS = 1_200_000_000n;
/** Width of a record written by `probe restart` (two 20-digit numbers, space, newline). */
const RESTART_RECORD_LEN = 42;
/** The readiness descriptor, for mos (`readiness: {fd: 3}`) and s6 (`notification-fd`). */
const READY_FD = 3;

// ---------------------------------------------------------------------------------------------
// Small helpers

/** The environment for every process we start: without NODE_* variables (NODE_EXTRA_CA_CERTS
 * alone adds ~70 ms to each Node start here, and none of them belongs in a measurement). */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('NODE_')) env[key] = value;
  return { ...env, ...extra };
}

function log(message) {
  process.stderr.write(`bench: ${message}\n`);
}

function hasCommand(name) {
  return ['/usr/bin', '/bin', '/usr/sbin', '/sbin'].some((dir) => existsSync(path.join(dir, name)));
}

function run(command, args, options = {}) {
  return execFileSync(command, args, { encoding: 'utf8', env: cleanEnv(), ...options });
}

function nowNs() {
  // process.hrtime reads CLOCK_MONOTONIC, the clock the probe uses, so the two compare directly.
  return process.hrtime.bigint();
}

const nsToMs = (ns) => Number(ns) / 1e6;

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted, fraction) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))];
}

async function waitFor(predicate, { timeoutMs, intervalMs, what }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// A quiet machine (see host-quiet.mjs), and other work during each measurement

/** Waiting for quiet: at most 3 minutes over the whole run (15 s with --quick). */
const quiet = createQuietWaiter({ log, maxWaitMs: QUICK ? 15_000 : 180_000, verb: 'measuring' });
/** A measurement during which other work used this share of all CPUs is taken again... */
const OTHER_WORK_LIMIT = 0.1;
const MAX_ATTEMPTS = 3;
/** ...as long as the repeats stay within this budget over the whole run. */
let repeatBudgetMs = QUICK ? 20_000 : 180_000;
const disturbed = [];
let clockTicks = 100;

/**
 * CPU time so far (utime + stime + cutime + cstime, in clock ticks) of every process that is not
 * ours. Counting the reaped children's time (cutime) catches other work's short-lived
 * processes too, as long as their parent lives; PID 1 is left out because it also reaps our
 * own orphans (runit's runsv processes once runsvdir has exited).
 */
function otherCpuSnapshot() {
  const ticks = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === 1 || pid === process.pid || seenPids.has(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks.set(pid, Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]));
    } catch {
      // exited while we looked
    }
  }
  return { atMs: performance.now(), ticks };
}

/** Share of all CPUs that other work used between two snapshots. */
function otherCpuShare(before, after) {
  let ticks = 0;
  for (const [pid, total] of after.ticks) if (!seenPids.has(pid)) ticks += total - (before.ticks.get(pid) ?? 0);
  const elapsedSeconds = (after.atMs - before.atMs) / 1000;
  return ticks / clockTicks / (elapsedSeconds * os.cpus().length);
}

/**
 * Runs one measurement on a quiet machine: waits for quiet first, and takes the measurement
 * again (up to MAX_ATTEMPTS) if other work used more than OTHER_WORK_LIMIT of the CPUs while it
 * ran. The result records that share as `otherCpu`.
 */
async function measureQuietly(label, measure) {
  for (let attempt = 1; ; attempt++) {
    await quiet.untilQuiet(label);
    const startedMs = Date.now();
    const before = otherCpuSnapshot();
    const result = await measure();
    result.otherCpu = otherCpuShare(before, otherCpuSnapshot());
    if (result.otherCpu < OTHER_WORK_LIMIT) return result;
    const share = `${(result.otherCpu * 100).toFixed(0)} %`;
    if (attempt >= MAX_ATTEMPTS || repeatBudgetMs <= 0) {
      log(`${label}: other work used ${share} of the CPUs meanwhile; keeping this result (marked)`);
      disturbed.push(`${label} (${share})`);
      return result;
    }
    repeatBudgetMs -= Date.now() - startedMs;
    log(`${label}: other work used ${share} of the CPUs meanwhile: measuring again`);
  }
}

// ---------------------------------------------------------------------------------------------
// Setup: Debian packages, the probe, the mos bundle

/** Installs s6 and runit if missing, after checking apt would not touch the init system. */
function ensureSupervisorPackages() {
  if (hasCommand('s6-svscan') && hasCommand('runsvdir')) return;
  if (process.getuid?.() !== 0) throw new Error('s6 and runit are missing; run as root to install them');
  const aptEnv = cleanEnv({ DEBIAN_FRONTEND: 'noninteractive' });
  log('apt-get install s6 runit');
  run('apt-get', ['update', '-qq'], { env: aptEnv, stdio: 'inherit' });
  const args = ['install', '-y', '--no-install-recommends', 's6', 'runit'];
  // Debian's runit only recommends runit-init; make sure nothing in this transaction replaces
  // the init system (runit-init, sysvinit-core) or removes a package (e.g. systemd-sysv).
  const simulation = run('apt-get', ['-s', ...args], { env: aptEnv });
  const risky = simulation
    .split('\n')
    .filter((line) => /^Remv /.test(line) || /^Inst (runit-init|runit-run|sysvinit-core|systemd-sysv)\b/.test(line));
  if (risky.length > 0) throw new Error(`refusing to install s6/runit, apt would: ${risky.join('; ')}`);
  const initBefore = readlinkOrNull('/sbin/init');
  run('apt-get', ['-qq', ...args], { env: aptEnv, stdio: 'inherit' });
  if (readlinkOrNull('/sbin/init') !== initBefore) throw new Error('installing runit changed /sbin/init');
}

function readlinkOrNull(file) {
  try {
    return readlinkSync(file);
  } catch {
    return null;
  }
}

function buildProbe() {
  mkdirSync(WORK_DIR, { recursive: true });
  if (existsSync(PROBE) && statSync(PROBE).mtimeMs >= statSync(PROBE_SOURCE).mtimeMs) return;
  run('cc', ['-O2', '-Wall', '-Wextra', '-o', PROBE, PROBE_SOURCE], { stdio: 'inherit' });
}

function ensureMosBuilt() {
  if (MOS_FILES.every((file) => existsSync(path.join(DIST, file)))) return;
  log('dist/ is incomplete: running scripts/setup.mjs');
  run(process.execPath, [path.join(ROOT, 'scripts', 'setup.mjs')], { stdio: 'inherit' });
}

/**
 * Copies dist/ to a private directory and runs mos from there, so that the whole run measures
 * one build, and a rebuild during the run (other work in the same checkout) cannot break it:
 * the build rewrites dist/mos_native.node in place, and a running mos-init that has the addon
 * mapped then crashes on its next native call. Returns a short hash that identifies the build.
 */
function snapshotMos() {
  const dir = makeScratchDir('mos-dist');
  const hash = createHash('sha256');
  for (const file of MOS_FILES) {
    copyFileSync(path.join(DIST, file), path.join(dir, file));
    hash.update(readFileSync(path.join(dir, file)));
  }
  MOS_INIT = path.join(dir, 'mos-init.cjs');
  MOSCTL = path.join(dir, 'mosctl.mjs');
  return hash.digest('hex').slice(0, 12);
}

// ---------------------------------------------------------------------------------------------
// /proc: process trees and memory

/** pid → { ppid, state } for every process on the machine. */
function processTable() {
  const table = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may contain spaces and parentheses: fields start after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(Number(entry), { state: fields[0], ppid: Number(fields[1]) });
    } catch {
      // exited while we looked
    }
  }
  return table;
}

/** rootPid and all its live descendants. */
function processTree(rootPid) {
  const children = new Map();
  const table = processTable();
  for (const [pid, { ppid }] of table) {
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(pid);
  }
  const tree = [];
  const queue = table.has(rootPid) ? [rootPid] : [];
  while (queue.length > 0) {
    const pid = queue.shift();
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** A process that exited but is not reaped yet (or reaped meanwhile) counts as gone. */
function isGone(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] === 'Z';
  } catch {
    return true;
  }
}

/** Rss, Pss and Uss (private pages only) of one process, in KiB, from smaps_rollup. */
function memoryOf(pid) {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: field('Rss'), pssKiB: field('Pss'), ussKiB: field('Private_Clean') + field('Private_Dirty') };
}

function sumMemory(pids) {
  const total = { rssKiB: 0, pssKiB: 0, ussKiB: 0 };
  for (const pid of pids) {
    const memory = memoryOf(pid);
    for (const key of Object.keys(total)) total[key] += memory[key];
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// The three supervisors behind one small interface
//
//   prepare(dir, services)  writes the configuration for `services` ({ name, args, readyFd })
//   launch(dir)             starts the supervisor; returns the child process
//   stopSignal              what asks the whole tree to stop (sent to the launched process)

/** Services run as `PROBE ...args`. s6 and runit run `./run` without arguments, so there `run`
 * is a symlink to the probe, which then reads its arguments from ./probe.args (see probe.c). */
function writeServiceDir(serviceDir, service, { notificationFd }) {
  mkdirSync(serviceDir, { recursive: true });
  symlinkSync(PROBE, path.join(serviceDir, 'run'));
  writeFileSync(path.join(serviceDir, 'probe.args'), `${service.args.join('\n')}\n`);
  if (notificationFd && service.readyFd >= 0) writeFileSync(path.join(serviceDir, 'notification-fd'), `${service.readyFd}\n`);
}

function supervisorLogFd(dir) {
  return openSync(path.join(dir, 'supervisor.log'), 'a');
}

const MOS = {
  name: 'mos',
  stopSignal: 'SIGTERM',
  prepare(dir, services) {
    const file = {
      services: services.map((service) => ({
        name: service.name,
        argv: [PROBE, ...service.args],
        readiness: service.readyFd >= 0 ? { fd: service.readyFd } : 'none',
        // Restart at once and never give up: the benchmark measures the restart path itself.
        backoff: { initial: 0, max: '1s' },
        startLimit: { burst: 1_000_000, interval: '1s' },
        restart: 'always',
        stopTimeout: '5s',
      })),
    };
    writeFileSync(path.join(dir, 'services.json'), JSON.stringify(file));
  },
  launch(dir) {
    const logFd = supervisorLogFd(dir);
    const args = [MOS_INIT, '--host', '--config', path.join(dir, 'services.json'), '--state-dir', path.join(dir, 'state')];
    const child = spawn(process.execPath, args, {
      env: cleanEnv({ MOS_LOG_LEVEL: 'warn' }),
      stdio: ['ignore', logFd, logFd],
    });
    closeSync(logFd);
    return child;
  },
};

const S6 = {
  name: 's6',
  stopSignal: 'SIGTERM', // = s6-svscanctl -t: every s6-supervise brings its service down and exits
  prepare(dir, services) {
    const scanDir = path.join(dir, 'scan');
    mkdirSync(scanDir, { recursive: true });
    for (const service of services) writeServiceDir(path.join(scanDir, service.name), service, { notificationFd: true });
    this.serviceCount = services.length;
  },
  launch(dir) {
    const logFd = supervisorLogFd(dir);
    // s6-svscan handles at most 500 service directories unless told otherwise (-c).
    const args = this.serviceCount > 450 ? ['-c', String(this.serviceCount + 100)] : [];
    const child = spawn('s6-svscan', [...args, path.join(dir, 'scan')], { env: cleanEnv(), stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    return child;
  },
};

const RUNIT = {
  name: 'runit',
  // runsvdir sends TERM to every runsv and exits; runsv's TERM means "x": TERM+CONT the service,
  // exit once it is down. (A TERM to runsvdir itself would leave everything running.)
  stopSignal: 'SIGHUP',
  prepare(dir, services) {
    const serviceRoot = path.join(dir, 'service');
    mkdirSync(serviceRoot, { recursive: true });
    // runit has no readiness protocol: the probe must not write to a descriptor nobody opened.
    for (const service of services) writeServiceDir(path.join(serviceRoot, service.name), service, { notificationFd: false });
    // runsvdir sleeps 1 s before scanning a directory modified within the current second (so as
    // not to miss a change made in the same second), which would add a second to the start
    // time of a directory written just now. At boot the service directories are old: make this
    // one look old too.
    const aMinuteAgo = new Date(Date.now() - 60_000);
    utimesSync(serviceRoot, aMinuteAgo, aMinuteAgo);
  },
  launch(dir) {
    const logFd = supervisorLogFd(dir);
    const child = spawn('runsvdir', [path.join(dir, 'service')], { env: cleanEnv(), stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    return child;
  },
};

/** The reference floor for restart latency: `probe supervise`, a bare waitpid/fork/exec loop. */
const FLOOR = {
  name: 'floor',
  stopSignal: 'SIGTERM',
  prepare(dir, services) {
    this.argsFiles = services.map((service) => {
      const file = path.join(dir, `${service.name}.args`);
      writeFileSync(file, `${service.args.join('\n')}\n`);
      return file;
    });
  },
  launch(dir) {
    const logFd = supervisorLogFd(dir);
    const args = ['supervise', String(this.argsFiles.length), PROBE, ...this.argsFiles];
    const child = spawn(PROBE, args, { env: cleanEnv(), stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    return child;
  },
};

/** Memory of an idle `node` with nothing loaded: what any Node-based supervisor starts from. */
async function measureIdleNode() {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)'], { env: cleanEnv(), stdio: 'ignore' });
  remember([child.pid]);
  try {
    await sleep(PLAN.settleMs);
    return memoryOf(child.pid);
  } finally {
    child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------------------------
// Running one supervisor instance, and never leaving anything behind

const scratchDirs = [];
/** Every pid we saw in a supervisor tree, and the probe binary we expect there (pid reuse). */
const seenPids = new Set();

function makeScratchDir(label) {
  mkdirSync(WORK_DIR, { recursive: true });
  const dir = mkdtempSync(path.join(WORK_DIR, `${label}-`));
  scratchDirs.push(dir);
  return dir;
}

function remember(pids) {
  for (const pid of pids) seenPids.add(pid);
}

/** SIGKILLs whatever is left of the processes we started. Services may have been orphaned to
 * PID 1 if a supervisor died first, so this goes by remembered pids, each checked against its
 * command name in case the pid was reused. */
function killLeftovers() {
  const ourNames = new Set(['node', 'probe', 'run', 's6-svscan', 's6-supervise', 'runsvdir', 'runsv']);
  for (const pid of seenPids) {
    if (isGone(pid)) continue;
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (comm === 'node' && !cmdline.includes(MOS_INIT)) continue;
      if (ourNames.has(comm)) process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }
}

class SupervisorRun {
  constructor(supervisor, dir) {
    this.supervisor = supervisor;
    this.dir = dir;
    this.child = null;
    this.exited = null;
  }

  start() {
    this.child = this.supervisor.launch(this.dir);
    this.exited = once(this.child, 'exit');
    remember([this.child.pid]);
  }

  tree() {
    const pids = processTree(this.child.pid);
    remember(pids);
    return pids;
  }

  /** Asks for a clean stop and waits until the whole tree (services included) is gone, so
   * that nothing of this run overlaps the next; kills what is left on timeout. */
  async stop(timeoutMs = 30_000) {
    let remaining = this.tree();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(this.supervisor.stopSignal);
    try {
      await waitFor(
        () => {
          remaining = remaining.filter((pid) => !isGone(pid));
          return remaining.length === 0;
        },
        { timeoutMs, intervalMs: 10, what: `${this.supervisor.name} to stop` },
      );
    } catch (error) {
      log(`${error.message}: killing what is left`);
      killLeftovers();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Metric 1: restart latency (previous exit -> next start, both stamped by the probe)

/**
 * Runs `serviceCount` restart probes under one supervisor until each recorded `perService`
 * runs, and returns the latencies (ms) between one run's exit and the next run's start.
 */
async function measureRestart(supervisor, { label, serviceCount, perService, readiness, longLived }) {
  const dir = makeScratchDir(`restart-${label}`);
  const services = [];
  for (let index = 0; index < serviceCount; index++) {
    const logFile = path.join(dir, `restart-${index}.log`);
    const readyFd = readiness ? READY_FD : -1;
    const args = ['restart', logFile, String(perService), String(readyFd)];
    if (longLived) {
      const slot = (LONG_LIVED_CYCLE_NS * BigInt(index)) / BigInt(serviceCount);
      args.push(String(LONG_LIVED_MIN_LIFE_NS), String(LONG_LIVED_CYCLE_NS), String(slot));
    }
    services.push({ name: `probe-${index}`, args, readyFd, logFile });
  }
  supervisor.prepare(dir, services);
  const instance = new SupervisorRun(supervisor, dir);
  const recordedBytes = (file) => (existsSync(file) ? statSync(file).size : 0);
  // s6 and runit take ~1 s per run of a crashing service (see methodText); the others ~ms.
  const throttled = supervisor === S6 || supervisor === RUNIT;
  const expectedSeconds = perService * (longLived ? 1.3 : throttled ? 1.1 : 0.02);
  try {
    instance.start();
    await waitFor(() => services.every((service) => recordedBytes(service.logFile) >= perService * RESTART_RECORD_LEN), {
      timeoutMs: 30_000 + expectedSeconds * 2000,
      intervalMs: 100,
      what: `${label}: ${perService} runs of each of ${serviceCount} services`,
    });
  } finally {
    await instance.stop();
  }
  const latencies = [];
  for (const service of services) {
    const records = readFileSync(service.logFile, 'utf8')
      .trim()
      .split('\n')
      .map((line) => line.split(' ').map(BigInt));
    for (let index = 1; index < records.length; index++) latencies.push(nsToMs(records[index][0] - records[index - 1][1]));
  }
  latencies.sort((a, b) => a - b);
  return { samples: latencies.length, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), max: latencies.at(-1) };
}

// ---------------------------------------------------------------------------------------------
// Metrics 2 and 3: memory with N services, time to start and to stop N services

/** Starts `probe watch FIFO` and resolves once it holds the FIFO's read end. */
async function startWatcher(fifo) {
  const watcher = spawn(PROBE, ['watch', fifo], { stdio: ['pipe', 'pipe', 'inherit'], env: cleanEnv() });
  remember([watcher.pid]);
  const lines = createInterface({ input: watcher.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.value !== 'ready') throw new Error(`probe watch: unexpected output ${JSON.stringify(first.value)}`);
  return {
    /** Tells the watcher every writer is connected; resolves to the ns time the last one closed. */
    async armAndWait() {
      watcher.stdin.write('go\n');
      const line = await lines.next();
      if (line.done) throw new Error('probe watch exited without a measurement');
      return BigInt(line.value);
    },
    kill() {
      if (watcher.exitCode === null) watcher.kill('SIGKILL');
    },
  };
}

function readUpRecords(upLog) {
  if (!existsSync(upLog)) return [];
  return readFileSync(upLog, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pid, startNs] = line.split(' ');
      return { pid: Number(pid), startNs: BigInt(startNs) };
    });
}

/** mos's own view after the start: how many services `mosctl --json list` says are running. */
function mosRunningCount(dir) {
  const started = nowNs();
  const output = run(process.execPath, [MOSCTL, '--socket', path.join(dir, 'state', 'control.sock'), '--json', 'list']);
  const statuses = JSON.parse(output);
  return { running: statuses.filter((status) => status.state === 'running').length, listMs: nsToMs(nowNs() - started) };
}

async function measureScale(supervisor, serviceCount) {
  const dir = makeScratchDir(`scale-${supervisor.name}-${serviceCount}`);
  const fifo = path.join(dir, 'alive.fifo');
  const upLog = path.join(dir, 'up.log');
  run('mkfifo', [fifo]);
  const services = [];
  for (let index = 0; index < serviceCount; index++) {
    // No readiness here: runit has none, and "running" (exec'd) is what the start time counts.
    services.push({ name: `svc-${index}`, args: ['hold', upLog, fifo, '-1'], readyFd: -1 });
  }
  supervisor.prepare(dir, services);
  const watcher = await startWatcher(fifo);
  const instance = new SupervisorRun(supervisor, dir);
  const result = { services: serviceCount };
  try {
    const launchedAt = nowNs();
    instance.start();
    let records = [];
    await waitFor(
      () => {
        records = readUpRecords(upLog);
        return records.length >= serviceCount;
      },
      { timeoutMs: 120_000, intervalMs: 20, what: `${supervisor.name}: ${serviceCount} services up` },
    );
    // Start time ends at the last service's own first instruction, not at our poll.
    const lastStart = records.reduce((latest, record) => (record.startNs > latest ? record.startNs : latest), 0n);
    result.startMs = nsToMs(lastStart - launchedAt);
    remember(records.map((record) => record.pid));

    await sleep(PLAN.settleMs); // let start-up work (status files, GC, timers) finish first
    const servicePids = new Set(records.map((record) => record.pid));
    const supervisorPids = instance.tree().filter((pid) => !servicePids.has(pid));
    result.processes = supervisorPids.length;
    Object.assign(result, sumMemory(supervisorPids));
    // After the memory reading: answering a control request grows mos's heap.
    if (supervisor === MOS) result.mosctl = mosRunningCount(dir);

    // Stop: from the request until the last service has exited (the watcher's end-of-file),
    // then until the whole supervisor tree is gone too.
    const goneAt = watcher.armAndWait();
    const stopAt = nowNs();
    instance.child.kill(supervisor.stopSignal);
    // An unref'd timeout: once the race is decided it must not keep the benchmark alive.
    const lastServiceGone = await Promise.race([goneAt, sleep(60_000, null, { ref: false })]);
    if (lastServiceGone === null) throw new Error(`${supervisor.name}: services still running 60 s after the stop request`);
    result.stopMs = nsToMs(lastServiceGone - stopAt);
    let remaining = supervisorPids;
    await waitFor(
      () => {
        remaining = remaining.filter((pid) => !isGone(pid));
        return remaining.length === 0;
      },
      { timeoutMs: 60_000, intervalMs: 5, what: `${supervisor.name}: supervisor processes to exit` },
    );
    result.stopTreeMs = nsToMs(nowNs() - stopAt);
  } finally {
    watcher.kill();
    await instance.stop();
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Report

function machineInfo() {
  const version = (pkg) => {
    try {
      return run('dpkg-query', ['-W', '-f', '${Version}', pkg]).trim();
    } catch {
      return 'unknown';
    }
  };
  return { ...hostFacts(ROOT), s6: version('s6'), runit: version('runit') };
}

const fmtMs = (value) => (Number.isFinite(value) ? (value < 10 ? value.toFixed(2) : value.toFixed(0)) : '—');
const fmtMiB = (kib) => (Number.isFinite(kib) ? (kib / 1024).toFixed(1) : '—');

/** † marks a measurement during which other work used a notable share of the CPUs. */
const mark = (result) => (result?.otherCpu >= OTHER_WORK_LIMIT ? ' †' : '');

function latencyCell(result) {
  if (!result) return 'n/a';
  return `${fmtMs(result.p50)} / ${fmtMs(result.p99)} (n=${result.samples})${mark(result)}`;
}

/** Lines under the table: the reference floors, and mos's own view of the start. */
function buildNotes(results) {
  const floor = results.restart;
  const idle = results.idleNode;
  const notes = [
    `Floor for restart latency (\`probe supervise\`: a bare C waitpid → fork → setsid → exec loop): ` +
      `crash loop ${latencyCell(floor.crash.floor)}, service up > 1 s ${latencyCell(floor.longLived.floor)} (p50 / p99 ms).`,
    `Floor for a Node supervisor's memory (an idle \`node -e 'setInterval(…)'\`): ` +
      `RSS ${fmtMiB(idle.rssKiB)} MiB, PSS ${fmtMiB(idle.pssKiB)} MiB, USS ${fmtMiB(idle.ussKiB)} MiB.`,
  ];
  notes.push(
    `Quiet check: before each measurement the benchmark waits until the whole machine is < ${QUIET_BUSY_FRACTION * 100} % busy over 1 s ` +
      `(waited ${(quiet.waitedMs / 1000).toFixed(0)} s in all); ` +
      (quiet.busyStarts.length ? `started while still busy: ${quiet.busyStarts.join(', ')}.` : 'every measurement started on a quiet machine.'),
    `Other work (processes not started by the benchmark) during each measurement: a measurement is repeated (up to ${MAX_ATTEMPTS} times) ` +
      `when it used ≥ ${OTHER_WORK_LIMIT * 100} % of the CPUs; ` +
      (disturbed.length ? `still disturbed, marked † in the table: ${disturbed.join(', ')}.` : 'no kept measurement was disturbed.'),
  );
  for (const count of PLAN.scales) {
    const view = results.scale[count].mos.mosctl;
    if (view) notes.push(`mos after starting ${count} services: \`mosctl --json list\` reports ${view.running} running and took ${fmtMs(view.listMs)} ms.`);
  }
  return notes;
}

function buildTable(results) {
  const rows = [];
  const r = results.restart;
  rows.push(['Restart, service up > 1 s, with readiness: p50 / p99 ms', latencyCell(r.longLived.mos), latencyCell(r.longLived.s6), 'n/a (no readiness)']);
  rows.push(['Restart, service up > 1 s, no readiness: p50 / p99 ms', latencyCell(r.longLived.mosNone), latencyCell(r.longLived.s6None), latencyCell(r.longLived.runit)]);
  rows.push(['Restart, crash loop, with readiness: p50 / p99 ms', latencyCell(r.crash.mos), latencyCell(r.crash.s6), 'n/a (no readiness)']);
  rows.push(['Restart, crash loop, no readiness: p50 / p99 ms', latencyCell(r.crash.mosNone), latencyCell(r.crash.s6None), latencyCell(r.crash.runit)]);
  for (const count of PLAN.scales) {
    const cells = (fn) => ['mos', 's6', 'runit'].map((name) => fn(results.scale[count][name]) + mark(results.scale[count][name]));
    rows.push([`Memory, ${count} services: RSS MiB (processes)`, ...cells((s) => `${fmtMiB(s.rssKiB)} (${s.processes})`)]);
    rows.push([`Memory, ${count} services: PSS MiB`, ...cells((s) => fmtMiB(s.pssKiB))]);
    rows.push([`Memory, ${count} services: USS (private) MiB`, ...cells((s) => fmtMiB(s.ussKiB))]);
    rows.push([`Start ${count} services: ms`, ...cells((s) => fmtMs(s.startMs))]);
    rows.push([`Stop ${count} services (all services exited): ms`, ...cells((s) => fmtMs(s.stopMs))]);
    rows.push([`Stop ${count} services (supervisor tree gone too): ms`, ...cells((s) => fmtMs(s.stopTreeMs))]);
  }
  return rows;
}

function markdownTable(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

function plainTable(header, rows) {
  const all = [header, ...rows];
  const widths = header.map((_, column) => Math.max(...all.map((row) => String(row[column]).length)));
  const line = (row) => row.map((cell, column) => (column === 0 ? String(cell).padEnd(widths[column]) : String(cell).padStart(widths[column]))).join('  ');
  return [line(header), widths.map((width) => '-'.repeat(width)).join('  '), ...rows.map(line)].join('\n');
}

function targets(results) {
  const verdict = (ok) => (ok ? 'PASS' : 'FAIL');
  const list = [];
  const restartTarget = (scenario, title) => {
    const mos = results.restart[scenario].mos;
    const s6 = results.restart[scenario].s6;
    const ok = mos.p50 <= 0.5 * s6.p50;
    list.push({
      title,
      verdict: verdict(ok),
      detail: `mos p50 ${fmtMs(mos.p50)} ms vs 0.5 × s6 p50 ${fmtMs(s6.p50)} ms = ${fmtMs(0.5 * s6.p50)} ms (ratio ${(mos.p50 / s6.p50).toFixed(3)})`,
    });
  };
  restartTarget('longLived', 'Restart p50 of mos ≤ 0.5 × s6, both with readiness, service up > 1 s (no s6 throttle: the headline comparison)');
  restartTarget('crash', 'Restart p50 of mos ≤ 0.5 × s6, both with readiness, crash loop (s6 waits until 1 s after readiness)');
  const small = Math.min(...PLAN.scales);
  const mos = results.scale[small].mos;
  const s6 = results.scale[small].s6;
  list.push({
    title: `Memory of mos ≤ 0.3 × s6 at ${small} services (RSS)`,
    verdict: verdict(mos.rssKiB <= 0.3 * s6.rssKiB),
    detail: `mos ${fmtMiB(mos.rssKiB)} MiB vs 0.3 × s6 ${fmtMiB(s6.rssKiB)} MiB = ${fmtMiB(0.3 * s6.rssKiB)} MiB (ratio ${(mos.rssKiB / s6.rssKiB).toFixed(2)})`,
  });
  list.push({
    title: `(for information) the same with PSS`,
    verdict: verdict(mos.pssKiB <= 0.3 * s6.pssKiB),
    detail: `mos ${fmtMiB(mos.pssKiB)} MiB vs 0.3 × s6 ${fmtMiB(s6.pssKiB)} MiB = ${fmtMiB(0.3 * s6.pssKiB)} MiB (ratio ${(mos.pssKiB / s6.pssKiB).toFixed(2)})`,
  });
  return list;
}

function methodText() {
  const ll = PLAN.longLived;
  return `## Method

All three supervisors run the same service, \`bench/probe.c\` (compiled with \`cc -O2\`), one
after another on an otherwise idle machine. mos runs in host mode (\`mos-init --host\`,
\`MOS_LOG_LEVEL=warn\`) from a private copy of \`dist/\` taken at the start of the run; every
process the benchmark starts gets an environment without \`NODE_*\` variables. s6 and runit run
the probe through a \`run\` symlink to it (one exec, no shell); mos execs it directly. Times
come from CLOCK_MONOTONIC, read by the probe and by Node's \`process.hrtime\` (the same clock).

**Restart latency** = the probe's timestamp at the start of \`main()\` of run *k+1* minus the
timestamp it took right before \`_exit(0)\` in run *k* (appended to a file opened \`O_APPEND\`).
It covers the exit, the supervisor noticing it and whatever it does before the next clone (mos
clones first and does its bookkeeping after), fork/clone and exec. Readiness:
mos \`readiness: {fd: 3}\`, s6 \`notification-fd\` = 3 (the probe writes a newline there right
after it starts); runit has no readiness protocol. mos: \`backoff: {initial: 0}\`, start limit
1,000,000 per second.
- *Crash loop*: the probe exits right after it started. Neither s6 nor runit restarts such a
  service at once, and neither can be configured to: s6-supervise 2.11 does not spawn \`./run\`
  again until 1 s after the service's readiness notification, or 1 s after its death when it
  never notified (no \`notification-fd\`, or died before notifying); runsv sleeps 1 s after a
  service that lived less than 1 s. So s6 and runit get ${PLAN.crashLoopThrottled} samples here, mos ${PLAN.crashLoopFast}.
- *Service up > 1 s*: the probe stays up ≥ 1.1 s and then exits in its own 50 ms slot of a
  1.2 s cycle; ${ll.services} such services run side by side so that ≥ ${ll.samples} samples come quickly while
  no two deaths overlap. With readiness (notified at start, so ready > 1 s) this is s6's and
  runit's restart path without their throttle; s6 without readiness still waits 1 s.
- Each measurement starts once the machine is quiet, and is taken again (up to ${MAX_ATTEMPTS} times)
  when processes other than the benchmark's used ≥ ${OTHER_WORK_LIMIT * 100} % of the CPUs meanwhile
  (their CPU time from \`/proc/PID/stat\`, reaped children included).
- The *floor* is \`probe supervise\`, a bare C loop (waitpid → fork → setsid → exec): what the
  kernel and the probe itself cost on this machine, with no supervisor work at all.

**Memory**: N services (\`probe hold\`: opens a FIFO, writes one line, sleeps in \`pause()\`; no
readiness), measured ${PLAN.settleMs / 1000} s after all N are running. Rss, Pss and Uss (Private_Clean +
Private_Dirty) from \`/proc/PID/smaps_rollup\`, summed over every process of the supervisor's
tree except the services: mos = the node process; s6 = s6-svscan + N s6-supervise; runit =
runsvdir + N runsv. RSS counts shared pages (libc, the s6 libraries) once per process, so it
overstates many small processes; PSS divides shared pages among the processes that map them
(mos-init shares node's code with every other node process running at the time, the
benchmark's own included, so mos's PSS varies with what else runs: compare the idle-node PSS
below the table); USS is what would be freed if the supervisor went away. mos keeps two log pipes per service
(service output goes to per-service log files); s6 and runit have no log services here.

**Start N services** = from just before \`spawn()\` of the supervisor (mos-init, s6-svscan,
runsvdir) until the first instruction of the last of the N services (each probe appends its pid
and start time to a shared file; the benchmark waits for N lines). This includes Node's start-up
and the parsing of the service file for mos. runit's service directory is back-dated by a
minute, as it would be at boot: runsvdir sleeps 1 s before scanning a directory modified in the
current second.

**Stop N services** = from sending the stop request to the supervisor's root process — mos:
SIGTERM to mos-init; s6: SIGTERM to s6-svscan (= \`s6-svscanctl -t\`); runit: SIGHUP to runsvdir
(TERM to each runsv, which TERMs+CONTs its service and exits) — until the last service has
exited. Each service holds the write end of one FIFO; a helper (\`probe watch\`) blocked on the
read end timestamps the end-of-file, which the kernel delivers when the last service has closed
it, i.e. exited. The second stop row waits, after that, for every supervisor process to exit
(or be a zombie), polled every 5 ms.
`;
}

function writeResults(info, tableRows, notes, targetList, started) {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const cpuSlug = info.cpu.toLowerCase().replace(/\(r\)|\(tm\)|processor|cpu/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  const label = `${cpuSlug}-${info.cores}c${QUICK ? '-quick' : ''}`;
  const file = path.join(RESULTS_DIR, `${date}-${label}.md`);
  const text = `# mos vs s6 vs runit — ${date}${QUICK ? ' (quick mode: fewer iterations, a smoke check only)' : ''}

## Machine

- CPU: ${info.cpu}, ${info.cores} cores
- RAM: ${info.ramGiB} GiB
- OS: ${info.os}, kernel ${info.kernel}
- Node ${info.node}
- s6 ${info.s6}, runit ${info.runit} (Debian packages)
- mos: revision ${info.mos}, build ${info.mosBuild} (sha256 of dist/mos-init.cjs, mosctl.mjs, mos_native.node)
- Benchmark: \`node bench/run.mjs${QUICK ? ' --quick' : ''}\`, ${((Date.now() - started) / 1000).toFixed(0)} s wall time

## Results

${markdownTable(['Metric', 'mos', 's6', 'runit'], tableRows)}

Latency cells: p50 / p99 in ms (nearest rank), n = restarts measured. Memory: sum over the
supervisor's own processes (their number in parentheses), services excluded.

${notes.map((note) => `- ${note}`).join('\n')}

## Targets

${targetList.map((t) => `- **${t.verdict}** — ${t.title}: ${t.detail}`).join('\n')}

${methodText()}`;
  writeFileSync(file, text);
  return path.relative(ROOT, file);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main() {
  const started = Date.now();
  if (process.getuid?.() !== 0) throw new Error('the benchmark must run as root (supervisors, /proc of their processes)');
  ensureSupervisorPackages();
  buildProbe();
  ensureMosBuilt();
  const mosBuild = snapshotMos();
  clockTicks = Number(run('getconf', ['CLK_TCK']).trim()) || 100;
  const info = { ...machineInfo(), mosBuild };
  log(`${QUICK ? 'quick' : 'full'} run on ${info.cpu}, ${info.cores} cores, Node ${info.node}, s6 ${info.s6}, runit ${info.runit}`);

  const results = { restart: { crash: {}, longLived: {} }, scale: {} };

  // 1. Restart latency.
  const crashVariants = [
    ['mos', MOS, true, PLAN.crashLoopFast],
    ['mosNone', MOS, false, PLAN.crashLoopFast],
    ['s6', S6, true, PLAN.crashLoopThrottled],
    ['s6None', S6, false, PLAN.crashLoopThrottled],
    ['runit', RUNIT, false, PLAN.crashLoopThrottled],
    ['floor', FLOOR, false, PLAN.crashLoopFast],
  ];
  for (const [key, supervisor, readiness, samples] of crashVariants) {
    if (!selected(`crash-${key}`)) continue;
    log(`restart, crash loop: ${key} (${samples} restarts)`);
    const label = `crash-${key}`;
    results.restart.crash[key] = await measureQuietly(label, () =>
      measureRestart(supervisor, { label, serviceCount: 1, perService: samples + 1, readiness, longLived: false }),
    );
  }
  const { services: parallel, samples: wanted } = PLAN.longLived;
  const perService = Math.ceil(wanted / parallel) + 1;
  for (const [key, supervisor, readiness] of crashVariants) {
    if (!selected(`long-${key}`)) continue;
    log(`restart, service up > 1 s: ${key} (${parallel} services × ${perService - 1} restarts)`);
    const label = `long-${key}`;
    results.restart.longLived[key] = await measureQuietly(label, () =>
      measureRestart(supervisor, { label, serviceCount: parallel, perService, readiness, longLived: true }),
    );
  }

  // 2 and 3. Memory, start and stop with N services.
  const measuredScale = [MOS, S6, RUNIT].filter((supervisor) => selected('memory') || selected(`memory-${supervisor.name}`));
  if (measuredScale.length > 0) results.idleNode = await measureIdleNode();
  for (const count of measuredScale.length > 0 ? PLAN.scales : []) {
    results.scale[count] = {};
    for (const supervisor of measuredScale) {
      log(`${count} services: ${supervisor.name}`);
      results.scale[count][supervisor.name] = await measureQuietly(`${supervisor.name} with ${count} services`, () =>
        measureScale(supervisor, count),
      );
    }
  }

  if (ONLY !== null) {
    console.log(JSON.stringify(results, (key, value) => (Array.isArray(value) && value.length > 20 ? `[${value.length} values]` : value), 2));
    return;
  }
  const tableRows = buildTable(results);
  const notes = buildNotes(results);
  const targetList = targets(results);
  console.log(plainTable(['Metric', 'mos', 's6', 'runit'], tableRows));
  console.log('');
  for (const note of notes) console.log(note);
  console.log('');
  for (const target of targetList) console.log(`${target.verdict}  ${target.title}\n      ${target.detail}`);
  const file = writeResults(info, tableRows, notes, targetList, started);
  console.log(`\nwritten: ${file}`);
  writeFileSync(path.join(WORK_DIR, `last-results${QUICK ? '-quick' : ''}.json`), JSON.stringify(results, null, 2));
}

function cleanUp({ keepScratch }) {
  killLeftovers();
  if (keepScratch) {
    log(`kept for inspection: ${scratchDirs.map((dir) => path.relative(ROOT, dir)).join(' ')}`);
    return;
  }
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
}

process.on('SIGINT', () => {
  cleanUp({ keepScratch: false });
  process.exit(130);
});

try {
  await main();
} catch (error) {
  process.exitCode = 1;
  log(`failed: ${error.stack ?? error}`);
} finally {
  // A failed run keeps its scratch directories (supervisor logs, probe records) to look at.
  cleanUp({ keepScratch: KEEP_SCRATCH || process.exitCode === 1 });
}
