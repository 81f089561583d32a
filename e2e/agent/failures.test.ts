// Seed 003's scenarios with real `kill -9`: a node fails and recovers, cascading failures,
// repeated kill/restart cycles under load, a large catch-up, and a shard with every copy down.
// Acknowledged writes are tracked and compared by content on every agent afterwards.
import { describe, expect } from '@jest/globals';
import { errorCode, refused, waitFor, type Cluster, type Write, type WriteOutcome } from './harness.ts';
import { useCluster } from './use-cluster.ts';

/** Every acknowledged write is present with its data in the converged content. */
function expectAcknowledgedPresent(
  content: Map<string, { data: unknown }>,
  outcomes: readonly WriteOutcome[],
): void {
  const lost = outcomes
    .filter((o) => o.status === 200)
    .filter((o) => JSON.stringify(content.get(o.key)?.data) !== JSON.stringify(o.data))
    .map((o) => `${o.key} (acked by ${o.via}, now ${JSON.stringify(content.get(o.key)?.data ?? 'absent')})`);
  expect(lost.slice(0, 10)).toEqual([]);
}

/**
 * Six writers that keep writing and overwriting keys of `collections` through whichever agents
 * run, until stopped. Each writer owns its keys and writes each in sequence, so for every key the
 * last acknowledged write (or a later unacknowledged one) is what must survive.
 */
function startWriters(c: Cluster, collections: readonly string[], keysPerWriter = 40) {
  const outcomes: WriteOutcome[] = [];
  let stopped = false;
  let acked = 0;
  const writer = async (w: number) => {
    for (let i = 0; !stopped; i++) {
      const running = c.running();
      const slot = i % keysPerWriter;
      const write = {
        key: `${collections[slot % collections.length]}/w${w}-${slot}`,
        data: { w, i },
        via: running[(i + w) % running.length]!,
      };
      const [o] = await c.writeAll([write], 1);
      outcomes.push(o!);
      if (o!.status === 200) acked++;
      else await new Promise((r) => setTimeout(r, 20));
    }
  };
  const writers = Array.from({ length: 6 }, (_, w) => writer(w));
  return {
    outcomes,
    acked: () => acked,
    waitAcked: (more: number, message: string) => {
      const target = acked + more;
      return waitFor(() => acked >= target, { timeoutMs: 15_000, message });
    },
    stop: async () => {
      stopped = true;
      await Promise.all(writers);
    },
  };
}

/**
 * Every key holds its last acknowledged value or a later unacknowledged attempt; keys never
 * acknowledged are absent or hold one of their attempts; nothing else exists.
 */
function expectSurvivors(content: Map<string, { data: unknown }>, outcomes: readonly WriteOutcome[]): void {
  const attempts = new Map<string, WriteOutcome[]>();
  for (const o of outcomes) attempts.set(o.key, [...(attempts.get(o.key) ?? []), o]);
  const wrong: string[] = [];
  for (const [key, tries] of attempts) {
    const lastAck = tries.findLastIndex((o) => o.status === 200);
    const allowed = tries.slice(Math.max(lastAck, 0)).map((o) => JSON.stringify(o.data));
    const now = content.get(key);
    if (!now) {
      if (lastAck >= 0) wrong.push(`${key}: lost (last acknowledged ${allowed[0]})`);
    } else if (!allowed.includes(JSON.stringify(now.data)))
      wrong.push(`${key}: holds ${JSON.stringify(now.data)}, allowed ${allowed.join(' | ')}`);
  }
  for (const key of content.keys()) if (!attempts.has(key)) wrong.push(`${key}: never written`);
  expect(wrong.slice(0, 10)).toEqual([]);
}

const collectionsOf = (writes: readonly Write[]) => [
  ...new Set(writes.map((w) => w.key.slice(0, w.key.lastIndexOf('/')) + '/*')),
];

