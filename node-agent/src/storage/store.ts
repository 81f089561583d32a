// LMDB storage: one environment, four databases keyed by shard first so that every shard is a
// separate key range (wiped or copied without touching the others):
//   data      [shard, parent, index]              -> StoredRecord
//   byCreated [shard, parent, created20, index]   -> 1       (collection order: oldest first)
//   log       [shard, seq]                        -> LogEntry (bounded, trimmed from the front)
//   meta      ['shard', shard] -> ShardMeta, ['wipe', shard] -> WipeMarker, ['map'] -> ShardMap,
//             ['node'] -> { clusterUid }, ['wipes'] -> WipeRecord[]
// Every change goes through `commit`: changes queued together run as one transaction callback
// (lmdb-js commits all callbacks of an event-loop turn together: group commit), and resolve only
// when that transaction is on disk — `env.flushed`, because with lmdb-js's default
// overlappingSync a resolved transaction is committed but not yet fsync'd. Commit and fsync run
// on lmdb-js's write thread, so a slow disk never blocks the event loop.
import { open, type Database, type RootDatabase } from 'lmdb';
import type { ShardMap } from '../../../lib/shard-map.ts';
import { appendTerm, type Position, type TermStart } from '../replication/history.ts';
import { logEntryBytes, pushIndexCreated, type LogEntry, type StoredRecord } from './records.ts';

export interface ShardMeta {
  shard: number;
  clusterUid: string;
  /** Last applied entry. */
  term: number;
  seq: number;
  history: TermStart[];
  /** First seq still in the log (seq + 1 when the log is empty). */
  firstLogSeq: number;
  /** Approximate size of the log (`logEntryBytes` summed); absent in data written before it existed. */
  logBytes?: number;
  /** False while a snapshot copy is incomplete: the data is then not a consistent prefix. */
  complete: boolean;
  /** After a snapshot copy: the source's seq when the copy ended; the copy is consistent from there. */
  syncTarget?: number;
  /** The term this agent started when it last took the shard as pivot. */
  pivotTerm?: number;
}

export interface WipeRecord {
  shard: number;
  at: string;
  reason: string;
  completed: boolean;
}

type Key = (string | number)[];

interface QueuedChange {
  /** Runs inside the shared transaction; returns the entries it applied per shard and its result. */
  apply: () => { applied?: [number, LogEntry[]]; result: unknown };
  resolve: (result: unknown) => void;
  reject: (error: Error) => void;
}
const WIPE_CHUNK = 2000;
const MAX_WIPE_RECORDS = 100;
const created20 = (ns: bigint) => ns.toString().padStart(20, '0');

export class Store {
  readonly env: RootDatabase;
  private readonly data: Database<StoredRecord, Key>;
  private readonly byCreated: Database<number, Key>;
  private readonly log: Database<LogEntry, Key>;
  private readonly meta: Database<unknown, Key>;
  private readonly metas = new Map<number, ShardMeta>();
  /** Highest seq per shard whose transaction has committed (fsync'd). */
  private readonly durable = new Map<number, number>();
  private clusterUid = '';
  /** Called after each commit with the entries it made durable, in order. */
  onCommitted: (shard: number, entries: LogEntry[]) => void = () => {};
  private queue: QueuedChange[] = [];
  /** Set by a failed commit or flush: the cached metas may be ahead of the disk, so nothing more is written. */
  private broken: Error | undefined;
  private closing = false;
  /** Called once when the store breaks; the process should exit and recover from disk. */
  onFatal: (error: Error) => void = () => {};
  /** Batches are delivered (afterCommit, resolve) in commit order. */
  private delivered: Promise<void> = Promise.resolve();

  private constructor(path: string) {
    this.env = open({ path, maxDbs: 8 });
    this.data = this.env.openDB({ name: 'data' });
    this.byCreated = this.env.openDB({ name: 'byCreated' });
    this.log = this.env.openDB({ name: 'log' });
    this.meta = this.env.openDB({ name: 'meta' });
  }

