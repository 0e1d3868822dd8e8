/**
 * The control socket's wire format: newline-delimited JSON, one request or response per line.
 *
 * A request is `{v:1, id, cmd, ...}`; the server answers each with `{v:1, id, ok:true, result}` or
 * `{v:1, id, ok:false, error:{code, message}}`, in the order the requests arrived. A following
 * `logs` request is answered once and then streams `{v:1, id, event:"log", line}` until the client
 * closes. Errors about the connection itself (a refused peer, an unreadable line) carry `id: 0`.
 *
 * Exec relayed by mos (`mosctl exec` where `exec-target` answers `E_NOT_LOCAL`: the client is not
 * on mos's machine, e.g. a VM's host on the virtio-serial port). Root access only.
 *   → `{v:1, id, cmd:"exec-run", service, argv:[…], env:{KEY:VALUE}, cwd?, user?:{uid,gid}}`
 *   ← `{v:1, id, ok:true, result:{service, containerId}}` once the command has started, then,
 *     with the same id, `{v:1, id, event:"exec-output", stream:"stdout"|"stderr", data:<base64>}`
 *     (each ≤ 32 KiB raw) and last `{v:1, id, event:"exec-exit", code, signal, status}` after all
 *     of its output (`status`: the code, or 128+n for signal n).
 *   → `{v:1, id:<another>, cmd:"exec-input", run:<the exec-run's id>, data?:<base64>, eof?:true}`
 *   ← `{v:1, id, ok:true, result:null}` once the bytes are on their way to the command's stdin
 *     (so a client waiting for each answer never makes mos buffer more than a chunk); `eof`
 *     closes the stdin. An unknown or finished run is `E_BAD_REQUEST`.
 * Every line stays under `MAX_LINE_BYTES`: stdin and output travel in chunks of at most
 * `MAX_EXEC_CHUNK_BYTES`. A connection that ends or closes terminates its commands.
 */
import { constants as osConstants } from 'node:os';
import * as v from 'valibot';
import { ControlError, type ExecStarted, type ExecTarget, type ProvisionReport, type ShutdownAccepted, type SupervisorInfo } from './api.ts';
import type { BootTimeline } from '../boot/timeline.ts';
import type { LogLine } from '../log/types.ts';
import type { ServiceStatus } from '../supervisor/types.ts';

export const PROTOCOL_VERSION = 1;

/** Longest request line the server reads; a longer one is answered `E_BAD_REQUEST` and closed. */
export const MAX_LINE_BYTES = 64 * 1024;

/** Most bytes of stdin or output one `exec-input` or `exec-output` carries (before base64). */
export const MAX_EXEC_CHUNK_BYTES = 32 * 1024;
/** The base64 length of `MAX_EXEC_CHUNK_BYTES`. */
export const MAX_EXEC_CHUNK_BASE64 = 4 * Math.ceil(MAX_EXEC_CHUNK_BYTES / 3);

/** Most lines one `logs` request may ask for. */
export const MAX_LOG_LINES = 100_000;

/** The id of errors that concern the connection rather than one request. */
export const CONNECTION_ERROR_ID = 0;

/** Stable error codes. The supervisor adds its own (e.g. `E_START_LIMIT`) to `failed` statuses. */
export const ErrorCode = {
  BadRequest: 'E_BAD_REQUEST',
  Permission: 'E_PERMISSION',
  UnknownService: 'E_UNKNOWN_SERVICE',
  Internal: 'E_INTERNAL',
  /** The command needs PID 1 (e.g. poweroff in host mode). */
  Unsupported: 'E_UNSUPPORTED',
  ShuttingDown: 'E_SHUTTING_DOWN',
  /** Client side only: no connection to mos, or it was lost. */
  Unreachable: 'E_UNREACHABLE',
  /** `exec-target`: the service has no running process (stopped, failed, in backoff, …). */
  NotRunning: 'E_NOT_RUNNING',
  /** `exec-target`: the service is a plain host process, with no container namespaces to enter. */
  NotContainer: 'E_NOT_CONTAINER',
  /**
   * `exec-target` over a stream (the virtio-serial port): the client is not on mos's machine, so
   * it cannot run crun itself; mosctl then asks mos to run the command (`exec-run`).
   */
  NotLocal: 'E_NOT_LOCAL',
} as const;

