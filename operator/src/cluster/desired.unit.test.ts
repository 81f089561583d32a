import { describe, expect, it } from '@jest/globals';
import {
  authSecretName,
  desiredClientService,
  desiredHeadlessService,
  desiredPodDisruptionBudget,
  desiredStatefulSet,
  generatedAuthSecret,
  selectorString,
} from './desired.ts';
import type { PivotCluster } from './types.ts';

const cluster = (spec: Partial<PivotCluster['spec']> = {}): PivotCluster => ({
  apiVersion: 'pivot.dev/v1alpha1',
  kind: 'PivotCluster',
  metadata: { name: 'demo', namespace: 'ns', uid: 'uid-1', generation: 1 },
  spec: { replicas: 3, shards: 16, replicationFactor: 3, writeConcern: 'majority', ...spec },
});
const options = { defaultImage: 'pivot/node-agent:0.1.0', version: '0.1.0', statefulSetReplicas: 3 };

describe('desiredStatefulSet', () => {
  const sts = desiredStatefulSet(cluster(), options);
  const pod = sts.spec!.template.spec!;
  const container = pod.containers[0]!;
  const env = Object.fromEntries(container.env!.map((e) => [e.name, e.value ?? e.valueFrom]));

  it('lets the operator, not the StatefulSet controller, order pod starts and replacements', () => {
    expect(sts.spec!.podManagementPolicy).toBe('Parallel');
    expect(sts.spec!.updateStrategy).toEqual({ type: 'OnDelete' });
    expect(sts.spec!.serviceName).toBe('demo-agents');
  });

  it('gives every agent its identity, cluster UID, advertise URL, data dir and token file', () => {
    expect(env).toEqual({
      PIVOT_AGENT_NAME: { fieldRef: { fieldPath: 'metadata.name' } },
      POD_IP: { fieldRef: { fieldPath: 'status.podIP' } },
      PIVOT_CLUSTER_UID: 'uid-1',
      PIVOT_LISTEN: '0.0.0.0:8080',
      PIVOT_ADVERTISE_URL: 'http://$(POD_IP):8080',
      PIVOT_DATA_DIR: '/var/lib/pivot',
      PIVOT_AUTH_TOKEN_FILE: '/etc/pivot/auth/token',
    });
    expect(container.image).toBe('pivot/node-agent:0.1.0');
    expect(pod.volumes![0]!.secret!.secretName).toBe('demo-auth');
  });

  it('probes readiness and liveness every second and runs as non-root', () => {
    expect(container.readinessProbe).toMatchObject({ httpGet: { path: '/readyz' }, periodSeconds: 1 });
    expect(container.livenessProbe).toMatchObject({ httpGet: { path: '/healthz' }, periodSeconds: 1 });
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });
    expect(container.securityContext).toMatchObject({
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    });
  });

  it('claims one volume per agent and spreads agents across nodes and zones', () => {
    expect(sts.spec!.volumeClaimTemplates![0]!.spec!.resources!.requests).toEqual({ storage: '1Gi' });
    expect(
      pod.affinity!.podAntiAffinity!.preferredDuringSchedulingIgnoredDuringExecution![0]!.podAffinityTerm
        .topologyKey,
    ).toBe('kubernetes.io/hostname');
    expect(pod.topologySpreadConstraints![0]!.topologyKey).toBe('topology.kubernetes.io/zone');
  });

  it.each([
    [{}, 'Retain'],
    [{ storage: { retentionPolicy: 'Delete' as const } }, 'Delete'],
  ])('PVC retention on delete follows spec.storage.retentionPolicy (%j)', (spec, whenDeleted) => {
    expect(desiredStatefulSet(cluster(spec), options).spec!.persistentVolumeClaimRetentionPolicy).toEqual({
      whenDeleted,
      whenScaled: 'Retain',
    });
  });

  it('honours spec overrides: image, storage class, affinity, statefulSetReplicas', () => {
    const s = desiredStatefulSet(
      cluster({
        image: 'pivot/node-agent:dev',
        storage: { size: '5Gi', storageClassName: 'fast' },
        affinity: { x: 1 },
      }),
      { ...options, statefulSetReplicas: 5 },
    );
    expect(s.spec!.replicas).toBe(5);
    expect(s.spec!.template.spec!.containers[0]!.image).toBe('pivot/node-agent:dev');
    expect(s.spec!.volumeClaimTemplates![0]!.spec).toMatchObject({
      storageClassName: 'fast',
      resources: { requests: { storage: '5Gi' } },
    });
    expect(s.spec!.template.spec!.affinity).toEqual({ x: 1 });
  });
});

describe('other children', () => {
  const c = cluster();
  it.each([
    ['headless Service', desiredHeadlessService(c, '0.1.0')],
    ['client Service', desiredClientService(c, '0.1.0')],
    ['PodDisruptionBudget', desiredPodDisruptionBudget(c, '0.1.0')],
    ['StatefulSet', desiredStatefulSet(c, options)],
    ['generated Secret', generatedAuthSecret(c, '0.1.0', 't')],
  ])('%s is owned by the PivotCluster and labelled', (_n, obj) => {
    expect(obj.metadata!.ownerReferences).toEqual([
      {
        apiVersion: 'pivot.dev/v1alpha1',
        kind: 'PivotCluster',
        name: 'demo',
        uid: 'uid-1',
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    expect(obj.metadata!.namespace).toBe('ns');
    expect(obj.metadata!.labels).toMatchObject({
      'app.kubernetes.io/name': 'pivot-agent',
      'app.kubernetes.io/instance': 'demo',
      'app.kubernetes.io/managed-by': 'pivot-operator',
      'app.kubernetes.io/version': '0.1.0',
    });
  });

  it('headless Service publishes not-ready agents so catching-up peers are reachable', () => {
    expect(desiredHeadlessService(c, 'v').spec).toMatchObject({
      clusterIP: 'None',
      publishNotReadyAddresses: true,
    });
  });

  it('PDB allows one agent down at a time', () => {
    expect(desiredPodDisruptionBudget(c, 'v').spec!.maxUnavailable).toBe(1);
  });

  it('uses the named auth secret when given', () => {
    expect(authSecretName(cluster({ auth: { secretName: 'mine' } }))).toBe('mine');
  });

  it('status.selector matches the pod labels', () => {
    expect(selectorString(c)).toBe('app.kubernetes.io/instance=demo,app.kubernetes.io/name=pivot-agent');
  });
});