  /**
   * Opens the data directory for a cluster. Data of another cluster UID is wiped (durably, per
   * shard); wipes interrupted by a crash are finished before anything is served.
   */
  static async open(path: string, clusterUid: string): Promise<{ store: Store; foreignWiped: number[] }> {
    const store = new Store(path);
    store.loadMetas();
    for (const { key, value } of store.meta.getRange({ start: ['wipe'], end: ['wipe', Infinity] })) {
      await store.wipeShard(
        key[1] as number,
        (value as { reason: string }).reason + ' (resumed after restart)',
      );
    }
    const node = store.meta.get(['node']) as { clusterUid: string } | undefined;
    const foreignWiped: number[] = [];
    if (node && node.clusterUid !== clusterUid) {
      for (const m of [...store.metas.values()]) {
        await store.wipeShard(m.shard, `data belongs to cluster ${node.clusterUid}, not ${clusterUid}`);
        foreignWiped.push(m.shard);
      }
      await store.commit(() => {
        store.meta.remove(['map']);
      });
    }
    store.clusterUid = clusterUid;
    if (!node || node.clusterUid !== clusterUid)
      await store.commit(() => {
        store.meta.put(['node'], { clusterUid });
      });
    for (const m of store.metas.values()) store.durable.set(m.shard, m.seq);
    return { store, foreignWiped };
  }

  async close(): Promise<void> {
    this.commitQueued();
    this.closing = true;
    await this.delivered;
    await this.env.flushed;
    await this.env.close();
  }