export const COMMANDS = ['info', 'list', 'status', 'logs', 'start', 'stop', 'restart', 'analyze', 'poweroff', 'reboot', 'halt', 'provision', 'exec-target', 'exec-run', 'exec-input'] as const;

/** Commands that change nothing: what a read-only peer (the virtio-serial port by default) may send. */
export const READ_ONLY_COMMANDS: ReadonlySet<CommandName> = new Set(['info', 'list', 'status', 'logs', 'analyze']);
export type CommandName = (typeof COMMANDS)[number];

const SERVICE_NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

export const ServiceNameSchema = v.pipe(
  v.string(`expected a service name matching ${SERVICE_NAME_PATTERN.source}`),
  v.regex(SERVICE_NAME_PATTERN, `expected a service name matching ${SERVICE_NAME_PATTERN.source}`),
);

const RequestIdSchema = v.pipe(
  v.number('expected a non-negative integer'),
  v.safeInteger('expected a non-negative integer'),
  v.minValue(0, 'expected a non-negative integer'),
);

const LineCountSchema = v.pipe(
  v.number(`expected an integer 0..${MAX_LOG_LINES}`),
  v.integer(`expected an integer 0..${MAX_LOG_LINES}`),
  v.minValue(0, `expected an integer 0..${MAX_LOG_LINES}`),
  v.maxValue(MAX_LOG_LINES, `expected an integer 0..${MAX_LOG_LINES}`),
);

const envelope = {
  v: v.literal(
    PROTOCOL_VERSION,
    (issue) => `unsupported protocol version ${issue.received} (expected ${PROTOCOL_VERSION})`,
  ),
  id: RequestIdSchema,
};

export const InfoRequestSchema = v.strictObject({ ...envelope, cmd: v.literal('info') });
export const ListRequestSchema = v.strictObject({ ...envelope, cmd: v.literal('list') });
export const StatusRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.literal('status'),
  service: ServiceNameSchema,
});
export const LogsRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.literal('logs'),
  service: ServiceNameSchema,
  n: LineCountSchema,
  follow: v.boolean('expected true or false'),
});
export const ServiceActionRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.picklist(['start', 'stop', 'restart']),
  service: ServiceNameSchema,
});

export const AnalyzeRequestSchema = v.strictObject({ ...envelope, cmd: v.literal('analyze') });
export const ShutdownRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.picklist(['poweroff', 'reboot', 'halt']),
});

/** Longest CA (PEM text) a provision request may carry; a certificate is 1-3 KB. */
export const MAX_PROVISION_CA_CHARS = 32 * 1024;

export const ProvisionRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.literal('provision'),
  ca: v.optional(
    v.pipe(
      v.string('expected the CA certificate as PEM text'),
      v.minLength(1, 'expected the CA certificate as PEM text'),
      v.maxLength(MAX_PROVISION_CA_CHARS, `expected at most ${MAX_PROVISION_CA_CHARS} characters of PEM`),
    ),
  ),
  pcrs: v.optional(
    v.pipe(
      v.array(
        v.pipe(v.number('expected PCR numbers 0-23'), v.integer('expected PCR numbers 0-23'), v.minValue(0, 'expected PCR numbers 0-23'), v.maxValue(23, 'expected PCR numbers 0-23')),
        'expected a list of PCR numbers',
      ),
      v.minLength(1, 'expected at least one PCR'),
      v.maxLength(24, 'expected at most 24 PCRs'),
    ),
  ),
  reset: v.optional(v.boolean('expected true or false')),
});

