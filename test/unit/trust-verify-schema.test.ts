/**
 * install.json's schema (with project-machine's validation bugs fixed) and the DER reading of
 * certificates, apart from the layout.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { productCommonName } from '../../init/trust/formats.ts';
import { parseInstallFile } from '../../init/trust/install-schema.ts';
import { DerError, decodeCertificatePem, OID, parseCertificateDer } from '../../init/trust/x509.ts';
import { createCa, makeImage, makeInstall, PRODUCT, type CertificateAuthority, type Doc, type Signer } from '../helpers/signed-layout.ts';

const images = [makeImage('zot'), makeImage('web'), makeImage('db')];

function problems(edit: (install: Doc) => void): string[] {
  const install: Doc = structuredClone(makeInstall(images));
  edit(install);
  const result = parseInstallFile(install);
  return result.ok ? [] : result.problems;
}

describe('install.json schema', () => {
  it('accepts a well-formed install file as is', () => {
    const install = makeInstall(images);
    const result = parseInstallFile(structuredClone(install));
    expect(result).toEqual({ ok: true, install });
  });

  it('ports are integers 1-65535 (project-machine accepted 65536)', () => {
    expect(problems((i) => (i.targets[0].network.ports[0].host = 65535))).toEqual([]);
    for (const port of [0, 65536, 80.5, -1]) {
      expect(problems((i) => (i.targets[0].network.ports[0].host = port)).join(), String(port)).toMatch(/ports\[0\]\.host/);
      expect(problems((i) => (i.targets[0].network.ports[0].container = port)).join(), String(port)).toMatch(/ports\[0\]\.container/);
    }
  });

  it('service names are non-empty, path-safe and unique', () => {
    for (const name of ['', 'Zot', '../zot', 'a/b', '.hidden', 'x'.repeat(64)]) {
      expect(problems((i) => (i.targets[0].service_name = name)).join(), name).toMatch(/targets\[0\]\.service_name/);
    }
    expect(problems((i) => (i.targets[2].service_name = 'zot'))).toEqual(['targets[2] (zot).service_name: duplicate service name']);
  });

  it('network types and what each may carry', () => {
    expect(problems((i) => (i.targets[1].network.type = 'nat')).join()).toMatch(/network\.type: expected host, none or simple/);
    expect(problems((i) => (i.targets[0].network.type = 'host')).join()).toMatch(/only for type simple/);
    expect(problems((i) => (i.targets[0].network.ipv4 = '')).join()).toMatch(/forwarding ports needs a static ipv4 address/);
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.300/24')).join()).toMatch(/ipv4/);
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.9')).join()).toMatch(/ipv4/);
    expect(problems((i) => (i.targets[0].network.ipv6 = 'fd00::2/64'))).toEqual([]);
    expect(problems((i) => (i.targets[0].network.ipv6 = 'fd00::zz/64')).join()).toMatch(/ipv6/);
  });

  it('host ports and static addresses are unique across targets', () => {
    const second = { type: 'simple', ipv4: '10.0.3.98/24', ipv6: '', ports: [{ host: 8080, container: 80 }] };
    expect(problems((i) => (i.targets[1].network = second)).join()).toMatch(/port 8080 is already forwarded to zot/);
    expect(problems((i) => (i.targets[1].network = { ...second, ipv4: '10.0.3.99/16', ports: [] })).join()).toMatch(/address 10\.0\.3\.99 is also zot's/);
  });

  it('ipv6 addresses are unique too, in any spelling', () => {
    const ipv6 = (address: string) => ({ type: 'simple', ipv4: '', ipv6: address, ports: null });
    expect(
      problems((i) => {
        i.targets[0].network.ipv6 = 'fd00::5/64';
        i.targets[1].network = ipv6('fd00:0:0::5/64');
      }),
    ).toEqual(["targets[1] (web).network.ipv6: address fd00::5 is also zot's"]);
    expect(
      problems((i) => {
        i.targets[0].network.ipv6 = 'fd00::5/64';
        i.targets[1].network = ipv6('fd00::6/64');
      }),
    ).toEqual([]);
  });

  it('subnets are the same or disjoint', () => {
    const simple = (ipv4: string) => ({ type: 'simple', ipv4, ipv6: '', ports: null });
    expect(problems((i) => (i.targets[1].network = simple('10.0.0.5/16')))).toEqual([
      'targets[1] (web).network.ipv4: subnet 10.0.0.0/16 overlaps 10.0.3.0/24 of zot; services share a subnet only with the same prefix',
    ]);
    expect(problems((i) => (i.targets[1].network = simple('10.0.3.5/25'))).join()).toMatch(/subnet 10\.0\.3\.0\/25 overlaps 10\.0\.3\.0\/24 of zot/);
    expect(problems((i) => (i.targets[1].network = simple('10.0.3.5/24')))).toEqual([]);
    expect(problems((i) => (i.targets[1].network = simple('10.0.4.5/24')))).toEqual([]);
  });

  it('an address is not its subnet\'s network, broadcast or gateway address, and the subnet has room for them', () => {
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.0/24'))).toEqual(['targets[0] (zot).network.ipv4: 10.0.3.0 is the network address of 10.0.3.0/24']);
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.255/24'))).toEqual(['targets[0] (zot).network.ipv4: 10.0.3.255 is the broadcast address of 10.0.3.0/24']);
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.1/24')).join()).toMatch(/10\.0\.3\.1 is the gateway mos reserves for 10\.0\.3\.0\/24/);
    expect(problems((i) => (i.targets[0].network.ipv6 = 'fd00::1/64')).join()).toMatch(/ipv6: fd00::1 is the gateway mos reserves for fd00::\/64/);
    expect(problems((i) => (i.targets[0].network.ipv4 = '10.0.3.99/32')).join()).toMatch(/ipv4: prefix \/32 leaves no room/);
    expect(problems((i) => (i.targets[0].network.ipv4 = '127.0.0.99/24')).join()).toMatch(/overlaps 127\.0\.0\.0\/8 \(loopback\)/);
  });

  it('only container targets have a simple network', () => {
    expect(problems((i) => (i.targets[0].service_type = 'fs-only'))).toEqual(['targets[0] (zot).network: type simple is only for container targets, not fs-only']);
  });

  it('limits (mos\'s extension): optional, container targets only, at least one bound, within range', () => {
    expect(problems((i) => (i.targets[0].limits = { memory_max: 67108864, pids_max: 64 }))).toEqual([]);
    expect(problems((i) => (i.targets[0].limits = { pids_max: 1 }))).toEqual([]);
    expect(problems((i) => (i.targets[0].limits = {}))).toEqual(['targets[0].limits: expected memory_max or pids_max (leave limits out for none)']);
    expect(problems((i) => (i.targets[0].limits = { memory_max: 1048575 }))).toEqual(['targets[0].limits.memory_max: expected at least 1048576 bytes (1 MiB)']);
    expect(problems((i) => (i.targets[0].limits = { memory_max: 2500000.5 }))).toEqual(['targets[0].limits.memory_max: expected an integer number of bytes']);
    expect(problems((i) => (i.targets[0].limits = { pids_max: 0 }))).toEqual(['targets[0].limits.pids_max: expected at least 1']);
    expect(problems((i) => (i.targets[0].limits = { pids_max: 4194305 }))).toEqual(['targets[0].limits.pids_max: expected at most 4194304']);
    expect(problems((i) => (i.targets[0].limits = { pids_max: '64' }))[0]).toMatch(/^targets\[0\]\.limits\.pids_max: /);
    expect(problems((i) => (i.targets[0].limits = { cpu_max: 1 }))).toEqual(['targets[0].limits.cpu_max: unknown field']);
    expect(problems((i) => (i.targets[0].limits = null))[0]).toMatch(/^targets\[0\]\.limits: /);
    expect(
      problems((i) => {
        i.targets[1].service_type = 'fs-only';
        i.targets[1].network = { type: 'none', ipv4: '', ipv6: '', ports: null };
        i.targets[1].limits = { pids_max: 8 };
      }),
    ).toEqual(['targets[1] (web).limits: only a container target has limits (this one is fs-only)']);
  });

  it('at most one hostfs target', () => {
    expect(
      problems((i) => {
        i.targets[1].service_type = 'hostfs';
        i.targets[2].service_type = 'hostfs';
      }).join(),
    ).toMatch(/second hostfs/);
  });

  it('storage: labels unique and not reserved, referenced labels declared, dest absolute and normalised', () => {
    expect(problems((i) => (i.storage[0].label = 'esp')).join()).toMatch(/reserves/);
    expect(problems((i) => i.storage.push({ ...i.storage[0] })).join()).toMatch(/duplicate label/);
    expect(problems((i) => (i.targets[0].storage[0].label = 'other')).join()).toMatch(/no storage item labelled "other"/);
    for (const dest of ['zot', '/', '/a/../etc', '/a//b', '/a/./b', '/a/']) {
      expect(problems((i) => (i.targets[0].storage[0].dest = dest)).join(), dest).toMatch(/storage\[0\]\.dest/);
    }
    expect(problems((i) => (i.storage[0].size = 0)).join()).toMatch(/storage\[0\]\.size/);
  });

  it('the file itself: version 1, a product, a known update type, at least one target, no missing fields', () => {
    expect(problems((i) => (i.version = 2)).join()).toMatch(/version/);
    expect(problems((i) => (i.product = '')).join()).toMatch(/product/);
    expect(problems((i) => (i.update_type = '')).join()).toMatch(/update_type/);
    expect(problems((i) => (i.targets = [])).join()).toMatch(/at least one target/);
    expect(problems((i) => delete i.storage).join()).toMatch(/storage: missing required field/);
    expect(problems((i) => (i.targets[0].size = 1.5)).join()).toMatch(/targets\[0\]\.size/);
    expect(problems((i) => (i.targets[0].version = '')).join()).toMatch(/targets\[0\]\.version/);
  });

  it('refuses unknown fields at every level', () => {
    expect(problems((i) => (i.signed_by = 'me'))).toEqual(['signed_by: unknown field']);
    expect(problems((i) => (i.targets[0].network.gateway = '10.0.3.1'))).toEqual(['targets[0].network.gateway: unknown field']);
    expect(problems((i) => (i.storage[0].encrypted = true))).toEqual(['storage[0].encrypted: unknown field']);
  });
});

describe('certificate DER', () => {
  let root: string;
  let ca: CertificateAuthority;
  let leaf: Signer;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'mos-x509-'));
    ca = createCa(join(root, 'ca'));
    leaf = ca.issue('leaf');
  }, 60_000);
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('reads what a manifest-signing certificate says', () => {
    const facts = parseCertificateDer(decodeCertificatePem(leaf.certPem));
    expect(facts).toMatchObject({
      version: 3,
      signatureAlgorithm: '1.2.840.10045.4.3.2',
      subjectText: `CN=${productCommonName(PRODUCT)}`,
      issuerText: 'CN=mos test manifest CA',
      notBefore: new Date('2024-01-01T00:00:00Z'),
      notAfter: new Date('2034-01-01T00:00:00Z'),
      basicConstraints: { ca: false, pathLength: null },
      keyUsage: ['digitalSignature'],
      extendedKeyUsage: [OID.codeSigning],
      unknownCriticalExtensions: [],
    });
  });

  it('reads the CA flag and keyCertSign of a CA', () => {
    const facts = parseCertificateDer(decodeCertificatePem(readFileSync(join(ca.dir, 'ca.pem'))));
    expect(facts.basicConstraints?.ca).toBe(true);
    expect(facts.keyUsage).toEqual(['keyCertSign', 'cRLSign']);
  });

  it('refuses DER that is not exact: trailing bytes, truncation, a non-minimal length', () => {
    const der = decodeCertificatePem(leaf.certPem);
    expect(() => parseCertificateDer(Buffer.concat([der, Buffer.from([0])]))).toThrow(DerError);
    expect(() => parseCertificateDer(der.subarray(0, der.length - 1))).toThrow(DerError);
    // 30 82 LL LL → 30 83 00 LL LL: the same length, not minimally encoded.
    expect(der[1]).toBe(0x82);
    const loose = Buffer.concat([Buffer.from([0x30, 0x83, 0x00]), der.subarray(2)]);
    expect(() => parseCertificateDer(loose)).toThrow(/non-minimal/);
  });

  it('takes exactly one strict PEM CERTIFICATE block', () => {
    const pem = leaf.certPem.toString();
    expect(decodeCertificatePem(Buffer.from(pem.replace(/\n/g, '\r\n')))).toEqual(decodeCertificatePem(leaf.certPem));
    expect(() => decodeCertificatePem(Buffer.from(`hello\n${pem}`))).toThrow(DerError);
    expect(() => decodeCertificatePem(Buffer.from(pem + pem))).toThrow(DerError);
    expect(() => decodeCertificatePem(Buffer.from(pem.replace('-----BEGIN CERTIFICATE-----\nMI', '-----BEGIN CERTIFICATE-----\nM*')))).toThrow(DerError);
    expect(() => decodeCertificatePem(Buffer.from(pem.replace('CERTIFICATE', 'PUBLIC KEY')))).toThrow(DerError);
  });
});
