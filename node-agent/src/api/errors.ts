// Errors as data: every refusal is an ApiError that the error handler turns into
// `{ "error": { "code", "message" } }` with its status (and Retry-After for 503).

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: number;
  readonly code: string;
  readonly retryAfterS: number | undefined;
  constructor(status: number, code: string, message: string, retryAfterS?: number) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = status === 503 ? (retryAfterS ?? 1) : retryAfterS;
  }
}

export const errorBody = (code: string, message: string) => ({ error: { code, message } });

export const unavailable = (message: string, retryAfterS = 1) =>
  new ApiError(503, 'SHARD_UNAVAILABLE', message, retryAfterS);

export const staleEpoch = (theirs: number, mine: number) =>
  new ApiError(409, 'STALE_EPOCH', `epoch ${theirs} is older than this agent's epoch ${mine}`);
