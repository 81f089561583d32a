// Integration harness for the operator: a real control plane (the run's shared local cluster,
// PIVOT_TEST_KUBECONFIG, or one started here), the CRD applied, a namespace per test file,
// and operator processes run from this work tree that tests can kill -9 and restart.
import {
  AppsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  loadYaml,
  setHeaderOptions,
} from '@kubernetes/client-node';
import type { KubernetesObject, V1Pod } from '@kubernetes/client-node';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PivotClient, freePort, waitFor } from '../../e2e/agent/harness.ts';
import { shardForKey } from '../../lib/hash.ts';
import { readClusterState, startLocalCluster, type LocalCluster } from '../../hack/local-cluster/cluster.ts';
import { GROUP, PLURAL, VERSION, type PivotCluster } from '../src/cluster/types.ts';

export const REPO_ROOT = new URL('../../', import.meta.url);
const NODE = new URL('node_modules/node/bin/node', REPO_ROOT).pathname;
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export interface TestEnv {
  kubeconfigPath: string;
  /** Where the control-plane binaries (and helm) live. */
  binDir: string;
  namespace: string;
  kc: KubeConfig;
  core: CoreV1Api;
  apps: AppsV1Api;
  custom: CustomObjectsApi;
  coordination: CoordinationV1Api;
  objects: KubernetesObjectApi;
  dir: string;
  teardown(): Promise<void>;
}

/** Starts (or reuses, with PIVOT_TEST_KUBECONFIG) a cluster, applies the CRD, creates a namespace. */
export async function startEnv(name: string): Promise<TestEnv> {
  let cluster: LocalCluster | null = null;
  let statePath = process.env.PIVOT_CLUSTER_STATE;
  // The cluster project's globalSetup (e2e/cluster) starts one cluster per run and exports it.
  let kubeconfigPath =
    process.env.PIVOT_TEST_KUBECONFIG ??
    (process.env.PIVOT_CLUSTER_STATE ? process.env.KUBECONFIG : undefined);
  if (!kubeconfigPath) {
    cluster = await startLocalCluster({ name, nodes: 3, ownerPid: process.pid, log: () => {} });
    kubeconfigPath = cluster.kubeconfigPath;
    statePath = cluster.statePath;
  }
  const binDir = statePath ? readClusterState(statePath).binDir : (process.env.KUBEBUILDER_ASSETS ?? '');
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const crd = loadYaml<KubernetesObject>(readFileSync(new URL('crds/pivotcluster.yaml', REPO_ROOT), 'utf8'));
  await objects.patch(crd, undefined, undefined, 'pivot-tests', true, PatchStrategy.ServerSideApply);
  await waitFor(
    async () => {
      const got = await objects.read({
        apiVersion: 'apiextensions.k8s.io/v1',
        kind: 'CustomResourceDefinition',
        metadata: { name: `${PLURAL}.${GROUP}` },
      });
      const established = (
        got as { status?: { conditions?: { type: string; status: string }[] } }
      ).status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True');
      return established ? got : null;
    },
    { timeoutMs: 30_000, message: 'CRD established' },
  );
  const namespace = `${name}-${Date.now().toString(36)}`;
  const core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: namespace } } });
  return {
    kubeconfigPath,
    binDir,
    namespace,
    kc,
    core,
    apps: kc.makeApiClient(AppsV1Api),
    custom: kc.makeApiClient(CustomObjectsApi),
    coordination: kc.makeApiClient(CoordinationV1Api),
    objects,
    dir: mkdtempSync(join(tmpdir(), `${name}-`)),
    async teardown() {
      await core.deleteNamespace({ name: namespace }).catch(() => {});
      await cluster?.stop();
    },
  };
}

export interface OperatorOptions {
  /** --leader-elect; default true. */
  leaderElect?: boolean;
  /** More operator flags (docs/operations.md), e.g. `--resync-period=2s`. */
  flags?: string[];
}

/** One operator process from this work tree, talking to the test cluster. */
export class OperatorProcess {
  readonly identity: string;
  readonly metricsPort: number;
  readonly logFile: string;
  private child: ChildProcess | null = null;
  private readonly env: TestEnv;
  private readonly options: OperatorOptions;

  private constructor(env: TestEnv, identity: string, metricsPort: number, options: OperatorOptions) {
    this.env = env;
    this.identity = identity;
    this.metricsPort = metricsPort;
    this.options = options;
    this.logFile = join(env.dir, `${identity}.log`);
  }

  static async start(
    env: TestEnv,
    identity: string,
    options: OperatorOptions = {},
  ): Promise<OperatorProcess> {
    const op = new OperatorProcess(env, identity, await freePort(), options);
    op.spawn();
    await waitFor(async () => (await fetch(`http://127.0.0.1:${op.metricsPort}/readyz`)).ok, {
      timeoutMs: 30_000,
      message: () => `operator ${identity} ready; log:\n${op.tail()}`,
    });
    return op;
  }

