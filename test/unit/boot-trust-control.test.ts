/**
 * The trust phase's edges: the kernel command line's trust keys (init/boot/cmdline.ts), the
 * `provision` control command (protocol, server, read-only ports) and what mosctl prints for the
 * trust state and a provisioning.
 */
import { describe, expect, it } from 'vitest';
import { parseCmdline, parsePcrList, readMosCmdline } from '../../init/boot/cmdline.ts';
import { ControlError, type ProvisionReport, type ProvisionRequest, type SupervisorApi, type SupervisorInfo } from '../../init/control/api.ts';
import { BadRequestError, parseRequest, READ_ONLY_COMMANDS } from '../../init/control/protocol.ts';
import { renderInfo, renderProvision } from '../../mosctl/render.ts';

const mos = (text: string) => readMosCmdline(parseCmdline(text));

describe('trust keys on the kernel command line', () => {
  it('defaults: no store, tag latest, the kernel TPM resource manager, PCRs 7 and 11', () => {
    expect(mos('console=ttyS0 quiet')).toMatchObject({
      store: null,
      manifestTag: 'latest',
      tpm: 'device:/dev/tpmrm0',
      trustPcrs: [7, 11],
      invalid: [],
    });
  });

  it('reads mos.store, mos.manifest_tag, mos.tpm and mos.trust_pcrs', () => {
    expect(mos('mos.store=/dev/vdb mos.manifest_tag=v2 mos.tpm=swtpm:host=127.0.0.1,port=2321 mos.trust_pcrs=11,7,0')).toMatchObject({
      store: '/dev/vdb',
      manifestTag: 'v2',
      tpm: 'swtpm:host=127.0.0.1,port=2321',
      trustPcrs: [0, 7, 11],
      invalid: [],
    });
    expect(mos('mos.store=/srv/store mos.tpm=device:/dev/tpm0')).toMatchObject({ store: '/srv/store', tpm: 'device:/dev/tpm0' });
    // An empty store is an error: a key written without its value must not switch verification off.
    expect(mos('mos.store=')).toMatchObject({ store: null, invalid: [{ key: 'mos.store' }] });
  });

  it('records unreadable values instead of guessing (the trust phase refuses them)', () => {
    const parsed = mos('mos.store=vdb mos.tpm=/dev/tpmrm0 mos.trust_pcrs=7,,11 mos.manifest_tag= mos.shutdown_timeout=soon');
    expect(parsed.invalid.map((entry) => entry.key)).toEqual(['mos.shutdown_timeout', 'mos.store', 'mos.manifest_tag', 'mos.tpm', 'mos.trust_pcrs']);
    expect(parsed).toMatchObject({ store: null, tpm: 'device:/dev/tpmrm0', trustPcrs: [7, 11], manifestTag: 'latest', shutdownTimeoutMs: null });
  });

  it('parsePcrList', () => {
    expect(parsePcrList('7,11')).toEqual([7, 11]);
    expect(parsePcrList(' 11 , 7,7 ')).toEqual([7, 11]);
    expect(parsePcrList('23')).toEqual([23]);
    expect(parsePcrList('24')).toBe('PCR "24" is not a number 0-23');
    expect(parsePcrList('7,x')).toBe('PCR "x" is not a number 0-23');
    expect(parsePcrList('')).toMatch(/^expected PCR numbers separated by commas/);
    expect(parsePcrList('7,')).toMatch(/^expected PCR numbers separated by commas/);
    expect(parsePcrList('-1')).toBe('PCR "-1" is not a number 0-23');
  });
});