describe('seed 003 failures on 3 agents (4 shards, rf 3, majority)', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, writeConcern: 'majority' });

  test('kill -9 an agent: followed shards keep taking writes, its pivoted shards answer 503 fast, it restarts and converges', async (c) => {
    const victim = 'agent-1';
    const live = c.names().filter((n) => n !== victim);
    const followed = c.map.assignments.filter((a) => a.pivot !== victim).map((a) => a.shard);
    const pivoted = c.map.assignments.filter((a) => a.pivot === victim).map((a) => a.shard);
    expect(followed.length).toBeGreaterThan(0);

    const before: Write[] = followed.flatMap((shard) =>
      Array.from({ length: 20 }, (_, i) => ({
        key: `${c.keyOnShard(shard, 'n1')}/pre-${i}`,
        data: { i },
        via: live[i % 2]!,
      })),
    );
    for (const o of await c.writeAll(before)) expect(o.status).toBe(200);

    await c.kill9(victim);
    const during: Write[] = followed.flatMap((shard) =>
      Array.from({ length: 50 }, (_, i) => ({
        key: `${c.keyOnShard(shard, 'n1')}/down-${i}`,
        data: { shard, i },
        via: live[i % 2]!,
      })),
    );
    const outcomes = await c.writeAll(during);
    expect(outcomes.filter((o) => o.status !== 200).map((o) => `${o.key}: ${o.status} ${o.reply}`)).toEqual(
      [],
    );

    for (const shard of pivoted) {
      const r = await c
        .client(live[0]!, { timeoutMs: 10_000 })
        .put(`${c.keyOnShard(shard, 'n1')}/lost-pivot`, 1);
      expect({ shard, status: r.status }).toEqual({ shard, status: 503 });
      expect(r.headers['retry-after']).toBeDefined();
      errorCode(r);
    }

    await c.restart(victim);
    const content = await c.waitConverged(collectionsOf([...before, ...during]));
    expectAcknowledgedPresent(content, [
      ...before.map((w) => ({ ...w, status: 200, reply: '' })),
      ...outcomes,
    ]);
    // The restarted agent serves them to clients too.
    for (const o of outcomes.slice(0, 20))
      expect((await c.client(victim).get(o.key)).body.data).toEqual(o.data);
  });

  test('cascading failures: with two of three down a shard refuses writes, then both return and catch up', async (c) => {
    const survivor = 'agent-2';
    const shard = c.shardWhere(survivor, 'pivot')!;
    expect(shard).toBeDefined();
    const coll = c.keyOnShard(shard, 'cascade');
    const [a, b] = c.names().filter((n) => n !== survivor) as [string, string];

    const first = await c.writeAll(
      Array.from({ length: 30 }, (_, i) => ({ key: `${coll}/one-${i}`, data: i, via: survivor })),
    );
    await c.kill9(a);
    const second = await c.writeAll(
      Array.from({ length: 30 }, (_, i) => ({ key: `${coll}/two-${i}`, data: i, via: survivor })),
    );
    await c.kill9(b);
    // One copy of three cannot make a majority: refused, not hung.
    const refused = await c.client(survivor, { timeoutMs: 10_000 }).put(`${coll}/three`, 3);
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toBeDefined();
    // Local reads keep serving what the survivor holds.
    const local = await c.client(survivor).listAll(`${coll}/*`, { consistency: 'local' });
    expect(local.filter((o) => o.key.includes('/one-') || o.key.includes('/two-')).length).toBe(60);

    await Promise.all([c.restart(a), c.restart(b)]);
    const third = await waitFor(
      async () => {
        const r = await c.client(a).put(`${coll}/after`, 'back');
        return r.status === 200 ? r : false;
      },
      { timeoutMs: 15_000, message: `a write to shard ${shard} to succeed after both followers returned` },
    );
    expect(third.body.data).toBe('back');
    const content = await c.waitConverged([`${coll}/*`]);
    expectAcknowledgedPresent(content, [...first, ...second]);
    for (const o of [...first, ...second]) expect(o.status).toBe(200);
  });

  test('5 kill -9 / restart cycles under concurrent writes lose no acknowledged write', async (c) => {
    const collections = c.map.assignments.map((a) => c.keyOnShard(a.shard, 'cycle'));
    const load = startWriters(c, collections);
    try {
      for (let cycle = 0; cycle < 5; cycle++) {
        const victim = c.names()[cycle % 3]!;
        await load.waitAcked(100, `100 more acknowledged writes before cycle ${cycle}`);
        await c.kill9(victim);
        await load.waitAcked(50, `50 acknowledged writes while ${victim} is down (cycle ${cycle})`);
        await c.restart(victim);
      }
    } finally {
      await load.stop();
    }
    expect(load.acked()).toBeGreaterThanOrEqual(750);
    const content = await c.waitConverged(
      collections.map((k) => `${k}/*`),
      { timeoutMs: 30_000 },
    );
    expectSurvivors(content, load.outcomes);
  }, 120_000);

  test('SIGTERM under concurrent writes is a graceful exit (code 0) and loses no acknowledged write', async (c) => {
    const collections = c.map.assignments.map((a) => c.keyOnShard(a.shard, 'graceful'));
    const load = startWriters(c, collections);
    try {
      for (const victim of ['agent-2', 'agent-0', 'agent-1']) {
        await load.waitAcked(100, `100 acknowledged writes before stopping ${victim}`);
        expect({ victim, code: await c.stop(victim) }).toEqual({ victim, code: 0 });
        await load.waitAcked(30, `30 acknowledged writes while ${victim} is stopped`);
        await c.restart(victim);
      }
    } finally {
      await load.stop();
    }
    const content = await c.waitConverged(
      collections.map((k) => `${k}/*`),
      { timeoutMs: 30_000 },
    );
    expectSurvivors(content, load.outcomes);
  }, 90_000);

  test('kill -9 of every agent at once: after restarting all, every acknowledged write is there', async (c) => {
    const collections = c.map.assignments.map((a) => c.keyOnShard(a.shard, 'blackout'));
    const writes: Write[] = collections.flatMap((coll, ci) =>
      Array.from({ length: 50 }, (_, i) => ({
        key: `${coll}/${i}`,
        data: { ci, i },
        via: c.names()[i % 3]!,
      })),
    );
    const outcomes = await c.writeAll(writes);
    expect(refused(outcomes)).toEqual([]);
    await Promise.all(c.names().map((name) => c.kill9(name)));
    await Promise.all(c.names().map((name) => c.restart(name)));
    await c.waitWritable();
    const content = await c.waitConverged(collections.map((k) => `${k}/*`));
    expectAcknowledgedPresent(content, outcomes);
    expect(content.size).toBe(writes.length);
  });

  test('a follower that was down catches up a batch of 10,000 keys', async (c) => {
    const victim = 'agent-0';
    const live = c.names().filter((n) => n !== victim);
    const shards = c.map.assignments.filter((a) => a.pivot !== victim).map((a) => a.shard);
    const collections = Array.from({ length: 10 }, (_, i) =>
      c.keyOnShard(shards[i % shards.length]!, `bulk${i}`),
    );
    await c.kill9(victim);
    const writes: Write[] = collections.flatMap((coll, ci) =>
      Array.from({ length: 1000 }, (_, i) => ({
        key: `${coll}/${i}`,
        data: { ci, i, pad: 'v'.repeat(64) },
        via: live[i % 2]!,
      })),
    );
    const outcomes = await c.writeAll(writes, 32);
    expect(refused(outcomes)).toEqual([]);
    const pivotPositions = new Map(
      (await c.status(live[0]!)).shards.map((s) => [s.shard, s.position] as const),
    );
    await c.restart(victim);
    const content = await c.waitConverged(
      collections.map((k) => `${k}/*`),
      { timeoutMs: 60_000 },
    );
    expectAcknowledgedPresent(content, outcomes);
    expect(content.size).toBe(10_000);
    // Its status reports itself caught up on those shards.
    const status = await c.status(victim);
    for (const shard of shards) {
      const s = status.shards.find((x) => x.shard === shard)!;
      expect(s.state).toBe('serving');
      expect(s.position.seq).toBeGreaterThanOrEqual(pivotPositions.get(shard)?.seq ?? 0);
    }
  }, 120_000);
});

