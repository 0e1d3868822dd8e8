/**
 * Issue 4, "a UKI with a different cmdline (so a changed PCR 11) cannot read the trust root":
 * UKI A (test command line + `mos.store=/dev/vdb`) provisions and verifies on a fresh TPM; UKI B,
 * the same plus one harmless word, boots on the same TPM and store: systemd-stub measures another
 * .cmdline into PCR 11, the NV index's policy no longer holds, and PID 1 refuses with
 * E_TRUST_ROOT_PCR_MISMATCH: no services, and no second provisioning over the existing root.
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';
import { makeStore } from '../../harness/store.ts';
import { bootWithStore, describeStore, expectTrustRefusal, expectVerifiedBoot, trustUkiCmdline } from '../../harness/trust.ts';
import { ukiVariant } from '../../harness/uki.ts';

/** The extra word of UKI B: a `mos.*` key PID 1 does not read and the kernel ignores. */
export const HARMLESS_WORD = 'mos.uki=b';

export default defineCase({
  id: '07-trust-cmdline-pcr',
  title: 'trust: a UKI with another cmdline cannot read the trust root',
  images: ['uefi'],
  timeoutMs: 600_000,
  async run(t) {
    const store = await makeStore({ dir: t.scratch('store') });
    assert.ok(store.expected.ok, `the host verifier refuses the fixture: ${JSON.stringify(store.expected)}`);
    const ukiA = await ukiVariant(trustUkiCmdline(t.images.cmdline));
    const ukiB = await ukiVariant(trustUkiCmdline(t.images.cmdline, [HARMLESS_WORD]));
    t.step(`${describeStore(store)}; UKI A ${ukiA.cached ? 'reused' : 'built'}, UKI B (+${HARMLESS_WORD}) ${ukiB.cached ? 'reused' : 'built'}`);
    const tpmStateDir = t.tpmState();

    const first = await bootWithStore(t, { name: 'uki-a', kind: 'uefi', store, esp: ukiA.esp, tpmStateDir });
    const v1 = await expectVerifiedBoot(first, store, Timeouts.uefiBoot);
    assert.ok(v1.provisioned, 'UKI A provisions the empty TPM');
    t.step(`UKI A: provisioned and verified, services ready after ${first.elapsed}`);
    await first.powerOff(Timeouts.shutdown);
    t.step(`UKI A powered off after ${first.elapsed}`);

    const second = await bootWithStore(t, { name: 'uki-b', kind: 'uefi', store, esp: ukiB.esp, tpmStateDir });
    await second.waitFor(Markers.linuxBooting, Timeouts.uefiBoot);
    const refusal = await expectTrustRefusal(second, /^E_TRUST_ROOT_PCR_MISMATCH$/, Timeouts.uefiBoot);
    assert.doesNotMatch(second.console.content, Markers.trustProvisioned, 'UKI B must not provision over the existing root');
    assert.doesNotMatch(second.console.content, Markers.trustVerified);
    t.step(`UKI B refused after ${second.elapsed}: ${refusal.code}: ${refusal.message}`);
    t.log(refusal.statusNote);
  },
});