describe('the provision command', () => {
  it('parses with or without a CA, PCRs and reset', () => {
    expect(parseRequest(JSON.stringify({ v: 1, id: 3, cmd: 'provision' }))).toEqual({ v: 1, id: 3, cmd: 'provision' });
    expect(parseRequest(JSON.stringify({ v: 1, id: 4, cmd: 'provision', ca: '-----BEGIN CERTIFICATE-----\n', pcrs: [7, 11], reset: true }))).toEqual({
      v: 1,
      id: 4,
      cmd: 'provision',
      ca: '-----BEGIN CERTIFICATE-----\n',
      pcrs: [7, 11],
      reset: true,
    });
  });

  it('refuses unknown fields, PCRs out of range, an empty or huge CA', () => {
    const refused = (request: object) => {
      const parsed = parseRequest(JSON.stringify({ v: 1, id: 5, cmd: 'provision', ...request }));
      expect(parsed).toBeInstanceOf(BadRequestError);
      return (parsed as BadRequestError).message;
    };
    expect(refused({ path: '/etc/passwd' })).toBe('unknown field "path"');
    expect(refused({ pcrs: [24] })).toBe('pcrs.0: expected PCR numbers 0-23');
    expect(refused({ pcrs: [] })).toBe('pcrs: expected at least one PCR');
    expect(refused({ pcrs: '7,11' })).toBe('pcrs: expected a list of PCR numbers');
    expect(refused({ ca: '' })).toBe('ca: expected the CA certificate as PEM text');
    expect(refused({ ca: 'x'.repeat(40_000) })).toMatch(/^ca: expected at most \d+ characters of PEM$/);
    expect(refused({ reset: 'yes' })).toBe('reset: expected true or false');
  });

  it('is not a read-only command (the virtio port refuses it unless trusted as root)', () => {
    expect(READ_ONLY_COMMANDS.has('provision')).toBe(false);
  });

  it('the server passes it to the API, and answers E_UNSUPPORTED without one (host mode)', async () => {
    const { serveControlStream } = await import('../../init/control/server.ts');
    const { PassThrough, Duplex } = await import('node:stream');
    const seen: ProvisionRequest[] = [];
    const report: ProvisionReport = { status: 'provisioned', nvIndex: '0x01806d6f', pcrs: [7, 11], root: 'sha256:0123456789abcdef', source: 'given', steps: ['define', 'write', 'writeLock'], reason: 'r' };
    const info: SupervisorInfo = { mode: 'pid1', pid: 1, startedAt: 0, health: 'ok', reason: null, configPath: null };
    const base = { info: () => info, list: () => [], status: () => { throw new Error('x'); }, start: () => Promise.reject(new Error('x')), stop: () => Promise.reject(new Error('x')), restart: () => Promise.reject(new Error('x')), logs: () => [], followLogs: () => () => {} } as unknown as SupervisorApi;
    const exchange = async (api: SupervisorApi, access: 'root' | 'read-only', request: object): Promise<Record<string, unknown>> => {
      const toServer = new PassThrough();
      const fromServer = new PassThrough();
      const stream = Duplex.from({ readable: toServer, writable: fromServer });
      serveControlStream(stream, api, { access });
      toServer.write(`${JSON.stringify({ v: 1, id: 1, ...request })}\n`);
      const line = await new Promise<string>((resolve) => fromServer.once('data', (chunk: Buffer) => resolve(chunk.toString())));
      toServer.end();
      return JSON.parse(line) as Record<string, unknown>;
    };
    const withProvision = { ...base, provision: (request: ProvisionRequest) => (seen.push(request), Promise.resolve(report)) } as SupervisorApi;
    expect(await exchange(withProvision, 'root', { cmd: 'provision', pcrs: [7], reset: true })).toEqual({ v: 1, id: 1, ok: true, result: report });
    expect(seen).toEqual([{ pcrs: [7], reset: true }]);
    expect(await exchange(withProvision, 'read-only', { cmd: 'provision' })).toMatchObject({ ok: false, error: { code: 'E_PERMISSION' } });
    expect(await exchange(base, 'root', { cmd: 'provision' })).toMatchObject({ ok: false, error: { code: 'E_UNSUPPORTED', message: 'provision needs mos to be PID 1 (this is pid1 mode)' } });
    const refusing = { ...base, provision: () => Promise.reject(new ControlError('E_DIFFERENT_ROOT', 'NV index 0x01806d6f already holds a different trust root')) } as SupervisorApi;
    expect(await exchange(refusing, 'root', { cmd: 'provision' })).toMatchObject({ ok: false, error: { code: 'E_DIFFERENT_ROOT', message: 'NV index 0x01806d6f already holds a different trust root' } });
  });
});

describe('mosctl: trust in status, provision', () => {
  const info: SupervisorInfo = { mode: 'pid1', pid: 1, startedAt: Date.parse('2026-11-22T11:00:00Z'), health: 'ok', reason: null, configPath: null };
  const now = Date.parse('2026-11-22T11:00:05Z');
  const install = `sha256:${'c'.repeat(64)}`;

  it('shows the trust state as the last header line (PID 1 only)', () => {
    expect(renderInfo(info, now)).not.toMatch(/trust:/);
    expect(renderInfo({ ...info, trust: { state: 'not-configured' } }, now).split('\n').at(-1)).toBe('trust: not configured');
    const verified = renderInfo(
      {
        ...info,
        trust: { state: 'verified', install, installJson: install, tag: 'latest', product: 'p-uuid', targets: 2, root: 'sha256:0123456789abcdef', provisioned: false, nvIndex: '0x01806d6f', pcrs: [7, 11], store: '/dev/vdb' },
      },
      now,
    );
    expect(verified.split('\n').at(-1)).toBe(`trust: verified install ${install} (product p-uuid)`);
    const failed = renderInfo({ ...info, health: 'emergency', reason: 'trust: E_BLOB_DIGEST: x', trust: { state: 'failed', code: 'E_BLOB_DIGEST', message: 'x' } }, now);
    expect(failed.split('\n')).toContain('health: emergency — trust: E_BLOB_DIGEST: x');
    expect(failed.split('\n').at(-1)).toBe('trust: failed: E_BLOB_DIGEST: x');
  });

  it('prints what provision did', () => {
    const report: ProvisionReport = { status: 'provisioned', nvIndex: '0x01806d6f', pcrs: [7, 11], root: 'sha256:0123456789abcdef', source: 'given', steps: [], reason: '' };
    expect(renderProvision(report)).toBe('provisioned manifest CA sha256:0123456789abcdef into TPM NV 0x01806d6f (PCRs 7,11)');
    expect(renderProvision({ ...report, status: 'already-provisioned', source: 'embedded' })).toBe(
      'TPM NV 0x01806d6f (PCRs 7,11) already holds the embedded manifest CA sha256:0123456789abcdef; nothing to do',
    );
  });
});
