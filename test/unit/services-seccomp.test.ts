/**
 * containers-common's seccomp template resolved into config.json's linux.seccomp
 * (services/seccomp.ts): every rule kind over small hand-written templates, the schema's
 * refusals, and (when the file is installed) Debian's real template.
 */
import { existsSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CAPABILITIES } from '../../services/bundle.ts';
import {
  GENERIC_ERRNO,
  SECCOMP_TEMPLATE_PATH,
  computeShadowedSyscalls,
  planDefaultSeccomp,
  planSeccomp,
  seccompArchOf,
  type OciSeccomp,
  type SeccompTarget,
} from '../../services/seccomp.ts';

const X86: SeccompTarget = { arch: 'x86_64', capabilities: ['CAP_CHOWN', 'CAP_KILL'] };

function plan(template: unknown, target: SeccompTarget = X86): OciSeccomp {
  const result = planSeccomp(template, target);
  if (!result.ok) throw new Error(`unexpected refusal: ${result.message}`);
  return result.seccomp;
}

function refusal(template: unknown, target: SeccompTarget = X86): string {
  const result = planSeccomp(template, target);
  if (result.ok) throw new Error('expected a refusal');
  return result.message;
}

/** Names of the kept rules, in order. */
function kept(seccomp: OciSeccomp): string[][] {
  return seccomp.syscalls.map((rule) => rule.names);
}

/**
 * What the filter does with a syscall called with any arguments, as crun applies it: the first
 * rule without args that names it (crun 1.8 + libseccomp 2.5.4: a later conflicting rule has no
 * effect, docs/seccomp.md), 'conditional' when only rules with args name it, else the default.
 */
function outcome(seccomp: OciSeccomp, name: string): string {
  const rule = seccomp.syscalls.find((r) => r.names.includes(name) && (r.args ?? []).length === 0);
  if (rule !== undefined) return rule.action === 'SCMP_ACT_ERRNO' ? `errno ${rule.errnoRet ?? 1}` : rule.action;
  if (seccomp.syscalls.some((r) => r.names.includes(name))) return 'conditional';
  return seccomp.defaultAction === 'SCMP_ACT_ERRNO' ? `errno ${seccomp.defaultErrnoRet ?? 1}` : seccomp.defaultAction;
}

const ARCH_MAP = [
  { architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] },
  { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] },
];

