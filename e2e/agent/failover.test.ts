// Pivot changes driven by map pushes (what the operator does): failover after kill -9 with no
// acknowledged write lost, an ex-pivot with unacknowledged extra writes cut back to the new
// pivot's history, fencing of a stale pivot, and the wipe of another cluster's data at start.
import { describe, expect } from '@jest/globals';
import { refused, waitFor, type Cluster, type Write, type WriteOutcome } from './harness.ts';
import { useCluster } from './use-cluster.ts';

function expectAcknowledgedPresent(
  content: Map<string, { data: unknown }>,
  outcomes: readonly WriteOutcome[],
) {
  const lost = outcomes
    .filter((o) => o.status === 200)
    .filter((o) => JSON.stringify(content.get(o.key)?.data) !== JSON.stringify(o.data))
    .map(
      (o) =>
        `${o.key}: acked ${JSON.stringify(o.data)}, now ${JSON.stringify(content.get(o.key)?.data ?? 'absent')}`,
    );
  expect(lost.slice(0, 10)).toEqual([]);
}

/** The follower with the highest applied position for `shard` (the operator's choice). */
async function mostCaughtUp(c: Cluster, shard: number, candidates: string[]): Promise<string> {
  const ranked = await Promise.all(
    candidates.map(async (name) => {
      const s = (await c.status(name)).shards.find((x) => x.shard === shard)!;
      return { name, term: s.position.term, seq: s.position.seq };
    }),
  );
  ranked.sort((a, b) => b.term - a.term || b.seq - a.seq);
  return ranked[0]!.name;
}

/** Retries a write until the (new) pivot takes it; a map change applies asynchronously. */
async function writeWhenServing(c: Cluster, via: string, key: string, data: unknown) {
  let last = 'no answer yet';
  return waitFor(
    async () => {
      const r = await c.client(via).put(key, data);
      last = `${r.status} ${r.text.slice(0, 300)}`;
      return r.status === 200 ? r : false;
    },
    {
      timeoutMs: 15_000,
      message: () => `PUT ${key} via ${via} to be acknowledged after the map change (last: ${last})`,
    },
  );
}

/**
 * Kill -9 a pivot, promote a follower with a map push, restart the ex-pivot: every acknowledged
 * write survives and every copy ends with the new pivot's content. With writeConcern `all` no write
 * can be acknowledged while a copy is down, so the writes after the change wait for the restart.
 */
/**
 * Writes 100 items through `pivot` while `frozen` (a follower) is SIGSTOPped, so they are
 * acknowledged by the pivot and the other follower only; all must be acknowledged.
 */
async function writeWhileFrozen(
  c: Cluster,
  frozen: string,
  pivot: string,
  coll: string,
): Promise<WriteOutcome[]> {
  c.pause(frozen);
  let acked: WriteOutcome[];
  try {
    acked = await c.writeAll(
      Array.from({ length: 100 }, (_, i) => ({ key: `${coll}/${i}`, data: { i }, via: pivot })),
    );
  } finally {
    c.resume(frozen);
  }
  expect(refused(acked)).toEqual([]);
  return acked;
}

async function failoverKeepsAcknowledgedWrites(c: Cluster, pickNewPivot: 'most-caught-up' | 'last') {
  const shard = c.shardWhere('agent-0', 'pivot')!;
  const oldPivot = c.pivotOf(shard);
  const followers = c.followersOf(shard);
  const coll = c.keyOnShard(shard, `fo-${pickNewPivot}`);
  const writes: Write[] = Array.from({ length: 200 }, (_, i) => ({
    key: `${coll}/${i}`,
    data: { i },
    via: c.names()[i % 3]!,
  }));
  const before = await c.writeAll(writes);
  expect(refused(before)).toEqual([]);

  await c.kill9(oldPivot);
  const newPivot =
    pickNewPivot === 'last' ? followers[followers.length - 1]! : await mostCaughtUp(c, shard, followers);
  const results = await c.pushMap(c.promoteMap(shard, newPivot));
  for (const [name, r] of results) expect({ name, status: r.status }).toEqual({ name, status: 200 });

  const other = followers.find((f) => f !== newPivot)!;
  const writeAfter = async () => {
    await writeWhenServing(c, other, `${coll}/after-0`, 'after');
    const after = await c.writeAll(
      Array.from({ length: 50 }, (_, i) => ({
        key: `${coll}/after-${i + 1}`,
        data: { after: i },
        via: i % 2 ? other : newPivot,
      })),
    );
    expect(refused(after)).toEqual([]);
    return after;
  };
  let after: WriteOutcome[];
  if (c.map.writeConcern === 'majority') {
    after = await writeAfter();
    // Strong reads at the new pivot see every acknowledged write before the ex-pivot returns.
    const atNewPivot = await c.client(newPivot).listAll(`${coll}/*`);
    expect(atNewPivot.length).toBe(251);
    await c.restart(oldPivot);
  } else {
    await c.restart(oldPivot);
    after = await writeAfter();
  }

  const content = await c.waitConverged([`${coll}/*`]);
  expectAcknowledgedPresent(content, [...before, ...after]);
  expect(content.size).toBe(251);
  const exPivotStatus = (await c.status(oldPivot)).shards.find((s) => s.shard === shard)!;
  expect({ role: exPivotStatus.role, pivot: exPivotStatus.pivot }).toEqual({
    role: 'follower',
    pivot: newPivot,
  });
}

