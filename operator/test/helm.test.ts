// `helm install` of charts/pivot: the CRD, the operator Deployment (2 replicas, one leader) and
// least-privilege RBAC for its ServiceAccount.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { AuthorizationV1Api } from '@kubernetes/client-node';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, startEnv, waitFor, type TestEnv } from './harness.ts';

jest.setTimeout(180_000);

let env: TestEnv;
beforeAll(async () => {
  env = await startEnv('pivot-helm');
}, 240_000);
afterAll(async () => {
  if (env) await helm('uninstall', 'pivot', '-n', env.namespace);
  await env?.teardown();
});

function helm(...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      join(env.binDir, 'helm'),
      args,
      {
        env: {
          ...process.env,
          KUBECONFIG: env.kubeconfigPath,
          HELM_CACHE_HOME: join(env.dir, 'helm-cache'),
          HELM_CONFIG_HOME: join(env.dir, 'helm-config'),
        },
      },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
    );
  });
}

describe('helm install pivot charts/pivot', () => {
  it('installs the CRD, the operator and RBAC; the operator elects one leader', async () => {
    const chart = new URL('charts/pivot', REPO_ROOT).pathname;
    const install = await helm(
      'install',
      'pivot',
      chart,
      '-n',
      env.namespace,
      '--set',
      `watchNamespace=${env.namespace}`,
    );
    expect(install).toMatchObject({ code: 0 });
    const deployment = await env.apps.readNamespacedDeployment({
      name: 'pivot-operator',
      namespace: env.namespace,
    });
    expect(deployment.spec!.replicas).toBe(2);
    expect(deployment.spec!.template.spec!.securityContext!.runAsNonRoot).toBe(true);
    await waitFor(
      async () => {
        const d = await env.apps.readNamespacedDeployment({
          name: 'pivot-operator',
          namespace: env.namespace,
        });
        return (d.status?.readyReplicas ?? 0) === 2;
      },
      { timeoutMs: 90_000, intervalMs: 500, message: 'both operator pods ready' },
    );
    const lease = await waitFor(
      async () => {
        const l = await env.coordination.readNamespacedLease({
          name: 'pivot-operator',
          namespace: env.namespace,
        });
        return l.spec?.holderIdentity ? l : null;
      },
      { timeoutMs: 30_000, message: 'the operator lease held' },
    );
    expect(lease.spec!.holderIdentity).toMatch(/^pivot-operator-/);
  });

  it.each([
    { verb: 'watch', resource: 'pivotclusters', group: 'pivot.dev', subresource: '', allowed: true },
    { verb: 'patch', resource: 'pivotclusters', group: 'pivot.dev', subresource: 'status', allowed: true },
    { verb: 'delete', resource: 'pivotclusters', group: 'pivot.dev', subresource: '', allowed: false },
    { verb: 'patch', resource: 'statefulsets', group: 'apps', subresource: '', allowed: true },
    { verb: 'delete', resource: 'statefulsets', group: 'apps', subresource: '', allowed: false },
    { verb: 'delete', resource: 'pods', group: '', subresource: '', allowed: true },
    { verb: 'create', resource: 'secrets', group: '', subresource: '', allowed: true },
    { verb: 'list', resource: 'secrets', group: '', subresource: '', allowed: false },
    { verb: 'delete', resource: 'persistentvolumeclaims', group: '', subresource: '', allowed: false },
    { verb: 'create', resource: 'deployments', group: 'apps', subresource: '', allowed: false },
  ])(
    'the operator may $verb $resource ($subresource): $allowed',
    async ({ verb, resource, group, subresource, allowed }) => {
      const authz = env.kc.makeApiClient(AuthorizationV1Api);
      const review = await authz.createSubjectAccessReview({
        body: {
          spec: {
            user: `system:serviceaccount:${env.namespace}:pivot-operator`,
            resourceAttributes: { namespace: env.namespace, verb, resource, group, subresource },
          },
        },
      });
      expect(review.status!.allowed).toBe(allowed);
    },
  );
});
