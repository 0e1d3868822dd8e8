/**
 * Console markers the cases wait for. The guest side (init/boot/, docs/boot.md) prints them;
 * keep these in step with it. OVMF and kernel messages are quoted as they appear.
 */
export const Markers = {
  /** PID 1 has started every service (or found none failing to start). */
  servicesReady: /mos: services ready/,
  /** PID 1 entered the emergency state; group 1 is the reason (the whole line: wait for its end). */
  emergency: /mos: emergency: ([^\n]*)\n/,
  /** PID 1 is about to call reboot(2); group 1 is the action. */
  reboot: /mos: reboot: (poweroff|reboot|halt)/,
  poweroff: /mos: reboot: poweroff/,
  kernelPanic: /Kernel panic/,
  /** The kernel, when firmware booted it with Secure Boot on. */
  secureBootEnabled: /Secure boot enabled/,
  /** The kernel reached its first line (any boot). */
  linuxBooting: /Linux version \d/,
  /** OVMF refusing an image whose signature is not in db. */
  accessDenied: /Access Denied/,
  /**
   * Trust (issue 4): first boot with an empty TPM wrote the manifest CA into the NV index.
   * Groups: the CA's short digest, the NV index, the PCR list.
   */
  trustProvisioned: /mos: trust: provisioned manifest CA sha256:([0-9a-f]{16}) into TPM NV (0x[0-9a-f]+) \(PCRs ([0-9,]+)\)/,
  /** Trust: the store's install layout verified. Groups: its digest, the product, the target count. */
  trustVerified: /mos: trust: verified install (sha256:[0-9a-f]+) \(product ([^,)]+), (\d+) targets?\)/,
  /** Trust refused: PID 1 in the emergency state. Groups: the error code, the message (whole line). */
  trustRefused: /mos: emergency: trust: (E_[A-Z0-9_]+): ([^\n]*)\n/,
  /** Any trust line (for logs). */
  trustAny: /mos: (?:emergency: )?trust: [^\n]*/g,
} as const;

/**
 * Kernel command-line flags every test boot adds to the image's own (direct boot only: a UKI's
 * command line is signed into it). `mos.debug_control=1` turns on the guest's control API on the
 * `mos.control` virtio-serial port.
 */
export const TEST_FLAGS: readonly string[] = ['mos.debug_control=1'];

/** Generous limits: benchmarks share the 2 cores, so TCG boots vary; waits end on markers. */
export const Timeouts = {
  /** Direct boot to "services ready" (~7-10 s alone). */
  directBoot: 120_000,
  /** OVMF + Secure Boot + a UKI holding Node (~40-46 s alone). */
  uefiBoot: 240_000,
  /** From a shutdown request to QEMU's exit. */
  shutdown: 60_000,
} as const;
