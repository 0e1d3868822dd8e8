/**
 * manifest.yaml, the user's input to `mosb manifest publish` → a validated `ImportFile`.
 *
 * The fields are project-machine's `ImportFile` and `UserTarget` (reference-mos.md §1.1), read
 * strictly: an unknown field, a value of the wrong type or out of range is an error naming its
 * path (`targets[0].network.ports[1].host`), and every error in the file is reported at once.
 * Where project-machine was loose this is stricter, on purpose:
 * - ports are 1..65535 (project-machine accepted 65536), and a host port is forwarded by at most
 *   one target (project-machine never checked);
 * - `update_type` defaults to `complete`, not `partial` (see `DEFAULT_UPDATE_TYPE`);
 * - a `container` target must name its `nsgroup` (`none` keeps project-machine's "no user
 *   namespace", but has to be written down: forgetting the line must not give host root);
 * - addresses and ports belong to `simple` networks only; target storage must name a declared
 *   volume; service names and volume labels are unique;
 * - `limits` (mos's extension: cgroup v2 `memory_max` and `pids_max`) belongs to containers only;
 *   memory is bytes or a binary size (`256MiB`, `1G` = 1 GiB), never the ambiguous `MB`;
 * - `source` is `oci:DIR:TAG` (a local OCI layout). `docker://` needs a registry, and mosb runs
 *   offline: copy the image first (`skopeo copy docker://… oci:DIR:TAG`).
 *
 * YAML is read as YAML 1.2 (core schema): `yes`/`no` are strings, not booleans, so they are
 * refused where a boolean is expected instead of being guessed at.
 */
import { isIPv4, isIPv6 } from 'node:net';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { DIGEST_PATTERN, INSTALL_FILE_VERSION, LIMIT_BOUNDS, type InstallFile, type StorageItem, type TargetLimits, type TargetNetwork, type TargetStorage } from '../init/trust/formats.ts';
import { SERVICE_NAME_PATTERN } from '../init/supervisor/spec.ts';
import { type ManifestIssue, MosbError } from './errors.ts';

/**
 * `complete` when manifest.yaml says nothing. project-machine defaulted to `partial`, which keeps
 * every installed target the new manifest does not name: the machine then runs a combination of
 * targets that no single signed manifest describes (reference-mos.md §8, items 1 and 15). With
 * `complete`, what runs is exactly what was signed, unless the author asks otherwise.
 */
export const DEFAULT_UPDATE_TYPE = 'complete';

/** Partition labels project-machine reserves for itself (docs/storage.md). */
export const RESERVED_STORAGE_LABELS: readonly string[] = ['esp', 'machine-config', 'machine-store', 'machine-scratch'];

/** A volume label: a GPT partition name is at most 36 characters. */
export const STORAGE_LABEL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$/;
/** An nsgroup name; `""` and `none` (no user namespace) are accepted besides. */
export const NSGROUP_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

export interface OciSource {
  /** The directory as written (relative to manifest.yaml's directory unless absolute). */
  dir: string;
  tag: string;
  /**
   * Set for `oci-archive:FILE:TAG` (a layout packed by skopeo or umoci): the file, as written.
   * `dir` is then where it was unpacked for this run (see `unpackArchiveSources`).
   */
  archive?: string;
}

/** How a source is named in messages: as the user wrote it. */
export function describeSource(source: OciSource): string {
  return source.archive !== undefined ? `oci-archive:${source.archive}:${source.tag}` : `oci:${source.dir}:${source.tag}`;
}

export interface UserTarget {
  service_name: string;
  source: OciSource;
  version: string;
  /** Optional pins: when given, the source's image manifest must have this digest and size. */
  digest: string | null;
  size: number | null;
  service_type: 'hostfs' | 'container' | 'fs-only';
  nsgroup: string;
  network: TargetNetwork;
  storage: TargetStorage[] | null;
  /** null: no limits (install.json then has no `limits` field). */
  limits: TargetLimits | null;
}

export interface ImportFile {
  version: typeof INSTALL_FILE_VERSION;
  /** The product uuid if manifest.yaml gives one (it must then be the keyset product's). */
  product: string | null;
  update_type: InstallFile['update_type'];
  storage: StorageItem[] | null;
  targets: UserTarget[];
}

