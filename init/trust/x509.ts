/**
 * The parts of an X.509 certificate that node:crypto's X509Certificate does not give as data,
 * read from its DER: exact validity dates, the subject's attributes (the CN binds the product),
 * basicConstraints, keyUsage and extendedKeyUsage, and which extensions are critical.
 *
 * A minimal, strict DER walk (no third-party crypto): definite minimal lengths, low tag numbers,
 * no trailing bytes at any level it reads, a v3 certificate, each extension at most once.
 * Signature checking stays with node:crypto (`X509Certificate.verify`); this module only
 * describes. Anything it cannot read with certainty throws a `DerError`: the caller refuses the
 * certificate.
 */

export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DerError';
  }
}

export const OID = {
  commonName: '2.5.4.3',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extendedKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  subjectAltName: '2.5.29.17',
  codeSigning: '1.3.6.1.5.5.7.3.3',
} as const;

/** keyUsage bits (RFC 5280 §4.2.1.3), bit 0 first. */
export const KEY_USAGE_BITS = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;
export type KeyUsage = (typeof KEY_USAGE_BITS)[number];

/** Extensions whose meaning this module knows, so they may be critical. */
const UNDERSTOOD_EXTENSIONS: ReadonlySet<string> = new Set([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extendedKeyUsage,
  OID.subjectKeyIdentifier,
  OID.authorityKeyIdentifier,
  OID.subjectAltName,
]);

const ATTRIBUTE_NAMES: Readonly<Record<string, string>> = {
  '2.5.4.3': 'CN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
};

export interface NameAttribute {
  /** Dotted OID. */
  type: string;
  /** The string value; null when its ASN.1 string type is not one read here. */
  value: string | null;
}

export interface CertificateFacts {
  /** 3 for v3 (the only version accepted). */
  version: number;
  /** Lowercase hex of the serial number's content octets. */
  serialNumber: string;
  /** Dotted OID of the signature algorithm (inner and outer agree). */
  signatureAlgorithm: string;
  issuer: NameAttribute[];
  subject: NameAttribute[];
  /** `CN=…, O=…` for messages. */
  subjectText: string;
  issuerText: string;
  notBefore: Date;
  notAfter: Date;
  /** null when the extension is absent. */
  basicConstraints: { ca: boolean; pathLength: number | null } | null;
  keyUsage: KeyUsage[] | null;
  extendedKeyUsage: string[] | null;
  /** Dotted OIDs of every extension present. */
  extensions: string[];
  /** Critical extensions this module does not understand (a verifier must then refuse). */
  unknownCriticalExtensions: string[];
}

const TAG = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  oid: 0x06,
  utf8String: 0x0c,
  printableString: 0x13,
  ia5String: 0x16,
  utcTime: 0x17,
  generalizedTime: 0x18,
  sequence: 0x30,
  set: 0x31,
  version: 0xa0,
  issuerUniqueId: 0x81,
  subjectUniqueId: 0x82,
  extensions: 0xa3,
} as const;

interface Tlv {
  tag: number;
  value: Buffer;
  /** The whole encoding, header included. */
  raw: Buffer;
  end: number;
}

function readTlv(buf: Buffer, offset: number): Tlv {
  if (offset + 2 > buf.length) throw new DerError('truncated DER');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError('high-tag-number form is not used in certificates');
  let length = buf[offset + 1]!;
  let pos = offset + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0) throw new DerError('indefinite length is not DER');
    if (count > 4) throw new DerError('length too large');
    if (pos + count > buf.length) throw new DerError('truncated DER length');
    if (buf[pos] === 0) throw new DerError('non-minimal DER length');
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[pos + i]!;
    pos += count;
    if (length < 0x80) throw new DerError('non-minimal DER length');
  }
  if (pos + length > buf.length) throw new DerError('truncated DER value');
  return { tag, value: buf.subarray(pos, pos + length), raw: buf.subarray(offset, pos + length), end: pos + length };
}

