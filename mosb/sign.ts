/**
 * Signing install.json: node:crypto over the exact bytes, the way `openssl dgst -sha256 -sign`
 * does it (reference-mos.md §2.5): ECDSA P-256 with SHA-256 as a DER `Ecdsa-Sig-Value`, or
 * RSA PKCS#1 v1.5 with SHA-256. The result is the raw signature: no base64, no envelope.
 */
import { constants, type KeyObject, sign, verify, type X509Certificate } from 'node:crypto';
import { MosbError } from './errors.ts';
import { algorithmOf } from './keyset.ts';

export function signInstallJson(bytes: Buffer, key: KeyObject): Buffer {
  switch (algorithmOf(key)) {
    case 'ecdsa-p256':
      return sign('sha256', bytes, { key, dsaEncoding: 'der' });
    case 'rsa-2048':
      return sign('sha256', bytes, { key, padding: constants.RSA_PKCS1_PADDING });
  }
}

/** The check a verifier makes, run once after signing so a bad key never gets published. */
export function verifyInstallJson(bytes: Buffer, signature: Buffer, certificate: X509Certificate): boolean {
  const key = certificate.publicKey;
  if (key.asymmetricKeyType === 'ec') return verify('sha256', bytes, { key, dsaEncoding: 'der' }, signature);
  if (key.asymmetricKeyType === 'rsa') return verify('sha256', bytes, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
  throw new MosbError('E_KEYSET_INVALID', `unsupported certificate key ${key.asymmetricKeyType ?? 'unknown'}`);
}
