import { afterEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from './store.ts';
import { pushIndex, versionOf, type LogEntry, type StoredRecord } from './records.ts';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'pivot-store-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const rec = (
  parent: string,
  index: string,
  data: unknown,
  term: number,
  seq: number,
  created = BigInt(seq),
): StoredRecord => ({
  key: parent ? `${parent}/${index}` : index,
  parent,
  index,
  created,
  updated: created,
  version: versionOf(term, seq),
  data: JSON.stringify(data),
});
const put = (term: number, seq: number, r: StoredRecord): LogEntry => ({
  term,
  seq,
  op: 'put',
  key: r.key,
  parent: r.parent,
  index: r.index,
  record: r,
});

async function writePut(
  store: Store,
  shard: number,
  term: number,
  parent: string,
  index: string,
  data: unknown,
) {
  return store.write(shard, (seq) => {
    const r = rec(parent, index, data, term, seq);
    return { entry: put(term, seq, r), result: r };
  });
}

describe('Store', () => {
  it('keeps acknowledged writes, positions and history across a reopen', async () => {
    const dir = tempDir();
    const { store } = await Store.open(dir, 'uid-1');
    await writePut(store, 3, 1, 'things', 'a', { n: 1 });
    await writePut(store, 3, 1, '', 'settings', 'x');
    await writePut(store, 5, 1, 'things', 'b', [1, 2]);
    await store.close();

    const { store: again, foreignWiped } = await Store.open(dir, 'uid-1');
    expect(foreignWiped).toEqual([]);
    expect(again.get(3, 'things', 'a')?.data).toBe('{"n":1}');
    expect(again.get(3, '', 'settings')?.data).toBe('"x"');
    expect(again.position(3)).toEqual({ term: 1, seq: 2 });
    expect(again.position(5)).toEqual({ term: 1, seq: 1 });
    expect(again.shardMeta(3).history).toEqual([{ term: 1, start: 1 }]);
    expect(again.get(5, 'things', 'a')).toBeUndefined();
    await again.close();
  });

  it('lists a collection oldest created first, pages with after, and moves an item on rewrite', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    for (const [i, idx] of ['c', 'a', 'b'].entries()) {
      await store.write(0, (seq) => {
        const r = rec('col', idx, i, 1, seq, BigInt(100 - i * 10));
        return { entry: put(1, seq, r), result: r };
      });
    }
    const all = store.list(0, 'col', undefined, 10);
    expect(all.found && all.items.map((r) => r.index)).toEqual(['b', 'a', 'c']);
    const page = store.list(0, 'col', 'b', 1);
    expect(page.found && page.items.map((r) => r.index)).toEqual(['a']);
    expect(page.found && page.more).toBe(true);
    expect(store.list(0, 'col', 'zzz', 1).found).toBe(false);
    await store.write(0, (seq) => {
      const r = rec('col', 'b', 'new', 1, seq, 500n);
      return { entry: put(1, seq, r), result: r };
    });
    const after = store.list(0, 'col', undefined, 10);
    expect(after.found && after.items.map((r) => `${r.index}=${r.data}`)).toEqual(['a=1', 'c=0', 'b="new"']);
    await store.close();
  });

  it('pages on after a pushed item that was deleted, since its index names its creation time', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    const indexes = [100n, 200n, 300n, 400n].map((ns, i) => pushIndex(ns, i + 1));
    for (const [i, idx] of indexes.entries()) {
      await store.write(0, (seq) => {
        const r = rec('q', idx, i, 1, seq, BigInt(100 * (i + 1)));
        return { entry: put(1, seq, r), result: r };
      });
    }
    const first = store.list(0, 'q', undefined, 2);
    expect(first.found && first.items.map((r) => r.data)).toEqual(['0', '1']);
    for (const idx of indexes.slice(0, 2)) {
      await store.write(0, (seq) => ({
        entry: { term: 1, seq, op: 'del', key: `q/${idx}`, parent: 'q', index: idx },
        result: null,
      }));
    }
    const next = store.list(0, 'q', indexes[1], 2);
    expect(next.found && next.items.map((r) => r.data)).toEqual(['2', '3']);
    // A deleted item that is not a push index cannot say where it was.
    expect(store.list(0, 'q', 'not-a-push-index', 2).found).toBe(false);
    await store.close();
  });

  it('keeps the log within a byte bound: trims the oldest entries and accounts what is left', async () => {
    const dir = tempDir();
    const { store } = await Store.open(dir, 'u');
    const big = JSON.stringify('x'.repeat(1000));
    for (let i = 0; i < 10; i++) {
      await store.write(0, (seq) => {
        const r = rec('', `k${i}`, i, 1, seq);
        return { entry: put(1, seq, { ...r, data: big }), result: r };
      });
    }
    const each = store.shardMeta(0).logBytes! / 10;
    expect(each).toBeGreaterThan(1000);
    const keepFrom = store.keepFromForBytes(0, 3 * each);
    expect(keepFrom).toBe(8); // entries 8, 9, 10 fit
    await store.trimLog(0, keepFrom);
    expect(store.readLog(0, 1, 100).map((e) => e.seq)).toEqual([8, 9, 10]);
    expect(store.shardMeta(0).logBytes).toBe(3 * each);
    await store.close();
    // The accounting is durable, and trimming never goes past the last entry.
    const { store: reopened } = await Store.open(dir, 'u');
    expect(reopened.shardMeta(0).logBytes).toBe(3 * each);
    expect(reopened.keepFromForBytes(0, 0)).toBe(11);
    await reopened.close();
  });

  it('a commit listener that throws does not stall later commits', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    const errors: Error[] = [];
    store.onListenerError = (e) => errors.push(e);
    let first = true;
    store.onCommitted = () => {
      if (first) {
        first = false;
        throw new Error('listener bug');
      }
    };
    const write = (shard: number, index: string) =>
      store.write(shard, (seq) => {
        const r = rec('', index, index, 1, seq);
        return { entry: put(1, seq, r), result: r };
      });
    await write(0, 'a');
    await write(1, 'b');
    expect(errors.map((e) => e.message)).toEqual(['listener bug']);
    expect([store.get(0, '', 'a')?.data, store.get(1, '', 'b')?.data]).toEqual(['"a"', '"b"']);
    await store.close();
  });

  it('a change after close() is refused instead of hanging', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    await store.close();
    await expect(store.trimLog(0, 5)).rejects.toThrow(/closed/);
  });

  it('a malformed entry fails alone and writes nothing; the rest of the batch commits', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    const good = put(1, 1, rec('', 'k', 'ok', 1, 1));
    const bad = { term: 1, seq: 1, op: 'put', key: 'x', parent: '', index: 'x' } as LogEntry;
    const [a, b] = await Promise.allSettled([store.applyEntries(0, [good]), store.applyEntries(1, [bad])]);
    expect(a.status).toBe('fulfilled');
    expect(b.status === 'rejected' && String(b.reason)).toMatch(/malformed log entry/);
    expect(store.position(1)).toEqual({ term: 0, seq: 0 });
    expect(store.readLog(1, 1, 10)).toEqual([]);
    expect(store.get(0, '', 'k')?.data).toBe('"ok"');
    await store.close();
  });

  it('a log trim decided before a wipe does not bring the wiped shard back', async () => {
    const dir = tempDir();
    const { store } = await Store.open(dir, 'u');
    for (let i = 0; i < 5; i++)
      await store.write(0, (seq) => {
        const r = rec('', `k${i}`, i, 1, seq);
        return { entry: put(1, seq, r), result: r };
      });
    const wiped = store.wipeShard(0, 'copy removed');
    const trimmed = store.trimLog(0, 4); // queued behind the wipe's changes
    await Promise.all([wiped, trimmed]);
    expect(store.shardsWithData()).toEqual([]);
    await store.close();
    const { store: reopened } = await Store.open(dir, 'u');
    expect(reopened.shardsWithData()).toEqual([]);
    expect(reopened.position(0)).toEqual({ term: 0, seq: 0 });
    await reopened.close();
  });

  it('refuses a write that decide() refuses without consuming a seq', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    const out = await store.write(1, () => ({ refused: 'nope' }));
    expect(out).toEqual({ entry: undefined, result: 'nope' });
    expect(store.position(1)).toEqual({ term: 0, seq: 0 });
    await store.close();
  });

  it('applies follower entries in order, skips resent ones and refuses a gap', async () => {
    const { store } = await Store.open(tempDir(), 'u');
    const e1 = put(2, 1, rec('', 'k', 1, 2, 1));
    const e2 = put(2, 2, rec('', 'k', 2, 2, 2));
    const e4 = put(2, 4, rec('', 'k', 4, 2, 4));
    expect(await store.applyEntries(0, [e1, e2])).toEqual({ applied: { term: 2, seq: 2 }, gap: false });
    expect(await store.applyEntries(0, [e2])).toEqual({ applied: { term: 2, seq: 2 }, gap: false });
    expect(await store.applyEntries(0, [e4])).toEqual({ applied: { term: 2, seq: 2 }, gap: true });
    expect(store.get(0, '', 'k')?.data).toBe('2');
    const del: LogEntry = { term: 3, seq: 3, op: 'del', key: 'k', parent: '', index: 'k' };
    await store.applyEntries(0, [del]);
    expect(store.get(0, '', 'k')).toBeUndefined();
    expect(store.shardMeta(0).history).toEqual([
      { term: 2, start: 1 },
      { term: 3, start: 3 },
    ]);
    expect(store.readLog(0, 2, 10).map((e) => e.seq)).toEqual([2, 3]);
    await store.trimLog(0, 3);
    expect(store.readLog(0, 0, 10).map((e) => e.seq)).toEqual([3]);
    expect(store.shardMeta(0).firstLogSeq).toBe(3);
    await store.close();
  });

  it('wipes one shard without touching another, and resumes a wipe interrupted by a crash', async () => {
    const dir = tempDir();
    const { store } = await Store.open(dir, 'u');
    for (let i = 0; i < 5; i++) {
      await writePut(store, 1, 1, 'c', `i${i}`, i);
      await writePut(store, 2, 1, 'c', `i${i}`, i);
    }
    const w = await store.wipeShard(1, 'test');
    expect(w.completed).toBe(true);
    expect(store.list(0 + 1, 'c', undefined, 10)).toEqual({ found: true, items: [], more: false });
    expect(store.position(1)).toEqual({ term: 0, seq: 0 });
    expect(store.list(2, 'c', undefined, 10).found && store.list(2, 'c', undefined, 10)).toMatchObject({
      items: { length: 5 },
    });
    // Simulate a crash right after the marker was written.
    await store.env.openDB({ name: 'meta' }).put(['wipe', 2], { reason: 'moved away' });
    await store.close();
    const { store: again } = await Store.open(dir, 'u');
    expect(again.get(2, 'c', 'i0')).toBeUndefined();
    expect(again.position(2)).toEqual({ term: 0, seq: 0 });
    expect(
      again
        .wipes()
        .filter((x) => x.completed)
        .map((x) => [x.shard, x.reason]),
    ).toEqual([
      [1, 'test'],
      [2, 'moved away (resumed after restart)'],
    ]);
    await again.close();
  });

  it('wipes data of another cluster at open', async () => {
    const dir = tempDir();
    const { store } = await Store.open(dir, 'old-uid');
    await writePut(store, 7, 1, '', 'k', 1);
    await store.close();
    const { store: again, foreignWiped } = await Store.open(dir, 'new-uid');
    expect(foreignWiped).toEqual([7]);
    expect(again.get(7, '', 'k')).toBeUndefined();
    await again.close();
  });

  it('copies a snapshot page by page and replays the log on top', async () => {
    const { store: src } = await Store.open(tempDir(), 'u');
    for (let i = 0; i < 7; i++) await writePut(src, 0, 1, 'c', `k${i}`, i);
    const { store: dst } = await Store.open(tempDir(), 'u');
    await dst.applyEntries(0, [put(9, 1, rec('', 'stale', 0, 9, 1))]);
    await dst.beginCopy(0, 'diverged');
    expect(dst.shardMeta(0).complete).toBe(false);
    const base = src.position(0);
    let after = null;
    for (;;) {
      const page = src.snapshotPage(0, after, 3);
      if (page.records.length === 0) break;
      await dst.copyRecords(0, page.records);
      after = page.last;
    }
    await dst.finishCopy(0, base, src.shardMeta(0).history);
    await writePut(src, 0, 1, 'c', 'k8', 8);
    await dst.applyEntries(0, src.readLog(0, base.seq + 1, 100));
    const list = (s: Store) => {
      const l = s.list(0, 'c', undefined, 100);
      return l.found ? l.items : [];
    };
    expect(list(dst)).toEqual(list(src));
    expect(dst.get(0, '', 'stale')).toBeUndefined();
    expect(dst.position(0)).toEqual(src.position(0));
    await src.close();
    await dst.close();
  });
});
