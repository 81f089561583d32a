import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  appendTerm,
  committedSeq,
  decideCatchUp,
  extendsPivot,
  isPrefixOf,
  leaseHolds,
  mostAdvanced,
  promotionQuorum,
  readConfirmations,
  readLeaseMs,
  termAt,
  type TermStart,
} from './history.ts';

// Pivot history: term 1 wrote seq 1..10, term 4 wrote 11..20, term 7 from 21.
const H: TermStart[] = [
  { term: 1, start: 1 },
  { term: 4, start: 11 },
  { term: 7, start: 21 },
];

describe('termAt / appendTerm', () => {
  it.each([
    [0, 0],
    [1, 1],
    [10, 1],
    [11, 4],
    [20, 4],
    [21, 7],
    [999, 7],
  ])('seq %i was written in term %i', (seq, term) => expect(termAt(H, seq)).toBe(term));

  it('appends a term, replaces a term that never wrote, and ignores a repeat', () => {
    expect(appendTerm(H, 9, 25)).toEqual([...H, { term: 9, start: 25 }]);
    expect(appendTerm([...H, { term: 8, start: 25 }], 9, 25)).toEqual([...H, { term: 9, start: 25 }]);
    expect(appendTerm(H, 7, 30)).toEqual(H);
  });
});

describe('log matching and catch-up', () => {
  const pivotLast = { term: 7, seq: 30 };
  it.each([
    {
      name: 'empty follower',
      follower: { term: 0, seq: 0 },
      first: 1,
      expected: { mode: 'stream', from: 1 },
    },
    {
      name: 'prefix in an old term',
      follower: { term: 4, seq: 15 },
      first: 1,
      expected: { mode: 'stream', from: 16 },
    },
    { name: 'caught up', follower: { term: 7, seq: 30 }, first: 25, expected: { mode: 'stream', from: 31 } },
    {
      name: 'ex-pivot with writes the new pivot lacks (same seqs, old term)',
      follower: { term: 4, seq: 22 },
      first: 1,
      expected: { mode: 'snapshot', reason: 'diverged' },
    },
    {
      name: 'ahead of the pivot on its history (the pivot is still taking over): held, not wiped',
      follower: { term: 7, seq: 31 },
      first: 1,
      expected: { mode: 'hold', reason: 'ahead' },
    },
    {
      name: 'in a term newer than any the pivot started (a stale pivot): held, not wiped',
      follower: { term: 8, seq: 3 },
      first: 1,
      expected: { mode: 'hold', reason: 'ahead' },
    },
    {
      name: 'behind the trim point',
      follower: { term: 1, seq: 5 },
      first: 12,
      expected: { mode: 'snapshot', reason: 'trimmed' },
    },
    {
      name: 'exactly at the trim point',
      follower: { term: 4, seq: 11 },
      first: 12,
      expected: { mode: 'stream', from: 12 },
    },
  ])('$name', ({ follower, first, expected }) => {
    expect(
      decideCatchUp({ follower, followerComplete: true, pivotHistory: H, pivotLast, firstLogSeq: first }),
    ).toEqual(expected);
  });

  it('wipes leftovers beyond the last entry once the pivot has started a newer term', () => {
    expect(
      decideCatchUp({
        follower: { term: 7, seq: 31 },
        followerComplete: true,
        pivotHistory: [...H, { term: 9, start: 31 }],
        pivotLast,
        firstLogSeq: 1,
      }),
    ).toEqual({ mode: 'snapshot', reason: 'diverged' });
  });

  it('never tells a follower that extends the pivot history to wipe (property)', () => {
    // The follower holds the pivot's history up to `pivotSeq`, then more in the same newest term.
    fc.assert(
      fc.property(fc.integer({ min: 21, max: 40 }), fc.integer({ min: 1, max: 40 }), (pivotSeq, extra) => {
        const last = { term: 7, seq: pivotSeq };
        const follower = { term: 7, seq: pivotSeq + extra };
        expect(extendsPivot(follower, last, 7)).toBe(true);
        const decision = decideCatchUp({
          follower,
          followerComplete: true,
          pivotHistory: H,
          pivotLast: last,
          firstLogSeq: 1,
        });
        expect(decision).toEqual({ mode: 'hold', reason: 'ahead' });
      }),
    );
  });

  it.each([
    { name: 'same position', copy: { term: 7, seq: 30 }, expected: false },
    { name: 'behind', copy: { term: 4, seq: 15 }, expected: false },
    { name: 'further in the same term', copy: { term: 7, seq: 31 }, expected: true },
    { name: 'in a newer term', copy: { term: 8, seq: 2 }, expected: true },
    {
      name: 'further, but in a term older than the started one',
      copy: { term: 4, seq: 40 },
      expected: false,
    },
  ])('extendsPivot: $name', ({ copy, expected }) => {
    expect(extendsPivot(copy, { term: 7, seq: 30 }, 7)).toBe(expected);
  });

  it('recopies a follower whose snapshot copy never finished', () => {
    expect(
      decideCatchUp({
        follower: { term: 0, seq: 0 },
        followerComplete: false,
        pivotHistory: H,
        pivotLast,
        firstLogSeq: 1,
      }),
    ).toEqual({ mode: 'snapshot', reason: 'incomplete' });
  });

  it('a prefix of a prefix is a prefix (property)', () => {
    fc.assert(
      fc.property(fc.nat(40), (seq) => {
        const copy = { term: termAt(H, Math.min(seq, 30)), seq: Math.min(seq, 30) };
        expect(isPrefixOf(copy, H, pivotLast)).toBe(true);
        expect(isPrefixOf({ term: copy.term + 100, seq: Math.max(1, copy.seq) }, H, pivotLast)).toBe(false);
      }),
    );
  });
});

