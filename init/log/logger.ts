/**
 * mos-init's own structured log: one JSON object per line, written synchronously.
 *
 * The line format is pino's (`level` as a number, `time` in ms since the epoch, `msg`, an `err`
 * field serialized with its type, message, stack and errno fields), so pino tooling reads it.
 * It is not pino: PID 1 needs four levels and a synchronous write, and pino's machinery (thread
 * streams, transports, serializers) costs ~2 MB of PID 1's memory for nothing it uses here.
 *
 * A logger never throws into its caller: a line that cannot be serialized or written is
 * dropped and counted (`dropped`).
 */
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'fatal';

/** pino's numbers, so `level >= 40` filters mean the same thing. */
export const LEVEL_NUMBERS: Readonly<Record<LogLevel, number>> = { debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

export interface Logger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
  fatal(fields: object, message: string): void;
  /** Lets hot paths skip building fields for a line nobody will see. */
  isLevelEnabled(level: LogLevel): boolean;
  /** Lines lost to serialization or write errors since the start. */
  readonly dropped: number;
}

export interface LoggerOptions {
  /** The lowest level written; `silent` writes nothing. Unknown names are an error. */
  level: string;
  /** Fields on every line, after `level` and `time` (e.g. `{ mos: pid }`). */
  base?: Record<string, unknown>;
  /** Where lines go: an open fd, or a file path (parent directories created, opened for append). */
  destination: { fd: number } | { file: string };
  /** For tests. */
  now?: () => number;
}

export function parseLogLevel(name: string): number {
  if (name === 'silent') return Number.POSITIVE_INFINITY;
  if (name === 'trace') return 10;
  const number = LEVEL_NUMBERS[name as LogLevel];
  if (number === undefined) throw new Error(`unknown log level "${name}" (debug, info, warn, error, fatal or silent)`);
  return number;
}

/** pino's `err` serializer, in short: what the error is, where it came from, its errno fields. */
export function serializeError(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  const out: Record<string, unknown> = { type: error.name, message: error.message, stack: error.stack };
  for (const [key, value] of Object.entries(error)) if (!(key in out)) out[key] = value;
  if (error.cause !== undefined) out.cause = serializeError(error.cause);
  return out;
}

/** EAGAIN on a non-blocking destination: retry this often before the line is dropped. */
const WRITE_ATTEMPTS = 100;

export function createLogger(options: LoggerOptions): Logger & { close(): void } {
  const threshold = parseLogLevel(options.level);
  const now = options.now ?? Date.now;
  const base = options.base ? JSON.stringify(options.base).slice(1, -1) : '';
  let fd: number;
  let ownsFd = false;
  if ('fd' in options.destination) {
    fd = options.destination.fd;
  } else {
    mkdirSync(path.dirname(options.destination.file), { recursive: true });
    fd = openSync(options.destination.file, 'a', 0o640);
    ownsFd = true;
  }
  let dropped = 0;

  const write = (line: string): void => {
    const bytes = Buffer.from(line);
    let offset = 0;
    for (let attempt = 0; offset < bytes.length && attempt < WRITE_ATTEMPTS; attempt++) {
      try {
        offset += writeSync(fd, bytes, offset);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') break;
      }
    }
    if (offset < bytes.length) dropped++;
  };

  const emit = (level: LogLevel, fields: object, message: string): void => {
    const number = LEVEL_NUMBERS[level];
    if (number < threshold) return;
    let body: string;
    try {
      const record = 'err' in fields ? { ...fields, err: serializeError((fields as { err: unknown }).err) } : fields;
      body = JSON.stringify(record).slice(1, -1);
    } catch {
      // A circular or BigInt field: keep the message, say what was lost.
      body = '"fields":"(not serializable)"';
    }
    const parts = [`"level":${number}`, `"time":${now()}`];
    if (base) parts.push(base);
    if (body) parts.push(body);
    parts.push(`"msg":${JSON.stringify(message)}`);
    write(`{${parts.join(',')}}\n`);
  };

  return {
    debug: (fields, message) => emit('debug', fields, message),
    info: (fields, message) => emit('info', fields, message),
    warn: (fields, message) => emit('warn', fields, message),
    error: (fields, message) => emit('error', fields, message),
    fatal: (fields, message) => emit('fatal', fields, message),
    isLevelEnabled: (level) => LEVEL_NUMBERS[level] >= threshold,
    get dropped() {
      return dropped;
    },
    close: () => {
      if (!ownsFd) return;
      ownsFd = false;
      try {
        closeSync(fd);
      } catch {
        // Already closed: nothing to release.
      }
    },
  };
}
