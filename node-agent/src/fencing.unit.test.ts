// Fencing and write-concern accounting on a real Agent over real LMDB, with peers that do not
// exist (so nothing is acknowledged by anyone but this agent).
import { afterEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { ShardMap } from '../../lib/shard-map.ts';
import { Agent, shardMapProblems } from './agent.ts';
import { ApiError } from './api/errors.ts';
import { createMetrics } from './metrics.ts';
import { CommitWaiters } from './replication/commit-waiters.ts';
import { MAX_LEASE_MS } from './replication/history.ts';
import type { LogEntry } from './storage/records.ts';
import { Store } from './storage/store.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const policy = { maxAttempts: 1, initialBackoffMs: 10, maxBackoffMs: 10, multiplier: 1, timeoutMs: 200 };
const map = (epoch: number, pivot = 'me', rf = 1): ShardMap => ({
  clusterUid: 'c',
  epoch,
  shards: 2,
  replicationFactor: rf,
  writeConcern: 'majority',
  retryPolicy: policy,
  agents: [
    { name: 'me', url: 'http://127.0.0.1:9' },
    { name: 'other', url: 'http://127.0.0.1:9' },
    { name: 'third', url: 'http://127.0.0.1:9' },
  ],
  assignments: [0, 1].map((shard) => ({
    shard,
    pivot,
    followers: rf > 1 ? [pivot === 'me' ? 'other' : 'me'] : [],
  })),
});

async function agentWith(first: ShardMap | undefined, source = 'test') {
  const dir = mkdtempSync(join(tmpdir(), 'pivot-fence-'));
  const { store } = await Store.open(dir, 'c');
  const agent = new Agent(
    {
      name: 'me',
      dataDir: dir,
      host: '127.0.0.1',
      port: 0,
      advertiseUrl: 'http://127.0.0.1:0',
      logLevel: 'silent',
      logRetain: 100,
      logRetainBytes: 1 << 20,
      peerConnections: 4,
    },
    store,
    createMetrics(),
    pino({ level: 'silent' }),
  );
  cleanups.push(async () => {
    await agent.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  if (first) await agent.applyMap(first, source);
  return agent;
}

const refusal = async (p: Promise<unknown> | (() => unknown)) => {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'accepted';
  } catch (error) {
    return error instanceof ApiError ? `${error.status} ${error.code}` : String(error);
  }
};

const until = async (cond: () => boolean, what: string, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('fencing', () => {
  it('refuses an older shard map with STALE_EPOCH and ignores a repeat of the current one', async () => {
    const agent = await agentWith(map(5));
    expect(await refusal(agent.applyMap(map(4), 'push'))).toBe('409 STALE_EPOCH');
    expect(await refusal(agent.applyMap(map(5), 'push'))).toBe('accepted');
    expect(agent.epoch()).toBe(5);
  });

  it('refuses replication traffic from an older epoch', async () => {
    const agent = await agentWith(map(5));
    expect(await refusal(agent.handleBatch({ epoch: 4, from: 'other', items: [] }))).toBe('409 STALE_EPOCH');
    expect(await refusal(() => agent.handlePosition({ epoch: 4, shard: 0 }))).toBe('409 STALE_EPOCH');
    expect(await refusal(() => agent.handleLog({ epoch: 4, shard: 0, from: 1, limit: 1 }))).toBe(
      '409 STALE_EPOCH',
    );
  });

  it('a pivot that sees a newer epoch stops taking writes at once, until that map arrives', async () => {
    const agent = await agentWith(map(5));
    await until(() => agent.shards.get(0)?.state === 'serving', 'shard 0 to be established');
    expect(agent.writable(0).term).toBe(5);
    agent.handlePosition({ epoch: 6, shard: 0 }); // a new pivot asking for our position
    expect(await refusal(() => agent.writable(0))).toBe('503 SHARD_UNAVAILABLE');
    expect(await refusal(agent.applyMap(map(5), 'push'))).toBe('409 STALE_EPOCH');
    await agent.applyMap(map(6, 'other', 2), 'push');
    expect(agent.shards.get(0)?.role).toBe('follower');
    expect(await refusal(() => agent.writable(0))).toBe('503 SHARD_UNAVAILABLE');
  });

  it('once a newer pivot asked for its position, a follower refuses the old pivot at its map epoch', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    expect(await refusal(agent.handleBatch({ epoch: 5, from: 'other', items: [] }))).toBe('accepted');
    agent.handlePosition({ epoch: 6, shard: 0 }); // the new pivot, before our map says so
    expect(await refusal(agent.handleBatch({ epoch: 5, from: 'other', items: [] }))).toBe('409 STALE_EPOCH');
  });

  it('refuses entries from an agent that is not the pivot at the same epoch', async () => {
    const agent = await agentWith(map(5));
    const answer = await agent.handleBatch({ epoch: 5, from: 'other', items: [{ shard: 0, pivotSeq: 1 }] });
    expect(answer.items[0]!.refused).toMatch(/not the pivot/);
  });
});

describe('read-lease promises', () => {
  const LEASE = 100; // readLeaseMs(policy.timeoutMs = 200)
  const entry = (term: number, seq: number): LogEntry => ({
    term,
    seq,
    op: 'put',
    key: 'k',
    parent: '',
    index: 'k',
    record: {
      key: 'k',
      parent: '',
      index: 'k',
      created: 1n,
      updated: 1n,
      version: `${term}.${seq}`,
      data: '1',
    },
  });

  it('a follower takes no entries from a new pivot until its promise to the old one has run out', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    const promisedAt = performance.now();
    await agent.handleBatch({ epoch: 5, from: 'other', items: [] });
    await agent.applyMap(map(6, 'third', 2), 'push');
    const answer = await agent.handleBatch({
      epoch: 6,
      from: 'third',
      items: [{ shard: 0, pivotSeq: 1, prev: { term: 0, seq: 0 }, entries: [entry(6, 1)] }],
    });
    expect(performance.now() - promisedAt).toBeGreaterThanOrEqual(LEASE - 1);
    expect(answer.items[0]).toMatchObject({ shard: 0, position: { term: 6, seq: 1 } });
    // Promised to the new pivot now: its next entries apply.
    await agent.handleBatch({
      epoch: 6,
      from: 'third',
      items: [{ shard: 0, pivotSeq: 2, prev: { term: 6, seq: 1 }, entries: [entry(6, 2)] }],
    });
    expect(agent.store.position(0)).toEqual({ term: 6, seq: 2 });
  });

  it('a follower promoted while its promise to the old pivot holds takes the shard over only after it', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    const promisedAt = performance.now();
    await agent.handleBatch({ epoch: 5, from: 'other', items: [] });
    await agent.applyMap(map(6, 'me', 2), 'push'); // majority of 2: this copy alone may take over
    await until(() => agent.shards.get(0)?.state === 'serving', 'shard 0 to be taken over');
    expect(performance.now() - promisedAt).toBeGreaterThanOrEqual(LEASE - 1);
  });

  it('a restarted follower takes no entries for the longest lease after its start (its promises were in memory)', async () => {
    const agent = await agentWith(undefined);
    const start = performance.now();
    await agent.applyMap(map(5, 'other', 2), 'storage'); // the map it had before the restart
    await agent.handleBatch({
      epoch: 5,
      from: 'other',
      items: [{ shard: 0, pivotSeq: 1, prev: { term: 0, seq: 0 }, entries: [entry(5, 1)] }],
    });
    expect(performance.now() - start).toBeGreaterThanOrEqual(MAX_LEASE_MS - 1);
    expect(agent.store.position(0)).toEqual({ term: 5, seq: 1 });
  });

  it('says in its answer whether it promised: only to the pivot of its own saved map', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    expect((await agent.handleBatch({ epoch: 5, from: 'other', items: [] })).promised).toBe(true);
    expect((await agent.handleBatch({ epoch: 5, from: 'third', items: [] })).promised).toBeUndefined();
    // A sender on a newer map than ours: we learn of it, are fenced, and promise nothing.
    const newer = await agent.handleBatch({ epoch: 6, from: 'third', items: [] });
    expect({ epoch: newer.epoch, promised: newer.promised }).toEqual({ epoch: 5, promised: undefined });
  });

  it('tells a new pivot asking its position how long its promises to the old one still hold', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    await agent.handleBatch({ epoch: 5, from: 'other', items: [] });
    const answer = agent.handlePosition({ epoch: 6, shard: 0, from: 'third' });
    expect(answer.promisedMs).toBeGreaterThan(0);
    expect(answer.promisedMs).toBeLessThanOrEqual(LEASE);
    // To the old pivot itself there is nothing to wait for.
    expect(agent.handlePosition({ epoch: 6, shard: 0, from: 'other' }).promisedMs).toBeUndefined();
  });

  it('a held batch whose epoch was overtaken while it waited is refused, its entries not applied', async () => {
    const agent = await agentWith(map(5, 'other', 2));
    await agent.handleBatch({ epoch: 5, from: 'other', items: [] });
    await agent.applyMap(map(6, 'third', 2), 'push');
    const held = refusal(
      agent.handleBatch({
        epoch: 6,
        from: 'third',
        items: [{ shard: 0, pivotSeq: 1, prev: { term: 0, seq: 0 }, entries: [entry(6, 1)] }],
      }),
    );
    agent.handlePosition({ epoch: 7, shard: 0, from: 'me' }); // a newer pivot asks meanwhile
    expect(await held).toBe('409 STALE_EPOCH');
    expect(agent.store.position(0)).toEqual({ term: 0, seq: 0 });
  });
});

