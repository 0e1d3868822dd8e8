import { describe, expect, it } from 'vitest';
import { ConfigError, parseServiceFile } from '../../init/supervisor/spec.ts';

async function problemsOf(text: string, source = 'services.yaml'): Promise<string[]> {
  try {
    await parseServiceFile(text, source);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('service file', () => {
  it('parses YAML with defaults filled in', async () => {
    const [web, migrate] = await parseServiceFile(
      `services:
  - name: web
    argv: [/usr/bin/python3, -m, http.server]
    env: { PORT: "8080" }
    readiness: notify
    watchdog: 5s
    requires: [migrate]
  - name: migrate
    kind: oneshot
    argv: [/bin/true]
    readiness: { fd: 4 }
`,
      'services.yaml',
    );
    expect(web).toMatchObject({
      name: 'web',
      kind: 'longrun',
      restart: 'always',
      readiness: { type: 'notify' },
      watchdogMs: 5000,
      requires: ['migrate'],
      stopSignal: 'SIGTERM',
      stopTimeoutMs: 10_000,
      cwd: '/',
      env: { PORT: '8080' },
    });
    expect(migrate).toMatchObject({ kind: 'oneshot', restart: 'no', readiness: { type: 'fd', fd: 4 } });
  });

  it('accepts JSON', async () => {
    expect((await parseServiceFile('{"services":[{"name":"a","argv":["/bin/true"],"readiness":"fd"}]}', 'x.json'))[0]!.readiness).toEqual({ type: 'fd', fd: 3 });
  });

  it('reads JSON, YAML flow style and YAML block style alike', async () => {
    const json = await parseServiceFile('{"services":[{"name":"a","argv":["/bin/true"],"env":{"X":"1"}}]}', 'a.json');
    const flow = await parseServiceFile('{services: [{name: a, argv: [/bin/true], env: {X: "1"}}]}', 'a.yaml');
    const block = await parseServiceFile('services:\n  - name: a\n    argv: [/bin/true]\n    env: { X: "1" }\n', 'a.yaml');
    expect(flow).toEqual(json);
    expect(block).toEqual(json);
  });

  it('names a JSON syntax error through the YAML parser, with its position', async () => {
    const [problem] = await problemsOf('{"services": [}', 'a.json');
    expect(problem).toMatch(/line 1/);
  });

  it('names unknown fields', async () => {
    expect(await problemsOf('services:\n  - name: a\n    argv: [/bin/true]\n    restrat: always\n')).toEqual(['services[0].restrat: unknown field']);
    expect(await problemsOf('services: []\nextra: 1\n')).toEqual(['extra: unknown field']);
  });

  it('names bad values and missing fields, all at once', async () => {
    const problems = await problemsOf(
      'services:\n  - name: Web\n    argv: []\n    restart: sometimes\n    stopSignal: SIGKILL\n    stopTimeout: soon\n  - argv: [/bin/true]\n',
    );
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^services\[0\]\.name: expected a name/),
        'services[0].argv: expected at least the program to run',
        'services[0].restart: expected always, on-failure or no',
        'services[0].stopSignal: expected a signal name such as SIGTERM',
        'services[0].stopTimeout: expected a duration such as 500ms, 5s or 2m',
        'services[1].name: missing required field',
      ]),
    );
  });

  it('reports YAML syntax errors with their position', async () => {
    const [problem] = await problemsOf('services:\n  - name: a\n    argv: [/bin/true\n');
    expect(problem).toMatch(/line \d+/);
  });

  it('rejects dependency cycles, naming the path', async () => {
    const problems = await problemsOf(`services:
  - { name: a, argv: [/bin/true], requires: [b] }
  - { name: b, argv: [/bin/true], after: [c] }
  - { name: c, argv: [/bin/true], requires: [a] }
`);
    expect(problems).toEqual(['dependency cycle: a -> b -> c -> a']);
  });

  it('rejects unknown dependencies, self-dependencies and duplicate names', async () => {
    const problems = await problemsOf(`services:
  - { name: a, argv: [/bin/true], requires: [ghost] }
  - { name: b, argv: [/bin/true], after: [b] }
  - { name: a, argv: [/bin/true] }
`);
    expect(problems).toEqual([
      'services: duplicate service name "a"',
      'a.requires: unknown service "ghost"',
      'b.after: a service cannot depend on itself',
    ]);
  });

  it('refuses a watchdog without notify readiness', async () => {
    expect(await problemsOf('services:\n  - { name: a, argv: [/bin/true], watchdog: 1s }\n')).toEqual([
      'a.watchdog: needs readiness "notify" (the watchdog is fed over sd_notify)',
    ]);
  });

  it('refuses a document that is not a service file', async () => {
    expect(await problemsOf('- just\n- a list\n')).toEqual(['expected a mapping with a "services" list']);
    expect(await problemsOf('')).toEqual(['expected a mapping with a "services" list']);
    expect(await problemsOf('{}')).toEqual(['services: missing required field']);
  });
});
