import { parseServiceConfig } from '../../init/supervisor/spec.ts';
import { initialRuntime, publicStatus } from '../../init/supervisor/machine.ts';
import type { ServiceSpec, ServiceStatus } from '../../init/supervisor/types.ts';

/** A validated spec from a partial definition, with the file format's defaults. */
export function makeSpec(fields: Record<string, unknown> & { name: string }): ServiceSpec {
  return parseServiceConfig({ services: [{ argv: ['/bin/true'], ...fields }] }, 'test')[0]!;
}

/** A fresh service's public status (as the supervisor reports a stopped service), with overrides. */
export function makeStatus(overrides: Partial<ServiceStatus> = {}, since = Date.now()): ServiceStatus {
  const base = publicStatus(initialRuntime(makeSpec({ name: overrides.name ?? 'web' }), since));
  return { ...base, ...overrides };
}
