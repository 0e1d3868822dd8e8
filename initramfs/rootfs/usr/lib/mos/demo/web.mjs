// Demo HTTP service on a unix socket (no network setup needed); ready on fd 3 once listening.
import { mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { notifyReady } from './ready.mjs';

const socketPath = process.env.WEB_SOCKET ?? '/run/mos-demo/web.sock';
mkdirSync(path.dirname(socketPath), { recursive: true });
rmSync(socketPath, { force: true });
let requests = 0;
const server = createServer((request, response) => {
  requests += 1;
  response.end(`hello from mos (request ${requests})\n`);
});
server.listen(socketPath, () => {
  console.log(`web: listening on ${socketPath}`);
  notifyReady();
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
