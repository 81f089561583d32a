// Builders of agent observations for the unit tests of the pure decisions.
import type { ShardAssignment } from '../../../lib/shard-map.ts';
import type { AgentObservation, AgentShardStatus } from './types.ts';

export function agentObs(
  name: string,
  over: Partial<AgentObservation> & { shards?: AgentShardStatus[]; epoch?: number } = {},
): AgentObservation {
  const { shards, epoch, ...rest } = over;
  return {
    name,
    ordinal: Number(/-(\d+)$/.exec(name)?.[1] ?? 0),
    podReady: true,
    notReadySince: null,
    deleting: false,
    ip: '10.0.0.1',
    status: { name, epoch: epoch ?? 1, ready: true, shards: shards ?? [] },
    ...rest,
  };
}

export const follower = (
  shard: number,
  pivot: string,
  seq: number,
  state: AgentShardStatus['state'] = 'serving',
  term = 1,
): AgentShardStatus => ({
  shard,
  role: 'follower',
  pivot,
  state,
  position: { term, seq },
  lagSeq: 0,
});

export const pivotOf = (shard: number, name: string, seq: number): AgentShardStatus => ({
  shard,
  role: 'pivot',
  pivot: name,
  state: 'serving',
  position: { term: 1, seq },
  committedSeq: seq,
  lagSeq: 0,
});

/** Observations where every agent serves every copy the map gives it, all caught up. */
export function healthyAgents(
  names: readonly string[],
  assignments: readonly ShardAssignment[],
  epoch: number,
): Map<string, AgentObservation> {
  return new Map(
    names.map((n) => [
      n,
      agentObs(n, {
        epoch,
        shards: assignments.flatMap((a) =>
          a.pivot === n
            ? [pivotOf(a.shard, n, 10)]
            : a.followers.includes(n)
              ? [follower(a.shard, a.pivot, 10)]
              : [],
        ),
      }),
    ]),
  );
}