  /**
   * Runs `fn` in a write transaction shared with every change queued in this event-loop turn;
   * resolves once that transaction is committed and on disk. `fn` is synchronous and validates
   * before it writes, so a throw fails only its own change and writes nothing. A failed commit
   * or fsync breaks the store (fail-stop): every change since fails, `onFatal` is called, and a
   * restart recovers from what is on disk.
   */
  private commit<T>(
    fn: () => T extends PromiseLike<unknown> ? never : T,
    applied?: (result: T) => [number, LogEntry[]] | undefined,
  ): Promise<T> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closing) return Promise.reject(new Error('storage is closed'));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({
        apply: () => {
          const result = fn();
          return { result, applied: applied?.(result) };
        },
        resolve: resolve as (r: unknown) => void,
        reject,
      });
      // lmdb-js itself holds the transaction open until the end of the event-loop turn, so
      // batches queued by later callbacks of this turn join the same commit.
      if (this.queue.length === 1) queueMicrotask(() => this.commitQueued());
    });
  }

  private commitQueued(): void {
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    let committed: Promise<({ applied?: [number, LogEntry[]]; result: unknown } | { error: Error })[]>;
    try {
      committed = this.env.transaction(() =>
        batch.map((c) => {
          if (this.broken) return { error: this.broken };
          try {
            return c.apply();
          } catch (error) {
            return { error: error as Error };
          }
        }),
      );
    } catch (error) {
      committed = Promise.reject(error as Error); // closed underneath us
    }
    this.delivered = this.delivered.then(async () => {
      let outcomes: Awaited<typeof committed>;
      try {
        outcomes = await committed;
        await this.env.flushed;
      } catch (error) {
        this.fail(error as Error);
        for (const c of batch) c.reject(error as Error);
        return;
      }
      if (this.broken) {
        // Applied on top of a commit that failed: nothing of it may be acknowledged or sent on.
        for (const c of batch) c.reject(this.broken);
        return;
      }
      for (let i = 0; i < batch.length; i++) {
        const outcome = outcomes[i]!;
        if ('error' in outcome) {
          batch[i]!.reject(outcome.error);
          continue;
        }
        try {
          if (outcome.applied) this.afterCommit(outcome.applied[0], outcome.applied[1]);
        } catch (error) {
          // A listener's bug must not stall the commits behind it; the change itself is on disk.
          this.onListenerError(error as Error);
        }
        batch[i]!.resolve(outcome.result);
      }
    });
  }

  /** Reports an exception thrown by `onCommitted` (set by the agent to log it). */
  onListenerError: (error: Error) => void = () => {};

  private fail(error: Error): void {
    if (this.broken) return;
    this.broken = error;
    this.onFatal(error);
  }

  private loadMetas(): void {
    for (const { key, value } of this.meta.getRange({ start: ['shard'], end: ['shard', Infinity] }))
      this.metas.set(key[1] as number, value as ShardMeta);
  }

  /** The cluster this data directory belongs to ('' when none was named). */
  get cluster(): string {
    return this.clusterUid;
  }

  shardMeta(shard: number): ShardMeta {
    let m = this.metas.get(shard);
    if (!m) {
      m = {
        shard,
        clusterUid: this.clusterUid,
        term: 0,
        seq: 0,
        history: [],
        firstLogSeq: 1,
        complete: true,
      };
      this.metas.set(shard, m);
    }
    return m;
  }

  position(shard: number): Position {
    const m = this.shardMeta(shard);
    return { term: m.term, seq: m.seq };
  }

  durableSeq(shard: number): number {
    return this.durable.get(shard) ?? 0;
  }

  get(shard: number, parent: string, index: string): StoredRecord | undefined {
    return this.data.get([shard, parent, index]);
  }

  /**
   * Items of a collection, oldest `created` first, after the item named `after` (exclusive).
   * A pushed item names its own creation time, so paging goes on after it was deleted (a queue
   * consumer deletes what it read); any other `after` must still exist.
   */
  list(shard: number, parent: string, after: string | undefined, limit: number) {
    let start: Key = [shard, parent, ''];
    if (after !== undefined) {
      const created = this.get(shard, parent, after)?.created ?? pushIndexCreated(after);
      if (created === undefined) return { found: false as const };
      start = [shard, parent, created20(created), after];
    }
    const items: StoredRecord[] = [];
    let more = false;
    for (const { key } of this.byCreated.getRange({ start, end: [shard, parent, '~'] })) {
      if (after !== undefined && key[3] === after) continue;
      if (items.length === limit) {
        more = true;
        break;
      }
      const r = this.get(shard, parent, key[3] as string);
      if (r) items.push(r);
    }
    return { found: true as const, items, more };
  }

  // Applies one entry inside the current write transaction; checks it fully before writing.
  private applyInTxn(m: ShardMeta, e: LogEntry): void {
    const s = m.shard;
    if (
      !Number.isInteger(e.seq) ||
      !Number.isInteger(e.term) ||
      typeof e.parent !== 'string' ||
      typeof e.index !== 'string' ||
      (e.op === 'put'
        ? !e.record || typeof e.record.data !== 'string' || typeof e.record.created !== 'bigint'
        : e.op !== 'del')
    )
      throw new Error(`malformed log entry at seq ${String(e.seq)}`);
    const old = this.data.get([s, e.parent, e.index]);
    if (old) this.byCreated.remove([s, old.parent, created20(old.created), old.index]);
    if (e.op === 'put') {
      const r = e.record!;
      this.data.put([s, r.parent, r.index], r);
      this.byCreated.put([s, r.parent, created20(r.created), r.index], 1);
    } else if (old) {
      this.data.remove([s, e.parent, e.index]);
    }
    this.log.put([s, e.seq], e);
    m.logBytes = (m.logBytes ?? 0) + logEntryBytes(e);
    if (e.term !== m.term || m.history.length === 0) m.history = appendTerm(m.history, e.term, e.seq);
    m.term = e.term;
    m.seq = e.seq;
    if (m.firstLogSeq > e.seq) m.firstLogSeq = e.seq;
  }

  private afterCommit(shard: number, entries: LogEntry[]) {
    if (entries.length === 0) return;
    const last = entries[entries.length - 1]!.seq;
    if (last > this.durableSeq(shard)) this.durable.set(shard, last);
    this.onCommitted(shard, entries);
  }

  /**
   * A write at the pivot. `decide` runs inside the transaction with the current record and the
   * seq the write would get; it returns the entry to apply, or a refusal that writes nothing.
   */
  async write<R>(
    shard: number,
    decide: (seq: number, meta: ShardMeta) => { entry: LogEntry; result: R } | { refused: R },
  ): Promise<{ entry?: LogEntry; result: R }> {
    return this.commit(
      () => {
        const m = this.shardMeta(shard);
        const d = decide(m.seq + 1, m);
        if ('refused' in d) return { result: d.refused };
        this.applyInTxn(m, d.entry);
        this.meta.put(['shard', shard], m);
        return { entry: d.entry, result: d.result };
      },
      (out) => (out.entry ? [shard, [out.entry]] : undefined),
    );
  }

  /**
   * Follower side: applies entries that continue this copy's log. Entries at or below the
   * applied seq are skipped (a resent batch); a gap is refused. Returns the applied position.
   */
  async applyEntries(
    shard: number,
    entries: readonly LogEntry[],
  ): Promise<{ applied: Position; gap: boolean }> {
    const { gap } = await this.commit(
      () => {
        const m = this.shardMeta(shard);
        const done: LogEntry[] = [];
        let gap = false;
        for (const e of entries) {
          if (e.seq <= m.seq) continue;
          if (e.seq !== m.seq + 1) {
            gap = true;
            break;
          }
          this.applyInTxn(m, e);
          done.push(e);
        }
        if (done.length) this.meta.put(['shard', shard], m);
        return { done, gap };
      },
      (out) => [shard, out.done],
    );
    return { applied: this.position(shard), gap };
  }

  /** Starts a new term at the next seq (a promoted pivot), durably. */
  async startTerm(shard: number, term: number): Promise<void> {
    await this.commit(() => {
      const m = this.shardMeta(shard);
      m.history = appendTerm(m.history, term, m.seq + 1);
      m.pivotTerm = term;
      this.meta.put(['shard', shard], m);
    });
  }

  readLog(shard: number, from: number, limit: number, maxBytes = 4 << 20): LogEntry[] {
    const out: LogEntry[] = [];
    let bytes = 0;
    for (const { value } of this.log.getRange({ start: [shard, from], end: [shard, Infinity], limit })) {
      out.push(value);
      bytes += logEntryBytes(value);
      if (bytes >= maxBytes) break;
    }
    return out;
  }

  /** Drops log entries below `keepFrom`. */
  async trimLog(shard: number, keepFrom: number): Promise<void> {
    await this.commit(() => {
      // Read at apply time: a wipe may have removed the shard since the trim was decided.
      const m = this.metas.get(shard);
      if (!m || !m.complete || this.meta.get(['wipe', shard]) !== undefined) return;
      if (keepFrom <= m.firstLogSeq) return;
      const upTo = Math.min(keepFrom, m.seq + 1);
      let freed = 0;
      for (const { key, value } of this.log.getRange({ start: [shard, 0], end: [shard, upTo] })) {
        freed += logEntryBytes(value);
        this.log.remove(key);
      }
      m.firstLogSeq = upTo;
      m.logBytes = Math.max(0, (m.logBytes ?? 0) - freed);
      this.meta.put(['shard', shard], m);
    });
  }

  /** The first seq to keep so that the log holds at most `maxBytes` (never past the last entry). */
  keepFromForBytes(shard: number, maxBytes: number): number {
    const m = this.shardMeta(shard);
    let excess = (m.logBytes ?? 0) - maxBytes;
    let keepFrom = m.firstLogSeq;
    for (const { value } of this.log.getRange({ start: [shard, m.firstLogSeq], end: [shard, m.seq + 1] })) {
      if (excess <= 0) break;
      excess -= logEntryBytes(value);
      keepFrom = value.seq + 1;
    }
    return keepFrom;
  }

  /** One page of a shard's objects in key order, for a snapshot copy. */
  snapshotPage(
    shard: number,
    afterKey: Key | null,
    limit: number,
  ): { records: StoredRecord[]; last: Key | null } {
    const records: StoredRecord[] = [];
    let last: Key | null = null;
    let bytes = 0;
    for (const { key, value } of this.data.getRange({
      start: afterKey ?? [shard],
      end: [shard + 1],
      limit: limit + 1,
    })) {
      if (afterKey && key[1] === afterKey[1] && key[2] === afterKey[2]) continue;
      records.push(value);
      last = key;
      bytes += value.data.length + value.key.length;
      if (records.length === limit || bytes > 2 << 20) break;
    }
    return { records, last };
  }

  /**
   * Wipes one shard durably: a marker is written first, then the shard's ranges are deleted in
   * chunks, then marker and meta go in one transaction. A crash midway resumes at open().
   */
  async wipeShard(shard: number, reason: string): Promise<WipeRecord> {
    const record: WipeRecord = { shard, at: new Date().toISOString(), reason, completed: false };
    await this.commit(() => {
      this.meta.put(['wipe', shard], { reason });
      this.recordWipe(record);
    });
    for (const db of [this.data, this.byCreated, this.log] as Database<unknown, Key>[]) {
      for (;;) {
        const keys = [...db.getKeys({ start: [shard], end: [shard + 1], limit: WIPE_CHUNK })];
        if (keys.length === 0) break;
        await this.commit(() => {
          for (const k of keys) db.remove(k);
        });
      }
    }
    await this.commit(() => {
      this.meta.remove(['wipe', shard]);
      this.meta.remove(['shard', shard]);
      // In the same change, so no later change (a log trim) can write the old meta back.
      this.metas.delete(shard);
      this.durable.set(shard, 0);
      record.completed = true;
      this.recordWipe(record);
    });
    return record;
  }

  // Inside a write transaction: replaces the entry for the same wipe.
  private recordWipe(w: WipeRecord) {
    const list = ((this.meta.get(['wipes']) as WipeRecord[] | undefined) ?? []).filter(
      (x) => !(x.shard === w.shard && x.at === w.at),
    );
    list.push(w);
    this.meta.put(['wipes'], list.slice(-MAX_WIPE_RECORDS));
  }

  wipes(): WipeRecord[] {
    return (this.meta.get(['wipes']) as WipeRecord[] | undefined) ?? [];
  }

  /** Snapshot copy, step 1: wipe, and mark the copy incomplete until finishCopy. */
  async beginCopy(shard: number, reason: string): Promise<WipeRecord> {
    const w = await this.wipeShard(shard, reason);
    await this.commit(() => {
      const m = this.shardMeta(shard);
      m.complete = false;
      this.meta.put(['shard', shard], m);
    });
    return w;
  }

  /** Snapshot copy, step 2 (repeated): objects as they were read at the source. */
  async copyRecords(shard: number, records: readonly StoredRecord[]): Promise<void> {
    await this.commit(() => {
      for (const r of records) {
        const old = this.data.get([shard, r.parent, r.index]);
        if (old) this.byCreated.remove([shard, old.parent, created20(old.created), old.index]);
        this.data.put([shard, r.parent, r.index], r);
        this.byCreated.put([shard, r.parent, created20(r.created), r.index], 1);
      }
    });
  }

  /**
   * Snapshot copy, step 3: the copy now stands at `base` (the source's position when it began
   * reading); the source's log entries after base are replayed on top, which is idempotent.
   */
  async finishCopy(
    shard: number,
    base: Position,
    history: TermStart[],
    syncTarget = base.seq,
  ): Promise<void> {
    await this.commit(() => {
      const m = this.shardMeta(shard);
      Object.assign(m, {
        term: base.term,
        seq: base.seq,
        history,
        firstLogSeq: base.seq + 1,
        complete: true,
        syncTarget,
      });
      this.meta.put(['shard', shard], m);
    });
    this.durable.set(shard, base.seq);
  }

  loadMap(): ShardMap | undefined {
    return this.meta.get(['map']) as ShardMap | undefined;
  }

  async saveMap(map: ShardMap): Promise<void> {
    await this.commit(() => {
      this.meta.put(['map'], map);
    });
  }

  shardsWithData(): number[] {
    return [...this.metas.keys()].sort((a, b) => a - b);
  }
}
