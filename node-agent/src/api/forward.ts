// Forwarding to a shard's pivot. The public requests an agent cannot serve itself (a write for a
// shard it does not lead, a strong read at a follower) travel to the pivot in batches: every
// request queued for one peer in an event-loop turn goes in one MessagePack call over the
// peer's keep-alive pool, and each answer streams back as soon as its request is done. The
// header names and answer shapes of the data protocol live here, shared by both sides.
import type { FastifyBaseLogger } from 'fastify';
import { MSGPACK, packr, type PeerClient } from '../replication/transport.ts';
import { errorBody, toApiError } from './errors.ts';

/** A public data request, as the receiving agent got it (auth already checked there). */
export interface DataRequest {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  /** Path and query, e.g. `/v1/data/users/7?consistency=local`. */
  url: string;
  ifMatch?: string;
  /** JSON text of a PUT or POST. */
  body?: string;
}

export interface DataAnswer {
  status: number;
  headers?: Record<string, string>;
  /** JSON text; absent for 204. */
  body?: string;
}

export interface ForwardBatch {
  epoch: number;
  from: string;
  requests: DataRequest[];
}

/** One answer of a forward batch, streamed as soon as its request is done. */
export interface ForwardFrame {
  i: number;
  answer: DataAnswer;
}

export const FORWARD_STREAM = 'application/x-pivot-forward-stream';

/** A length-prefixed frame of the forward stream. */
export function forwardFrame(frame: ForwardFrame): Buffer {
  const payload = packr.pack(frame);
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32BE(payload.length, 0);
  payload.copy(out, 4);
  return out;
}

/** The batch surely reached no request handler at the pivot: resending is safe. */
export class NotDelivered extends Error {
  override readonly name = 'NotDelivered';
}

/** Most requests, and request bytes, one forward call carries; the rest go in further calls. */
export const MAX_BATCH = 256;
const MAX_BATCH_BYTES = 32 << 20;

export const JSON_TYPE = 'application/json; charset=utf-8';

/** A collection page that is not the last names the `after` of the next page here. */
export const NEXT_AFTER = 'x-pivot-next-after';

/** The header agents before batched forwarding sent with a forwarded request. */
export const HTTP_FORWARDED = 'x-pivot-forwarded';

/** Marks an answer to a write that was applied at the pivot but not acknowledged: never resend it. */
export const APPLIED = 'x-pivot-applied';

/** Any error thrown while serving a request, as the answer a client gets. */
export function errorAnswer(error: unknown, log: FastifyBaseLogger): DataAnswer {
  const e = toApiError(error, log);
  return {
    status: e.status,
    headers: {
      'content-type': JSON_TYPE,
      ...(e.retryAfterS !== undefined ? { 'retry-after': String(e.retryAfterS) } : {}),
      ...(e.applied ? { [APPLIED]: '1' } : {}),
    },
    body: JSON.stringify(errorBody(e.code, e.message)),
  };
}

interface Pending {
  request: DataRequest;
  resolve: (a: DataAnswer) => void;
  reject: (e: Error) => void;
}

export interface ForwarderHost {
  readonly name: string;
  epoch(): number;
  client(peer: string): PeerClient | undefined;
  /** How long the pivot may take to answer a batch: its longest wait (a write concern) plus a margin. */
  forwardTimeoutMs(): number;
}

export class Forwarder {
  private readonly host: ForwarderHost;
  private readonly queues = new Map<string, Pending[]>();

  constructor(host: ForwarderHost) {
    this.host = host;
  }

