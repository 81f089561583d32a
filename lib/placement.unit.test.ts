import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { placeShards, type PlacementAgent } from './placement.ts';
import { copiesOf, type ShardAssignment } from './shard-map.ts';

const agentsNamed = (n: number): PlacementAgent[] =>
  Array.from({ length: n }, (_, i) => ({ name: `a-${i}` }));

const loads = (map: ShardAssignment[], agents: PlacementAgent[]) => {
  const copies = new Map(agents.map((a) => [a.name, 0]));
  const pivots = new Map(agents.map((a) => [a.name, 0]));
  for (const s of map) {
    for (const c of copiesOf(s)) copies.set(c, copies.get(c)! + 1);
    pivots.set(s.pivot, pivots.get(s.pivot)! + 1);
  }
  const spread = (m: Map<string, number>) => Math.max(...m.values()) - Math.min(...m.values());
  return { copies: spread(copies), pivots: spread(pivots) };
};

const moves = (before: ShardAssignment[], after: ShardAssignment[]) =>
  after.reduce((n, s, i) => n + copiesOf(s).filter((c) => !copiesOf(before[i]!).includes(c)).length, 0);

const arbInput = fc.record({
  agents: fc.integer({ min: 1, max: 9 }),
  shards: fc.integer({ min: 1, max: 64 }),
  rf: fc.integer({ min: 1, max: 5 }),
});

describe('placeShards', () => {
  it.each([
    { agents: 3, shards: 16, rf: 3 },
    { agents: 3, shards: 4, rf: 1 },
    { agents: 5, shards: 16, rf: 3 },
    { agents: 1, shards: 8, rf: 3 },
  ])('places $shards shards at rf $rf on $agents agents', ({ agents, shards, rf }) => {
    const map = placeShards({ shards, replicationFactor: rf, agents: agentsNamed(agents) });
    expect(map).toHaveLength(shards);
    for (const s of map) expect(copiesOf(s)).toHaveLength(Math.min(rf, agents));
    expect(loads(map, agentsNamed(agents)).copies).toBeLessThanOrEqual(1);
  });

  it('never puts two copies of a shard on one agent, fills rf, balances copies and pivots', () => {
    fc.assert(
      fc.property(arbInput, ({ agents, shards, rf }) => {
        const as = agentsNamed(agents);
        const map = placeShards({ shards, replicationFactor: rf, agents: as });
        for (const [i, s] of map.entries()) {
          expect(s.shard).toBe(i);
          const c = copiesOf(s);
          expect(new Set(c).size).toBe(c.length);
          expect(c).toHaveLength(Math.min(rf, agents));
        }
        const l = loads(map, as);
        expect(l.copies).toBeLessThanOrEqual(1);
        expect(l.pivots).toBeLessThanOrEqual(1);
      }),
    );
  });

  it('is deterministic whatever the order of the agent list', () => {
    fc.assert(
      fc.property(arbInput, fc.integer(), ({ agents, shards, rf }, seed) => {
        const as = agentsNamed(agents);
        const shuffled = [...as].sort(
          (a, b) => ((a.name.charCodeAt(2) * seed) % 7) - ((b.name.charCodeAt(2) * seed) % 7),
        );
        expect(placeShards({ shards, replicationFactor: rf, agents: shuffled })).toEqual(
          placeShards({ shards, replicationFactor: rf, agents: as }),
        );
      }),
    );
  });

  it('keeps a balanced previous map unchanged', () => {
    fc.assert(
      fc.property(arbInput, ({ agents, shards, rf }) => {
        const as = agentsNamed(agents);
        const first = placeShards({ shards, replicationFactor: rf, agents: as });
        expect(placeShards({ shards, replicationFactor: rf, agents: as, previous: first })).toEqual(first);
      }),
    );
  });

  it('moves only the lost copies when an agent goes, and few when one comes', () => {
    fc.assert(
      fc.property(
        arbInput.filter((i) => i.agents >= 2),
        ({ agents, shards, rf }) => {
          const as = agentsNamed(agents);
          const before = placeShards({ shards, replicationFactor: rf, agents: as });
          const lost = before.filter((s) => copiesOf(s).includes('a-0')).length;
          const shrunk = placeShards({
            shards,
            replicationFactor: rf,
            agents: as.slice(1),
            previous: before,
          });
          for (const s of shrunk) expect(copiesOf(s)).not.toContain('a-0');
          // Refilling the lost copies, plus at most as many rebalancing moves.
          expect(moves(before, shrunk)).toBeLessThanOrEqual(2 * lost);

          const grown = placeShards({
            shards,
            replicationFactor: rf,
            agents: [...as, { name: 'z-new' }],
            previous: before,
          });
          const total = shards * Math.min(rf, agents + 1);
          expect(moves(before, grown)).toBeLessThanOrEqual(Math.ceil(total / (agents + 1)) + agents);
          expect(loads(grown, [...as, { name: 'z-new' }]).copies).toBeLessThanOrEqual(1);
        },
      ),
    );
  });

  it('spreads the copies of a shard across zones when it can', () => {
    const as = [
      { name: 'p-0', zone: 'z1', node: 'n1' },
      { name: 'p-1', zone: 'z1', node: 'n2' },
      { name: 'p-2', zone: 'z2', node: 'n3' },
      { name: 'p-3', zone: 'z2', node: 'n4' },
      { name: 'p-4', zone: 'z3', node: 'n5' },
      { name: 'p-5', zone: 'z3', node: 'n6' },
    ];
    const map = placeShards({ shards: 24, replicationFactor: 3, agents: as });
    for (const s of map) {
      const zones = copiesOf(s).map((c) => as.find((a) => a.name === c)!.zone);
      expect(new Set(zones).size).toBe(3);
    }
  });

  it('keeps a pivot chosen by failover', () => {
    const before = placeShards({ shards: 4, replicationFactor: 3, agents: agentsNamed(3) });
    const promoted = before.map((s) =>
      s.pivot === 'a-0' ? { shard: s.shard, pivot: s.followers[1]!, followers: [s.followers[0]!] } : s,
    );
    const after = placeShards({
      shards: 4,
      replicationFactor: 3,
      agents: agentsNamed(3).slice(1),
      previous: promoted,
      keepPivots: true,
    });
    for (const s of after)
      if (before[s.shard]!.pivot === 'a-0') expect(s.pivot).toBe(before[s.shard]!.followers[1]);
  });

  it('balances pivots when shards are fewer than agents', () => {
    const as = agentsNamed(7);
    expect(loads(placeShards({ shards: 6, replicationFactor: 3, agents: as }), as)).toEqual({
      copies: 1,
      pivots: 1,
    });
  });
});