/**
 * `mosctl exec`'s question: how to enter a running container service (`ExecTarget`). Root only,
 * and only on mos's own unix socket (the answer is for a crun on the same machine).
 */
export const ExecTargetRequestSchema = v.strictObject({
  ...envelope,
  cmd: v.literal('exec-target'),
  service: ServiceNameSchema,
});

/** A string crun can pass to execve: no NUL byte. */
const NoNulSchema = v.pipe(
  v.string('expected a string'),
  v.check((text) => !text.includes('\0'), 'contains a NUL byte'),
);
const EXEC_ID_MESSAGE = 'expected a container id 0..4294967294';
const ContainerIdSchema = v.pipe(v.number(EXEC_ID_MESSAGE), v.integer(EXEC_ID_MESSAGE), v.minValue(0, EXEC_ID_MESSAGE), v.maxValue(2 ** 32 - 2, EXEC_ID_MESSAGE));
const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** The decoded size of well-formed (padded) base64. */
const base64Bytes = (data: string) => (data.length / 4) * 3 - (data.endsWith('==') ? 2 : data.endsWith('=') ? 1 : 0);

/**
 * Runs a command in a running container service, through mos (the relay): mos runs `crun exec`
 * and streams its output and exit back on this connection. Root access only. `env` is added to
 * config.json's environment; `cwd` and `user` default to the service's (config.json's).
 */
export const ExecRunRequestSchema = v.strictObject({
  ...envelope,
  // Its events carry this id: 0 would read as an error about the whole connection.
  id: v.pipe(RequestIdSchema, v.minValue(1, 'exec-run needs an id above 0')),
  cmd: v.literal('exec-run'),
  service: ServiceNameSchema,
  argv: v.pipe(
    v.array(NoNulSchema, 'expected the command and its arguments as a list of strings'),
    v.minLength(1, 'expected a command'),
    v.check((argv) => argv[0] !== '', 'expected a command name, not an empty string'),
  ),
  env: v.record(
    v.pipe(v.string(), v.regex(/^[^=\0]+$/, 'expected variable names without "=" or NUL')),
    NoNulSchema,
    'expected an object of variables',
  ),
  cwd: v.optional(v.pipe(NoNulSchema, v.startsWith('/', 'expected an absolute path'))),
  user: v.optional(v.strictObject({ uid: ContainerIdSchema, gid: ContainerIdSchema }, 'expected {uid, gid}')),
});

/** Feeds a relayed command's stdin: bytes (base64, at most 32 KiB decoded), its end, or both. */
export const ExecInputRequestSchema = v.pipe(
  v.strictObject({
    ...envelope,
    cmd: v.literal('exec-input'),
    run: RequestIdSchema,
    data: v.optional(
      v.pipe(
        v.string('expected base64'),
        v.maxLength(MAX_EXEC_CHUNK_BASE64, `expected at most ${MAX_EXEC_CHUNK_BYTES} bytes`),
        v.regex(BASE64_PATTERN, 'expected base64'),
        v.check((data) => base64Bytes(data) <= MAX_EXEC_CHUNK_BYTES, `expected at most ${MAX_EXEC_CHUNK_BYTES} bytes`),
      ),
    ),
    eof: v.optional(v.literal(true, 'expected true')),
  }),
  v.check((input) => input.data !== undefined || input.eof === true, 'expected data or eof'),
);

export const RequestSchema = v.variant(
  'cmd',
  [
    InfoRequestSchema,
    ListRequestSchema,
    StatusRequestSchema,
    LogsRequestSchema,
    ServiceActionRequestSchema,
    AnalyzeRequestSchema,
    ShutdownRequestSchema,
    ProvisionRequestSchema,
    ExecTargetRequestSchema,
    ExecRunRequestSchema,
    ExecInputRequestSchema,
  ],
  `expected one of ${COMMANDS.join('|')}`,
);

