/**
 * The kernel command line (`/proc/cmdline`) and the `mos.*` keys PID 1 reads from it.
 *
 * The command line is part of the signed UKI (systemd-stub ignores an override under Secure
 * Boot), which is why it may carry trust decisions such as `mos.debug_control=1`.
 */
import { isIPv4 } from 'node:net';

/** `key=value` words (the first `=` splits), bare words map to `''`; the last occurrence wins. */
export function parseCmdline(text: string): Map<string, string> {
  const result = new Map<string, string>();
  for (const word of splitCmdline(text)) {
    const eq = word.indexOf('=');
    if (eq < 0) result.set(word, '');
    else result.set(word.slice(0, eq), word.slice(eq + 1));
  }
  return result;
}

/** Splits on whitespace; double quotes group (`a="b c"` is one word `a=b c`), as the kernel does. */
export function splitCmdline(text: string): string[] {
  const words: string[] = [];
  let current = '';
  let quoted = false;
  let inWord = false;
  for (const char of text) {
    if (char === '"') {
      quoted = !quoted;
      inWord = true;
      continue;
    }
    if (!quoted && /\s/.test(char)) {
      if (inWord) words.push(current);
      current = '';
      inWord = false;
      continue;
    }
    current += char;
    inWord = true;
  }
  if (inWord) words.push(current);
  return words;
}

export interface MosCmdline {
  /** `mos.config=PATH`: the service file, instead of /etc/mos/services.yaml. */
  config: string | null;
  /** `mos.debug_control=1`: the virtio-serial control port's peer is trusted as root. */
  debugControl: boolean;
  /** `mos.modules=a,b`: modules to load in addition to /etc/mos/modules. */
  modules: string[];
  /** `mos.test_crash=<point>`: only honoured by bundles built with MOS_TEST_HOOKS. */
  testCrash: string | null;
  /** `mos.shutdown_timeout=<ms>`: bound on stopping services at shutdown. */
  shutdownTimeoutMs: number | null;
  /**
   * `mos.store=<block device or directory>`: where the install layout is (its `oci/` directory).
   * Null: no manifest store, the trust phase verifies nothing.
   */
  store: string | null;
  /** `mos.manifest_tag=<tag>`: the install artifact's tag in the layout (default `latest`). */
  manifestTag: string;
  /**
   * `mos.product=<id>`: the product this machine is (install.json's `product`, the UUID in the
   * signing certificate's CN). Null: any product the manifest CA signed for is accepted.
   */
  product: string | null;
  /** `mos.tpm=<tcti>`: the TPM to read the trust root from (default `device:/dev/tpmrm0`). */
  tpm: string;
  /** `mos.trust_pcrs=7,11`: the PCRs the trust root's read policy is over (default 7,11). */
  trustPcrs: number[];
  /**
   * `mos.uplink=<interface>,<address/prefix>[,<gateway>]`: the machine's own network interface,
   * configured statically before the service networks (e.g. `eth0,10.0.2.15/24,10.0.2.2` under
   * QEMU's user networking). Null: mos leaves the machine's interfaces alone.
   */
  uplink: Uplink | null;
  /**
   * `mos.*` values that could not be read (key and why). The keys then keep their defaults; the
   * trust phase refuses to boot when one of its keys is here (a typo must not weaken the check).
   */
  invalid: { key: string; reason: string }[];
}

export interface Uplink {
  device: string;
  /** `10.0.2.15/24` */
  address: string;
  gateway: string | null;
}

