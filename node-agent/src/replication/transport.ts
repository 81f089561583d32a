// Agent-to-agent calls: persistent HTTP/1.1 keep-alive connections per peer, MessagePack bodies
// (bigint timestamps survive, no JSON re-encoding of big batches). Two pools per peer: forwarded
// requests wait for the peer's write concern, which may need replication from us to the peer —
// on one shared pool enough waiting forwards would hold every connection and stall the
// replication they wait for (seen at 1,024 client connections: 66 PUT/s instead of 5,000).
import { Packr } from 'msgpackr';
import { Pool } from 'undici';
import { PermanentError } from '../../../lib/retry.ts';

export const MSGPACK = 'application/x-msgpack';
// useRecords off: plain maps on the wire, readable by any msgpack decoder.
export const packr = new Packr({ useRecords: false, int64AsType: 'bigint' });

export class PeerCallError extends Error {
  override readonly name = 'PeerCallError';
  readonly status: number;
  readonly body: unknown;
  constructor(status: number, body: unknown) {
    const err = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
    super(`peer answered ${status}${err ? ` ${err.code}: ${err.message}` : ''}`);
    this.status = status;
    this.body = body;
  }
  get code(): string | undefined {
    return (this.body as { error?: { code?: string } } | undefined)?.error?.code;
  }
}

export class PeerClient {
  readonly url: string;
  /** Replication and the other agent-to-agent routes (`call`). */
  private readonly pool: Pool;
  /** Forwarded public requests (api/forward.ts). */
  readonly forwardPool: Pool;
  private readonly token: string | undefined;

  constructor(url: string, token: string | undefined, connections: number) {
    this.url = url;
    this.token = token;
    this.pool = new Pool(url, { connections, keepAliveTimeout: 30_000 });
    this.forwardPool = new Pool(url, { connections, keepAliveTimeout: 30_000 });
  }

  /** POSTs a MessagePack body to an internal route; 4xx answers are PermanentError-wrapped. */
  async call<T>(path: string, body: unknown, signal: AbortSignal): Promise<{ value: T; bytes: number }> {
    const payload = packr.pack(body);
    const res = await this.pool.request({
      method: 'POST',
      path,
      body: payload,
      signal,
      headers: {
        'content-type': MSGPACK,
        accept: MSGPACK,
        ...this.authorization(),
      },
    });
    const buf = Buffer.from(await res.body.arrayBuffer());
    const type = String(res.headers['content-type'] ?? '');
    const value =
      buf.length === 0
        ? undefined
        : type.startsWith(MSGPACK)
          ? packr.unpack(buf)
          : JSON.parse(buf.toString());
    if (res.statusCode >= 400) {
      const error = new PeerCallError(res.statusCode, value);
      // A refusal (fencing, bad request) will not change on retry; overload and outages may.
      if (res.statusCode < 500 && res.statusCode !== 429)
        throw new PermanentError(error.message, { cause: error });
      throw error;
    }
    return { value: value as T, bytes: payload.length + buf.length };
  }

  /** The Authorization header this agent sends its peers (the cluster token), if any. */
  authorization(): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.close(), this.forwardPool.close()]);
  }
}

/** The PeerCallError behind an error thrown by call(), if any. */
export function peerError(error: unknown): PeerCallError | undefined {
  if (error instanceof PeerCallError) return error;
  if (error instanceof Error && error.cause instanceof PeerCallError) return error.cause;
  if (error instanceof Error && error.cause) return peerError(error.cause);
  return undefined;
}