const TOP_FIELDS = ['version', 'product', 'update_type', 'storage', 'targets'] as const;
const STORAGE_FIELDS = ['label', 'persistent', 'nsgroup', 'size'] as const;
const TARGET_FIELDS = [
  'service_name',
  'source',
  'version',
  'digest',
  'size',
  'service_type',
  'nsgroup',
  'network',
  'storage',
  'limits',
] as const;
const LIMIT_FIELDS = ['memory_max', 'pids_max'] as const;
const NETWORK_FIELDS = ['type', 'ipv4', 'ipv6', 'ports'] as const;
const PORT_FIELDS = ['host', 'container'] as const;
const TARGET_STORAGE_FIELDS = ['dest', 'label'] as const;

const SERVICE_TYPES = ['hostfs', 'container', 'fs-only'] as const;
const NETWORK_TYPES = ['host', 'none', 'simple'] as const;
const UPDATE_TYPES = ['complete', 'partial'] as const;

/** Parses and validates manifest.yaml's text. `name` is used in messages (the file's path). */
export function parseManifestYaml(text: string, name = 'manifest.yaml'): ImportFile {
  const documents = parseAllDocuments(text, { schema: 'core', uniqueKeys: true, merge: false, prettyErrors: true });
  if (documents.length === 0) throw new MosbError('E_MANIFEST_YAML', `${name}: empty file`);
  if (documents.length !== 1) throw new MosbError('E_MANIFEST_YAML', `${name}: expected one YAML document, found ${documents.length}`);
  const document = documents[0]!;
  const problem = document.errors[0];
  if (problem) {
    const where = problem.linePos ? `:${problem.linePos[0].line}:${problem.linePos[0].col}` : '';
    const message = problem.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new MosbError('E_MANIFEST_YAML', `${name}${where}: ${message}`, { cause: problem });
  }
  let value: unknown;
  try {
    value = document.toJS({ maxAliasCount: 100 });
  } catch (error) {
    throw new MosbError('E_MANIFEST_YAML', `${name}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  return validateImportFile(value, name);
}

/** Validates an already-parsed manifest.yaml value. */
export function validateImportFile(value: unknown, name = 'manifest.yaml'): ImportFile {
  const issues: ManifestIssue[] = [];
  const result = readImportFile(new Reader(issues), value);
  if (issues.length > 0 || result === undefined) {
    const lines = issues.map((issue) => `  ${issue.path === '' ? '(document)' : issue.path}: ${issue.message}`);
    throw new MosbError('E_MANIFEST_INVALID', `${name} is invalid:\n${lines.join('\n')}`, { issues });
  }
  return result;
}

/** `oci:DIR:TAG` → `{ dir, tag }`, or a message saying why not. */
export function parseSource(source: string): OciSource | string {
  if (/^docker:\/\//.test(source)) {
    return `${source}: docker:// sources are not supported offline; copy the image into a local OCI layout first (skopeo copy ${source} oci:DIR:TAG) and name that`;
  }
  if (source.startsWith('oci-archive:')) {
    const rest = source.slice('oci-archive:'.length);
    const colon = rest.lastIndexOf(':');
    if (colon <= 0) return `${source}: expected oci-archive:FILE:TAG (the tag is required)`;
    const file = rest.slice(0, colon);
    const tag = rest.slice(colon + 1);
    if (tag === '' || file.includes(':')) return `${source}: expected oci-archive:FILE:TAG (the file may not contain ':')`;
    return { dir: '', tag, archive: file };
  }
  if (!source.startsWith('oci:')) return `${source}: expected oci:DIR:TAG (a local OCI image layout) or oci-archive:FILE:TAG (one packed by skopeo or umoci)`;
  const rest = source.slice('oci:'.length);
  const colon = rest.indexOf(':');
  if (colon === -1) return `${source}: expected oci:DIR:TAG (the tag is required)`;
  const dir = rest.slice(0, colon);
  const tag = rest.slice(colon + 1);
  if (dir === '') return `${source}: the directory is empty`;
  if (tag === '' || tag.includes(':')) return `${source}: expected oci:DIR:TAG (the directory may not contain ':')`;
  return { dir, tag };
}

/** Collects issues while reading untyped YAML values. */
class Reader {
  constructor(readonly issues: ManifestIssue[]) {}

  fail(where: string, message: string): undefined {
    this.issues.push({ path: where, message });
    return undefined;
  }

  /** A mapping with only `allowed` keys; unknown keys are reported one by one. */
  mapping(where: string, value: unknown, allowed: readonly string[]): Record<string, unknown> | undefined {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return this.fail(where, `expected a mapping, got ${describe(value)}`);
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!allowed.includes(key)) this.fail(at(where, key), `unknown field (expected one of: ${allowed.join(', ')})`);
    }
    return record;
  }

  /** A sequence; `null` (YAML `~` or an empty value) counts as absent. */
  sequence(where: string, value: unknown): unknown[] | undefined {
    if (!Array.isArray(value)) return this.fail(where, `expected a list, got ${describe(value)}`);
    return value;
  }

  string(where: string, value: unknown, options: { nonEmpty?: boolean } = {}): string | undefined {
    if (typeof value !== 'string') return this.fail(where, `expected a string, got ${describe(value)}`);
    if (options.nonEmpty && value === '') return this.fail(where, 'must not be empty');
    return value;
  }

  integer(where: string, value: unknown, min: number, max: number, what = 'an integer'): number | undefined {
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) return this.fail(where, `expected ${what}, got ${describe(value)}`);
    if (value < min || value > max) return this.fail(where, `must be ${min}..${max}, got ${value}`);
    return value;
  }

  boolean(where: string, value: unknown): boolean | undefined {
    if (typeof value !== 'boolean') return this.fail(where, `expected true or false, got ${describe(value)}`);
    return value;
  }

  oneOf<T extends string>(where: string, value: unknown, choices: readonly T[]): T | undefined {
    if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
      return this.fail(where, `expected one of ${choices.join(' | ')}, got ${describe(value)}`);
    }
    return value as T;
  }

  required(where: string, record: Record<string, unknown>, key: string): unknown {
    if (!(key in record) || record[key] === null) {
      this.fail(at(where, key), 'required');
      return undefined;
    }
    return record[key];
  }
}

