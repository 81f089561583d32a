// The public API (contract §3) against three real agents: seed 001's operation table, written at
// the pivot and at a follower, and the seed edge cases. Every check compares content.
import { describe, expect } from '@jest/globals';
import fc from 'fast-check';
import {
  errorCode,
  foldWatch,
  mapLimit,
  waitFor,
  type Cluster,
  type StoredObject,
  type Watch,
  type WatchMessage,
} from './harness.ts';
import { useCluster } from './use-cluster.ts';

const MiB = 1024 * 1024;

describe('public API on a 3-agent cluster (4 shards, rf 3, majority)', () => {
  const { test } = useCluster({ agents: 3, shards: 4, replicationFactor: 3, writeConcern: 'majority' });

  /** Strong reads from every agent; each must return `expected` (an object's data, or 404). */
  async function expectEverywhere(c: Cluster, key: string, expected: { data: unknown } | 404) {
    for (const name of c.names()) {
      const r = await c.client(name).get(key);
      if (expected === 404)
        expect({ agent: name, key, status: r.status }).toEqual({ agent: name, key, status: 404 });
      else
        expect({ agent: name, key, status: r.status, data: r.body.data }).toEqual({
          agent: name,
          key,
          status: 200,
          data: expected.data,
        });
    }
  }

  async function expectListEverywhere(c: Cluster, collection: string, expected: unknown[]) {
    for (const name of c.names()) {
      const r = await c.client(name).list(collection);
      expect({ agent: name, status: r.status }).toEqual({ agent: name, status: 200 });
      expect({ agent: name, data: r.body.map((o) => o.data) }).toEqual({ agent: name, data: expected });
    }
  }

  test('empty storage: a missing key is 404 with a JSON error, an empty collection is []', async (c) => {
    for (const name of c.names()) {
      const client = c.client(name);
      const missing = await client.get('nothing-here');
      expect(missing.status).toBe(404);
      errorCode(missing);
      const empty = await client.list('nothing-here-either');
      expect({ status: empty.status, body: empty.body }).toEqual({ status: 200, body: [] });
      const emptyLocal = await client.list('nothing-here-either', { consistency: 'local' });
      expect({ status: emptyLocal.status, body: emptyLocal.body }).toEqual({ status: 200, body: [] });
    }
  });

  // Seed 001's table: push/set/delete on collection items and set/delete on single keys, each
  // written at the shard's pivot and at a follower (which forwards), seen from every agent.
  for (const at of ['pivot', 'follower'] as const) {
    test(`seed 001 operations written at the ${at} are seen by every agent`, async (c) => {
      const collection = `things-${at}`;
      const single = `settings-${at}`;
      const writerFor = (key: string) => {
        const shard = c.shardOf(key);
        return c.client(at === 'pivot' ? c.pivotOf(shard) : c.followersOf(shard)[0]!);
      };
      const w = writerFor(collection);

      // Push (collection): generated index, object shape, 201.
      const pushed = await w.push(collection, { name: 'first' });
      expect(pushed.status).toBe(201);
      const item = pushed.body;
      expect(item).toEqual({
        key: `${collection}/${item.index}`,
        index: item.index,
        data: { name: 'first' },
        created: expect.any(Number),
        updated: expect.any(Number),
        version: expect.any(String),
      });
      await expectEverywhere(c, item.key, { data: { name: 'first' } });
      await expectListEverywhere(c, collection, [{ name: 'first' }]);

      // Set (collection item): replaces, new version, same created.
      const set = await w.put(item.key, { name: 'renamed' });
      expect(set.status).toBe(200);
      expect(set.body.created).toBe(item.created);
      expect(set.body.version).not.toBe(item.version);
      expect(set.body.updated).toBeGreaterThanOrEqual(item.updated);
      await expectEverywhere(c, item.key, { data: { name: 'renamed' } });

      // Set at a named index creates it.
      const named = await w.put(`${collection}/42`, 42);
      expect({ status: named.status, index: named.body.index, data: named.body.data }).toEqual({
        status: 200,
        index: '42',
        data: 42,
      });
      await expectListEverywhere(c, collection, [{ name: 'renamed' }, 42]);

      // Delete (collection item).
      expect((await w.delete(item.key)).status).toBe(204);
      await expectEverywhere(c, item.key, 404);
      await expectListEverywhere(c, collection, [42]);

      // Set and delete of a single key.
      const s = writerFor(single);
      const v1 = await s.put(single, { theme: 'dark', n: 1 });
      expect({ status: v1.status, key: v1.body.key, index: v1.body.index }).toEqual({
        status: 200,
        key: single,
        index: single,
      });
      await expectEverywhere(c, single, { data: { theme: 'dark', n: 1 } });
      const v2 = await s.put(single, null);
      expect(v2.status).toBe(200);
      await expectEverywhere(c, single, { data: null });
      expect((await s.delete(single)).status).toBe(204);
      await expectEverywhere(c, single, 404);

      await c.waitConverged([`${collection}/*`, single, item.key]);
    });
  }

  test('sync-on-read: a strong read at any agent right after a write acknowledged elsewhere sees it', async (c) => {
    const names = c.names();
    for (let i = 0; i < 60; i++) {
      const key = `sor-${i % 6}`;
      const writer = names[i % names.length]!;
      const reader = names[(i + 1 + (i % 2)) % names.length]!;
      const written = await c.client(writer).put(key, { i });
      expect(written.status).toBe(200);
      const read = await c.client(reader).get(key);
      expect({
        i,
        writer,
        reader,
        status: read.status,
        data: read.body.data,
        version: read.body.version,
      }).toEqual({
        i,
        writer,
        reader,
        status: 200,
        data: { i },
        version: written.body.version,
      });
    }
    for (let i = 0; i < 6; i++) {
      const key = `col-sor-${i}`;
      const pushed = await c.client(names[i % 3]!).push(key, { i });
      expect(pushed.status).toBe(201);
      const listed = await c.client(names[(i + 1) % 3]!).list(key);
      expect(listed.body.map((o) => o.key)).toEqual([pushed.body.key]);
    }
  });

  test('keys with Unicode, spaces and reserved URL characters round-trip on every agent', async (c) => {
    const segments = [
      'héllo wörld',
      '日本語',
      '🚀 emoji 🎉',
      'a%b',
      'q?x=1&y',
      'hash#tag',
      'plus+sign',
      'quote\'"',
      'ü',
    ];
    const written: StoredObject[] = [];
    for (const [i, seg] of segments.entries()) {
      const single = await c.client(c.names()[i % 3]!).put(seg, { seg });
      expect({ seg, status: single.status, key: single.body.key, index: single.body.index }).toEqual({
        seg,
        status: 200,
        key: seg,
        index: seg,
      });
      const item = await c.client(c.names()[(i + 1) % 3]!).put(`unicode/${seg}`, { seg });
      expect({ seg, status: item.status, key: item.body.key, index: item.body.index }).toEqual({
        seg,
        status: 200,
        key: `unicode/${seg}`,
        index: seg,
      });
      written.push(single.body, item.body);
    }
    for (const o of written) await expectEverywhere(c, o.key, { data: o.data });
    const listed = await c.client('agent-2').list('unicode');
    expect(listed.body.map((o) => o.index).sort()).toEqual([...segments].sort());
    await c.waitConverged([...segments, 'unicode/*']);
  });

  test('`/` and `*` inside a segment, empty segments and control characters are refused with 400', async (c) => {
    const client = c.client('agent-0');
    // Includes bytes that are not UTF-8 (%FF) and a lone surrogate (%ED%A0%80).
    const bad = [
      'a%2Fb',
      'star%2Aseg',
      'a*b',
      'a//b',
      'trailing/',
      'ctl%01char',
      'a/*/b',
      '%FF',
      'x/%ED%A0%80',
    ];
    for (const path of bad) {
      const r = await client.raw('PUT', `/v1/data/${path}`, { body: '{"v":1}' });
      expect({ path, status: r.status }).toEqual({ path, status: 400 });
      errorCode(r);
    }
    // The refused keys were not stored under what a naive decoder would make of them.
    for (const key of ['a/b', 'trailing']) {
      const r = await client.get(key);
      expect({ key, status: r.status }).toEqual({ key, status: 404 });
    }
    // Long keys: up to 1024 bytes is a key, beyond is a 400 (not a router 404).
    const longest = 'k'.repeat(1024);
    expect((await client.put(longest, 'long')).status).toBe(200);
    expect((await c.client('agent-1').get(longest)).body.data).toBe('long');
    const tooLong = await client.put('k'.repeat(1025), 1);
    expect(tooLong.status).toBe(400);
    errorCode(tooLong);
  });

  test('values: just under 1 MiB is stored, over is 413 and stores nothing', async (c) => {
    const client = c.client('agent-1');
    const under = 'x'.repeat(MiB - 4096);
    const ok = await client.put('big/under', { under });
    expect(ok.status).toBe(200);
    const back = await c.client('agent-2').get('big/under');
    expect(back.status).toBe(200);
    expect((back.body.data as { under: string }).under).toBe(under);

    const over = 'y'.repeat(MiB + 4096);
    const refused = await client.put('big/over', { over });
    expect(refused.status).toBe(413);
    errorCode(refused);
    const refusedPush = await client.push('big', { over });
    expect(refusedPush.status).toBe(413);
    const replaced = await client.put('big/under', { over });
    expect(replaced.status).toBe(413);
    // Another content type does not lift the limit (the internal MessagePack parser allows more).
    const asMsgpack = await client.raw('PUT', '/v1/data/big/under', {
      body: over,
      headers: { 'content-type': 'application/x-msgpack' },
    });
    expect(asMsgpack.status).toBe(413);
    for (const name of c.names()) {
      expect((await c.client(name).get('big/over')).status).toBe(404);
      const kept = await c.client(name).get('big/under');
      expect((kept.body.data as { under: string }).under).toBe(under);
    }
    expect((await client.list('big')).body.map((o) => o.key)).toEqual(['big/under']);
  });

  test('malformed JSON is a 400 with a JSON error and loses nothing', async (c) => {
    const client = c.client('agent-2');
    const original = await client.put('malformed/target', { keep: true });
    expect(original.status).toBe(200);
    const bodies = ['{"a":', 'not json', '{"a":1}}', "{'single':1}", '\u0000', ''];
    for (const body of bodies) {
      for (const [method, path] of [
        ['PUT', '/v1/data/malformed/target'],
        ['PUT', '/v1/data/malformed/new'],
        ['POST', '/v1/data/malformed/*'],
      ] as const) {
        const r = await client.raw(method, path, { body, headers: { 'content-type': 'application/json' } });
        expect({ body, method, path, status: r.status }).toEqual({ body, method, path, status: 400 });
        errorCode(r);
      }
    }
    for (const name of c.names()) {
      const r = await c.client(name).get('malformed/target');
      expect({ status: r.status, data: r.body.data, version: r.body.version }).toEqual({
        status: 200,
        data: { keep: true },
        version: original.body.version,
      });
      expect((await c.client(name).get('malformed/new')).status).toBe(404);
      expect((await c.client(name).list('malformed')).body.map((o) => o.key)).toEqual(['malformed/target']);
    }
  });

  test('deleting what does not exist is 404; deleting twice is 204 then 404', async (c) => {
    for (const name of c.names()) {
      const r = await c.client(name).delete(`ghost-${name}`);
      expect({ name, status: r.status }).toEqual({ name, status: 404 });
      errorCode(r);
    }
    const client = c.client('agent-0');
    expect((await client.put('once', 1)).status).toBe(200);
    expect((await client.delete('once')).status).toBe(204);
    expect((await c.client('agent-1').delete('once')).status).toBe(404);
  });

  test('If-Match: a stale version is 412 and changes nothing; the current one writes', async (c) => {
    const a = c.client('agent-0');
    const b = c.client('agent-1');
    const v1 = await a.put('cas', { n: 1 });
    const v2 = await b.put('cas', { n: 2 });
    expect(v2.body.version).not.toBe(v1.body.version);
    const stale = await a.put('cas', { n: 3 }, { ifMatch: v1.body.version });
    expect(stale.status).toBe(412);
    errorCode(stale);
    const unknown = await a.put('cas', { n: 3 }, { ifMatch: 'no-such-version' });
    expect(unknown.status).toBe(412);
    const current = await c.client('agent-2').get('cas');
    expect({ data: current.body.data, version: current.body.version }).toEqual({
      data: { n: 2 },
      version: v2.body.version,
    });
    const ok = await a.put('cas', { n: 3 }, { ifMatch: v2.body.version });
    expect(ok.status).toBe(200);
    expect((await b.get('cas')).body.data).toEqual({ n: 3 });
  });

  test('If-Match races: of concurrent writers holding the same version through every agent, exactly one wins', async (c) => {
    for (let round = 0; round < 3; round++) {
      const base = await c.client('agent-0').put('cas-race', { round, base: true });
      expect(base.status).toBe(200);
      const contenders = c.names().flatMap((name) => [0, 1, 2, 3].map((n) => ({ name, n })));
      const replies = await Promise.all(
        contenders.map(({ name, n }) =>
          c.client(name).put('cas-race', { round, name, n }, { ifMatch: base.body.version }),
        ),
      );
      const statuses = replies.map((r) => r.status).sort();
      expect({ round, statuses }).toEqual({
        round,
        statuses: [200, ...Array(contenders.length - 1).fill(412)],
      });
      const winner = replies.find((r) => r.status === 200)!.body;
      for (const name of c.names()) {
        const now = await c.client(name).get('cas-race');
        expect({ round, name, data: now.body.data, version: now.body.version }).toEqual({
          round,
          name,
          data: winner.data,
          version: winner.version,
        });
      }
    }
  });

  test('push gives unique, time-ordered indexes; paging with ?limit=&after= walks the collection oldest first', async (c) => {
    const pushedInOrder: StoredObject[] = [];
    for (let i = 0; i < 25; i++) {
      const r = await c.client(c.names()[i % 3]!).push('paged', { i });
      expect(r.status).toBe(201);
      pushedInOrder.push(r.body);
    }
    const indexes = pushedInOrder.map((o) => o.index);
    expect(new Set(indexes).size).toBe(25);
    expect([...indexes].sort()).toEqual(indexes);
    for (let i = 1; i < pushedInOrder.length; i++)
      expect(pushedInOrder[i]!.created).toBeGreaterThanOrEqual(pushedInOrder[i - 1]!.created);

    for (const name of c.names()) {
      const client = c.client(name);
      const whole = await client.list('paged');
      expect(whole.body.map((o) => o.data)).toEqual(pushedInOrder.map((o) => o.data));
      const pages: unknown[][] = [];
      let after: string | undefined;
      for (let guard = 0; guard < 10; guard++) {
        const page = await client.list('paged', { limit: 10, after });
        expect(page.status).toBe(200);
        pages.push(page.body.map((o) => (o.data as { i: number }).i));
        if (page.body.length < 10) break;
        after = page.body[page.body.length - 1]!.index;
      }
      expect(pages).toEqual([
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
        [20, 21, 22, 23, 24],
      ]);
    }
    for (const bad of ['limit=0', 'limit=-1', 'limit=abc']) {
      const r = await c.client('agent-0').raw('GET', `/v1/data/paged/*?${bad}`);
      expect({ bad, status: r.status }).toEqual({ bad, status: 400 });
    }
  });

  test('a queue consumer pages on after deleting the page it read (after= names a deleted pushed item)', async (c) => {
    const client = c.client('agent-1');
    const pushed: string[] = [];
    for (let i = 0; i < 6; i++) pushed.push((await client.push('jobs', { job: i })).body.index);
    const first = await client.list('jobs', { limit: 3 });
    expect(first.body.map((o) => o.data)).toEqual([{ job: 0 }, { job: 1 }, { job: 2 }]);
    for (const o of first.body) expect((await client.delete(`jobs/${o.index}`)).status).toBe(204);
    const next = await client.list('jobs', { limit: 3, after: first.body[2]!.index });
    expect(next.status).toBe(200);
    expect(next.body.map((o) => o.index)).toEqual(pushed.slice(3));
    // An index that never was a pushed item and does not exist still gets a clear 400.
    const unknown = await client.list('jobs', { after: 'no-such-item' });
    expect(unknown.status).toBe(400);
  });

  test('collections are one level deep', async (c) => {
    const a = c.client('agent-1');
    for (const key of ['tree/a', 'tree/b', 'tree/a/x', 'tree/a/y', 'tree/a/x/deep'])
      expect((await a.put(key, key)).status).toBe(200);
    for (const name of c.names()) {
      const client = c.client(name);
      expect((await client.list('tree')).body.map((o) => o.key).sort()).toEqual(['tree/a', 'tree/b']);
      expect((await client.list('tree/a')).body.map((o) => o.key).sort()).toEqual(['tree/a/x', 'tree/a/y']);
      expect((await client.list('tree/a/x')).body.map((o) => o.key)).toEqual(['tree/a/x/deep']);
    }
    expect((await a.delete('tree/a')).status).toBe(204);
    expect((await c.client('agent-2').list('tree/a')).body.map((o) => o.key).sort()).toEqual([
      'tree/a/x',
      'tree/a/y',
    ]);
  });

  test('auth: data, status and map routes need the token; health, readiness and metrics are open', async (c) => {
    for (const name of c.names()) {
      for (const token of [null, 'wrong-token']) {
        const client = c.client(name, { token });
        for (const [method, path, body] of [
          ['GET', '/v1/data/settings', undefined],
          ['PUT', '/v1/data/settings', '{"x":1}'],
          ['POST', '/v1/data/things/*', '{"x":1}'],
          ['DELETE', '/v1/data/settings', undefined],
          ['GET', '/_pivot/v1/status', undefined],
          ['PUT', '/_pivot/v1/shardmap', JSON.stringify(c.map)],
        ] as const) {
          const r = await client.raw(method, path, { body });
          expect({ name, token, method, path, status: r.status }).toEqual({
            name,
            token,
            method,
            path,
            status: 401,
          });
          errorCode(r);
        }
        await expect(client.watch('settings').opened).rejects.toThrow(/401/);
      }
      const open = c.client(name, { token: null });
      for (const path of ['/healthz', '/readyz', '/metrics'])
        expect({ path, status: (await open.raw('GET', path)).status }).toEqual({ path, status: 200 });
      const metrics = await open.raw('GET', '/metrics');
      expect(String(metrics.headers['content-type'])).toMatch(/text\/plain/);
      expect(metrics.text).toMatch(/^# (HELP|TYPE) /m);
    }
    expect((await c.client('agent-0').get('settings')).status).toBe(404);
  });

  test('concurrent writers on one key from every agent: one written value wins everywhere, versions unique', async (c) => {
    const writes = c.names().flatMap((name) => Array.from({ length: 20 }, (_, i) => ({ name, i })));
    const replies = await mapLimit(writes, 30, async ({ name, i }) =>
      c.client(name).put('contended', { name, i }),
    );
    for (const r of replies) expect(r.status).toBe(200);
    const versions = replies.map((r) => r.body.version);
    expect(new Set(versions).size).toBe(versions.length);
    const finals = await Promise.all(c.names().map((n) => c.client(n).get('contended')));
    const first = finals[0]!.body;
    for (const f of finals)
      expect({ data: f.body.data, version: f.body.version }).toEqual({
        data: first.data,
        version: first.version,
      });
    const winner = replies.find((r) => r.body.version === first.version);
    expect(winner?.body.data).toEqual(first.data);
    await c.waitConverged(['contended']);
  });

  /** Waits until what the watcher folded from its messages equals `expected` (key → data). */
  async function waitWatchState(w: Watch, expected: Record<string, unknown>, what: string) {
    const want = JSON.stringify(Object.entries(expected).sort());
    const seen = () => JSON.stringify([...foldWatch(w.messages)].map(([k, [data]]) => [k, data]).sort());
    await waitFor(() => seen() === want, {
      timeoutMs: 10_000,
      message: () => `${what}: watcher state ${seen()} to become ${want}`,
    });
  }

  test('watch: a snapshot first, then one message per change, at the pivot and at a follower', async (c) => {
    const coll = 'watched';
    const shard = c.shardOf(coll);
    const pivot = c.pivotOf(shard);
    const follower = c.followersOf(shard)[0]!;
    const a = await c.client('agent-0').put(`${coll}/a`, { n: 1 });
    const b = await c.client('agent-1').put(`${coll}/b`, { n: 2 });
    expect([a.status, b.status]).toEqual([200, 200]);

    const watches = [pivot, follower].map((name) => ({ name, w: c.client(name).watch(`${coll}/*`) }));
    try {
      for (const { w } of watches) await w.opened;
      // At the pivot the snapshot already holds every acknowledged write.
      const [atPivot] = await watches[0]!.w.waitForMessages(1);
      expect(atPivot).toEqual({
        type: 'snapshot',
        version: expect.any(String),
        data: [
          { ...a.body, data: { n: 1 } },
          { ...b.body, data: { n: 2 } },
        ],
      });
      for (const { name, w } of watches)
        await waitWatchState(w, { [`${coll}/a`]: { n: 1 }, [`${coll}/b`]: { n: 2 } }, `snapshot at ${name}`);

      const changes = [
        await c.client('agent-2').put(`${coll}/c`, 'three'),
        await c.client('agent-1').put(`${coll}/a`, { n: 10 }),
        await c.client('agent-0').delete(`${coll}/b`),
        await c.client(follower).push(coll, 'pushed'),
      ];
      expect(changes.map((r) => r.status)).toEqual([200, 200, 204, 201]);
      const pushed = changes[3]!.body as StoredObject;
      const expected = { [`${coll}/a`]: { n: 10 }, [`${coll}/c`]: 'three', [pushed.key]: 'pushed' };
      for (const { name, w } of watches) await waitWatchState(w, expected, `changes at ${name}`);

      // One message per change, in write order, carrying the written versions.
      const afterSnapshot = watches[0]!.w.messages.slice(1) as WatchMessage[];
      expect(
        afterSnapshot.map((m) =>
          m.type === 'set'
            ? ['set', m.object.key, m.object.version]
            : m.type === 'delete'
              ? ['delete', m.key]
              : [m.type],
        ),
      ).toEqual([
        ['set', `${coll}/c`, (changes[0]!.body as StoredObject).version],
        ['set', `${coll}/a`, (changes[1]!.body as StoredObject).version],
        ['delete', `${coll}/b`],
        ['set', pushed.key, pushed.version],
      ]);
    } finally {
      for (const { w } of watches) w.close();
    }

    // A single key: snapshot of nothing, then its set and delete; other keys are not reported.
    const single = c.client(follower).watch('watched-single');
    try {
      await single.opened;
      await single.waitForMessages(1);
      expect(single.messages[0]).toMatchObject({ type: 'snapshot', data: null });
      expect((await c.client(pivot).put('watched-single-other', 1)).status).toBe(200);
      expect((await c.client(pivot).put('watched-single', { on: true })).status).toBe(200);
      expect((await c.client('agent-2').delete('watched-single')).status).toBe(204);
      await single.waitForMessages(3);
      expect(single.messages.slice(1)).toEqual([
        {
          type: 'set',
          version: expect.any(String),
          object: expect.objectContaining({ key: 'watched-single', data: { on: true } }),
        },
        { type: 'delete', version: expect.any(String), key: 'watched-single' },
      ]);
    } finally {
      single.close();
    }
  });

  test('watch: resuming from the last version seen after a disconnect misses nothing', async (c) => {
    const coll = 'resumed';
    const follower = c.followersOf(c.shardOf(coll))[0]!;
    const first = c.client(follower).watch(`${coll}/*`);
    let lastVersion: string;
    let stateAtClose: Map<string, [unknown, string]>;
    try {
      await first.opened;
      expect((await c.client('agent-0').put(`${coll}/r1`, 1)).status).toBe(200);
      await waitWatchState(first, { [`${coll}/r1`]: 1 }, 'before the disconnect');
      lastVersion = (first.messages[first.messages.length - 1] as { version: string }).version;
      stateAtClose = foldWatch(first.messages);
    } finally {
      first.close();
    }

    // Changes made while nobody watches, through every agent.
    const missed = [
      await c.client('agent-1').put(`${coll}/r2`, 2),
      await c.client('agent-2').put(`${coll}/r3`, 3),
      await c.client('agent-0').delete(`${coll}/r1`),
    ];
    expect(missed.map((r) => r.status)).toEqual([200, 200, 204]);

    const resumed = c.client(follower).watch(`${coll}/*`, { query: { since: lastVersion } });
    try {
      await resumed.opened;
      const want = JSON.stringify([
        [`${coll}/r2`, 2],
        [`${coll}/r3`, 3],
      ]);
      const seen = () =>
        JSON.stringify([...foldWatch(resumed.messages, stateAtClose)].map(([k, [d]]) => [k, d]).sort());
      await waitFor(() => seen() === want, {
        timeoutMs: 10_000,
        message: () =>
          `resumed watcher state ${seen()} to become ${want} (messages ${JSON.stringify(resumed.messages)})`,
      });
      // Replayed as changes (the log reaches back), not as a fresh snapshot.
      expect(resumed.messages.map((m) => (m as WatchMessage).type)).toEqual(['set', 'set', 'delete']);
      expect(
        (resumed.messages as WatchMessage[]).flatMap((m) => (m.type === 'set' ? [m.object.version] : [])),
      ).toEqual([(missed[0]!.body as StoredObject).version, (missed[1]!.body as StoredObject).version]);
    } finally {
      resumed.close();
    }
  });

  test('random keys and bodies (fast-check): never a 5xx, errors in the JSON shape, accepted writes read back the same everywhere', async (c) => {
    const segment = fc.oneof(
      fc.string({ unit: 'grapheme', minLength: 0, maxLength: 12 }),
      fc.constantFrom('*', '', 'a b', '%', '..', '.', '\u0007', '\u007f', 'x\u0000y', '/'),
    );
    const body = fc.oneof(
      fc.json().map((text) => ({ text, json: true })),
      fc.string({ maxLength: 40 }).map((text) => ({ text, json: false })),
    );
    const names = c.names();
    await fc.assert(
      fc.asyncProperty(
        fc.array(segment, { minLength: 1, maxLength: 4 }),
        body,
        fc.boolean(),
        fc.nat(2),
        async (segments, { text }, push, via) => {
          // Every segment percent-encoded, so `/` and `*` inside one reach the agent as %2F and *.
          const urlKey = segments.map((seg) => encodeURIComponent(seg)).join('/');
          const client = c.client(names[via]!);
          const r = await client.raw(push ? 'POST' : 'PUT', `/v1/data/${urlKey}${push ? '/*' : ''}`, {
            body: text,
            headers: { 'content-type': 'application/json' },
          });
          expect({ urlKey, text, status: r.status < 500 ? 'no 5xx' : `${r.status} ${r.text}` }).toEqual({
            urlKey,
            text,
            status: 'no 5xx',
          });
          if (r.status >= 400) {
            errorCode(r);
            return;
          }
          const stored = r.body as StoredObject;
          expect(JSON.stringify(stored.data)).toBe(JSON.stringify(JSON.parse(text)));
          const back = await c.client(names[(via + 1) % names.length]!).get(stored.key);
          expect({ key: stored.key, status: back.status, data: JSON.stringify(back.body.data) }).toEqual({
            key: stored.key,
            status: 200,
            data: JSON.stringify(stored.data),
          });
        },
      ),
      { numRuns: 150, interruptAfterTimeLimit: 20_000 },
    );
  }, 40_000);

  test('bad input never took an agent down', async (c) => {
    for (const name of c.names()) {
      expect(c.pid(name)).not.toBeNull();
      expect((await c.client(name).raw('GET', '/healthz')).status).toBe(200);
    }
  });
});
