/**
 * Issue 4, "a layout with one tampered blob is refused": after publishing, one byte of the
 * target's image manifest blob is flipped (same size, another sha256 than install.json signed).
 * The host's run of the guest's verifier names the code (E_TARGET_DIGEST); the guest must refuse
 * with the same one: the emergency state, no services. Direct boot with a swtpm by default
 * (MOS_VM_TRUST_BOOT=uefi for Secure Boot and a UKI variant).
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers } from '../../harness/markers.ts';
import { makeStore, tamperTargetManifest } from '../../harness/store.ts';
import { bootRefusalCase, describeStore, expectTrustRefusal, refusalBootKind, trustLines } from '../../harness/trust.ts';

export default defineCase({
  id: '09-trust-tampered-blob',
  title: 'trust: a layout with one tampered blob is refused',
  images: [refusalBootKind()],
  timeoutMs: 360_000,
  async run(t) {
    const store = await makeStore({ dir: t.scratch('store'), tamper: tamperTargetManifest('web') });
    assert.ok(!store.expected.ok, 'the host verifier refuses the tampered layout');
    assert.match(store.expected.code, /^E_(TARGET|BLOB)_DIGEST$/, `host verifier: ${JSON.stringify(store.expected)}`);
    t.step(describeStore(store));

    const { vm, kind, timeoutMs } = await bootRefusalCase(t, store);
    const refusal = await expectTrustRefusal(vm, new RegExp(`^${store.expected.code}$`), timeoutMs);
    assert.doesNotMatch(vm.console.content, Markers.trustVerified);
    t.step(`${kind} boot refused after ${vm.elapsed}: ${refusal.code}: ${refusal.message}`);
    t.log(refusal.statusNote);
    t.log(`trust lines: ${trustLines(vm).join(' | ')}`);
  },
});
