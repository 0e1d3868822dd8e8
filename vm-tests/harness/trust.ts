/**
 * Shared steps of the trust cases (06-09, issue 4): the command lines, waits that fail fast on the
 * opposite outcome, and the checks a refused boot must pass.
 */
import type { ExtraDrive } from './qemu.ts';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import type { CaseContext } from './case.ts';
import type { StatusJson } from './guest-types.ts';
import type { BootOptions, Machine } from './machine.ts';
import { Markers, TEST_FLAGS, Timeouts } from './markers.ts';
import { buildCmdline } from './qemu.ts';
import { storeFlag, type Store } from './store.ts';
import { ukiVariant } from './uki.ts';

/**
 * How the refusal cases (08, 09) boot: `direct` (default: SeaBIOS, a fresh swtpm, PCRs 7/11 not
 * those of a UEFI boot but the same within the boot) or `uefi` (Secure Boot and a UKI variant).
 */
export function refusalBootKind(env: NodeJS.ProcessEnv = process.env): 'direct' | 'uefi' {
  return env.MOS_VM_TRUST_BOOT === 'uefi' ? 'uefi' : 'direct';
}

/** The UKI command line of a trust boot: the test image's plus `mos.store=/dev/vdb` (plus `extra`). */
export function trustUkiCmdline(base: string, extra: readonly string[] = []): string {
  return buildCmdline(base, [storeFlag('uefi'), ...extra]);
}

export interface Verified {
  digest: string;
  product: string;
  targets: number;
  provisioned: boolean;
}

/** Fail-fast patterns while waiting for a trust line that must come before the services start. */
export const BEFORE_SERVICES_FAIL_ON: readonly RegExp[] = [Markers.kernelPanic, Markers.emergency, Markers.servicesReady];

/**
 * Waits for the verified line, then `services ready`; fails at once on an emergency, a panic, or
 * services coming up without the verified line first.
 */
export async function expectVerifiedBoot(vm: Machine, store: Store, timeoutMs: number, since = 0): Promise<Verified> {
  const failOn = [Markers.kernelPanic, Markers.emergency];
  const [, digest, product, targets] = await vm.waitFor(Markers.trustVerified, timeoutMs, { since, failOn: BEFORE_SERVICES_FAIL_ON });
  assert.ok(
    digest === store.installDigest || digest === store.installJsonDigest,
    `the guest verified ${digest}; the store's install artifact is ${store.installDigest} (install.json ${store.installJsonDigest})`,
  );
  assert.ok(store.expected.ok, 'the host verifier accepts this store');
  assert.equal(Number(targets), store.expected.targets, 'the guest counts the targets the host verifier counts');
  await vm.waitFor(Markers.servicesReady, timeoutMs, { since, failOn });
  const text = vm.console.content.slice(since);
  const provisioned = Markers.trustProvisioned.test(text);
  if (provisioned) {
    assert.ok(text.search(Markers.trustProvisioned) < text.search(Markers.trustVerified), 'provisioned before verified');
  }
  return { digest: digest!, product: product!, targets: Number(targets), provisioned };
}

/**
 * Waits for `mos: emergency: trust: <code>`; fails at once if services come up instead. Then:
 * no `services ready`, the code is the expected one, and (when the control port answers) mosctl
 * shows health emergency with that reason and no running service.
 */
export async function expectTrustRefusal(vm: Machine, expectedCode: RegExp, timeoutMs: number, since = 0): Promise<{ code: string; message: string; statusNote: string }> {
  const [, code, message] = await vm.waitFor(Markers.trustRefused, timeoutMs, { since, failOn: [Markers.kernelPanic, Markers.servicesReady] });
  assert.match(code!, expectedCode, `refused with ${code}: ${message}`);
  const status = await vm.mosctlJson<StatusJson>('status');
  assert.equal(status.info.health, 'emergency', `mosctl status health ${status.info.health}`);
  assert.match(status.info.reason ?? '', new RegExp(code!), 'mosctl status names the code');
  // Nothing started: no pid, and no state a started service is in (a oneshot that ran is `done`).
  const started = status.services.filter((s) => s.pid !== null || ['starting', 'running', 'stopping', 'backoff', 'done'].includes(s.state));
  assert.deepEqual(started.map((s) => `${s.name}=${s.state}`), [], 'no service started');
  assert.doesNotMatch(vm.console.content.slice(since), Markers.servicesReady, 'no services ready');
  assert.doesNotMatch(vm.console.content, Markers.kernelPanic);
  const statusNote = await checkTrustStatus(vm, { state: 'failed', code: code! });
  return { code: code!, message: message!, statusNote };
}

