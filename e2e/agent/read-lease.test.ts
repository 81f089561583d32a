// Read leases (docs/decisions.md §20): a pivot whose followers promised it their shard serves
// strong reads without a confirmation round per read, and a frozen pivot's lease ends before its
// successor can acknowledge anything.
import { describe, expect } from '@jest/globals';
import { waitFor, type Cluster } from './harness.ts';
import { useCluster } from './use-cluster.ts';

const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, writeConcern: 'majority' });

/** This agent's strong reads so far, by how its leadership was confirmed. */
async function strongReads(c: Cluster, name: string): Promise<{ lease: number; round: number }> {
  const text = (await c.client(name).raw('GET', '/metrics')).text;
  const count = (via: string) =>
    Number(
      new RegExp(`^pivot_strong_read_confirmations_total\\{via="${via}"\\} (\\S+)$`, 'm').exec(text)?.[1] ??
        0,
    );
  return { lease: count('lease'), round: count('round') };
}

describe('read leases', () => {
  test('a pivot serves strong reads under its followers’ promises, not with a round per read', async (c) => {
    const shard = c.shardWhere('agent-0', 'pivot')!;
    const key = c.keyOnShard(shard, 'leased');
    expect((await c.client('agent-0').put(key, { n: 1 })).status).toBe(200);
    const before = await strongReads(c, 'agent-0');
    for (let i = 0; i < 50; i++) {
      const r = await c.client('agent-0').get(key);
      expect({ status: r.status, data: r.body.data }).toEqual({ status: 200, data: { n: 1 } });
    }
    const after = await strongReads(c, 'agent-0');
    expect(after.lease + after.round - before.lease - before.round).toBe(50);
    // Each round renews the promises, so reads right after it need none: fewer rounds than reads.
    expect(after.lease - before.lease).toBeGreaterThan(0);
  });

  test('a pivot frozen with a fresh lease never answers a read with what its successor replaced', async (c) => {
    const shard = c.shardWhere('agent-1', 'pivot')!;
    const stale = c.pivotOf(shard);
    const successor = c.followersOf(shard)[0]!;
    const key = c.keyOnShard(shard, 'lease-fenced');
    expect((await c.client(stale).put(key, 'old')).status).toBe(200);
    // Read until one is served under a lease: the lease is fresh when the pivot freezes.
    await waitFor(
      async () => {
        const before = await strongReads(c, stale);
        expect((await c.client(stale).get(key)).body.data).toBe('old');
        return (await strongReads(c, stale)).lease > before.lease;
      },
      { timeoutMs: 10_000, message: () => `a strong read at ${stale} served under a read lease` },
    );
    const next = c.promoteMap(shard, successor);
    c.pause(stale);
    try {
      const pushed = await c.pushMap(next, { to: c.names().filter((n) => n !== stale) });
      for (const [name, r] of pushed) expect({ name, status: r.status }).toEqual({ name, status: 200 });
      await waitFor(async () => (await c.client(successor).put(key, 'new')).status === 200, {
        timeoutMs: 15_000,
        message: () => `the write through ${successor} to be acknowledged after the map change`,
      });
    } finally {
      c.resume(stale);
    }
    // At once, while a lease that did not end before the successor's write would still hold.
    const read = await c.client(stale, { timeoutMs: 10_000 }).get(key);
    expect(read.status === 200 ? read.body.data : 'refused').not.toBe('old');

    await c.pushMap(next, { to: [stale] });
    const content = await c.waitConverged([key]);
    expect(content.get(key)?.data).toBe('new');
  }, 60_000);
});
