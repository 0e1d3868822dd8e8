/** The `mosb` executable, bundled into `dist/mosb.mjs` (the build adds the `#!` line). */
import { main } from './main.ts';

process.exitCode = await main(process.argv);