  private spawn(): void {
    const out = openSync(this.logFile, 'a');
    this.child = spawn(
      NODE,
      [
        new URL('operator/src/main.ts', REPO_ROOT).pathname,
        `--namespace=${this.env.namespace}`,
        `--lease-namespace=${this.env.namespace}`,
        `--identity=${this.identity}`,
        `--metrics-addr=127.0.0.1:${this.metricsPort}`,
        `--leader-elect=${this.options.leaderElect ?? true}`,
        '--log-level=debug',
        ...(this.options.flags ?? []),
      ],
      { env: { ...process.env, KUBECONFIG: this.env.kubeconfigPath }, stdio: ['ignore', out, out] },
    );
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async metrics(): Promise<string> {
    return (await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`)).text();
  }

  /** SIGKILL the real process and wait until it is gone. */
  async kill9(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }

  tail(lines = 40): string {
    try {
      return readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

// ---- keys and data ----

/**
 * `count` top-level keys `${prefix}-<n>` that land on `shard` of `shards` (each also names a
 * collection there), as the agent harness's Cluster.keyOnShard finds them.
 */
export function keysOnShard(shard: number, shards: number, prefix: string, count: number): string[] {
  const keys: string[] = [];
  for (let i = 0; keys.length < count; i++) {
    if (i >= 100_000)
      throw new Error(`no ${count} keys with prefix ${prefix} on shard ${shard} of ${shards}`);
    const key = `${prefix}-${i}`;
    if (shardForKey(key, shards) === shard) keys.push(key);
  }
  return keys;
}

export const keyOnShard = (shard: number, shards: number, prefix: string): string =>
  keysOnShard(shard, shards, prefix, 1)[0]!;

/**
 * The keys of `written` that do not read back from `client` (strong reads) with the data written,
 * each with the answer it got: `[]` when every one does.
 */
export async function notReadBack(client: PivotClient, written: Map<string, unknown>): Promise<string[]> {
  const wrong: string[] = [];
  for (const [key, data] of written) {
    const reply = await client.get(key, { consistency: 'strong' });
    if (reply.status !== 200 || JSON.stringify(reply.body.data) !== JSON.stringify(data))
      wrong.push(`${key}: ${reply.status} ${reply.text.slice(0, 120)}`);
  }
  return wrong;
}

// ---- PivotCluster helpers ----

export function pivotCluster(
  name: string,
  spec: Partial<PivotCluster['spec']>,
  namespace: string,
): PivotCluster {
  return {
    apiVersion: `${GROUP}/${VERSION}`,
    kind: 'PivotCluster',
    metadata: { name, namespace },
    spec: {
      replicas: 3,
      shards: 8,
      replicationFactor: 3,
      writeConcern: 'majority',
      retryPolicy: { maxAttempts: 5, initialBackoff: '50ms', maxBackoff: '1s', multiplier: 2, timeout: '1s' },
      failover: { notReadyGracePeriod: '1s' },
      ...spec,
    } as PivotCluster['spec'],
  };
}

export async function createCluster(env: TestEnv, pc: PivotCluster): Promise<void> {
  await env.custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: env.namespace,
    plural: PLURAL,
    body: pc,
  });
}

export async function getCluster(env: TestEnv, name: string): Promise<PivotCluster> {
  return (await env.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: env.namespace,
    plural: PLURAL,
    name,
  })) as PivotCluster;
}

export async function patchSpec(
  env: TestEnv,
  name: string,
  spec: Partial<PivotCluster['spec']>,
): Promise<void> {
  await env.custom.patchNamespacedCustomObject(
    { group: GROUP, version: VERSION, namespace: env.namespace, plural: PLURAL, name, body: { spec } },
    MERGE_PATCH,
  );
}

const condition = (pc: PivotCluster, type: string) => pc.status?.conditions?.find((c) => c.type === type);

/** Ready=True, Progressing=False at the current generation: every shard has rf serving copies. */
export async function waitStable(
  env: TestEnv,
  name: string,
  timeoutMs: number,
  what = 'stable',
): Promise<PivotCluster> {
  let last: PivotCluster | undefined;
  return waitFor(
    async () => {
      last = await getCluster(env, name);
      const ok =
        last.status?.observedGeneration === last.metadata?.generation &&
        condition(last, 'Ready')?.status === 'True' &&
        condition(last, 'Progressing')?.status === 'False';
      return ok ? last : null;
    },
    {
      timeoutMs,
      intervalMs: 250,
      message: () =>
        `${name} ${what}; last status: ${JSON.stringify({ ...last?.status, assignments: undefined })}`,
    },
  );
}

export async function agentPods(env: TestEnv, name: string): Promise<V1Pod[]> {
  const list = await env.core.listNamespacedPod({
    namespace: env.namespace,
    labelSelector: `app.kubernetes.io/instance=${name},app.kubernetes.io/name=pivot-agent`,
  });
  return list.items;
}

/** The agent's process id, as the kubelet stand-in reports it (containerID process://<pid>). */
export function processId(pod: V1Pod): number {
  const id = pod.status?.containerStatuses?.[0]?.containerID ?? '';
  const pid = Number(id.replace('process://', ''));
  if (!Number.isInteger(pid) || pid <= 0)
    throw new Error(`pod ${pod.metadata?.name} has no process id (${id})`);
  return pid;
}

export async function authToken(env: TestEnv, name: string): Promise<string> {
  const secret = await env.core.readNamespacedSecret({ name: `${name}-auth`, namespace: env.namespace });
  return Buffer.from(secret.data!.token!, 'base64').toString('utf8');
}

/** A client for each agent pod, by pod name. */
export async function agentClients(env: TestEnv, name: string): Promise<Map<string, PivotClient>> {
  const token = await authToken(env, name);
  const pods = await agentPods(env, name);
  return new Map(
    pods
      .filter((p) => p.status?.podIP && !p.metadata?.deletionTimestamp)
      .map((p) => [p.metadata!.name!, new PivotClient(`http://${p.status!.podIP}:8080`, token, 5_000)]),
  );
}

export { waitFor };
