import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { DEFAULT_RETRY_POLICY } from '../../../lib/retry.ts';
import { copiesOf, type ShardAssignment } from '../../../lib/shard-map.ts';
import { agentObs, follower, healthyAgents, pivotOf } from './fixtures.ts';
import { plan, statefulSetReplicas, type PlanInput } from './plan.ts';
import type { AgentObservation, AgentShardStatus, ResolvedSpec } from './types.ts';

const spec = (replicas: number, shards = 8, rf = 3): ResolvedSpec => ({
  replicas,
  shards,
  replicationFactor: rf,
  writeConcern: 'majority',
  retryPolicy: DEFAULT_RETRY_POLICY,
  notReadyGraceMs: 1000,
});
const names = (n: number) => Array.from({ length: n }, (_, i) => `c-${i}`);

/**
 * A tiny model of the agents: they apply every map at once, a new copy serves one reconcile after
 * it was added, pods exist for ordinals below the StatefulSet size. Runs plan() until it settles.
 */
function simulate(opts: {
  pods: number;
  shards: number;
  rf: number;
  replicas: number;
  start?: ShardAssignment[];
  epoch?: number;
}) {
  let assignments: ShardAssignment[] = opts.start ?? [];
  let epoch = opts.epoch ?? 0;
  let pods = opts.pods;
  const syncing = new Set<string>(); // `${agent}/${shard}` copies still copying
  const history: { before: ShardAssignment[]; after: ShardAssignment[]; servingBefore: Set<string> }[] = [];
  for (let round = 0; round < 200; round++) {
    const agents = new Map<string, AgentObservation>();
    for (const n of names(pods)) {
      const shards: AgentShardStatus[] = assignments.flatMap((a) => {
        if (a.pivot === n) return [pivotOf(a.shard, n, 10)];
        if (!a.followers.includes(n)) return [];
        return [follower(a.shard, a.pivot, 10, syncing.has(`${n}/${a.shard}`) ? 'syncing' : 'serving')];
      });
      agents.set(n, agentObs(n, { epoch, shards }));
    }
    const p = plan({
      clusterName: 'c',
      spec: spec(opts.replicas, opts.shards, opts.rf),
      epoch,
      assignments,
      agents,
      now: 0,
    });
    syncing.clear();
    if (p.assignments) {
      const servingBefore = new Set(assignments.flatMap((a) => copiesOf(a).map((c) => `${c}/${a.shard}`)));
      history.push({ before: assignments, after: p.assignments, servingBefore });
      for (const a of p.assignments)
        for (const c of copiesOf(a))
          if (assignments.length > 0 && !servingBefore.has(`${c}/${a.shard}`)) syncing.add(`${c}/${a.shard}`);
      assignments = p.assignments;
      epoch++;
    }
    // The StatefulSet shrinks only to what the plan allows.
    pods = Math.max(opts.replicas, p.statefulSetReplicas);
    if (!p.assignments && !p.operation) return { assignments, epoch, pods, history, settled: true };
  }
  return { assignments, epoch, pods, history, settled: false };
}

const servingCount = (a: ShardAssignment, serving: Set<string>) =>
  copiesOf(a).filter((c) => serving.has(`${c}/${a.shard}`)).length;

describe('plan: first assignment', () => {
  it('waits until every agent answers (no first-agent-takes-all race)', () => {
    const agents = healthyAgents(names(2), [], 0);
    agents.set('c-2', agentObs('c-2', { status: null, podReady: false }));
    const p = plan({ clusterName: 'c', spec: spec(3), epoch: 0, assignments: [], agents, now: 0 });
    expect(p.assignments).toBeNull();
    expect(p.waiting).toContain('c-2');
  });

  it('assigns every shard, balanced, once all agents answer', () => {
    const p = plan({
      clusterName: 'c',
      spec: spec(3, 16),
      epoch: 0,
      assignments: [],
      agents: healthyAgents(names(3), [], 0),
      now: 0,
    });
    expect(p.assignments).toHaveLength(16);
    const pivots = new Map<string, number>();
    for (const a of p.assignments!) {
      expect(new Set(copiesOf(a)).size).toBe(3);
      pivots.set(a.pivot, (pivots.get(a.pivot) ?? 0) + 1);
    }
    expect([...pivots.values()].sort()).toEqual([5, 5, 6]);
  });
});

describe('plan: failover', () => {
  const map: ShardAssignment[] = [
    { shard: 0, pivot: 'c-0', followers: ['c-1', 'c-2'] },
    { shard: 1, pivot: 'c-1', followers: ['c-2', 'c-0'] },
  ];

  it('promotes a follower of every shard led by a failed pivot, in one epoch, and leaves other shards alone', () => {
    const agents = healthyAgents(names(3), map, 4);
    agents.set('c-0', agentObs('c-0', { podReady: false, notReadySince: 0, status: null }));
    // c-2 is further ahead for shard 0.
    agents.get('c-2')!.status!.shards = [follower(0, 'c-0', 12), follower(1, 'c-1', 10)];
    const p = plan({ clusterName: 'c', spec: spec(3, 2), epoch: 4, assignments: map, agents, now: 5000 });
    expect(p.failovers).toEqual([{ shard: 0, from: 'c-0', to: 'c-2', since: 0 }]);
    expect(p.assignments![0]).toEqual({ shard: 0, pivot: 'c-2', followers: ['c-1'] });
    expect(p.assignments![1]).toEqual(map[1]);
    expect(p.operation?.type).toBe('Failover');
  });

  it('does nothing within the grace period', () => {
    const agents = healthyAgents(names(3), map, 4);
    agents.get('c-0')!.podReady = false;
    agents.get('c-0')!.notReadySince = 4500;
    expect(
      plan({ clusterName: 'c', spec: spec(3, 2), epoch: 4, assignments: map, agents, now: 5000 }).assignments,
    ).toBeNull();
  });

  it('refuses loudly instead of promoting a follower that may lack acknowledged writes', () => {
    const agents = healthyAgents(names(3), map, 4);
    agents.delete('c-0');
    agents.set('c-2', agentObs('c-2', { status: null }));
    const p = plan({ clusterName: 'c', spec: spec(3, 2), epoch: 4, assignments: map, agents, now: 5000 });
    expect(p.failovers).toEqual([]);
    expect(p.refusal?.reason).toBe('FailoverRefused');
    expect(p.events.some((e) => e.type === 'Warning' && e.reason === 'FailoverRefused')).toBe(true);
  });
});

