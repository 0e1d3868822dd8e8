/** Names mosb turns into paths or tags, and where keysets live by default. */
import os from 'node:os';
import path from 'node:path';
import { REF_NAME_PATTERN } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';

/**
 * A keyset or product name: one path component that cannot climb (`..`), hide (`.x`) or be
 * mistaken for an option (`-x`). Short enough for any filesystem.
 */
export const SAFE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkSafeName(kind: string, value: string): string {
  if (!SAFE_NAME_PATTERN.test(value)) {
    throw new MosbError('E_ARGUMENT', `invalid ${kind} name ${JSON.stringify(value)}: expected ${SAFE_NAME_PATTERN.source}`);
  }
  return value;
}

/** `$MOS_KEYS_DIR`, else `~/.local/share/mos/keys` (project-machine used `~/.local/share/machine/trust/keys`). */
export function defaultKeysDir(env: NodeJS.ProcessEnv = process.env, home: string = os.homedir()): string {
  const fromEnv = env.MOS_KEYS_DIR;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return path.join(home, '.local', 'share', 'mos', 'keys');
}

/** The tag `--out DIR` gets when it names none. */
export const DEFAULT_TAG = 'latest';

/** Service images are tagged with their digest's 64 hex digits; a user tag must not look like one. */
const DIGEST_HEX_PATTERN = /^[0-9a-f]{64}$/;

export function checkTag(tag: string): string {
  if (!REF_NAME_PATTERN.test(tag)) {
    throw new MosbError('E_ARGUMENT', `invalid tag ${JSON.stringify(tag)}: expected ${REF_NAME_PATTERN.source}`);
  }
  if (DIGEST_HEX_PATTERN.test(tag)) {
    throw new MosbError('E_ARGUMENT', `invalid tag ${JSON.stringify(tag)}: 64 hex digits name service images in the layout`);
  }
  return tag;
}

/**
 * `DIR[:TAG]` as `--out` takes it (skopeo's `oci:DIR:TAG` without the transport). The directory
 * may not contain `:`, as in project-machine and skopeo.
 */
export function parseOutSpec(spec: string): { dir: string; tag: string } {
  const colon = spec.indexOf(':');
  const dir = colon === -1 ? spec : spec.slice(0, colon);
  const tag = colon === -1 ? DEFAULT_TAG : spec.slice(colon + 1);
  if (dir === '') throw new MosbError('E_ARGUMENT', `invalid --out ${JSON.stringify(spec)}: expected DIR[:TAG]`);
  return { dir, tag: checkTag(tag) };
}
