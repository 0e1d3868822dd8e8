/**
 * A container's seccomp filter (config.json's `linux.seccomp`), resolved from containers-common's
 * default profile: the one podman hands to crun. crun itself has no default and installs no
 * filter when config.json has none (docs/crun.md §7).
 *
 * The profile is data read at build or boot time, never a copy in this repository: Debian's
 * `golang-github-containers-common` installs it as SECCOMP_TEMPLATE_PATH. That file is a
 * *template*, not an OCI seccomp object: rules carry `includes`/`excludes` conditions on the
 * container's capabilities (`caps`), the architecture (`arches`, Go names such as amd64) and,
 * in Docker's dialect, the kernel (`minKernel`); `archMap` lists each architecture's
 * sub-architectures; errnos may be given by name (`errno: "EPERM"`). planSeccomp resolves it for
 * one architecture and one capability set the way podman does (containers/common's
 * setupSeccomp, plus moby's minKernel), so a mos container gets podman's filter:
 *
 * - `architectures`: the template's legacy `architectures` as they are, or the archMap entry of
 *   the target (`SCMP_ARCH_X86_64` + `SCMP_ARCH_X86`, `SCMP_ARCH_X32`); none when archMap has no
 *   entry for it (then libseccomp takes the native architecture only). Both given: refused.
 * - a rule is dropped when one of `excludes.arches` is the target's Go name, one of
 *   `excludes.caps` is in the capability set, or the target kernel is at least
 *   `excludes.minKernel`; and when `includes.arches` is given without the target's name, one of
 *   `includes.caps` is missing from the set, or the kernel is older than `includes.minKernel`.
 *   The capability set is the container's *bounding* set (what podman compares).
 * - a kept rule becomes `{names, action, args?, errnoRet?}` in the template's order; `name`
 *   (the old single form) becomes `names: [name]`.
 * - `defaultErrno`/`errno` names become numbers (the asm-generic table, which x86_64 and aarch64
 *   share); when both a name and a number are given they must agree.
 * - `flags` are copied.
 *
 * Stricter than podman, on purpose (a filter that silently means less than it says is worse
 * than a refusal): unknown fields, actions, operators, flags, architecture and capability names
 * are refused with the field's path; so are a listener (`listenerPath`, SCMP_ACT_NOTIFY: mos
 * runs no seccomp agent), a rule with no syscall name, an errno on an action that takes none,
 * argument values past 2^53 (JSON.parse cannot carry them exactly), and a `minKernel` when the
 * target's kernel is not known (podman's containers/common ignores minKernel; moby compares it
 * with the running kernel; mos plans for a machine it may not run on).
 *
 * Pure: no file is read here. readFile + JSON.parse are the caller's.
 */
import * as v from 'valibot';
import { DEFAULT_CAPABILITIES } from './bundle.ts';

/** Where Debian's golang-github-containers-common installs the default profile (a template). */
export const SECCOMP_TEMPLATE_PATH = '/usr/share/containers/seccomp.json';

/** The architectures mos builds machines for (uname -m spelling). */
export type SeccompArch = 'x86_64' | 'aarch64';

export interface SeccompTarget {
  arch: SeccompArch;
  /** The container's bounding capabilities, e.g. CAP_CHOWN. */
  capabilities: readonly string[];
  /** The target kernel's release (`uname -r`, e.g. "6.1.0-18-amd64"), for minKernel conditions. */
  kernel?: string;
}

export const SECCOMP_ACTIONS = [
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_TRAP',
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_TRACE',
  'SCMP_ACT_ALLOW',
  'SCMP_ACT_LOG',
] as const;
export type SeccompAction = (typeof SECCOMP_ACTIONS)[number];

export const SECCOMP_OPERATORS = ['SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ'] as const;
export type SeccompOperator = (typeof SECCOMP_OPERATORS)[number];

/** The filter flags crun 1.8 accepts (measured: any other name is refused with "unknown seccomp option"). */
export const SECCOMP_FLAGS = ['SECCOMP_FILTER_FLAG_TSYNC', 'SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW', 'SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV'] as const;
export type SeccompFlag = (typeof SECCOMP_FLAGS)[number];