describe('plan: scaling (simulated agents)', () => {
  it.each([
    { from: 3, to: 5, shards: 16, rf: 3 },
    { from: 5, to: 2, shards: 16, rf: 2 },
    { from: 3, to: 1, shards: 4, rf: 1 },
    { from: 2, to: 7, shards: 32, rf: 2 },
  ])(
    '$from → $to agents ($shards shards, rf $rf) converges balanced without losing a copy',
    ({ from, to, shards, rf }) => {
      const initial = simulate({ pods: from, shards, rf, replicas: from });
      expect(initial.settled).toBe(true);
      const scaled = simulate({
        pods: from,
        shards,
        rf,
        replicas: to,
        start: initial.assignments,
        epoch: initial.epoch,
      });
      expect(scaled.settled).toBe(true);
      expect(scaled.pods).toBe(to);
      const agents = new Set(names(to));
      const copies = new Map([...agents].map((a) => [a, 0]));
      for (const a of scaled.assignments) {
        expect(copiesOf(a)).toHaveLength(rf);
        for (const c of copiesOf(a)) {
          expect(agents.has(c)).toBe(true);
          copies.set(c, copies.get(c)! + 1);
        }
      }
      expect(Math.max(...copies.values()) - Math.min(...copies.values())).toBeLessThanOrEqual(1);
      // No step ever dropped a shard below rf copies that had been serving.
      for (const h of scaled.history)
        for (const a of h.after)
          expect(servingCount(a, h.servingBefore)).toBeGreaterThanOrEqual(
            Math.min(rf, servingCount(h.before[a.shard]!, h.servingBefore)),
          );
    },
  );

  it('keeps the StatefulSet large enough for agents that still hold copies', () => {
    expect(statefulSetReplicas('c', 2, [{ shard: 0, pivot: 'c-4', followers: ['c-0'] }])).toBe(5);
    expect(statefulSetReplicas('c', 3, [{ shard: 0, pivot: 'c-1', followers: ['c-0'] }])).toBe(3);
  });

  it('every scale sequence converges with rf copies on existing agents (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 1, max: 12 }),
        (rf, sizes, shards) => {
          let state = simulate({
            pods: Math.max(rf, sizes[0]!),
            shards,
            rf,
            replicas: Math.max(rf, sizes[0]!),
          });
          for (const size of sizes.slice(1).map((s) => Math.max(rf, s))) {
            state = simulate({
              pods: state.pods,
              shards,
              rf,
              replicas: size,
              start: state.assignments,
              epoch: state.epoch,
            });
            expect(state.settled).toBe(true);
            for (const a of state.assignments) {
              expect(new Set(copiesOf(a)).size).toBe(rf);
              for (const c of copiesOf(a)) expect(Number(c.slice(2))).toBeLessThan(size);
            }
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('plan: rolling update', () => {
  const map: ShardAssignment[] = [
    { shard: 0, pivot: 'c-2', followers: ['c-0', 'c-1'] },
    { shard: 1, pivot: 'c-1', followers: ['c-2', 'c-0'] },
    { shard: 2, pivot: 'c-0', followers: ['c-1', 'c-2'] },
  ];
  const input = (over: Partial<PlanInput> = {}): PlanInput => {
    const agents = healthyAgents(names(3), map, 3);
    for (const a of agents.values()) a.revision = 'old';
    return {
      clusterName: 'c',
      spec: spec(3, 3),
      epoch: 3,
      assignments: map,
      agents,
      updateRevision: 'new',
      now: 0,
      ...over,
    };
  };

  it('moves the pivot roles off the highest outdated pod first', () => {
    const p = plan(input());
    expect(p.deletePod).toBeNull();
    expect(p.assignments![0]!.pivot).not.toBe('c-2');
    expect(copiesOf(p.assignments![0]!)).toContain('c-2');
    expect(p.assignments!.slice(1)).toEqual(map.slice(1));
  });

  it('deletes the pod once it leads nothing', () => {
    const moved = map.map((a) => (a.shard === 0 ? { shard: 0, pivot: 'c-0', followers: ['c-2', 'c-1'] } : a));
    const agents = healthyAgents(names(3), moved, 4);
    for (const a of agents.values()) a.revision = 'old';
    const p = plan(input({ assignments: moved, agents, epoch: 4 }));
    expect(p.assignments).toBeNull();
    expect(p.deletePod).toBe('c-2');
  });

  it('waits while any agent is not ready', () => {
    const i = input();
    i.agents.get('c-0')!.podReady = false;
    i.agents.get('c-0')!.notReadySince = 0;
    const p = plan(i);
    expect(p.deletePod).toBeNull();
    expect(p.assignments).toBeNull();
    expect(p.operation?.message).toContain('c-0');
  });
});
