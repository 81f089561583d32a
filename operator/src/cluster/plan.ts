// Pure: one reconcile's decision for a PivotCluster, from its spec, its recorded map and what the
// operator observes of its agents. Priority: first assignment, failover, rebalance, rolling update.
// The reconciler persists the result in status before acting on it, so every step survives an
// operator restart and is simply recomputed from the recorded map.
import type { PlacementAgent } from '../../../lib/placement.ts';
import { placeShards } from '../../../lib/placement.ts';
import { copiesOf, type ShardAssignment } from '../../../lib/shard-map.ts';
import { chooseFailover, pivotHealth, servingCopy } from './failover.ts';
import { isBalanced, nextRebalanceStep, nextRolloutStep } from './rebalance.ts';
import { agentName, type AgentObservation, type OperationType, type ResolvedSpec } from './types.ts';

/** Copies being created at once per cluster: re-replication is rate-limited, promotion is not. */
export const MAX_IN_FLIGHT_COPIES = 4;

export interface PlanInput {
  clusterName: string;
  spec: ResolvedSpec;
  epoch: number;
  assignments: readonly ShardAssignment[];
  /** Observed agents (pods), keyed by name. */
  agents: ReadonlyMap<string, AgentObservation>;
  /** The StatefulSet's update revision (rolling updates). */
  updateRevision?: string;
  now: number;
}

export interface PlannedEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
}

export interface FailoverRecord {
  shard: number;
  from: string;
  to: string;
  /** When the old pivot stopped being available (ms), when known. */
  since: number | null;
}

export interface Plan {
  /** The new map, when it changes; the epoch is then `input.epoch + 1`. */
  assignments: ShardAssignment[] | null;
  operation: { type: OperationType; message: string } | null;
  events: PlannedEvent[];
  failovers: FailoverRecord[];
  deletePod: string | null;
  statefulSetReplicas: number;
  /** An operation refused to protect data; surfaces as Degraded and a Warning Event. */
  refusal: { reason: string; message: string } | null;
  /** Waiting before the first assignment. */
  waiting: string | null;
  rebalanceMoves: { added: number; switched: number; removed: number } | null;
}

/** A not-ready agent keeps its place in the target for this long before its copies are re-made elsewhere. */
export const replaceAfterMs = (graceMs: number) => Math.max(30_000, 10 * graceMs);

/** Agents that may hold copies: inside spec.replicas and not gone for longer than replaceAfter. */
export function placementCandidates(input: PlanInput): PlacementAgent[] {
  const out: PlacementAgent[] = [];
  for (let i = 0; i < input.spec.replicas; i++) {
    const name = agentName(input.clusterName, i);
    const a = input.agents.get(name);
    // A missing pod inside the range is being (re)created by the StatefulSet controller.
    if (
      a &&
      !a.podReady &&
      a.status === null &&
      input.now - (a.notReadySince ?? input.now) > replaceAfterMs(input.spec.notReadyGraceMs)
    )
      continue;
    out.push({ name, node: a?.node, zone: a?.zone });
  }
  return out;
}

export function statefulSetReplicas(
  clusterName: string,
  replicas: number,
  assignments: readonly ShardAssignment[],
): number {
  let size = replicas;
  for (const a of assignments)
    for (const c of copiesOf(a)) {
      const m = /-(\d+)$/.exec(c);
      if (m && c === agentName(clusterName, Number(m[1]))) size = Math.max(size, Number(m[1]) + 1);
    }
  return size;
}