/** `eth0,10.0.2.15/24,10.0.2.2` → the uplink, or what is wrong with it. */
export function parseUplink(text: string): Uplink | string {
  const [device, address, gateway, ...rest] = text.split(',');
  if (rest.length > 0 || device === undefined || address === undefined) return `expected <interface>,<address/prefix>[,<gateway>], not ${JSON.stringify(text)}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(device)) return `interface name ${JSON.stringify(device)} is not one (at most 15 letters, digits, _.-)`;
  const [ip, prefix, ...more] = address.split('/');
  if (more.length > 0 || ip === undefined || !isIPv4(ip) || prefix === undefined || !/^\d{1,2}$/.test(prefix) || Number(prefix) > 32) {
    return `address ${JSON.stringify(address)} is not an IPv4 address/prefix such as 10.0.2.15/24`;
  }
  if (gateway !== undefined && gateway !== '' && !isIPv4(gateway)) return `gateway ${JSON.stringify(gateway)} is not an IPv4 address`;
  return { device, address, gateway: gateway === undefined || gateway === '' ? null : gateway };
}

export const CMDLINE_DEFAULTS = {
  manifestTag: 'latest',
  tpm: 'device:/dev/tpmrm0',
  trustPcrs: [7, 11] as readonly number[],
} as const;

/**
 * `7,11` → [7, 11]: PCR numbers 0-23, comma-separated, ascending and without duplicates in the
 * result. A string saying what is wrong otherwise.
 */
export function parsePcrList(text: string): number[] | string {
  const words = text.split(',').map((word) => word.trim());
  if (words.length === 0 || words.some((word) => word === '')) return `expected PCR numbers separated by commas (e.g. 7,11), not ${JSON.stringify(text)}`;
  const pcrs: number[] = [];
  for (const word of words) {
    if (!/^\d{1,2}$/.test(word) || Number(word) > 23) return `PCR ${JSON.stringify(word)} is not a number 0-23`;
    pcrs.push(Number(word));
  }
  return [...new Set(pcrs)].sort((a, b) => a - b);
}

/** A TCTI as the TPM port takes it: `device:<absolute path>` or `swtpm:host=<h>,port=<p>`. */
const TCTI_PATTERN = /^(device:\/[^\s,]+|swtpm:host=[A-Za-z0-9.:-]+,port=\d{1,5})$/;

const TRUE_WORDS = new Set(['1', 'yes', 'true', 'on', '']);

export function readMosCmdline(cmdline: Map<string, string>): MosCmdline {
  const get = (key: string) => cmdline.get(key) ?? null;
  const debug = get('mos.debug_control');
  const timeout = get('mos.shutdown_timeout');
  const timeoutMs = timeout !== null && /^\d+$/.test(timeout) ? Number(timeout) : null;
  const invalid: MosCmdline['invalid'] = [];
  if (timeout !== null && timeoutMs === null) invalid.push({ key: 'mos.shutdown_timeout', reason: `expected milliseconds, not ${JSON.stringify(timeout)}` });

  const store = get('mos.store');
  // An empty value must not quietly switch verification off.
  if (store !== null && !store.startsWith('/')) invalid.push({ key: 'mos.store', reason: `expected an absolute path, not ${JSON.stringify(store)}` });
  const product = get('mos.product');
  if (product !== null && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(product)) {
    invalid.push({ key: 'mos.product', reason: `expected a product id, not ${JSON.stringify(product)}` });
  }
  const tag = get('mos.manifest_tag');
  if (tag === '') invalid.push({ key: 'mos.manifest_tag', reason: 'empty tag' });
  const tpm = get('mos.tpm');
  if (tpm !== null && !TCTI_PATTERN.test(tpm)) {
    invalid.push({ key: 'mos.tpm', reason: `expected device:<path> or swtpm:host=<host>,port=<port>, not ${JSON.stringify(tpm)}` });
  }
  const pcrsText = get('mos.trust_pcrs');
  const pcrs = pcrsText === null ? null : parsePcrList(pcrsText);
  if (typeof pcrs === 'string') invalid.push({ key: 'mos.trust_pcrs', reason: pcrs });
  const uplinkText = get('mos.uplink');
  const uplink = uplinkText === null ? null : parseUplink(uplinkText);
  if (typeof uplink === 'string') invalid.push({ key: 'mos.uplink', reason: uplink });

  return {
    config: get('mos.config') || null,
    debugControl: debug !== null && TRUE_WORDS.has(debug.toLowerCase()),
    modules: (get('mos.modules') ?? '')
      .split(',')
      .map((name) => name.trim())
      .filter((name) => name !== ''),
    testCrash: get('mos.test_crash') || null,
    shutdownTimeoutMs: timeoutMs,
    store: store !== null && store !== '' && store.startsWith('/') ? store : null,
    uplink: typeof uplink === 'string' ? null : uplink,
    manifestTag: tag || CMDLINE_DEFAULTS.manifestTag,
    product: product !== null && product !== '' ? product : null,
    tpm: tpm !== null && TCTI_PATTERN.test(tpm) ? tpm : CMDLINE_DEFAULTS.tpm,
    trustPcrs: Array.isArray(pcrs) ? pcrs : [...CMDLINE_DEFAULTS.trustPcrs],
    invalid,
  };
}
