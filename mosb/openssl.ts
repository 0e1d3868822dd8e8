/**
 * The `openssl` CLI, the only thing that makes keys and certificates here (no home-made
 * crypto). Key material goes through stdout into files mosb creates 0600; nothing openssl prints
 * on stderr contains it, and stdout is never put into a message.
 */
import { spawn } from 'node:child_process';
import { MosbError } from './errors.ts';

export type KeyAlgorithm = 'ecdsa-p256' | 'rsa-2048';
export const KEY_ALGORITHMS: readonly KeyAlgorithm[] = ['ecdsa-p256', 'rsa-2048'];

/** `openssl genpkey` arguments for a PKCS#8 PEM private key on stdout. */
export function genpkeyArgs(algorithm: KeyAlgorithm): string[] {
  switch (algorithm) {
    case 'ecdsa-p256':
      return ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:named_curve'];
    case 'rsa-2048':
      return ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'];
  }
}

/** The config `openssl req -x509` makes the manifest CA with (and nothing from /etc/ssl). */
export function caConfig(commonName: string): string {
  return [
    '[req]',
    'prompt = no',
    'distinguished_name = dn',
    'x509_extensions = v3_ca',
    '[dn]',
    `CN = ${commonName}`,
    '[v3_ca]',
    // No intermediates: the boot side pins this CA and accepts leaf certificates it issued.
    'basicConstraints = critical, CA:TRUE, pathlen:0',
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
    '',
  ].join('\n');
}

/** The config for a product's certificate request (subject only). */
export function requestConfig(commonName: string): string {
  return ['[req]', 'prompt = no', 'distinguished_name = dn', '[dn]', `CN = ${commonName}`, ''].join('\n');
}

/**
 * The config `openssl ca` signs a product certificate with. `openssl ca` rather than
 * `openssl x509 -req` because it takes explicit start and end dates (OpenSSL 3.0's x509 only
 * takes `-days` from now), which tests need for expired and not-yet-valid certificates.
 */
export function productCaConfig(workDir: string): string {
  return [
    '[ca]',
    'default_ca = mosb',
    '[mosb]',
    `database = ${workDir}/index.txt`,
    `new_certs_dir = ${workDir}`,
    // Looked up even though -rand_serial makes the serial number (never read then).
    `serial = ${workDir}/serial`,
    'policy = policy_cn',
    'unique_subject = no',
    'copy_extensions = none',
    'email_in_dn = no',
    'default_md = sha256',
    '[policy_cn]',
    'commonName = supplied',
    '[v3_product]',
    'basicConstraints = critical, CA:FALSE',
    'keyUsage = critical, digitalSignature',
    'extendedKeyUsage = codeSigning',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid:always',
    '',
  ].join('\n');
}

/** An ASN.1 time as `openssl ca -startdate/-enddate` take it: UTCTime before 2050, else GeneralizedTime (RFC 5280). */
export function asn1Time(date: Date): string {
  const iso = date.toISOString();
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return date.getUTCFullYear() < 2050 ? digits.slice(2) : digits;
}

/** Node processes' variables openssl must not see (a CA bundle path, a foreign openssl.cnf). */
function opensslEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.OPENSSL_CONF;
  return env;
}

/** Runs openssl; resolves with its stdout. On failure the error carries stderr, never stdout. */
export function runOpenssl(args: string[], options: { cwd?: string } = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', args, { cwd: options.cwd, env: opensslEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.once('error', (error: NodeJS.ErrnoException) => {
      const hint = error.code === 'ENOENT' ? ' (install the openssl package)' : '';
      reject(new MosbError('E_OPENSSL', `cannot run openssl: ${error.message}${hint}`, { cause: error }));
    });
    child.once('close', (code, signal) => {
      if (code === 0) return resolve(Buffer.concat(out));
      const stderr = Buffer.concat(err).toString('utf8').trim().split('\n').slice(-5).join('\n');
      reject(new MosbError('E_OPENSSL', `openssl ${args[0]} failed (${signal ?? `exit ${code}`}): ${stderr}`));
    });
  });
}
