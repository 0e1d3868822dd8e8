/**
 * The host's side of a guest's user-mode NIC (qemu.ts `userNet`): free ports on 127.0.0.1 for
 * QEMU's host forwards, and the clients the cases use through them (a real HTTP GET with Node's
 * http client, a UDP exchange). All traffic stays on the host's loopback (FACTS.md).
 */
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { createServer } from 'node:net';

export type ForwardProtocol = 'tcp' | 'udp';

/**
 * A port on 127.0.0.1 that nothing listens on right now (the kernel's pick, released at once for
 * QEMU to bind). Another process could take it in between; QEMU then refuses to start
 * ("Could not set up host forwarding rule"), which the case reports.
 */
export function freePort(protocol: ForwardProtocol, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    if (protocol === 'tcp') {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, host, () => {
        const { port } = server.address() as { port: number };
        server.close(() => resolve(port));
      });
    } else {
      const socket = createSocket('udp4');
      socket.once('error', reject);
      socket.bind(0, host, () => {
        const { port } = socket.address();
        socket.close(() => resolve(port));
      });
    }
  });
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP/1.1 GET (no keep-alive), resolved with status, headers and body; rejects on error or timeout. */
export function httpGet(url: string, timeoutMs = 10_000): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', agent: false, timeout: timeoutMs, headers: { connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * GETs `url` until it answers (a forward can exist before the service listens behind it), up to
 * `timeoutMs`; returns the first answer and how many tries it took.
 */
export async function httpGetWhenUp(url: string, timeoutMs: number): Promise<HttpResult & { tries: number }> {
  const deadline = Date.now() + timeoutMs;
  let tries = 0;
  for (;;) {
    tries += 1;
    try {
      return { ...(await httpGet(url, 5_000)), tries };
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`GET ${url}: no answer after ${tries} tries in ${timeoutMs} ms: ${(error as Error).message}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

/**
 * Sends `payload` to 127.0.0.1:`port` over UDP and resolves with the first datagram back. UDP
 * may drop a datagram: it resends every `retryMs` until `timeoutMs`.
 */
export function udpExchange(port: number, payload: string, timeoutMs = 10_000, retryMs = 1_000, host = '127.0.0.1'): Promise<{ reply: string; sends: number }> {
  return new Promise((resolve, reject) => {
    const socket = createSocket('udp4');
    let sends = 0;
    const send = () => {
      sends += 1;
      socket.send(payload, port, host);
    };
    const finish = (error: Error | null, reply?: string) => {
      clearInterval(resend);
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve({ reply: reply!, sends });
    };
    const resend = setInterval(send, retryMs);
    const timer = setTimeout(() => finish(new Error(`UDP ${host}:${port}: no reply to ${sends} datagrams within ${timeoutMs} ms`)), timeoutMs);
    socket.on('message', (message) => finish(null, message.toString('utf8')));
    socket.on('error', (error) => finish(error));
    send();
  });
}
