// Pure failover decisions: is a shard's pivot failed, and which follower may replace it.
//
// Safety rule: promote only a follower known to hold every acknowledged write. A write is
// acknowledged once `required` copies hold it (pivot included), so `required - 1` serving
// followers hold it. If the followers whose position we cannot see are fewer than that, one of
// the followers we can see holds it, and the most advanced of those holds every such write.
import { copiesOf, requiredCopies, type ShardAssignment, type WriteConcern } from '../../../lib/shard-map.ts';
import { comparePositions, type AgentObservation, type AgentShardStatus } from './types.ts';

export interface PivotHealth {
  failed: boolean;
  /** When it stopped being available (ms), when known. */
  since: number | null;
  reason: string;
}

/**
 * A pivot is failed when its pod is gone or terminating, or when its pod has been not ready for
 * longer than the grace period and the operator's own probe agrees: the agent does not answer,
 * or answers not ready at the current epoch. An agent that answers but has not yet applied the
 * current map (just started, or just assigned) is not failed: it only needs the map pushed.
 */
export function pivotHealth(
  agent: AgentObservation | undefined,
  now: number,
  graceMs: number,
  epoch: number,
): PivotHealth {
  if (!agent) return { failed: true, since: null, reason: 'pod is gone' };
  if (agent.deleting) return { failed: true, since: agent.notReadySince, reason: 'pod is terminating' };
  if (agent.podReady) return { failed: false, since: null, reason: 'ready' };
  const since = agent.notReadySince ?? now;
  if (now - since < graceMs) return { failed: false, since, reason: 'not ready, within the grace period' };
  const notReadyFor = `pod not ready for ${Math.round((now - since) / 100) / 10}s`;
  if (agent.status === null) return { failed: true, since, reason: `${notReadyFor}, agent not answering` };
  if (agent.status.epoch >= epoch && !agent.status.ready)
    return { failed: true, since, reason: `${notReadyFor}, agent reports not ready` };
  return { failed: false, since, reason: `${notReadyFor}, but the agent answers (waiting for the map)` };
}

export type FailoverChoice =
  | {
      kind: 'promote';
      shard: number;
      promote: string;
      assignment: ShardAssignment;
      /** Only with writeConcern one: writes acknowledged by the failed pivot alone may be lost. */
      mayLoseWrites: boolean;
      warnings: string[];
    }
  | { kind: 'refuse'; shard: number; reason: string; warnings: string[] };

const shardStatus = (agent: AgentObservation | undefined, shard: number): AgentShardStatus | undefined =>
  agent?.status?.shards.find((s) => s.shard === shard);

/**
 * Chooses the follower to promote for a shard whose pivot failed. `epoch` is the current map's:
 * a follower that has not applied it cannot be trusted to describe the current shard.
 */
export function chooseFailover(
  assignment: ShardAssignment,
  agents: ReadonlyMap<string, AgentObservation>,
  writeConcern: WriteConcern,
  epoch: number,
): FailoverChoice {
  const { shard } = assignment;
  const warnings: string[] = [];
  const known: { name: string; status: AgentShardStatus; eligible: boolean }[] = [];
  let unknown = 0;
  for (const name of assignment.followers) {
    const agent = agents.get(name);
    const s = shardStatus(agent, shard);
    const statusUsable = agent?.status != null && agent.status.epoch === epoch && s?.role === 'follower';
    if (agent?.podReady && agent.status == null)
      warnings.push(`${name}: pod is ready but the agent did not answer its status`);
    if (agent && !agent.podReady && agent.status?.ready)
      warnings.push(`${name}: agent reports ready but its pod is not ready`);
    if (!statusUsable) {
      unknown++;
      continue;
    }
    // A syncing follower never counted towards the write concern: it holds no write that the
    // others lack, so it is known-behind rather than unknown.
    if (s!.state !== 'serving') continue;
    known.push({ name, status: s!, eligible: agent!.podReady && agent!.status!.ready && !agent!.deleting });
  }

  const required = requiredCopies(writeConcern, copiesOf(assignment).length);
  const followersHoldingEveryAck = required - 1;
  const mayLoseWrites = followersHoldingEveryAck === 0;
  if (!mayLoseWrites && unknown >= followersHoldingEveryAck)
    return {
      kind: 'refuse',
      shard,
      reason: `${unknown} of ${assignment.followers.length} followers are unreachable or behind the current epoch; any of them may hold writes the others lack (writeConcern ${writeConcern})`,
      warnings,
    };
  if (known.length === 0)
    return { kind: 'refuse', shard, reason: 'no serving follower is reachable', warnings };

  const byPosition = [...known].sort(
    (a, b) => comparePositions(b.status.position, a.status.position) || (a.name < b.name ? -1 : 1),
  );
  const best = byPosition[0]!;
  const chosen = byPosition.find(
    (k) => k.eligible && comparePositions(k.status.position, best.status.position) === 0,
  );
  if (!chosen)
    return {
      kind: 'refuse',
      shard,
      reason: `the most caught-up follower ${best.name} is not ready; promoting another could lose acknowledged writes`,
      warnings,
    };
  return {
    kind: 'promote',
    shard,
    promote: chosen.name,
    assignment: {
      shard,
      pivot: chosen.name,
      followers: assignment.followers.filter((f) => f !== chosen.name),
    },
    mayLoseWrites,
    warnings,
  };
}

/**
 * A planned switchover target (rolling update, pivot balancing): a ready, serving follower with
 * nothing left to catch up. Returns the most advanced one, or null.
 */
export function switchoverTarget(
  assignment: ShardAssignment,
  agents: ReadonlyMap<string, AgentObservation>,
  epoch: number,
  exclude: ReadonlySet<string> = new Set(),
): string | null {
  const pivotStatus = shardStatus(agents.get(assignment.pivot), assignment.shard);
  const candidates = assignment.followers
    .filter((name) => !exclude.has(name))
    .map((name) => ({ name, agent: agents.get(name) }))
    .filter(
      ({ name, agent }) => caughtUp(agent, assignment.shard, epoch, pivotStatus) && name !== assignment.pivot,
    )
    .sort(
      (a, b) =>
        comparePositions(
          shardStatus(b.agent, assignment.shard)!.position,
          shardStatus(a.agent, assignment.shard)!.position,
        ) || (a.name < b.name ? -1 : 1),
    );
  return candidates[0]?.name ?? null;
}

/** A follower copy that is serving at the current epoch with no lag behind its pivot. */
export function caughtUp(
  agent: AgentObservation | undefined,
  shard: number,
  epoch: number,
  pivotStatus?: AgentShardStatus,
): boolean {
  const s = shardStatus(agent, shard);
  if (!agent?.podReady || agent.deleting || !agent.status?.ready || agent.status.epoch !== epoch)
    return false;
  if (!s || s.state !== 'serving') return false;
  if ((s.lagSeq ?? 0) > 0) return false;
  if (pivotStatus?.committedSeq !== undefined && s.position.seq < pivotStatus.committedSeq) return false;
  return true;
}

/** A copy that counts towards the replication factor: serving at the current epoch on a ready pod. */
export function servingCopy(agent: AgentObservation | undefined, shard: number, epoch: number): boolean {
  const s = shardStatus(agent, shard);
  return (
    !!agent?.podReady &&
    !agent.deleting &&
    agent.status?.epoch === epoch &&
    s !== undefined &&
    s.state === 'serving'
  );
}
