/**
 * install.json's strict schema (project-machine's `InstallFile`, reference-mos.md §1.2), with the
 * bugs that document lists fixed:
 *
 * - ports are integers 1-65535 (project-machine accepted 65536);
 * - service names are non-empty, path-safe and unique; at most one `hostfs` target;
 * - network types are host | none | simple, and only `simple` (container targets only) may carry
 *   ipv4, ipv6 and ports; a simple network with ports needs an ipv4 address (project-machine
 *   failed at activation);
 * - host ports are unique across the whole install (its `UsedPorts` was never filled), and so
 *   are static ipv4 and ipv6 addresses; subnets are the same or disjoint, leave room for the
 *   gateway mos puts on the bridge, and stay clear of loopback, link-local and multicast; an
 *   address is not its subnet's network, broadcast or gateway address (services/network.ts
 *   `checkNetworkConflicts`, which the network planner applies too);
 * - storage labels are unique and not one of the machine's own partitions, a target's storage
 *   names a declared label, and its `dest` is an absolute, normalised path;
 * - sizes are positive integers; digests are `sha256:<64 hex>`;
 * - `limits` (mos's extension, optional) belongs to container targets only, names at least one of
 *   `memory_max` (bytes, at least 1 MiB) and `pids_max` (1 to 4194304).
 *
 * It is applied only to bytes whose signature has been verified (verify-install.ts); unknown
 * fields are refused rather than ignored so that a field mos does not understand cannot change
 * what a signed manifest means.
 */
import * as v from 'valibot';
import { checkNetworkConflicts } from '../../services/network.ts';
import { DIGEST_PATTERN, INSTALL_FILE_VERSION, LIMIT_BOUNDS, type InstallFile } from './formats.ts';

/** Service names: the supervisor's rule (init/supervisor/spec.ts), so they are path-safe too. */
export const TARGET_NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
/** nsgroup names; "" and "none" mean no user namespace (project-machine's meaning). */
export const NSGROUP_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
/** Storage labels become GPT partition names (at most 36 UTF-16 units). */
export const STORAGE_LABEL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,35}$/;
/** Partition labels the machine itself uses (project-machine's reserved list). */
export const RESERVED_STORAGE_LABELS: readonly string[] = ['esp', 'machine-config', 'machine-store', 'machine-scratch'];

const nonEmpty = (what: string) => v.pipe(v.string(), v.minLength(1, `expected a non-empty ${what}`), v.maxLength(256, `${what} is longer than 256 characters`));
const printable = (value: string) => !/[\u0000-\u001f\u007f]/.test(value);
const PositiveInt = v.pipe(v.number(), v.integer('expected an integer'), v.minValue(1, 'expected a positive integer'), v.maxValue(Number.MAX_SAFE_INTEGER));
const Port = v.pipe(v.number(), v.integer('expected an integer port'), v.minValue(1, 'expected a port in 1-65535'), v.maxValue(65535, 'expected a port in 1-65535'));

const StorageItemSchema = v.strictObject({
  label: v.pipe(
    v.string(),
    v.regex(STORAGE_LABEL_PATTERN, 'expected a label of letters, digits, "_", "." and "-" (at most 36)'),
    v.check((label) => !RESERVED_STORAGE_LABELS.includes(label), 'is a label the machine reserves for itself'),
  ),
  persistent: v.boolean(),
  nsgroup: v.pipe(v.string(), v.check((name) => name === '' || NSGROUP_PATTERN.test(name), 'expected "", "none" or an nsgroup name')),
  size: PositiveInt,
});

const NetworkSchema = v.strictObject({
  type: v.picklist(['host', 'none', 'simple'], 'expected host, none or simple'),
  ipv4: v.string(),
  ipv6: v.string(),
  ports: v.nullable(v.array(v.strictObject({ host: Port, container: Port }))),
});

const TargetStorageSchema = v.strictObject({
  dest: v.pipe(
    v.string(),
    v.check(
      (dest) => dest.startsWith('/') && dest !== '/' && dest.length <= 4096 && printable(dest) && dest.slice(1).split('/').every((part) => part !== '' && part !== '.' && part !== '..'),
      'expected an absolute path without ".", ".." or empty components',
    ),
  ),
  label: v.string(),
});

const LimitsSchema = v.pipe(
  v.strictObject({
    memory_max: v.optional(
      v.pipe(v.number(), v.integer('expected an integer number of bytes'), v.minValue(LIMIT_BOUNDS.memoryMin, `expected at least ${LIMIT_BOUNDS.memoryMin} bytes (1 MiB)`), v.maxValue(Number.MAX_SAFE_INTEGER)),
    ),
    pids_max: v.optional(
      v.pipe(v.number(), v.integer('expected an integer'), v.minValue(1, 'expected at least 1'), v.maxValue(LIMIT_BOUNDS.pidsMax, `expected at most ${LIMIT_BOUNDS.pidsMax}`)),
    ),
  }),
  v.check((limits) => limits.memory_max !== undefined || limits.pids_max !== undefined, 'expected memory_max or pids_max (leave limits out for none)'),
);

