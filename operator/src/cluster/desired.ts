// Pure: the children of a PivotCluster as the operator wants them, ready for server-side apply.
import type {
  V1OwnerReference,
  V1PodDisruptionBudget,
  V1Secret,
  V1Service,
  V1StatefulSet,
} from '@kubernetes/client-node';
import { API_VERSION, AGENT_PORT, KIND, type PivotCluster } from './types.ts';

export const DATA_DIR = '/var/lib/pivot';
export const TOKEN_DIR = '/etc/pivot/auth';
export const TOKEN_KEY = 'token';

export function selectorLabels(cluster: PivotCluster): Record<string, string> {
  return { 'app.kubernetes.io/name': 'pivot-agent', 'app.kubernetes.io/instance': cluster.metadata!.name! };
}

/** The label selector string of status.selector (scale subresource), keys sorted. */
export function selectorString(cluster: PivotCluster): string {
  return Object.entries(selectorLabels(cluster))
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

export function commonLabels(cluster: PivotCluster, version: string): Record<string, string> {
  return {
    ...selectorLabels(cluster),
    'app.kubernetes.io/component': 'agent',
    'app.kubernetes.io/part-of': 'pivot',
    'app.kubernetes.io/managed-by': 'pivot-operator',
    'app.kubernetes.io/version': version,
  };
}

export function ownerReference(cluster: PivotCluster): V1OwnerReference {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: cluster.metadata!.name!,
    uid: cluster.metadata!.uid!,
    controller: true,
    blockOwnerDeletion: true,
  };
}

export const headlessServiceName = (cluster: PivotCluster) => `${cluster.metadata!.name}-agents`;
export const authSecretName = (cluster: PivotCluster) =>
  cluster.spec.auth?.secretName ?? `${cluster.metadata!.name}-auth`;

const meta = (cluster: PivotCluster, name: string, version: string) => ({
  name,
  namespace: cluster.metadata!.namespace,
  labels: commonLabels(cluster, version),
  ownerReferences: [ownerReference(cluster)],
});

export interface DesiredOptions {
  /** Agent image when the spec names none. */
  defaultImage: string;
  /** Version for the app.kubernetes.io/version label. */
  version: string;
  /** StatefulSet size: spec.replicas, or more while agents being removed still hold shards. */
  statefulSetReplicas: number;
}

export function desiredStatefulSet(cluster: PivotCluster, o: DesiredOptions): V1StatefulSet {
  const name = cluster.metadata!.name!;
  const spec = cluster.spec;
  const labels = commonLabels(cluster, o.version);
  const spreadSelector = { matchLabels: selectorLabels(cluster) };
  return {
    apiVersion: 'apps/v1',
    kind: 'StatefulSet',
    metadata: meta(cluster, name, o.version),
    spec: {
      replicas: o.statefulSetReplicas,
      serviceName: headlessServiceName(cluster),
      // Pods start together (no ordinal serialisation); the operator, not the StatefulSet
      // controller, decides when a pod is replaced during an update (role-aware rollout).
      podManagementPolicy: 'Parallel',
      updateStrategy: { type: 'OnDelete' },
      persistentVolumeClaimRetentionPolicy: {
        whenDeleted: spec.storage?.retentionPolicy ?? 'Retain',
        whenScaled: 'Retain',
      },
      selector: { matchLabels: selectorLabels(cluster) },
      template: {
        metadata: { labels },
        spec: {
          terminationGracePeriodSeconds: 30,
          enableServiceLinks: false,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: 65532,
            runAsGroup: 65532,
            fsGroup: 65532,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          ...(spec.nodeSelector ? { nodeSelector: spec.nodeSelector } : {}),
          ...(spec.tolerations ? { tolerations: spec.tolerations } : {}),
          affinity: (spec.affinity as never) ?? {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [
                {
                  weight: 100,
                  podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: spreadSelector },
                },
              ],
            },
          },
          topologySpreadConstraints: [
            {
              maxSkew: 1,
              topologyKey: 'topology.kubernetes.io/zone',
              whenUnsatisfiable: 'ScheduleAnyway',
              labelSelector: spreadSelector,
            },
          ],
          containers: [
            {
              name: 'agent',
              image: spec.image ?? o.defaultImage,
              ...(spec.imagePullPolicy ? { imagePullPolicy: spec.imagePullPolicy } : {}),
              ports: [{ name: 'http', containerPort: AGENT_PORT }],
              env: [
                { name: 'PIVOT_AGENT_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
                { name: 'PIVOT_CLUSTER_UID', value: cluster.metadata!.uid! },
                { name: 'PIVOT_LISTEN', value: `0.0.0.0:${AGENT_PORT}` },
                { name: 'PIVOT_ADVERTISE_URL', value: `http://$(POD_IP):${AGENT_PORT}` },
                { name: 'PIVOT_DATA_DIR', value: DATA_DIR },
                { name: 'PIVOT_AUTH_TOKEN_FILE', value: `${TOKEN_DIR}/${TOKEN_KEY}` },
              ],
              readinessProbe: {
                httpGet: { path: '/readyz', port: 'http' },
                periodSeconds: 1,
                timeoutSeconds: 1,
                failureThreshold: 1,
                successThreshold: 1,
              },
              livenessProbe: {
                httpGet: { path: '/healthz', port: 'http' },
                periodSeconds: 1,
                timeoutSeconds: 1,
                // Generous: a busy machine must not get a healthy agent killed.
                failureThreshold: 10,
              },
              ...(spec.resources ? { resources: spec.resources as never } : {}),
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'] },
              },
              volumeMounts: [
                { name: 'data', mountPath: DATA_DIR },
                { name: 'auth', mountPath: TOKEN_DIR, readOnly: true },
              ],
            },
          ],
          volumes: [
            {
              name: 'auth',
              secret: { secretName: authSecretName(cluster), items: [{ key: TOKEN_KEY, path: TOKEN_KEY }] },
            },
          ],
        },
      },
      volumeClaimTemplates: [
        {
          metadata: { name: 'data', labels: selectorLabels(cluster) },
          spec: {
            accessModes: ['ReadWriteOnce'],
            resources: { requests: { storage: spec.storage?.size ?? '1Gi' } },
            ...(spec.storage?.storageClassName ? { storageClassName: spec.storage.storageClassName } : {}),
          },
        },
      ],
    },
  };
}

export function desiredHeadlessService(cluster: PivotCluster, version: string): V1Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(cluster, headlessServiceName(cluster), version),
    spec: {
      clusterIP: 'None',
      // Peers and the operator reach agents that are still catching up.
      publishNotReadyAddresses: true,
      selector: selectorLabels(cluster),
      ports: [{ name: 'http', port: AGENT_PORT, targetPort: 'http' as never }],
    },
  };
}

export function desiredClientService(cluster: PivotCluster, version: string): V1Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(cluster, cluster.metadata!.name!, version),
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(cluster),
      ports: [{ name: 'http', port: AGENT_PORT, targetPort: 'http' as never }],
    },
  };
}

export function desiredPodDisruptionBudget(cluster: PivotCluster, version: string): V1PodDisruptionBudget {
  return {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: meta(cluster, cluster.metadata!.name!, version),
    spec: { maxUnavailable: 1 as never, selector: { matchLabels: selectorLabels(cluster) } },
  };
}

/** The generated auth Secret; created once (never applied again, so the token stays stable). */
export function generatedAuthSecret(cluster: PivotCluster, version: string, token: string): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: meta(cluster, authSecretName(cluster), version),
    type: 'Opaque',
    stringData: { [TOKEN_KEY]: token },
  };
}