export type ControlRequest = v.InferOutput<typeof RequestSchema>;
export type LogsRequest = v.InferOutput<typeof LogsRequestSchema>;
export type ExecRunRequest = v.InferOutput<typeof ExecRunRequestSchema>;
export type ExecInputRequest = v.InferOutput<typeof ExecInputRequestSchema>;

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** A request as a caller writes it: the client adds the version and the id. */
export type ControlCommand = DistributiveOmit<ControlRequest, 'v' | 'id'>;

/** What a successful response carries, per command. */
export interface CommandResults {
  info: SupervisorInfo;
  list: ServiceStatus[];
  status: ServiceStatus;
  logs: { lines: LogLine[] };
  start: ServiceStatus;
  stop: ServiceStatus;
  restart: ServiceStatus;
  /** null when mos is not PID 1 (host mode has no boot). */
  analyze: BootTimeline | null;
  poweroff: ShutdownAccepted;
  reboot: ShutdownAccepted;
  halt: ShutdownAccepted;
  provision: ProvisionReport;
  'exec-target': ExecTarget;
  'exec-run': ExecStarted;
  'exec-input': null;
}
export type ResultOf<C extends ControlCommand> = CommandResults[C['cmd']];

export interface OkResponse {
  v: typeof PROTOCOL_VERSION;
  id: number;
  ok: true;
  result: unknown;
}
export interface ErrorResponse {
  v: typeof PROTOCOL_VERSION;
  id: number;
  ok: false;
  error: { code: string; message: string };
}
export interface LogEvent {
  v: typeof PROTOCOL_VERSION;
  id: number;
  event: 'log';
  line: LogLine;
}
/** A chunk (≤ `MAX_EXEC_CHUNK_BYTES`, base64) of what a relayed command wrote. */
export interface ExecOutputEvent {
  v: typeof PROTOCOL_VERSION;
  id: number;
  event: 'exec-output';
  stream: 'stdout' | 'stderr';
  data: string;
}
/** How a relayed command ended: the last message with its id. */
export interface ExecExitEvent {
  v: typeof PROTOCOL_VERSION;
  id: number;
  event: 'exec-exit';
  code: number | null;
  signal: string | null;
  /** The shell's convention: `code`, or 128+n for signal n. */
  status: number;
}
export type ServerMessage = OkResponse | ErrorResponse | LogEvent | ExecOutputEvent | ExecExitEvent;

/** The shell's convention: the exit code, or 128+n for a process killed by signal n (else 1). */
export function exitStatus(code: number | null, signal: string | null): number {
  if (code !== null) return code;
  const number = signal !== null && Object.hasOwn(osConstants.signals, signal) ? osConstants.signals[signal as NodeJS.Signals] : undefined;
  return number !== undefined ? 128 + number : 1;
}

/**
 * What the client accepts from the server. Results stay `unknown` here: their shape is the
 * supervisor's data model, which the server sends as the API returned it.
 */
export const ServerMessageSchema = v.union([
  v.object({ v: v.literal(PROTOCOL_VERSION), id: v.number(), ok: v.literal(true), result: v.unknown() }),
  v.object({
    v: v.literal(PROTOCOL_VERSION),
    id: v.number(),
    ok: v.literal(false),
    error: v.object({ code: v.string(), message: v.string() }),
  }),
  v.object({
    v: v.literal(PROTOCOL_VERSION),
    id: v.number(),
    event: v.literal('log'),
    line: v.object({
      seq: v.number(),
      ts: v.number(),
      stream: v.picklist(['stdout', 'stderr']),
      text: v.string(),
    }),
  }),
  v.object({
    v: v.literal(PROTOCOL_VERSION),
    id: v.number(),
    event: v.literal('exec-output'),
    stream: v.picklist(['stdout', 'stderr']),
    data: v.string(),
  }),
  v.object({
    v: v.literal(PROTOCOL_VERSION),
    id: v.number(),
    event: v.literal('exec-exit'),
    code: v.nullable(v.number()),
    signal: v.nullable(v.string()),
    status: v.number(),
  }),
]);

