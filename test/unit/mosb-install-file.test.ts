import { describe, expect, it } from 'vitest';
import { computeInstallFile, goJson, serializeInstallFile } from '../../mosb/install-file.ts';
import { parseManifestYaml } from '../../mosb/manifest-yaml.ts';

const UUID = '3f0c1e7a-2b1d-4c5e-9f00-0123456789ab';
const WEB = { digest: `sha256:${'1'.repeat(64)}`, size: 401 };
const DB = { digest: `sha256:${'2'.repeat(64)}`, size: 512 };
const images = new Map([
  ['web', WEB],
  ['db', DB],
]);

const manifest = (extra = '') =>
  parseManifestYaml(`
version: 1
${extra}
targets:
  - service_name: web
    source: oci:web:1
    version: "1.0"
    service_type: container
    nsgroup: web
    network:
      type: simple
      ipv4: 10.0.3.99/24
      ports:
        - host: 80
          container: 8080
  - service_name: db
    source: oci:db:1
    version: "14"
    service_type: fs-only
`);

describe('computeInstallFile and serializeInstallFile', () => {
  it('writes project-machine’s fields in its order, null for absent lists, no field omitted', () => {
    const bytes = serializeInstallFile(computeInstallFile(manifest(), UUID, images));
    expect(bytes.toString()).toBe(
      `{"version":1,"product":"${UUID}","storage":null,"targets":[` +
        `{"service_name":"web","version":"1.0","service_type":"container","network":{"type":"simple","ipv4":"10.0.3.99/24","ipv6":"","ports":[{"host":80,"container":8080}]},"nsgroup":"web","digest":"${WEB.digest}","storage":null,"size":401},` +
        `{"service_name":"db","version":"14","service_type":"fs-only","network":{"type":"none","ipv4":"","ipv6":"","ports":null},"nsgroup":"","digest":"${DB.digest}","storage":null,"size":512}` +
        `],"update_type":"complete"}`,
    );
  });

  it('writes storage lists when given', () => {
    const file = computeInstallFile(
      parseManifestYaml(`
version: 1
storage: [{label: data, persistent: true, nsgroup: web, size: 64}]
targets:
  - {service_name: web, source: "oci:w:1", version: "1", service_type: container, nsgroup: web, storage: [{dest: /data, label: data}]}
`),
      UUID,
      images,
    );
    const json = serializeInstallFile(file).toString();
    expect(json).toContain('"storage":[{"label":"data","persistent":true,"nsgroup":"web","size":64}]');
    expect(json).toContain('"storage":[{"dest":"/data","label":"data"}],"size":401');
    expect(Object.keys(JSON.parse(json).targets[0])).toEqual(['service_name', 'version', 'service_type', 'network', 'nsgroup', 'digest', 'storage', 'size']);
  });

  it('writes limits, in bytes, after project-machine\'s fields, and only for a target that sets them', () => {
    const file = computeInstallFile(
      parseManifestYaml(`
version: 1
targets:
  - {service_name: web, source: "oci:w:1", version: "1", service_type: container, nsgroup: web, limits: {memory_max: 64MiB, pids_max: 64}}
  - {service_name: db, source: "oci:d:1", version: "1", service_type: container, nsgroup: db, limits: {pids_max: 32}}
`),
      UUID,
      images,
    );
    const json = serializeInstallFile(file).toString();
    expect(json).toContain('"storage":null,"size":401,"limits":{"memory_max":67108864,"pids_max":64}}');
    expect(json).toContain('"size":512,"limits":{"pids_max":32}}');
    expect(serializeInstallFile(computeInstallFile(manifest(), UUID, images)).toString()).not.toContain('limits');
  });

  it('fills the product from the keyset and refuses a manifest naming another', () => {
    expect(computeInstallFile(manifest(`product: ${UUID}`), UUID, images).product).toBe(UUID);
    expect(() => computeInstallFile(manifest('product: 00000000-0000-0000-0000-000000000000'), UUID, images)).toThrow(
      expect.objectContaining({ code: 'E_PRODUCT_MISMATCH', message: expect.stringContaining(`the signing certificate is for product ${UUID}`) }),
    );
  });

  it('takes digest and size from the source images, and checks pins against them', () => {
    const pinned = (pins: string) =>
      parseManifestYaml(`
version: 1
targets:
  - {service_name: web, source: "oci:w:1", version: "1", service_type: fs-only, ${pins}}
`);
    expect(computeInstallFile(pinned(`digest: "${WEB.digest}", size: 401`), UUID, images).targets[0]).toMatchObject(WEB);
    expect(() => computeInstallFile(pinned(`digest: "sha256:${'9'.repeat(64)}"`), UUID, images)).toThrow(expect.objectContaining({ code: 'E_DIGEST_MISMATCH' }));
    expect(() => computeInstallFile(pinned('size: 400'), UUID, images)).toThrow(expect.objectContaining({ code: 'E_DIGEST_MISMATCH', message: expect.stringContaining('pins size 400') }));
    expect(() => computeInstallFile(pinned(''), UUID, new Map())).toThrow(expect.objectContaining({ code: 'E_SOURCE' }));
  });

  it('escapes like Go’s json.Marshal', () => {
    expect(goJson({ a: '<b>&\u2028\u2029"é' })).toBe('{"a":"\\u003cb\\u003e\\u0026\\u2028\\u2029\\"é"}');
  });

  it('refuses an install.json larger than the boot side reads', () => {
    const file = computeInstallFile(manifest(), UUID, images);
    file.targets[0]!.version = 'x'.repeat(1024 * 1024);
    expect(() => serializeInstallFile(file)).toThrow(expect.objectContaining({ code: 'E_TOO_LARGE' }));
  });
});
