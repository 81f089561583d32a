// The PivotCluster resource (crds/pivotcluster.yaml) and what the operator observes of its agents.
import type { KubernetesObject } from '@kubernetes/client-node';
import {
  parseDuration,
  retryPolicyFromSpec,
  type RetryPolicy,
  type RetryPolicySpec,
} from '../../../lib/retry.ts';
import type { ShardAssignment, WriteConcern } from '../../../lib/shard-map.ts';

export const GROUP = 'pivot.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'PivotCluster';
export const PLURAL = 'pivotclusters';
export const FIELD_MANAGER = 'pivot-operator';
export const CONTROLLER_NAME = 'pivotcluster';
/** `pivot.dev/paused: "true"` stops reconciling one cluster (manual surgery). */
export const PAUSE_ANNOTATION = 'pivot.dev/paused';
export const AGENT_PORT = 8080;

export interface PivotClusterSpec {
  replicas: number;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
  retryPolicy?: RetryPolicySpec;
  failover?: { notReadyGracePeriod?: string };
  storage?: { size?: string; storageClassName?: string; retentionPolicy?: 'Retain' | 'Delete' };
  image?: string;
  imagePullPolicy?: string;
  resources?: Record<string, unknown>;
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  affinity?: Record<string, unknown>;
  auth?: { secretName?: string };
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  observedGeneration?: number;
  lastTransitionTime: string;
  reason: string;
  message: string;
}

export type OperationType = 'Failover' | 'Rebalance' | 'RollingUpdate' | 'ScaleDown';

export interface WipeRecord {
  agent: string;
  shard: number;
  at: string;
  reason: string;
  completed: boolean;
}

export interface PivotClusterStatus {
  observedGeneration?: number;
  replicas?: number;
  readyReplicas?: number;
  readyAgents?: string;
  selector?: string;
  epoch?: number;
  assignments?: ShardAssignment[];
  operation?: { type: OperationType; startedAt: string; message: string } | null;
  wipes?: WipeRecord[];
  conditions?: Condition[];
}

export interface PivotCluster extends KubernetesObject {
  spec: PivotClusterSpec;
  status?: PivotClusterStatus;
}

/** The spec with every default applied and durations parsed (the API server defaults too; this guards old objects). */
export interface ResolvedSpec {
  replicas: number;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
  retryPolicy: RetryPolicy;
  notReadyGraceMs: number;
}

export function resolveSpec(spec: PivotClusterSpec): ResolvedSpec {
  return {
    replicas: spec.replicas ?? 3,
    shards: spec.shards ?? 16,
    replicationFactor: spec.replicationFactor ?? 3,
    writeConcern: spec.writeConcern ?? 'majority',
    retryPolicy: retryPolicyFromSpec(spec.retryPolicy),
    notReadyGraceMs: parseDuration(spec.failover?.notReadyGracePeriod ?? '1s'),
  };
}

// ---- What the operator observes of one agent: its pod and, when reachable, its own status. ----

export interface Position {
  term: number;
  seq: number;
}

export interface AgentShardStatus {
  shard: number;
  role: 'pivot' | 'follower';
  pivot: string;
  state: 'serving' | 'syncing' | 'wiping';
  position: Position;
  committedSeq?: number;
  lagSeq?: number;
}

export interface AgentWipe {
  shard: number;
  at: string;
  reason: string;
  completed: boolean;
}

/** `GET /_pivot/v1/status` (docs/internal-api.md). */
export interface AgentStatus {
  name: string;
  clusterUid?: string;
  epoch: number;
  ready: boolean;
  shards: AgentShardStatus[];
  wipes?: AgentWipe[];
}

export interface AgentObservation {
  name: string;
  ordinal: number;
  podReady: boolean;
  /** When the pod's Ready condition last became False (ms), null when ready. */
  notReadySince: number | null;
  deleting: boolean;
  ip?: string;
  node?: string;
  zone?: string;
  /** controller-revision-hash of the pod. */
  revision?: string;
  /** null when the agent did not answer. */
  status: AgentStatus | null;
}

export const comparePositions = (a: Position, b: Position) => a.term - b.term || a.seq - b.seq;

export function ordinalOf(clusterName: string, podName: string): number | null {
  if (!podName.startsWith(`${clusterName}-`)) return null;
  const rest = podName.slice(clusterName.length + 1);
  return /^(0|[1-9]\d*)$/.test(rest) ? Number(rest) : null;
}

export const agentName = (clusterName: string, ordinal: number) => `${clusterName}-${ordinal}`;
