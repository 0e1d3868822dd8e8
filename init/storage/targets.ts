/**
 * What each verified target becomes on this machine, decided from the verified install alone:
 * where its image layer is, the dm-verity device that checks it, where it is mounted, and for a
 * container target the service that runs from it. Pure: the activation (init/storage/activate.ts)
 * carries the plan out through the `Native` port.
 *
 *   target        image (squashfs, read-only, through dm-verity)   then
 *   container     <targets>/<name>/image                           overlay <targets>/<name>/root
 *                                                                    (upper and work on scratch),
 *                                                                    the service runs chroot'ed there
 *   fs-only       <targets>/<name>/image                           read-only, for other services to bind
 *   hostfs        <targets>/<name>/image                           read-only, host tools; PID 1 stays mos
 *
 * A target whose image is not in the expected shape is not dropped: it is planned as
 * unavailable with the reason, so its service shows `failed` with that code in `mosctl status`.
 */
import path from 'node:path';
import { CONTAINER_MOUNT_POINTS } from '../../services/container.ts';
import * as v from 'valibot';
import type { VerifiedTarget } from '../trust/verify-install.ts';
import { SQUASHFS_MEDIA_TYPE_PREFIX, VERITY_ROOT_HASH_ANNOTATION, VERITY_SUFFIX } from './verity.ts';

/** Where a machine keeps what its targets need (`/run/mos/...` on a machine). */
export interface StorageDirs {
  /** The verified OCI layout (on the read-only store mount). */
  layoutDir: string;
  /** Mount points: `<targetsDir>/<name>/{image,root}`. */
  targetsDir: string;
  /** Writable layers of container targets: `<scratchDir>/<name>/{upper,work}`. */
  scratchDir: string;
}

export type TargetProblemCode =
  /** The image is not one squashfs layer with its verity root hash (mediaType, annotation). */
  | 'E_LAYER_FORMAT'
  /** The image config is not JSON of the expected shape, or names nothing to run. */
  | 'E_IMAGE_CONFIG';

/** What a container target's service execs, from its image config (Entrypoint, Cmd, Env, WorkingDir, User). */
export interface ImageProcess {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  uid?: number;
  gid?: number;
  /** Label `org.mos.readiness`: `notify` when the service says READY=1 on $NOTIFY_SOCKET. */
  readiness?: string;
  /** Label `org.mos.watchdog`: the sd_notify watchdog interval (`10s`), with readiness notify. */
  watchdog?: string;
}

/** Image config labels that say how mos supervises the image's process (docs/service-images.md). */
export const READINESS_LABEL = 'org.mos.readiness';
export const WATCHDOG_LABEL = 'org.mos.watchdog';

export interface TargetPlan {
  name: string;
  type: 'container' | 'fs-only' | 'hostfs';
  /** The squashfs + hash tree blob in the store. */
  blobPath: string;
  layerDigest: string;
  rootHash: string;
  mediaType: string;
  /** The device-mapper name of its verity device. */
  dmName: string;
  /** The read-only squashfs mount. */
  imageDir: string;
  /** Container targets: the overlay the service runs in, and its writable layer. */
  overlay?: {
    rootDir: string;
    upperDir: string;
    workDir: string;
    /** Made in the overlay at each activation, never through an image symlink: the container's mount points. */
    mountPoints: { readonly dirs: readonly string[]; readonly files: readonly string[] };
    /** A container in a user namespace: its image seen through an idmapped mount at `dir` (the nsgroup's range). */
    idmap?: { dir: string; hostId: number; size: number };
  };
  /** Container targets: the process from the image config. */
  process?: ImageProcess;
  /** Container targets: storage volumes bound into the root (set once the volumes are ready). */
  volumeMounts?: { source: string; dest: string; label: string }[];
}

export type TargetPlanResult =
  | { ok: true; plan: TargetPlan }
  | { ok: false; name: string; type: TargetPlan['type']; code: TargetProblemCode; message: string };

/** The kernel's limit on a DM name is 127 bytes; target names are at most 63 (install-schema.ts). */
export const DM_NAME_PREFIX = 'mos-';

const ROOT_HASH = /^[0-9a-f]{64}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** The parts of an OCI image config mos reads; everything else in it is left alone. */
const ImageConfigSchema = v.object({
  config: v.optional(
    v.nullable(
      v.object({
        Entrypoint: v.optional(v.nullable(v.array(v.string()))),
        Cmd: v.optional(v.nullable(v.array(v.string()))),
        Env: v.optional(v.nullable(v.array(v.string()))),
        WorkingDir: v.optional(v.nullable(v.string())),
        User: v.optional(v.nullable(v.string())),
        Labels: v.optional(v.nullable(v.record(v.string(), v.string()))),
      }),
    ),
  ),
});

