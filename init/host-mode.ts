/**
 * Host mode: the supervisor as an ordinary process (a child subreaper) over a service file and a
 * state directory, instead of a machine's PID 1. Developers try services with it, and most
 * integration tests and the benchmarks run it.
 *
 * State directory layout:
 *   control.sock   the control API (mode 0600, root-only)
 *   notify.sock    the sd_notify socket handed to services as $NOTIFY_SOCKET
 *   logs/          per-service rotated log files
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from './log/logger.ts';
import type { Native } from '../native/types.ts';
import { refuseExecInHostMode } from './control/exec-target.ts';
import { startControlServer } from './control/server.ts';
import { ServiceLogStore, logPipe } from './log/service-log-store.ts';
import { removeStaleSocket } from './stale-socket.ts';
import { loadServiceFile } from './supervisor/spec.ts';
import { Supervisor } from './supervisor/supervisor.ts';
import type { ServiceSpec } from './supervisor/types.ts';

export interface HostModeOptions {
  configPath: string;
  stateDir: string;
  native: Native;
  logger: Logger;
  /** Bound on stopping everything at SIGTERM/SIGINT. */
  shutdownDeadlineMs?: number;
}

export interface HostModeHandle {
  supervisor: Supervisor;
  /** Stops every service in order, closes the sockets and log files. */
  shutdown(reason: string): Promise<void>;
}



export async function runHostMode(options: HostModeOptions): Promise<HostModeHandle> {
  const { native, logger } = options;
  const stateDir = path.resolve(options.stateDir);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  native.setChildSubreaper();

  const logs = new ServiceLogStore({
    dir: path.join(stateDir, 'logs'),
    pipe: () => logPipe(native),
    watchReadable: (fd, onReadable) => native.watchReadable(fd, onReadable),
    // 4 files of 4 MiB a service: a burst of 100,000 typical lines fits without rotating any away.
    fileMaxBytes: 4 * 1024 * 1024,
    fileKeep: 3,
    onError: (error) => logger.error({ err: error }, 'service log capture failed'),
  });
  const notifySocketPath = path.join(stateDir, 'notify.sock');
  removeStaleSocket(notifySocketPath);
  const supervisor = new Supervisor({
    native,
    logs,
    logger,
    notifySocketPath,
    mode: 'host',
    configPath: path.resolve(options.configPath),
  });

  // The one reaper: every exit, ours or an orphan's, is collected here, on SIGCHLD, in the
  // addon first (armed respawns start before any JavaScript runs).
  const childWatch = native.watchChildren((exits, error) => supervisor.handleExits(exits, error));

  const { specs, error } = await loadServiceFile(options.configPath);
  // A bad file runs nothing (never half of it), but the supervisor stays up to say why.
  if (error) supervisor.setHealth('config-error', error);
  supervisor.load(specs);
  supervisor.listenForNotifications();

  const control = await startControlServer({
    path: path.join(stateDir, 'control.sock'),
    api: supervisor,
    sockets: native,
    peerCredentials: (fd) => native.peerCredentials(fd),
    // `mosctl exec` enters containers; host mode runs none (E_NOT_CONTAINER, naming unknown names).
    execTarget: refuseExecInHostMode((name) => supervisor.status(name)),
    logger: { info: (message) => logger.info({}, message), warn: (message) => logger.warn({}, message) },
  });
  logger.info({ stateDir, services: specs.length }, 'mos host mode ready');
  supervisor.startAll();
  supervisor.reapChildren();

  let stopping: Promise<void> | null = null;
  const shutdown = (reason: string) => {
    stopping ??= (async () => {
      logger.info({ reason }, 'shutting down');
      const report = await supervisor.stopAll(options.shutdownDeadlineMs ?? 30_000);
      if (report.killed.length > 0) logger.warn({ killed: report.killed }, `had to kill: ${report.killed.join(', ')}`);
      await control.close();
      supervisor.close();
      await logs.close();
      childWatch.close();
    })();
    return stopping;
  };
  return { supervisor, shutdown };
}