describe('failover by map change (3 agents, 4 shards, rf 3, majority)', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, writeConcern: 'majority' });

  test('kill -9 a pivot, promote its most caught-up follower: no majority-acknowledged write is lost, the ex-pivot converges', async (c) => {
    await failoverKeepsAcknowledgedWrites(c, 'most-caught-up');
  }, 60_000);

  test('an ex-pivot holding unacknowledged extra writes ends with exactly the new pivot’s data', async (c) => {
    const shard = c.shardWhere('agent-1', 'pivot')!;
    const pivot = c.pivotOf(shard);
    const [f1, f2] = c.followersOf(shard) as [string, string];
    const coll = c.keyOnShard(shard, 'diverge');
    const acked = await c.writeAll(
      Array.from({ length: 40 }, (_, i) => ({ key: `${coll}/${i}`, data: { i }, via: pivot })),
    );
    expect(refused(acked)).toEqual([]);

    await c.kill9(f1);
    await c.kill9(f2);
    // The lone pivot cannot get these acknowledged, but may have stored them.
    const pivotClient = c.client(pivot, { timeoutMs: 10_000 });
    const unacked = [
      await pivotClient.put(`${coll}/extra-0`, 'never acknowledged'),
      await pivotClient.put(`${coll}/extra-1`, 'never acknowledged'),
      await pivotClient.put(`${coll}/0`, 'overwrite never acknowledged'),
      await pivotClient.delete(`${coll}/1`),
    ];
    expect(unacked.map((r) => r.status)).toEqual([503, 503, 503, 503]);
    const pivotSeq = (await c.status(pivot)).shards.find((s) => s.shard === shard)!.position.seq;
    await c.kill9(pivot);

    await Promise.all([c.restart(f1), c.restart(f2)]);
    const followerSeq = (await c.status(f1)).shards.find((s) => s.shard === shard)!.position.seq;
    const pushed = await c.pushMap(c.promoteMap(shard, f1));
    for (const [name, r] of pushed) expect({ name, status: r.status }).toEqual({ name, status: 200 });
    await writeWhenServing(c, f2, `${coll}/new-pivot`, 'from the new pivot');

    await c.restart(pivot);
    const content = await c.waitConverged([`${coll}/*`]);
    expect(content.has(`${coll}/extra-0`)).toBe(false);
    expect(content.has(`${coll}/extra-1`)).toBe(false);
    expect(content.get(`${coll}/0`)?.data).toEqual({ i: 0 });
    expect(content.get(`${coll}/1`)?.data).toEqual({ i: 1 });
    expect(content.get(`${coll}/new-pivot`)?.data).toBe('from the new pivot');
    expectAcknowledgedPresent(content, acked);
    expect(content.size).toBe(41);
    // Strong reads through the ex-pivot agree.
    expect((await c.client(pivot).get(`${coll}/extra-0`)).status).toBe(404);
    if (pivotSeq > followerSeq) {
      // It held entries the new pivot lacks: it must have wiped the shard (durably, recorded).
      let wipes = '';
      await waitFor(
        async () => {
          const status = await c.status(pivot);
          wipes = JSON.stringify(status.wipes);
          return status.wipes.some((w) => w.shard === shard && w.completed);
        },
        {
          timeoutMs: 10_000,
          message: () => `a completed wipe of shard ${shard} in ${pivot}'s status (${wipes})`,
        },
      );
    }
  }, 60_000);

  test('fencing: a pivot left on a stale epoch cannot get a write acknowledged, and the write never appears', async (c) => {
    const shard = c.shardWhere('agent-2', 'pivot')!;
    const stale = c.pivotOf(shard);
    const newPivot = c.followersOf(shard)[0]!;
    const others = c.names().filter((n) => n !== stale);
    const key = `${c.keyOnShard(shard, 'fenced')}/k`;
    expect((await c.client(stale).put(key, 'before')).status).toBe(200);

    expect((await c.client(stale).put(`${key}-read`, 'old')).status).toBe(200);

    // Frozen while the others move on, it wakes up still believing it is the pivot.
    const next = c.promoteMap(shard, newPivot);
    c.pause(stale);
    try {
      const pushed = await c.pushMap(next, { to: others });
      for (const [name, r] of pushed) expect({ name, status: r.status }).toEqual({ name, status: 200 });
      await writeWhenServing(c, newPivot, `${key}-read`, 'new');
    } finally {
      c.resume(stale);
    }
    // A strong read there must not return what the new pivot already replaced.
    const staleRead = await c.client(stale, { timeoutMs: 10_000 }).get(`${key}-read`);
    expect({
      status: staleRead.status,
      data: staleRead.status === 200 ? staleRead.body.data : 'refused',
    }).toEqual(
      staleRead.status === 200 ? { status: 200, data: 'new' } : { status: staleRead.status, data: 'refused' },
    );

    const attempt = await c.client(stale, { timeoutMs: 10_000 }).put(key, 'from the stale pivot');
    expect(attempt.status >= 200 && attempt.status < 300 ? attempt.text : 'refused').toBe('refused');
    const atNewPivot = await c.client(newPivot).get(key);
    expect(atNewPivot.body.data).toBe('before');

    // An older map is refused outright.
    const old = await c.pushMap({ ...next, epoch: next.epoch - 1 }, { to: [newPivot], remember: false });
    expect(old.get(newPivot)!.status).toBe(409);
    expect((old.get(newPivot)!.body as { error: { code: string } }).error.code).toBe('STALE_EPOCH');

    // Once it learns the new map, it too holds the new pivot's value.
    const caught = await c.pushMap(next, { to: [stale] });
    expect(caught.get(stale)!.status).toBe(200);
    const content = await c.waitConverged([key, `${key}-read`]);
    expect(content.get(key)?.data).toBe('before');
    expect(content.get(`${key}-read`)?.data).toBe('new');
    for (const name of c.names()) expect((await c.client(name).get(key)).body.data).toBe('before');
  }, 60_000);

  test('an ex-pivot killed -9 while wiping and re-copying a diverged shard still ends with exactly the new pivot’s data', async (c) => {
    const shard = c.shardWhere('agent-2', 'pivot')!;
    const pivot = c.pivotOf(shard);
    const [f1, f2] = c.followersOf(shard) as [string, string];
    const coll = c.keyOnShard(shard, 'recopy');
    const pad = 'p'.repeat(4096);
    const acked = await c.writeAll(
      Array.from({ length: 1500 }, (_, i) => ({ key: `${coll}/${i}`, data: { i, pad }, via: pivot })),
      32,
    );
    expect(refused(acked)).toEqual([]);
    // Diverge: the lone pivot stores a write nobody else gets.
    await c.kill9(f1);
    await c.kill9(f2);
    const extra = await c.client(pivot, { timeoutMs: 10_000 }).put(`${coll}/extra`, 'unacknowledged');
    expect(extra.status).toBe(503);
    await c.kill9(pivot);
    await Promise.all([c.restart(f1), c.restart(f2)]);
    await c.pushMapOrThrow(c.promoteMap(shard, f1));
    await writeWhenServing(c, f2, `${coll}/new`, 'from the new pivot');

    // Restart the ex-pivot and kill it again as soon as it is seen wiping or copying the shard.
    await c.restart(pivot, { waitReady: false });
    let seen = 'nothing';
    await waitFor(
      async () => {
        const s = (await c.status(pivot)).shards.find((x) => x.shard === shard);
        seen = s ? `${s.role}/${s.state}` : 'no status';
        return s !== undefined && s.pivot === f1;
      },
      { timeoutMs: 10_000, message: () => `${pivot} to take the new map (seen ${seen})` },
    );
    await c.kill9(pivot);
    await c.restart(pivot);
    const content = await c.waitConverged([`${coll}/*`], { timeoutMs: 30_000 });
    expect(content.has(`${coll}/extra`)).toBe(false);
    expect(content.get(`${coll}/new`)?.data).toBe('from the new pivot');
    expectAcknowledgedPresent(content, acked);
    expect(content.size).toBe(1501);
  }, 90_000);

  test('with the pivot dead, a strong read at a follower that missed a write never answers the old value', async (c) => {
    const shard = c.shardWhere('agent-1', 'pivot')!;
    const pivot = c.pivotOf(shard);
    const behind = c.followersOf(shard)[1]!;
    const key = c.keyOnShard(shard, 'stale-read');
    expect((await c.client(pivot).put(key, 'old')).status).toBe(200);
    await c.waitConverged([key]);
    c.pause(behind);
    try {
      expect((await c.client(pivot).put(key, 'new')).status).toBe(200); // the pivot and the other follower
      await c.kill9(pivot);
    } finally {
      c.resume(behind);
    }
    // Its own copy still says 'old' (it was frozen); a strong read must not serve that.
    const strong = await c.client(behind, { timeoutMs: 10_000 }).get(key);
    expect(strong.status === 200 ? strong.body.data : strong.status).toEqual(
      strong.status === 200 ? 'new' : 503,
    );
    await c.restart(pivot);
    await c.waitConverged([key]);
    for (const name of c.names()) expect((await c.client(name).get(key)).body.data).toBe('new');
  }, 60_000);

  test('promoting the least caught-up follower right after both followers restarted keeps every majority-acknowledged write', async (c) => {
    const shard = c.map.assignments.length - 1; // whoever pivots it after the tests before
    const pivot = c.pivotOf(shard);
    const [ahead, behind] = c.followersOf(shard) as [string, string];
    const coll = c.keyOnShard(shard, 'cold-laggard');
    const acked = await writeWhileFrozen(c, behind, pivot, coll);
    await c.kill9(pivot);
    await c.kill9(ahead);
    await c.kill9(behind);
    await Promise.all([c.restart(ahead), c.restart(behind)]);
    await c.pushMapOrThrow(c.promoteMap(shard, behind));
    // Before any new write: the two live copies agree and hold every acknowledged write.
    expectAcknowledgedPresent(await c.waitConverged([`${coll}/*`]), acked);
    await writeWhenServing(c, ahead, `${coll}/after`, 'after');
    await c.restart(pivot);
    const content = await c.waitConverged([`${coll}/*`]);
    expectAcknowledgedPresent(content, acked);
    expect(content.size).toBe(101);
  }, 60_000);

  test('promoting the least caught-up follower still keeps every majority-acknowledged write', async (c) => {
    const shard = c.shardWhere('agent-0', 'pivot')!;
    const pivot = c.pivotOf(shard);
    const [ahead, behind] = c.followersOf(shard) as [string, string];
    const coll = c.keyOnShard(shard, 'laggard');
    const acked = await writeWhileFrozen(c, behind, pivot, coll);
    await c.kill9(pivot);

    const seqOf = async (name: string) =>
      (await c.status(name)).shards.find((s) => s.shard === shard)!.position.seq;
    // The scenario holds: the one promoted lacks writes that were acknowledged.
    expect((await seqOf(behind)) < (await seqOf(ahead))).toBe(true);
    const pushed = await c.pushMap(c.promoteMap(shard, behind));
    for (const [name, r] of pushed) expect({ name, status: r.status }).toEqual({ name, status: 200 });
    await writeWhenServing(c, ahead, `${coll}/after`, 'after');

    const atNewPivot = await c.client(behind).listAll(`${coll}/*`, { consistency: 'local' });
    const byKey = (a: [string, unknown], b: [string, unknown]) => a[0].localeCompare(b[0]);
    expect(atNewPivot.map((o): [string, unknown] => [o.key, o.data]).sort(byKey)).toEqual(
      [
        ...acked.map((o): [string, unknown] => [o.key, o.data]),
        [`${coll}/after`, 'after'] as [string, unknown],
      ].sort(byKey),
    );
    await c.restart(pivot);
    const content = await c.waitConverged([`${coll}/*`]);
    expectAcknowledgedPresent(content, acked);
    expect(content.size).toBe(101);
  }, 60_000);
});

