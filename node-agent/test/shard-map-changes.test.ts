// Shard map changes on real agent processes (the e2e/agent harness): adding a replica copies the
// shard and serves it, removing one wipes it durably, a switchover keeps the data (the new pivot
// proves a shared history), and SIGHUP re-reads the cluster file.
import { describe, expect } from '@jest/globals';
import { copiesOf } from '../../lib/shard-map.ts';
import { waitFor, type Cluster } from '../../e2e/agent/harness.ts';
import { useCluster } from '../../e2e/agent/use-cluster.ts';

async function shardStatus(c: Cluster, name: string, shard: number) {
  return (await c.status(name)).shards.find((s) => s.shard === shard);
}

async function writeMany(c: Cluster, via: string, coll: string, n: number, tag: string) {
  const outcomes = await c.writeAll(
    Array.from({ length: n }, (_, i) => ({ key: `${coll}/${i}`, data: { tag, i }, via })),
  );
  expect(outcomes.filter((o) => o.status !== 200).slice(0, 3)).toEqual([]);
}

describe('shard map changes (3 agents, 3 shards, rf 2, majority)', () => {
  const { test } = useCluster({ agents: 3, shards: 3, replicationFactor: 2, writeConcern: 'majority' });

  test('adding a replica copies the shard, then it serves and counts; removing it wipes it', async (c) => {
    const shard = 0;
    const outsider = c.names().find((n) => !copiesOf(c.assignment(shard)).includes(n))!;
    const coll = c.keyOnShard(shard, 'grow');
    await writeMany(c, c.pivotOf(shard), coll, 300, 'before');

    const grown = c.nextMap((as) => {
      as[shard]!.followers.push(outsider);
      return as;
    });
    const pushed = await c.pushMap(grown);
    for (const [name, r] of pushed) expect({ name, status: r.status }).toEqual({ name, status: 200 });
    await waitFor(async () => (await shardStatus(c, outsider, shard))?.state === 'serving', {
      timeoutMs: 20_000,
      message: `${outsider} to serve its new copy of shard ${shard}`,
    });
    await writeMany(c, outsider, coll, 20, 'after');
    const content = await c.waitConverged([`${coll}/*`]);
    expect([...content.keys()].filter((k) => k.startsWith(coll))).toHaveLength(300);
    expect(content.get(`${coll}/0`)?.data).toEqual({ tag: 'after', i: 0 });
    expect(content.get(`${coll}/299`)?.data).toEqual({ tag: 'before', i: 299 });

    const watch = c.client(outsider).watch(`${coll}/*`);
    await watch.opened;
    await watch.waitForMessages(1);
    const shrunk = c.nextMap((as) => {
      as[shard]!.followers = as[shard]!.followers.filter((f) => f !== outsider);
      return as;
    });
    await c.pushMap(shrunk);
    await waitFor(
      async () =>
        (await c.status(outsider)).wipes.some(
          (w) => w.shard === shard && w.completed && /removed/.test(w.reason),
        ),
      { timeoutMs: 10_000, message: `${outsider} to record the wipe of shard ${shard}` },
    );
    expect(await shardStatus(c, outsider, shard)).toBeUndefined();
    // Its watch on the wiped copy was closed so the client resumes elsewhere or with ?since=.
    await waitFor(() => watch.closed, { timeoutMs: 5000, message: 'the watch on the removed copy to close' });
    expect(watch.closeCode).toBe(1012);
    // Reads there still work: it no longer holds the shard and forwards to the pivot.
    const viaOutsider = await c.client(outsider).get(`${coll}/5`);
    expect(viaOutsider.body.data).toEqual({ tag: 'after', i: 5 });
    const metrics = await (await fetch(`${c.url(outsider)}/metrics`)).text();
    expect(metrics).toMatch(/pivot_shard_wipes_total\{reason="removed"\} [1-9]/);
  }, 60_000);

  test('a switchover keeps every copy (shared history proven, no wipe) and SIGHUP applies a newer cluster file', async (c) => {
    const shard = 1;
    const oldPivot = c.pivotOf(shard);
    const newPivot = c.followersOf(shard)[0]!;
    const coll = c.keyOnShard(shard, 'switch');
    await writeMany(c, oldPivot, coll, 100, 'v1');
    const wipesBefore = (await c.status(newPivot)).wipes.length + (await c.status(oldPivot)).wipes.length;

    const next = c.promoteMap(shard, newPivot);
    await c.writeClusterFile({ epoch: next.epoch, assignments: next.assignments });
    c.map = next;
    for (const name of c.names()) process.kill(c.pid(name)!, 'SIGHUP');
    await waitFor(
      async () => {
        const s = await shardStatus(c, newPivot, shard);
        return s?.role === 'pivot' && s.state === 'serving';
      },
      { timeoutMs: 20_000, message: `${newPivot} to lead shard ${shard} after SIGHUP` },
    );
    for (const name of c.names()) expect((await c.status(name)).epoch).toBe(next.epoch);
    await writeMany(c, oldPivot, `${coll}-b`, 10, 'v2');
    const content = await c.waitConverged([`${coll}/*`, `${coll}-b/*`]);
    expect([...content.keys()].filter((k) => k.startsWith(`${coll}/`))).toHaveLength(100);
    const wipesAfter = (await c.status(newPivot)).wipes.length + (await c.status(oldPivot)).wipes.length;
    expect(wipesAfter).toBe(wipesBefore);
    const s = await shardStatus(c, newPivot, shard);
    expect(s!.position.term).toBe(next.epoch);
  }, 60_000);
});
