// The I/O shell of the PivotCluster controller: observe (caches + agent status), decide (plan.ts,
// pure), persist the decision in status, then act (apply children, push the map, delete a pod).
// The status patch carries the resourceVersion it was computed from, so a stale cache or a
// deposed leader can never overwrite a newer map: the API server answers 409 and we retry.
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import type {
  CoreV1Api,
  CustomObjectsApi,
  KubernetesObject,
  KubernetesObjectApi,
  V1Node,
  V1Pod,
  V1StatefulSet,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import type { RetryPolicy } from '../../../lib/retry.ts';
import { copiesOf, type AgentInfo, type ShardMap } from '../../../lib/shard-map.ts';
import type { EventRecorder } from '../core/events.ts';
import type { Metrics } from '../core/metrics.ts';
import type { AgentClient } from './agent-client.ts';
import { canonical, childUpToDate, ownershipFingerprint, withAppliedHash } from './apply.ts';
import {
  TOKEN_KEY,
  authSecretName,
  desiredClientService,
  desiredHeadlessService,
  desiredPodDisruptionBudget,
  desiredStatefulSet,
  generatedAuthSecret,
  headlessServiceName,
  selectorLabels,
  selectorString,
} from './desired.ts';
import { pivotHealth } from './failover.ts';
import { mapPushTargets } from './push-targets.ts';
import { plan, underReplicatedShards, type Plan } from './plan.ts';
import { computeStatus, mergeWipes } from './status.ts';
import {
  AGENT_PORT,
  FIELD_MANAGER,
  GROUP,
  PAUSE_ANNOTATION,
  PLURAL,
  VERSION,
  ordinalOf,
  resolveSpec,
  type AgentObservation,
  type PivotCluster,
  type PivotClusterStatus,
  type ResolvedSpec,
} from './types.ts';

const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
export const RESYNC_MS = 30_000;
const BUSY_REQUEUE_MS = 1_000;
export const ZONE_LABEL = 'topology.kubernetes.io/zone';

/** Read access to the informer caches. */
export interface Caches {
  cluster(namespace: string, name: string): PivotCluster | undefined;
  /** Agent pods of a namespace, or of every watched namespace when none is given. */
  pods(namespace?: string): readonly V1Pod[];
  /** An owned child by kind (StatefulSet, Service, PodDisruptionBudget). */
  child(kind: string, namespace: string, name: string): KubernetesObject | undefined;
  node(name: string): V1Node | undefined;
}

export interface ReconcilerDeps {
  caches: Caches;
  objects: KubernetesObjectApi;
  core: CoreV1Api;
  custom: CustomObjectsApi;
  agents: AgentClient;
  events: EventRecorder;
  metrics: Metrics;
  log: Logger;
  agentImage: string;
  version: string;
  /** The longest a settled cluster waits for its next reconcile; default RESYNC_MS. */
  resyncMs?: number;
  now?: () => number;
}

export interface ReconcileResult {
  requeueAfterMs: number;
}

const statusCode = (e: unknown) => (e as { code?: number }).code;

export class PivotClusterReconciler {
  private readonly d: ReconcilerDeps;
  private readonly now: () => number;
  /** Status we wrote, keyed by the resourceVersion it replaced: covers the cache lagging behind. */
  private readonly written = new Map<string, { replacedVersion: string; cluster: PivotCluster }>();
  private readonly tokens = new Map<string, string>();
  /** Per child: the ownership fingerprint our last apply returned (apply.ts). */
  private readonly applied = new Map<string, string>();
  /** When this process first saw each pod (by UID) not ready. */
  private readonly firstSeenNotReady = new Map<string, number>();

  constructor(deps: ReconcilerDeps) {
    this.d = deps;
    this.now = deps.now ?? Date.now;
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const [namespace, name] = key.split('/') as [string, string];
    let cluster = this.d.caches.cluster(namespace, name);
    if (!cluster || cluster.metadata?.deletionTimestamp) {
      this.forget(key, namespace, name);
      return { requeueAfterMs: 0 };
    }
    const written = this.written.get(key);
    if (written && written.replacedVersion === cluster.metadata!.resourceVersion) cluster = written.cluster;
    const log = this.d.log.child({ pivotcluster: key });

    if (cluster.metadata?.annotations?.[PAUSE_ANNOTATION] === 'true') {
      await this.writeStatus(key, cluster, this.pausedStatus(cluster));
      return { requeueAfterMs: 0 };
    }

    let spec: ResolvedSpec;
    try {
      spec = resolveSpec(cluster.spec);
    } catch (e) {
      // The CRD's rules should make this unreachable; say so loudly rather than guess.
      this.d.events.event(cluster, 'Warning', 'InvalidSpec', (e as Error).message);
      return { requeueAfterMs: 0 };
    }
    const token = await this.ensureToken(key, cluster);

    // Observe.
    const pods = this.d.caches
      .pods(namespace)
      .filter((p) => Object.entries(selectorLabels(cluster)).every(([k, v]) => p.metadata?.labels?.[k] === v))
      .filter((p) => ordinalOf(name, p.metadata!.name!) !== null);
    const agents = await this.observeAgents(cluster, pods, token, spec.retryPolicy, log);
    const sts = this.d.caches.child('StatefulSet', namespace, name) as V1StatefulSet | undefined;
    const epoch = cluster.status?.epoch ?? 0;
    const assignments = cluster.status?.assignments ?? [];

    // Decide.
    const now = this.now();
    const decision = plan({
      clusterName: name,
      spec,
      epoch,
      assignments,
      agents,
      updateRevision: sts?.status?.updateRevision,
      now,
    });
    const newEpoch = decision.assignments ? epoch + 1 : epoch;
    const newAssignments = decision.assignments ?? assignments;
    const { wipes, fresh } = mergeWipes(cluster.status?.wipes ?? [], agents);
    const status = computeStatus({
      generation: cluster.metadata!.generation ?? 0,
      previous: cluster.status ?? {},
      desiredReplicas: spec.replicas,
      selector: selectorString(cluster),
      agents,
      plan: decision,
      epoch: newEpoch,
      assignments: newAssignments,
      // Judged on the map the agents serve now; a new map is judged once they apply it.
      underReplicated: underReplicatedShards(assignments, agents, epoch, spec.replicationFactor),
      wipes,
      paused: false,
      now: new Date(now),
    });
    // Persist first: the map in status is authoritative; agents only ever get a recorded map.
    await this.writeStatus(key, cluster, status);
    this.record(cluster, decision, fresh, status, agents, now);

    // Act.
    await this.applyChildren(cluster, decision.statefulSetReplicas);
    const pushFailures =
      newAssignments.length > 0
        ? await this.pushMap(cluster, spec, newEpoch, newAssignments, agents, token, log)
        : 0;
    if (decision.deletePod && pushFailures === 0) {
      await this.d.core.deleteNamespacedPod({ name: decision.deletePod, namespace });
    }

    return {
      requeueAfterMs: this.requeueAfter(decision, spec, agents, assignments, pushFailures, now, epoch),
    };
  }

  private forget(key: string, namespace: string, name: string): void {
    this.written.delete(key);
    this.tokens.delete(key);
    for (const k of this.applied.keys()) if (k.startsWith(`${key}/`)) this.applied.delete(k);
    const labels = { namespace, cluster: name };
    for (const g of [
      this.d.metrics.underReplicatedShards,
      this.d.metrics.unassignedShards,
      this.d.metrics.epoch,
    ])
      g.remove(labels);
  }

  private pausedStatus(cluster: PivotCluster): PivotClusterStatus {
    const s = structuredClone(cluster.status ?? {});
    const now = new Date(this.now()).toISOString();
    const paused = (type: string) => ({
      type,
      status: type === 'Ready' ? ('Unknown' as const) : ('False' as const),
      reason: 'Paused',
      message: `reconciling is paused by the ${PAUSE_ANNOTATION} annotation`,
      observedGeneration: cluster.metadata?.generation,
    });
    s.conditions = ['Ready', 'Progressing', 'Degraded'].map((type) => {
      const old = s.conditions?.find((c) => c.type === type);
      const next = paused(type);
      return {
        ...next,
        lastTransitionTime: old && old.status === next.status ? old.lastTransitionTime : now,
      };
    });
    return s;
  }

  private async ensureToken(key: string, cluster: PivotCluster): Promise<string | null> {
    if (this.tokens.has(key)) return this.tokens.get(key)!;
    const namespace = cluster.metadata!.namespace!;
    const name = authSecretName(cluster);
    let token: string | null;
    try {
      const secret = await this.d.core.readNamespacedSecret({ name, namespace });
      const value = secret.data?.[TOKEN_KEY];
      token = value ? Buffer.from(value, 'base64').toString('utf8').trim() : null;
      if (!token)
        this.d.events.event(
          cluster,
          'Warning',
          'AuthSecretInvalid',
          `secret ${name} has no "${TOKEN_KEY}" key`,
        );
    } catch (e) {
      if (statusCode(e) !== 404) throw e;
      if (cluster.spec.auth?.secretName) {
        this.d.events.event(
          cluster,
          'Warning',
          'AuthSecretMissing',
          `secret ${name} named in spec.auth does not exist`,
        );
        return null;
      }
      token = randomBytes(32).toString('base64url');
      try {
        await this.d.core.createNamespacedSecret({
          namespace,
          body: generatedAuthSecret(cluster, this.d.version, token),
        });
        this.d.events.event(
          cluster,
          'Normal',
          'AuthSecretCreated',
          `generated the auth token secret ${name}`,
        );
      } catch (err) {
        if (statusCode(err) !== 409) throw err;
        return this.ensureToken(key, cluster); // created concurrently: read it
      }
    }
    if (token) this.tokens.set(key, token);
    return token;
  }

  private async observeAgents(
    cluster: PivotCluster,
    pods: readonly V1Pod[],
    token: string | null,
    policy: RetryPolicy,
    log: Logger,
  ): Promise<Map<string, AgentObservation>> {
    const name = cluster.metadata!.name!;
    const entries = await Promise.all(
      pods.map(async (pod): Promise<[string, AgentObservation]> => {
        const podName = pod.metadata!.name!;
        const readyCondition = pod.status?.conditions?.find((c) => c.type === 'Ready');
        const podReady = readyCondition?.status === 'True';
        if (podReady) this.firstSeenNotReady.delete(pod.metadata!.uid!);
        const ip = pod.status?.podIP;
        const nodeName = pod.spec?.nodeName;
        let status = ip ? await this.d.agents.status(agentUrl(ip), token, policy) : null;
        if (
          status &&
          (status.name !== podName || (status.clusterUid && status.clusterUid !== cluster.metadata!.uid))
        ) {
          log.warn(
            { pod: podName, reported: status.name, clusterUid: status.clusterUid },
            'agent identity mismatch',
          );
          status = null;
        }
        const sinceText = readyCondition?.lastTransitionTime ?? pod.metadata?.creationTimestamp;
        return [
          podName,
          {
            name: podName,
            ordinal: ordinalOf(name, podName)!,
            podReady,
            notReadySince: podReady ? null : this.notReadySince(pod, sinceText),
            deleting: !!pod.metadata?.deletionTimestamp,
            ip,
            node: nodeName,
            zone: nodeName ? this.d.caches.node(nodeName)?.metadata?.labels?.[ZONE_LABEL] : undefined,
            revision: pod.metadata?.labels?.['controller-revision-hash'],
            status,
          },
        ];
      }),
    );
    // Forget pods that no longer exist anywhere, so the map holds only live pods.
    const live = new Set(this.d.caches.pods().map((p) => p.metadata!.uid!));
    for (const uid of this.firstSeenNotReady.keys()) if (!live.has(uid)) this.firstSeenNotReady.delete(uid);
    return new Map(entries);
  }

  /**
   * When a pod became not ready. lastTransitionTime has whole-second precision, so the transition
   * happened within the second after it; while watching, our own first sighting is closer.
   */
  private notReadySince(pod: V1Pod, transitionText: Date | string | undefined): number {
    const uid = pod.metadata!.uid!;
    const now = this.now();
    if (!this.firstSeenNotReady.has(uid)) this.firstSeenNotReady.set(uid, now);
    if (transitionText === undefined) return this.firstSeenNotReady.get(uid)!;
    const transition = new Date(transitionText).getTime();
    return Math.max(transition, Math.min(this.firstSeenNotReady.get(uid)!, transition + 999));
  }

  private async writeStatus(key: string, cluster: PivotCluster, status: PivotClusterStatus): Promise<void> {
    if (canonical(cluster.status ?? {}) === canonical(status)) return;
    const { name, namespace, resourceVersion } = cluster.metadata!;
    const updated = (await this.d.custom.patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: namespace!,
        plural: PLURAL,
        name: name!,
        // resourceVersion makes this a compare-and-swap; `operation: null` clears the field.
        body: { metadata: { resourceVersion }, status: { ...status, operation: status.operation ?? null } },
      },
      MERGE_PATCH,
    )) as PivotCluster;
    this.written.set(key, { replacedVersion: resourceVersion!, cluster: updated });
  }

  private record(
    cluster: PivotCluster,
    decision: Plan,
    freshWipes: ReturnType<typeof mergeWipes>['fresh'],
    status: PivotClusterStatus,
    agents: ReadonlyMap<string, AgentObservation>,
    now: number,
  ): void {
    const m = this.d.metrics;
    const labels = { namespace: cluster.metadata!.namespace!, cluster: cluster.metadata!.name! };
    for (const e of decision.events) this.d.events.event(cluster, e.type, e.reason, e.message);
    for (const f of decision.failovers) {
      m.failovers.inc(labels);
      if (f.since !== null) m.failoverDuration.observe(labels, Math.max(0, now - f.since) / 1000);
    }
    if (decision.refusal?.reason === 'FailoverRefused') m.failoversRefused.inc(labels);
    if (decision.rebalanceMoves)
      for (const [kind, n] of Object.entries(decision.rebalanceMoves))
        if (n > 0) m.rebalanceMoves.inc({ ...labels, kind }, n);
    for (const w of freshWipes) {
      m.wipes.inc(labels);
      this.d.events.event(
        cluster,
        'Normal',
        'ShardWiped',
        `agent ${w.agent} wiped shard ${w.shard} (${w.reason})`,
      );
    }
    const assignments = status.assignments ?? [];
    m.epoch.set(labels, status.epoch ?? 0);
    m.unassignedShards.set(labels, assignments.length === 0 ? resolveSpec(cluster.spec).shards : 0);
    m.underReplicatedShards.set(
      labels,
      underReplicatedShards(
        assignments,
        agents,
        status.epoch ?? 0,
        resolveSpec(cluster.spec).replicationFactor,
      ).length,
    );
    for (const a of agents.keys()) {
      m.shardsPerAgent.set(
        { ...labels, agent: a, role: 'pivot' },
        assignments.filter((s) => s.pivot === a).length,
      );
      m.shardsPerAgent.set(
        { ...labels, agent: a, role: 'follower' },
        assignments.filter((s) => s.followers.includes(a)).length,
      );
    }
  }

  /** Server-side apply of every child, skipped when the live one already is what we would apply. */
  private async applyChildren(cluster: PivotCluster, statefulSetReplicas: number): Promise<void> {
    const v = this.d.version;
    const children: KubernetesObject[] = [
      desiredHeadlessService(cluster, v),
      desiredClientService(cluster, v),
      desiredPodDisruptionBudget(cluster, v),
      desiredStatefulSet(cluster, { defaultImage: this.d.agentImage, version: v, statefulSetReplicas }),
    ].map(withAppliedHash);
    const namespace = cluster.metadata!.namespace!;
    const key = `${namespace}/${cluster.metadata!.name}`;
    for (const child of children) {
      const id = `${key}/${child.kind}/${child.metadata!.name}`;
      const live = this.d.caches.child(child.kind!, namespace, child.metadata!.name!);
      if (childUpToDate(child, live, this.applied.get(id))) continue;
      const result = await this.d.objects.patch(
        child,
        undefined,
        undefined,
        FIELD_MANAGER,
        true,
        PatchStrategy.ServerSideApply,
      );
      this.applied.set(id, ownershipFingerprint(result));
    }
  }

  /** Pushes the recorded map to every answering agent that has not applied it. Returns the agents not reached. */
  private async pushMap(
    cluster: PivotCluster,
    spec: ResolvedSpec,
    epoch: number,
    assignments: NonNullable<PivotClusterStatus['assignments']>,
    agents: ReadonlyMap<string, AgentObservation>,
    token: string | null,
    log: Logger,
  ): Promise<number> {
    const namespace = cluster.metadata!.namespace!;
    const headless = headlessServiceName(cluster);
    const names = new Set([...agents.keys(), ...assignments.flatMap(copiesOf)]);
    const infos: AgentInfo[] = [...names].sort().map((n) => {
      const a = agents.get(n);
      return {
        name: n,
        // The pod IP when known; otherwise the stable DNS name of the headless Service.
        url: a?.ip ? agentUrl(a.ip) : `http://${n}.${headless}.${namespace}.svc:${AGENT_PORT}`,
        ...(a?.node ? { node: a.node } : {}),
        ...(a?.zone ? { zone: a.zone } : {}),
      };
    });
    const map: ShardMap = {
      clusterUid: cluster.metadata!.uid!,
      epoch,
      shards: spec.shards,
      replicationFactor: spec.replicationFactor,
      writeConcern: spec.writeConcern,
      retryPolicy: spec.retryPolicy,
      agents: infos,
      assignments,
    };
    const { push, unanswered } = mapPushTargets(agents.values(), epoch);
    // Push targets answered their status call, so each has its pod IP.
    const results = await Promise.allSettled(
      push.map((n) => this.d.agents.pushMap(agentUrl(agents.get(n)!.ip!), token, map, spec.retryPolicy)),
    );
    let failures = 0;
    results.forEach((r, i) => {
      this.d.metrics.mapPushes.inc({ result: r.status === 'fulfilled' ? 'success' : 'error' });
      if (r.status === 'rejected') {
        failures++;
        log.warn({ agent: push[i], epoch, err: r.reason }, 'shard map push failed');
      }
    });
    return failures + unanswered.length;
  }

  private requeueAfter(
    decision: Plan,
    spec: ResolvedSpec,
    agents: ReadonlyMap<string, AgentObservation>,
    assignments: NonNullable<PivotClusterStatus['assignments']>,
    pushFailures: number,
    now: number,
    epoch: number,
  ): number {
    if (
      decision.assignments ||
      decision.operation ||
      decision.waiting ||
      decision.deletePod ||
      pushFailures > 0
    )
      return BUSY_REQUEUE_MS;
    if (decision.refusal) return BUSY_REQUEUE_MS;
    // A pivot inside its grace period: look again exactly when it would expire.
    let next = this.d.resyncMs ?? RESYNC_MS;
    for (const a of assignments) {
      const h = pivotHealth(agents.get(a.pivot), now, spec.notReadyGraceMs, epoch);
      if (!h.failed && h.since !== null)
        next = Math.min(next, Math.max(50, h.since + spec.notReadyGraceMs - now));
    }
    for (const a of agents.values())
      if (!a.podReady || a.status === null) next = Math.min(next, BUSY_REQUEUE_MS);
    return next;
  }
}

export const agentUrl = (ip: string) =>
  ip.includes(':') ? `http://[${ip}]:${AGENT_PORT}` : `http://${ip}:${AGENT_PORT}`;