describe('takeover', () => {
  it('a takeover cut short by a newer epoch that leaves the shard unchanged is started again', async () => {
    const three = (epoch: number, pivot: string, writeConcern: ShardMap['writeConcern']): ShardMap => ({
      ...map(epoch),
      replicationFactor: 3,
      writeConcern,
      assignments: [0, 1].map((shard) => ({
        shard,
        pivot,
        followers: ['me', 'other', 'third'].filter((n) => n !== pivot),
      })),
    });
    const agent = await agentWith(three(5, 'me', 'all')); // all: this copy alone may take over
    await until(() => agent.shards.get(0)?.state === 'serving', 'shard 0 to be taken over at epoch 5');
    await agent.applyMap(three(6, 'other', 'majority'), 'push');
    // Back to this agent under majority: 2 of the 3 copies must answer, and the others do not exist.
    await agent.applyMap(three(7, 'me', 'majority'), 'push');
    await new Promise((r) => setTimeout(r, 200));
    expect(agent.shards.get(0)?.state).toBe('promoting');
    // Same assignments, writeConcern all: every acknowledged write is on this copy too.
    await agent.applyMap(three(8, 'me', 'all'), 'push');
    await until(() => agent.shards.get(0)?.state === 'serving', 'shard 0 to be taken over at epoch 8');
    expect(agent.writable(0).term).toBe(8);
  });
});

