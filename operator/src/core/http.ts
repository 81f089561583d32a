// The operator's own HTTP surface: liveness, readiness and Prometheus metrics.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';

export interface HealthSources {
  registry: Registry;
  /** Ready = caches synced and either leading or a healthy standby. */
  ready: () => { ready: boolean; reason: string };
  log: Logger;
}

export function buildHttpServer({ registry, ready, log }: HealthSources): FastifyInstance {
  const app = Fastify({
    // Probes and scrapes hit these routes every few seconds: log only problems.
    loggerInstance: log.child({ component: 'http' }, { level: 'warn' }) as FastifyBaseLogger,
  });
  const statusSchema = {
    response: {
      200: { type: 'object', properties: { status: { type: 'string' } } },
      503: { type: 'object', properties: { status: { type: 'string' }, reason: { type: 'string' } } },
    },
  };
  app.get('/healthz', { schema: statusSchema }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: statusSchema }, async (_req, reply) => {
    const r = ready();
    if (!r.ready) return reply.code(503).send({ status: 'not ready', reason: r.reason });
    return { status: 'ok' };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  return app;
}
