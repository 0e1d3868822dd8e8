import { lstatSync, unlinkSync } from 'node:fs';

/** A socket left by an earlier run may be replaced; anything else at the path is an error. */
export function removeStaleSocket(socketPath: string): void {
  try {
    if (lstatSync(socketPath).isSocket()) unlinkSync(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