/** `info.trust` as PID 1 reports it (init/trust/boot-trust.ts TrustState), when it does. */
export interface TrustStatus {
  state: string;
  install?: string;
  provisioned?: boolean;
  code?: string;
}

/**
 * What `mosctl --json status` says about trust, checked against what the console said when it
 * says anything (an older boot side may not report it): returns a line for the step log.
 */
export async function checkTrustStatus(vm: Machine, want: { state: 'verified'; install: string; provisioned: boolean } | { state: 'failed'; code: string }): Promise<string> {
  const status = await vm.mosctlJson<StatusJson & { info: { trust?: TrustStatus | null } }>('status');
  const trust = status.info.trust;
  if (!trust) return 'mosctl status does not report trust';
  assert.equal(trust.state, want.state, `mosctl status trust: ${JSON.stringify(trust)}`);
  if (want.state === 'verified') {
    assert.equal(trust.install, want.install, 'mosctl status names the verified install');
    if (trust.provisioned !== undefined) assert.equal(trust.provisioned, want.provisioned, 'mosctl status: provisioned this boot');
    return `mosctl status: trust verified ${trust.install?.slice(0, 19)}…${trust.provisioned ? ', provisioned this boot' : ''}`;
  }
  assert.equal(trust.code, want.code, 'mosctl status names the refusal code');
  return `mosctl status: trust failed ${trust.code}`;
}

/** The console's trust lines (for the step log). */
export function trustLines(vm: Machine, since = 0): string[] {
  return vm.console.content.slice(since).match(Markers.trustAny) ?? [];
}


/**
 * Boots the test image with `store` attached and named by `mos.store=`, and a TPM (shared through
 * `tpmStateDir` when given). `uefi`: Secure Boot and the signed UKI variant `esp` (its command
 * line already names the store); `direct`: the test image's command line plus the flags.
 */
export function bootWithStore(
  t: CaseContext,
  options: {
    name: string;
    kind: 'direct' | 'uefi';
    store: Store;
    esp?: string;
    tpmStateDir?: string;
    cmdline?: readonly string[];
    extraDrives?: readonly ExtraDrive[];
    /** A user-mode NIC with host forwards (BootOptions.userNet); the command line must configure it (USER_NET_UPLINK). */
    userNet?: BootOptions['userNet'];
  },
): Promise<Machine> {
  // The store first: its device node (mos.store=) is the first disk after the ESP.
  const drives = [options.store.drive, ...(options.extraDrives ?? [])];
  const common = { name: options.name, drives, tpm: true, tpmStateDir: options.tpmStateDir, control: true, ...(options.userNet ? { userNet: options.userNet } : {}) };
  if (options.kind === 'uefi') {
    if (!options.esp) throw new Error('a UEFI trust boot needs the ESP of a UKI variant (harness/uki.ts)');
    return t.boot({ ...common, boot: 'uefi', secureBoot: true, esp: options.esp });
  }
  return t.boot({ ...common, boot: 'direct', cmdline: [...TEST_FLAGS, storeFlag('direct'), ...(options.cmdline ?? [])] });
}

/** A refusal case's machine: direct boot, or UEFI with the trust UKI (MOS_VM_TRUST_BOOT=uefi). */
export async function bootRefusalCase(t: CaseContext, store: Store): Promise<{ vm: Machine; kind: 'direct' | 'uefi'; timeoutMs: number }> {
  const kind = refusalBootKind();
  if (kind === 'uefi') {
    const uki = await ukiVariant(trustUkiCmdline(t.images.cmdline));
    t.step(`UKI ${uki.cached ? 'reused' : 'built'}: ${uki.cmdline}`);
    return { vm: await bootWithStore(t, { name: 'vm', kind, store, esp: uki.esp }), kind, timeoutMs: Timeouts.uefiBoot };
  }
  return { vm: await bootWithStore(t, { name: 'vm', kind, store }), kind, timeoutMs: Timeouts.directBoot };
}

/** One line about a store, for the step log. */
export function describeStore(store: Store): string {
  const verdict = store.expected.ok ? `host verifier: ok, ${store.expected.targets} targets` : `host verifier: ${store.expected.code}`;
  return `store ${(statSync(store.image).size / 1024).toFixed(0)} KiB, install ${store.installDigest.slice(0, 19)}…${store.tampered ? `, ${store.tampered}` : ''} (${verdict})`;
}
