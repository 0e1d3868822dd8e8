/** Directories inside a service root are made without following the image's symlinks. */
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dirInside } from '../../init/storage/activation-effects.ts';

let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('dirInside', () => {
  it('creates what is missing and returns the path', () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dir-inside-'));
    const made = dirInside(dir, '/var/lib/data');
    expect(made).toBe(`${dir}/var/lib/data`);
    expect(statSync(made).isDirectory()).toBe(true);
    expect(dirInside(dir, '/var/lib/data')).toBe(made);
  });

  it('refuses a symlink on the way (an absolute one would point at the host) and a file', () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dir-inside-'));
    const outside = mkdtempSync(path.join(os.tmpdir(), 'dir-inside-outside-'));
    try {
      symlinkSync(outside, path.join(dir, 'data'));
      expect(() => dirInside(dir, '/data/x')).toThrow('/data is a symlink in the image: a mount there could land outside the service root');
      mkdirSync(path.join(dir, 'etc'));
      writeFileSync(path.join(dir, 'etc', 'passwd'), '');
      expect(() => dirInside(dir, '/etc/passwd')).toThrow('/etc/passwd is not a directory in the image');
      expect(() => dirInside(dir, '/a/../b')).toThrow('".." is not allowed');
    } finally {
      rmSync(outside, { recursive: true, force: true });
    }
  });
});
