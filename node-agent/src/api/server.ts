// The agent's HTTP surface: public data and watch routes, operations routes, and the internal
// routes (shard map pushes, replication). Errors are data: `{ error: { code, message } }`.
import websocket from '@fastify/websocket';
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import type { ShardMap } from '../../../lib/shard-map.ts';
import type { Agent } from '../agent.ts';
import type { BatchRequest } from '../replication/protocol.ts';
import { MSGPACK, packr } from '../replication/transport.ts';
import { dataRoutes, MAX_VALUE_BYTES, serveData } from './data.ts';
import { ApiError, errorBody, toApiError } from './errors.ts';
import { errorAnswer, FORWARD_STREAM, forwardFrame, MAX_BATCH, type ForwardBatch } from './forward.ts';
import { watchRoutes } from './watch.ts';

const OPEN_ROUTES = new Set(['/healthz', '/readyz', '/metrics']);

const FORWARD_BATCH_SCHEMA = {
  type: 'object',
  required: ['epoch', 'from', 'requests'],
  properties: {
    epoch: { type: 'integer', minimum: 0 },
    from: { type: 'string' },
    requests: {
      type: 'array',
      maxItems: MAX_BATCH,
      items: {
        type: 'object',
        required: ['method', 'url'],
        properties: {
          method: { enum: ['GET', 'PUT', 'POST', 'DELETE'] },
          url: { type: 'string', pattern: '^/v1/data/' },
          ifMatch: { type: 'string' },
          body: { type: 'string' },
        },
      },
    },
  },
} as const;
const INTERNAL_BODY_LIMIT = 256 << 20;

export function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