/**
 * What mosctl accepts as an `exec-target` result before it runs anything with it. The paths and
 * the id are checked again, and more strictly, by `planCrunExec`.
 */
export const ExecTargetSchema = v.object({
  service: ServiceNameSchema,
  containerId: v.string(),
  crunPath: v.string(),
  crunRoot: v.string(),
  cgroupManager: v.picklist(['disabled', 'cgroupfs']),
  env: v.array(v.string()),
  cwd: v.string(),
  user: v.object({ uid: ContainerIdSchema, gid: ContainerIdSchema }),
});

/** An `E_BAD_REQUEST` that remembers the request's id when the line got far enough to have one. */
export class BadRequestError extends ControlError {
  constructor(
    message: string,
    readonly requestId: number = CONNECTION_ERROR_ID,
  ) {
    super(ErrorCode.BadRequest, message);
  }
}

export function lineTooLongError(): BadRequestError {
  return new BadRequestError(`request line exceeds ${MAX_LINE_BYTES} bytes`);
}

/** Validates one request line; never throws. */
export function parseRequest(line: string): ControlRequest | BadRequestError {
  if (Buffer.byteLength(line) > MAX_LINE_BYTES) return lineTooLongError();
  let input: unknown;
  try {
    input = JSON.parse(line);
  } catch {
    return new BadRequestError('not JSON');
  }
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return new BadRequestError('expected a JSON object');
  }
  // Judge the version before the command: a newer client's unknown command is a version problem.
  const version = v.safeParse(v.object({ v: envelope.v }), input);
  const parsed = version.success ? v.safeParse(RequestSchema, input, { abortEarly: true }) : version;
  if (parsed.success) return parsed.output;
  const id = (input as Record<string, unknown>).id;
  return new BadRequestError(describeIssue(parsed.issues[0]), v.is(RequestIdSchema, id) ? id : undefined);
}

function describeIssue(issue: v.BaseIssue<unknown>): string {
  const field = issue.path?.map((item) => String(item.key)).join('.');
  if (!field) return issue.message;
  // strictObject reports a stray key as an "invalid key" where none (`never`) was expected.
  if (issue.type === 'strict_object' && issue.expected === 'never') return `unknown field "${field}"`;
  if (issue.received === 'undefined') return `${field}: required`;
  return `${field}: ${issue.message}`;
}

/**
 * Splits a byte stream into lines. Bytes are joined before decoding, so a UTF-8 character split
 * across chunks survives. With a limit, a line (or an unfinished one) longer than it ends the
 * reading: the stream cannot be resynchronized without buffering what it was meant to bound.
 */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private overflowed = false;

  constructor(private readonly maxLineBytes = Number.POSITIVE_INFINITY) {}

  /** The complete lines in `chunk`, and whether the limit was crossed (after those lines). */
  push(chunk: Buffer): { lines: string[]; overflow: boolean } {
    const lines: string[] = [];
    if (this.overflowed) return { lines, overflow: true };
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline !== -1; newline = chunk.indexOf(0x0a, start)) {
      const lineBytes = this.pendingBytes + newline - start;
      if (lineBytes > this.maxLineBytes) return this.overflow(lines);
      this.pending.push(chunk.subarray(start, newline));
      lines.push(Buffer.concat(this.pending, lineBytes).toString('utf8'));
      this.pending = [];
      this.pendingBytes = 0;
      start = newline + 1;
    }
    if (start < chunk.length) {
      this.pending.push(chunk.subarray(start));
      this.pendingBytes += chunk.length - start;
      if (this.pendingBytes > this.maxLineBytes) return this.overflow(lines);
    }
    return { lines, overflow: false };
  }

  private overflow(lines: string[]): { lines: string[]; overflow: boolean } {
    this.overflowed = true;
    this.pending = [];
    this.pendingBytes = 0;
    return { lines, overflow: true };
  }
}
