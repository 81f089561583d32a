// Watch resumption on real agents: a client that reconnects with ?since=<last version> gets
// exactly the changes it missed (no snapshot), also across a kill -9 of the agent it watches;
// a version from a history this copy does not have gets a fresh snapshot marked reset.
import { describe, expect } from '@jest/globals';
import { foldWatch, type WatchMessage } from '../../e2e/agent/harness.ts';
import { useCluster } from '../../e2e/agent/use-cluster.ts';

describe('watch resume (3 agents, 2 shards, rf 3)', () => {
  const { test } = useCluster({ agents: 3, shards: 2, replicationFactor: 3, writeConcern: 'majority' });

  test('reconnecting with since replays only the missed changes, even after kill -9', async (c) => {
    const coll = 'resume';
    const shard = c.shardOf(`${coll}/*`);
    const watcherAt = c.followersOf(shard)[0]!;
    const writer = c.pivotOf(shard);
    expect((await c.client(writer).put(`${coll}/a`, 1)).status).toBe(200);

    const first = c.client(watcherAt).watch(`${coll}/*`);
    await first.opened;
    const [snapshot] = (await first.waitForMessages(1)) as WatchMessage[];
    expect(snapshot).toMatchObject({ type: 'snapshot' });
    const state = foldWatch([snapshot]);
    let last = (snapshot as { version: string }).version;
    if (!state.has(`${coll}/a`)) {
      // The follower had not applied the write yet when the snapshot was taken: its change follows.
      const [, change] = (await first.waitForMessages(2)) as WatchMessage[];
      last = (change as { version: string }).version;
    }
    first.close();

    // Missed while disconnected: a set, a replace and a delete; then the watched agent dies.
    expect((await c.client(writer).put(`${coll}/b`, 2)).status).toBe(200);
    expect((await c.client(writer).put(`${coll}/a`, 3)).status).toBe(200);
    expect((await c.client(writer).delete(`${coll}/b`)).status).toBe(204);
    await c.waitConverged([`${coll}/*`]);
    await c.kill9(watcherAt);
    await c.restart(watcherAt);

    const again = c.client(watcherAt).watch(`${coll}/*`, { query: { since: last } });
    await again.opened;
    const missed = (await again.waitForMessages(3)) as WatchMessage[];
    expect(missed.map((m) => m.type)).toEqual(['set', 'set', 'delete']);
    expect(foldWatch(missed, foldWatch([snapshot]))).toEqual(
      new Map([[`${coll}/a`, [3, (missed[1] as { object: { version: string } }).object.version]]]),
    );
    again.close();

    const stranger = c.client(watcherAt).watch(`${coll}/*`, { query: { since: '999.1' } });
    await stranger.opened;
    const [reset] = (await stranger.waitForMessages(1)) as WatchMessage[];
    expect(reset).toMatchObject({ type: 'snapshot', reset: true, data: [{ key: `${coll}/a`, data: 3 }] });
    stranger.close();

    const bad = c.client(watcherAt).watch(`${coll}/*`, { query: { since: 'yesterday' } });
    await bad.opened;
    const [err] = (await bad.waitForMessages(1)) as WatchMessage[];
    expect(err).toMatchObject({ type: 'error', error: { code: 'INVALID_QUERY' } });
    bad.close();
  }, 60_000);
});