export async function buildServer(agent: Agent): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: agent.log,
    // A value of MAX_VALUE_BYTES plus JSON framing; anything larger is refused with 413.
    bodyLimit: MAX_VALUE_BYTES + 1024,
    return503OnClosing: true,
    // Router-level refusals (a URL that is not valid percent-encoding) keep the JSON error shape.
    frameworkErrors: (error, _req, reply) => {
      const status = (error as FastifyError).statusCode ?? 400;
      const body = errorBody(status === 400 ? 'INVALID_KEY' : 'BAD_REQUEST', error.message);
      void (reply as FastifyReply).code(status).send(body);
    },
    // Per-request logs would dominate CPU at target load; metrics cover requests instead.
    logController: new LogController({ disableRequestLogging: true }),
  });
  app.removeAllContentTypeParsers();
  // Bodies stay text: data is validated once and stored as the JSON text the client sent.
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => done(null, body));
  app.addContentTypeParser(
    MSGPACK,
    { parseAs: 'buffer', bodyLimit: INTERNAL_BODY_LIMIT },
    (_req, body, done) => {
      try {
        done(null, packr.unpack(body as Buffer));
      } catch {
        done(new ApiError(400, 'INVALID_BODY', 'body is not valid MessagePack'), undefined);
      }
    },
  );

  app.setErrorHandler((error: FastifyError | Error, req, reply) => {
    const e =
      (error as FastifyError).code === 'FST_ERR_CTP_BODY_TOO_LARGE'
        ? new ApiError(
            413,
            'VALUE_TOO_LARGE',
            `request bodies are limited to ${MAX_VALUE_BYTES} bytes of value`,
          )
        : toApiError(error, req.log);
    if (e.retryAfterS !== undefined) reply.header('retry-after', String(e.retryAfterS));
    if (String(req.headers['content-type'] ?? '').startsWith(MSGPACK) && e.code === 'STALE_EPOCH')
      return reply
        .code(e.status)
        .type(MSGPACK)
        .send(packr.pack({ ...errorBody(e.code, e.message), epoch: agent.newestEpoch() }));
    return reply.code(e.status).send(errorBody(e.code, e.message));
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send(errorBody('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`)),
  );

  app.addHook('onRequest', async (req) => {
    const path = req.url.split('?')[0]!;
    if (
      agent.config.token &&
      !OPEN_ROUTES.has(path) &&
      !tokenMatches(req.headers.authorization, agent.config.token)
    )
      throw new ApiError(401, 'UNAUTHORIZED', 'missing or wrong bearer token');
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    agent.metrics.requests.inc({ route, method: req.method, status: String(reply.statusCode) });
    agent.metrics.latency.observe({ route, method: req.method }, reply.elapsedTime / 1000);
  });

  await app.register(websocket);
  await app.register(dataRoutes(agent));
  await app.register(watchRoutes(agent));

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    if (agent.ready) return { status: 'ready', epoch: agent.epoch() };
    return reply
      .code(503)
      .send(errorBody('NOT_READY', agent.map ? 'shutting down' : 'no shard map loaded yet'));
  });
  app.get('/metrics', async (_req, reply) =>
    reply.type(agent.metrics.registry.contentType).send(await agent.metrics.registry.metrics()),
  );
  app.get('/_pivot/v1/status', async () => agent.status());
  app.put('/_pivot/v1/shardmap', { bodyLimit: INTERNAL_BODY_LIMIT }, async (req) => {
    let map: ShardMap;
    try {
      map = (typeof req.body === 'string' ? JSON.parse(req.body) : req.body) as ShardMap;
    } catch (error) {
      throw new ApiError(400, 'INVALID_JSON', `the body is not valid JSON: ${(error as Error).message}`);
    }
    if (
      !map ||
      typeof map !== 'object' ||
      !Array.isArray(map.assignments) ||
      !Array.isArray(map.agents) ||
      !map.retryPolicy
    )
      throw new ApiError(400, 'INVALID_SHARD_MAP', 'body must be a ShardMap (lib/shard-map.ts)');
    await agent.applyMap(map, 'push');
    return { epoch: agent.epoch() };
  });

  // Replication (MessagePack in and out).
  const internal = <B>(path: string, handle: (body: B) => unknown) =>
    app.post(`/_pivot/v1/replicate/${path}`, { bodyLimit: INTERNAL_BODY_LIMIT }, async (req, reply) => {
      if (!agent.map) throw new ApiError(503, 'SHARD_UNAVAILABLE', 'no shard map yet');
      if (
        !req.body ||
        typeof req.body !== 'object' ||
        typeof (req.body as { epoch?: unknown }).epoch !== 'number'
      )
        throw new ApiError(400, 'INVALID_BODY', 'replication bodies are MessagePack objects with an epoch');
      const out = await handle(req.body as B);
      agent.metrics.bytesSynced.inc(
        { direction: 'received', kind: path },
        Number(req.headers['content-length'] ?? 0),
      );
      return reply.type(MSGPACK).send(packr.pack(out));
    });
  internal<BatchRequest>('batch', (b) => agent.handleBatch(b));
  app.post<{ Body: ForwardBatch }>(
    '/_pivot/v1/forward',
    { bodyLimit: INTERNAL_BODY_LIMIT, schema: { body: FORWARD_BATCH_SCHEMA } },
    async (req, reply) => {
      const batch = req.body;
      // The sender's map may be newer than ours: then we are fenced until it arrives here too.
      agent.observeEpoch(batch.epoch);
      agent.metrics.forwarded.inc(batch.requests.length);
      // Each answer goes out as soon as its request is done: a slow write does not hold up the
      // reads of the same batch.
      reply.hijack();
      const res = reply.raw;
      res.on('error', () => {}); // the sender went away; it treats unanswered requests as lost
      res.writeHead(200, { 'content-type': FORWARD_STREAM });
      await Promise.all(
        batch.requests.map(async (r, i) => {
          const answer = await serveData(agent, r, true).catch((e: unknown) => errorAnswer(e, req.log));
          if (!res.destroyed) res.write(forwardFrame({ i, answer }));
        }),
      );
      res.end();
    },
  );
  internal<{ epoch: number; shard: number }>('position', (b) => agent.handlePosition(b));
  internal<{ epoch: number; shard: number; from: number; limit: number }>('log', (b) => agent.handleLog(b));
  internal<{ epoch: number; shard: number; after: (string | number)[] | null }>('snapshot', (b) =>
    agent.handleSnapshot(b),
  );
  return app;
}
