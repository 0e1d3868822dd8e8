/** `mosctl`: the operator's command line for a running mos, over its control socket. */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import * as v from 'valibot';
import { ControlError } from '../init/control/api.ts';
import { ErrorCode, MAX_LOG_LINES, ServiceNameSchema } from '../init/control/protocol.ts';
import type { LogLine } from '../init/log/types.ts';
import type { ServiceStatus } from '../init/supervisor/types.ts';
import { parsePcrList } from '../init/boot/cmdline.ts';
import { ControlClient } from './client.ts';
import { exitStatusOf, parseExecTarget, planMosctlExec, runInherited, runRelayed, terminalEnv, type CommandRunner, type RelayStdio } from './exec.ts';
import {
  renderInfo,
  renderProvision,
  renderTimeline,
  renderList,
  renderLogLine,
  renderStatus,
  renderStatusLine,
  type RenderOptions,
} from './render.ts';

/** Where output goes; tests capture it instead of the process's streams. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Whether `out` is a terminal, which turns colors on. */
  isTTY: boolean;
  /** Whether stdin is a terminal (`exec` then gives the command one); default process.stdin's. */
  stdinIsTTY?: boolean;
  /** Runs `exec`'s crun command with mosctl's stdio; default `runInherited`. */
  runCommand?: CommandRunner;
  /** `exec` relayed by mos (mos is elsewhere): the command's stdio; default mosctl's own. */
  relayStdio?: RelayStdio;
}

export const DEFAULT_SOCKET = '/run/mos/control.sock';

/** Exit codes, after LSB init-script conventions and sysexits.h. */
export const ExitCode = {
  Ok: 0,
  /** mos reported that the operation failed. */
  Failure: 1,
  /** LSB 4: insufficient privilege. */
  Permission: 4,
  /** LSB 5: program is not installed, i.e. no such service. */
  UnknownService: 5,
  /** EX_USAGE */
  Usage: 64,
  /** EX_UNAVAILABLE: mos cannot be reached. */
  Unavailable: 69,
} as const;

/** Log lines shown under `mosctl status <service>`, as systemctl does. */
const STATUS_LOG_LINES = 10;

interface GlobalOptions {
  socket: string;
  json?: boolean;
}

export async function main(argv: string[], io: CliIo = processIo()): Promise<number> {
  let exitCode: number = ExitCode.Ok;
  const program = buildProgram(io, (code) => {
    exitCode = code;
  }, argv);
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (error) {
    // Commander has already printed its own errors (and help) through `io`.
    if (error instanceof CommanderError) return error.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    const failure =
      error instanceof ControlError
        ? error
        : new ControlError(ErrorCode.Internal, error instanceof Error ? error.message : String(error));
    io.err(`mosctl: ${failure.message}\n`);
    return exitCodeFor(failure.code);
  }
}

function exitCodeFor(code: string): number {
  switch (code) {
    case ErrorCode.Permission:
      return ExitCode.Permission;
    case ErrorCode.UnknownService:
      return ExitCode.UnknownService;
    case ErrorCode.Unreachable:
      return ExitCode.Unavailable;
    default:
      return ExitCode.Failure;
  }
}