describe('every copy of a shard down (3 agents, rf 1)', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 1, writeConcern: 'majority' });

  const probe = async (c: Cluster, via: string, key: string) => {
    const client = c.client(via, { timeoutMs: 10_000 });
    return {
      put: await client.put(key, 1),
      get: await client.get(key),
      push: await client.push(key, 1),
      delete: await client.delete(key),
      list: await client.list(key),
    };
  };

  test('requests for it answer 503 with Retry-After, other shards keep working, data survives kill -9', async (c) => {
    const holder = 'agent-0';
    const shard = c.shardWhere(holder, 'pivot')!;
    const key = c.keyOnShard(shard, 'only');
    const otherShard = c.map.assignments.find((a) => a.pivot !== holder)!.shard;
    const otherKey = c.keyOnShard(otherShard, 'elsewhere');
    expect((await c.client('agent-1').put(key, { kept: true })).status).toBe(200);

    await c.kill9(holder);
    for (const via of ['agent-1', 'agent-2']) {
      const replies = await probe(c, via, key);
      for (const [op, r] of Object.entries(replies)) {
        expect({ via, op, status: r.status }).toEqual({ via, op, status: 503 });
        expect({ via, op, retryAfter: r.headers['retry-after'] !== undefined }).toEqual({
          via,
          op,
          retryAfter: true,
        });
        errorCode(r);
      }
    }
    expect((await c.client('agent-2').put(otherKey, 'fine')).status).toBe(200);
    expect((await c.client('agent-1').get(otherKey)).body.data).toBe('fine');

    await c.restart(holder);
    for (const name of c.names()) expect((await c.client(name).get(key)).body.data).toEqual({ kept: true });
  });

  test('a watch at an agent without a copy relays the pivot’s stream and ends, not hangs, when the pivot dies', async (c) => {
    const holder = 'agent-2';
    const coll = c.keyOnShard(c.shardWhere(holder, 'pivot')!, 'relayed');
    const relay = c.names().find((n) => n !== holder)!;
    const x = await c.client('agent-1').put(`${coll}/x`, 1);
    expect(x.status).toBe(200);
    const w = c.client(relay).watch(`${coll}/*`);
    try {
      await w.opened;
      await w.waitForMessages(1);
      expect(w.messages[0]).toMatchObject({ type: 'snapshot', data: [{ key: `${coll}/x`, data: 1 }] });
      const y = await c.client(relay).put(`${coll}/y`, 2);
      expect(y.status).toBe(200);
      await w.waitForMessages(2);
      expect(w.messages[1]).toMatchObject({
        type: 'set',
        object: { key: `${coll}/y`, data: 2, version: y.body.version },
      });
      await c.kill9(holder);
      await waitFor(() => w.closed, {
        timeoutMs: 10_000,
        message: `the relayed watch at ${relay} to close after ${holder} died`,
      });
    } finally {
      w.close();
    }
    await c.restart(holder);
    expect((await c.client(relay).list(coll)).body.map((o) => o.data)).toEqual([1, 2]);
  });

  test('SIGTERM is a graceful exit (code 0) and the data is there after the restart', async (c) => {
    const name = 'agent-1';
    const key = c.keyOnShard(c.shardWhere(name, 'pivot')!, 'graceful');
    expect((await c.client('agent-2').put(key, 'persisted')).status).toBe(200);
    expect(await c.stop(name)).toBe(0);
    await c.restart(name);
    expect((await c.client(name).get(key, { consistency: 'local' })).body.data).toBe('persisted');
  });
});

