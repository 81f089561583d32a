// Operator metrics. The controller and work-queue series use controller-runtime's names and
// labels so existing dashboards and alerts work unchanged; the pivot_* series are domain metrics.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const exponential = (start: number, factor: number, count: number) =>
  Array.from({ length: count }, (_, i) => start * factor ** i);

export function createMetrics(registry: Registry = new Registry()) {
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    reconcileTotal: new Counter({
      name: 'controller_runtime_reconcile_total',
      help: 'Total number of reconciliations per controller',
      labelNames: ['controller', 'result'] as const,
      registers,
    }),
    reconcileErrors: new Counter({
      name: 'controller_runtime_reconcile_errors_total',
      help: 'Total number of reconciliation errors per controller',
      labelNames: ['controller'] as const,
      registers,
    }),
    reconcileTime: new Histogram({
      name: 'controller_runtime_reconcile_time_seconds',
      help: 'Length of time per reconciliation per controller',
      labelNames: ['controller'] as const,
      buckets: exponential(0.005, 2, 14),
      registers,
    }),
    activeWorkers: new Gauge({
      name: 'controller_runtime_active_workers',
      help: 'Number of currently used workers per controller',
      labelNames: ['controller'] as const,
      registers,
    }),
    queueDepth: new Gauge({
      name: 'workqueue_depth',
      help: 'Current depth of workqueue',
      labelNames: ['name'] as const,
      registers,
    }),
    queueAdds: new Counter({
      name: 'workqueue_adds_total',
      help: 'Total number of adds handled by workqueue',
      labelNames: ['name'] as const,
      registers,
    }),
    queueLatency: new Histogram({
      name: 'workqueue_queue_duration_seconds',
      help: 'How long in seconds an item stays in workqueue before being requested',
      labelNames: ['name'] as const,
      buckets: exponential(1e-6, 10, 10),
      registers,
    }),
    workDuration: new Histogram({
      name: 'workqueue_work_duration_seconds',
      help: 'How long in seconds processing an item from workqueue takes',
      labelNames: ['name'] as const,
      buckets: exponential(1e-6, 10, 10),
      registers,
    }),
    queueRetries: new Counter({
      name: 'workqueue_retries_total',
      help: 'Total number of retries handled by workqueue',
      labelNames: ['name'] as const,
      registers,
    }),
    leaderStatus: new Gauge({
      name: 'leader_election_master_status',
      help: 'Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master',
      labelNames: ['name'] as const,
      registers,
    }),
    informerRestarts: new Counter({
      name: 'pivot_operator_informer_restarts_total',
      help: 'Informer restarts after a watch or list error',
      labelNames: ['resource'] as const,
      registers,
    }),
    failovers: new Counter({
      name: 'pivot_failovers_total',
      help: 'Shards whose pivot was replaced because it failed',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    failoverDuration: new Histogram({
      name: 'pivot_failover_duration_seconds',
      help: 'From the moment a failed pivot was noticed to the new map being persisted',
      labelNames: ['namespace', 'cluster'] as const,
      buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60],
      registers,
    }),
    failoversRefused: new Counter({
      name: 'pivot_failovers_refused_total',
      help: 'Failovers not done because no follower was known to hold every acknowledged write',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    underReplicatedShards: new Gauge({
      name: 'pivot_under_replicated_shards',
      help: 'Shards with fewer serving copies than the replication factor',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    unassignedShards: new Gauge({
      name: 'pivot_unassigned_shards',
      help: 'Shards without a pivot in the map (before the first assignment)',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    shardsPerAgent: new Gauge({
      name: 'pivot_shards_per_agent',
      help: 'Shard copies per agent in the current map, by role',
      labelNames: ['namespace', 'cluster', 'agent', 'role'] as const,
      registers,
    }),
    epoch: new Gauge({
      name: 'pivot_shard_map_epoch',
      help: 'Epoch of the current shard map',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    rebalanceMoves: new Counter({
      name: 'pivot_rebalance_moves_total',
      help: 'Shard map steps taken by rebalancing, by kind',
      labelNames: ['namespace', 'cluster', 'kind'] as const,
      registers,
    }),
    wipes: new Counter({
      name: 'pivot_shard_wipes_total',
      help: 'Shard wipes reported by agents (pivot changed to a history they did not share)',
      labelNames: ['namespace', 'cluster'] as const,
      registers,
    }),
    mapPushes: new Counter({
      name: 'pivot_shard_map_pushes_total',
      help: 'Shard map pushes to agents, by result',
      labelNames: ['result'] as const,
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