export interface OciSeccompArg {
  index: number;
  value: number;
  valueTwo: number;
  op: SeccompOperator;
}

export interface OciSeccompSyscall {
  names: string[];
  action: SeccompAction;
  args?: OciSeccompArg[];
  errnoRet?: number;
}

/** config.json's `linux.seccomp` (OCI runtime spec 1.0.2), as crun 1.8 reads it. */
export interface OciSeccomp {
  defaultAction: SeccompAction;
  defaultErrnoRet?: number;
  architectures?: string[];
  flags?: SeccompFlag[];
  syscalls: OciSeccompSyscall[];
}

export type SeccompPlanResult = { ok: true; seccomp: OciSeccomp } | { ok: false; message: string };

/** The `arches` names of a template (libseccomp-golang's spelling of each architecture). */
export const TEMPLATE_ARCH_NAMES: readonly string[] = [
  'x86', 'amd64', 'x32', 'arm', 'arm64', 'mips', 'mips64', 'mips64n32', 'mipsel', 'mipsel64', 'mipsel64n32',
  'ppc', 'ppc64', 'ppc64le', 's390', 's390x', 'parisc', 'parisc64', 'riscv64', 'loong64', 'm68k', 'sh', 'sheb',
];

/** The target as the template names it: its libseccomp architecture and its Go (`arches`) name. */
export const SECCOMP_ARCHES: Readonly<Record<SeccompArch, { scmp: string; goName: string }>> = {
  x86_64: { scmp: 'SCMP_ARCH_X86_64', goName: 'amd64' },
  aarch64: { scmp: 'SCMP_ARCH_AARCH64', goName: 'arm64' },
};

/**
 * Linux errno numbers by name on every architecture that uses asm-generic/errno*.h, which
 * includes x86_64 and aarch64 (not alpha, mips, parisc, sparc). Aliases: EWOULDBLOCK = EAGAIN,
 * EDEADLOCK = EDEADLK, ENOTSUP = EOPNOTSUPP.
 */
export const GENERIC_ERRNO: Readonly<Record<string, number>> = Object.freeze({
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, ENOEXEC: 8, EBADF: 9, ECHILD: 10,
  EAGAIN: 11, EWOULDBLOCK: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, ENOTBLK: 15, EBUSY: 16, EEXIST: 17, EXDEV: 18,
  ENODEV: 19, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, ETXTBSY: 26, EFBIG: 27,
  ENOSPC: 28, ESPIPE: 29, EROFS: 30, EMLINK: 31, EPIPE: 32, EDOM: 33, ERANGE: 34, EDEADLK: 35, EDEADLOCK: 35,
  ENAMETOOLONG: 36, ENOLCK: 37, ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40, ENOMSG: 42, EIDRM: 43, ECHRNG: 44,
  EL2NSYNC: 45, EL3HLT: 46, EL3RST: 47, ELNRNG: 48, EUNATCH: 49, ENOCSI: 50, EL2HLT: 51, EBADE: 52, EBADR: 53,
  EXFULL: 54, ENOANO: 55, EBADRQC: 56, EBADSLT: 57, EBFONT: 59, ENOSTR: 60, ENODATA: 61, ETIME: 62, ENOSR: 63,
  ENONET: 64, ENOPKG: 65, EREMOTE: 66, ENOLINK: 67, EADV: 68, ESRMNT: 69, ECOMM: 70, EPROTO: 71, EMULTIHOP: 72,
  EDOTDOT: 73, EBADMSG: 74, EOVERFLOW: 75, ENOTUNIQ: 76, EBADFD: 77, EREMCHG: 78, ELIBACC: 79, ELIBBAD: 80,
  ELIBSCN: 81, ELIBMAX: 82, ELIBEXEC: 83, EILSEQ: 84, ERESTART: 85, ESTRPIPE: 86, EUSERS: 87, ENOTSOCK: 88,
  EDESTADDRREQ: 89, EMSGSIZE: 90, EPROTOTYPE: 91, ENOPROTOOPT: 92, EPROTONOSUPPORT: 93, ESOCKTNOSUPPORT: 94,
  EOPNOTSUPP: 95, ENOTSUP: 95, EPFNOSUPPORT: 96, EAFNOSUPPORT: 97, EADDRINUSE: 98, EADDRNOTAVAIL: 99,
  ENETDOWN: 100, ENETUNREACH: 101, ENETRESET: 102, ECONNABORTED: 103, ECONNRESET: 104, ENOBUFS: 105,
  EISCONN: 106, ENOTCONN: 107, ESHUTDOWN: 108, ETOOMANYREFS: 109, ETIMEDOUT: 110, ECONNREFUSED: 111,
  EHOSTDOWN: 112, EHOSTUNREACH: 113, EALREADY: 114, EINPROGRESS: 115, ESTALE: 116, EUCLEAN: 117, ENOTNAM: 118,
  ENAVAIL: 119, EISNAM: 120, EREMOTEIO: 121, EDQUOT: 122, ENOMEDIUM: 123, EMEDIUMTYPE: 124, ECANCELED: 125,
  ENOKEY: 126, EKEYEXPIRED: 127, EKEYREVOKED: 128, EKEYREJECTED: 129, EOWNERDEAD: 130, ENOTRECOVERABLE: 131,
  ERFKILL: 132, EHWPOISON: 133,
});

