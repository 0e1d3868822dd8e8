/**
 * The kernel command line (`/proc/cmdline`) and the `mos.*` keys PID 1 reads from it.
 *
 * The command line is part of the signed UKI (systemd-stub ignores an override under Secure
 * Boot), which is why it may carry trust decisions such as `mos.debug_control=1`.
 */

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
}

const TRUE_WORDS = new Set(['1', 'yes', 'true', 'on', '']);

export function readMosCmdline(cmdline: Map<string, string>): MosCmdline {
  const get = (key: string) => cmdline.get(key) ?? null;
  const debug = get('mos.debug_control');
  const timeout = get('mos.shutdown_timeout');
  const timeoutMs = timeout !== null && /^\d+$/.test(timeout) ? Number(timeout) : null;
  return {
    config: get('mos.config') || null,
    debugControl: debug !== null && TRUE_WORDS.has(debug.toLowerCase()),
    modules: (get('mos.modules') ?? '')
      .split(',')
      .map((name) => name.trim())
      .filter((name) => name !== ''),
    testCrash: get('mos.test_crash') || null,
    shutdownTimeoutMs: timeoutMs,
  };
}
