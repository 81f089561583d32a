import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { KeyError, MAX_KEY_LENGTH, parseKey, routingKey } from './keys.ts';
import { fnv1a32, shardForKey } from './hash.ts';

describe('parseKey', () => {
  it.each([
    ['settings', { kind: 'single', collection: null, index: 'settings' }],
    ['things/42', { kind: 'single', collection: 'things', index: '42' }],
    ['a/b/c', { kind: 'single', collection: 'a/b', index: 'c' }],
    ['things/*', { kind: 'collection', collection: 'things' }],
    ['a/b/*', { kind: 'collection', collection: 'a/b' }],
    ['ünï cødé/🦀 crab', { kind: 'single', collection: 'ünï cødé', index: '🦀 crab' }],
  ])('accepts %j', (raw, expected) => {
    expect(parseKey(raw)).toMatchObject({ key: raw, ...expected });
  });

  it.each([
    ['', /empty/],
    ['*', /parent path/],
    ['/lead', /empty segment/],
    ['trail/', /empty segment/],
    ['a//b', /empty segment/],
    ['a*b', /'\*'/],
    ['a/*/b', /'\*'/],
    ['tab\there', /control/],
    ['nul\u0000', /control/],
    ['x'.repeat(MAX_KEY_LENGTH + 1), /longer than/],
    ['\ud800lone', /control|well-formed/],
  ])('refuses %j', (raw, message) => {
    expect(() => parseKey(raw)).toThrow(KeyError);
    expect(() => parseKey(raw)).toThrow(message);
  });

  const segment = fc
    .string({ unit: 'grapheme', minLength: 1, maxLength: 12 })
    .filter((s) => !/[/*\p{Cc}]/u.test(s) && !/[\u0080-\u009f]/.test(s));

  it('round-trips any valid path, and an item routes with its collection', () => {
    fc.assert(
      fc.property(
        fc.array(segment, { minLength: 1, maxLength: 5 }),
        fc.integer({ min: 1, max: 4096 }),
        (segs, shards) => {
          const key = segs.join('/');
          const parsed = parseKey(key);
          expect(parsed.kind).toBe('single');
          expect(parsed.segments).toEqual(segs);
          const collection = parseKey(`${key}/*`);
          expect(collection.kind).toBe('collection');
          expect(shardForKey(`${key}/item`, shards)).toBe(shardForKey(`${key}/*`, shards));
          expect(routingKey(collection)).toBe(key);
          const shard = shardForKey(key, shards);
          expect(shard).toBeGreaterThanOrEqual(0);
          expect(shard).toBeLessThan(shards);
        },
      ),
    );
  });
});

describe('fnv1a32', () => {
  // Published FNV-1a 32-bit test vectors: clients in other languages must agree with these.
  it.each([
    ['', 0x811c9dc5],
    ['a', 0xe40c292c],
    ['foobar', 0xbf9cf968],
  ])('hashes %j', (text, hash) => {
    expect(fnv1a32(text)).toBe(hash);
  });

  it('hashes UTF-8 bytes, not UTF-16 units', () => {
    expect(fnv1a32('é')).not.toBe(fnv1a32('\u00e9'.normalize('NFD')));
    expect(shardForKey('things/x', 16)).toBe(fnv1a32('things') % 16);
  });
});
