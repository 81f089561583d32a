// Public data routes (contract §3): /v1/data/<key>. Any agent accepts any key; a write for a
// shard this agent does not lead, or a strong read at a follower, is forwarded to the pivot
// (forward.ts batches them). `serveData` is the whole operation, request in, answer out, so the
// HTTP route and the pivot's side of a forward batch run the same code.
import type { FastifyInstance } from 'fastify';
import { routingKey, parseKey, type ParsedKey } from '../../../lib/keys.ts';
import { shardOfRoutingKey } from '../../../lib/hash.ts';
import { PermanentError, withRetry } from '../../../lib/retry.ts';
import type { Agent } from '../agent.ts';
import {
  type LogEntry,
  nowNs,
  pushIndex,
  recordJson,
  recordsJson,
  versionOf,
  type StoredRecord,
} from '../storage/records.ts';
import { ApiError, unavailable } from './errors.ts';
import {
  APPLIED,
  HTTP_FORWARDED,
  JSON_TYPE,
  NEXT_AFTER,
  NotDelivered,
  type DataAnswer,
  type DataRequest,
} from './forward.ts';

export const MAX_VALUE_BYTES = 1 << 20;
export const MAX_PAGE = 10_000;

/** The key named by a request path after `prefix`, decoded segment by segment. */
export function keyFromUrl(url: string, prefix: string): string {
  const path = url.slice(prefix.length).split('?')[0]!;
  const segments = path.split('/').map((s) => {
    let d: string;
    try {
      d = decodeURIComponent(s);
    } catch {
      throw new ApiError(400, 'INVALID_KEY', `key segment ${JSON.stringify(s)} is not valid URL encoding`);
    }
    if (d.includes('/')) throw new ApiError(400, 'INVALID_KEY', "key segments may not hold '/'");
    return d;
  });
  return segments.join('/');
}

/** Body text that must be one JSON value. */
export function jsonBody(body: unknown): string {
  const text = typeof body === 'string' ? body : '';
  if (text.trim() === '')
    throw new ApiError(400, 'INVALID_JSON', 'the body must be a JSON value; it is empty');
  try {
    JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, 'INVALID_JSON', `the body is not valid JSON: ${(error as Error).message}`);
  }
  if (Buffer.byteLength(text) > MAX_VALUE_BYTES)
    throw new ApiError(413, 'VALUE_TOO_LARGE', `values are limited to ${MAX_VALUE_BYTES} bytes`);
  return text;
}

export function parsePageQuery(q: { limit?: string; after?: string }): { limit: number; after?: string } {
  let limit = MAX_PAGE;
  if (q.limit !== undefined) {
    limit = Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE)
      throw new ApiError(400, 'INVALID_QUERY', `limit must be an integer 1..${MAX_PAGE}`);
  }
  if (q.after !== undefined && q.after === '')
    throw new ApiError(400, 'INVALID_QUERY', 'after must name an item index');
  return { limit, ...(q.after !== undefined ? { after: q.after } : {}) };
}

export function parseConsistency(value: string | undefined): 'strong' | 'local' {
  if (value === undefined || value === 'strong') return 'strong';
  if (value === 'local') return 'local';
  throw new ApiError(400, 'INVALID_QUERY', 'consistency must be strong or local');
}

type Decision =
  | { op: 'put'; record: StoredRecord; status: number }
  | { op: 'del'; key: string; parent: string; index: string };

type Query = { limit?: string; after?: string; consistency?: string };

const recordAnswer = (status: number, r: StoredRecord): DataAnswer => ({
  status,
  headers: { 'content-type': JSON_TYPE },
  body: recordJson(r),
});

/** The query string of a URL as the flat object the handlers read (last value wins). */
function queryOf(url: string): Query {
  const q = url.indexOf('?');
  return q < 0 ? {} : (Object.fromEntries(new URLSearchParams(url.slice(q + 1))) as Query);
}