/** Highest errno the kernel returns (MAX_ERRNO). */
const MAX_ERRNO = 4095;
const CAPABILITY_PATTERN = /^CAP_[A-Z][A-Z0-9_]*$/;
const SYSCALL_PATTERN = /^[a-z_][a-z0-9_]*$/;
const SCMP_ARCH_PATTERN = /^SCMP_ARCH_[A-Z0-9_]+$/;
const MIN_KERNEL_PATTERN = /^(\d+)\.(\d+)$/;
/** uname -r: "6.1.0-18-amd64", "6.18.44-fc-v769", "6.1". */
const KERNEL_RELEASE_PATTERN = /^(\d+)\.(\d+)(?:[.\-+_~].*)?$/;

// ---- The template's schema ----

const Errno = v.pipe(v.number(), v.integer('expected an integer errno'), v.minValue(0, `expected an errno in 0..${MAX_ERRNO}`), v.maxValue(MAX_ERRNO, `expected an errno in 0..${MAX_ERRNO}`));
const ErrnoText = v.pipe(
  v.string(),
  v.check((text) => /^\d+$/.test(text) || Object.hasOwn(GENERIC_ERRNO, text), 'expected an errno name such as EPERM, or a decimal number'),
);
const ArgValue = v.pipe(
  v.number(),
  v.integer('expected an integer'),
  v.minValue(0, 'expected an unsigned integer'),
  v.maxValue(Number.MAX_SAFE_INTEGER, 'a value past 2^53-1 cannot be carried exactly through JSON.parse'),
);
const Capability = v.pipe(v.string(), v.regex(CAPABILITY_PATTERN, 'expected a capability name such as CAP_SYS_ADMIN'));
const SyscallName = v.pipe(v.string(), v.regex(SYSCALL_PATTERN, 'expected a syscall name of lowercase letters, digits and "_"'));
const ScmpArch = v.pipe(v.string(), v.regex(SCMP_ARCH_PATTERN, 'expected an architecture such as SCMP_ARCH_X86_64'));
const Action = v.picklist(SECCOMP_ACTIONS, `expected one of ${SECCOMP_ACTIONS.join(', ')} (SCMP_ACT_NOTIFY needs a seccomp agent, which mos does not run)`);

const FilterSchema = v.strictObject({
  caps: v.optional(v.nullable(v.array(Capability))),
  arches: v.optional(v.nullable(v.array(v.picklist(TEMPLATE_ARCH_NAMES, `expected one of ${TEMPLATE_ARCH_NAMES.join(', ')}`)))),
  minKernel: v.optional(v.pipe(v.string(), v.regex(MIN_KERNEL_PATTERN, 'expected "<major>.<minor>", e.g. "5.8"'))),
});

const ArgSchema = v.strictObject({
  index: v.pipe(v.number(), v.integer('expected an integer'), v.minValue(0, 'expected an argument index 0..5'), v.maxValue(5, 'expected an argument index 0..5')),
  value: ArgValue,
  valueTwo: v.optional(ArgValue),
  op: v.picklist(SECCOMP_OPERATORS, `expected one of ${SECCOMP_OPERATORS.join(', ')}`),
});