function processIo(): CliIo {
  return {
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
    isTTY: process.stdout.isTTY === true,
    stdinIsTTY: process.stdin.isTTY === true,
    runCommand: runInherited,
    relayStdio: { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
  };
}

function buildProgram(io: CliIo, setExitCode: (code: number) => void, rawArgv: readonly string[]): Command {
  const program = new Command('mosctl')
    .description('control a running mos')
    .addOption(
      new Option('--socket <path>', 'control socket of mos').env('MOSCTL_SOCKET').default(DEFAULT_SOCKET),
    )
    .option('--json', 'print results as JSON for machines')
    // Set before any subcommand exists: subcommands copy these settings when created.
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.out(text),
      writeErr: (text) => io.err(text),
      outputError: (text, write) => write(`mosctl: ${text.replace(/^error: /, '')}`),
    })
    .showHelpAfterError('(see mosctl --help)');

  const globals = () => program.opts<GlobalOptions>();
  const renderOptions: RenderOptions = { color: io.isTTY && !process.env.NO_COLOR };
  const print = (text: string) => io.out(`${text}\n`);
  const printJson = (value: unknown) => print(JSON.stringify(value));
  const withClient = async <T>(run: (client: ControlClient) => Promise<T>): Promise<T> => {
    const client = await ControlClient.connect(globals().socket);
    try {
      return await run(client);
    } finally {
      client.close();
    }
  };

  program
    .command('status')
    .description('show mos and all services, or one service in detail')
    .argument('[service]', 'service name', parseServiceName)
    .action((service: string | undefined) =>
      withClient(async (client) => {
        if (service === undefined) {
          const info = await client.request({ cmd: 'info' });
          const services = await client.request({ cmd: 'list' });
          // Ages are measured from when the answers came, not from before they were asked for.
          const now = Date.now();
          if (globals().json) printJson({ info, services });
          else print(`${renderInfo(info, now, renderOptions)}\n\n${renderList(services, now, renderOptions)}`);
          return;
        }
        const status = await client.request({ cmd: 'status', service });
        if (globals().json) return printJson(status);
        const { lines } = await client.request({ cmd: 'logs', service, n: STATUS_LOG_LINES, follow: false });
        print(renderStatus(status, lines, Date.now(), renderOptions));
      }),
    );

  program
    .command('list')
    .description('list services')
    .action(() =>
      withClient(async (client) => {
        const services = await client.request({ cmd: 'list' });
        if (globals().json) printJson(services);
        else print(renderList(services, Date.now(), renderOptions));
      }),
    );

  program
    .command('logs')
    .description("show a service's recent output")
    .argument('<service>', 'service name', parseServiceName)
    .option('-f, --follow', 'keep printing new lines until interrupted')
    .option('-n, --lines <N>', `how many recent lines (0..${MAX_LOG_LINES})`, parseLineCount, 20)
    .action((service: string, options: { follow?: boolean; lines: number }) =>
      withClient(async (client) => {
        const { json } = globals();
        const printLine = json ? printJson : (line: LogLine) => print(renderLogLine(line));
        if (!options.follow) {
          const result = await client.request({ cmd: 'logs', service, n: options.lines, follow: false });
          if (json) printJson(result);
          else result.lines.forEach(printLine);
          return;
        }
        // Interrupting a follow is its normal end: close the connection and exit 0.
        const stop = () => client.close();
        process.once('SIGINT', stop);
        try {
          await client.stream({ cmd: 'logs', service, n: options.lines, follow: true }, printLine);
          await client.closed;
        } finally {
          process.off('SIGINT', stop);
        }
      }),
    );

  for (const action of ['start', 'stop', 'restart'] as const) {
    program
      .command(action)
      .description(`${action} a service`)
      .argument('<service>', 'service name', parseServiceName)
      .action((service: string) =>
        withClient(async (client) => {
          const status: ServiceStatus = await client.request({ cmd: action, service });
          if (globals().json) printJson(status);
          else print(renderStatusLine(status, renderOptions));
          // mos accepted the request, but the service ended up failed: the operation failed.
          if (status.state === 'failed') setExitCode(ExitCode.Failure);
        }),
      );
  }

  program
    .command('analyze')
    .description('show the boot timeline (kernel start, /init, each boot phase, first exec, services ready)')
    .action(() =>
      withClient(async (client) => {
        const timeline = await client.request({ cmd: 'analyze' });
        if (globals().json) printJson(timeline);
        else print(renderTimeline(timeline, renderOptions));
      }),
    );

  for (const action of ['poweroff', 'reboot', 'halt'] as const) {
    program
      .command(action)
      .description(`stop every service in order, then ${action} the machine`)
      .action(() =>
        withClient(async (client) => {
          const accepted = await client.request({ cmd: action });
          if (globals().json) printJson(accepted);
          else print(`mos: ${accepted.action} requested; shutting down`);
        }),
      );
  }

  const exec = program
    .command('exec')
    .description("run a command inside a running container service's namespaces and exit with its status (root only)")
    .usage('[options] <service> -- <command> [args...]')
    .argument('<service>', 'service name', parseServiceName)
    .argument('<command...>', 'the command and its arguments, after --')
    .option('-t, --tty', 'give the command a terminal (default: when stdin and stdout are terminals)')
    .option('-T, --no-tty', 'never give the command a terminal')
    .option('-e, --env <KEY=VALUE>', "add a variable to the service's environment (repeatable)", collectEnv)
    .option('-w, --workdir <dir>', "start in this directory of the container (default: the service's cwd)")
    .option('-u, --user <uid:gid>', "run as these container ids (default: the service's user)", parseUser)
    .addHelpText(
      'after',
      '\nThe command runs through crun on this machine, with this terminal or these pipes as its stdio.\n' +
        'Where mos is elsewhere (a VM\'s virtio-serial port), mos runs it and relays its stdin, stdout\n' +
        'and stderr over the connection: no terminal then, and closing the connection ends it.\n' +
        "mosctl exits with the command's status: 128+n when it was killed by signal n, 255 when it\n" +
        "was not found in the container; mosctl's own failures use the exit codes of other commands.",
    )
    .action(async (service: string, argv: string[], options: { tty?: boolean; env?: Record<string, string>; workdir?: string; user?: { uid: number; gid: number } }) => {
      // Options of mosctl stop at `--`: without it, `exec web ls -l` would take -l for mosctl's.
      const separator = rawArgv.indexOf('--');
      if (separator === -1 || rawArgv.length - separator - 1 !== argv.length) {
        exec.error(`put -- between the service and the command: mosctl exec ${service} -- ${argv.join(' ')}`, { exitCode: ExitCode.Usage });
      }
      const stdinIsTTY = io.stdinIsTTY ?? process.stdin.isTTY === true;
      if (options.tty === true && !stdinIsTTY) exec.error('--tty needs a terminal on stdin', { exitCode: ExitCode.Usage });
      const added = options.env ?? {};
      const client = await ControlClient.connect(globals().socket);
      let answer: unknown;
      try {
        answer = await client.request({ cmd: 'exec-target', service });
      } catch (error) {
        if (!(error instanceof ControlError && error.code === ErrorCode.NotLocal)) {
          client.close();
          throw error;
        }
        // mos is not on this machine: it runs the command and relays it, on this connection
        // (a virtio-serial port carries one connection at a time: no reconnecting).
        try {
          if (options.tty === true) {
            exec.error('--tty is not available here: mos is on another machine and relays the command over plain pipes, without a terminal', { exitCode: ExitCode.Usage });
          }
          const stdio = io.relayStdio ?? processIo().relayStdio!;
          setExitCode(
            await runRelayed(client, {
              service,
              argv,
              env: added,
              ...(options.workdir !== undefined ? { cwd: options.workdir } : {}),
              ...(options.user !== undefined ? { user: options.user } : {}),
            }, stdio),
          );
          return;
        } finally {
          client.close();
        }
      }
      // The control connection is closed before the command runs: a long session holds nothing in mos.
      client.close();
      const target = parseExecTarget(answer);
      const tty = options.tty ?? (stdinIsTTY && io.isTTY);
      const command = planMosctlExec(target, {
        argv,
        env: { ...terminalEnv(target, { env: added, tty }, process.env.TERM), ...added },
        // crun 1.8's exec runs as 0:0 in / whatever config.json says: the service's are passed.
        cwd: options.workdir ?? target.cwd,
        user: options.user ?? target.user,
        tty,
      });
      const exit = await (io.runCommand ?? runInherited)(command);
      setExitCode(exitStatusOf(exit));
    });

  program
    .command('provision')
    .description("write the manifest CA into the TPM's trust-root NV index (default: the CA the image embeds)")
    .option('--ca <file>', 'the manifest CA certificate (PEM) to provision instead of the embedded one')
    .option('--pcrs <list>', 'PCRs the read policy is bound to (default: mos.trust_pcrs, 7,11)', parsePcrs)
    .option('--reset', 'replace a different (or unreadable) trust root already in the TPM')
    .action((options: { ca?: string; pcrs?: number[]; reset?: boolean }) => {
      let ca: string | undefined;
      if (options.ca !== undefined) {
        try {
          ca = readFileSync(options.ca, 'utf8');
        } catch (error) {
          throw new ControlError(ErrorCode.BadRequest, `cannot read ${options.ca}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
        }
      }
      return withClient(async (client) => {
        const report = await client.request({
          cmd: 'provision',
          ...(ca !== undefined ? { ca } : {}),
          ...(options.pcrs !== undefined ? { pcrs: options.pcrs } : {}),
          ...(options.reset ? { reset: true } : {}),
        });
        if (globals().json) printJson(report);
        else print(renderProvision(report));
      });
    });

  return program;
}

function collectEnv(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('expected KEY=VALUE');
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function parseUser(value: string): { uid: number; gid: number } {
  const match = /^(\d{1,10}):(\d{1,10})$/.exec(value);
  const uid = Number(match?.[1]);
  const gid = Number(match?.[2]);
  if (!match || uid > 2 ** 32 - 2 || gid > 2 ** 32 - 2) throw new InvalidArgumentError('expected numeric container ids UID:GID');
  return { uid, gid };
}

function parsePcrs(value: string): number[] {
  const pcrs = parsePcrList(value);
  if (typeof pcrs === 'string') throw new InvalidArgumentError(pcrs);
  return pcrs;
}

function parseServiceName(value: string): string {
  const parsed = v.safeParse(ServiceNameSchema, value);
  if (!parsed.success) throw new InvalidArgumentError(parsed.issues[0].message);
  return parsed.output;
}

function parseLineCount(value: string): number {
  const count = Number(value);
  if (!/^\d+$/.test(value) || count > MAX_LOG_LINES) {
    throw new InvalidArgumentError(`expected an integer 0..${MAX_LOG_LINES}`);
  }
  return count;
}
