/**
 * A minimal QMP client (QEMU Machine Protocol, JSON lines on a unix socket): connects, negotiates
 * capabilities, runs commands one at a time, and records asynchronous events (SHUTDOWN, RESET,
 * POWERDOWN, ...).
 */
import { existsSync } from 'node:fs';
import net from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  private buffer = '';
  private readonly queue: Pending[] = [];
  private closedError: Error | null = null;
  private greeting: Pending | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, newline).trim();
        this.buffer = this.buffer.slice(newline + 1);
        if (line) this.receive(JSON.parse(line) as Record<string, unknown>);
      }
    });
    const fail = (error: Error) => {
      this.closedError ??= error;
      for (const pending of this.queue.splice(0)) pending.reject(this.closedError);
      this.greeting?.reject(this.closedError);
      this.greeting = null;
    };
    socket.on('error', (error) => fail(new Error(`QMP connection failed: ${error.message}`)));
    socket.on('close', () => fail(new Error('QMP connection closed')));
  }

  /** Connects once QEMU has created the socket (polling for it until `timeoutMs`). */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (existsSync(socketPath)) {
        try {
          const socket = await new Promise<net.Socket>((resolve, reject) => {
            const s = net.createConnection(socketPath);
            s.once('connect', () => resolve(s));
            s.once('error', reject);
          });
          const client = new QmpClient(socket);
          await client.handshake();
          return client;
        } catch (error) {
          if (Date.now() > deadline) throw error;
        }
      } else if (Date.now() > deadline) {
        throw new Error(`no QMP socket at ${socketPath} after ${timeoutMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  private async handshake(): Promise<void> {
    await new Promise((resolve, reject) => {
      this.greeting = { resolve, reject };
    });
    await this.execute('qmp_capabilities');
  }

  private receive(message: Record<string, unknown>): void {
    if ('QMP' in message) {
      this.greeting?.resolve(message);
      this.greeting = null;
    } else if ('event' in message) {
      this.events.push(message as unknown as QmpEvent);
    } else if ('return' in message) {
      this.queue.shift()?.resolve(message.return);
    } else if ('error' in message) {
      const error = message.error as { class: string; desc: string };
      this.queue.shift()?.reject(new Error(`QMP ${error.class}: ${error.desc}`));
    }
  }

  /** Runs one command; QMP answers in order, so responses match the queue. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** ACPI power button. */
  systemPowerdown(): Promise<unknown> {
    return this.execute('system_powerdown');
  }

  /** Ctrl-Alt-Del on the PS/2 keyboard: the kernel turns it into SIGINT for PID 1 (once PID 1 set CAD off). */
  sendCtrlAltDel(): Promise<unknown> {
    return this.execute('send-key', {
      keys: [
        { type: 'qcode', data: 'ctrl' },
        { type: 'qcode', data: 'alt' },
        { type: 'qcode', data: 'delete' },
      ],
    });
  }

  systemReset(): Promise<unknown> {
    return this.execute('system_reset');
  }

  /** Asks QEMU to exit; the connection closes as it does, which is not an error here. */
  async quit(): Promise<void> {
    await this.execute('quit').catch(() => undefined);
  }

  close(): void {
    this.socket.destroy();
  }
}
