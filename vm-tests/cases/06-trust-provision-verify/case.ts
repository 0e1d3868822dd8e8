/**
 * Issue 4, "first boot provisions; the reboot verifies and starts the services": OVMF with Secure
 * Boot, a signed UKI whose command line names the store (`mos.store=/dev/vdb`), a fresh swtpm.
 * Boot 1 writes the test image's manifest CA into the TPM NV index (PCRs 7,11 policy), verifies
 * the store's install layout and starts the services. Power off; boot 2 on the same TPM state
 * reads the trust root back under the policy, verifies, and does NOT provision again.
 */
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { defineCase } from '../../harness/case.ts';
import { Markers, Timeouts } from '../../harness/markers.ts';
import { makeStore, testKeys } from '../../harness/store.ts';
import { BEFORE_SERVICES_FAIL_ON, bootWithStore, checkTrustStatus, describeStore, expectVerifiedBoot, trustLines, trustUkiCmdline } from '../../harness/trust.ts';
import { ukiVariant } from '../../harness/uki.ts';

/** The NV index and PCRs the boot side uses (docs/trust.md). */
export const TRUST_NV_INDEX = '0x01806d6f';
export const TRUST_PCRS = '7,11';

export default defineCase({
  id: '06-trust-provision-verify',
  title: 'trust: first boot provisions the TPM, the reboot verifies',
  images: ['uefi'],
  timeoutMs: 600_000,
  async run(t) {
    const keys = testKeys();
    const store = await makeStore({ dir: t.scratch('store'), keys });
    assert.ok(store.expected.ok, `the host verifier refuses the fixture: ${JSON.stringify(store.expected)}`);
    const uki = await ukiVariant(trustUkiCmdline(t.images.cmdline));
    t.step(`${describeStore(store)}; UKI ${uki.cached ? 'reused' : 'built'}: ${uki.cmdline}`);

    const tpmStateDir = t.tpmState();
    const boot = (name: string) => bootWithStore(t, { name, kind: 'uefi', store, esp: uki.esp, tpmStateDir });

    // Boot 1: an empty TPM.
    const first = await boot('boot1');
    const [, caDigest, nvIndex, pcrs] = await first.waitFor(Markers.trustProvisioned, Timeouts.uefiBoot, { failOn: BEFORE_SERVICES_FAIL_ON });
    assert.equal(nvIndex, TRUST_NV_INDEX);
    assert.equal(pcrs, TRUST_PCRS);
    // The CA it names is the test keyset's (its public key's digest, or its certificate's).
    const spki = createHash('sha256').update(keys.caSpkiDer).digest('hex');
    const certDer = createHash('sha256').update(new X509Certificate(readFileSync(keys.caCertPath)).raw).digest('hex');
    assert.ok(spki.startsWith(caDigest!) || certDer.startsWith(caDigest!), `provisioned CA sha256:${caDigest} is not the test keyset's (SPKI ${spki.slice(0, 16)}, cert ${certDer.slice(0, 16)})`);
    t.step(`boot 1: provisioned CA sha256:${caDigest} into NV ${nvIndex} (PCRs ${pcrs}) after ${first.elapsed}`);
    const v1 = await expectVerifiedBoot(first, store, Timeouts.uefiBoot);
    assert.ok(v1.provisioned);
    t.step(`boot 1: verified ${v1.digest.slice(0, 19)}… (product ${v1.product}, ${v1.targets} targets), services ready after ${first.elapsed}`);

    // mosctl status: when it reports trust, it names the verified install (checked, not required).
    t.log(await checkTrustStatus(first, { state: 'verified', install: v1.digest, provisioned: true }));

    await first.powerOff(Timeouts.shutdown);
    t.step(`boot 1 powered off after ${first.elapsed}`);

    // Boot 2: same TPM state, same UKI.
    const second = await boot('boot2');
    const v2 = await expectVerifiedBoot(second, store, Timeouts.uefiBoot);
    assert.equal(v2.digest, v1.digest);
    assert.equal(v2.provisioned, false, 'boot 2 must not provision again');
    assert.doesNotMatch(second.console.content, Markers.trustProvisioned);
    t.step(`boot 2: verified again, not provisioned, services ready after ${second.elapsed}`);
    t.log(await checkTrustStatus(second, { state: 'verified', install: v2.digest, provisioned: false }));
    t.log(`boot 2 trust lines: ${trustLines(second).join(' | ')}`);
    await second.powerOff(Timeouts.shutdown);
    t.step(`boot 2 powered off after ${second.elapsed}`);
  },
});
