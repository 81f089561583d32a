// Evidence of who wrote what to the API server: a local cluster started with the audit log on
// (hack/local-cluster's auditLog option), and a ServiceAccount identity for the operator so its
// requests are told apart from the tests', the kubelet stand-in's and the controllers'.
import { KubeConfig, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { open, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readClusterState, readState, startLocalCluster } from '../../hack/local-cluster/cluster.ts';
import { startEnv, type TestEnv } from './harness.ts';

export interface AuditEvent {
  verb: string;
  user: { username: string };
  objectRef?: {
    apiGroup?: string;
    resource?: string;
    subresource?: string;
    namespace?: string;
    name?: string;
  };
  responseStatus?: { code?: number };
  stageTimestamp?: string;
}

export const WRITE_VERBS: ReadonlySet<string> = new Set([
  'create',
  'update',
  'patch',
  'delete',
  'deletecollection',
]);

export interface AuditedEnv {
  env: TestEnv;
  auditLogPath: string;
}

/**
 * A TestEnv on a cluster whose API server keeps an audit log: the run's shared cluster when it was
 * started with the audit log on, otherwise one started here (and removed by env.teardown()).
 */
export async function startAuditedEnv(name: string): Promise<AuditedEnv> {
  const statePath = process.env.PIVOT_CLUSTER_STATE;
  const shared = statePath ? readClusterState(statePath).auditLogPath : undefined;
  if (shared) return { env: await startEnv(name), auditLogPath: shared };

  const own = await startLocalCluster({
    name: `${name}-${process.pid}`,
    nodes: 3,
    ownerPid: process.pid,
    auditLog: true,
    log: () => {},
  });
  const before = process.env.PIVOT_TEST_KUBECONFIG;
  let env: TestEnv;
  try {
    process.env.PIVOT_TEST_KUBECONFIG = own.kubeconfigPath;
    env = await startEnv(name);
  } catch (err) {
    await own.stop();
    throw err;
  } finally {
    if (before === undefined) delete process.env.PIVOT_TEST_KUBECONFIG;
    else process.env.PIVOT_TEST_KUBECONFIG = before;
  }
  const teardown = env.teardown.bind(env);
  env.teardown = async () => {
    await teardown();
    await own.stop();
  };
  return { env, auditLogPath: (await readState(own.name))!.auditLogPath! };
}

export interface Identity {
  /** A kubeconfig that authenticates as the ServiceAccount (token, the cluster's CA). */
  kubeconfigPath: string;
  /** The name the API server (and its audit log) knows it by. */
  username: string;
  /** Removes the cluster-wide binding (the ServiceAccount goes with the namespace). */
  remove(): Promise<void>;
}

/** A ServiceAccount in env's namespace bound to cluster-admin, and a kubeconfig for it. */
export async function serviceAccountIdentity(env: TestEnv, name: string): Promise<Identity> {
  const namespace = env.namespace;
  await env.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
  const binding = `${namespace}-${name}`;
  const rbac = env.kc.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: binding },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
  });
  const { status } = await env.core.createNamespacedServiceAccountToken({
    name,
    namespace,
    body: { spec: { audiences: [], expirationSeconds: 3 * 3600 } },
  });
  const cluster = env.kc.getCurrentCluster()!;
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [cluster],
    users: [{ name, token: status!.token }],
    contexts: [{ name, cluster: cluster.name, user: name, namespace }],
    currentContext: name,
  });
  const kubeconfigPath = join(env.dir, `${name}.kubeconfig`);
  await writeFile(kubeconfigPath, kc.exportConfig(), { mode: 0o600 });
  return {
    kubeconfigPath,
    username: `system:serviceaccount:${namespace}:${name}`,
    remove: () => rbac.deleteClusterRoleBinding({ name: binding }).then(() => undefined),
  };
}

/** The audit log's current length: where the events of what happens next begin. */
export async function auditMark(path: string): Promise<number> {
  return (await stat(path)).size;
}

/** Audit events written from byte `from` (an auditMark) on; a line still being written is left out. */
export async function auditEvents(path: string, from = 0): Promise<AuditEvent[]> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const buffer = Buffer.alloc(Math.max(0, size - from));
    await file.read(buffer, 0, buffer.length, from);
    const text = buffer.toString('utf8');
    const complete = text.slice(0, text.lastIndexOf('\n') + 1);
    return complete
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as AuditEvent);
  } finally {
    await file.close();
  }
}

/** The write requests `username` sent, as `verb resource[/subresource] namespace/name (code)`. */
export function writesBy(events: readonly AuditEvent[], username: string): string[] {
  return events
    .filter((e) => e.user.username === username && WRITE_VERBS.has(e.verb))
    .map((e) => {
      const r = e.objectRef ?? {};
      const resource = [r.apiGroup ? `${r.resource}.${r.apiGroup}` : r.resource, r.subresource]
        .filter(Boolean)
        .join('/');
      return `${e.verb} ${resource} ${r.namespace ?? ''}/${r.name ?? ''} (${e.responseStatus?.code ?? '?'})`;
    });
}