/** `Entrypoint` + `Cmd`, `Env` as a record, `WorkingDir` (default `/`), a numeric `User` (`uid[:gid]`). */
export function planImageProcess(configBytes: Buffer): { ok: true; process: ImageProcess } | { ok: false; message: string } {
  let document: unknown;
  try {
    document = JSON.parse(configBytes.toString('utf8'));
  } catch (error) {
    return { ok: false, message: `image config is not JSON: ${(error as Error).message}` };
  }
  const parsed = v.safeParse(ImageConfigSchema, document);
  if (!parsed.success) {
    const issue = parsed.issues[0]!;
    const where = (issue.path ?? []).map((item) => String(item.key)).join('.');
    return { ok: false, message: `image config ${where || '(root)'}: ${issue.message}` };
  }
  const config = parsed.output.config ?? {};
  const argv = [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])];
  if (argv.length === 0 || argv[0] === '') return { ok: false, message: 'image config has neither Entrypoint nor Cmd: nothing to run' };
  if (argv.some((arg) => arg.includes('\0'))) return { ok: false, message: 'image config Entrypoint/Cmd contains a NUL byte' };
  const env: Record<string, string> = {};
  for (const entry of config.Env ?? []) {
    const equals = entry.indexOf('=');
    if (equals <= 0 || entry.includes('\0')) return { ok: false, message: `image config Env entry is not KEY=VALUE: ${JSON.stringify(entry.slice(0, 80))}` };
    env[entry.slice(0, equals)] = entry.slice(equals + 1);
  }
  const cwd = config.WorkingDir && config.WorkingDir !== '' ? config.WorkingDir : '/';
  if (!path.isAbsolute(cwd) || cwd.includes('\0')) return { ok: false, message: `image config WorkingDir must be an absolute path: ${JSON.stringify(cwd)}` };
  const process: ImageProcess = { argv, env, cwd };
  const labels = config.Labels ?? {};
  // Checked where every service's are (supervisor/spec.ts), when the target becomes a service.
  if (labels[READINESS_LABEL] !== undefined) process.readiness = labels[READINESS_LABEL];
  if (labels[WATCHDOG_LABEL] !== undefined) process.watchdog = labels[WATCHDOG_LABEL];
  const user = config.User ?? '';
  if (user !== '') {
    // Names need the image's /etc/passwd, read inside the container (issue 6); ids work now.
    const match = /^(\d{1,10})(?::(\d{1,10}))?$/.exec(user);
    if (!match) return { ok: false, message: `image config User ${JSON.stringify(user.slice(0, 64))}: only numeric uid[:gid] is supported` };
    const uid = Number(match[1]);
    const gid = match[2] === undefined ? uid : Number(match[2]);
    if (uid > 0xfffffffe || gid > 0xfffffffe) return { ok: false, message: `image config User ${user}: id out of range` };
    process.uid = uid;
    process.gid = gid;
  }
  return { ok: true, process };
}

export function planTarget(verified: VerifiedTarget, dirs: StorageDirs): TargetPlanResult {
  const { target } = verified;
  const name = target.service_name;
  const type = target.service_type;
  const refuse = (code: TargetProblemCode, message: string): TargetPlanResult => ({ ok: false, name, type, code, message });
  if (verified.layers.length !== 1) {
    return refuse('E_LAYER_FORMAT', `image of ${name} has ${verified.layers.length} layers; a service image is exactly one squashfs layer with its verity hash tree (mosb builds it)`);
  }
  const layer = verified.layers[0]!;
  if (!layer.mediaType.startsWith(SQUASHFS_MEDIA_TYPE_PREFIX) || !layer.mediaType.endsWith(VERITY_SUFFIX)) {
    return refuse('E_LAYER_FORMAT', `layer of ${name} has media type ${JSON.stringify(layer.mediaType.slice(0, 128))}; expected ${SQUASHFS_MEDIA_TYPE_PREFIX}…${VERITY_SUFFIX}`);
  }
  const rootHash = layer.annotations?.[VERITY_ROOT_HASH_ANNOTATION];
  if (rootHash === undefined) return refuse('E_LAYER_FORMAT', `layer of ${name} has no ${VERITY_ROOT_HASH_ANNOTATION} annotation`);
  if (!ROOT_HASH.test(rootHash)) return refuse('E_LAYER_FORMAT', `layer of ${name}: the verity root hash is not 64 lowercase hex digits`);
  if (!DIGEST.test(layer.digest)) return refuse('E_LAYER_FORMAT', `layer of ${name}: digest is not sha256:<64 hex>`);

  const targetDir = path.join(dirs.targetsDir, name);
  const plan: TargetPlan = {
    name,
    type,
    blobPath: path.join(dirs.layoutDir, 'blobs', 'sha256', layer.digest.slice('sha256:'.length)),
    layerDigest: layer.digest,
    rootHash,
    mediaType: layer.mediaType,
    dmName: `${DM_NAME_PREFIX}${name}`,
    imageDir: path.join(targetDir, 'image'),
  };
  if (type === 'container') {
    const process = planImageProcess(verified.configBytes);
    if (!process.ok) return refuse('E_IMAGE_CONFIG', `${name}: ${process.message}`);
    plan.process = process.process;
    const scratch = path.join(dirs.scratchDir, name);
    plan.overlay = { rootDir: path.join(targetDir, 'root'), upperDir: path.join(scratch, 'upper'), workDir: path.join(scratch, 'work'), mountPoints: CONTAINER_MOUNT_POINTS };
  }
  return { ok: true, plan };
}

/** Every target of the install, in install order. */
export function planTargets(targets: readonly VerifiedTarget[], dirs: StorageDirs): TargetPlanResult[] {
  return targets.map((target) => planTarget(target, dirs));
}