export function plan(input: PlanInput): Plan {
  const { spec, epoch, agents, now } = input;
  const result: Plan = {
    assignments: null,
    operation: null,
    events: [],
    failovers: [],
    deletePod: null,
    statefulSetReplicas: statefulSetReplicas(input.clusterName, spec.replicas, input.assignments),
    refusal: null,
    waiting: null,
    rebalanceMoves: null,
  };

  // 1. First assignment: only once every agent of spec.replicas answers (seed 004: no
  //    "first agent takes every shard" race).
  if (input.assignments.length === 0) {
    const expected = Array.from({ length: spec.replicas }, (_, i) => agentName(input.clusterName, i));
    const missing = expected.filter((n) => {
      const a = agents.get(n);
      return !a || a.deleting || a.status === null;
    });
    if (missing.length > 0) {
      result.waiting = `waiting for ${missing.length} of ${spec.replicas} agents before the first assignment: ${missing.slice(0, 5).join(', ')}`;
      return result;
    }
    result.assignments = placeShards({
      shards: spec.shards,
      replicationFactor: spec.replicationFactor,
      agents: expected.map((name) => ({ name, node: agents.get(name)!.node, zone: agents.get(name)!.zone })),
    });
    result.events.push({
      type: 'Normal',
      reason: 'ShardsAssigned',
      message: `assigned ${spec.shards} shards to ${spec.replicas} agents at replication factor ${spec.replicationFactor}`,
    });
    return result;
  }

  // 2. Failover: every shard whose pivot failed gets its most caught-up safe follower, in one epoch.
  const next = input.assignments.map((a) => ({
    shard: a.shard,
    pivot: a.pivot,
    followers: [...a.followers],
  }));
  const refusals: string[] = [];
  for (const a of input.assignments) {
    const health = pivotHealth(agents.get(a.pivot), now, spec.notReadyGraceMs, epoch);
    if (!health.failed) continue;
    const choice = chooseFailover(a, agents, spec.writeConcern, epoch);
    for (const w of choice.warnings)
      result.events.push({
        type: 'Warning',
        reason: 'ReadinessDisagreement',
        message: `shard ${a.shard}: ${w}`,
      });
    if (choice.kind === 'refuse') {
      refusals.push(`shard ${a.shard} (pivot ${a.pivot}: ${health.reason}): ${choice.reason}`);
      continue;
    }
    next[a.shard] = choice.assignment;
    result.failovers.push({ shard: a.shard, from: a.pivot, to: choice.promote, since: health.since });
    result.events.push({
      type: choice.mayLoseWrites ? 'Warning' : 'Normal',
      reason: 'Failover',
      message:
        `shard ${a.shard}: promoted ${choice.promote} (pivot ${a.pivot}: ${health.reason})` +
        (choice.mayLoseWrites
          ? '; writeConcern one: writes acknowledged only by the old pivot may be lost'
          : ''),
    });
  }
  if (refusals.length > 0) {
    result.refusal = { reason: 'FailoverRefused', message: refusals.slice(0, 3).join('; ') };
    result.events.push({
      type: 'Warning',
      reason: 'FailoverRefused',
      message: refusals.slice(0, 3).join('; '),
    });
  }
  if (result.failovers.length > 0) {
    result.assignments = next;
    result.operation = {
      type: 'Failover',
      message: `promoted new pivots for shards ${result.failovers.map((f) => f.shard).join(', ')}`,
    };
    return result;
  }

  // 3. Rebalance: restore the replication factor, spread new agents' share, drain leaving agents.
  const candidates = placementCandidates(input);
  const outdated = [...agents.values()].some(
    (a) => input.updateRevision && a.revision && a.revision !== input.updateRevision,
  );
  const rebalanceInput = {
    shards: spec.shards,
    replicationFactor: spec.replicationFactor,
    epoch,
    current: input.assignments,
    agents,
    candidates,
    maxInFlightCopies: MAX_IN_FLIGHT_COPIES,
    keepPivots: outdated,
  };
  const leaving = [...new Set(input.assignments.flatMap(copiesOf))].filter(
    (c) => !candidates.some((k) => k.name === c),
  );
  if (candidates.length < spec.replicationFactor && leaving.length > 0) {
    result.refusal = {
      reason: 'InsufficientAgents',
      message: `only ${candidates.length} agents can hold copies, replication factor is ${spec.replicationFactor}; keeping copies on ${leaving.join(', ')}`,
    };
    result.events.push({ type: 'Warning', reason: 'ScaleDownBlocked', message: result.refusal.message });
  }
  const step = nextRebalanceStep(rebalanceInput);
  if (step) {
    result.assignments = step.assignments;
    result.rebalanceMoves = { added: step.added, switched: step.switched, removed: step.removed };
    result.operation = {
      type: leaving.length > 0 ? 'ScaleDown' : 'Rebalance',
      message: `added ${step.added}, switched ${step.switched}, removed ${step.removed} shard copies`,
    };
    result.events.push({ type: 'Normal', reason: 'Rebalance', message: result.operation.message });
    return result;
  }
  if (!isBalanced(rebalanceInput)) {
    result.operation = {
      type: leaving.length > 0 ? 'ScaleDown' : 'Rebalance',
      message: 'waiting for new copies to catch up',
    };
    return result;
  }

  // 4. Rolling update, one pod at a time.
  const rollout = nextRolloutStep({
    epoch,
    current: input.assignments,
    agents,
    updateRevision: input.updateRevision,
  });
  if (rollout?.kind === 'switchover') {
    result.assignments = rollout.assignments;
    result.operation = {
      type: 'RollingUpdate',
      message: `moving pivots of shards ${rollout.shards.join(', ')} off ${rollout.agent}`,
    };
    result.events.push({ type: 'Normal', reason: 'Switchover', message: result.operation.message });
  } else if (rollout?.kind === 'delete-pod') {
    result.deletePod = rollout.agent;
    result.operation = {
      type: 'RollingUpdate',
      message: `restarting ${rollout.agent} with the new pod template`,
    };
    result.events.push({ type: 'Normal', reason: 'RollingUpdate', message: result.operation.message });
  } else if (rollout?.kind === 'wait') {
    result.operation = { type: 'RollingUpdate', message: rollout.reason };
  }
  return result;
}

/** Shards with fewer serving copies than the replication factor. */
export function underReplicatedShards(
  assignments: readonly ShardAssignment[],
  agents: ReadonlyMap<string, AgentObservation>,
  epoch: number,
  replicationFactor: number,
): number[] {
  return assignments
    .filter(
      (a) => copiesOf(a).filter((c) => servingCopy(agents.get(c), a.shard, epoch)).length < replicationFactor,
    )
    .map((a) => a.shard);
}
