// A small HTTP load generator on undici: N connections in a closed loop (each sends its next
// request when the previous answer arrived), or an open loop at a fixed rate where latency is
// measured from the scheduled send time (so a stalled server cannot hide its queueing delay).
// Every run is bounded by a duration and an operation count; targets are loopback only.
import { Pool, type Dispatcher } from 'undici';

export interface Request {
  origin: string;
  method: Dispatcher.HttpMethod;
  path: string;
  headers?: Record<string, string>;
  body?: string;
}

export interface LoadSpec {
  concurrency: number;
  durationMs: number;
  maxOps: number;
  /** Open loop at this many requests per second; closed loop when absent. */
  ratePerSec?: number;
  request: (i: number) => Request;
}

export interface LoadResult {
  ops: number;
  errors: number;
  seconds: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  firstError?: string;
}

/** The q-quantile (0..1) of sorted values, nearest rank. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

function assertLoopback(origin: string): void {
  const host = new URL(origin).hostname;
  if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]')
    throw new Error(`load generator only targets loopback, not ${origin}`);
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const pools = new Map<string, Pool>();
  const poolFor = (origin: string) => {
    let pool = pools.get(origin);
    if (!pool) {
      assertLoopback(origin);
      pool = new Pool(origin, { connections: spec.concurrency, pipelining: 1 });
      pools.set(origin, pool);
    }
    return pool;
  };
  const latencies: number[] = [];
  let issued = 0;
  let done = 0;
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const deadline = start + spec.durationMs;

  const one = async (i: number, sentAt: number) => {
    const r = spec.request(i);
    try {
      const res = await poolFor(r.origin).request({
        method: r.method,
        path: r.path,
        headers: r.headers,
        body: r.body,
        headersTimeout: 10_000,
        bodyTimeout: 10_000,
      });
      const text = await res.body.text();
      if (res.statusCode >= 300) {
        errors++;
        firstError ??= `${r.method} ${r.path}: HTTP ${res.statusCode} ${text.slice(0, 200)}`;
      }
    } catch (error) {
      errors++;
      firstError ??= `${r.method} ${r.path}: ${String(error)}`;
    }
    latencies.push(performance.now() - sentAt);
    done++;
  };

  const worker = async () => {
    for (;;) {
      if (issued >= spec.maxOps) return;
      const i = issued++;
      let sentAt = performance.now();
      if (spec.ratePerSec) {
        const scheduled = start + (i * 1000) / spec.ratePerSec;
        if (scheduled >= deadline) return;
        if (scheduled > sentAt) await new Promise((r) => setTimeout(r, scheduled - sentAt));
        sentAt = scheduled;
      } else if (sentAt >= deadline) return;
      await one(i, sentAt);
    }
  };
  await Promise.all(Array.from({ length: spec.concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  await Promise.all([...pools.values()].map((p) => p.close()));
  const sorted = Float64Array.from(latencies).sort();
  return {
    ops: done,
    errors,
    seconds,
    opsPerSec: done / seconds,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
    firstError,
  };
}
