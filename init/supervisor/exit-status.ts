/**
 * Exit statuses read like systemd's (`status=203/EXEC`), so operators and tools that know
 * systemd read mos without a table. mos uses the 200-range codes for its own pre-exec failures.
 */

const NAMES: Record<number, string> = {
  0: 'SUCCESS',
  1: 'FAILURE',
  2: 'INVALIDARGUMENT',
  3: 'NOTIMPLEMENTED',
  4: 'NOPERMISSION',
  5: 'NOTINSTALLED',
  6: 'NOTCONFIGURED',
  7: 'NOTRUNNING',
  200: 'CHDIR',
  203: 'EXEC',
  208: 'STDIN',
  209: 'STDOUT',
  210: 'CHROOT',
  216: 'GROUP',
  217: 'USER',
  220: 'SETSID',
  226: 'NAMESPACE',
};

/** The code mos records when a spawn failed at `stage`, before the program ran. */
export const SPAWN_STAGE_EXIT_CODE: Record<string, number> = {
  clone: 226,
  setsid: 220,
  dup2: 209,
  chroot: 210,
  chdir: 200,
  setgroups: 216,
  setgid: 216,
  setuid: 217,
  execve: 203,
};

export function exitStatusText(code: number | null, signal: string | null): string {
  if (signal) return `signal=${signal}`;
  if (code === null) return 'status=?';
  const name = NAMES[code];
  return name ? `status=${code}/${name}` : `status=${code}`;
}

/** systemd's notion of a clean exit for `Restart=on-failure`: code 0 or a polite signal. */
export function isCleanExit(code: number | null, signal: string | null): boolean {
  if (signal) return ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGPIPE'].includes(signal);
  return code === 0;
}