function readImportFile(r: Reader, value: unknown): ImportFile | undefined {
  const top = r.mapping('', value, TOP_FIELDS);
  if (!top) return undefined;

  let version: ImportFile['version'] | undefined;
  const rawVersion = r.required('', top, 'version');
  if (rawVersion !== undefined) {
    if (rawVersion !== INSTALL_FILE_VERSION) r.fail('version', `must be ${INSTALL_FILE_VERSION}, got ${describe(rawVersion)}`);
    else version = INSTALL_FILE_VERSION;
  }

  const product = top.product == null ? null : r.string('product', top.product, { nonEmpty: true });
  const updateType = top.update_type == null ? DEFAULT_UPDATE_TYPE : r.oneOf('update_type', top.update_type, UPDATE_TYPES);

  const storage = top.storage == null ? null : readStorageList(r, top.storage);
  const labels = new Set((storage ?? []).map((item) => item.label));

  const rawTargets = r.required('', top, 'targets');
  let targets: UserTarget[] | undefined;
  if (rawTargets !== undefined) {
    const list = r.sequence('targets', rawTargets);
    if (list && list.length === 0) r.fail('targets', 'at least one target is needed');
    if (list) targets = list.map((item, i) => readTarget(r, `targets[${i}]`, item, labels)).filter((t): t is UserTarget => t !== undefined);
  }

  if (targets) checkAcrossTargets(r, targets);
  if (version === undefined || product === undefined || updateType === undefined || storage === undefined || targets === undefined) return undefined;
  return { version, product, update_type: updateType, storage, targets };
}

