/**
 * Keysets on the build host: a manifest CA and one signing certificate per product.
 *
 * ```
 * <keys-dir>/<NAME>/manifest-ca/{cert.pem,privkey.pem}
 * <keys-dir>/<NAME>/manifest/<PRODUCT>/{cert.pem,privkey.pem,uuid}
 * ```
 *
 * project-machine's layout (reference-mos.md §1.5) for these two directories, with its subject
 * names (`manifest PRODUCT:<uuid>`) and lifetimes (CA 25 years, product 20), but ECDSA P-256 by
 * default; RSA-2048, project-machine's only algorithm, is accepted. The CA is `pathlen:0` and the
 * product certificate is a code-signing leaf (digitalSignature, extendedKeyUsage codeSigning).
 *
 * A keyset or product is built in a hidden directory beside its place and renamed in when
 * complete, so a failure leaves nothing half-made and an existing one is never overwritten.
 * Directories are 0700; private keys are PKCS#8 PEM created 0600 (the mode is given when the
 * file is created, never changed afterwards) and never printed.
 */
import { createPrivateKey, type KeyObject, randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { productCommonName } from '../init/trust/formats.ts';
import { MosbError } from './errors.ts';
import { checkSafeName } from './names.ts';
import { asn1Time, caConfig, genpkeyArgs, type KeyAlgorithm, productCaConfig, requestConfig, runOpenssl } from './openssl.ts';

/** 25 years, as project-machine's manifest CA. */
export const CA_DAYS = 9131;
/** 20 years, as project-machine's product certificates. */
export const PRODUCT_DAYS = 7305;
export const MAX_DAYS = 36525;
/** A new product certificate is valid from an hour back (but not before its CA), for clocks that differ a little. */
export const BACKDATE_MS = 60 * 60 * 1000;

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export const caCommonName = (keyset: string) => `mos manifest CA ${keyset}`;

export interface KeysetPaths {
  dir: string;
  caDir: string;
  caCert: string;
  caKey: string;
  productsDir: string;
}

export function keysetPaths(keysDir: string, keyset: string): KeysetPaths {
  const dir = path.join(keysDir, checkSafeName('keyset', keyset));
  const caDir = path.join(dir, 'manifest-ca');
  return { dir, caDir, caCert: path.join(caDir, 'cert.pem'), caKey: path.join(caDir, 'privkey.pem'), productsDir: path.join(dir, 'manifest') };
}

export interface ProductPaths {
  dir: string;
  cert: string;
  key: string;
  uuid: string;
}

export function productPaths(keysDir: string, keyset: string, product: string): ProductPaths {
  const dir = path.join(keysetPaths(keysDir, keyset).productsDir, checkSafeName('product', product));
  return { dir, cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'privkey.pem'), uuid: path.join(dir, 'uuid') };
}

/** A product certificate's validity: `days` from (about) now, or explicit dates. */
export interface Validity {
  days?: number;
  notBefore?: Date;
  notAfter?: Date;
}

export interface CreatedProduct {
  name: string;
  uuid: string;
  paths: ProductPaths;
}

export interface CreatedKeyset {
  name: string;
  algorithm: KeyAlgorithm;
  paths: KeysetPaths;
  products: CreatedProduct[];
}

