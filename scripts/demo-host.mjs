#!/usr/bin/env node
// `npm run demo`: the demo machine's services under mos in host mode. It starts them, shows
// `mosctl status`, crashes one on purpose, shows it recover, then shuts everything down.
// (Booting the demo machine in QEMU replaces this once the VM boot exists.)
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const demoDir = path.join(root, 'scripts', 'demo');
const began = performance.now();
// Supervised processes and mosctl get a clean environment (no NODE_EXTRA_CA_CERTS and the like).
const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...(process.env.TERM ? { TERM: process.env.TERM } : {}) };

function step(text) {
  const seconds = ((performance.now() - began) / 1000).toFixed(1).padStart(5);
  console.log(`\n\x1b[1m[${seconds}s] ${text}\x1b[0m`);
}

function mosctl(...args) {
  return execFileSync(process.execPath, [path.join(root, 'dist', 'mosctl.mjs'), '--socket', socketPath, ...args], { env, encoding: 'utf8' });
}

function show(...args) {
  console.log(`$ mosctl ${args.join(' ')}`);
  process.stdout.write(mosctl(...args));
}

async function until(what, condition, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const freePort = () =>
  new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

const stateDir = mkdtempSync(path.join(os.tmpdir(), 'mos-demo-'));
const socketPath = path.join(stateDir, 'control.sock');
const port = await freePort();
const configPath = path.join(stateDir, 'services.yaml');
writeFileSync(configPath, readFileSync(path.join(demoDir, 'services.yaml'), 'utf8').replaceAll('@DEMO_DIR@', demoDir).replaceAll('@PORT@', String(port)));

step(`starting mos in host mode (state in ${stateDir})`);
const mos = spawn(process.execPath, [path.join(root, 'dist', 'mos-init.cjs'), '--host', '--config', configPath, '--state-dir', stateDir], {
  env: { ...env, MOS_LOG_LEVEL: 'info' },
  stdio: ['ignore', 'inherit', 'pipe'],
});
const exited = new Promise((resolve) => mos.on('exit', resolve));
// mos logs one JSON line per transition; show them compactly as they happen.
let pending = '';
mos.stderr.on('data', (chunk) => {
  pending += chunk;
  const lines = pending.split('\n');
  pending = lines.pop();
  for (const line of lines) {
    try {
      const record = JSON.parse(line);
      const extra = [record.exit, record.cause, record.reason].filter(Boolean).join(', ');
      console.log(`  \x1b[2mmos: ${record.msg}${extra ? ` (${extra})` : ''}\x1b[0m`);
    } catch {
      console.log(`  mos: ${line}`);
    }
  }
});

try {
  await until('the control socket', () => existsSync(socketPath));
  await until('every service to be up', () => JSON.parse(mosctl('--json', 'list')).every((s) => s.state === 'running' || s.state === 'done'));
  step('all services are up: migrate ran first, db became ready over fd 3, web over sd_notify');
  show('list');
  const answer = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text());
  step(`web answers on 127.0.0.1:${port}: ${answer.trim()}`);

  const victim = JSON.parse(mosctl('--json', 'status', 'web'));
  step(`crashing web on purpose: SIGKILL to pid ${victim.pid}`);
  process.kill(victim.pid, 'SIGKILL');
  await until('web to come back', () => {
    const now = JSON.parse(mosctl('--json', 'status', 'web'));
    return now.state === 'running' && now.restarts >= 1;
  });
  step('web is back, restarted by its policy after a short backoff');
  show('status', 'web');

  step('the last lines db wrote');
  show('logs', '-n', '3', 'db');
} finally {
  step('shutting down: services stop in reverse dependency order');
  mos.kill('SIGTERM');
  const code = await exited;
  rmSync(stateDir, { recursive: true, force: true });
  step(`mos exited with code ${code}; demo done`);
}
