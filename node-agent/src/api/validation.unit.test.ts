import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { ApiError } from './errors.ts';
import { jsonBody, keyFromUrl, MAX_VALUE_BYTES, parseConsistency, parsePageQuery } from './data.ts';
import { tokenMatches } from './server.ts';

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (error) {
    return error instanceof ApiError ? `${error.status} ${error.code}` : `other ${(error as Error).message}`;
  }
  return 'ok';
};

describe('keyFromUrl', () => {
  it.each([
    ['/v1/data/settings', 'settings'],
    ['/v1/data/things/42?consistency=local', 'things/42'],
    ['/v1/data/things/*', 'things/*'],
    ['/v1/data/caf%C3%A9/a%20b', 'café/a b'],
    ['/v1/data/q%3F/%23x', 'q?/#x'],
  ])('%s names %s', (url, key) => expect(keyFromUrl(url, '/v1/data/')).toBe(key));

  it.each([
    ['/v1/data/a%2Fb', '400 INVALID_KEY'],
    ['/v1/data/bad%E0%A4', '400 INVALID_KEY'],
  ])('%s is refused', (url, expected) => expect(code(() => keyFromUrl(url, '/v1/data/'))).toBe(expected));

  it('round-trips any segments without / (property)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.string({ minLength: 1 }).filter((s) => !s.includes('/') && s.isWellFormed()),
          { minLength: 1, maxLength: 5 },
        ),
        (segs) => {
          const url = '/v1/data/' + segs.map(encodeURIComponent).join('/');
          expect(keyFromUrl(url, '/v1/data/')).toBe(segs.join('/'));
        },
      ),
    );
  });
});

describe('jsonBody', () => {
  it.each([
    ['{"a":1}', 'ok'],
    ['"text"', 'ok'],
    ['null', 'ok'],
    ['  [1,2] ', 'ok'],
    ['', '400 INVALID_JSON'],
    ['   ', '400 INVALID_JSON'],
    ['{bad', '400 INVALID_JSON'],
    ['{"a":1} trailing', '400 INVALID_JSON'],
    [`"${'x'.repeat(MAX_VALUE_BYTES)}"`, '413 VALUE_TOO_LARGE'],
  ])('%j -> %s', (body, expected) => expect(code(() => jsonBody(body))).toBe(expected));

  it('refuses a body that is not text', () =>
    expect(code(() => jsonBody(undefined))).toBe('400 INVALID_JSON'));
});

describe('query parameters', () => {
  it.each([
    [{}, { limit: 10_000 }],
    [{ limit: '5' }, { limit: 5 }],
    [
      { limit: '5', after: 'x' },
      { limit: 5, after: 'x' },
    ],
  ])('page %j', (q, expected) => expect(parsePageQuery(q)).toEqual(expected));

  it.each([{ limit: '0' }, { limit: '10001' }, { limit: 'abc' }, { limit: '1.5' }, { after: '' }])(
    'page %j is 400',
    (q) => expect(code(() => parsePageQuery(q))).toBe('400 INVALID_QUERY'),
  );

  it('consistency', () => {
    expect(parseConsistency(undefined)).toBe('strong');
    expect(parseConsistency('local')).toBe('local');
    expect(code(() => parseConsistency('eventual'))).toBe('400 INVALID_QUERY');
  });
});

describe('tokenMatches', () => {
  it.each([
    [undefined, false],
    ['Bearer s3cret', true],
    ['Bearer s3cre', false],
    ['bearer s3cret', false],
    ['Basic s3cret', false],
  ])('%s -> %s', (header, ok) => expect(tokenMatches(header, 's3cret')).toBe(ok));
});
