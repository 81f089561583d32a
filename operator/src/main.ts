// The Pivot operator: `node operator/src/main.ts [flags]` (npm run operator). Every flag has an
// environment variable; flags win. Exit 0 after a graceful shutdown (SIGTERM/SIGINT), 1 when
// leadership is lost or on a fatal error (the Deployment restarts it as a clean standby).
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
} from '@kubernetes/client-node';
import { pino } from 'pino';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { parseDuration } from '../../lib/retry.ts';
import { KubeEventRecorder } from './core/events.ts';
import { buildHttpServer } from './core/http.ts';
import { LeaderElector } from './core/leader-election.ts';
import { createMetrics } from './core/metrics.ts';
import { httpAgentClient } from './cluster/agent-client.ts';
import { PivotClusterController } from './cluster/controller.ts';
import { PivotClusterReconciler } from './cluster/reconcile.ts';

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

const { values: flags } = parseArgs({
  options: {
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    'metrics-addr': { type: 'string' },
    'leader-elect': { type: 'string' },
    'lease-name': { type: 'string' },
    'lease-namespace': { type: 'string' },
    identity: { type: 'string' },
    'agent-image': { type: 'string' },
    'log-level': { type: 'string' },
    workers: { type: 'string' },
    'resync-period': { type: 'string' },
  },
});

const env = process.env;
const config = {
  kubeconfig: flags.kubeconfig ?? env.KUBECONFIG,
  namespace: (flags.namespace ?? env.PIVOT_OPERATOR_WATCH_NAMESPACE) || undefined,
  metricsAddr: flags['metrics-addr'] ?? env.PIVOT_OPERATOR_METRICS_ADDR ?? '0.0.0.0:8081',
  leaderElect: (flags['leader-elect'] ?? env.PIVOT_OPERATOR_LEADER_ELECTION ?? 'true') !== 'false',
  leaseName: flags['lease-name'] ?? env.PIVOT_OPERATOR_LEASE_NAME ?? 'pivot-operator',
  leaseNamespace:
    flags['lease-namespace'] ?? env.PIVOT_OPERATOR_LEASE_NAMESPACE ?? env.POD_NAMESPACE ?? 'default',
  identity: flags.identity ?? env.PIVOT_OPERATOR_IDENTITY ?? env.POD_NAME ?? `${hostname()}-${process.pid}`,
  agentImage: flags['agent-image'] ?? env.PIVOT_OPERATOR_AGENT_IMAGE ?? `pivot/node-agent:${version}`,
  logLevel: flags['log-level'] ?? env.PIVOT_OPERATOR_LOG_LEVEL ?? 'info',
  workers: Number(flags.workers ?? env.PIVOT_OPERATOR_WORKERS ?? 2),
  resyncMs: parseDuration(flags['resync-period'] ?? env.PIVOT_OPERATOR_RESYNC_PERIOD ?? '30s'),
};

if (!(config.resyncMs >= 100)) throw new Error(`--resync-period must be at least 100ms`);

const log = pino({
  level: config.logLevel,
  base: { component: 'pivot-operator', identity: config.identity },
});

async function main(): Promise<void> {
  const kc = new KubeConfig();
  if (config.kubeconfig) kc.loadFromFile(config.kubeconfig);
  else kc.loadFromDefault();

  const metrics = createMetrics();
  const controller = new PivotClusterController({
    kubeConfig: kc,
    namespace: config.namespace,
    log,
    metrics,
    workers: config.workers,
    resyncMs: config.resyncMs,
  });
  const reconciler = new PivotClusterReconciler({
    caches: controller.caches(),
    objects: KubernetesObjectApi.makeApiClient(kc),
    core: kc.makeApiClient(CoreV1Api),
    custom: kc.makeApiClient(CustomObjectsApi),
    agents: httpAgentClient,
    events: new KubeEventRecorder(kc.makeApiClient(CoreV1Api), 'pivot-operator', log),
    metrics,
    log,
    agentImage: config.agentImage,
    version,
    resyncMs: config.resyncMs,
  });

  let elector: LeaderElector | null = null;
  const http = buildHttpServer({
    registry: metrics.registry,
    log,
    ready: () =>
      controller.synced()
        ? { ready: true, reason: elector && !elector.isLeader() ? 'standby' : 'leading' }
        : { ready: false, reason: 'caches not synced' },
  });
  const [host, port] = splitAddr(config.metricsAddr);
  await http.listen({ host, port });

  let stopping = false;
  const shutdown = async (code: number, why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'shutting down');
    const force = setTimeout(() => process.exit(code), 20_000);
    force.unref();
    await controller.stop();
    await elector?.stop();
    await http.close();
    log.info('stopped');
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown(0, 'SIGTERM'));
  process.on('SIGINT', () => void shutdown(0, 'SIGINT'));

  await controller.startInformers();
  log.info(
    { namespace: config.namespace ?? '(all)', version, agentImage: config.agentImage },
    'caches synced',
  );

  if (!config.leaderElect) {
    controller.run(reconciler);
    return;
  }
  elector = new LeaderElector({
    api: kc.makeApiClient(CoordinationV1Api),
    namespace: config.leaseNamespace,
    name: config.leaseName,
    identity: config.identity,
    log,
    metrics,
    onStartedLeading: () => controller.run(reconciler),
    // Stop at once: a deposed leader must not keep acting on a cluster another replica now owns.
    onStoppedLeading: () => void shutdown(1, 'lost leadership'),
  });
  elector.start();
}

function splitAddr(addr: string): [string, number] {
  const i = addr.lastIndexOf(':');
  return [addr.slice(0, i) || '0.0.0.0', Number(addr.slice(i + 1))];
}

main().catch((err: unknown) => {
  log.fatal({ err }, 'operator failed');
  process.exit(1);
});