  /**
   * One attempt: the pivot's answer to `request`, or a rejection when the call failed (the
   * caller's retry policy decides whether to try again). `signal` stops waiting, not the batch.
   */
  send(peer: string, request: DataRequest, signal?: AbortSignal): Promise<DataAnswer> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason as Error);
      const onAbort = () => reject(signal!.reason as Error);
      signal?.addEventListener('abort', onAbort, { once: true });
      const settled =
        <T>(f: (v: T) => void) =>
        (v: T) => {
          signal?.removeEventListener('abort', onAbort);
          f(v);
        };
      let queue = this.queues.get(peer);
      if (!queue) {
        queue = [];
        this.queues.set(peer, queue);
        setImmediate(() => this.flush(peer));
      }
      queue.push({ request, resolve: settled(resolve), reject: settled(reject) });
    });
  }

  private flush(peer: string): void {
    const queue = this.queues.get(peer);
    this.queues.delete(peer);
    if (!queue) return;
    let batch: Pending[] = [];
    let bytes = 0;
    for (const p of queue) {
      const size = (p.request.body?.length ?? 0) + p.request.url.length;
      if (batch.length > 0 && (batch.length === MAX_BATCH || bytes + size > MAX_BATCH_BYTES)) {
        void this.call(peer, batch);
        batch = [];
        bytes = 0;
      }
      batch.push(p);
      bytes += size;
    }
    void this.call(peer, batch);
  }

  private async call(peer: string, batch: Pending[]): Promise<void> {
    const client = this.host.client(peer);
    if (!client) {
      for (const p of batch) p.reject(new NotDelivered(`unknown agent ${peer}`));
      return;
    }
    const body: ForwardBatch = {
      epoch: this.host.epoch(),
      from: this.host.name,
      requests: batch.map((p) => p.request),
    };
    const timeout = new AbortController();
    const timer = setTimeout(
      () => timeout.abort(new Error(`${peer} did not answer a forward batch in time`)),
      this.host.forwardTimeoutMs(),
    );
    const answered = new Array<boolean>(batch.length).fill(false);
    try {
      const res = await client.forwardPool.request({
        method: 'POST',
        path: '/_pivot/v1/forward',
        body: packr.pack(body),
        signal: timeout.signal,
        headers: { 'content-type': MSGPACK, accept: FORWARD_STREAM, ...client.authorization() },
      });
      if (res.statusCode !== 200) {
        const text = (await res.body.text()).slice(0, 300);
        if (res.statusCode === 404) {
          // A pivot from before batched forwarding (a rolling update is under way).
          for (const p of batch) this.sendOverHttp(peer, p).then(p.resolve, p.reject);
          return;
        }
        // Refused as a whole (auth, shape, shutting down): none of it was served.
        throw new NotDelivered(`${peer} refused a forward batch: HTTP ${res.statusCode} ${text}`);
      }
      // Answers arrive as each request finishes: length-prefixed MessagePack `{ i, answer }`.
      let buffered: Buffer = Buffer.alloc(0);
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
        while (buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
          const size = buffered.readUInt32BE(0);
          const { i, answer } = packr.unpack(buffered.subarray(4, 4 + size)) as ForwardFrame;
          buffered = buffered.subarray(4 + size);
          if (!Number.isInteger(i) || i < 0 || i >= batch.length || answered[i])
            throw new Error(`${peer} sent a malformed forward answer`);
          answered[i] = true;
          batch[i]!.resolve(answer);
        }
      }
      if (answered.includes(false)) throw new Error(`${peer} ended a forward batch before answering all`);
    } catch (error) {
      batch.forEach((p, i) => answered[i] || p.reject(error as Error));
    } finally {
      clearTimeout(timer);
    }
  }

  /** One request as its own HTTP request, marked forwarded (how agents forwarded before). */
  private async sendOverHttp(peer: string, { request }: Pending): Promise<DataAnswer> {
    const client = this.host.client(peer)!;
    const res = await client.forwardPool.request({
      method: request.method,
      path: request.url,
      headers: {
        [HTTP_FORWARDED]: String(this.host.epoch()),
        ...client.authorization(),
        ...(request.ifMatch !== undefined ? { 'if-match': request.ifMatch } : {}),
        ...(request.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(request.body !== undefined ? { body: request.body } : {}),
      signal: AbortSignal.timeout(this.host.forwardTimeoutMs()),
    });
    const body = await res.body.text();
    const headers: Record<string, string> = {};
    for (const h of ['content-type', 'retry-after', NEXT_AFTER])
      if (typeof res.headers[h] === 'string') headers[h] = res.headers[h];
    return { status: res.statusCode, headers, ...(body ? { body } : {}) };
  }
}