const RuleSchema = v.strictObject({
  name: v.optional(SyscallName),
  names: v.optional(v.nullable(v.array(SyscallName))),
  action: Action,
  args: v.optional(v.nullable(v.array(ArgSchema))),
  comment: v.optional(v.string()),
  includes: v.optional(v.nullable(FilterSchema)),
  excludes: v.optional(v.nullable(FilterSchema)),
  errnoRet: v.optional(Errno),
  errno: v.optional(ErrnoText),
});

const TemplateSchema = v.strictObject({
  defaultAction: Action,
  defaultErrnoRet: v.optional(Errno),
  defaultErrno: v.optional(ErrnoText),
  architectures: v.optional(v.nullable(v.array(ScmpArch))),
  archMap: v.optional(v.nullable(v.array(v.strictObject({ architecture: ScmpArch, subArchitectures: v.optional(v.nullable(v.array(ScmpArch))) })))),
  syscalls: v.array(RuleSchema),
  flags: v.optional(v.nullable(v.array(v.picklist(SECCOMP_FLAGS, `expected one of ${SECCOMP_FLAGS.join(', ')}`)))),
});

type Template = v.InferOutput<typeof TemplateSchema>;
type Rule = v.InferOutput<typeof RuleSchema>;
type Filter = NonNullable<Rule['includes']>;

/** `syscalls[3].includes.caps[0]`-style path of a valibot issue. */
function issuePath(issue: v.BaseIssue<unknown>): string {
  let path = '';
  for (const item of issue.path ?? []) {
    const key = item.key;
    path += typeof key === 'number' ? `[${key}]` : path ? `.${String(key)}` : String(key);
  }
  return path;
}

function describeIssue(issue: v.BaseIssue<unknown>): string {
  const path = issuePath(issue);
  if (issue.expected === 'never' && issue.path?.length) {
    const hint = path === 'listenerPath' || path === 'listenerMetadata' ? ' (a seccomp listener needs an agent, which mos does not run)' : '';
    return `${path}: unknown field${hint}`;
  }
  if (issue.received === 'undefined' && issue.path?.length) return `${path}: missing required field`;
  return path ? `${path}: ${issue.message}` : issue.message;
}

function fail(message: string): SeccompPlanResult {
  return { ok: false, message: `seccomp template: ${message}` };
}

/** An errno given as a name or decimal text, and/or as a number; both must agree. */
function resolveErrno(where: string, text: string | undefined, number: number | undefined): { ok: true; errno: number | undefined } | { ok: false; message: string } {
  if (text === undefined) return { ok: true, errno: number };
  const fromText = /^\d+$/.test(text) ? Number(text) : GENERIC_ERRNO[text]!;
  if (fromText > MAX_ERRNO) return { ok: false, message: `${where}: errno ${text} is not in 0..${MAX_ERRNO}` };
  if (number !== undefined && number !== fromText) {
    return { ok: false, message: `${where}: errno ${JSON.stringify(text)} (${fromText}) disagrees with errnoRet ${number}` };
  }
  return { ok: true, errno: fromText };
}

const TAKES_ERRNO: ReadonlySet<SeccompAction> = new Set(['SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE']);

function parseKernel(release: string): [number, number] | null {
  const match = KERNEL_RELEASE_PATTERN.exec(release);
  return match ? [Number(match[1]), Number(match[2])] : null;
}

function kernelAtLeast(kernel: [number, number], min: string): boolean {
  const [, major, minor] = MIN_KERNEL_PATTERN.exec(min)!;
  return kernel[0] > Number(major) || (kernel[0] === Number(major) && kernel[1] >= Number(minor));
}

type Decision = { keep: boolean } | { error: string };

