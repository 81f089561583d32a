// Errors as data: every refusal is an ApiError that the error handler turns into
// `{ "error": { "code", "message" } }` with its status (and Retry-After for 503).
import type { FastifyBaseLogger } from 'fastify';
import { KeyError } from '../../../lib/keys.ts';

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: number;
  readonly code: string;
  readonly retryAfterS: number | undefined;
  /** A write that failed after it was applied at the pivot (its write concern was not met). */
  readonly applied: boolean;
  constructor(status: number, code: string, message: string, retryAfterS?: number, applied = false) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = status === 503 ? (retryAfterS ?? 1) : retryAfterS;
    this.applied = applied;
  }
}

export const errorBody = (code: string, message: string) => ({ error: { code, message } });

export const unavailable = (message: string, retryAfterS = 1) =>
  new ApiError(503, 'SHARD_UNAVAILABLE', message, retryAfterS);

export const staleEpoch = (theirs: number, mine: number) =>
  new ApiError(409, 'STALE_EPOCH', `epoch ${theirs} is older than this agent's epoch ${mine}`);

/** Any error thrown while serving a request as the ApiError the client gets; the unexpected are logged. */
export function toApiError(error: unknown, log: FastifyBaseLogger): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof KeyError) return new ApiError(400, 'INVALID_KEY', error.message);
  const status = (error as { statusCode?: number }).statusCode;
  if (status && status < 500) return new ApiError(status, 'BAD_REQUEST', (error as Error).message);
  log.error({ err: error }, 'request failed');
  return new ApiError(500, 'INTERNAL', 'internal error; see the agent log');
}
