// `helm install` of charts/pivot. On the run's shared cluster (where the test harness has already
// applied the CRD): the operator Deployment (2 replicas, one leader) and least-privilege RBAC for
// its ServiceAccount. On a cluster of its own that has never seen the CRD: the chart installs it,
// Established and equal to crds/pivotcluster.yaml, and uninstalling keeps it. A separate cluster
// because deleting the CRD from the shared one would delete other test files' PivotClusters.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import {
  ApiextensionsV1Api,
  AuthorizationV1Api,
  CustomObjectsApi,
  KubeConfig,
  loadYaml,
} from '@kubernetes/client-node';
import type { V1CustomResourceDefinition } from '@kubernetes/client-node';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readClusterState, startLocalCluster, type LocalCluster } from '../../hack/local-cluster/cluster.ts';
import { GROUP, PLURAL, VERSION } from '../src/cluster/types.ts';
import { REPO_ROOT, pivotCluster, startEnv, waitFor, type TestEnv } from './harness.ts';

jest.setTimeout(180_000);

const CHART = new URL('charts/pivot', REPO_ROOT).pathname;

interface HelmTarget {
  binDir: string;
  kubeconfigPath: string;
  dir: string;
}

function helm(target: HelmTarget, ...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      join(target.binDir, 'helm'),
      args,
      {
        env: {
          ...process.env,
          KUBECONFIG: target.kubeconfigPath,
          HELM_CACHE_HOME: join(target.dir, 'helm-cache'),
          HELM_CONFIG_HOME: join(target.dir, 'helm-config'),
        },
      },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
    );
  });
}

describe('helm install charts/pivot on a cluster without the CRD', () => {
  const CRD_NAME = `${PLURAL}.${GROUP}`;
  const namespace = 'pivot-system';
  let cluster: LocalCluster | null = null;
  let target: HelmTarget;
  let crds: ApiextensionsV1Api;
  let kc: KubeConfig;

  beforeAll(async () => {
    cluster = await startLocalCluster({
      name: `helm-crd-${process.pid}`,
      nodes: 1,
      ownerPid: process.pid,
      log: () => {},
    });
    target = {
      binDir: readClusterState(cluster.statePath).binDir,
      kubeconfigPath: cluster.kubeconfigPath,
      dir: mkdtempSync(join(tmpdir(), 'pivot-helm-crd-')),
    };
    kc = new KubeConfig();
    kc.loadFromFile(cluster.kubeconfigPath);
    crds = kc.makeApiClient(ApiextensionsV1Api);
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it('installs crds/pivotcluster.yaml as it is, Established and serving; uninstall keeps it', async () => {
    const absent = await crds.readCustomResourceDefinition({ name: CRD_NAME }).then(
      () => 'present',
      (e: { code?: number }) => e.code,
    );
    expect(absent).toBe(404);

    // No operator pods (replicaCount 0): only what the chart installs matters here.
    const install = await helm(
      target,
      'install',
      'pivot',
      CHART,
      '-n',
      namespace,
      '--create-namespace',
      '--set',
      'replicaCount=0',
    );
    expect(install).toMatchObject({ code: 0 });

    const served = await waitFor(
      async () => {
        const crd = await crds.readCustomResourceDefinition({ name: CRD_NAME });
        const established = crd.status?.conditions?.some(
          (c) => c.type === 'Established' && c.status === 'True',
        );
        return established ? crd : null;
      },
      { timeoutMs: 30_000, message: `${CRD_NAME} Established` },
    );
    const file = loadYaml<V1CustomResourceDefinition>(
      readFileSync(new URL('crds/pivotcluster.yaml', REPO_ROOT), 'utf8'),
    );
    expect(served.metadata!.labels).toMatchObject(file.metadata!.labels!);
    // The schema exactly; the rest of the spec as written (the API server adds defaults).
    expect(served.spec.versions.map((v) => [v.name, v.schema?.openAPIV3Schema])).toEqual(
      file.spec.versions.map((v) => [v.name, v.schema?.openAPIV3Schema]),
    );
    expect(served.spec).toMatchObject(file.spec);
    expect(served.status!.acceptedNames).toMatchObject({ kind: 'PivotCluster', shortNames: ['pc', 'pivot'] });

    // It serves: a valid PivotCluster is stored with its defaults, an invalid one is refused.
    const custom = kc.makeApiClient(CustomObjectsApi);
    const created = (await custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      body: pivotCluster('fresh', { replicas: 3, replicationFactor: 3 }, namespace),
    })) as { metadata: { uid?: string } };
    expect(created.metadata.uid).toBeTruthy();
    const refused = await custom
      .createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural: PLURAL,
        body: pivotCluster('bad', { replicas: 1, replicationFactor: 3 }, namespace),
      })
      .then(
        () => 'created',
        (e: { code?: number }) => e.code,
      );
    expect(refused).toBe(422);

    // Helm never deletes CRDs from crds/: uninstalling keeps the CRD and so every PivotCluster.
    expect(await helm(target, 'uninstall', 'pivot', '-n', namespace)).toMatchObject({ code: 0 });
    await crds.readCustomResourceDefinition({ name: CRD_NAME });
    const kept = await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name: 'fresh',
    });
    expect(kept).toMatchObject({ metadata: { name: 'fresh' } });
  });
});

let env: TestEnv;

describe('helm install charts/pivot on the shared cluster', () => {
  beforeAll(async () => {
    env = await startEnv('pivot-helm');
  }, 240_000);
  afterAll(async () => {
    if (env) await helm(env, 'uninstall', 'pivot', '-n', env.namespace);
    await env?.teardown();
  });

  it('installs the operator and RBAC; the operator elects one leader', async () => {
    const install = await helm(
      env,
      'install',
      'pivot',
      CHART,
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
