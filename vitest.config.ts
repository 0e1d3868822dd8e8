import { defineConfig } from 'vitest/config';

// Three projects: `unit` needs no root and no addon build and runs in milliseconds; `privileged`
// drives real processes, sockets and syscalls through the addon and needs root on a host; `vm`
// boots the images in QEMU (TCG) and needs root (vm-tests/README.md).
export default defineConfig({
  test: {
    reporters: ['default', './test/helpers/summary-reporter.ts'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          environment: 'node',
        },
      },
      {
        test: {
          name: 'privileged',
          include: ['test/privileged/**/*.test.ts'],
          environment: 'node',
          pool: 'forks',
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'vm',
          include: ['vm-tests/**/*.test.ts'],
          environment: 'node',
          // Forks: QEMU runs under `setpriv --pdeathsig KILL`, tied to the forked test process.
          pool: 'forks',
          // One VM case at a time: TCG guests compete for the 2 cores and their timings spread.
          fileParallelism: false,
          testTimeout: 360_000,
          // beforeAll may install Debian packages and build the images.
          hookTimeout: 20 * 60_000,
        },
      },
    ],
  },
});
