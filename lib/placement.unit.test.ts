import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { placeShards, type PlacementAgent } from './placement.ts';
import { copiesOf, type ShardAssignment } from './shard-map.ts';

const agentsNamed = (n: number): PlacementAgent[] =>
  Array.from({ length: n }, (_, i) => ({ name: `a-${i}` }));

/** Copies and pivots per agent (in `agents` order), and copies per node of agents that have one. */
const counts = (map: ShardAssignment[], agents: PlacementAgent[]) => {
  const copies = new Map(agents.map((a) => [a.name, 0]));
  const pivots = new Map(agents.map((a) => [a.name, 0]));
  const perNode = new Map<string, number>();
  for (const s of map) {
    for (const c of copiesOf(s)) {
      copies.set(c, copies.get(c)! + 1);
      const node = agents.find((a) => a.name === c)!.node;
      if (node !== undefined) perNode.set(node, (perNode.get(node) ?? 0) + 1);
    }
    pivots.set(s.pivot, pivots.get(s.pivot)! + 1);
  }
  return {
    copies: [...copies.values()],
    pivots: [...pivots.values()],
    perNode: Object.fromEntries(perNode),
  };
};
const spread = (xs: number[]) => Math.max(...xs) - Math.min(...xs);

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
    expect(spread(counts(map, agentsNamed(agents)).copies)).toBeLessThanOrEqual(1);
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
        const got = counts(map, as);
        expect(spread(got.copies)).toBeLessThanOrEqual(1);
        expect(spread(got.pivots)).toBeLessThanOrEqual(1);
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
          expect(spread(counts(grown, [...as, { name: 'z-new' }]).copies)).toBeLessThanOrEqual(1);
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
    const got = counts(placeShards({ shards: 6, replicationFactor: 3, agents: as }), as);
    expect({ copies: spread(got.copies), pivots: spread(got.pivots) }).toEqual({ copies: 1, pivots: 1 });
  });

  // Spread versus balance (docs/decisions.md §15): spread wins up to a majority, balance beyond.
  const onNodes = (prefix: string, nodes: string[]): PlacementAgent[] =>
    nodes.map((node, i) => ({ name: `${prefix}-${i}`, node }));
  /** The most copies of one shard on one domain (`key` picks node or zone). */
  const worstCrowding = (map: ShardAssignment[], agents: PlacementAgent[], key: 'node' | 'zone') =>
    Math.max(
      ...map.map((s) => {
        const per = new Map<string | undefined, number>();
        for (const c of copiesOf(s)) {
          const d = agents.find((a) => a.name === c)![key];
          per.set(d, (per.get(d) ?? 0) + 1);
        }
        return Math.max(...per.values());
      }),
    );

  it.each([
    {
      name: '5 agents on 3 nodes, rf 3: one copy per node; the lone agent on n3 holds every shard',
      agents: onNodes('d', ['n1', 'n2', 'n3', 'n1', 'n2']),
      rf: 3,
      previous: undefined,
      copies: [8, 8, 16, 8, 8],
      perNode: { n1: 16, n2: 16, n3: 16 },
      crowding: 1,
    },
    {
      name: 'the same, grown from 3 agents on 3 nodes',
      agents: onNodes('d', ['n1', 'n2', 'n3', 'n1', 'n2']),
      rf: 3,
      previous: 3,
      copies: [8, 8, 16, 8, 8],
      perNode: { n1: 16, n2: 16, n3: 16 },
      crowding: 1,
    },
    {
      name: 'grown from 3 agents on 2 nodes (co-located copies) onto a third node: spread repaired',
      agents: onNodes('d', ['n1', 'n1', 'n2', 'n2', 'n3']),
      rf: 3,
      previous: 3,
      copies: [8, 8, 8, 8, 16],
      perNode: { n1: 16, n2: 16, n3: 16 },
      crowding: 1,
    },
    {
      name: '6 agents on 3 nodes, rf 3: spread and balance both met',
      agents: onNodes('d', ['n1', 'n2', 'n3', 'n1', 'n2', 'n3']),
      rf: 3,
      previous: undefined,
      copies: [8, 8, 8, 8, 8, 8],
      perNode: { n1: 16, n2: 16, n3: 16 },
      crowding: 1,
    },
    {
      name: '5 agents on 2 nodes, rf 3: 2 + 1 copies per shard is the best spread; balance decides the rest',
      agents: onNodes('d', ['n1', 'n1', 'n1', 'n2', 'n2']),
      rf: 3,
      previous: undefined,
      copies: [9, 10, 10, 10, 9],
      perNode: { n1: 29, n2: 19 },
      crowding: 2,
    },
    {
      name: '7 agents on 5 nodes, rf 5: up to 2 copies per node keep a majority, so balance wins beyond',
      agents: onNodes('d', ['n1', 'n1', 'n1', 'n2', 'n3', 'n4', 'n5']),
      rf: 5,
      previous: undefined,
      copies: [10, 11, 11, 12, 12, 12, 12],
      perNode: { n1: 32, n2: 12, n3: 12, n4: 12, n5: 12 },
      crowding: 2,
    },
  ])('16 shards: $name', ({ agents, rf, previous, copies, perNode, crowding }) => {
    const before =
      previous === undefined
        ? undefined
        : placeShards({ shards: 16, replicationFactor: rf, agents: agents.slice(0, previous) });
    const map = placeShards({ shards: 16, replicationFactor: rf, agents, previous: before });
    const got = counts(map, agents);
    expect({
      copies: got.copies,
      perNode: got.perNode,
      crowding: worstCrowding(map, agents, 'node'),
    }).toEqual({
      copies,
      perNode,
      crowding,
    });
    expect(spread(got.pivots)).toBeLessThanOrEqual(1);
    // Stable: placing again from the result moves nothing.
    expect(placeShards({ shards: 16, replicationFactor: rf, agents, previous: map })).toEqual(map);
  });

  /** Fewest copies of one shard on the most crowded domain that the domains' sizes allow. */
  const bestCrowding = (agents: PlacementAgent[], key: 'node' | 'zone', rf: number) => {
    const sizes = [...Map.groupBy(agents, (a) => a[key]).values()].map((g) => g.length);
    const copies = Math.min(rf, agents.length);
    for (let t = 1; ; t++) if (sizes.reduce((n, size) => n + Math.min(size, t), 0) >= copies) return t;
  };
  const arbTopology = (key: 'node' | 'zone') =>
    fc
      .record({
        domains: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 1, maxLength: 9 }),
        shards: fc.integer({ min: 1, max: 40 }),
        rf: fc.integer({ min: 1, max: 5 }),
      })
      .map(({ domains, shards, rf }) => ({
        agents: domains.map((d, i) => ({ name: `a-${i}`, [key]: `d${d}` }) as PlacementAgent),
        shards,
        rf,
      }));

  it.each(['node', 'zone'] as const)(
    'spreads every shard across %ss as far as a majority needs and the topology allows, deterministically and stably',
    (key) => {
      fc.assert(
        fc.property(arbTopology(key), ({ agents, shards, rf }) => {
          const map = placeShards({ shards, replicationFactor: rf, agents });
          const cap = Math.max(1, Math.floor((rf - 1) / 2));
          expect(worstCrowding(map, agents, key)).toBeLessThanOrEqual(
            Math.max(cap, bestCrowding(agents, key, rf)),
          );
          for (const s of map) expect(new Set(copiesOf(s)).size).toBe(Math.min(rf, agents.length));
          expect(spread(counts(map, agents).pivots)).toBeLessThanOrEqual(1);
          expect(placeShards({ shards, replicationFactor: rf, agents: [...agents].reverse() })).toEqual(map);
          expect(placeShards({ shards, replicationFactor: rf, agents, previous: map })).toEqual(map);
        }),
      );
    },
  );

  it('copy counts differ by at most 1 when every node has the same number of agents', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 48 }),
        fc.integer({ min: 1, max: 5 }),
        (nodes, perNode, shards, rf) => {
          const agents = Array.from({ length: nodes * perNode }, (_, i) => ({
            name: `a-${i}`,
            node: `n${i % nodes}`,
          }));
          const got = counts(placeShards({ shards, replicationFactor: rf, agents }), agents);
          expect(spread(got.copies)).toBeLessThanOrEqual(1);
          expect(spread(got.pivots)).toBeLessThanOrEqual(1);
        },
      ),
    );
  });
});