describe('quorums', () => {
  it.each([
    ['majority', 3, 2, 1],
    ['majority', 5, 3, 2],
    ['one', 3, 3, 2],
    ['all', 3, 1, 0],
    ['one', 1, 1, 0],
  ] as const)(
    '%s over %i copies: promotion needs %i answers, strong reads %i confirmations',
    (wc, n, promote, read) => {
      expect(promotionQuorum(wc, n)).toBe(promote);
      expect(readConfirmations(wc, n)).toBe(read);
    },
  );

  it('promotion answers always intersect every set of acknowledging copies (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 7 }),
        fc.constantFrom('one', 'majority', 'all' as const),
        (n, wc) => {
          const need = promotionQuorum(wc, n);
          const acked = n - need + 1;
          expect(need + acked).toBeGreaterThan(n);
          expect(need).toBeLessThanOrEqual(n);
        },
      ),
    );
  });

  it('picks the most advanced answer', () => {
    const answers = [
      { name: 'a', position: { term: 3, seq: 9 } },
      { name: 'b', position: { term: 4, seq: 2 } },
      { name: 'c', position: { term: 4, seq: 1 } },
    ];
    expect(mostAdvanced(answers)?.name).toBe('b');
    expect(mostAdvanced([])).toBeUndefined();
  });
});

describe('read leases', () => {
  it.each([
    [2000, 1000],
    [1000, 500],
    [300, 150],
    [60_000, 1000],
  ])('a %i ms per-attempt timeout gives %i ms promises', (timeout, lease) => {
    expect(readLeaseMs(timeout)).toBe(lease);
  });

  // Lease 1000 ms: a promise counts for 900 ms from the batch's send time.
  it.each([
    ['no follower needed (writeConcern all)', [], 0, 5000, true],
    ['one fresh promise, one needed', [1000, 0], 1, 1500, true],
    ['the promise ran out (drift margin included)', [1000, 0], 1, 1900, false],
    ['just inside the margin', [1000], 1, 1899, true],
    ['never granted (0) counts for nothing', [0, 0], 1, 1, false],
    ['two needed, only one fresh', [1000, 100], 2, 1500, false],
    ['two needed, both fresh', [1000, 1200], 2, 1800, true],
  ] as const)('%s', (_name, granted, need, now, holds) => {
    expect(leaseHolds(granted, need, 1000, now)).toBe(holds);
  });

  it('a pivot lease always ends before the promise it rests on, whatever the delay and clock rates within 10 % (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.integer({ min: 0, max: 5000 }),
        fc.integer({ min: 20, max: 60_000 }),
        fc.integer({ min: 0, max: 100_000 }),
        // The follower's clock ticks this many times as fast as the pivot's.
        fc.double({ min: 0.9, max: 1.1, noNaN: true }),
        (sentAt, delay, timeout, now, rate) => {
          const lease = readLeaseMs(timeout);
          // In the pivot's time: the promise starts at receipt and lasts `lease` follower ms.
          const promiseEnds = sentAt + delay + lease / rate;
          if (leaseHolds([sentAt], 1, lease, now)) expect(now).toBeLessThan(promiseEnds);
        },
      ),
    );
  });
});

describe('committedSeq (write-concern accounting)', () => {
  it.each([
    { name: 'rf1 one', pivot: 10, followers: [], required: 1, expected: 10 },
    {
      name: 'majority of 3',
      pivot: 10,
      followers: [
        { applied: 7, serving: true },
        { applied: 4, serving: true },
      ],
      required: 2,
      expected: 7,
    },
    {
      name: 'all of 3',
      pivot: 10,
      followers: [
        { applied: 7, serving: true },
        { applied: 4, serving: true },
      ],
      required: 3,
      expected: 4,
    },
    {
      name: 'syncing follower does not count',
      pivot: 10,
      followers: [
        { applied: 9, serving: false },
        { applied: 3, serving: true },
      ],
      required: 2,
      expected: 3,
    },
    {
      name: 'not enough copies',
      pivot: 10,
      followers: [{ applied: 9, serving: false }],
      required: 2,
      expected: 0,
    },
    {
      name: 'follower ahead of pivot durability',
      pivot: 5,
      followers: [{ applied: 9, serving: true }],
      required: 2,
      expected: 5,
    },
  ])('$name', ({ pivot, followers, required, expected }) => {
    expect(committedSeq(pivot, followers, required)).toBe(expected);
  });
});
