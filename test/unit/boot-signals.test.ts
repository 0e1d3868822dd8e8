import { describe, expect, it } from 'vitest';
import { REBOOT_COMMAND, SHUTDOWN_SIGNALS, actionForSignal, watchShutdownSignals } from '../../init/boot/signals.ts';
import { parseCmdline, readMosCmdline, splitCmdline } from '../../init/boot/cmdline.ts';
import { FakeNative } from '../../native/fake.ts';

describe('the signal map', () => {
  it.each([
    ['SIGINT', 'reboot', 'ctrl-alt-del'],
    ['SIGRTMIN+3', 'halt', 'systemd'],
    ['SIGRTMIN+4', 'poweroff', 'systemd'],
    ['SIGRTMIN+5', 'reboot', 'systemd'],
    ['SIGUSR1', 'halt', 'busybox'],
    ['SIGUSR2', 'poweroff', 'busybox'],
    ['SIGTERM', 'reboot', 'busybox'],
  ])('%s → %s (%s)', (signal, action, convention) => {
    expect(actionForSignal(signal)).toEqual({ signal, action, convention });
  });

  it('ignores everything else', () => {
    expect(actionForSignal('SIGHUP')).toBeNull();
    expect(actionForSignal('SIGCHLD')).toBeNull();
  });

  it('maps actions to reboot(2) commands', () => {
    expect(REBOOT_COMMAND).toEqual({ halt: 'halt', poweroff: 'poweroff', reboot: 'restart' });
  });

  it('watches every signal by the C library number (SIGRTMIN+4 is 38 with glibc)', () => {
    const native = new FakeNative();
    const seen: string[] = [];
    const watches = watchShutdownSignals(native, (meaning) => seen.push(`${meaning.signal}:${meaning.action}`));
    expect(watches.map((w) => w.signum).sort((a, b) => a - b)).toEqual([2, 10, 12, 15, 37, 38, 39]);
    native.deliverSignal(38);
    native.deliverSignal(2);
    expect(seen).toEqual(['SIGRTMIN+4:poweroff', 'SIGINT:reboot']);
    for (const watch of watches) watch.close();
    native.deliverSignal(38);
    expect(seen).toHaveLength(2);
    expect(SHUTDOWN_SIGNALS).toHaveLength(7);
  });
});

describe('the kernel command line', () => {
  it('splits words, honouring double quotes', () => {
    expect(splitCmdline('console=ttyS0 quiet  mos.config="/etc/my services.yaml"\n')).toEqual([
      'console=ttyS0',
      'quiet',
      'mos.config=/etc/my services.yaml',
    ]);
  });

  it('reads the mos.* keys', () => {
    const mos = readMosCmdline(parseCmdline('quiet mos.config=/etc/x.yaml mos.debug_control=1 mos.modules=loop,dm-verity mos.test_crash=services mos.shutdown_timeout=5000'));
    expect(mos).toEqual({
      config: '/etc/x.yaml',
      debugControl: true,
      modules: ['loop', 'dm-verity'],
      testCrash: 'services',
      shutdownTimeoutMs: 5000,
      store: null,
      manifestTag: 'latest',
      product: null,
      tpm: 'device:/dev/tpmrm0',
      trustPcrs: [7, 11],
      uplink: null,
      invalid: [],
    });
    expect(readMosCmdline(parseCmdline('mos.debug_control=0'))).toMatchObject({ debugControl: false, config: null, modules: [], testCrash: null });
  });
});