describe('failover with writeConcern all (3 agents, rf 3)', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, writeConcern: 'all' });

  test('any follower may be promoted: no write acknowledged by all copies is lost', async (c) => {
    await failoverKeepsAcknowledgedWrites(c, 'last');
  }, 60_000);

  test('a forwarded write applied at the pivot but short of its write concern is answered 503 once, never resent', async (c) => {
    const shard = 0;
    const a = c.map.assignments[shard]!;
    const [via, down] = a.followers as [string, string];
    const key = c.keyOnShard(shard, 'once');
    await c.kill9(down);
    const before = (await c.status(a.pivot)).shards.find((s) => s.shard === shard)!.position.seq;
    const reply = await c.client(via).put(key, { v: 1 });
    expect(reply.status).toBe(503);
    expect(reply.headers['x-pivot-applied']).toBe('1');
    // Applied exactly once at the pivot: a resend would have taken another seq each time.
    const after = (await c.status(a.pivot)).shards.find((s) => s.shard === shard)!.position.seq;
    expect(after).toBe(before + 1);
    expect((await c.client(a.pivot).get(key, { consistency: 'local' })).body.data).toEqual({ v: 1 });
    await c.restart(down);
    const content = await c.waitConverged([key]);
    expect(content.get(key)?.data).toEqual({ v: 1 });
  }, 60_000);

  test('a strong read never shows a write that is not acknowledged yet; once it is, it does', async (c) => {
    const shard = 1;
    const a = c.map.assignments[shard]!;
    const down = a.followers[0]!;
    const coll = c.keyOnShard(shard, 'pending');
    const key = `${coll}/x`;
    expect((await c.client(a.pivot).put(key, { v: 'acked' })).status).toBe(200);
    await c.kill9(down);
    const w = await c.client(a.pivot).put(key, { v: 'not acked' });
    expect(w.status).toBe(503);
    // Stored at the pivot (local reads show its own copy), but it could still be lost.
    expect((await c.client(a.pivot).get(key, { consistency: 'local' })).body.data).toEqual({
      v: 'not acked',
    });
    const strong = await c.client(a.pivot).get(key);
    expect(strong.status).toBe(503);
    expect((await c.client(a.pivot).list(coll)).status).toBe(503);
    // The follower returns, catches up, and the write is acknowledged by all copies.
    await c.restart(down);
    await waitFor(async () => (await c.client(a.pivot).get(key)).status === 200, {
      timeoutMs: 20_000,
      message: 'the strong read to succeed once every copy holds the write',
    });
    expect((await c.client(a.pivot).get(key)).body.data).toEqual({ v: 'not acked' });
    expect((await c.client(a.pivot).list(coll)).body.map((o) => o.data)).toEqual([{ v: 'not acked' }]);
  }, 60_000);
});

