/** What `mosctl --json status` prints (see mosctl/main.ts). */
import type { SupervisorInfo } from '../../init/control/api.ts';
import type { ServiceStatus } from '../../init/supervisor/types.ts';

export type { ServiceStatus, SupervisorInfo };

export interface StatusJson {
  info: SupervisorInfo;
  services: ServiceStatus[];
}

/**
 * The test image's service that exits non-zero on purpose (case 03): MOS_VM_CRASHY_SERVICE, else
 * the first whose name says so (`*crash*`, `*flaky*`).
 */
export function crashyServiceName(services: readonly ServiceStatus[], env: NodeJS.ProcessEnv = process.env): string | undefined {
  const wanted = env.MOS_VM_CRASHY_SERVICE;
  if (wanted) return services.find((s) => s.name === wanted)?.name;
  return services.find((s) => /crash|flaky/.test(s.name))?.name;
}
