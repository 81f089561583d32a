import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  PermanentError,
  RetriesExhaustedError,
  backoffDelay,
  parseDuration,
  retryPolicyFromSpec,
  withRetry,
  type RetryPolicy,
} from './retry.ts';

const fast: RetryPolicy = {
  maxAttempts: 4,
  initialBackoffMs: 1,
  maxBackoffMs: 4,
  multiplier: 2,
  timeoutMs: 50,
};

describe('parseDuration', () => {
  it.each([
    ['100ms', 100],
    ['2s', 2000],
    ['1.5s', 1500],
    ['1m', 60_000],
    ['1h', 3_600_000],
  ])('%s = %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', '5', '-1s', '1d', 's', '1 s x'])('refuses %j', (text) => {
    expect(() => parseDuration(text)).toThrow(/invalid duration/);
  });
});

describe('retryPolicyFromSpec', () => {
  it('fills defaults from the contract', () => {
    expect(retryPolicyFromSpec(undefined)).toEqual({
      maxAttempts: 5,
      initialBackoffMs: 100,
      maxBackoffMs: 5000,
      multiplier: 2,
      timeoutMs: 2000,
    });
  });
  it.each([
    [{ maxAttempts: 0 }, /maxAttempts/],
    [{ multiplier: 0.5 }, /multiplier/],
    [{ initialBackoff: '2s', maxBackoff: '1s' }, /maxBackoff/],
  ])('refuses %j', (spec, message) => expect(() => retryPolicyFromSpec(spec)).toThrow(message));
});

describe('backoffDelay', () => {
  it('grows exponentially, is capped, and keeps at least half the step', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.double({ min: 0, max: 0.9999, noNaN: true }),
        (retry, r) => {
          const p: RetryPolicy = {
            maxAttempts: 50,
            initialBackoffMs: 100,
            maxBackoffMs: 5000,
            multiplier: 2,
            timeoutMs: 1,
          };
          const step = Math.min(5000, 100 * 2 ** (retry - 1));
          const d = backoffDelay(p, retry, () => r);
          expect(d).toBeGreaterThanOrEqual(step / 2);
          expect(d).toBeLessThanOrEqual(step);
        },
      ),
    );
  });
});

describe('withRetry', () => {
  it('retries until success and reports each retry', async () => {
    const seen: number[] = [];
    const result = await withRetry(
      fast,
      async (_signal, n) => {
        if (n < 3) throw new Error(`fail ${n}`);
        return n;
      },
      { onRetry: ({ attempt }) => seen.push(attempt) },
    );
    expect(result).toBe(3);
    expect(seen).toEqual([1, 2]);
  });

  it('gives up after maxAttempts with the last error as cause', async () => {
    let calls = 0;
    const err = await withRetry(fast, async () => {
      calls++;
      throw new Error(`boom ${calls}`);
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetriesExhaustedError);
    expect((err as RetriesExhaustedError).message).toMatch(/4 attempt\(s\): boom 4/);
    expect(calls).toBe(4);
  });

  it('does not retry a permanent error', async () => {
    let calls = 0;
    await expect(
      withRetry(fast, async () => {
        calls++;
        throw new PermanentError('412');
      }),
    ).rejects.toThrow('412');
    expect(calls).toBe(1);
  });

  it('aborts an attempt that exceeds the per-attempt timeout', async () => {
    const aborted: boolean[] = [];
    await expect(
      withRetry({ ...fast, maxAttempts: 2, timeoutMs: 20 }, (signal) => {
        return new Promise((_, reject) =>
          signal.addEventListener('abort', () => {
            aborted.push(true);
            reject(signal.reason);
          }),
        );
      }),
    ).rejects.toBeInstanceOf(RetriesExhaustedError);
    expect(aborted).toEqual([true, true]);
  });

  it('stops waiting when the caller aborts', async () => {
    const controller = new AbortController();
    const slow: RetryPolicy = { ...fast, initialBackoffMs: 60_000, maxBackoffMs: 60_000 };
    const pending = withRetry(
      slow,
      async () => {
        throw new Error('down');
      },
      { signal: controller.signal },
    );
    setTimeout(() => controller.abort(new Error('shutting down')), 10);
    await expect(pending).rejects.toThrow('shutting down');
  });
});
