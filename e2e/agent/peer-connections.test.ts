// Forwarded requests and replication use separate connection pools to each peer. A forward waits
// for the pivot's write concern; the pivot may need replication to the very agent that forwarded,
// over connections that agent's own waiting forwards would otherwise hold. With 2 connections per
// peer and many concurrent writes sent to every agent, one shared pool stalled to 0 writes/s.
import { describe, expect } from '@jest/globals';
import type { Write } from './harness.ts';
import { useCluster } from './use-cluster.ts';

const { test } = useCluster({
  agents: 3,
  shards: 6,
  replicationFactor: 3,
  writeConcern: 'majority',
  agentArgs: ['--peer-connections', '2'],
});

describe('peer connections', () => {
  test('many concurrent forwarded writes through every agent, 2 connections per peer: all acknowledged and read back', async (c) => {
    const names = c.names();
    const writes: Write[] = Array.from({ length: 240 }, (_, i) => ({
      key: `pool-${i}`,
      data: { i, pad: 'x'.repeat(512) },
      via: names[i % names.length]!,
    }));
    const outcomes = await c.writeAll(writes, 96);
    const failed = outcomes
      .filter((o) => o.status !== 200)
      .map((o) => `${o.key} via ${o.via}: ${o.status} ${o.reply.slice(0, 120)}`);
    expect(failed).toEqual([]);
    const content = await c.waitConverged(writes.map((w) => w.key));
    const wrong = writes.filter((w) => JSON.stringify(content.get(w.key)?.data) !== JSON.stringify(w.data));
    expect(wrong.map((w) => w.key)).toEqual([]);
  }, 60_000);
});
