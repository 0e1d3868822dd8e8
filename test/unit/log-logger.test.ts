import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLogger, parseLogLevel } from '../../init/log/logger.ts';

function fileLogger(level: string) {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'mos-logger-')), 'sub', 'init.log');
  const logger = createLogger({ level, base: { mos: 42 }, destination: { file }, now: () => 1_700_000_000_000 });
  const records = () =>
    readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { logger, records };
}

describe('structured logger', () => {
  it('writes pino-compatible lines: level number, time, base fields, fields, msg', () => {
    const { logger, records } = fileLogger('info');
    logger.info({ service: 'web', pid: 7 }, 'web: starting -> running');
    logger.close();
    expect(records()).toEqual([{ level: 30, time: 1_700_000_000_000, mos: 42, service: 'web', pid: 7, msg: 'web: starting -> running' }]);
  });

  it('drops lines below the level and says which levels are on', () => {
    const { logger, records } = fileLogger('warn');
    logger.debug({}, 'no');
    logger.info({}, 'no');
    logger.warn({}, 'yes');
    logger.fatal({}, 'yes too');
    expect(records().map((record) => [record.level, record.msg])).toEqual([
      [40, 'yes'],
      [60, 'yes too'],
    ]);
    expect(logger.isLevelEnabled('info')).toBe(false);
    expect(logger.isLevelEnabled('error')).toBe(true);
  });

  it('serializes errors with type, message, stack and errno fields', () => {
    const { logger, records } = fileLogger('info');
    const error = Object.assign(new Error('mount ENOENT /sysroot'), { code: 'ENOENT', syscall: 'mount' });
    logger.error({ err: error }, 'mount failed');
    const [record] = records();
    expect(record!.err).toMatchObject({ type: 'Error', message: 'mount ENOENT /sysroot', code: 'ENOENT', syscall: 'mount' });
    expect(String((record!.err as { stack: string }).stack)).toContain('mount ENOENT /sysroot');
  });

  it('keeps the message when the fields cannot be serialized, and never throws', () => {
    const { logger, records } = fileLogger('info');
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(() => logger.info({ circular, big: 1n }, 'still here')).not.toThrow();
    expect(records()).toEqual([{ level: 30, time: 1_700_000_000_000, mos: 42, fields: '(not serializable)', msg: 'still here' }]);
  });

  it('refuses an unknown level by name', () => {
    expect(() => parseLogLevel('verbose')).toThrow('unknown log level "verbose"');
    expect(parseLogLevel('silent')).toBe(Number.POSITIVE_INFINITY);
  });
});
