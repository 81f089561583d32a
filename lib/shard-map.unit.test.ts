import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { DEFAULT_RETRY_POLICY } from './retry.ts';
import { placeShards } from './placement.ts';
import { diffShardMaps, requiredCopies, roleOf, validateShardMap, type ShardMap } from './shard-map.ts';

const agents = ['a', 'b', 'c', 'd'].map((name) => ({ name, url: `http://127.0.0.1/${name}` }));
const mapOf = (epoch: number, assignments: ShardMap['assignments']): ShardMap => ({
  clusterUid: 'uid',
  epoch,
  shards: assignments.length,
  replicationFactor: 3,
  writeConcern: 'majority',
  retryPolicy: { ...DEFAULT_RETRY_POLICY },
  agents,
  assignments,
});

describe('requiredCopies', () => {
  it.each([
    ['one', 3, 1],
    ['majority', 1, 1],
    ['majority', 2, 2],
    ['majority', 3, 2],
    ['majority', 5, 3],
    ['all', 3, 3],
  ] as const)('%s of %d copies = %d', (wc, copies, required) =>
    expect(requiredCopies(wc, copies)).toBe(required),
  );
});

describe('validateShardMap', () => {
  it('accepts a placed map', () => {
    expect(validateShardMap(mapOf(1, placeShards({ shards: 8, replicationFactor: 3, agents })))).toEqual([]);
  });
  it.each([
    [[{ shard: 0, pivot: 'a', followers: ['a'] }], /two copies on one agent/],
    [[{ shard: 0, pivot: 'z', followers: [] }], /unknown agent z/],
    [[{ shard: 1, pivot: 'a', followers: [] }], /is for shard 1/],
  ])('reports %j', (assignments, problem) => {
    expect(validateShardMap(mapOf(1, assignments)).join('\n')).toMatch(problem);
  });
});

describe('diffShardMaps', () => {
  it('reports promotions, demotions, new and removed copies', () => {
    const before = mapOf(1, [{ shard: 0, pivot: 'a', followers: ['b', 'c'] }]);
    const after = mapOf(2, [{ shard: 0, pivot: 'b', followers: ['c', 'd'] }]);
    expect(diffShardMaps(before, after)).toEqual([
      { shard: 0, agent: 'a', before: 'pivot', after: 'none', pivotChanged: true },
      { shard: 0, agent: 'b', before: 'follower', after: 'pivot', pivotChanged: true },
      { shard: 0, agent: 'c', before: 'follower', after: 'follower', pivotChanged: true },
      { shard: 0, agent: 'd', before: 'none', after: 'follower', pivotChanged: true },
    ]);
  });

  it('is empty for identical maps and lists every copy for a first map', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 32 }), fc.integer({ min: 1, max: 4 }), (shards, rf) => {
        const m = mapOf(1, placeShards({ shards, replicationFactor: rf, agents }));
        expect(diffShardMaps(m, { ...m, epoch: 2 })).toEqual([]);
        const first = diffShardMaps(null, m);
        expect(first).toHaveLength(shards * Math.min(rf, agents.length));
        for (const c of first) {
          expect(c.before).toBe('none');
          expect(c.after).toBe(roleOf(m.assignments[c.shard]!, c.agent));
        }
      }),
    );
  });
});
