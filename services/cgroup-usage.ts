/**
 * What a container uses of its cgroup v2 limits, as `mosctl status` shows it: memory.current,
 * pids.current and the `oom_kill` count of memory.events, read from the container's cgroup
 * directory (services/container.ts: `/sys/fs/cgroup/mos/<name>`). Parsing is pure; the reader is
 * given. A file that cannot be read (the container has no cgroup right now, a controller is off)
 * leaves its figure null; all three null is no usage at all.
 */
import { posix } from 'node:path';

export interface CgroupUsage {
  /** memory.current: bytes charged to the container (page cache included). */
  memoryBytes: number | null;
  /** pids.current: tasks (processes and threads) in it. */
  pids: number | null;
  /** memory.events `oom_kill`: processes the kernel killed for going over memory.max. */
  oomKills: number | null;
}

/** One non-negative integer, as memory.current and pids.current hold it; null for anything else. */
export function parseCounter(text: string | null): number | null {
  if (text === null) return null;
  const trimmed = text.trim();
  if (!/^[0-9]{1,16}$/.test(trimmed)) return null;
  return Number(trimmed);
}

/** A `key value` line's value from a flat-keyed file such as memory.events. */
export function parseFlatKey(text: string | null, key: string): number | null {
  if (text === null) return null;
  for (const line of text.split('\n')) {
    const [name, value, ...rest] = line.trim().split(/\s+/);
    if (name === key && rest.length === 0) return parseCounter(value ?? null);
  }
  return null;
}

/** Reads the usage of the cgroup at `dir`; `read` returns a file's text or null when it cannot. */
export function readCgroupUsage(dir: string, read: (file: string) => string | null): CgroupUsage | null {
  const usage: CgroupUsage = {
    memoryBytes: parseCounter(read(posix.join(dir, 'memory.current'))),
    pids: parseCounter(read(posix.join(dir, 'pids.current'))),
    oomKills: parseFlatKey(read(posix.join(dir, 'memory.events')), 'oom_kill'),
  };
  return usage.memoryBytes === null && usage.pids === null && usage.oomKills === null ? null : usage;
}
