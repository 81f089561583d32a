// Public data routes (contract §3): /v1/data/<key>. Any agent accepts any key; a write for a
// shard this agent does not lead, or a strong read at a follower, is forwarded to the pivot.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { routingKey, parseKey, type ParsedKey } from '../../../lib/keys.ts';
import { shardOfRoutingKey } from '../../../lib/hash.ts';
import { withRetry } from '../../../lib/retry.ts';
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

export const MAX_VALUE_BYTES = 1 << 20;
export const MAX_PAGE = 10_000;
const FORWARDED = 'x-pivot-forwarded';
const NEXT_AFTER = 'x-pivot-next-after';

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

export function dataRoutes(agent: Agent) {
  return async (app: FastifyInstance) => {
    const target = (req: FastifyRequest) => {
      if (!agent.map) throw unavailable('this agent has no shard map yet');
      const parsed = parseKey(keyFromUrl(req.url, '/v1/data/'));
      const shard = shardOfRoutingKey(routingKey(parsed), agent.map.shards);
      return { parsed, shard, rt: agent.shards.get(shard)! };
    };

    const forward = async (req: FastifyRequest, reply: FastifyReply, shard: number, pivot: string) => {
      if (req.headers[FORWARDED])
        throw unavailable(`this agent is not the pivot of shard ${shard} (maps are changing)`);
      const client = agent.client(pivot);
      if (!client || pivot === agent.name) throw unavailable(`no pivot reachable for shard ${shard}`);
      const idempotent = req.method !== 'POST';
      const res = await withRetry(
        agent.policy(),
        async (signal) => {
          const r = await client.pool.request({
            method: req.method as 'GET',
            path: req.url,
            signal,
            headers: {
              [FORWARDED]: String(agent.epoch()),
              ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
              ...(req.headers['if-match'] ? { 'if-match': req.headers['if-match'] } : {}),
              ...(typeof req.body === 'string' ? { 'content-type': 'application/json' } : {}),
            },
            ...(typeof req.body === 'string' ? { body: req.body } : {}),
          });
          const body = Buffer.from(await r.body.arrayBuffer());
          if (r.statusCode === 503 && idempotent)
            throw new ApiError(503, 'SHARD_UNAVAILABLE', body.toString());
          return { status: r.statusCode, headers: r.headers, body };
        },
        { onRetry: () => agent.metrics.retries.inc({ call: 'forward' }) },
      ).catch((error: Error) => {
        const last = (error.cause as ApiError | undefined) ?? error;
        if (last instanceof ApiError) {
          try {
            const inner = JSON.parse(last.message) as { error: { message: string } };
            throw unavailable(inner.error.message);
          } catch (e) {
            if (e instanceof ApiError) throw e;
          }
        }
        throw unavailable(`pivot ${pivot} of shard ${shard} is unreachable: ${error.message}`);
      });
      for (const h of ['content-type', 'retry-after', NEXT_AFTER])
        if (res.headers[h]) reply.header(h, res.headers[h]);
      return reply.code(res.status).send(res.body);
    };

    const sendRecord = (reply: FastifyReply, status: number, r: StoredRecord) =>
      reply.code(status).type('application/json').send(recordJson(r));

    const write = async (
      reply: FastifyReply,
      shard: number,
      decide: (seq: number, term: number) => Decision | ApiError,
    ) => {
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
      await agent.awaitWriteConcern(shard, out.entry!.seq);
      if (out.result.op === 'put') return sendRecord(reply, out.result.status, out.result.record);
      return reply.code(204).send();
    };

    const ifMatch = (req: FastifyRequest) => {
      const h = req.headers['if-match'];
      return h === undefined
        ? undefined
        : String(h)
            .trim()
            .replace(/^W\//, '')
            .replace(/^"(.*)"$/, '$1');
    };
    const matches = (cur: StoredRecord | undefined, expected: string | undefined) =>
      expected === undefined || (cur !== undefined && (expected === '*' || cur.version === expected));

    const single = (parsed: ParsedKey) => {
      if (parsed.kind !== 'single')
        throw new ApiError(
          400,
          'INVALID_KEY',
          `${parsed.key} names a collection; use a key like ${parsed.collection}/<index>`,
        );
      return { parent: parsed.collection ?? '', index: parsed.index, key: parsed.key };
    };

    app.put('/v1/data/*', async (req, reply) => {
      const { parsed, shard, rt } = target(req);
      const k = single(parsed);
      const data = jsonBody(req.body);
      if (rt.role !== 'pivot') return forward(req, reply, shard, rt.pivot);
      const expected = ifMatch(req);
      return write(reply, shard, (seq, term) => {
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
    });

    app.post('/v1/data/*', async (req, reply) => {
      const { parsed, shard, rt } = target(req);
      if (parsed.kind !== 'collection')
        throw new ApiError(400, 'INVALID_KEY', `push needs a collection key ending in /*, got ${parsed.key}`);
      const data = jsonBody(req.body);
      if (rt.role !== 'pivot') return forward(req, reply, shard, rt.pivot);
      return write(reply, shard, (seq, term) => {
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
    });

    app.delete('/v1/data/*', async (req, reply) => {
      const { parsed, shard, rt } = target(req);
      const k = single(parsed);
      if (rt.role !== 'pivot') return forward(req, reply, shard, rt.pivot);
      const expected = ifMatch(req);
      return write(reply, shard, () => {
        const cur = agent.store.get(shard, k.parent, k.index);
        if (!cur) return new ApiError(404, 'NOT_FOUND', `${k.key} does not exist`);
        if (!matches(cur, expected))
          return new ApiError(412, 'VERSION_MISMATCH', `current version is ${cur.version}`);
        return { op: 'del', ...k };
      });
    });

    app.get<{ Querystring: Query }>('/v1/data/*', async (req, reply) => {
      const { parsed, shard, rt } = target(req);
      const consistency = parseConsistency(req.query.consistency);
      const page = parsed.kind === 'collection' ? parsePageQuery(req.query) : undefined;
      if (consistency === 'strong') {
        if (rt.role !== 'pivot') return forward(req, reply, shard, rt.pivot);
        agent.writable(shard);
        await agent.confirmLeadership(shard);
      } else if (rt.role === 'none') {
        return forward(req, reply, shard, rt.pivot); // no copy here
      } else if (rt.state === 'wiping' || !agent.store.shardMeta(shard).complete) {
        // Local means this copy; a half-copied one would answer with holes.
        throw unavailable(`this agent's copy of shard ${shard} is being copied afresh`);
      }
      if (parsed.kind === 'single') {
        const r = agent.store.get(shard, parsed.collection ?? '', parsed.index);
        if (!r) throw new ApiError(404, 'NOT_FOUND', `${parsed.key} does not exist`);
        return sendRecord(reply, 200, r);
      }
      const list = agent.store.list(shard, parsed.collection, page!.after, page!.limit);
      if (!list.found)
        throw new ApiError(400, 'INVALID_QUERY', `after names ${page!.after}, which is not in ${parsed.key}`);
      if (list.more) reply.header(NEXT_AFTER, list.items[list.items.length - 1]!.index);
      return reply.code(200).type('application/json').send(recordsJson(list.items));
    });
  };
}
