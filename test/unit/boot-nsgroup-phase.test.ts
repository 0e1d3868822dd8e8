/**
 * The boot's nsgroups phase over the fake TPM: the install's named nsgroups (container targets
 * and storage items) get ranges clear of /etc/subuid, the same on the next boot; a refused state
 * is reported, never papered over.
 */
import { describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import { installNsgroups, runNsgroupPhase, type NsgroupPhaseEffects } from '../../init/boot/nsgroup-phase.ts';
import type { VerifiedInstall } from '../../init/trust/verify-install.ts';

const TCTI = 'swtpm:host=127.0.0.1,port=1';

function install(targets: { name: string; type?: string; nsgroup: string }[], storage: { label: string; nsgroup: string }[] = []): VerifiedInstall {
  return {
    targets: targets.map((t) => ({ target: { service_name: t.name, service_type: t.type ?? 'container', nsgroup: t.nsgroup } })),
    install: { storage: storage.map((s) => ({ ...s, persistent: true, size: 16 })) },
  } as unknown as VerifiedInstall;
}

function effects(native: FakeNative, files: Record<string, string> = {}) {
  const lines: string[] = [];
  const fx: NsgroupPhaseEffects = {
    native,
    withTpm: (run) => run(),
    readText: (file) => files[file] ?? null,
    say: (line) => void lines.push(line),
    log: () => {},
  };
  return { fx, lines };
}

describe('nsgroups phase', () => {
  it('names the container targets\' and storage items\' nsgroups, not none, "" or fs-only targets\'', () => {
    const verified = install(
      [
        { name: 'web', nsgroup: 'web' },
        { name: 'tools', nsgroup: 'none' },
        { name: 'files', type: 'fs-only', nsgroup: 'files' },
        { name: 'db', nsgroup: '' },
      ],
      [{ label: 'data', nsgroup: 'shared' }],
    );
    expect(installNsgroups(verified)).toEqual(['shared', 'web']);
  });

  it('assigns ranges around /etc/subuid, keeps them in the TPM, and finds the same ones on the next boot', async () => {
    const native = new FakeNative();
    const verified = install([{ name: 'web', nsgroup: 'web' }, { name: 'db', nsgroup: 'db' }]);
    const subuid = { '/etc/subuid': 'root:65536:65536\n' };
    const first = effects(native, subuid);
    const result = await runNsgroupPhase(verified, TCTI, first.fx);
    expect(result.ranges).toEqual({ ok: true, assignment: { ranges: { db: { hostId: 131072, size: 65536 }, web: { hostId: 196608, size: 65536 } }, retired: {} } });
    expect(first.lines).toEqual(['mos: nsgroups: db 131072-196607, web 196608-262143 (TPM NV 0x01806d70; new: db, web)']);
    const again = effects(native, subuid);
    const second = await runNsgroupPhase(verified, TCTI, again.fx);
    expect(second.ranges).toEqual(result.ranges);
    expect(again.lines).toEqual(['mos: nsgroups: db 131072-196607, web 196608-262143 (TPM NV 0x01806d70)']);
  });

  it('a refused state fails the named nsgroups, with the code on the console', async () => {
    const native = new FakeNative();
    await native.tpmNvDefine(TCTI, { index: 0x01806d70, size: 16, attributes: 0x00040004, authPolicy: Buffer.alloc(0) });
    const { fx, lines } = effects(native);
    const result = await runNsgroupPhase(install([{ name: 'web', nsgroup: 'web' }]), TCTI, fx);
    expect(result.ranges).toMatchObject({ ok: false, code: 'E_NSGROUP_STATE' });
    expect(lines[0]).toMatch(/^mos: nsgroups: E_NSGROUP_STATE: .*; services and volumes of nsgroups web will not start$/);
  });

  it('an install without named nsgroups touches no TPM', async () => {
    const native = new FakeNative();
    const { fx, lines } = effects(native);
    const result = await runNsgroupPhase(install([{ name: 'tools', nsgroup: 'none' }]), TCTI, fx);
    expect(result).toMatchObject({ ranges: { ok: true }, note: 'no named nsgroups' });
    expect(native.tpmCalls).toEqual([]);
    expect(lines).toEqual([]);
  });
});
