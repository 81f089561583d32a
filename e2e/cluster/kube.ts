// Helpers for tests against the local cluster started by global-setup.ts.
import { apiClient, ApiError, type ApiClient } from '../../hack/local-cluster/api.ts';
import { certPaths } from '../../hack/local-cluster/certs.ts';
import { readClusterState, type ClusterState } from '../../hack/local-cluster/cluster.ts';

export { waitFor } from '../../hack/local-cluster/run.ts';

export interface TestCluster {
  state: ClusterState;
  /** Authenticated as the cluster admin (system:masters). */
  api: ApiClient;
  /** A client that authenticates with a bearer token only (e.g. a service account's). */
  as: (token: string) => ApiClient;
}

export function testCluster(): TestCluster {
  const statePath = process.env.PIVOT_CLUSTER_STATE;
  if (!statePath)
    throw new Error(
      'PIVOT_CLUSTER_STATE is not set: run through the jest `cluster` project (global-setup.ts)',
    );
  const state = readClusterState(statePath);
  const certs = certPaths(state.certDir);
  return {
    state,
    api: apiClient(state.apiServerUrl, certs),
    as: (token) => apiClient(state.apiServerUrl, certs, token),
  };
}

export function isStatus(err: unknown, status: number): boolean {
  return err instanceof ApiError && err.status === status;
}

export async function createNamespace(api: ApiClient, prefix: string): Promise<string> {
  const name = `${prefix}-${Date.now().toString(36)}`;
  await api.call('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  return name;
}

/** Deletes a namespace without waiting (teardown); tests that check deletion wait themselves. */
export async function deleteNamespace(api: ApiClient, name: string): Promise<void> {
  await api.call('DELETE', `/api/v1/namespaces/${name}`).catch((err) => {
    if (!isStatus(err, 404)) throw err;
  });
}

export interface Pod {
  metadata: { name: string; uid: string; deletionTimestamp?: string; creationTimestamp: string };
  spec: { nodeName?: string };
  status: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string; lastTransitionTime?: string }[];
    containerStatuses?: {
      ready: boolean;
      restartCount: number;
      state: { running?: object; waiting?: { reason: string; message?: string }; terminated?: object };
    }[];
  };
}

export function isReady(pod: Pod): boolean {
  return pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
}

export async function listPods(api: ApiClient, ns: string, selector: string): Promise<Pod[]> {
  const list = await api.call<{ items: Pod[] }>(
    'GET',
    `/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(selector)}`,
  );
  return list.items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

/** GET/PUT against a pod's own address (the pod's network namespace on the cluster bridge). */
export async function podHttp<T>(
  ip: string,
  path: string,
  init: { method?: string; body?: string } = {},
): Promise<T> {
  const res = await fetch(`http://${ip}:8080${path}`, { ...init, signal: AbortSignal.timeout(5000) });
  return (await res.json()) as T;
}

export { isAlive } from '../../hack/local-cluster/cluster.ts';