const etag = (h: string | undefined) =>
  h
    ?.trim()
    .replace(/^W\//, '')
    .replace(/^"(.*)"$/, '$1');
const matches = (cur: StoredRecord | undefined, expected: string | undefined) =>
  expected === undefined || (cur !== undefined && (expected === '*' || cur.version === expected));

function single(parsed: ParsedKey) {
  if (parsed.kind !== 'single')
    throw new ApiError(
      400,
      'INVALID_KEY',
      `${parsed.key} names a collection; use a key like ${parsed.collection}/<index>`,
    );
  return { parent: parsed.collection ?? '', index: parsed.index, key: parsed.key };
}

/**
 * Serves one public data request. `forwarded` marks a request another agent sent here as the
 * shard's pivot: it is never forwarded again (maps are changing; the sender retries).
 */
export async function serveData(agent: Agent, req: DataRequest, forwarded: boolean): Promise<DataAnswer> {
  if (!agent.map) throw unavailable('this agent has no shard map yet');
  const parsed = parseKey(keyFromUrl(req.url, '/v1/data/'));
  const shard = shardOfRoutingKey(routingKey(parsed), agent.map.shards);
  const rt = agent.shards.get(shard)!;
  const toPivot = () => {
    if (forwarded) throw unavailable(`this agent is not the pivot of shard ${shard} (maps are changing)`);
    return forward(agent, req, shard);
  };

  switch (req.method) {
    case 'PUT': {
      const k = single(parsed);
      const data = jsonBody(req.body);
      if (rt.role !== 'pivot') return toPivot();
      const expected = etag(req.ifMatch);
      return write(agent, shard, (seq, term) => {
        const cur = agent.store.get(shard, k.parent, k.index);
        if (!matches(cur, expected))
          return new ApiError(
            412,
            'VERSION_MISMATCH',
            cur ? `current version is ${cur.version}` : `${k.key} does not exist`,
          );
        const now = nowNs();
        const record = {
          ...k,
          created: cur?.created ?? now,
          updated: now,
          version: versionOf(term, seq),
          data,
        };
        return { op: 'put', record, status: 200 };
      });
    }
    case 'POST': {
      if (parsed.kind !== 'collection')
        throw new ApiError(400, 'INVALID_KEY', `push needs a collection key ending in /*, got ${parsed.key}`);
      const data = jsonBody(req.body);
      if (rt.role !== 'pivot') return toPivot();
      return write(agent, shard, (seq, term) => {
        const now = nowNs();
        const index = pushIndex(now, seq);
        const record = {
          key: `${parsed.collection}/${index}`,
          parent: parsed.collection,
          index,
          created: now,
          updated: now,
          version: versionOf(term, seq),
          data,
        };
        return { op: 'put', record, status: 201 };
      });
    }
    case 'DELETE': {
      const k = single(parsed);
      if (rt.role !== 'pivot') return toPivot();
      const expected = etag(req.ifMatch);
      return write(agent, shard, () => {
        const cur = agent.store.get(shard, k.parent, k.index);
        if (!cur) return new ApiError(404, 'NOT_FOUND', `${k.key} does not exist`);
        if (!matches(cur, expected))
          return new ApiError(412, 'VERSION_MISMATCH', `current version is ${cur.version}`);
        return { op: 'del', ...k };
      });
    }
    case 'GET': {
      const query = queryOf(req.url);
      const consistency = parseConsistency(query.consistency);
      const page = parsed.kind === 'collection' ? parsePageQuery(query) : undefined;
      if (consistency === 'strong') {
        if (rt.role !== 'pivot') return toPivot();
        agent.writable(shard);
        await agent.confirmLeadership(shard);
        // Nothing may show a write that could still be lost; the read follows in the same tick.
        await agent.awaitAcknowledged(
          shard,
          parsed.kind === 'single' ? (parsed.collection ?? '') : parsed.collection,
          parsed.kind === 'single' ? parsed.index : undefined,
        );
      } else if (rt.role === 'none') {
        return toPivot(); // no copy here
      } else if (rt.state === 'wiping' || !agent.store.shardMeta(shard).complete) {
        // Local means this copy; a half-copied one would answer with holes.
        throw unavailable(`this agent's copy of shard ${shard} is being copied afresh`);
      }
      if (parsed.kind === 'single') {
        const r = agent.store.get(shard, parsed.collection ?? '', parsed.index);
        if (!r) throw new ApiError(404, 'NOT_FOUND', `${parsed.key} does not exist`);
        return recordAnswer(200, r);
      }
      const list = agent.store.list(shard, parsed.collection, page!.after, page!.limit);
      if (!list.found)
        throw new ApiError(400, 'INVALID_QUERY', `after names ${page!.after}, which is not in ${parsed.key}`);
      const headers: Record<string, string> = { 'content-type': JSON_TYPE };
      if (list.more) headers[NEXT_AFTER] = list.items[list.items.length - 1]!.index;
      return { status: 200, headers, body: recordsJson(list.items) };
    }
  }
}

/** At the pivot: applies a write, then waits for its write concern. */
async function write(
  agent: Agent,
  shard: number,
  decide: (seq: number, term: number) => Decision | ApiError,
): Promise<DataAnswer> {
  agent.writable(shard);
  const out = await agent.store.write<Decision | ApiError>(shard, (seq) => {
    let rt;
    try {
      rt = agent.writable(shard);
    } catch (error) {
      return { refused: error as ApiError };
    }
    const d = decide(seq, rt.term);
    if (d instanceof ApiError) return { refused: d };
    const entry: LogEntry =
      d.op === 'put'
        ? {
            term: rt.term,
            seq,
            op: 'put' as const,
            key: d.record.key,
            parent: d.record.parent,
            index: d.record.index,
            record: d.record,
          }
        : { term: rt.term, seq, op: 'del' as const, key: d.key, parent: d.parent, index: d.index };
    return { entry, result: d };
  });
  if (out.result instanceof ApiError || !out.entry) throw out.result;
  agent.noteUnacknowledged(shard, out.entry);
  try {
    await agent.awaitWriteConcern(shard, out.entry.seq);
  } catch (error) {
    const e = error as ApiError;
    throw new ApiError(e.status ?? 503, e.code ?? 'SHARD_UNAVAILABLE', e.message, e.retryAfterS, true);
  }
  if (out.result.op === 'put') return recordAnswer(out.result.status, out.result.record);
  return { status: 204 };
}

/**
 * Sends the request to the shard's pivot (looked up again on every attempt) and returns its
 * answer, retrying on the retry policy. A read is retried after any failure. A write is retried
 * only when it surely was not applied: the pivot refused it with a 503 of its own before
 * applying it, or the connection was never made. After a timeout or a lost answer the outcome
 * is unknown, and resending would apply it twice (a new version; a push twice; an If-Match
 * write refused by its own success), so the client gets a 503 saying so.
 */
async function forward(agent: Agent, req: DataRequest, shard: number): Promise<DataAnswer> {
  const read = req.method === 'GET';
  let last: DataAnswer | undefined;
  const policy = agent.policy();
  try {
    return await withRetry(
      // A write's attempt may take as long as the pivot's own longest wait (its write concern),
      // so it is never abandoned while the pivot still works on it; a read may be re-asked.
      read ? policy : { ...policy, timeoutMs: agent.forwardTimeoutMs() },
      async (signal) => {
        last = undefined; // only the last attempt's answer may speak for the outcome
        const pivot = agent.shards.get(shard)?.pivot;
        if (!pivot || pivot === agent.name || !agent.client(pivot))
          throw unavailable(`no pivot reachable for shard ${shard}`);
        let answer: DataAnswer;
        try {
          answer = await agent.forwarder.send(pivot, req, signal);
        } catch (error) {
          if (read || neverConnected(error)) throw error;
          throw new PermanentError(
            `the write went to pivot ${pivot} of shard ${shard} but its answer was lost; it may have been applied`,
            { cause: error },
          );
        }
        if (answer.status === 503 && !answer.headers?.[APPLIED]) {
          last = answer;
          throw new Error(`pivot ${pivot} answered 503`);
        }
        return answer;
      },
      { onRetry: () => agent.metrics.retries.inc({ call: 'forward' }) },
    );
  } catch (error) {
    if (last) return last; // the pivot's own 503, with its reason and Retry-After
    if (error instanceof PermanentError) throw unavailable(error.message);
    throw unavailable(`the pivot of shard ${shard} is unreachable: ${(error as Error).message}`);
  }
}

/** The request surely never reached a handler at the peer: refused as a batch, or no connection. */
function neverConnected(error: unknown): boolean {
  if (error instanceof NotDelivered) return true;
  for (let e = error as { code?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e)
    if (e.code && ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT'].includes(e.code))
      return true;
  return false;
}

export function dataRoutes(agent: Agent) {
  return async (app: FastifyInstance) => {
    app.route<{ Querystring: Query }>({
      method: ['GET', 'PUT', 'POST', 'DELETE'],
      url: '/v1/data/*',
      // Explicit, so no content-type parser's own (internal, larger) limit applies here.
      bodyLimit: MAX_VALUE_BYTES + 1024,
      handler: async (req, reply) => {
        const h = req.headers['if-match'];
        const answer = await serveData(
          agent,
          {
            method: req.method as DataRequest['method'],
            url: req.url,
            ...(h !== undefined ? { ifMatch: String(h) } : {}),
            ...(typeof req.body === 'string' ? { body: req.body } : {}),
          },
          // Agents before /_pivot/v1/forward forwarded over HTTP with this header: during a
          // rolling update such a request must not be sent on again.
          req.headers[HTTP_FORWARDED] !== undefined,
        );
        if (answer.headers) reply.headers(answer.headers);
        return reply.code(answer.status).send(answer.body);
      },
    });
  };
}