export async function createKeyset(options: {
  keysDir: string;
  name: string;
  algorithm?: KeyAlgorithm;
  products?: readonly string[];
  validity?: Validity;
  now?: Date;
}): Promise<CreatedKeyset> {
  const algorithm = options.algorithm ?? 'ecdsa-p256';
  const paths = keysetPaths(options.keysDir, options.name);
  const products = options.products ?? [];
  products.forEach((product) => checkSafeName('product', product));
  const duplicate = products.find((product, i) => products.indexOf(product) !== i);
  if (duplicate !== undefined) throw new MosbError('E_ARGUMENT', `product ${duplicate} is named twice`);
  checkValidity(options.validity);

  if (await exists(paths.dir)) throw new MosbError('E_KEYSET_EXISTS', `keyset ${options.name} already exists at ${paths.dir}; refusing to overwrite it`);
  await mkdir(options.keysDir, { recursive: true, mode: 0o700 });
  const staging = path.join(options.keysDir, `.${options.name}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const work = await mkdtemp(path.join(os.tmpdir(), 'mosb-'));
  try {
    await mkdir(staging, { mode: 0o700 });
    const stagedCa = { cert: path.join(staging, 'manifest-ca', 'cert.pem'), key: path.join(staging, 'manifest-ca', 'privkey.pem') };
    await mkdir(path.join(staging, 'manifest-ca'), { mode: 0o700 });
    await writePrivateKey(stagedCa.key, algorithm);
    const config = path.join(work, 'ca.cnf');
    await writeFile(config, caConfig(caCommonName(options.name)));
    const caCert = await runOpenssl([
      'req', '-x509', '-new', '-key', stagedCa.key, '-config', config, '-sha256',
      '-days', String(CA_DAYS), '-set_serial', serialNumber(),
    ]);
    await writeFileExclusive(stagedCa.cert, caCert, 0o644);
    await mkdir(path.join(staging, 'manifest'), { mode: 0o700 });
    const created: CreatedProduct[] = [];
    for (const product of products) {
      const uuid = await makeProduct({
        dir: path.join(staging, 'manifest', product),
        caCert: stagedCa.cert,
        caKey: stagedCa.key,
        algorithm,
        validity: options.validity,
        now: options.now ?? new Date(),
        work,
      });
      created.push({ name: product, uuid, paths: productPaths(options.keysDir, options.name, product) });
    }
    await renameInto(staging, paths.dir, () => new MosbError('E_KEYSET_EXISTS', `keyset ${options.name} already exists at ${paths.dir}; refusing to overwrite it`));
    return { name: options.name, algorithm, paths, products: created };
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
}

/** Adds a product to an existing keyset; the algorithm defaults to the CA's. */
export async function addProduct(options: {
  keysDir: string;
  keyset: string;
  product: string;
  algorithm?: KeyAlgorithm;
  validity?: Validity;
  now?: Date;
}): Promise<CreatedProduct> {
  const keyset = keysetPaths(options.keysDir, options.keyset);
  const paths = productPaths(options.keysDir, options.keyset, options.product);
  checkValidity(options.validity);
  if (!(await exists(keyset.caCert)) || !(await exists(keyset.caKey))) {
    throw new MosbError('E_KEYSET_NOT_FOUND', `no keyset ${options.keyset} in ${options.keysDir} (create it with mosb keyset create ${options.keyset})`);
  }
  if (await exists(paths.dir)) throw new MosbError('E_PRODUCT_EXISTS', `product ${options.product} already exists in keyset ${options.keyset} (${paths.dir}); refusing to overwrite it`);
  const algorithm = options.algorithm ?? algorithmOf(new X509Certificate(await readFile(keyset.caCert)).publicKey);
  await mkdir(keyset.productsDir, { recursive: true, mode: 0o700 });
  const staging = path.join(keyset.productsDir, `.${options.product}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const work = await mkdtemp(path.join(os.tmpdir(), 'mosb-'));
  try {
    const uuid = await makeProduct({ dir: staging, caCert: keyset.caCert, caKey: keyset.caKey, algorithm, validity: options.validity, now: options.now ?? new Date(), work });
    await renameInto(staging, paths.dir, () => new MosbError('E_PRODUCT_EXISTS', `product ${options.product} already exists in keyset ${options.keyset}; refusing to overwrite it`));
    return { name: options.product, uuid, paths };
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
}

/** Makes `dir` (which must not exist) with a product's uuid, key and certificate; returns the uuid. */
async function makeProduct(options: {
  dir: string;
  caCert: string;
  caKey: string;
  algorithm: KeyAlgorithm;
  validity: Validity | undefined;
  now: Date;
  work: string;
}): Promise<string> {
  const { dir, work } = options;
  const uuid = randomUUID();
  await mkdir(dir, { mode: 0o700 });
  // No newline: project-machine's readers take the file's bytes as the uuid.
  await writeFileExclusive(path.join(dir, 'uuid'), Buffer.from(uuid), 0o644);
  const key = path.join(dir, 'privkey.pem');
  await writePrivateKey(key, options.algorithm);

  const requestCnf = path.join(work, `${uuid}.req.cnf`);
  await writeFile(requestCnf, requestConfig(productCommonName(uuid)));
  const request = path.join(work, `${uuid}.csr`);
  await writeFile(request, await runOpenssl(['req', '-new', '-key', key, '-config', requestCnf, '-sha256']));

  const caDir = path.join(work, `${uuid}.ca`);
  await mkdir(caDir);
  await writeFile(path.join(caDir, 'index.txt'), '');
  const caCnf = path.join(caDir, 'ca.cnf');
  await writeFile(caCnf, productCaConfig(caDir));
  const ca = new X509Certificate(await readFile(options.caCert));
  const { notBefore, notAfter } = validityDates(options.validity, options.now, { notBefore: new Date(ca.validFrom), notAfter: new Date(ca.validTo) });
  const certFile = path.join(caDir, 'cert.pem');
  await runOpenssl([
    'ca', '-batch', '-config', caCnf, '-in', request, '-out', certFile, '-notext', '-md', 'sha256',
    '-extensions', 'v3_product', '-cert', options.caCert, '-keyfile', options.caKey, '-rand_serial',
    '-startdate', asn1Time(notBefore), '-enddate', asn1Time(notAfter),
  ]);
  await writeFileExclusive(path.join(dir, 'cert.pem'), await readFile(certFile), 0o644);
  return uuid;
}

/**
 * A product certificate's dates. Explicit dates are taken as given (tests make expired and
 * not-yet-valid certificates with them); otherwise the certificate starts an hour back and lasts
 * `days`, both clamped to the CA's own validity so the chain is valid over the whole period.
 */
export function validityDates(validity: Validity | undefined, now: Date, ca: { notBefore: Date; notAfter: Date }): { notBefore: Date; notAfter: Date } {
  const latest = (a: Date, b: Date) => (a > b ? a : b);
  const earliest = (a: Date, b: Date) => (a < b ? a : b);
  const notBefore = validity?.notBefore ?? latest(new Date(now.getTime() - BACKDATE_MS), ca.notBefore);
  const notAfter = validity?.notAfter ?? earliest(new Date(now.getTime() + (validity?.days ?? PRODUCT_DAYS) * 86_400_000), ca.notAfter);
  if (notBefore >= notAfter) throw new MosbError('E_ARGUMENT', `the certificate would end (${notAfter.toISOString()}) before it starts (${notBefore.toISOString()})`);
  return { notBefore, notAfter };
}

function checkValidity(validity: Validity | undefined): void {
  if (validity?.days !== undefined && (!Number.isSafeInteger(validity.days) || validity.days < 1 || validity.days > MAX_DAYS)) {
    throw new MosbError('E_ARGUMENT', `--days must be an integer 1..${MAX_DAYS}`);
  }
  if (validity?.notBefore && validity.notAfter && validity.notBefore >= validity.notAfter) {
    throw new MosbError('E_ARGUMENT', 'a certificate must start before it ends');
  }
}

/** A private key from `openssl genpkey` (stdout) into a file created 0600 that did not exist. */
async function writePrivateKey(file: string, algorithm: KeyAlgorithm): Promise<void> {
  const pem = await runOpenssl(genpkeyArgs(algorithm));
  try {
    await writeFileExclusive(file, pem, 0o600);
  } finally {
    pem.fill(0);
  }
}

async function writeFileExclusive(file: string, bytes: Buffer, mode: number): Promise<void> {
  const handle = await open(file, 'wx', mode);
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function renameInto(staging: string, target: string, exists: () => MosbError): Promise<void> {
  try {
    await rename(staging, target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') throw exists();
    throw error;
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/** A positive 128-bit serial number (RFC 5280 allows up to 20 octets). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return `0x${bytes.toString('hex')}`;
}

export function algorithmOf(key: KeyObject): KeyAlgorithm {
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  if (key.asymmetricKeyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048) return 'rsa-2048';
  throw new MosbError('E_KEYSET_INVALID', `unsupported key: ${key.asymmetricKeyType ?? 'unknown'} (mosb signs with ECDSA P-256 or RSA ≥ 2048)`);
}

/** What `manifest publish` signs with, after checking the keyset's files agree with each other. */
export interface SigningIdentity {
  keyset: string;
  product: string;
  uuid: string;
  algorithm: KeyAlgorithm;
  key: KeyObject;
  /** cert.pem's bytes, as published in the certificate artifact. */
  certificatePem: Buffer;
  certificate: X509Certificate;
  caCertificatePath: string;
}

/**
 * Loads a product's signing identity and checks it before anything is signed: the uuid's form,
 * the certificate's CN (`manifest PRODUCT:<uuid>`), that it was issued by this keyset's CA, that
 * it is valid at `now`, that the key is the certificate's, and that the key file is private.
 */
export async function loadSigningIdentity(keysDir: string, keyset: string, product: string, now = new Date()): Promise<SigningIdentity> {
  const setPaths = keysetPaths(keysDir, keyset);
  const paths = productPaths(keysDir, keyset, product);
  if (!(await exists(setPaths.caCert))) throw new MosbError('E_KEYSET_NOT_FOUND', `no keyset ${keyset} in ${keysDir}`);
  if (!(await exists(paths.dir))) throw new MosbError('E_PRODUCT_NOT_FOUND', `keyset ${keyset} has no product ${product} (add it with mosb keyset add-product ${keyset} ${product})`);
  const read = async (file: string) => {
    try {
      return await readFile(file);
    } catch (error) {
      throw new MosbError('E_KEYSET_INVALID', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
    }
  };
  const uuid = (await read(paths.uuid)).toString('utf8').trim();
  if (!UUID_PATTERN.test(uuid)) throw new MosbError('E_KEYSET_INVALID', `${paths.uuid} does not hold a lowercase uuid`);

  const mode = (await stat(paths.key)).mode & 0o777;
  if ((mode & 0o077) !== 0) throw new MosbError('E_KEYSET_INVALID', `${paths.key} is readable by others (mode ${mode.toString(8).padStart(4, '0')}); it must be 0600`);

  const certificatePem = await read(paths.cert);
  let certificate: X509Certificate;
  let ca: X509Certificate;
  let key: KeyObject;
  try {
    certificate = new X509Certificate(certificatePem);
    ca = new X509Certificate(await read(setPaths.caCert));
  } catch (error) {
    throw new MosbError('E_KEYSET_INVALID', `keyset ${keyset}: a certificate does not parse (${error instanceof Error ? error.message : String(error)})`, { cause: error });
  }
  try {
    key = createPrivateKey(await read(paths.key));
  } catch (error) {
    // The parser's message, never the file's contents.
    throw new MosbError('E_KEYSET_INVALID', `${paths.key}: not a PEM private key (${error instanceof Error ? error.message : String(error)})`);
  }
  const expectedSubject = `CN=${productCommonName(uuid)}`;
  if (certificate.subject !== expectedSubject) throw new MosbError('E_KEYSET_INVALID', `${paths.cert}: subject is ${JSON.stringify(certificate.subject)}, expected ${JSON.stringify(expectedSubject)}`);
  if (!certificate.checkIssued(ca) || !certificate.verify(ca.publicKey)) throw new MosbError('E_KEYSET_INVALID', `${paths.cert} was not issued by keyset ${keyset}'s manifest CA`);
  if (!certificate.checkPrivateKey(key)) throw new MosbError('E_KEYSET_INVALID', `${paths.key} is not the key of ${paths.cert}`);
  const from = new Date(certificate.validFrom);
  const to = new Date(certificate.validTo);
  if (now < from || now > to) throw new MosbError('E_KEYSET_INVALID', `${paths.cert} is valid from ${from.toISOString()} to ${to.toISOString()}, not now`);
  return {
    keyset,
    product,
    uuid,
    algorithm: algorithmOf(key),
    key,
    certificatePem,
    certificate,
    caCertificatePath: setPaths.caCert,
  };
}