describe('a log bounded in bytes (3 agents, rf 3, --log-retain-bytes 64 KiB)', () => {
  const { test } = useCluster({
    agents: 3,
    shards: 2,
    replicationFactor: 3,
    agentArgs: ['--log-retain-bytes', String(64 * 1024)],
  });

  test('the pivot trims its log to the byte bound; a follower further behind is copied afresh and holds the same content', async (c) => {
    const victim = 'agent-0';
    const live = c.names().filter((n) => n !== victim);
    const shard = c.map.assignments.find((a) => a.pivot !== victim)!.shard;
    const pivot = c.map.assignments[shard]!.pivot;
    const coll = c.keyOnShard(shard, 'big');
    await c.kill9(victim);
    // 200 values of ~2 KB: about 400 KB of log, six times the bound.
    const writes: Write[] = Array.from({ length: 200 }, (_, i) => ({
      key: `${coll}/${i}`,
      data: { i, pad: 'b'.repeat(2000) },
      via: live[i % 2]!,
    }));
    const outcomes = await c.writeAll(writes, 16);
    expect(refused(outcomes)).toEqual([]);
    const trimmed = await waitFor(
      async () => {
        const s = (await c.status(pivot)).shards.find((x) => x.shard === shard)!;
        return s.log.firstSeq > 1 && s.log.bytes <= 64 * 1024 ? s : false;
      },
      { timeoutMs: 20_000, message: `pivot ${pivot} to trim shard ${shard}'s log to 64 KiB` },
    );
    expect(trimmed.log.bytes).toBeGreaterThan(0);
    await c.restart(victim);
    const content = await c.waitConverged([`${coll}/*`], { timeoutMs: 60_000 });
    expectAcknowledgedPresent(content, outcomes);
    // The log no longer reached back to the victim's position: it was wiped and copied.
    const wipes = (await c.status(victim)).wipes.filter((w) => w.shard === shard);
    expect(wipes.map((w) => w.reason).join('; ')).toMatch(/trimmed/);
  }, 120_000);
});
