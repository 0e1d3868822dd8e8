/**
 * Loads the YAML parser on first use. The mos-init bundles replace this module (see
 * scripts/build-bundle.mjs) with a require() of dist/mos-yaml.cjs beside them, so that PID 1
 * neither carries the parser when every service file is JSON nor loads Node's ESM loader to
 * get it when one is YAML.
 */
export async function loadYaml(): Promise<typeof import('yaml')> {
  return import('yaml');
}
