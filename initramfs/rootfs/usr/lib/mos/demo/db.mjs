// Demo longrun with s6 readiness: "loads", then reports ready on fd 3 and idles.
import { setTimeout as sleep } from 'node:timers/promises';
import { notifyReady } from './ready.mjs';

console.log('db: loading');
await sleep(500);
console.log('db: accepting connections');
notifyReady();
setInterval(() => {}, 1 << 30);
process.on('SIGTERM', () => {
  console.log('db: shutting down');
  process.exit(0);
});
