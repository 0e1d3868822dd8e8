/** The `mosctl` executable, bundled into `dist/mosctl.mjs` (the build adds the `#!` line). */
import { main } from './main.ts';

// `mosctl logs -f | head` closes stdout early: that ends the output, it is not a crash.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  process.exit(0);
});

process.exitCode = await main(process.argv);