function readStorageList(r: Reader, value: unknown): StorageItem[] | undefined {
  const list = r.sequence('storage', value);
  if (!list) return undefined;
  const items: StorageItem[] = [];
  const seen = new Set<string>();
  list.forEach((entry, i) => {
    const where = `storage[${i}]`;
    const record = r.mapping(where, entry, STORAGE_FIELDS);
    if (!record) return;
    const rawLabel = r.required(where, record, 'label');
    let label: string | undefined;
    if (rawLabel !== undefined) {
      label = r.string(at(where, 'label'), rawLabel);
      if (label !== undefined && !STORAGE_LABEL_PATTERN.test(label)) label = r.fail(at(where, 'label'), `expected ${STORAGE_LABEL_PATTERN.source}, got ${JSON.stringify(label)}`);
      else if (label !== undefined && RESERVED_STORAGE_LABELS.includes(label)) label = r.fail(at(where, 'label'), `${label} is reserved (${RESERVED_STORAGE_LABELS.join(', ')})`);
      else if (label !== undefined && seen.has(label)) label = r.fail(at(where, 'label'), `duplicate label ${label}`);
      if (label !== undefined) seen.add(label);
    }
    const persistent = record.persistent == null ? false : r.boolean(at(where, 'persistent'), record.persistent);
    const nsgroup = record.nsgroup == null ? '' : readNsgroup(r, at(where, 'nsgroup'), record.nsgroup);
    const rawSize = r.required(where, record, 'size');
    // MiB, as project-machine's code reads it (its docs' "30G" never parsed).
    const size = rawSize === undefined ? undefined : r.integer(at(where, 'size'), rawSize, 1, Number.MAX_SAFE_INTEGER, 'an integer number of MiB');
    if (label !== undefined && persistent !== undefined && nsgroup !== undefined && size !== undefined) items.push({ label, persistent, nsgroup, size });
  });
  return items.length === list.length ? items : undefined;
}

function readNsgroup(r: Reader, where: string, value: unknown): string | undefined {
  const nsgroup = r.string(where, value);
  if (nsgroup === undefined || nsgroup === '' || nsgroup === 'none') return nsgroup;
  if (!NSGROUP_PATTERN.test(nsgroup)) return r.fail(where, `expected "none" or ${NSGROUP_PATTERN.source}, got ${JSON.stringify(nsgroup)}`);
  return nsgroup;
}

function readTarget(r: Reader, where: string, value: unknown, labels: ReadonlySet<string>): UserTarget | undefined {
  const record = r.mapping(where, value, TARGET_FIELDS);
  if (!record) return undefined;
  const before = r.issues.length;

  const rawName = r.required(where, record, 'service_name');
  let serviceName = rawName === undefined ? undefined : r.string(at(where, 'service_name'), rawName);
  if (serviceName !== undefined && !SERVICE_NAME_PATTERN.test(serviceName)) {
    serviceName = r.fail(at(where, 'service_name'), `expected ${SERVICE_NAME_PATTERN.source}, got ${JSON.stringify(serviceName)}`);
  }

  const rawSource = r.required(where, record, 'source');
  let source: OciSource | undefined;
  const sourceText = rawSource === undefined ? undefined : r.string(at(where, 'source'), rawSource, { nonEmpty: true });
  if (sourceText !== undefined) {
    const parsed = parseSource(sourceText);
    if (typeof parsed === 'string') r.fail(at(where, 'source'), parsed);
    else source = parsed;
  }

  const rawVersion = r.required(where, record, 'version');
  // project-machine's version is a free-form string; YAML reads `version: 1.0` as a number, so
  // ask for quotes rather than guess how the number was written.
  const version =
    typeof rawVersion === 'number'
      ? r.fail(at(where, 'version'), `expected a string, got number ${rawVersion} (quote it: version: "${rawVersion}")`)
      : rawVersion === undefined
        ? undefined
        : r.string(at(where, 'version'), rawVersion, { nonEmpty: true });

  let digest: string | null | undefined = null;
  if (record.digest != null) {
    digest = r.string(at(where, 'digest'), record.digest);
    if (digest !== undefined && !DIGEST_PATTERN.test(digest)) digest = r.fail(at(where, 'digest'), `expected sha256:<64 hex digits>, got ${JSON.stringify(digest)}`);
  }
  const size = record.size == null ? null : r.integer(at(where, 'size'), record.size, 1, Number.MAX_SAFE_INTEGER);

  const rawType = r.required(where, record, 'service_type');
  const serviceType = rawType === undefined ? undefined : r.oneOf(at(where, 'service_type'), rawType, SERVICE_TYPES);

  let nsgroup: string | undefined;
  if (record.nsgroup == null) {
    if (serviceType === 'container') r.fail(at(where, 'nsgroup'), 'required for a container (write "none" to run it without a user namespace)');
    else nsgroup = '';
  } else {
    nsgroup = readNsgroup(r, at(where, 'nsgroup'), record.nsgroup);
  }

  // No network block: the least the target can get (loopback only).
  const network = record.network == null ? { type: 'none' as const, ipv4: '', ipv6: '', ports: null } : readNetwork(r, at(where, 'network'), record.network);

  let storage: TargetStorage[] | null | undefined = null;
  if (record.storage != null) storage = readTargetStorage(r, at(where, 'storage'), record.storage, labels);

  let limits: TargetLimits | null | undefined = null;
  if (record.limits != null) {
    limits = readLimits(r, at(where, 'limits'), record.limits);
    if (serviceType !== undefined && serviceType !== 'container') r.fail(at(where, 'limits'), `only a container target has limits (this one is ${serviceType})`);
  }

  if (r.issues.length > before) return undefined;
  return {
    service_name: serviceName!,
    source: source!,
    version: version!,
    digest: digest!,
    size: size!,
    service_type: serviceType!,
    nsgroup: nsgroup!,
    network: network!,
    storage: storage!,
    limits: limits!,
  };
}