describe('data of another cluster', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, clusterId: 'cluster-a' });

  test('is wiped at start, and status and metrics show the wipe', async (c) => {
    const keys = ['owned/1', 'owned/2', 'solo'];
    for (const key of keys) expect((await c.client('agent-0').put(key, key)).status).toBe(200);
    for (const name of c.names()) expect(await c.stop(name)).toBe(0);

    await c.writeClusterFile({ clusterId: 'cluster-b' });
    c.map = { ...c.map, clusterUid: 'cluster-b' };
    for (const name of c.names()) await c.restart(name);

    for (const name of c.names()) {
      const status = await c.status(name);
      expect(status.clusterUid).toBe('cluster-b');
      expect(status.wipes.length).toBeGreaterThan(0);
      expect(status.wipes.every((w) => w.completed)).toBe(true);
      for (const key of keys)
        expect({
          name,
          key,
          status: (await c.client(name).get(key, { consistency: 'local' })).status,
        }).toEqual({ name, key, status: 404 });
      expect((await c.client(name).list('owned', { consistency: 'local' })).body).toEqual([]);
      const metrics = (await c.client(name).raw('GET', '/metrics')).text;
      const wipeSamples = metrics
        .split('\n')
        .filter((l) => !l.startsWith('#') && /wipe/i.test(l))
        .map((l) => Number(l.trim().split(/\s+/).pop()));
      expect({ name, wipesCounted: wipeSamples.some((v) => v > 0) }).toEqual({ name, wipesCounted: true });
    }
    expect((await c.client('agent-1').put('solo', 'new life')).status).toBe(200);
    expect((await c.client('agent-2').get('solo')).body.data).toBe('new life');
  }, 60_000);
});
