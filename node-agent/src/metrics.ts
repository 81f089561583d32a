// Prometheus metrics of one agent. One registry per agent (tests may run several in a process).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    requests: new Counter({
      name: 'pivot_http_requests_total',
      help: 'HTTP requests by route, method and status',
      labelNames: ['route', 'method', 'status'] as const,
      registers,
    }),
    latency: new Histogram({
      name: 'pivot_http_request_duration_seconds',
      help: 'HTTP request latency by route and method',
      labelNames: ['route', 'method'] as const,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5],
      registers,
    }),
    lag: new Gauge({
      name: 'pivot_replication_lag_seq',
      help: 'Per shard and follower, entries the follower has not applied yet (at the pivot); at a follower, its own lag behind the last batch',
      labelNames: ['shard', 'follower'] as const,
      registers,
    }),
    role: new Gauge({
      name: 'pivot_shard_role',
      help: '1 for the role this agent holds per shard (pivot, follower)',
      labelNames: ['shard', 'role'] as const,
      registers,
    }),
    epoch: new Gauge({ name: 'pivot_epoch', help: 'Epoch of the applied shard map', registers }),
    wipes: new Counter({
      name: 'pivot_shard_wipes_total',
      help: 'Shard wipes (another cluster, diverged history, copy removed)',
      labelNames: ['reason'] as const,
      registers,
    }),
    forwarded: new Counter({
      name: 'pivot_forwarded_requests_total',
      help: 'Public requests other agents forwarded here as the pivot (in batches)',
      registers,
    }),
    strongReads: new Counter({
      name: 'pivot_strong_read_confirmations_total',
      help: 'Strong reads served at a pivot, by how its leadership was confirmed: a read lease or a confirmation round',
      labelNames: ['via'] as const,
      registers,
    }),
    retries: new Counter({
      name: 'pivot_retries_total',
      help: 'Retried agent-to-agent calls',
      labelNames: ['call'] as const,
      registers,
    }),
    bytesSynced: new Counter({
      name: 'pivot_bytes_synced_total',
      help: 'Replication payload bytes sent and received',
      labelNames: ['direction', 'kind'] as const,
      registers,
    }),
    peerDown: new Gauge({
      name: 'pivot_peer_down',
      help: '1 while a peer is backed off after failing',
      labelNames: ['peer'] as const,
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
