// Wires informers, the work queue and the reconciler: every watched change only enqueues the
// owning PivotCluster's key (level-triggered); workers run reconciles, one per key at a time.
import { AppsV1Api, CoreV1Api, CustomObjectsApi, PolicyV1Api } from '@kubernetes/client-node';
import type {
  KubeConfig,
  KubernetesListObject,
  KubernetesObject,
  V1Node,
  V1Pod,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { RestartingInformer } from '../core/informer.ts';
import type { Metrics } from '../core/metrics.ts';
import { WorkQueue } from '../core/workqueue.ts';
import type { Caches, PivotClusterReconciler } from './reconcile.ts';
import { RESYNC_MS } from './reconcile.ts';
import { CONTROLLER_NAME, GROUP, KIND, PLURAL, VERSION, type PivotCluster } from './types.ts';

const AGENT_SELECTOR = 'app.kubernetes.io/name=pivot-agent';
const INSTANCE_LABEL = 'app.kubernetes.io/instance';

export interface ControllerOptions {
  kubeConfig: KubeConfig;
  /** Only this namespace; all when undefined. */
  namespace?: string;
  log: Logger;
  metrics: Metrics;
  workers?: number;
  /** How often every PivotCluster is re-queued; default RESYNC_MS. */
  resyncMs?: number;
}

type AnyInformer = RestartingInformer<KubernetesObject>;

export class PivotClusterController {
  readonly queue: WorkQueue;
  private readonly o: ControllerOptions;
  private readonly informers = new Map<string, AnyInformer>();
  private reconciler: PivotClusterReconciler | null = null;
  private resyncTimer: NodeJS.Timeout | null = null;
  private readonly running: Promise<void>[] = [];

  constructor(options: ControllerOptions) {
    this.o = options;
    this.queue = new WorkQueue({ name: CONTROLLER_NAME, metrics: options.metrics });
    const kc = options.kubeConfig;
    const ns = options.namespace;
    const custom = kc.makeApiClient(CustomObjectsApi);
    const apps = kc.makeApiClient(AppsV1Api);
    const core = kc.makeApiClient(CoreV1Api);
    const policy = kc.makeApiClient(PolicyV1Api);
    const scoped = (group: string, resource: string) =>
      ns ? `${group}/namespaces/${ns}/${resource}` : `${group}/${resource}`;
    const byOwner = (obj: KubernetesObject) => {
      const instance = obj.metadata?.labels?.[INSTANCE_LABEL];
      if (instance && obj.metadata?.namespace) this.queue.add(`${obj.metadata.namespace}/${instance}`);
    };
    const list = <T extends KubernetesObject>(fn: () => Promise<unknown>) =>
      fn as () => Promise<KubernetesListObject<T>>;
    const labelSelector = AGENT_SELECTOR;

    this.add(
      'pivotclusters',
      scoped(`/apis/${GROUP}/${VERSION}`, PLURAL),
      list(() =>
        ns
          ? custom.listNamespacedCustomObject({
              group: GROUP,
              version: VERSION,
              namespace: ns,
              plural: PLURAL,
            })
          : custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL }),
      ),
      (obj) => this.queue.add(`${obj.metadata!.namespace}/${obj.metadata!.name}`),
    );
    this.add(
      'statefulsets',
      scoped('/apis/apps/v1', 'statefulsets'),
      list(() =>
        ns
          ? apps.listNamespacedStatefulSet({ namespace: ns, labelSelector })
          : apps.listStatefulSetForAllNamespaces({ labelSelector }),
      ),
      byOwner,
      labelSelector,
    );
    this.add(
      'pods',
      scoped('/api/v1', 'pods'),
      list(() =>
        ns
          ? core.listNamespacedPod({ namespace: ns, labelSelector })
          : core.listPodForAllNamespaces({ labelSelector }),
      ),
      byOwner,
      labelSelector,
    );
    this.add(
      'services',
      scoped('/api/v1', 'services'),
      list(() =>
        ns
          ? core.listNamespacedService({ namespace: ns, labelSelector })
          : core.listServiceForAllNamespaces({ labelSelector }),
      ),
      byOwner,
      labelSelector,
    );
    this.add(
      'poddisruptionbudgets',
      scoped('/apis/policy/v1', 'poddisruptionbudgets'),
      list(() =>
        ns
          ? policy.listNamespacedPodDisruptionBudget({ namespace: ns, labelSelector })
          : policy.listPodDisruptionBudgetForAllNamespaces({ labelSelector }),
      ),
      byOwner,
      labelSelector,
    );
    this.add(
      'persistentvolumeclaims',
      scoped('/api/v1', 'persistentvolumeclaims'),
      list(() =>
        ns
          ? core.listNamespacedPersistentVolumeClaim({ namespace: ns, labelSelector })
          : core.listPersistentVolumeClaimForAllNamespaces({ labelSelector }),
      ),
      byOwner,
      labelSelector,
    );
    // Nodes only feed zone labels into placement; a change is picked up at the next resync.
    this.add(
      'nodes',
      '/api/v1/nodes',
      list(() => core.listNode()),
      () => {},
    );
  }

  /** Read-only views of the caches for the reconciler. */
  caches(): Caches {
    const kinds: Record<string, string> = {
      StatefulSet: 'statefulsets',
      Service: 'services',
      PodDisruptionBudget: 'poddisruptionbudgets',
    };
    return {
      cluster: (namespace, name) =>
        this.informers.get('pivotclusters')!.get(name, namespace) as PivotCluster | undefined,
      pods: (namespace) => this.informers.get('pods')!.list(namespace) as V1Pod[],
      child: (kind, namespace, name) => this.informers.get(kinds[kind]!)?.get(name, namespace),
      node: (name) => this.informers.get('nodes')!.get(name) as V1Node | undefined,
    };
  }

  /** Starts every informer; resolves when all caches are filled. Standbys keep caches warm. */
  async startInformers(): Promise<void> {
    await Promise.all([...this.informers.values()].map((i) => i.start()));
  }

  synced(): boolean {
    return [...this.informers.values()].every((i) => i.synced());
  }

  /** Runs workers until shutdown (called once leadership is acquired). */
  run(reconciler: PivotClusterReconciler): void {
    this.reconciler = reconciler;
    for (const c of this.informers.get('pivotclusters')!.list())
      this.queue.add(`${c.metadata!.namespace}/${c.metadata!.name}`);
    for (let i = 0; i < (this.o.workers ?? 2); i++) this.running.push(this.worker());
    // Periodic resync: level-triggered safety net for anything an event did not announce.
    this.resyncTimer = setInterval(() => {
      for (const c of this.informers.get('pivotclusters')!.list())
        this.queue.add(`${c.metadata!.namespace}/${c.metadata!.name}`);
    }, this.o.resyncMs ?? RESYNC_MS);
  }

  /** Stops taking work, waits for in-flight reconciles, stops the informers. */
  async stop(): Promise<void> {
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.queue.shutDown();
    await Promise.all(this.running);
    await Promise.all([...this.informers.values()].map((i) => i.stop()));
  }

  private add(
    resource: string,
    path: string,
    list: () => Promise<KubernetesListObject<KubernetesObject>>,
    onEvent: (obj: KubernetesObject) => void,
    labelSelector?: string,
  ): void {
    this.informers.set(
      resource,
      new RestartingInformer({
        kubeConfig: this.o.kubeConfig,
        path,
        list,
        labelSelector,
        resource,
        log: this.o.log,
        metrics: this.o.metrics,
        onEvent,
      }),
    );
  }

  private async worker(): Promise<void> {
    const m = this.o.metrics;
    const labels = { controller: CONTROLLER_NAME };
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const end = m.reconcileTime.startTimer(labels);
      m.activeWorkers.inc(labels);
      try {
        const { requeueAfterMs } = await this.reconciler!.reconcile(key);
        this.queue.forget(key);
        if (requeueAfterMs > 0) {
          this.queue.addAfter(key, requeueAfterMs);
          m.reconcileTotal.inc({ ...labels, result: 'requeue_after' });
        } else m.reconcileTotal.inc({ ...labels, result: 'success' });
      } catch (err) {
        m.reconcileTotal.inc({ ...labels, result: 'error' });
        m.reconcileErrors.inc(labels);
        this.o.log.warn(
          { err: describe(err), [KIND.toLowerCase()]: key },
          'reconcile failed; retrying with backoff',
        );
        this.queue.addRateLimited(key);
      } finally {
        end();
        m.activeWorkers.dec(labels);
        this.queue.done(key);
      }
    }
  }
}

/** client-node errors carry the API server's Status body; log its message, not a wall of headers. */
function describe(err: unknown): unknown {
  const e = err as { code?: number; body?: unknown; message?: string };
  if (e && typeof e === 'object' && 'code' in e && 'body' in e) {
    const body = typeof e.body === 'string' ? e.body.slice(0, 500) : e.body;
    return { code: e.code, body };
  }
  return err;
}
