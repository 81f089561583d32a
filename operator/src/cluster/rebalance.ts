// Pure: the next step from the current shard map toward the balanced target placement.
//
// A copy never moves in one jump. A step adds new copies as followers (they copy and catch up),
// hands the pivot role to a caught-up follower (switchover), and removes a copy only when the
// shard keeps its replication factor of serving copies without it. Each step is one new epoch;
// the reconciler takes the next step once agents report the previous one done.
import { placeShards, type PlacementAgent } from '../../../lib/placement.ts';
import { copiesOf, type ShardAssignment } from '../../../lib/shard-map.ts';
import { caughtUp, servingCopy, switchoverTarget } from './failover.ts';
import type { AgentObservation } from './types.ts';

export interface RebalanceInput {
  shards: number;
  replicationFactor: number;
  epoch: number;
  current: readonly ShardAssignment[];
  agents: ReadonlyMap<string, AgentObservation>;
  /** Agents that may hold copies in the target (not being removed, not long gone). */
  candidates: readonly PlacementAgent[];
  /** Copies still copying or catching up, cluster-wide, before more are started (rate limit). */
  maxInFlightCopies: number;
  /** Skip pivot balancing (while a rolling update moves pivots on purpose). */
  keepPivots?: boolean;
}

export interface RebalanceStep {
  assignments: ShardAssignment[];
  added: number;
  switched: number;
  removed: number;
}

/** Can receive a new copy now: answering, not terminating, already at the current map. */
const canReceive = (agent: AgentObservation | undefined, epoch: number) =>
  !!agent && !agent.deleting && agent.status !== null && agent.status.epoch === epoch;

export function targetPlacement(input: RebalanceInput): ShardAssignment[] {
  return placeShards({
    shards: input.shards,
    replicationFactor: input.replicationFactor,
    agents: [...input.candidates],
    previous: input.current,
    keepPivots: input.keepPivots,
  });
}

export function nextRebalanceStep(input: RebalanceInput): RebalanceStep | null {
  if (input.candidates.length === 0) return null;
  const { epoch, agents } = input;
  const target = targetPlacement(input);
  let inFlight = 0;
  for (const a of input.current)
    for (const c of copiesOf(a))
      if (canReceive(agents.get(c), epoch) && !servingCopy(agents.get(c), a.shard, epoch)) inFlight++;
  let budget = Math.max(0, input.maxInFlightCopies - inFlight);
  const step: RebalanceStep = { assignments: [], added: 0, switched: 0, removed: 0 };

  for (const cur of input.current) {
    const tgt = target[cur.shard]!;
    let pivot = cur.pivot;
    let followers = [...cur.followers];

    // 1. Add the target's new copies as followers, within the in-flight budget.
    for (const c of copiesOf(tgt)) {
      if (c === pivot || followers.includes(c) || budget === 0 || !canReceive(agents.get(c), epoch)) continue;
      followers.push(c);
      budget--;
      step.added++;
    }

    // 2. Switch the pivot role over when the target wants another pivot and it has caught up.
    //    (A pivot leaving the target hands over to the best caught-up follower the target keeps.)
    const pivotStays = copiesOf(tgt).includes(pivot);
    if (tgt.pivot !== pivot) {
      const wanted =
        cur.followers.includes(tgt.pivot) && caughtUp(agents.get(tgt.pivot), cur.shard, epoch)
          ? tgt.pivot
          : null;
      const fallback = pivotStays
        ? null
        : switchoverTarget(
            { shard: cur.shard, pivot, followers: cur.followers.filter((f) => copiesOf(tgt).includes(f)) },
            agents,
            epoch,
          );
      const next = wanted ?? fallback;
      if (next && servingCopy(agents.get(pivot), cur.shard, epoch)) {
        followers = [pivot, ...followers.filter((f) => f !== next)];
        pivot = next;
        step.switched++;
      }
    }

    // 3. Remove copies the target drops, while the shard keeps rf serving copies without them.
    //    Only with a serving pivot: then the pivot holds every acknowledged write.
    if (servingCopy(agents.get(pivot), cur.shard, epoch) && pivot === cur.pivot) {
      for (const c of [...followers]) {
        if (copiesOf(tgt).includes(c)) continue;
        const remaining = [pivot, ...followers.filter((f) => f !== c)];
        const serving = remaining.filter((r) => servingCopy(agents.get(r), cur.shard, epoch)).length;
        if (serving >= Math.min(input.replicationFactor, input.candidates.length)) {
          followers = followers.filter((f) => f !== c);
          step.removed++;
        }
      }
    }
    step.assignments.push({ shard: cur.shard, pivot, followers });
  }
  return step.added + step.switched + step.removed > 0 ? step : null;
}

/** True when the map already equals the target placement (nothing left to move). */
export function isBalanced(input: RebalanceInput): boolean {
  if (input.candidates.length === 0) return true;
  const target = targetPlacement(input);
  return input.current.every((cur) => {
    const tgt = target[cur.shard]!;
    return tgt.pivot === cur.pivot && [...tgt.followers].sort().join() === [...cur.followers].sort().join();
  });
}

export type RolloutStep =
  | { kind: 'switchover'; assignments: ShardAssignment[]; agent: string; shards: number[] }
  | { kind: 'delete-pod'; agent: string }
  | { kind: 'wait'; reason: string };

/**
 * Role-aware rolling update, one pod at a time, highest ordinal first: once every agent is ready
 * and every copy serving, move the pod's pivot roles to caught-up followers, then delete the pod
 * so the StatefulSet (updateStrategy OnDelete) recreates it from the new template.
 */
export function nextRolloutStep(input: {
  epoch: number;
  current: readonly ShardAssignment[];
  agents: ReadonlyMap<string, AgentObservation>;
  updateRevision: string | undefined;
}): RolloutStep | null {
  const { epoch, agents, current, updateRevision } = input;
  if (!updateRevision) return null;
  const outdated = [...agents.values()]
    .filter((a) => a.revision !== undefined && a.revision !== updateRevision)
    .sort((a, b) => b.ordinal - a.ordinal);
  if (outdated.length === 0) return null;
  const notReady = [...agents.values()].filter((a) => !a.podReady || a.deleting).map((a) => a.name);
  if (notReady.length > 0)
    return { kind: 'wait', reason: `waiting for agents to be ready: ${notReady.join(', ')}` };
  const notServing = current.flatMap((a) =>
    copiesOf(a)
      .filter((c) => !servingCopy(agents.get(c), a.shard, epoch))
      .map((c) => `${c}/shard ${a.shard}`),
  );
  if (notServing.length > 0)
    return { kind: 'wait', reason: `waiting for copies to catch up: ${notServing.slice(0, 5).join(', ')}` };

  const agent = outdated[0]!.name;
  const led = current.filter((a) => a.pivot === agent);
  if (led.length === 0) return { kind: 'delete-pod', agent };
  const next = current.map((a) => ({ ...a, followers: [...a.followers] }));
  for (const a of led) {
    const to = switchoverTarget(a, agents, epoch, new Set([agent]));
    if (!to)
      return { kind: 'wait', reason: `no caught-up follower to take over shard ${a.shard} from ${agent}` };
    next[a.shard] = { shard: a.shard, pivot: to, followers: [agent, ...a.followers.filter((f) => f !== to)] };
  }
  return { kind: 'switchover', assignments: next, agent, shards: led.map((a) => a.shard) };
}