describe('write concern', () => {
  it('does not acknowledge a majority write when the only follower is unreachable: 503, not a hang', async () => {
    const agent = await agentWith(map(5, 'me', 2));
    // Majority of 2 copies: every acknowledged write is on both, so this copy alone may take over.
    await until(() => agent.shards.get(0)?.state === 'serving', 'shard 0 to be established');
    const rt = agent.writable(0);
    const out = await agent.store.write(0, (seq) => ({
      entry: { term: rt.term, seq, op: 'del', key: 'k', parent: '', index: 'k' },
      result: seq,
    }));
    expect(await refusal(agent.awaitWriteConcern(0, out.result))).toBe('503 SHARD_UNAVAILABLE');
    // Bounded by the retry policy (1 attempt x 200 ms here); the jest timeout catches a hang.
  });

  it('CommitWaiters resolve in seq order, time out with 503 and fail all on demand', async () => {
    const w = new CommitWaiters();
    const done: number[] = [];
    const a = w.wait(0, 1, 1000).then(() => done.push(1));
    const b = w.wait(0, 2, 1000).then(() => done.push(2));
    const c = w.wait(0, 3, 30);
    w.committed(0, 2);
    await Promise.all([a, b]);
    expect(done).toEqual([1, 2]);
    expect(await refusal(c)).toBe('503 SHARD_UNAVAILABLE');
    const d = w.wait(1, 9, 1000);
    w.failAll(1, new ApiError(503, 'SHARD_UNAVAILABLE', 'moved'));
    expect(await refusal(d)).toBe('503 SHARD_UNAVAILABLE');
    expect(w.pending(0) + w.pending(1)).toBe(0);
  });
});

describe('shardMapProblems', () => {
  const good = map(3);
  it('accepts a consistent map', () => expect(shardMapProblems(good)).toEqual([]));
  it.each([
    ['no retry policy', { ...good, retryPolicy: undefined }],
    ['zero attempts', { ...good, retryPolicy: { ...good.retryPolicy, maxAttempts: 0 } }],
    ['a string timeout', { ...good, retryPolicy: { ...good.retryPolicy, timeoutMs: '2s' } }],
    ['agents not a list', { ...good, agents: 'a,b' }],
    [
      'an assignment without followers',
      { ...good, assignments: [{ shard: 0, pivot: 'me' }, good.assignments[1]] },
    ],
    ['a null assignment', { ...good, assignments: [null, good.assignments[1]] }],
    ['missing assignments', { ...good, assignments: [] }],
    [
      'an unknown agent',
      { ...good, assignments: [{ shard: 0, pivot: 'ghost', followers: [] }, good.assignments[1]] },
    ],
  ])('refuses %s', (_name, bad) =>
    expect(shardMapProblems(bad as unknown as ShardMap).length).toBeGreaterThan(0),
  );
});
