import { defineConfig } from 'vitest/config';

// Two projects: `unit` needs no root and no addon build and runs in milliseconds; `privileged`
// drives real processes, sockets and syscalls through the addon and needs root on a host.
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
    ],
  },
});
