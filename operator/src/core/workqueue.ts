// A keyed work queue with client-go semantics: a key is queued at most once (dedupe), is handed to
// one worker at a time (a key added while processing is re-queued when the worker is done),
// failures back off per key exponentially, and an overall token bucket limits the retry rate.
import type { Metrics } from './metrics.ts';

export interface Clock {
  now(): number;
  /** Runs fn after ms; returns a cancel function. */
  schedule(fn: () => void, ms: number): () => void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  schedule: (fn, ms) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/** Per-item exponential backoff: base · 2^failures, capped (controller-runtime: 5 ms → 1000 s). */
export function itemBackoffMs(failures: number, baseMs = 5, maxMs = 1_000_000): number {
  return Math.min(maxMs, baseMs * 2 ** Math.min(failures, 60));
}

/**
 * Token bucket (client-go's BucketRateLimiter): `burst` tokens, refilled at `qps`. `reserve`
 * takes one token and returns how long the caller must wait for it (0 when one is available).
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly qps: number;
  private readonly burst: number;

  constructor(qps: number, burst: number, now: number) {
    this.qps = qps;
    this.burst = burst;
    this.tokens = burst;
    this.last = now;
  }

  reserve(now: number): number {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.qps);
    this.last = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.qps) * 1000);
  }
}

export interface WorkQueueOptions {
  name: string;
  baseDelayMs?: number;
  maxDelayMs?: number;
  qps?: number;
  burst?: number;
  clock?: Clock;
  metrics?: Metrics;
}

export class WorkQueue {
  readonly name: string;
  private readonly queue: string[] = [];
  /** Keys waiting to be processed (queued, or re-queued after the current worker finishes). */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly addedAt = new Map<string, number>();
  private readonly startedAt = new Map<string, number>();
  private readonly failures = new Map<string, number>();
  /** Pending delayed adds; the earliest wins, later ones for the same key are dropped. */
  private readonly delayed = new Map<string, { at: number; cancel: () => void }>();
  private readonly waiters: ((key: string | undefined) => void)[] = [];
  private readonly bucket: TokenBucket;
  private readonly clock: Clock;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly metrics?: Metrics;
  private shuttingDown = false;

  constructor(options: WorkQueueOptions) {
    this.name = options.name;
    this.clock = options.clock ?? realClock;
    this.baseDelayMs = options.baseDelayMs ?? 5;
    this.maxDelayMs = options.maxDelayMs ?? 1_000_000;
    this.bucket = new TokenBucket(options.qps ?? 10, options.burst ?? 100, this.clock.now());
    this.metrics = options.metrics;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.metrics?.queueAdds.inc({ name: this.name });
    this.dirty.add(key);
    this.addedAt.set(key, this.clock.now());
    if (this.processing.has(key)) return;
    this.push(key);
  }

  /** Adds the key after `ms`; an earlier pending add of the same key wins. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) return this.add(key);
    const at = this.clock.now() + ms;
    const pending = this.delayed.get(key);
    if (pending && pending.at <= at) return;
    pending?.cancel();
    const cancel = this.clock.schedule(() => {
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    this.delayed.set(key, { at, cancel });
  }

  /** Re-queues a failed key after max(per-key backoff, global rate limit). */
  addRateLimited(key: string): void {
    const failures = this.failures.get(key) ?? 0;
    this.failures.set(key, failures + 1);
    this.metrics?.queueRetries.inc({ name: this.name });
    const delay = Math.max(
      itemBackoffMs(failures, this.baseDelayMs, this.maxDelayMs),
      this.bucket.reserve(this.clock.now()),
    );
    this.addAfter(key, delay);
  }

  /** Clears the key's failure count (after a successful reconcile). */
  forget(key: string): void {
    this.failures.delete(key);
  }

  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** The next key to process; resolves undefined once the queue shuts down. */
  get(): Promise<string | undefined> {
    const key = this.pop();
    if (key !== undefined || this.shuttingDown) return Promise.resolve(key);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Marks the key processed; re-queues it if it was added meanwhile. */
  done(key: string): void {
    this.processing.delete(key);
    const started = this.startedAt.get(key);
    if (started !== undefined) {
      this.metrics?.workDuration.observe({ name: this.name }, (this.clock.now() - started) / 1000);
      this.startedAt.delete(key);
    }
    if (this.dirty.has(key)) this.push(key);
  }

  len(): number {
    return this.queue.length;
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const { cancel } of this.delayed.values()) cancel();
    this.delayed.clear();
    for (const w of this.waiters.splice(0)) w(undefined);
  }

  private push(key: string): void {
    const waiter = this.waiters.shift();
    if (waiter) {
      this.take(key);
      waiter(key);
      return;
    }
    this.queue.push(key);
    this.metrics?.queueDepth.set({ name: this.name }, this.queue.length);
  }

  private pop(): string | undefined {
    const key = this.queue.shift();
    if (key === undefined) return undefined;
    this.metrics?.queueDepth.set({ name: this.name }, this.queue.length);
    this.take(key);
    return key;
  }

  private take(key: string): void {
    this.dirty.delete(key);
    this.processing.add(key);
    const now = this.clock.now();
    const added = this.addedAt.get(key);
    if (added !== undefined) this.metrics?.queueLatency.observe({ name: this.name }, (now - added) / 1000);
    this.addedAt.delete(key);
    this.startedAt.set(key, now);
  }
}
