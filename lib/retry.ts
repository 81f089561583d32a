// The cluster's retry policy (contract §2 `spec.retryPolicy`), used for every agent→agent and
// operator→agent call so both sides back off the same way.

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** Per-attempt timeout. */
  timeoutMs: number;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 100,
  maxBackoffMs: 5000,
  multiplier: 2,
  timeoutMs: 2000,
});

/** The spec form, with Go-style durations, as written in a PivotCluster or a cluster file. */
export interface RetryPolicySpec {
  maxAttempts?: number;
  initialBackoff?: string;
  maxBackoff?: string;
  multiplier?: number;
  timeout?: string;
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses `250ms`, `2s`, `1.5s`, `1m`, `1h` (a subset of Go durations; the CRD's CEL rule admits the same). */
export function parseDuration(text: string): number {
  const m = DURATION.exec(text.trim());
  if (!m)
    throw new Error(`invalid duration ${JSON.stringify(text)}: use a number with ms, s, m or h, e.g. 500ms`);
  return Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
}

export function retryPolicyFromSpec(spec: RetryPolicySpec | undefined): RetryPolicy {
  const d = DEFAULT_RETRY_POLICY;
  const policy: RetryPolicy = {
    maxAttempts: spec?.maxAttempts ?? d.maxAttempts,
    initialBackoffMs: spec?.initialBackoff ? parseDuration(spec.initialBackoff) : d.initialBackoffMs,
    maxBackoffMs: spec?.maxBackoff ? parseDuration(spec.maxBackoff) : d.maxBackoffMs,
    multiplier: spec?.multiplier ?? d.multiplier,
    timeoutMs: spec?.timeout ? parseDuration(spec.timeout) : d.timeoutMs,
  };
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1)
    throw new Error('retryPolicy.maxAttempts must be an integer >= 1');
  if (!(policy.multiplier >= 1)) throw new Error('retryPolicy.multiplier must be >= 1');
  if (policy.maxBackoffMs < policy.initialBackoffMs)
    throw new Error('retryPolicy.maxBackoff must be >= initialBackoff');
  if (policy.timeoutMs <= 0) throw new Error('retryPolicy.timeout must be > 0');
  return policy;
}

/**
 * Delay before retry number `retry` (1 = the first retry): exponential, capped, with "equal
 * jitter" — half fixed, half random — so retries from many agents spread out but never collapse
 * to zero.
 */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const exp = policy.initialBackoffMs * policy.multiplier ** Math.max(0, retry - 1);
  const capped = Math.min(policy.maxBackoffMs, exp);
  return capped / 2 + random() * (capped / 2);
}

export class RetriesExhaustedError extends Error {
  override readonly name = 'RetriesExhaustedError';
  readonly attempts: number;
  constructor(attempts: number, cause: unknown) {
    super(`gave up after ${attempts} attempt(s): ${cause instanceof Error ? cause.message : String(cause)}`, {
      cause,
    });
    this.attempts = attempts;
  }
}

/** Marks an error that retrying cannot fix (a 4xx answer, a fencing refusal). */
export class PermanentError extends Error {
  override readonly name = 'PermanentError';
}

export interface RetryOptions {
  /** Aborts waiting and further attempts (e.g. on shutdown). */
  signal?: AbortSignal;
  /** Called before each wait; for metrics and logs. */
  onRetry?: (info: { attempt: number; delayMs: number; error: unknown }) => void;
  random?: () => number;
}

/** Resolves after `ms`; rejects with the signal's reason if it aborts first. */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * Runs `attempt` until it succeeds, throws a PermanentError, or the policy's attempts run out.
 * Each attempt gets its own AbortSignal that fires after `policy.timeoutMs`.
 */
export async function withRetry<T>(
  policy: RetryPolicy,
  attempt: (signal: AbortSignal, attemptNumber: number) => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  let lastError: unknown;
  for (let n = 1; n <= policy.maxAttempts; n++) {
    // A cleared timer rather than AbortSignal.timeout: that one fires (allocating an abort event
    // and exception) even after the attempt succeeded, which adds up on hot replication paths.
    const timeout = new AbortController();
    const timer = setTimeout(
      () => timeout.abort(new DOMException(`attempt timed out after ${policy.timeoutMs} ms`, 'TimeoutError')),
      policy.timeoutMs,
    );
    const signal = options.signal ? AbortSignal.any([timeout.signal, options.signal]) : timeout.signal;
    try {
      return await attempt(signal, n);
    } catch (error) {
      clearTimeout(timer);
      if (error instanceof PermanentError || options.signal?.aborted) throw error;
      lastError = error;
      if (n === policy.maxAttempts) break;
      const delayMs = backoffDelay(policy, n, options.random);
      options.onRetry?.({ attempt: n, delayMs, error });
      await sleep(delayMs, options.signal);
    } finally {
      clearTimeout(timer);
    }
  }
  throw new RetriesExhaustedError(policy.maxAttempts, lastError);
}
