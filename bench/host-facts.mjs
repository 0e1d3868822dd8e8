// What every benchmark result names about the machine and the build it measured: CPU, cores,
// RAM, kernel, OS, Node, and the mos revision (with a mark when the checkout had changes).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';

export function hostFacts(root) {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const memTotalKiB = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  let mos = 'unknown';
  try {
    const git = (...args) => execFileSync('git', ['-C', root, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    mos = git('rev-parse', '--short', 'HEAD').trim();
    if (git('status', '--porcelain').trim()) mos += ' + uncommitted changes';
  } catch {
    // not a git checkout
  }
  return {
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown',
    cores: os.cpus().length,
    ramGiB: (memTotalKiB / 1024 / 1024).toFixed(1),
    kernel: os.release(),
    os: existsSync('/etc/debian_version') ? `Debian ${readFileSync('/etc/debian_version', 'utf8').trim()}` : os.type(),
    node: process.version,
    mos,
  };
}
