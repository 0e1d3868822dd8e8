// s6-style readiness: one newline on the notification fd (3 by default), then close it.
import { closeSync, writeSync } from 'node:fs';

export function notifyReady(fd = Number(process.env.MOS_READY_FD ?? 3)) {
  try {
    writeSync(fd, '\n');
    closeSync(fd);
  } catch (error) {
    process.stderr.write(`readiness fd ${fd}: ${error.message}\n`);
  }
}