function children(value: Buffer): Tlv[] {
  const out: Tlv[] = [];
  let offset = 0;
  while (offset < value.length) {
    const tlv = readTlv(value, offset);
    out.push(tlv);
    offset = tlv.end;
  }
  return out;
}

function expectTag(tlv: Tlv | undefined, tag: number, what: string): Tlv {
  if (!tlv) throw new DerError(`${what} is missing`);
  if (tlv.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, found 0x${tlv.tag.toString(16)}`);
  return tlv;
}

function decodeOid(value: Buffer): string {
  if (value.length === 0 || (value[value.length - 1]! & 0x80) !== 0) throw new DerError('malformed OID');
  const arcs: number[] = [];
  let current = 0;
  let started = false;
  for (const byte of value) {
    if (!started && byte === 0x80) throw new DerError('non-minimal OID arc');
    started = true;
    current = current * 128 + (byte & 0x7f);
    if (current > Number.MAX_SAFE_INTEGER / 128) throw new DerError('OID arc too large');
    if ((byte & 0x80) === 0) {
      arcs.push(current);
      current = 0;
      started = false;
    }
  }
  const first = arcs[0]!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...arcs.slice(1)].join('.');
}

function decodeBoolean(tlv: Tlv): boolean {
  if (tlv.value.length !== 1 || (tlv.value[0] !== 0 && tlv.value[0] !== 0xff)) throw new DerError('malformed BOOLEAN');
  return tlv.value[0] === 0xff;
}

function decodeSmallInteger(tlv: Tlv, what: string): number {
  const v = tlv.value;
  if (v.length === 0 || v.length > 4) throw new DerError(`${what}: unsupported INTEGER`);
  if (v.length > 1 && ((v[0] === 0 && (v[1]! & 0x80) === 0) || (v[0] === 0xff && (v[1]! & 0x80) !== 0))) {
    throw new DerError(`${what}: non-minimal INTEGER`);
  }
  if (v[0]! & 0x80) throw new DerError(`${what}: negative INTEGER`);
  return v.readUIntBE(0, v.length);
}

function decodeString(tlv: Tlv): string | null {
  switch (tlv.tag) {
    case TAG.utf8String:
      try {
        return new TextDecoder('utf-8', { fatal: true }).decode(tlv.value);
      } catch {
        throw new DerError('malformed UTF8String');
      }
    case TAG.printableString:
    case TAG.ia5String:
      for (const byte of tlv.value) if (byte > 0x7e || byte < 0x20) throw new DerError('malformed string');
      return tlv.value.toString('latin1');
    default:
      return null;
  }
}

function decodeTime(tlv: Tlv, what: string): Date {
  const text = tlv.value.toString('latin1');
  let match: RegExpExecArray | null;
  let year: number;
  if (tlv.tag === TAG.utcTime) {
    match = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!match) throw new DerError(`${what}: malformed UTCTime`);
    const yy = Number(match[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (tlv.tag === TAG.generalizedTime) {
    match = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!match) throw new DerError(`${what}: malformed GeneralizedTime`);
    year = Number(match[1]);
  } else {
    throw new DerError(`${what}: expected a time`);
  }
  const [month, day, hour, minute, second] = match.slice(2).map(Number) as [number, number, number, number, number];
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  const date = new Date(ms);
  // Round-trip: refuses 31 February, 25:00 and the like.
  if (
    Number.isNaN(ms) ||
    date.getUTCFullYear() !== year ||
    date.getUTCMonth() !== month - 1 ||
    date.getUTCDate() !== day ||
    date.getUTCHours() !== hour ||
    date.getUTCMinutes() !== minute ||
    date.getUTCSeconds() !== second
  ) {
    throw new DerError(`${what}: invalid date`);
  }
  return date;
}

function decodeName(tlv: Tlv, what: string): NameAttribute[] {
  expectTag(tlv, TAG.sequence, what);
  const attributes: NameAttribute[] = [];
  for (const rdn of children(tlv.value)) {
    expectTag(rdn, TAG.set, `${what} RDN`);
    const members = children(rdn.value);
    if (members.length === 0) throw new DerError(`${what}: empty RDN`);
    for (const member of members) {
      expectTag(member, TAG.sequence, `${what} attribute`);
      const [type, value, ...rest] = children(member.value);
      if (rest.length > 0 || !value) throw new DerError(`${what}: malformed attribute`);
      attributes.push({ type: decodeOid(expectTag(type, TAG.oid, `${what} attribute type`).value), value: decodeString(value) });
    }
  }
  return attributes;
}

function nameText(attributes: NameAttribute[]): string {
  return attributes.map((a) => `${ATTRIBUTE_NAMES[a.type] ?? a.type}=${a.value ?? '?'}`).join(', ');
}

function decodeBasicConstraints(value: Buffer): { ca: boolean; pathLength: number | null } {
  const seq = readTlv(value, 0);
  if (seq.end !== value.length) throw new DerError('basicConstraints: trailing bytes');
  const items = children(expectTag(seq, TAG.sequence, 'basicConstraints').value);
  let ca = false;
  let pathLength: number | null = null;
  let index = 0;
  if (items[index]?.tag === TAG.boolean) ca = decodeBoolean(items[index++]!);
  if (items[index]?.tag === TAG.integer) pathLength = decodeSmallInteger(items[index++]!, 'pathLenConstraint');
  if (index !== items.length) throw new DerError('basicConstraints: unexpected content');
  return { ca, pathLength };
}

function decodeKeyUsage(value: Buffer): KeyUsage[] {
  const bits = readTlv(value, 0);
  if (bits.end !== value.length) throw new DerError('keyUsage: trailing bytes');
  const content = expectTag(bits, TAG.bitString, 'keyUsage').value;
  if (content.length < 1 || content[0]! > 7 || (content.length === 1 && content[0] !== 0)) throw new DerError('keyUsage: malformed BIT STRING');
  const usages: KeyUsage[] = [];
  KEY_USAGE_BITS.forEach((name, bit) => {
    const byte = content[1 + (bit >> 3)];
    if (byte !== undefined && (byte & (0x80 >> (bit & 7))) !== 0) usages.push(name);
  });
  return usages;
}

function decodeExtendedKeyUsage(value: Buffer): string[] {
  const seq = readTlv(value, 0);
  if (seq.end !== value.length) throw new DerError('extendedKeyUsage: trailing bytes');
  const oids = children(expectTag(seq, TAG.sequence, 'extendedKeyUsage').value).map((item) =>
    decodeOid(expectTag(item, TAG.oid, 'extendedKeyUsage purpose').value),
  );
  if (oids.length === 0) throw new DerError('extendedKeyUsage: empty');
  return oids;
}

/** Reads a DER certificate. Throws DerError when it is not one this module can read exactly. */
export function parseCertificateDer(der: Buffer): CertificateFacts {
  const top = expectTag(readTlv(der, 0), TAG.sequence, 'Certificate');
  if (top.end !== der.length) throw new DerError('trailing bytes after the certificate');
  const [tbsTlv, outerAlg, signature, ...extra] = children(top.value);
  if (extra.length > 0) throw new DerError('Certificate has extra fields');
  const tbs = children(expectTag(tbsTlv, TAG.sequence, 'TBSCertificate').value);
  expectTag(outerAlg, TAG.sequence, 'signatureAlgorithm');
  expectTag(signature, TAG.bitString, 'signatureValue');

  let index = 0;
  const versionTlv = expectTag(tbs[index++], TAG.version, 'version (only v3 certificates are accepted)');
  const [versionInt, ...versionExtra] = children(versionTlv.value);
  if (versionExtra.length > 0) throw new DerError('version: extra fields');
  const version = decodeSmallInteger(expectTag(versionInt, TAG.integer, 'version'), 'version') + 1;
  if (version !== 3) throw new DerError(`version ${version}: only v3 certificates are accepted`);

  const serial = expectTag(tbs[index++], TAG.integer, 'serialNumber');
  if (serial.value.length === 0) throw new DerError('serialNumber: empty');
  const innerAlg = expectTag(tbs[index++], TAG.sequence, 'signature');
  if (!innerAlg.raw.equals(outerAlg!.raw)) throw new DerError('the inner and outer signature algorithms differ');
  const algOid = decodeOid(expectTag(children(innerAlg.value)[0], TAG.oid, 'signature algorithm').value);

  const issuer = decodeName(tbs[index++]!, 'issuer');
  const validity = children(expectTag(tbs[index++], TAG.sequence, 'validity').value);
  if (validity.length !== 2) throw new DerError('validity: expected notBefore and notAfter');
  const notBefore = decodeTime(validity[0]!, 'notBefore');
  const notAfter = decodeTime(validity[1]!, 'notAfter');
  const subject = decodeName(tbs[index++]!, 'subject');
  expectTag(tbs[index++], TAG.sequence, 'subjectPublicKeyInfo');
  if (tbs[index]?.tag === TAG.issuerUniqueId) index++;
  if (tbs[index]?.tag === TAG.subjectUniqueId) index++;

  let basicConstraints: CertificateFacts['basicConstraints'] = null;
  let keyUsage: KeyUsage[] | null = null;
  let extendedKeyUsage: string[] | null = null;
  const extensions: string[] = [];
  const unknownCriticalExtensions: string[] = [];
  if (tbs[index]?.tag === TAG.extensions) {
    const [extSeq, ...extExtra] = children(tbs[index++]!.value);
    if (extExtra.length > 0) throw new DerError('extensions: extra fields');
    const list = children(expectTag(extSeq, TAG.sequence, 'extensions').value);
    if (list.length === 0) throw new DerError('extensions: empty');
    for (const ext of list) {
      const parts = children(expectTag(ext, TAG.sequence, 'extension').value);
      const oid = decodeOid(expectTag(parts[0], TAG.oid, 'extension id').value);
      let critical = false;
      let at = 1;
      if (parts[at]?.tag === TAG.boolean) critical = decodeBoolean(parts[at++]!);
      const value = expectTag(parts[at++], TAG.octetString, `extension ${oid} value`).value;
      if (at !== parts.length) throw new DerError(`extension ${oid}: extra fields`);
      if (extensions.includes(oid)) throw new DerError(`extension ${oid} appears twice`);
      extensions.push(oid);
      if (critical && !UNDERSTOOD_EXTENSIONS.has(oid)) unknownCriticalExtensions.push(oid);
      if (oid === OID.basicConstraints) basicConstraints = decodeBasicConstraints(value);
      else if (oid === OID.keyUsage) keyUsage = decodeKeyUsage(value);
      else if (oid === OID.extendedKeyUsage) extendedKeyUsage = decodeExtendedKeyUsage(value);
    }
  }
  if (index !== tbs.length) throw new DerError('TBSCertificate has unexpected fields');

  return {
    version,
    serialNumber: serial.value.toString('hex'),
    signatureAlgorithm: algOid,
    issuer,
    subject,
    subjectText: nameText(subject),
    issuerText: nameText(issuer),
    notBefore,
    notAfter,
    basicConstraints,
    keyUsage,
    extendedKeyUsage,
    extensions,
    unknownCriticalExtensions,
  };
}

const PEM_CERTIFICATE = /^-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n-----END CERTIFICATE-----\r?\n?$/;

/**
 * The DER inside a PEM file holding exactly one CERTIFICATE block and nothing else (no other
 * blocks, no text around it, strict base64). Throws DerError otherwise.
 */
export function decodeCertificatePem(pem: Buffer): Buffer {
  for (const byte of pem) if (byte > 0x7e || (byte < 0x20 && byte !== 0x0a && byte !== 0x0d)) throw new DerError('PEM holds non-ASCII bytes');
  const match = PEM_CERTIFICATE.exec(pem.toString('latin1'));
  if (!match) throw new DerError('expected exactly one PEM CERTIFICATE block');
  const base64 = match[1]!.replace(/\r?\n/g, '');
  const der = Buffer.from(base64, 'base64');
  if (der.length === 0 || der.toString('base64') !== base64) throw new DerError('PEM CERTIFICATE block is not strict base64');
  return der;
}
