/**
 * Issue 4, "a manifest signed with a foreign keyset is refused": the store's layout is published
 * with a keyset of its own (another manifest CA). The machine holds the test image's CA (a fresh
 * TPM is provisioned with it first), so the certificate does not chain to it: E_CERT_UNTRUSTED,
 * the emergency state, no services. Direct boot with a swtpm by default (MOS_VM_TRUST_BOOT=uefi
 * for Secure Boot and a UKI variant).
 */
import assert from 'node:assert/strict';
import { defineCase } from '../../harness/case.ts';
import { Markers } from '../../harness/markers.ts';
import { foreignKeys, makeStore } from '../../harness/store.ts';
import { bootRefusalCase, describeStore, expectTrustRefusal, refusalBootKind, trustLines } from '../../harness/trust.ts';

export default defineCase({
  id: '08-trust-foreign-keyset',
  title: 'trust: a manifest signed with a foreign keyset is refused',
  images: [refusalBootKind()],
  timeoutMs: 360_000,
  async run(t) {
    const keys = await foreignKeys(t.scratch('foreign'));
    const store = await makeStore({ dir: t.scratch('store'), keys });
    assert.ok(!store.expected.ok && store.expected.code === 'E_CERT_UNTRUSTED', `host verifier: ${JSON.stringify(store.expected)}`);
    t.step(describeStore(store));

    const { vm, kind, timeoutMs } = await bootRefusalCase(t, store);
    const refusal = await expectTrustRefusal(vm, /^E_CERT_UNTRUSTED$/, timeoutMs);
    assert.doesNotMatch(vm.console.content, Markers.trustVerified);
    t.step(`${kind} boot refused after ${vm.elapsed}: ${refusal.code}: ${refusal.message}`);
    t.log(refusal.statusNote);
    t.log(`trust lines: ${trustLines(vm).join(' | ')}`);
  },
});