/** Whether a rule applies to the target, in moby's order of tests (excludes first). */
function decide(rule: Rule, where: string, goName: string, caps: ReadonlySet<string>, kernel: [number, number] | null): Decision {
  const excludes: Filter = rule.excludes ?? {};
  const includes: Filter = rule.includes ?? {};
  const needKernel = (field: string, min: string): Decision => ({
    error: `${where}.${field}.minKernel: "${min}" needs the target's kernel release (target.kernel)`,
  });
  if ((excludes.arches ?? []).includes(goName)) return { keep: false };
  if ((excludes.caps ?? []).some((cap) => caps.has(cap))) return { keep: false };
  if (excludes.minKernel !== undefined) {
    if (kernel === null) return needKernel('excludes', excludes.minKernel);
    if (kernelAtLeast(kernel, excludes.minKernel)) return { keep: false };
  }
  const arches = includes.arches ?? [];
  if (arches.length > 0 && !arches.includes(goName)) return { keep: false };
  if ((includes.caps ?? []).some((cap) => !caps.has(cap))) return { keep: false };
  if (includes.minKernel !== undefined) {
    if (kernel === null) return needKernel('includes', includes.minKernel);
    if (!kernelAtLeast(kernel, includes.minKernel)) return { keep: false };
  }
  return { keep: true };
}

/**
 * Resolves containers-common's seccomp template (the parsed JSON of SECCOMP_TEMPLATE_PATH) into
 * the `linux.seccomp` of a container on `target.arch` with `target.capabilities` as its bounding
 * set. Deterministic: the same template and target give the same object, keys in a fixed order.
 */
export function planSeccomp(template: unknown, target: SeccompTarget): SeccompPlanResult {
  // The target.
  if (!Object.hasOwn(SECCOMP_ARCHES, target.arch)) {
    return fail(`target architecture ${JSON.stringify(target.arch)} is not one of ${Object.keys(SECCOMP_ARCHES).join(', ')}`);
  }
  const arch = SECCOMP_ARCHES[target.arch];
  for (const cap of target.capabilities) {
    if (typeof cap !== 'string' || !CAPABILITY_PATTERN.test(cap)) return fail(`target capability ${JSON.stringify(cap)} is not a name such as CAP_SYS_ADMIN`);
  }
  let kernel: [number, number] | null = null;
  if (target.kernel !== undefined) {
    kernel = parseKernel(target.kernel);
    if (kernel === null) return fail(`target kernel ${JSON.stringify(target.kernel)} is not a release such as 6.1.0-18-amd64`);
  }

  // The template's shape.
  if (typeof template !== 'object' || template === null || Array.isArray(template)) return fail('expected a JSON object');
  const parsed = v.safeParse(TemplateSchema, template, { abortEarly: false });
  if (!parsed.success) {
    const listed = parsed.issues.slice(0, 5).map(describeIssue);
    if (parsed.issues.length > listed.length) listed.push(`and ${parsed.issues.length - listed.length} more`);
    return fail(listed.join('; '));
  }
  const t: Template = parsed.output;

  // What the schema alone cannot say.
  const legacyArches = t.architectures ?? [];
  const archMap = t.archMap ?? [];
  if (legacyArches.length > 0 && archMap.length > 0) return fail('architectures and archMap are both given; a template uses one or the other');
  const mapped = new Set<string>();
  for (const [i, entry] of archMap.entries()) {
    if (mapped.has(entry.architecture)) return fail(`archMap[${i}].architecture: ${entry.architecture} is listed twice`);
    mapped.add(entry.architecture);
  }
  const defaultErrno = resolveErrno('defaultErrno', t.defaultErrno, t.defaultErrnoRet);
  if (!defaultErrno.ok) return fail(defaultErrno.message);
  if (defaultErrno.errno !== undefined && !TAKES_ERRNO.has(t.defaultAction)) {
    return fail(`defaultErrnoRet: ${t.defaultAction} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)`);
  }

  // Architectures.
  let architectures: string[] | undefined;
  if (legacyArches.length > 0) architectures = [...legacyArches];
  else {
    const entry = archMap.find((candidate) => candidate.architecture === arch.scmp);
    if (entry !== undefined) architectures = [entry.architecture, ...(entry.subArchitectures ?? [])];
  }

  // Rules.
  const caps = new Set(target.capabilities);
  const syscalls: OciSeccompSyscall[] = [];
  for (const [i, rule] of t.syscalls.entries()) {
    const where = `syscalls[${i}]`;
    const names = rule.names ?? [];
    if (rule.name !== undefined && names.length > 0) return fail(`${where}: name and names are both given; a rule uses one or the other`);
    if (rule.name === undefined && names.length === 0) return fail(`${where}: names the rule applies to are missing`);
    const errno = resolveErrno(`${where}.errno`, rule.errno, rule.errnoRet);
    if (!errno.ok) return fail(errno.message);
    if (errno.errno !== undefined && !TAKES_ERRNO.has(rule.action)) {
      return fail(`${where}.errnoRet: ${rule.action} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)`);
    }
    const decision = decide(rule, where, arch.goName, caps, kernel);
    if ('error' in decision) return fail(decision.error);
    if (!decision.keep) continue;
    const args = (rule.args ?? []).map((arg) => ({ index: arg.index, value: arg.value, valueTwo: arg.valueTwo ?? 0, op: arg.op }));
    syscalls.push({
      names: rule.name !== undefined ? [rule.name] : [...names],
      action: rule.action,
      ...(args.length > 0 ? { args } : {}),
      ...(errno.errno !== undefined ? { errnoRet: errno.errno } : {}),
    });
  }

  const flags = t.flags ?? [];
  const seccomp: OciSeccomp = {
    defaultAction: t.defaultAction,
    ...(defaultErrno.errno !== undefined ? { defaultErrnoRet: defaultErrno.errno } : {}),
    ...(architectures !== undefined ? { architectures } : {}),
    ...(flags.length > 0 ? { flags: [...flags] } : {}),
    syscalls,
  };
  return { ok: true, seccomp };
}