/** A small template with every kind of rule podman's has, plus name, args and flags. */
const SMALL = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  defaultErrno: 'ENOSYS',
  archMap: ARCH_MAP,
  syscalls: [
    { names: ['kexec_load'], action: 'SCMP_ACT_ERRNO', args: [], comment: '', includes: {}, excludes: {}, errnoRet: 1, errno: 'EPERM' },
    { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW', args: null, comment: 'always', includes: {}, excludes: {} },
    { name: 'exit_group', action: 'SCMP_ACT_ALLOW' },
    { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 4294967295, op: 'SCMP_CMP_EQ' }] },
    { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } },
    { names: ['set_tls'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm', 'arm64'] } },
    { names: ['only_x86'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['x86'] } },
    { names: ['not_on_arm64'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['arm64'] } },
    { names: ['sethostname'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['sethostname'], action: 'SCMP_ACT_ERRNO', excludes: { caps: ['CAP_SYS_ADMIN'] }, errnoRet: 1 },
    { names: ['both_caps'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_CHOWN', 'CAP_SYS_ADMIN'] } },
    { names: ['bpf'], action: 'SCMP_ACT_ERRNO', excludes: { caps: ['CAP_SYS_ADMIN', 'CAP_BPF'] }, errno: 'EPERM' },
    { names: ['clone3'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '5.8' } },
    { names: ['clone3'], action: 'SCMP_ACT_ERRNO', excludes: { minKernel: '5.8' }, errnoRet: 38 },
  ],
  flags: ['SECCOMP_FILTER_FLAG_SPEC_ALLOW'],
};

describe('planSeccomp over hand-written templates', () => {
  it('resolves archMap, defaults, flags, names and args for x86_64', () => {
    const seccomp = plan(SMALL, { ...X86, kernel: '6.1.0-18-amd64' });
    expect(seccomp).toEqual({
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrnoRet: 38,
      architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
      flags: ['SECCOMP_FILTER_FLAG_SPEC_ALLOW'],
      syscalls: [
        { names: ['kexec_load'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
        { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' },
        { names: ['exit_group'], action: 'SCMP_ACT_ALLOW' },
        { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 4294967295, valueTwo: 0, op: 'SCMP_CMP_EQ' }] },
        { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW' },
        { names: ['not_on_arm64'], action: 'SCMP_ACT_ALLOW' },
        { names: ['sethostname'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
        { names: ['bpf'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
        { names: ['clone3'], action: 'SCMP_ACT_ALLOW' },
      ],
    });
    // Fixed key order, so the bytes of config.json are stable.
    expect(Object.keys(seccomp)).toEqual(['defaultAction', 'defaultErrnoRet', 'architectures', 'flags', 'syscalls']);
    expect(JSON.stringify(plan(SMALL, { ...X86, kernel: '6.1.0-18-amd64' }))).toBe(JSON.stringify(seccomp));
  });

  it('resolves arches for aarch64: its archMap entry, arm64 rules in, amd64 rules out', () => {
    const seccomp = plan(SMALL, { arch: 'aarch64', capabilities: [], kernel: '6.1' });
    expect(seccomp.architectures).toEqual(['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
    const names = kept(seccomp).flat();
    expect(names).toContain('set_tls');
    expect(names).not.toContain('arch_prctl');
    expect(names).not.toContain('not_on_arm64');
  });

  it('matches arches on the target\'s own Go name only, not its sub-architectures (as podman)', () => {
    expect(kept(plan(SMALL, { ...X86, kernel: '6.1' })).flat()).not.toContain('only_x86');
  });

  it('keeps an includes.caps rule only when every listed capability is in the set', () => {
    const without = plan(SMALL, { ...X86, kernel: '6.1' });
    expect(outcome(without, 'sethostname')).toBe('errno 1');
    expect(kept(without).flat()).not.toContain('both_caps');

    const admin = plan(SMALL, { ...X86, capabilities: ['CAP_CHOWN', 'CAP_SYS_ADMIN'], kernel: '6.1' });
    expect(outcome(admin, 'sethostname')).toBe('SCMP_ACT_ALLOW');
    expect(admin.syscalls.filter((r) => r.names.includes('sethostname'))).toHaveLength(1);
    expect(outcome(admin, 'both_caps')).toBe('SCMP_ACT_ALLOW');
    expect(kept(plan(SMALL, { ...X86, capabilities: ['CAP_SYS_ADMIN'], kernel: '6.1' })).flat()).not.toContain('both_caps');
  });

  it('drops an excludes.caps rule when any listed capability is in the set', () => {
    expect(outcome(plan(SMALL, { ...X86, kernel: '6.1' }), 'bpf')).toBe('errno 1');
    expect(outcome(plan(SMALL, { ...X86, capabilities: ['CAP_BPF'], kernel: '6.1' }), 'bpf')).toBe('errno 38');
    expect(outcome(plan(SMALL, { ...X86, capabilities: ['CAP_SYS_ADMIN'], kernel: '6.1' }), 'bpf')).toBe('errno 38');
  });

  it('compares minKernel with the target kernel: includes needs >=, excludes drops at >=', () => {
    const newer = plan(SMALL, { ...X86, kernel: '5.8.0' });
    expect(newer.syscalls.filter((r) => r.names.includes('clone3'))).toEqual([{ names: ['clone3'], action: 'SCMP_ACT_ALLOW' }]);
    const older = plan(SMALL, { ...X86, kernel: '5.7.19-foo' });
    expect(older.syscalls.filter((r) => r.names.includes('clone3'))).toEqual([{ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 }]);
    // Major dominates minor: 6.1 >= 5.8, 4.19 < 5.8.
    expect(outcome(plan(SMALL, { ...X86, kernel: '6.1' }), 'clone3')).toBe('SCMP_ACT_ALLOW');
    expect(outcome(plan(SMALL, { ...X86, kernel: '4.19' }), 'clone3')).toBe('errno 38');
  });

  it('refuses a minKernel rule it would have to decide without the target kernel', () => {
    expect(refusal(SMALL)).toBe('seccomp template: syscalls[12].includes.minKernel: "5.8" needs the target\'s kernel release (target.kernel)');
    // A template without minKernel needs no kernel.
    const noKernel = { ...SMALL, syscalls: SMALL.syscalls.slice(0, 12) };
    expect(plan(noKernel).syscalls.length).toBe(8);
    // A rule already dropped by its arches never asks.
    const dropped = { ...noKernel, syscalls: [...noKernel.syscalls, { names: ['x'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm64'], minKernel: '5.8' } }] };
    expect(plan(dropped).syscalls.length).toBe(8);
  });

  it('turns errno names into numbers and checks them against errnoRet', () => {
    const base = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [] as unknown[] };
    const rules = (rule: object) => plan({ ...base, syscalls: [{ names: ['acct'], action: 'SCMP_ACT_ERRNO', ...rule }] }).syscalls[0];
    expect(rules({ errno: 'EACCES' })).toEqual({ names: ['acct'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 });
    expect(rules({ errno: '22' })).toEqual({ names: ['acct'], action: 'SCMP_ACT_ERRNO', errnoRet: 22 });
    expect(rules({})).toEqual({ names: ['acct'], action: 'SCMP_ACT_ERRNO' });
    expect(plan({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrno: 'EPERM', syscalls: [] })).toEqual({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 1, syscalls: [] });
    expect(refusal({ ...base, syscalls: [{ names: ['acct'], action: 'SCMP_ACT_ERRNO', errno: 'EPERM', errnoRet: 13 }] })).toBe(
      'seccomp template: syscalls[0].errno: errno "EPERM" (1) disagrees with errnoRet 13',
    );
    expect(refusal({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrno: 'ENOSYS', defaultErrnoRet: 1, syscalls: [] })).toMatch(/defaultErrno: errno "ENOSYS" \(38\) disagrees with errnoRet 1/);
    expect(refusal({ ...base, syscalls: [{ names: ['acct'], action: 'SCMP_ACT_ERRNO', errno: 'ENOTANERRNO' }] })).toMatch(/syscalls\[0\]\.errno: expected an errno name/);
    expect(refusal({ ...base, syscalls: [{ names: ['acct'], action: 'SCMP_ACT_ALLOW', errnoRet: 1 }] })).toMatch(/syscalls\[0\]\.errnoRet: SCMP_ACT_ALLOW takes no errno/);
    expect(refusal({ defaultAction: 'SCMP_ACT_KILL', defaultErrnoRet: 1, syscalls: [] })).toMatch(/defaultErrnoRet: SCMP_ACT_KILL takes no errno/);
    expect(refusal({ ...base, syscalls: [{ names: ['acct'], action: 'SCMP_ACT_ERRNO', errnoRet: 4096 }] })).toMatch(/syscalls\[0\]\.errnoRet: expected an errno in 0\.\.4095/);
  });

  it('copies legacy architectures as they are and omits architectures when archMap lacks the target', () => {
    expect(plan({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['SCMP_ARCH_X86_64'], syscalls: [] }).architectures).toEqual(['SCMP_ARCH_X86_64']);
    const armOnly = plan({ defaultAction: 'SCMP_ACT_ALLOW', archMap: [ARCH_MAP[1]], syscalls: [] });
    expect('architectures' in armOnly).toBe(false);
    expect(refusal({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['SCMP_ARCH_X86_64'], archMap: ARCH_MAP, syscalls: [] })).toBe(
      'seccomp template: architectures and archMap are both given; a template uses one or the other',
    );
    expect(refusal({ defaultAction: 'SCMP_ACT_ALLOW', archMap: [ARCH_MAP[0], ARCH_MAP[0]], syscalls: [] })).toMatch(/archMap\[1\]\.architecture: SCMP_ARCH_X86_64 is listed twice/);
  });

  it('refuses unknown shapes with the field\'s path', () => {
    const base = { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [] as unknown[] };
    const withRule = (rule: object) => ({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', ...rule }] });
    expect(refusal({ ...base, defaultActon: 'x' })).toBe('seccomp template: defaultActon: unknown field');
    expect(refusal({ syscalls: [] })).toBe('seccomp template: defaultAction: missing required field');
    expect(refusal({ defaultAction: 'SCMP_ACT_ERRNO' })).toBe('seccomp template: syscalls: missing required field');
    expect(refusal(withRule({ includes: { minKernal: '5.8' } }))).toBe('seccomp template: syscalls[0].includes.minKernal: unknown field');
    expect(refusal(withRule({ includes: { caps: ['SYS_ADMIN'] } }))).toMatch(/syscalls\[0\]\.includes\.caps\[0\]: expected a capability name/);
    expect(refusal(withRule({ excludes: { arches: ['x86_64'] } }))).toMatch(/syscalls\[0\]\.excludes\.arches\[0\]: expected one of x86, amd64/);
    expect(refusal(withRule({ includes: { minKernel: '5' } }))).toMatch(/syscalls\[0\]\.includes\.minKernel: expected "<major>\.<minor>"/);
    expect(refusal(withRule({ action: 'SCMP_ACT_NOTIFY' }))).toMatch(/syscalls\[0\]\.action: expected one of .*SCMP_ACT_NOTIFY needs a seccomp agent/);
    expect(refusal(withRule({ args: [{ index: 6, value: 0, op: 'SCMP_CMP_EQ' }] }))).toMatch(/syscalls\[0\]\.args\[0\]\.index: expected an argument index 0\.\.5/);
    expect(refusal(withRule({ args: [{ index: 0, value: 0, op: 'SCMP_CMP_IN' }] }))).toMatch(/syscalls\[0\]\.args\[0\]\.op: expected one of SCMP_CMP_NE/);
    expect(refusal(withRule({ args: [{ index: 0, value: 2 ** 63, op: 'SCMP_CMP_EQ' }] }))).toMatch(/syscalls\[0\]\.args\[0\]\.value: a value past 2\^53-1/);
    expect(refusal(withRule({ args: [{ index: 0, value: -1, op: 'SCMP_CMP_EQ' }] }))).toMatch(/syscalls\[0\]\.args\[0\]\.value: expected an unsigned integer/);
    expect(refusal(withRule({ names: ['Read'] }))).toMatch(/syscalls\[0\]\.names\[0\]: expected a syscall name/);
    expect(refusal(withRule({ name: 'write' }))).toBe('seccomp template: syscalls[0]: name and names are both given; a rule uses one or the other');
    expect(refusal({ ...base, syscalls: [{ names: [], action: 'SCMP_ACT_ALLOW' }] })).toBe('seccomp template: syscalls[0]: names the rule applies to are missing');
    expect(refusal({ ...base, flags: ['SECCOMP_FILTER_FLAG_BOGUS'] })).toMatch(/flags\[0\]: expected one of SECCOMP_FILTER_FLAG_TSYNC/);
    expect(refusal({ ...base, listenerPath: '/run/agent.sock' })).toBe('seccomp template: listenerPath: unknown field (a seccomp listener needs an agent, which mos does not run)');
    expect(refusal({ ...base, archMap: [{ architecture: 'x86_64' }] })).toMatch(/archMap\[0\]\.architecture: expected an architecture such as SCMP_ARCH_X86_64/);
    expect(refusal([])).toBe('seccomp template: expected a JSON object');
    expect(refusal(null)).toBe('seccomp template: expected a JSON object');
  });

  it('lists at most five problems and counts the rest', () => {
    const bad = { names: ['read'], action: 'SCMP_ACT_ALLOWED' };
    const message = refusal({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [bad, bad, bad, bad, bad, bad] });
    expect(message).toMatch(/; and 1 more$/);
    expect(message.split('; ')).toHaveLength(6);
  });

  it('refuses a bad target', () => {
    const base = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [] };
    expect(refusal(base, { arch: 'riscv64' as 'x86_64', capabilities: [] })).toBe('seccomp template: target architecture "riscv64" is not one of x86_64, aarch64');
    expect(refusal(base, { arch: 'constructor' as 'x86_64', capabilities: [] })).toMatch(/target architecture "constructor"/);
    expect(refusal(base, { arch: 'x86_64', capabilities: ['sys_admin'] })).toMatch(/target capability "sys_admin"/);
    expect(refusal(base, { arch: 'x86_64', capabilities: [], kernel: 'linux-6' })).toMatch(/target kernel "linux-6"/);
  });

  it('reports rules shadowed by an earlier unconditional rule for the same syscall', () => {
    const seccomp = plan({
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        { names: ['read', 'setns'], action: 'SCMP_ACT_ALLOW' },
        { names: ['setns'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
        { names: ['read'], action: 'SCMP_ACT_ALLOW' },
        { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 16, op: 'SCMP_CMP_NE' }] },
        { names: ['socket'], action: 'SCMP_ACT_ERRNO' },
      ],
    });
    expect(computeShadowedSyscalls(seccomp)).toEqual([{ name: 'setns', rule: 0, action: 'SCMP_ACT_ALLOW', shadowedRule: 1, shadowedAction: 'SCMP_ACT_ERRNO' }]);
  });

  it('maps Node architectures', () => {
    expect(seccompArchOf('x64')).toBe('x86_64');
    expect(seccompArchOf('arm64')).toBe('aarch64');
    expect(seccompArchOf('ia32')).toBeNull();
  });

  it.skipIf(process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch))('has the errno numbers this Linux host has', () => {
    const host = osConstants.errno as Record<string, number>;
    const shared = Object.keys(GENERIC_ERRNO).filter((name) => name in host);
    expect(shared.length).toBeGreaterThan(70);
    for (const name of shared) expect([name, GENERIC_ERRNO[name]]).toEqual([name, host[name]]);
  });
});

describe.skipIf(!existsSync(SECCOMP_TEMPLATE_PATH))(`Debian's template (${SECCOMP_TEMPLATE_PATH})`, () => {
  const template: unknown = existsSync(SECCOMP_TEMPLATE_PATH) ? JSON.parse(readFileSync(SECCOMP_TEMPLATE_PATH, 'utf8')) : null;

  it('resolves for x86_64 with mos\'s default capabilities', () => {
    const result = planDefaultSeccomp(template, { arch: 'x86_64' });
    if (!result.ok) throw new Error(result.message);
    const seccomp = result.seccomp;
    expect(seccomp.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(seccomp.defaultErrnoRet).toBe(38);
    expect(seccomp.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    for (const name of ['read', 'write', 'execve', 'openat', 'clone', 'exit_group', 'arch_prctl', 'chroot']) expect([name, outcome(seccomp, name)]).toEqual([name, 'SCMP_ACT_ALLOW']);
    for (const name of ['kexec_load', 'init_module', 'finit_module', 'delete_module', 'sethostname', 'bpf', 'perf_event_open', 'swapon', 'userfaultfd', 'acct', 'iopl', 'settimeofday']) {
      expect([name, outcome(seccomp, name)]).toEqual([name, 'errno 1']);
    }
    // Unknown to the profile: ENOSYS, so programs fall back as on an older kernel.
    expect(outcome(seccomp, 'no_such_syscall')).toBe('errno 38');
    expect(outcome(seccomp, 'personality')).toBe('conditional');
    // The arm-only rule is gone.
    expect(kept(seccomp).flat()).not.toContain('set_tls');
  });

  it('leaves mount and unshare to the kernel\'s capability checks (podman\'s profile allows them)', () => {
    const seccomp = plan(template, { arch: 'x86_64', capabilities: DEFAULT_CAPABILITIES });
    for (const name of ['mount', 'umount2', 'unshare', 'pivot_root']) expect([name, outcome(seccomp, name)]).toEqual([name, 'SCMP_ACT_ALLOW']);
  });

  it('allows the CAP_SYS_ADMIN and CAP_SYS_MODULE syscalls when the container has those capabilities', () => {
    const seccomp = plan(template, { arch: 'x86_64', capabilities: [...DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN', 'CAP_SYS_MODULE'] });
    for (const name of ['sethostname', 'setns', 'bpf', 'init_module', 'mount']) expect([name, outcome(seccomp, name)]).toEqual([name, 'SCMP_ACT_ALLOW']);
    expect(outcome(seccomp, 'kexec_load')).toBe('errno 1');
    expect(computeShadowedSyscalls(seccomp)).toEqual([]);
  });

  it('has setns both allowed and denied without CAP_SYS_ADMIN; the allow comes first and wins', () => {
    const seccomp = plan(template, { arch: 'x86_64', capabilities: DEFAULT_CAPABILITIES });
    expect(computeShadowedSyscalls(seccomp).map((s) => [s.name, s.action, s.shadowedAction])).toEqual([['setns', 'SCMP_ACT_ALLOW', 'SCMP_ACT_ERRNO']]);
  });

  it('resolves for aarch64', () => {
    const seccomp = plan(template, { arch: 'aarch64', capabilities: DEFAULT_CAPABILITIES });
    expect(seccomp.architectures).toEqual(['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
    expect(outcome(seccomp, 'set_tls')).toBe('SCMP_ACT_ALLOW');
    expect(kept(seccomp).flat()).not.toContain('arch_prctl');
  });
});