/** Binary units only: `MB` could mean 10^6 or 2^20, and a memory limit should not be a guess. */
const MEMORY_UNITS: Record<string, number> = { '': 1, K: 1024, KiB: 1024, M: 1024 ** 2, MiB: 1024 ** 2, G: 1024 ** 3, GiB: 1024 ** 3 };

/** `memory_max`: an integer number of bytes, or `<integer><unit>` with a binary unit (`256MiB`, `1G`). */
export function parseMemorySize(value: unknown): number | string {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : `expected a positive integer number of bytes, got ${describe(value)}`;
  if (typeof value !== 'string') return `expected bytes or a size like 256MiB, got ${describe(value)}`;
  const match = /^([0-9]+) ?([A-Za-z]*)$/.exec(value);
  const unit = match?.[2] ?? '';
  if (!match || !(unit in MEMORY_UNITS)) {
    return `expected bytes or a size like 256MiB (units K/KiB, M/MiB, G/GiB, all powers of 1024), got ${JSON.stringify(value)}`;
  }
  const bytes = Number(match[1]) * MEMORY_UNITS[unit]!;
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : `${JSON.stringify(value)} is not a usable number of bytes`;
}

function readLimits(r: Reader, where: string, value: unknown): TargetLimits | undefined {
  const before = r.issues.length;
  const record = r.mapping(where, value, LIMIT_FIELDS);
  if (!record) return undefined;
  const limits: TargetLimits = {};
  if (record.memory_max != null) {
    const bytes = parseMemorySize(record.memory_max);
    if (typeof bytes === 'string') r.fail(at(where, 'memory_max'), bytes);
    else if (bytes < LIMIT_BOUNDS.memoryMin) r.fail(at(where, 'memory_max'), `must be at least 1MiB (${LIMIT_BOUNDS.memoryMin} bytes), got ${bytes} bytes`);
    else limits.memory_max = bytes;
  }
  if (record.pids_max != null) {
    const pids = r.integer(at(where, 'pids_max'), record.pids_max, 1, LIMIT_BOUNDS.pidsMax, 'an integer number of processes');
    if (pids !== undefined) limits.pids_max = pids;
  }
  if (r.issues.length > before) return undefined;
  if (limits.memory_max === undefined && limits.pids_max === undefined) return r.fail(where, 'expected memory_max or pids_max (leave limits out for none)');
  return limits;
}

function readNetwork(r: Reader, where: string, value: unknown): TargetNetwork | undefined {
  const record = r.mapping(where, value, NETWORK_FIELDS);
  if (!record) return undefined;
  const before = r.issues.length;
  const rawType = r.required(where, record, 'type');
  const type = rawType === undefined ? undefined : r.oneOf(at(where, 'type'), rawType, NETWORK_TYPES);
  const ipv4 = record.ipv4 == null ? '' : readAddress(r, at(where, 'ipv4'), record.ipv4, 4);
  const ipv6 = record.ipv6 == null ? '' : readAddress(r, at(where, 'ipv6'), record.ipv6, 6);
  let ports: TargetNetwork['ports'] | undefined = null;
  if (record.ports != null) {
    const list = r.sequence(at(where, 'ports'), record.ports);
    if (list) {
      ports = [];
      list.forEach((entry, i) => {
        const portWhere = `${where}.ports[${i}]`;
        const port = r.mapping(portWhere, entry, PORT_FIELDS);
        if (!port) return;
        const rawHost = r.required(portWhere, port, 'host');
        const rawContainer = r.required(portWhere, port, 'container');
        const host = rawHost === undefined ? undefined : r.integer(at(portWhere, 'host'), rawHost, 1, 65535, 'a port number');
        const container = rawContainer === undefined ? undefined : r.integer(at(portWhere, 'container'), rawContainer, 1, 65535, 'a port number');
        if (host !== undefined && container !== undefined) ports!.push({ host, container });
      });
    }
  }
  if (type !== undefined && type !== 'simple') {
    for (const key of ['ipv4', 'ipv6', 'ports'] as const) {
      const given = record[key];
      if (given != null && given !== '') r.fail(at(where, key), `only a simple network has ${key} (this one is ${type})`);
    }
  }
  if (r.issues.length > before) return undefined;
  return { type: type!, ipv4: ipv4!, ipv6: ipv6!, ports: ports! };
}