const TargetSchema = v.strictObject({
  service_name: v.pipe(v.string(), v.regex(TARGET_NAME_PATTERN, 'expected a non-empty name of lowercase letters, digits, "_", "." and "-"')),
  version: v.pipe(nonEmpty('version'), v.check(printable, 'expected no control characters')),
  service_type: v.picklist(['hostfs', 'container', 'fs-only'], 'expected hostfs, container or fs-only'),
  network: NetworkSchema,
  nsgroup: v.pipe(v.string(), v.check((name) => name === '' || NSGROUP_PATTERN.test(name), 'expected "", "none" or an nsgroup name')),
  digest: v.pipe(v.string(), v.regex(DIGEST_PATTERN, 'expected sha256:<64 lowercase hex digits>')),
  storage: v.nullable(v.array(TargetStorageSchema)),
  size: PositiveInt,
  limits: v.optional(LimitsSchema),
});

export const InstallFileSchema = v.strictObject({
  version: v.literal(INSTALL_FILE_VERSION, `expected version ${INSTALL_FILE_VERSION}`),
  product: v.pipe(nonEmpty('product'), v.check((p) => printable(p) && p.trim() === p, 'expected no control characters or surrounding spaces')),
  storage: v.nullable(v.array(StorageItemSchema)),
  targets: v.pipe(v.array(TargetSchema), v.minLength(1, 'expected at least one target')),
  update_type: v.picklist(['complete', 'partial'], 'expected complete or partial'),
});

/** What the schema alone cannot say: cross-field and cross-target rules. Empty when fine. */
export function checkInstallFile(file: InstallFile): string[] {
  const problems: string[] = [];
  const labels = new Set<string>();
  (file.storage ?? []).forEach((item, i) => {
    if (labels.has(item.label)) problems.push(`storage[${i}].label: duplicate label "${item.label}"`);
    labels.add(item.label);
  });

  const names = new Set<string>();
  let hostfs: string | null = null;
  file.targets.forEach((target, i) => {
    const at = `targets[${i}] (${target.service_name})`;
    if (names.has(target.service_name)) problems.push(`${at}.service_name: duplicate service name`);
    names.add(target.service_name);
    if (target.service_type === 'hostfs') {
      if (hostfs !== null) problems.push(`${at}.service_type: a second hostfs target (the first is ${hostfs})`);
      hostfs ??= target.service_name;
    }
    // Only a container gets a cgroup of its own for the limits to apply to.
    if (target.limits !== undefined && target.service_type !== 'container') problems.push(`${at}.limits: only a container target has limits (this one is ${target.service_type})`);

    const dests = new Set<string>();
    (target.storage ?? []).forEach((mount, s) => {
      if (!labels.has(mount.label)) problems.push(`${at}.storage[${s}].label: no storage item labelled "${mount.label}"`);
      if (dests.has(mount.dest)) problems.push(`${at}.storage[${s}].dest: ${mount.dest} is mounted twice`);
      dests.add(mount.dest);
    });
  });
  // Networks: addresses, subnets, gateways and forwarded ports across all targets.
  problems.push(...checkNetworkConflicts(file.targets));
  return problems;
}

export type InstallParseResult = { ok: true; install: InstallFile } | { ok: false; problems: string[]; issues: v.BaseIssue<unknown>[] };

/** Validates a parsed install.json document: the schema, then `checkInstallFile`. */
export function parseInstallFile(document: unknown): InstallParseResult {
  const result = v.safeParse(InstallFileSchema, document);
  if (!result.success) return { ok: false, problems: result.issues.map(describeIssue), issues: result.issues };
  const install: InstallFile = result.output;
  const problems = checkInstallFile(install);
  return problems.length > 0 ? { ok: false, problems, issues: [] } : { ok: true, install };
}

/** `targets[2].network.type`-style path of a valibot issue. */
export function issuePath(issue: v.BaseIssue<unknown>): string {
  let path = '';
  for (const item of issue.path ?? []) {
    const key = item.key;
    path += typeof key === 'number' ? `[${key}]` : path ? `.${String(key)}` : String(key);
  }
  return path;
}

export function describeIssue(issue: v.BaseIssue<unknown>): string {
  const path = issuePath(issue);
  // strictObject reports an unknown key as an issue on that key with expected "never".
  if (issue.expected === 'never' && issue.path?.length) return `${path}: unknown field`;
  if (issue.received === 'undefined' && issue.path?.length) return `${path}: missing required field`;
  return path ? `${path}: ${issue.message}` : issue.message;
}
