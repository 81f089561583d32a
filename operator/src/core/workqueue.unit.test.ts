import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { FakeClock } from './fake-clock.ts';
import { TokenBucket, WorkQueue, itemBackoffMs } from './workqueue.ts';

const take = async (q: WorkQueue) => {
  const out: string[] = [];
  while (q.len() > 0) out.push((await q.get())!);
  return out;
};

describe('itemBackoffMs', () => {
  it.each([
    [0, 5],
    [1, 10],
    [2, 20],
    [10, 5120],
    [30, 1_000_000],
    [1000, 1_000_000],
  ])('after %i failures waits %i ms', (failures, ms) => {
    expect(itemBackoffMs(failures)).toBe(ms);
  });

  it('never decreases and stays within 5 ms..1000 s', () => {
    fc.assert(
      fc.property(fc.nat(2000), (n) => {
        expect(itemBackoffMs(n + 1)).toBeGreaterThanOrEqual(itemBackoffMs(n));
        expect(itemBackoffMs(n)).toBeGreaterThanOrEqual(5);
        expect(itemBackoffMs(n)).toBeLessThanOrEqual(1_000_000);
      }),
    );
  });
});

describe('TokenBucket', () => {
  it('allows a burst, then one token per 1/qps', () => {
    const b = new TokenBucket(10, 3, 0);
    expect([b.reserve(0), b.reserve(0), b.reserve(0)]).toEqual([0, 0, 0]);
    expect(b.reserve(0)).toBe(100);
    expect(b.reserve(0)).toBe(200);
    // 1 s later 10 tokens have been refilled minus the 2 borrowed.
    expect(b.reserve(1000)).toBe(0);
  });
});

describe('WorkQueue', () => {
  it('dedupes a key added many times while queued', async () => {
    const q = new WorkQueue({ name: 't', clock: new FakeClock() });
    q.add('a');
    q.add('b');
    q.add('a');
    expect(await take(q)).toEqual(['a', 'b']);
  });

  it('hands a key to one worker at a time and re-queues it when added during processing', async () => {
    const q = new WorkQueue({ name: 't', clock: new FakeClock() });
    q.add('a');
    expect(await q.get()).toBe('a');
    q.add('a');
    expect(q.len()).toBe(0); // not handed to a second worker while the first holds it
    q.done('a');
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe('a');
    q.done('a');
    expect(q.len()).toBe(0);
  });

  it('wakes a waiting worker on add', async () => {
    const q = new WorkQueue({ name: 't', clock: new FakeClock() });
    const next = q.get();
    q.add('x');
    expect(await next).toBe('x');
  });

  it('backs off per key exponentially and resets on forget', async () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ name: 't', clock, qps: 1000, burst: 1000 });
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      q.addRateLimited('k');
      let waited = 0;
      while (q.len() === 0) {
        clock.advance(1);
        waited++;
      }
      delays.push(waited);
      await q.get();
      q.done('k');
    }
    expect(delays).toEqual([5, 10, 20, 40]);
    expect(q.numRequeues('k')).toBe(4);
    q.forget('k');
    expect(q.numRequeues('k')).toBe(0);
  });

  it('limits the overall retry rate with the token bucket', () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ name: 't', clock, qps: 1, burst: 1 });
    q.addRateLimited('a'); // token available: 5 ms backoff
    q.addRateLimited('b'); // bucket empty: waits ~1 s although its own backoff is 5 ms
    clock.advance(10);
    expect(q.len()).toBe(1);
    clock.advance(1000);
    expect(q.len()).toBe(2);
  });

  it('keeps the earliest of several delayed adds', () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ name: 't', clock });
    q.addAfter('a', 1000);
    q.addAfter('a', 100);
    q.addAfter('a', 5000);
    clock.advance(100);
    expect(q.len()).toBe(1);
    expect(clock.pending()).toBe(0);
  });

  it('releases waiting workers and drops timers on shutdown', async () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ name: 't', clock });
    q.addAfter('a', 1000);
    const waiting = q.get();
    q.shutDown();
    expect(await waiting).toBeUndefined();
    expect(clock.pending()).toBe(0);
    q.add('b');
    expect(await q.get()).toBeUndefined();
  });
});
