import { describe, expect, it } from '@jest/globals';
import { parseKey } from '../../../lib/keys.ts';
import type { LogEntry } from '../storage/records.ts';
import { entryMatches, entryMessage } from './watch.ts';

const put: LogEntry = {
  term: 2,
  seq: 7,
  op: 'put',
  key: 'things/a',
  parent: 'things',
  index: 'a',
  record: {
    key: 'things/a',
    parent: 'things',
    index: 'a',
    created: 2n ** 62n,
    updated: 2n ** 62n + 1n,
    version: '2.7',
    data: '{"x":1}',
  },
};
const del: LogEntry = { term: 3, seq: 9, op: 'del', key: 'things/a', parent: 'things', index: 'a' };

describe('watch messages', () => {
  it('a set carries the whole object with exact nanosecond integers', () => {
    const text = entryMessage(put);
    expect(text).toContain('"created":4611686018427387904,');
    expect(text).toContain('"updated":4611686018427387905,');
    expect(JSON.parse(text)).toMatchObject({
      type: 'set',
      version: '2.7',
      object: { key: 'things/a', index: 'a', data: { x: 1 } },
    });
  });

  it('a delete names the key and the version of the delete', () => {
    expect(JSON.parse(entryMessage(del))).toEqual({ type: 'delete', key: 'things/a', version: '3.9' });
  });

  it.each([
    ['things/*', put, true],
    ['things/a', put, true],
    ['things/b', put, false],
    ['other/*', put, false],
    ['things', put, false],
  ])('watching %s sees %o: %s', (key, entry, seen) => {
    expect(entryMatches(parseKey(key), entry)).toBe(seen);
  });
});
