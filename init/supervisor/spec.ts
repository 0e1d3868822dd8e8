/**
 * Service definitions: the host-mode file (YAML or JSON) → validated `ServiceSpec`s.
 *
 * The file is a trust boundary for the supervisor, so the schema is strict: unknown fields,
 * bad values, duplicate names, unknown dependencies and dependency cycles are all errors that
 * name the field, and a file with any error runs nothing (no half-applied configuration).
 */
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as v from 'valibot';
import { parseDuration } from './duration.ts';
import type { ServiceSpec } from './types.ts';
import { loadYaml } from './yaml-loader.ts';

export const SERVICE_NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;

export class ConfigError extends Error {
  readonly code = 'E_CONFIG';
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: ${problems.join('; ')}`);
    this.name = 'ConfigError';
  }
}

const Duration = v.pipe(
  v.union([v.number(), v.string()], 'expected a duration such as 500ms, 5s or 2m'),
  v.check((value) => parseDuration(value) !== null, 'expected a duration such as 500ms, 5s or 2m'),
  v.transform((value) => parseDuration(value)!),
);

const Signal = v.pipe(
  v.string(),
  v.check((name) => name in osConstants.signals && name !== 'SIGKILL' && name !== 'SIGSTOP', 'expected a signal name such as SIGTERM'),
);

const ServiceSchema = v.strictObject({
  name: v.pipe(v.string(), v.regex(SERVICE_NAME_PATTERN, 'expected a name of lowercase letters, digits, "_", "." and "-"')),
  argv: v.pipe(v.array(v.string()), v.minLength(1, 'expected at least the program to run')),
  env: v.optional(
    v.pipe(
      v.record(v.string(), v.string()),
      v.check((env) => Object.keys(env).every((key) => ENV_NAME_PATTERN.test(key)), 'expected variable names of letters, digits and "_"'),
    ),
  ),
  cwd: v.optional(v.pipe(v.string(), v.startsWith('/', 'expected an absolute path'))),
  kind: v.optional(v.picklist(['longrun', 'oneshot'], 'expected longrun or oneshot')),
  restart: v.optional(v.picklist(['always', 'on-failure', 'no'], 'expected always, on-failure or no')),
  readiness: v.optional(
    v.union(
      [
        v.picklist(['none', 'notify', 'fd']),
        v.strictObject({ fd: v.pipe(v.number(), v.integer(), v.minValue(3), v.maxValue(1023)) }),
      ],
      'expected none, notify, fd or { fd: N } with 3 <= N <= 1023',
    ),
  ),
  watchdog: v.optional(Duration),
  after: v.optional(v.array(v.string())),
  requires: v.optional(v.array(v.string())),
  stopSignal: v.optional(Signal),
  stopTimeout: v.optional(Duration),
  startTimeout: v.optional(Duration),
  backoff: v.optional(
    v.strictObject({ initial: v.optional(Duration), max: v.optional(Duration), resetAfter: v.optional(Duration) }),
  ),
  startLimit: v.optional(
    v.strictObject({
      burst: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1))),
      interval: v.optional(Duration),
    }),
  ),
  uid: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(0xfffffffe))),
  gid: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(0xfffffffe))),
});

const FileSchema = v.strictObject({
  services: v.array(ServiceSchema),
});

type ServiceInput = v.InferOutput<typeof ServiceSchema>;

/** Defaults, chosen for a device that must keep its services up without hammering the CPU. */
export const SERVICE_DEFAULTS = {
  stopTimeoutMs: 10_000,
  startTimeoutMs: 90_000,
  backoff: { initialMs: 100, maxMs: 30_000, resetAfterMs: 10_000 },
  startLimit: { burst: 5, intervalMs: 10_000 },
  readinessFd: 3,
} as const;

function toSpec(input: ServiceInput): ServiceSpec {
  const kind = input.kind ?? 'longrun';
  const readiness = input.readiness ?? 'none';
  return {
    name: input.name,
    argv: input.argv,
    env: input.env ?? {},
    cwd: input.cwd ?? '/',
    kind,
    // A long-running service on a device should come back whatever ended it; a task should not
    // be run again unless asked.
    restart: input.restart ?? (kind === 'longrun' ? 'always' : 'no'),
    readiness:
      typeof readiness === 'object'
        ? { type: 'fd', fd: readiness.fd }
        : readiness === 'fd'
          ? { type: 'fd', fd: SERVICE_DEFAULTS.readinessFd }
          : { type: readiness },
    watchdogMs: input.watchdog ?? 0,
    after: input.after ?? [],
    requires: input.requires ?? [],
    stopSignal: input.stopSignal ?? 'SIGTERM',
    stopTimeoutMs: input.stopTimeout ?? SERVICE_DEFAULTS.stopTimeoutMs,
    startTimeoutMs: input.startTimeout ?? SERVICE_DEFAULTS.startTimeoutMs,
    backoff: {
      initialMs: input.backoff?.initial ?? SERVICE_DEFAULTS.backoff.initialMs,
      maxMs: input.backoff?.max ?? SERVICE_DEFAULTS.backoff.maxMs,
      resetAfterMs: input.backoff?.resetAfter ?? SERVICE_DEFAULTS.backoff.resetAfterMs,
    },
    startLimit: {
      burst: input.startLimit?.burst ?? SERVICE_DEFAULTS.startLimit.burst,
      intervalMs: input.startLimit?.interval ?? SERVICE_DEFAULTS.startLimit.intervalMs,
    },
    uid: input.uid,
    gid: input.gid,
  };
}

/** `services[2].restart`-style path of a valibot issue. */
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
  // strictObject reports an unknown key as an issue on that key with expected "never".
  if (issue.expected === 'never' && issue.path?.length) return `${path}: unknown field`;
  if (issue.received === 'undefined' && issue.path?.length) return `${path}: missing required field`;
  return path ? `${path}: ${issue.message}` : issue.message;
}

/** Checks what a schema cannot: unique names, known dependencies, and no cycles. */
export function checkServiceGraph(specs: ServiceSpec[]): string[] {
  const problems: string[] = [];
  const names = new Set<string>();
  for (const spec of specs) {
    if (names.has(spec.name)) problems.push(`services: duplicate service name "${spec.name}"`);
    names.add(spec.name);
  }
  for (const spec of specs) {
    for (const field of ['after', 'requires'] as const) {
      for (const dep of spec[field]) {
        if (dep === spec.name) problems.push(`${spec.name}.${field}: a service cannot depend on itself`);
        else if (!names.has(dep)) problems.push(`${spec.name}.${field}: unknown service "${dep}"`);
      }
    }
  }
  const cycle = findDependencyCycle(specs);
  if (cycle) problems.push(`dependency cycle: ${cycle.join(' -> ')}`);
  return problems;
}

/** Returns one cycle as a path that starts and ends with the same service, or null. */
export function findDependencyCycle(specs: ServiceSpec[]): string[] | null {
  const edges = new Map(specs.map((spec) => [spec.name, [...new Set([...spec.requires, ...spec.after])]]));
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (name: string): string[] | null => {
    if (state.get(name) === 'done') return null;
    if (state.get(name) === 'visiting') return [...stack.slice(stack.indexOf(name)), name];
    state.set(name, 'visiting');
    stack.push(name);
    for (const dep of edges.get(name) ?? []) {
      if (!edges.has(dep) || dep === name) continue;
      const cycle = visit(dep);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(name, 'done');
    return null;
  };
  for (const spec of specs) {
    const cycle = visit(spec.name);
    if (cycle) return cycle;
  }
  return null;
}

/** Validates an already-parsed document. Throws ConfigError naming every problem found. */
export function parseServiceConfig(document: unknown, source: string): ServiceSpec[] {
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new ConfigError(source, ['expected a mapping with a "services" list']);
  }
  const result = v.safeParse(FileSchema, document, { abortEarly: false });
  if (!result.success) throw new ConfigError(source, result.issues.map(describeIssue));
  const specs = result.output.services.map(toSpec);
  const problems = checkServiceGraph(specs);
  for (const spec of specs) {
    if (spec.readiness.type !== 'notify' && spec.watchdogMs > 0) {
      problems.push(`${spec.name}.watchdog: needs readiness "notify" (the watchdog is fed over sd_notify)`);
    }
  }
  if (problems.length > 0) throw new ConfigError(source, problems);
  return specs;
}

/**
 * Parses a service file's text: YAML, which includes JSON. Text that is plain JSON (the signed
 * manifest path, generated files) is read with JSON.parse, and the YAML parser is loaded only
 * when a file needs it: its start-up work and memory would otherwise stay in PID 1 for good.
 */
export async function parseServiceFile(text: string, source: string): Promise<ServiceSpec[]> {
  if (text.trimStart().startsWith('{')) {
    let document: unknown;
    try {
      document = JSON.parse(text);
    } catch {
      document = undefined; // YAML flow style, or broken: the YAML parser says which, and where
    }
    if (document !== undefined) return parseServiceConfig(document, source);
  }
  const { parseDocument } = await loadYaml();
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new ConfigError(
      source,
      document.errors.map((error) => error.message.split('\n')[0]!),
    );
  }
  return parseServiceConfig(document.toJS(), source);
}

/**
 * Reads and validates a service file. Problems come back as text, never as a throw: a bad file
 * runs nothing, but the caller stays up to say why.
 */
export async function loadServiceFile(configPath: string): Promise<{ specs: ServiceSpec[]; error: string | null }> {
  let text: string;
  try {
    text = readFileSync(configPath, 'utf8');
  } catch (error) {
    return { specs: [], error: `${configPath}: cannot read: ${(error as Error).message}` };
  }
  try {
    return { specs: await parseServiceFile(text, configPath), error: null };
  } catch (error) {
    if (error instanceof ConfigError) return { specs: [], error: error.message };
    throw error;
  }
}
