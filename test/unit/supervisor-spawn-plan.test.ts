/** What a run execs: the program found (inside a service's root when it has one), env and fds. */
import { describe, expect, it } from 'vitest';
import { planSpawn } from '../../init/supervisor/spawn-plan.ts';
import { makeSpec } from '../helpers/specs.ts';

const base = { stdoutFd: 11, stderrFd: 12, stdinFd: 10, invocationId: 'a'.repeat(32) };

describe('planSpawn', () => {
  it("looks a chroot service's program up inside its root and names it as the service sees it", () => {
    const spec = { ...makeSpec({ name: 'web', argv: ['httpd', '-f'] }), root: '/run/mos/targets/web/root' };
    const probed: string[] = [];
    const plan = planSpawn({
      ...base,
      spec,
      isExecutable: (file) => {
        probed.push(file);
        return file === '/run/mos/targets/web/root/usr/bin/httpd';
      },
    });
    expect(plan).toMatchObject({ ok: true, file: '/usr/bin/httpd', argv: ['httpd', '-f'], root: '/run/mos/targets/web/root' });
    expect(probed[0]).toBe('/run/mos/targets/web/root/usr/local/sbin/httpd');
  });

  it('leaves a path inside the root to the exec (a host-side check would follow the image\'s symlinks on the host)', () => {
    const spec = { ...makeSpec({ name: 'web', argv: ['/bin/sh', '-c', 'true'] }), root: '/srv/root' };
    const plan = planSpawn({ ...base, spec, isExecutable: () => false });
    expect(plan).toMatchObject({ ok: true, file: '/bin/sh', root: '/srv/root' });
  });

  it('reports a bare name found nowhere in the root as not found', () => {
    const spec = { ...makeSpec({ name: 'web', argv: ['app'] }), root: '/srv/root' };
    const plan = planSpawn({ ...base, spec, isExecutable: (file) => file === '/usr/bin/app' });
    expect(plan).toMatchObject({ ok: false, stage: 'execve', message: expect.stringMatching(/^executable not found: app in PATH/) });
  });

  it('has no root for an ordinary service', () => {
    const plan = planSpawn({ ...base, spec: makeSpec({ name: 'web', argv: ['/bin/app'] }), isExecutable: () => true });
    expect(plan.ok && 'root' in plan).toBe(false);
  });
});