/** An address with its prefix length, as project-machine writes it (`10.0.3.99/24`); `""` is none. */
function readAddress(r: Reader, where: string, value: unknown, family: 4 | 6): string | undefined {
  const text = r.string(where, value);
  if (text === undefined || text === '') return text;
  const slash = text.lastIndexOf('/');
  const address = slash === -1 ? text : text.slice(0, slash);
  const prefix = slash === -1 ? '' : text.slice(slash + 1);
  const maxPrefix = family === 4 ? 32 : 128;
  const validAddress = family === 4 ? isIPv4(address) : isIPv6(address);
  if (!validAddress || !/^\d{1,3}$/.test(prefix) || Number(prefix) > maxPrefix) {
    return r.fail(where, `expected an IPv${family} address with a prefix length (${family === 4 ? '10.0.3.99/24' : 'fd00::99/64'}), got ${JSON.stringify(text)}`);
  }
  return text;
}

function readTargetStorage(r: Reader, where: string, value: unknown, labels: ReadonlySet<string>): TargetStorage[] | undefined {
  const list = r.sequence(where, value);
  if (!list) return undefined;
  const items: TargetStorage[] = [];
  const dests = new Set<string>();
  list.forEach((entry, i) => {
    const itemWhere = `${where}[${i}]`;
    const record = r.mapping(itemWhere, entry, TARGET_STORAGE_FIELDS);
    if (!record) return;
    const rawDest = r.required(itemWhere, record, 'dest');
    const rawLabel = r.required(itemWhere, record, 'label');
    let dest = rawDest === undefined ? undefined : r.string(at(itemWhere, 'dest'), rawDest);
    if (dest !== undefined) {
      const clean = dest.startsWith('/') && path.posix.normalize(dest) === dest && dest !== '/' && !dest.endsWith('/');
      if (!clean) dest = r.fail(at(itemWhere, 'dest'), `expected a normalized absolute path other than /, got ${JSON.stringify(dest)}`);
      else if (dests.has(dest)) dest = r.fail(at(itemWhere, 'dest'), `${dest} is mounted twice`);
      if (dest !== undefined) dests.add(dest);
    }
    let label = rawLabel === undefined ? undefined : r.string(at(itemWhere, 'label'), rawLabel);
    if (label !== undefined && !labels.has(label)) label = r.fail(at(itemWhere, 'label'), `no storage volume is labelled ${JSON.stringify(label)} (declare it under the top-level storage)`);
    if (dest !== undefined && label !== undefined) items.push({ dest, label });
  });
  return items.length === list.length ? items : undefined;
}

/** Rules between targets: unique service names, one target per forwarded host port. */
function checkAcrossTargets(r: Reader, targets: readonly UserTarget[]): void {
  const names = new Map<string, number>();
  const hostPorts = new Map<number, string>();
  targets.forEach((target, i) => {
    const previous = names.get(target.service_name);
    if (previous !== undefined) r.fail(`targets[${i}].service_name`, `duplicate service name ${target.service_name} (also targets[${previous}])`);
    else names.set(target.service_name, i);
    (target.network.ports ?? []).forEach((port, j) => {
      const owner = hostPorts.get(port.host);
      if (owner !== undefined) r.fail(`targets[${i}].network.ports[${j}].host`, `host port ${port.host} is already forwarded to ${owner}`);
      else hostPorts.set(port.host, target.service_name);
    });
  });
}

const at = (where: string, key: string) => (where === '' ? key : `${where}.${key}`);

function describe(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return `${typeof value} ${String(value)}`;
}
