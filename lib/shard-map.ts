// The shard map: which agent is pivot and which are followers of every shard, at which epoch.
// The operator keeps the authoritative copy in PivotCluster status and pushes it to agents; a
// cluster file carries it when agents run without Kubernetes. Agents persist the last one seen.
import type { RetryPolicy } from './retry.ts';

export type WriteConcern = 'one' | 'majority' | 'all';
export const WRITE_CONCERNS: readonly WriteConcern[] = ['one', 'majority', 'all'];

export interface AgentInfo {
  /** Stable identity: the pod name in Kubernetes, a chosen name in a cluster file. */
  name: string;
  /** Base URL other agents and clients reach it at, e.g. http://10.0.0.5:8080. */
  url: string;
  /** Topology, used by placement to spread copies. */
  node?: string;
  zone?: string;
}

export interface ShardAssignment {
  shard: number;
  pivot: string;
  followers: string[];
}

export interface ShardMap {
  /** The PivotCluster UID (or the cluster file's id). Agents refuse data from another cluster. */
  clusterUid: string;
  /** Grows with every change; agents reject maps and replication traffic with an older one. */
  epoch: number;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
  retryPolicy: RetryPolicy;
  agents: AgentInfo[];
  /** One entry per shard, index = shard number. */
  assignments: ShardAssignment[];
}

export type Role = 'pivot' | 'follower' | 'none';

export function roleOf(assignment: ShardAssignment, agent: string): Role {
  if (assignment.pivot === agent) return 'pivot';
  return assignment.followers.includes(agent) ? 'follower' : 'none';
}

export function copiesOf(assignment: ShardAssignment): string[] {
  return [assignment.pivot, ...assignment.followers];
}

/** Copies (pivot included) that must hold a write before it is acknowledged. */
export function requiredCopies(writeConcern: WriteConcern, copies: number): number {
  switch (writeConcern) {
    case 'one':
      return 1;
    case 'majority':
      return Math.floor(copies / 2) + 1;
    case 'all':
      return copies;
  }
}

/** Returns a list of problems; empty when the map is internally consistent. */
export function validateShardMap(map: ShardMap): string[] {
  const problems: string[] = [];
  const names = new Set(map.agents.map((a) => a.name));
  if (names.size !== map.agents.length) problems.push('agent names are not unique');
  if (!Number.isInteger(map.epoch) || map.epoch < 0) problems.push('epoch must be a non-negative integer');
  if (!Number.isInteger(map.shards) || map.shards < 1 || map.shards > 4096)
    problems.push('shards must be 1..4096');
  if (!WRITE_CONCERNS.includes(map.writeConcern))
    problems.push(`writeConcern must be one of ${WRITE_CONCERNS.join(', ')}`);
  if (map.assignments.length !== map.shards && map.assignments.length !== 0) {
    problems.push(`assignments has ${map.assignments.length} entries for ${map.shards} shards`);
  }
  map.assignments.forEach((a, i) => {
    if (a.shard !== i) problems.push(`assignments[${i}] is for shard ${a.shard}`);
    const copies = copiesOf(a);
    if (new Set(copies).size !== copies.length) problems.push(`shard ${a.shard} has two copies on one agent`);
    for (const c of copies) if (!names.has(c)) problems.push(`shard ${a.shard} names unknown agent ${c}`);
  });
  return problems;
}

export interface ShardChange {
  shard: number;
  agent: string;
  before: Role;
  after: Role;
  /** The shard's pivot changed: this agent must prove a shared history with the new one or wipe. */
  pivotChanged: boolean;
}

/**
 * Per agent and shard, what changes between two maps. Only entries where the agent's role or the
 * shard's pivot differs are returned, sorted by shard then agent.
 */
export function diffShardMaps(before: ShardMap | null, after: ShardMap): ShardChange[] {
  const changes: ShardChange[] = [];
  for (const next of after.assignments) {
    const prev = before?.assignments[next.shard];
    const agents = new Set([...(prev ? copiesOf(prev) : []), ...copiesOf(next)]);
    const pivotChanged = prev !== undefined && prev.pivot !== next.pivot;
    for (const agent of [...agents].sort()) {
      const b: Role = prev ? roleOf(prev, agent) : 'none';
      const a = roleOf(next, agent);
      if (b !== a || (pivotChanged && a !== 'none'))
        changes.push({ shard: next.shard, agent, before: b, after: a, pivotChanged });
    }
  }
  return changes;
}
