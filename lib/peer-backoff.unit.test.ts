import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HEALTHY, nextCheckAt, peerAnswered, peerFailed, peerRecheckDelay } from './peer-backoff.ts';

const MIN = 60_000;

describe('peerRecheckDelay', () => {
  it.each([
    [0, 1000],
    [9 * MIN, 1000],
    [10 * MIN - 1, 1000],
    [10 * MIN, 5000],
    [29 * MIN, 5000],
    [30 * MIN, 10_000],
    [24 * 60 * MIN, 10_000],
  ])('a peer down for %i ms is re-checked after %i ms', (downFor, delay) => {
    expect(peerRecheckDelay(1_000_000, 1_000_000 + downFor)).toBe(delay);
  });

  it('never shrinks as the outage grows and stays within 1..10 s', () => {
    fc.assert(
      fc.property(fc.nat(10 ** 9), fc.nat(10 ** 9), (a, b) => {
        const [short, long] = a < b ? [a, b] : [b, a];
        const d1 = peerRecheckDelay(0, short);
        const d2 = peerRecheckDelay(0, long);
        expect(d1).toBeLessThanOrEqual(d2);
        expect(d1).toBeGreaterThanOrEqual(1000);
        expect(d2).toBeLessThanOrEqual(10_000);
      }),
    );
  });

  it('treats a clock that went backwards as just failed', () => {
    expect(peerRecheckDelay(5000, 1000)).toBe(1000);
  });
});

describe('peer health transitions', () => {
  it('keeps the first failure time, and an answer resets it', () => {
    const h1 = peerFailed(HEALTHY, 100);
    const h2 = peerFailed(h1, 20 * MIN);
    expect(h2).toEqual({ downSince: 100, failures: 2 });
    expect(nextCheckAt(h2, 20 * MIN)).toBe(20 * MIN + 5000);
    expect(peerAnswered()).toEqual(HEALTHY);
    expect(nextCheckAt(HEALTHY, 42)).toBe(42);
  });
});