/** The seccomp architecture of a Node `process.arch` value, or null for one mos does not build. */
export function seccompArchOf(nodeArch: string): SeccompArch | null {
  return nodeArch === 'x64' ? 'x86_64' : nodeArch === 'arm64' ? 'aarch64' : null;
}

/**
 * The filter for mos's containers today: every bundle from planBundleConfig has
 * DEFAULT_CAPABILITIES as its bounding set, so one resolution serves them all. Give it the parsed
 * JSON of SECCOMP_TEMPLATE_PATH; the result's `seccomp` goes to `linux.seccomp`
 * (services/container.ts `ContainerInput.seccomp`). Should capabilities become per service, call
 * planSeccomp with that service's bounding set instead.
 */
export function planDefaultSeccomp(template: unknown, target: { arch: SeccompArch; kernel?: string }): SeccompPlanResult {
  return planSeccomp(template, { arch: target.arch, capabilities: DEFAULT_CAPABILITIES, ...(target.kernel !== undefined ? { kernel: target.kernel } : {}) });
}

export interface ShadowedSyscall {
  name: string;
  /** Index in `syscalls` of the first unconditional rule naming it: the one crun applies. */
  rule: number;
  action: SeccompAction;
  /** A later unconditional rule naming it with another action (or errno), which has no effect. */
  shadowedRule: number;
  shadowedAction: SeccompAction;
}

/**
 * Syscalls that two rules without `args` name with different outcomes. crun 1.8 with libseccomp
 * 2.5.4 applies the first and ignores the second (measured: docs/seccomp.md), so the later rule
 * is dead. Debian's template has one such pair for a container without CAP_SYS_ADMIN: `setns`
 * is in the general allow list and in the EPERM list, so setns is allowed, as under podman.
 */
export function computeShadowedSyscalls(seccomp: OciSeccomp): ShadowedSyscall[] {
  const first = new Map<string, number>();
  const shadowed: ShadowedSyscall[] = [];
  seccomp.syscalls.forEach((rule, index) => {
    if (rule.args !== undefined && rule.args.length > 0) return;
    for (const name of rule.names) {
      const earlier = first.get(name);
      if (earlier === undefined) {
        first.set(name, index);
        continue;
      }
      const kept = seccomp.syscalls[earlier]!;
      if (kept.action !== rule.action || kept.errnoRet !== rule.errnoRet) {
        shadowed.push({ name, rule: earlier, action: kept.action, shadowedRule: index, shadowedAction: rule.action });
      }
    }
  });
  return shadowed;
}
