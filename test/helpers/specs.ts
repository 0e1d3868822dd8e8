import { parseServiceConfig } from '../../init/supervisor/spec.ts';
import type { ServiceSpec } from '../../init/supervisor/types.ts';

/** A validated spec from a partial definition, with the file format's defaults. */
export function makeSpec(fields: Record<string, unknown> & { name: string }): ServiceSpec {
  return parseServiceConfig({ services: [{ argv: ['/bin/true'], ...fields }] }, 'test')[0]!;
}
