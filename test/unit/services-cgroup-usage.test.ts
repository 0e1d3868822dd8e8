/** A container's cgroup usage as `mosctl status` shows it: the counters and memory.events. */
import { describe, expect, it } from 'vitest';
import { parseCounter, parseFlatKey, readCgroupUsage } from '../../services/cgroup-usage.ts';

describe('cgroup usage', () => {
  it('reads memory.current, pids.current and oom_kill from the container\'s cgroup', () => {
    const files: Record<string, string> = {
      '/sys/fs/cgroup/mos/web/memory.current': '13500416\n',
      '/sys/fs/cgroup/mos/web/pids.current': '3\n',
      '/sys/fs/cgroup/mos/web/memory.events': 'low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n',
    };
    expect(readCgroupUsage('/sys/fs/cgroup/mos/web', (file) => files[file] ?? null)).toEqual({ memoryBytes: 13500416, pids: 3, oomKills: 1 });
  });

  it('a file that cannot be read or says something else leaves its figure null; none at all is no usage', () => {
    expect(readCgroupUsage('/cg', (file) => (file === '/cg/pids.current' ? '2\n' : null))).toEqual({ memoryBytes: null, pids: 2, oomKills: null });
    expect(readCgroupUsage('/cg', () => null)).toBeNull();
    for (const text of ['', 'max\n', '-1', '1.5', '12 13', '99999999999999999']) expect(parseCounter(text), text).toBeNull();
    expect(parseFlatKey('oom 1\noom_kill\n', 'oom_kill')).toBeNull();
    expect(parseFlatKey('oom_kill 1 2\n', 'oom_kill')).toBeNull();
    expect(parseFlatKey('oom_kill_x 4\noom_kill 0', 'oom_kill')).toBe(0);
  });
});
