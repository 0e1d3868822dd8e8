import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { MosbError } from '../../mosb/errors.ts';
import { parseManifestYaml, parseMemorySize, parseSource } from '../../mosb/manifest-yaml.ts';

const target = (extra: Record<string, unknown> = {}) => ({
  service_name: 'web',
  source: 'oci:images/web:1.0',
  version: '1.0.0',
  service_type: 'container',
  nsgroup: 'web',
  ...extra,
});
const doc = (extra: Record<string, unknown> = {}, targets: unknown[] = [target()]) => YAML.stringify({ version: 1, targets, ...extra });

/** The issues of an invalid manifest, as `path: message` lines. */
function issues(text: string): string[] {
  try {
    parseManifestYaml(text);
  } catch (error) {
    expect(error).toBeInstanceOf(MosbError);
    const failure = error as MosbError;
    if (failure.code === 'E_MANIFEST_INVALID') return failure.issues.map((issue) => `${issue.path}: ${issue.message}`);
    return [`${failure.code}: ${failure.message}`];
  }
  throw new Error('expected the manifest to be refused');
}

describe('parseManifestYaml', () => {
  it('reads a minimal manifest and fills project-machine’s defaults, except update_type', () => {
    const parsed = parseManifestYaml(doc({}, [target(), { service_name: 'assets', source: 'oci:/abs/dir:tag', version: '2', service_type: 'fs-only' }]));
    expect(parsed).toEqual({
      version: 1,
      product: null,
      update_type: 'complete',
      storage: null,
      targets: [
        {
          service_name: 'web',
          source: { dir: 'images/web', tag: '1.0' },
          version: '1.0.0',
          digest: null,
          size: null,
          service_type: 'container',
          nsgroup: 'web',
          network: { type: 'none', ipv4: '', ipv6: '', ports: null },
          storage: null,
          limits: null,
        },
        {
          service_name: 'assets',
          source: { dir: '/abs/dir', tag: 'tag' },
          version: '2',
          digest: null,
          size: null,
          service_type: 'fs-only',
          nsgroup: '',
          network: { type: 'none', ipv4: '', ipv6: '', ports: null },
          storage: null,
          limits: null,
        },
      ],
    });
  });

  it('reads every field project-machine defines', () => {
    const digest = `sha256:${'ab'.repeat(32)}`;
    const parsed = parseManifestYaml(`
version: 1
product: de6c82c5-0000-4000-8000-000000000001
update_type: partial
storage:
  - label: zot-data
    persistent: true
    nsgroup: zot
    size: 30720
targets:
  - service_name: zot
    source: oci:zot:v2
    version: 1.0.0
    digest: ${digest}
    size: 7290
    service_type: container
    nsgroup: zot
    network:
      type: simple
      ipv4: 10.0.3.99/24
      ipv6: fd00::99/64
      ports:
        - host: 80
          container: 5000
        - host: 65535
          container: 1
    storage:
      - dest: /zot
        label: zot-data
`);
    expect(parsed.product).toBe('de6c82c5-0000-4000-8000-000000000001');
    expect(parsed.update_type).toBe('partial');
    expect(parsed.storage).toEqual([{ label: 'zot-data', persistent: true, nsgroup: 'zot', size: 30720 }]);
    expect(parsed.targets[0]).toMatchObject({
      digest,
      size: 7290,
      network: { type: 'simple', ipv4: '10.0.3.99/24', ipv6: 'fd00::99/64', ports: [{ host: 80, container: 5000 }, { host: 65535, container: 1 }] },
      storage: [{ dest: '/zot', label: 'zot-data' }],
    });
  });

  it('names unknown fields by their path, at every level', () => {
    const found = issues(
      YAML.stringify({
        version: 1,
        colour: 'blue',
        storage: [{ label: 'l', size: 1, sizee: 2 }],
        targets: [target({ sourc: 'x', network: { type: 'simple', portz: [], ports: [{ host: 1, container: 2, proto: 'udp' }] }, storage: [{ dest: '/a', label: 'l', ro: true }] })],
      }),
    );
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^colour: unknown field/),
        expect.stringMatching(/^storage\[0\]\.sizee: unknown field/),
        expect.stringMatching(/^targets\[0\]\.sourc: unknown field/),
        expect.stringMatching(/^targets\[0\]\.network\.portz: unknown field/),
        expect.stringMatching(/^targets\[0\]\.network\.ports\[0\]\.proto: unknown field/),
        expect.stringMatching(/^targets\[0\]\.storage\[0\]\.ro: unknown field/),
      ]),
    );
    expect(found).toHaveLength(6);
  });

  it('requires version 1, as a number', () => {
    expect(issues(YAML.stringify({ targets: [target()] }))).toEqual(['version: required']);
    expect(issues(doc({ version: 2 }))).toEqual(['version: must be 1, got number 2']);
    expect(issues(doc({ version: '1' }))).toEqual(['version: must be 1, got "1"']);
  });

  it('takes ports 1..65535 only (project-machine took 65536)', () => {
    const withPort = (host: unknown, container: unknown = 80) => doc({}, [target({ network: { type: 'simple', ports: [{ host, container }] } })]);
    expect(issues(withPort(0))).toEqual(['targets[0].network.ports[0].host: must be 1..65535, got 0']);
    expect(issues(withPort(65536))).toEqual(['targets[0].network.ports[0].host: must be 1..65535, got 65536']);
    expect(issues(withPort(80, 1.5))).toEqual(['targets[0].network.ports[0].container: expected a port number, got number 1.5']);
    expect(issues(withPort('80'))).toEqual(['targets[0].network.ports[0].host: expected a port number, got "80"']);
    expect(issues(doc({}, [target({ network: { type: 'simple', ports: [{ host: 80 }] } })]))).toEqual(['targets[0].network.ports[0].container: required']);
    expect(parseManifestYaml(withPort(65535)).targets[0]!.network.ports).toEqual([{ host: 65535, container: 80 }]);
  });

  it('forwards a host port to one target only, and keeps addresses and ports to simple networks', () => {
    const simple = (name: string, host: number) => target({ service_name: name, nsgroup: name, network: { type: 'simple', ports: [{ host, container: 80 }] } });
    expect(issues(doc({}, [simple('a', 8080), simple('b', 8080)]))).toEqual(['targets[1].network.ports[0].host: host port 8080 is already forwarded to a']);
    expect(issues(doc({}, [target({ network: { type: 'host', ports: [{ host: 1, container: 1 }], ipv4: '10.0.0.1/24' } })]))).toEqual([
      'targets[0].network.ipv4: only a simple network has ipv4 (this one is host)',
      'targets[0].network.ports: only a simple network has ports (this one is host)',
    ]);
    expect(issues(doc({}, [target({ network: { type: 'bridge' } })]))).toEqual(['targets[0].network.type: expected one of host | none | simple, got "bridge"']);
    expect(issues(doc({}, [target({ network: {} })]))).toEqual(['targets[0].network.type: required']);
    expect(issues(doc({}, [target({ network: { type: 'simple', ipv4: '10.0.3.300/24', ipv6: '10.0.0.1/64' } })]))).toEqual([
      expect.stringMatching(/^targets\[0\]\.network\.ipv4: expected an IPv4 address with a prefix length/),
      expect.stringMatching(/^targets\[0\]\.network\.ipv6: expected an IPv6 address with a prefix length/),
    ]);
    expect(issues(doc({}, [target({ network: { type: 'simple', ipv4: '10.0.3.1' } })]))).toHaveLength(1);
  });

  it('defaults update_type to complete and takes only complete or partial', () => {
    expect(parseManifestYaml(doc()).update_type).toBe('complete');
    expect(parseManifestYaml(doc({ update_type: 'partial' })).update_type).toBe('partial');
    expect(issues(doc({ update_type: 'full' }))).toEqual(['update_type: expected one of complete | partial, got "full"']);
  });

  it('refuses docker:// sources as needing a network, and sources without a tag', () => {
    const [remote] = issues(doc({}, [target({ source: 'docker://zothub.io/machine/zot:1' })]));
    expect(remote).toMatch(/^targets\[0\]\.source: docker:\/\/zothub.io\/machine\/zot:1: docker:\/\/ sources are not supported offline; copy the image into a local OCI layout first \(skopeo copy/);
    expect(issues(doc({}, [target({ source: 'oci:images/web' })]))).toEqual(['targets[0].source: oci:images/web: expected oci:DIR:TAG (the tag is required)']);
    expect(issues(doc({}, [target({ source: 'images/web:1' })]))).toEqual(['targets[0].source: images/web:1: expected oci:DIR:TAG (a local OCI image layout) or oci-archive:FILE:TAG (one packed by skopeo or umoci)']);
    expect(parseSource('oci:a:b:c')).toMatch(/may not contain ':'/);
    expect(parseSource('oci::b')).toMatch(/directory is empty/);
    expect(parseSource('oci-archive:images/web.tar:v1')).toEqual({ dir: '', tag: 'v1', archive: 'images/web.tar' });
    expect(parseSource('oci-archive:web.tar')).toMatch(/expected oci-archive:FILE:TAG \(the tag is required\)/);
    expect(parseSource('oci-archive:a:b:c')).toMatch(/the file may not contain ':'/);
  });

  it('requires the target fields project-machine requires, and an nsgroup for containers', () => {
    expect(issues(doc({}, [{ service_name: 'x' }]))).toEqual([
      'targets[0].source: required',
      'targets[0].version: required',
      'targets[0].service_type: required',
    ]);
    const noNsgroup = target();
    delete (noNsgroup as Record<string, unknown>).nsgroup;
    expect(issues(doc({}, [noNsgroup]))).toEqual(['targets[0].nsgroup: required for a container (write "none" to run it without a user namespace)']);
    expect(parseManifestYaml(doc({}, [target({ nsgroup: 'none' })])).targets[0]!.nsgroup).toBe('none');
    expect(issues(doc({}, [target({ version: 1.0 })]))).toEqual(['targets[0].version: expected a string, got number 1 (quote it: version: "1")']);
    expect(issues(doc({}, [target({ service_type: 'vm' })]))).toEqual(['targets[0].service_type: expected one of hostfs | container | fs-only, got "vm"']);
    expect(issues(doc({}, []))).toEqual(['targets: at least one target is needed']);
    expect(issues(YAML.stringify({ version: 1 }))).toEqual(['targets: required']);
  });

  it('refuses duplicate and unsafe service names', () => {
    expect(issues(doc({}, [target(), target()]))).toEqual(['targets[1].service_name: duplicate service name web (also targets[0])']);
    expect(issues(doc({}, [target({ service_name: '../etc' })]))).toEqual([expect.stringMatching(/^targets\[0\]\.service_name: expected .*, got "\.\.\/etc"$/)]);
    expect(issues(doc({}, [target({ nsgroup: 'Bad Group' })]))).toEqual([expect.stringMatching(/^targets\[0\]\.nsgroup: expected "none" or/)]);
  });

  it('checks digest and size pins’ form (their values are checked against the source later)', () => {
    expect(issues(doc({}, [target({ digest: 'sha256:abc' })]))).toEqual(['targets[0].digest: expected sha256:<64 hex digits>, got "sha256:abc"']);
    expect(issues(doc({}, [target({ size: -1 })]))).toEqual([`targets[0].size: must be 1..${Number.MAX_SAFE_INTEGER}, got -1`]);
  });

  it('reads container limits: memory in bytes or binary units, pids as a count', () => {
    const limitsOf = (limits: unknown) => parseManifestYaml(doc({}, [target({ limits })])).targets[0]!.limits;
    expect(limitsOf({ memory_max: '64MiB', pids_max: 64 })).toEqual({ memory_max: 67108864, pids_max: 64 });
    expect(limitsOf({ memory_max: '1G' })).toEqual({ memory_max: 1073741824 });
    expect(limitsOf({ memory_max: '2048 K' })).toEqual({ memory_max: 2097152 });
    expect(limitsOf({ memory_max: 2097152 })).toEqual({ memory_max: 2097152 });
    expect(limitsOf({ pids_max: 1 })).toEqual({ pids_max: 1 });
    expect(parseMemorySize('3KiB')).toBe(3072);
  });

  it('refuses limits that are ambiguous, out of range, empty or on a target that is not a container', () => {
    const limitIssues = (limits: unknown, extra: Record<string, unknown> = {}) => issues(doc({}, [target({ limits, ...extra })]));
    expect(limitIssues({ memory_max: '64MB' })).toEqual([
      'targets[0].limits.memory_max: expected bytes or a size like 256MiB (units K/KiB, M/MiB, G/GiB, all powers of 1024), got "64MB"',
    ]);
    expect(limitIssues({ memory_max: '512KiB' })).toEqual(['targets[0].limits.memory_max: must be at least 1MiB (1048576 bytes), got 524288 bytes']);
    expect(limitIssues({ memory_max: -5 })).toEqual(['targets[0].limits.memory_max: expected a positive integer number of bytes, got number -5']);
    expect(limitIssues({ memory_max: true })[0]).toMatch(/^targets\[0\]\.limits\.memory_max: expected bytes or a size like 256MiB, got/);
    expect(limitIssues({ pids_max: 0 })).toEqual(['targets[0].limits.pids_max: must be 1..4194304, got 0']);
    expect(limitIssues({ pids_max: 5000000 })).toEqual(['targets[0].limits.pids_max: must be 1..4194304, got 5000000']);
    expect(limitIssues({})).toEqual(['targets[0].limits: expected memory_max or pids_max (leave limits out for none)']);
    expect(limitIssues({ cpu: 2 })).toEqual(['targets[0].limits.cpu: unknown field (expected one of: memory_max, pids_max)']);
    expect(limitIssues({ pids_max: 10 }, { service_type: 'fs-only', nsgroup: null })).toEqual(['targets[0].limits: only a container target has limits (this one is fs-only)']);
  });

  it('checks storage: MiB sizes, labels, reserved names, and references from targets', () => {
    expect(issues(doc({ storage: [{ label: 'data', size: '30G' }] }))).toEqual(['storage[0].size: expected an integer number of MiB, got "30G"']);
    expect(issues(doc({ storage: [{ label: 'machine-store', size: 1 }] }))).toEqual([expect.stringMatching(/^storage\[0\]\.label: machine-store is reserved/)]);
    expect(issues(doc({ storage: [{ label: 'a', size: 1 }, { label: 'a', size: 1 }] }))).toEqual(['storage[1].label: duplicate label a']);
    expect(issues(doc({ storage: [{ label: 'a', size: 1, persistent: 'yes' }] }))).toEqual(['storage[0].persistent: expected true or false, got "yes"']);
    expect(issues(doc({}, [target({ storage: [{ dest: '/data', label: 'nope' }] })]))).toEqual([
      'targets[0].storage[0].label: no storage volume is labelled "nope" (declare it under the top-level storage)',
    ]);
    expect(issues(doc({ storage: [{ label: 'a', size: 1 }] }, [target({ storage: [{ dest: 'data', label: 'a' }, { dest: '/x/../y', label: 'a' }] })]))).toEqual([
      'targets[0].storage[0].dest: expected a normalized absolute path other than /, got "data"',
      'targets[0].storage[1].dest: expected a normalized absolute path other than /, got "/x/../y"',
    ]);
    const ok = parseManifestYaml(doc({ storage: [{ label: 'a', size: 1 }] }, [target({ storage: [{ dest: '/data', label: 'a' }] })]));
    expect(ok.storage).toEqual([{ label: 'a', persistent: false, nsgroup: '', size: 1 }]);
  });

  it('reports YAML errors with their position, and refuses duplicate keys and several documents', () => {
    expect(issues('version: 1\ntargets: [\n')).toEqual([expect.stringMatching(/^E_MANIFEST_YAML: manifest\.yaml:\d+:\d+: /)]);
    expect(issues('version: 1\nversion: 1\ntargets: []\n')).toEqual([expect.stringMatching(/^E_MANIFEST_YAML: manifest\.yaml:2:1: Map keys must be unique/)]);
    expect(issues('version: 1\n---\nversion: 1\n')).toEqual(['E_MANIFEST_YAML: manifest.yaml: expected one YAML document, found 2']);
    expect(issues('')).toEqual(['E_MANIFEST_YAML: manifest.yaml: empty file']);
    expect(issues('- 1\n')).toEqual([': expected a mapping, got a list']);
  });

  it('reports every problem at once, in the message too', () => {
    try {
      parseManifestYaml(doc({ version: 3, update_type: 'x' }, [target({ network: { type: 'simple', ports: [{ host: 0, container: 0 }] } })]), 'site/manifest.yaml');
      expect.unreachable();
    } catch (error) {
      expect((error as MosbError).message).toBe(
        [
          'site/manifest.yaml is invalid:',
          '  version: must be 1, got number 3',
          '  update_type: expected one of complete | partial, got "x"',
          '  targets[0].network.ports[0].host: must be 1..65535, got 0',
          '  targets[0].network.ports[0].container: must be 1..65535, got 0',
        ].join('\n'),
      );
    }
  });
});
