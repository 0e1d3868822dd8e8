import { describe, expect, it } from 'vitest';
import { ControlError } from '../../init/control/api.ts';
import { BadRequestError, LineSplitter, MAX_LINE_BYTES, parseRequest } from '../../init/control/protocol.ts';

/** The error `parseRequest` returns for `line`; fails the test if it accepted the line. */
function rejection(line: string): BadRequestError {
  const result = parseRequest(line);
  if (!(result instanceof BadRequestError)) throw new Error(`accepted ${line}`);
  return result;
}

describe('parseRequest accepts', () => {
  it.each([
    { v: 1, id: 1, cmd: 'info' },
    { v: 1, id: 2, cmd: 'list' },
    { v: 1, id: 3, cmd: 'status', service: 'web' },
    { v: 1, id: 4, cmd: 'logs', service: 'web', n: 20, follow: false },
    { v: 1, id: 5, cmd: 'logs', service: 'db.primary-1_x', n: 0, follow: true },
    { v: 1, id: 6, cmd: 'logs', service: 'web', n: 100_000, follow: false },
    { v: 1, id: 7, cmd: 'start', service: 'web' },
    { v: 1, id: 8, cmd: 'stop', service: 'web' },
    { v: 1, id: 0, cmd: 'restart', service: '0' },
    { v: 1, id: 9, cmd: 'analyze' },
    { v: 1, id: 10, cmd: 'poweroff' },
    { v: 1, id: 11, cmd: 'reboot' },
    { v: 1, id: 12, cmd: 'halt' },
  ])('$cmd (id $id)', (request) => {
    expect(parseRequest(JSON.stringify(request))).toEqual(request);
  });

  it('a name of 63 characters, trailing whitespace and CRLF', () => {
    const service = `a${'b'.repeat(62)}`;
    expect(parseRequest(`{"v":1,"id":1,"cmd":"status","service":"${service}"}  \r`)).toEqual({
      v: 1,
      id: 1,
      cmd: 'status',
      service,
    });
  });
});

describe('parseRequest rejects', () => {
  const BAD_NAME = 'service: expected a service name matching ^[a-z0-9][a-z0-9_.-]{0,62}$';
  const BAD_COUNT = 'n: expected an integer 0..100000';
  const logs = (fields: string) => `{"v":1,"id":1,"cmd":"logs","service":"web",${fields}}`;
  it.each([
    ['not JSON', '{"v":1,', 'not JSON'],
    ['an array', '[1]', 'expected a JSON object'],
    ['null', 'null', 'expected a JSON object'],
    ['an unknown command', '{"v":1,"id":1,"cmd":"kexec"}', 'cmd: expected one of info|list|status|logs|start|stop|restart|analyze|poweroff|reboot|halt|provision|exec-target|exec-run|exec-input'],
    ['a missing command', '{"v":1,"id":1}', 'cmd: required'],
    ['an unknown field', '{"v":1,"id":1,"cmd":"list","foo":1}', 'unknown field "foo"'],
    ['a missing service', '{"v":1,"id":1,"cmd":"start"}', 'service: required'],
    ['a missing version', '{"id":1,"cmd":"list"}', 'v: required'],
    ['another version', '{"v":2,"id":1,"cmd":"list"}', 'v: unsupported protocol version 2 (expected 1)'],
    ['a missing id', '{"v":1,"cmd":"list"}', 'id: required'],
    ['a fractional id', '{"v":1,"id":1.5,"cmd":"list"}', 'id: expected a non-negative integer'],
    ['a negative id', '{"v":1,"id":-1,"cmd":"list"}', 'id: expected a non-negative integer'],
    ['an id as a string', '{"v":1,"id":"1","cmd":"list"}', 'id: expected a non-negative integer'],
    ['an uppercase name', '{"v":1,"id":1,"cmd":"status","service":"Web"}', BAD_NAME],
    ['a name with a slash', '{"v":1,"id":1,"cmd":"stop","service":"../etc"}', BAD_NAME],
    ['a name of 64 characters', `{"v":1,"id":1,"cmd":"stop","service":"${'a'.repeat(64)}"}`, BAD_NAME],
    ['a negative count', logs('"n":-1,"follow":false'), BAD_COUNT],
    ['too large a count', logs('"n":100001,"follow":false'), BAD_COUNT],
    ['a fractional count', logs('"n":2.5,"follow":false'), BAD_COUNT],
    ['follow as a string', logs('"n":1,"follow":"yes"'), 'follow: expected true or false'],
    ['a missing follow', logs('"n":1'), 'follow: required'],
  ])('%s', (_case, line, message) => {
    const error = rejection(line);
    expect(error).toBeInstanceOf(ControlError);
    expect(error.code).toBe('E_BAD_REQUEST');
    expect(error.message).toBe(message);
  });

  it('a line over 64 KiB', () => {
    const line = JSON.stringify({ v: 1, id: 1, cmd: 'status', service: 'x'.repeat(MAX_LINE_BYTES) });
    expect(rejection(line).message).toBe('request line exceeds 65536 bytes');
  });

  it('keeps the id when the line had a valid one, else 0', () => {
    expect(rejection('{"v":1,"id":42,"cmd":"nope"}').requestId).toBe(42);
    expect(rejection('{"v":1,"id":-3,"cmd":"list"}').requestId).toBe(0);
    expect(rejection('garbage').requestId).toBe(0);
  });
});

describe('LineSplitter', () => {
  it('joins lines across chunks, including a UTF-8 character split in two', () => {
    const splitter = new LineSplitter();
    const bytes = Buffer.from('first\nsé');
    expect(splitter.push(bytes.subarray(0, bytes.length - 1))).toEqual({ lines: ['first'], overflow: false });
    expect(splitter.push(Buffer.concat([bytes.subarray(bytes.length - 1), Buffer.from('cond\nthird\n')]))).toEqual({
      lines: ['sécond', 'third'],
      overflow: false,
    });
  });

  it('reports a line over the limit, complete or not, and stays overflowed', () => {
    const complete = new LineSplitter(4);
    expect(complete.push(Buffer.from('abcd\nabcde\nok\n'))).toEqual({ lines: ['abcd'], overflow: true });
    expect(complete.push(Buffer.from('ok\n'))).toEqual({ lines: [], overflow: true });

    const unfinished = new LineSplitter(4);
    expect(unfinished.push(Buffer.from('abc'))).toEqual({ lines: [], overflow: false });
    expect(unfinished.push(Buffer.from('de'))).toEqual({ lines: [], overflow: true });
  });
});

describe('parseRequest and the PID-1 commands', () => {
  it('refuses fields the boot commands do not take', () => {
    expect(rejection('{"v":1,"id":3,"cmd":"poweroff","force":true}').message).toBe('unknown field "force"');
    expect(rejection('{"v":1,"id":3,"cmd":"analyze","service":"web"}').message).toBe('unknown field "service"');
    expect(rejection('{"v":1,"id":3,"cmd":"kexec"}').message).toContain('analyze|poweroff|reboot|halt');
  });
});
