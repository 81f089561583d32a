// RBAC is enforced by the real API server: a service account's token is refused until a Role
// grants it the verb, and only within what the Role grants.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ApiError } from '../../hack/local-cluster/api.ts';
import { createNamespace, deleteNamespace, testCluster, waitFor, type Pod } from './kube.ts';

const { api, as, state } = testCluster();

async function refusal(call: Promise<unknown>): Promise<{ status: number; message: string }> {
  try {
    await call;
  } catch (err) {
    if (err instanceof ApiError) return { status: err.status, message: err.message };
    throw err;
  }
  throw new Error('expected the API server to refuse the request');
}

describe('RBAC on the local cluster', () => {
  let ns = '';
  beforeAll(async () => {
    ns = await createNamespace(api, 'rbac');
  });
  afterAll(async () => {
    await deleteNamespace(api, ns);
  });

  it('a service account without rights is refused; a RoleBinding grants exactly its Role', async () => {
    await api.call('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: 'reader' } });
    const { status } = await api.call<{ status: { token: string } }>(
      'POST',
      `/api/v1/namespaces/${ns}/serviceaccounts/reader/token`,
      { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 600 } },
    );
    const reader = as(status.token);
    const denied = await refusal(reader.call('GET', `/api/v1/namespaces/${ns}/configmaps`));
    expect(denied.status).toBe(403);
    expect(denied.message).toContain(`system:serviceaccount:${ns}:reader`);
    expect(denied.message).toContain('cannot list resource \\"configmaps\\"');

    await api.call('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
      metadata: { name: 'configmap-reader' },
      rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list'] }],
    });
    await api.call('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'reader-reads-configmaps' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'configmap-reader' },
      subjects: [{ kind: 'ServiceAccount', name: 'reader', namespace: ns }],
    });
    const list = await waitFor(
      'the RoleBinding to take effect',
      () => reader.call<{ kind: string }>('GET', `/api/v1/namespaces/${ns}/configmaps`),
      30_000,
    );
    expect(list.kind).toBe('ConfigMapList');
    // Still refused: a verb the Role does not grant, and another namespace.
    expect(
      (await refusal(reader.call('POST', `/api/v1/namespaces/${ns}/configmaps`, { metadata: { name: 'x' } })))
        .status,
    ).toBe(403);
    expect((await refusal(reader.call('GET', '/api/v1/namespaces/default/configmaps'))).status).toBe(403);
  }, 60_000);

  it('a pod reaches the API server through KUBERNETES_SERVICE_HOST/PORT with its own service-account token', async () => {
    await api.call('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: 'in-pod' } });
    await api.call('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
      metadata: { name: 'in-pod' },
      rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['list'] }],
    });
    await api.call('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'in-pod' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'in-pod' },
      subjects: [{ kind: 'ServiceAccount', name: 'in-pod', namespace: ns }],
    });
    // The standard in-cluster recipe: projected token, CA and namespace files, service env vars.
    const script = [
      'sa=/var/run/secrets/kubernetes.io/serviceaccount',
      'for r in configmaps pods; do',
      '  curl -s -o /dev/null -w "$r %{http_code}\\n" --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" \\',
      '    https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat $sa/namespace)/$r',
      'done',
    ].join('\n');
    const created = await api.call<Pod>('POST', `/api/v1/namespaces/${ns}/pods`, {
      metadata: { name: 'in-cluster-client' },
      spec: {
        serviceAccountName: 'in-pod',
        restartPolicy: 'Never',
        containers: [{ name: 'client', image: 'pivot/testserver:dev', command: ['sh', '-c', script] }],
      },
    });
    const done = await waitFor(
      'the in-cluster client pod to finish',
      async () => {
        const p = await api.call<Pod>('GET', `/api/v1/namespaces/${ns}/pods/in-cluster-client`);
        return p.status.phase === 'Succeeded' || p.status.phase === 'Failed' ? p : undefined;
      },
      60_000,
    );
    const output = await readFile(join(state.dir, 'pods', created.metadata.uid, 'client.log'), 'utf8');
    expect({ phase: done.status.phase, output }).toEqual({
      phase: 'Succeeded',
      output: 'configmaps 200\npods 403\n',
    });
  }, 90_000);
});
