// Builders for observations in the pure decision tests: an agent with its pod state and its own
// status report, written as compactly as the tables need.
import type { AgentObservation, AgentShardStatus } from './types.ts';

export interface ShardReport {
  role?: 'pivot' | 'follower';
  state?: AgentShardStatus['state'];
  term?: number;
  seq: number;
  lag?: number;
}

export function agent(
  name: string,
  shards: Record<number, ShardReport> = {},
  o: Partial<Omit<AgentObservation, 'status'>> & {
    epoch?: number;
    answered?: boolean;
    agentReady?: boolean;
  } = {},
): AgentObservation {
  const epoch = o.epoch ?? 1;
  return {
    name,
    ordinal: Number(name.split('-').pop()),
    podReady: o.podReady ?? true,
    notReadySince: o.notReadySince ?? null,
    deleting: o.deleting ?? false,
    node: o.node,
    zone: o.zone,
    revision: o.revision,
    status:
      o.answered === false
        ? null
        : {
            name,
            epoch,
            ready: o.agentReady ?? true,
            shards: Object.entries(shards).map(([shard, r]) => ({
              shard: Number(shard),
              role: r.role ?? 'follower',
              pivot: '',
              state: r.state ?? 'serving',
              position: { term: r.term ?? 1, seq: r.seq },
              lagSeq: r.lag ?? 0,
            })),
          },
  };
}

export const byName = (...agents: AgentObservation[]) => new Map(agents.map((a) => [a.name, a]));
