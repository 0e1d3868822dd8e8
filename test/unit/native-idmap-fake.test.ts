import { constants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { FakeNative } from '../../native/fake.ts';
import type { IdmappedBindOptions } from '../../native/types.ts';

const options: IdmappedBindOptions = { source: '/run/mos/img/web', target: '/run/mos/lower/web', hostId: 200000, size: 65536, readOnly: true };

describe('FakeNative.idmappedBind', () => {
  it('records each call and resolves', async () => {
    const native = new FakeNative();
    await expect(native.idmappedBind(options)).resolves.toBeUndefined();
    expect(native.idmappedBinds).toEqual([options]);
  });

  it('fails the next call at the step asked for, naming the subject as the addon does', async () => {
    const native = new FakeNative();
    native.failNextIdmappedBind = { step: 'mount_setattr', code: 'EINVAL' };
    await expect(native.idmappedBind(options)).rejects.toMatchObject({
      message: 'mount_setattr EINVAL /run/mos/img/web',
      code: 'EINVAL',
      errno: constants.errno.EINVAL,
      syscall: 'mount_setattr',
      path: '/run/mos/img/web',
    });
    native.failNextIdmappedBind = { step: 'move_mount', code: 'ENOENT' };
    await expect(native.idmappedBind(options)).rejects.toMatchObject({ message: 'move_mount ENOENT /run/mos/lower/web' });
    native.failNextIdmappedBind = { step: 'clone', code: 'ENOSPC' };
    await expect(native.idmappedBind(options)).rejects.toMatchObject({ message: 'clone ENOSPC' });
    // One-shot: the next call succeeds; failed calls are recorded too.
    await expect(native.idmappedBind(options)).resolves.toBeUndefined();
    expect(native.idmappedBinds).toHaveLength(4);
  });

  it('throws a TypeError at the call for arguments outside the contract, and records nothing', () => {
    const native = new FakeNative();
    expect(() => native.idmappedBind({ ...options, size: 0 })).toThrow(TypeError);
    expect(() => native.idmappedBind({ ...options, hostId: 4294967295 - 10, size: 11 })).toThrow(
      'options.hostId + options.size must not exceed 4294967295',
    );
    expect(() => native.idmappedBind({ ...options, source: '' })).toThrow('options.source must not be empty');
    expect(native.idmappedBinds).toEqual([]);
  });
});
