// The agent: storage, the shard map and this agent's role per shard, replication both ways,
// promotion, and the data operations the HTTP API calls. I/O shells around the pure decisions
// in replication/history.ts.
import { EventEmitter } from 'node:events';
import type { FastifyBaseLogger } from 'fastify';
import { backoffDelay, sleep, withRetry, type RetryPolicy } from '../../lib/retry.ts';
import {
  copiesOf,
  diffShardMaps,
  requiredCopies,
  roleOf,
  validateShardMap,
  type Role,
  type ShardMap,
} from '../../lib/shard-map.ts';
import { ApiError, staleEpoch, unavailable } from './api/errors.ts';
import { Forwarder, type ForwarderHost } from './api/forward.ts';
import type { AgentConfig } from './config.ts';
import type { Metrics } from './metrics.ts';
import { CommitWaiters } from './replication/commit-waiters.ts';
import { FollowerLink, type LinkHost } from './replication/follower-link.ts';
import {
  comparePositions,
  committedSeq,
  extendsPivot,
  isPrefixOf,
  LEASE_DRIFT,
  leaseHolds,
  MAX_LEASE_MS,
  mostAdvanced,
  promotionQuorum,
  readConfirmations,
  readLeaseMs,
  type Position,
} from './replication/history.ts';
import type {
  BatchAnswer,
  BatchItemAnswer,
  BatchRequest,
  CopyState,
  LogAnswer,
  PositionAnswer,
  SnapshotAnswer,
} from './replication/protocol.ts';
import { PeerClient } from './replication/transport.ts';
import type { LogEntry } from './storage/records.ts';
import type { Store } from './storage/store.ts';

export type ShardState = 'serving' | 'syncing' | 'wiping' | 'promoting';

export interface ShardRuntime {
  shard: number;
  role: Role;
  pivot: string;
  state: ShardState;
  /** At the pivot: the term its writes carry (the epoch at which it took the shard). */
  term: number;
}

const RECENT_ENTRIES = 2048;
const TRIM_EVERY_MS = 5000;
const keyScope = (parent: string, index: string) => `k\u0000${parent}\u0000${index}`;
const collectionScope = (parent: string) => `c\u0000${parent}`;

/** What is wrong with a map from outside (shape and retry policy first, then consistency). */
export function shardMapProblems(map: ShardMap): string[] {
  const shape: string[] = [];
  const p = map.retryPolicy as Partial<RetryPolicy> | undefined;
  if (!p || typeof p !== 'object') shape.push('retryPolicy is missing');
  else {
    if (!Number.isInteger(p.maxAttempts) || p.maxAttempts! < 1)
      shape.push('retryPolicy.maxAttempts must be an integer >= 1');
    for (const f of ['initialBackoffMs', 'maxBackoffMs', 'timeoutMs'] as const)
      if (typeof p[f] !== 'number' || !(p[f]! >= 0)) shape.push(`retryPolicy.${f} must be a number >= 0`);
    if (typeof p.multiplier !== 'number' || !(p.multiplier >= 1))
      shape.push('retryPolicy.multiplier must be >= 1');
    if (typeof p.timeoutMs === 'number' && p.timeoutMs <= 0) shape.push('retryPolicy.timeoutMs must be > 0');
  }
  if (typeof map.clusterUid !== 'string') shape.push('clusterUid must be a string');
  if (
    !Array.isArray(map.agents) ||
    map.agents.some((a) => !a || typeof a.name !== 'string' || typeof a.url !== 'string')
  )
    shape.push('agents must be [{ name, url }]');
  if (
    !Array.isArray(map.assignments) ||
    map.assignments.some(
      (a) =>
        !a ||
        typeof a.pivot !== 'string' ||
        !Array.isArray(a.followers) ||
        a.followers.some((f) => typeof f !== 'string'),
    )
  )
    shape.push('assignments must be [{ shard, pivot, followers: [names] }]');
  if (shape.length) return shape;
  const problems = validateShardMap(map);
  if (map.assignments.length !== map.shards) problems.push('a map needs one assignment per shard');
  return problems;
}

export class Agent implements LinkHost, ForwarderHost {
  readonly name: string;
  readonly store: Store;
  readonly metrics: Metrics;
  readonly log: FastifyBaseLogger;
  readonly config: AgentConfig;
  map: ShardMap | null = null;
  /** Highest epoch seen anywhere (maps, replication, promotion queries): older traffic is refused. */
  private seenEpoch = 0;
  readonly shards = new Map<number, ShardRuntime>();
  private readonly links = new Map<string, FollowerLink>();
  private readonly clients = new Map<string, PeerClient>();
  private readonly waiters = new CommitWaiters();
  readonly forwarder: Forwarder = new Forwarder(this);
  private readonly recent = new Map<number, LogEntry[]>();
  private readonly copying = new Set<number>();
  /** Shards taking over as pivot, with the epoch each takeover is for. */
  private readonly establishing = new Map<number, number>();
  /** Per shard, keys and collections with a write not yet acknowledged, and its seq. */
  private readonly unacked = new Map<number, Map<string, number>>();
  /** Strong-read confirmation rounds about to start, per shard. */
  private readonly readRounds = new Map<number, Promise<void>>();
  /** Read-lease promises this agent gave as a follower: per shard, per pivot, until when. */
  private readonly promises = new Map<number, Map<string, number>>();
  /**
   * Promises given before a restart are forgotten: an agent that had a map before (it may have
   * promised under it) honours them all until a lease after its start. Promises are given only
   * under a map saved to disk, so a first start promised nothing.
   */
  private forgottenPromisesUntil = 0;
  /** The newest map on disk: promises are given only under it (a restart must know of them). */
  private savedEpoch = 0;
  /** Local change feed for watchers: emits `shard` events with committed entries. */
  readonly changes = new EventEmitter();
  private trimTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly abort = new AbortController();

  constructor(config: AgentConfig, store: Store, metrics: Metrics, log: FastifyBaseLogger) {
    this.config = config;
    this.name = config.name;
    this.store = store;
    this.metrics = metrics;
    this.log = log;
    this.changes.setMaxListeners(0);
    store.onCommitted = (shard, entries) => this.committedLocally(shard, entries);
    store.onListenerError = (e) => this.log.error({ err: e }, 'a commit listener failed');
    this.trimTimer = setInterval(() => void this.trimLogs(), TRIM_EVERY_MS);
    this.trimTimer.unref();
  }

  epoch(): number {
    return this.map?.epoch ?? 0;
  }

  policy(): RetryPolicy {
    return this.map!.retryPolicy;
  }

  forwardTimeoutMs(): number {
    const p = this.policy();
    return (p.maxAttempts + 1) * p.timeoutMs;
  }

  get ready(): boolean {
    return this.map !== null && !this.closed;
  }

  // ---- shard map -------------------------------------------------------------------------

  /** Applies a map (operator push, cluster file, or the stored one at start). */
  async applyMap(next: ShardMap, source: string): Promise<void> {
    const problems = shardMapProblems(next);
    if (problems.length) throw new ApiError(400, 'INVALID_SHARD_MAP', problems.join('; '));
    const cluster = this.map?.clusterUid || this.store.cluster;
    if (cluster && next.clusterUid !== cluster)
      throw new ApiError(
        400,
        'WRONG_CLUSTER',
        `map is for cluster ${next.clusterUid}, this agent serves ${cluster}`,
      );
    if (next.epoch < Math.max(this.epoch(), this.seenEpoch) && source !== 'storage')
      throw staleEpoch(next.epoch, Math.max(this.epoch(), this.seenEpoch));
    if (this.map && next.epoch === this.map.epoch && source !== 'storage') return;
    const before = source === 'storage' ? null : this.map;
    // The promises may have been given under an older map with a longer timeout: the longest lease.
    if (source === 'storage') this.forgottenPromisesUntil = performance.now() + MAX_LEASE_MS;
    this.map = next;
    this.seenEpoch = Math.max(this.seenEpoch, next.epoch);
    if (source !== 'storage') await this.store.saveMap(next);
    this.savedEpoch = Math.max(this.savedEpoch, next.epoch);
    this.metrics.epoch.set(next.epoch);
    this.log.info({ epoch: next.epoch, source }, 'shard map applied');

    for (const peer of next.agents) if (peer.name !== this.name) this.linkTo(peer.name);
    const changes = new Map(
      diffShardMaps(before, next)
        .filter((c) => c.agent === this.name)
        .map((c) => [c.shard, c]),
    );
    for (const a of next.assignments) {
      const role = roleOf(a, this.name);
      const prev = this.shards.get(a.shard);
      const rt: ShardRuntime = prev ?? { shard: a.shard, role, pivot: a.pivot, state: 'serving', term: 0 };
      const wasPivot = prev?.role === 'pivot';
      rt.role = role;
      rt.pivot = a.pivot;
      this.shards.set(a.shard, rt);
      for (const r of ['pivot', 'follower'] as const)
        this.metrics.role.set({ shard: String(a.shard), role: r }, role === r ? 1 : 0);
      const change = changes.get(a.shard);
      if (wasPivot && role !== 'pivot') {
        this.waiters.failAll(a.shard, unavailable(`shard ${a.shard} moved to pivot ${a.pivot}`));
        this.unacked.delete(a.shard);
        this.recent.delete(a.shard);
      }
      // A takeover still running for an older epoch stops at the epoch change: start it again.
      const retake = rt.state === 'promoting';
      if (role === 'pivot' && (before === null || change !== undefined || rt.term === 0 || retake)) {
        const prevAssignment = before?.assignments[a.shard];
        void this.establish(a.shard, prevAssignment ? copiesOf(prevAssignment) : copiesOf(a));
      } else if (
        role === 'none' &&
        this.store.shardsWithData().includes(a.shard) &&
        !this.copying.has(a.shard)
      ) {
        void this.dropCopy(a.shard);
      } else if (role === 'follower' && !this.copying.has(a.shard)) {
        const m = this.store.shardMeta(a.shard);
        rt.state = m.complete && m.seq >= (m.syncTarget ?? 0) ? 'serving' : 'syncing';
      }
    }
    for (const link of this.links.values()) {
      for (const shard of [...link.progress.keys()])
        if (!this.shardsFollowedBy(link.peer).includes(shard)) link.forget(shard);
      link.kick();
    }
  }

  private linkTo(peer: string): FollowerLink {
    let link = this.links.get(peer);
    if (!link) {
      link = new FollowerLink(peer, this.client(peer)!, this);
      this.links.set(peer, link);
    }
    return link;
  }

  client(peer: string): PeerClient | undefined {
    const info = this.map?.agents.find((a) => a.name === peer);
    if (!info) return undefined;
    let c = this.clients.get(peer);
    if (!c || c.url !== info.url) {
      c = new PeerClient(info.url, this.config.token, this.config.peerConnections);
      this.clients.set(peer, c);
    }
    return c;
  }

  urlOf(peer: string): string | undefined {
    return this.map?.agents.find((a) => a.name === peer)?.url;
  }

  /** A newer epoch was seen in traffic: stop acknowledging as pivot until a map that new arrives. */
  observeEpoch(epoch: number): void {
    if (epoch <= this.seenEpoch) return;
    this.seenEpoch = epoch;
    if (epoch <= this.epoch()) return;
    this.log.warn({ epoch, mine: this.epoch() }, 'saw a newer epoch: fenced until its map arrives');
    for (const rt of this.shards.values()) {
      if (rt.role === 'pivot')
        this.waiters.failAll(rt.shard, unavailable(`shard ${rt.shard}: a newer shard map exists`));
    }
  }

  onStaleEpoch(theirEpoch: number): void {
    this.observeEpoch(theirEpoch);
  }

  /** The newest epoch this agent knows of: its map's, or a newer one seen in traffic. */
  newestEpoch(): number {
    return Math.max(this.epoch(), this.seenEpoch);
  }

  private fenced(): boolean {
    return this.seenEpoch > this.epoch();
  }

  shardsFollowedBy(peer: string): number[] {
    if (!this.map || this.fenced()) return [];
    const out: number[] = [];
    for (const a of this.map.assignments) {
      // The runtime, not only the map: while a new map is being applied the runtime still shows
      // the old role, and a new pivot streams to or judges followers only once it has taken over.
      const rt = this.shards.get(a.shard);
      if (
        a.pivot === this.name &&
        a.followers.includes(peer) &&
        rt?.role === 'pivot' &&
        rt.state === 'serving'
      )
        out.push(a.shard);
    }
    return out;
  }

  // ---- becoming pivot --------------------------------------------------------------------

  /**
   * Before taking writes in a new term: hear from enough of the shard's previous copies that
   * every acknowledged write is among the answers, pull what the most advanced one has beyond
   * this copy, then start the term. Writes get 503 until done.
   */
  private async establish(shard: number, previousCopies: string[]): Promise<void> {
    const rt = this.shards.get(shard)!;
    const epoch = this.epoch();
    const meta = this.store.shardMeta(shard);
    const lastTerm = meta.history[meta.history.length - 1]?.term;
    if (meta.pivotTerm !== undefined && lastTerm === meta.pivotTerm && meta.pivotTerm === epoch) {
      // Restarted in our own term: we hold everything we acknowledged, but a newer pivot may
      // exist that we have not heard of. Enough followers must confirm our epoch first.
      rt.term = epoch;
      rt.state = 'promoting';
      for (let round = 1; !this.closed && this.epoch() === epoch && !this.fenced(); round++) {
        try {
          // No promises to outwait: this agent waited them out when it took the shard in this term.
          await this.confirmRound(shard);
          rt.state = 'serving';
          for (const link of this.links.values()) link.kick();
          return;
        } catch {
          await new Promise((r) => setTimeout(r, backoffDelay(this.policy(), round)));
        }
      }
      return;
    }
    if (this.establishing.get(shard) === epoch) return;
    this.establishing.set(shard, epoch); // a takeover for an older epoch sees the change and stops
    rt.state = 'promoting';
    try {
      const need = promotionQuorum(this.map!.writeConcern, previousCopies.length);
      const others = [...new Set([...previousCopies, ...copiesOf(this.map!.assignments[shard]!)])].filter(
        (n) => n !== this.name,
      );
      for (let round = 1; !this.closed && this.epoch() === epoch; round++) {
        const answers: { name: string; position: Position; answer: PositionAnswer; at: number }[] = [];
        if (meta.complete || this.store.shardMeta(shard).complete) {
          const m = this.store.shardMeta(shard);
          answers.push({
            name: this.name,
            position: this.store.position(shard),
            answer: {
              position: this.store.position(shard),
              complete: true,
              serving: true,
              copying: false,
              history: m.history,
              firstLogSeq: m.firstLogSeq,
            },
            at: performance.now(),
          });
        }
        const asked = await Promise.allSettled(
          others.map(async (name) => {
            // One attempt per round: rounds repeat on the retry policy's backoff until a quorum answers.
            const { value } = await this.client(name)!.call<PositionAnswer>(
              '/_pivot/v1/replicate/position',
              { epoch, shard, from: this.name },
              AbortSignal.any([AbortSignal.timeout(this.policy().timeoutMs), this.abort.signal]),
            );
            return { name, position: value.position, answer: value, at: performance.now() };
          }),
        );
        for (const r of asked) if (r.status === 'fulfilled' && r.value.answer.complete) answers.push(r.value);
        const counted = answers.filter(
          (a) => previousCopies.includes(a.name) || previousCopies.length === 0,
        ).length;
        if (counted >= need) {
          const best = mostAdvanced(answers);
          if (
            best &&
            best.name !== this.name &&
            comparePositions(best.position, this.store.position(shard)) > 0
          ) {
            await this.catchUpFrom(best.name, shard, best.answer, epoch);
          }
          // The old pivot may still serve reads under promises of the copies that answered (and
          // ours): wait them out. It cannot rest on copies that did not answer — the answers and
          // its lease's promisers intersect, as a promotion quorum and a read quorum do.
          const promised = Math.max(
            this.promisedMs(shard, this.name),
            // Counted from receipt (after the answer was made), longer by the drift margin.
            ...answers.map(
              (a) => (a.answer.promisedMs ?? 0) * (1 + LEASE_DRIFT) - (performance.now() - a.at),
            ),
          );
          if (promised > 0) await sleep(promised, this.abort.signal);
          if (this.epoch() !== epoch) return;
          await this.store.startTerm(shard, epoch);
          rt.term = epoch;
          rt.state = 'serving';
          this.log.info(
            { shard, term: epoch, position: this.store.position(shard), answers: answers.length },
            'shard established as pivot',
          );
          for (const link of this.links.values()) link.kick();
          return;
        }
        this.log.warn(
          { shard, answers: answers.length, need },
          'not enough copies answer to take over the shard; retrying',
        );
        this.metrics.retries.inc({ call: 'position' });
        await new Promise((r) => setTimeout(r, backoffDelay(this.policy(), round)));
      }
    } catch (error) {
      this.log.error({ shard, err: (error as Error).message }, 'taking over the shard failed; retrying');
      if (this.establishing.get(shard) === epoch) this.establishing.delete(shard);
      if (!this.closed && this.epoch() === epoch)
        setTimeout(() => void this.establish(shard, previousCopies), 1000).unref();
      return;
    } finally {
      if (this.establishing.get(shard) === epoch) this.establishing.delete(shard);
    }
  }

  /** Pulls the suffix this copy lacks from `source` (its log, or a snapshot copy when it must). */
  private async catchUpFrom(
    source: string,
    shard: number,
    state: PositionAnswer,
    epoch: number,
  ): Promise<void> {
    const mine = this.store.position(shard);
    if (!isPrefixOf(mine, state.history, state.position) || mine.seq + 1 < state.firstLogSeq) {
      await this.copyFrom(source, shard, `copy from ${source}: its history does not continue this copy's`);
    }
    for (;;) {
      const from = this.store.position(shard).seq + 1;
      if (from > state.position.seq) return;
      const { value } = await this.callPeer<LogAnswer>(source, '/_pivot/v1/replicate/log', {
        epoch,
        shard,
        from,
        limit: 5000,
      });
      if (value.entries.length === 0) return;
      const { gap } = await this.store.applyEntries(shard, value.entries);
      if (gap) throw new Error(`log from ${source} does not continue this copy`);
    }
  }

  async callPeer<T>(peer: string, path: string, body: unknown): Promise<{ value: T; bytes: number }> {
    const client = this.client(peer);
    if (!client) throw new Error(`unknown agent ${peer}`);
    return withRetry(this.policy(), (signal) => client.call<T>(path, body, signal), {
      signal: this.abort.signal,
      onRetry: () => this.metrics.retries.inc({ call: path.split('/').pop()! }),
    });
  }

  // ---- follower side ----------------------------------------------------------------------

  /**
   * Refuses traffic older than any epoch seen, not only the applied map's: once a new pivot has
   * asked for our position at epoch E, the old pivot (still at E − 1, like our map) is fenced.
   */
  private checkEpoch(epoch: number): void {
    const newest = this.newestEpoch();
    if (epoch < newest) throw staleEpoch(epoch, newest);
    this.observeEpoch(epoch);
  }

  private copyState(shard: number): CopyState {
    const m = this.store.shardMeta(shard);
    const copying = this.copying.has(shard);
    return {
      position: this.store.position(shard),
      complete: m.complete && !copying,
      serving: m.complete && !copying && m.seq >= (m.syncTarget ?? 0),
      copying,
    };
  }

  /** A peer sent us a request: if we had backed it off, catch it up now. */
  private heardFrom(peer: unknown): void {
    if (typeof peer === 'string') this.links.get(peer)?.recheckNow();
  }

  async handleBatch(req: BatchRequest): Promise<BatchAnswer> {
    this.checkEpoch(req.epoch);
    this.heardFrom(req.from);
    const items = await Promise.all(
      req.items.map(async (item): Promise<BatchItemAnswer> => {
        if (item.entries?.length || item.copy) {
          await this.outwaitPromises(item.shard, req.from);
          this.checkEpoch(req.epoch); // a newer pivot may have asked our position meanwhile
        }
        const rt = this.shards.get(item.shard);
        const answer = (extra: Partial<BatchItemAnswer> = {}) => ({
          shard: item.shard,
          ...this.copyState(item.shard),
          ...extra,
        });
        if (req.epoch === this.epoch() && rt && rt.pivot !== req.from)
          return answer({
            refused: `${req.from} is not the pivot of shard ${item.shard} at epoch ${req.epoch}`,
          });
        if (rt?.state === 'wiping') return answer({ refused: 'shard is being wiped' });
        if (this.copying.has(item.shard)) return answer();
        if (item.copy) {
          const m = this.store.shardMeta(item.shard);
          const last = item.pivotLast;
          if (m.complete && last && extendsPivot(this.store.position(item.shard), last, item.pivotTerm ?? 0))
            return answer({
              refused: `this copy is ahead of pivot ${req.from} (term ${last.term}, seq ${last.seq}): not wiping it`,
            });
          void this.copyFrom(req.from, item.shard, `${item.copy}: copy from pivot ${req.from}`);
          return answer({ copying: true });
        }
        if (item.entries?.length) {
          const pos = this.store.position(item.shard);
          if (!item.prev || pos.seq !== item.prev.seq || pos.term !== item.prev.term)
            return answer({ mismatch: true });
          const { gap } = await this.store.applyEntries(item.shard, item.entries);
          if (gap) return answer({ mismatch: true });
        }
        const m = this.store.shardMeta(item.shard);
        if (rt && rt.role === 'follower') {
          rt.state = this.copyState(item.shard).serving ? 'serving' : 'syncing';
          this.metrics.lag.set(
            { shard: String(item.shard), follower: this.name },
            Math.max(0, item.pivotSeq - m.seq),
          );
        }
        return answer();
      }),
    );
    // Promise and answer in one step: the epoch the sender sees is the one the promise is under.
    const epoch = this.epoch();
    const promised =
      req.epoch === epoch && !this.fenced() && this.savedEpoch === epoch && this.promise(req.from);
    return { epoch, items, ...(promised ? { promised } : {}) };
  }

  /**
   * Read-lease promise (history.ts) to `pivot` for every shard this agent follows from it in the
   * map it shares with the sender: no entries of those shards from another agent, no takeover.
   * False when it follows nothing from the sender.
   */
  private promise(pivot: string): boolean {
    const until = performance.now() + readLeaseMs(this.policy().timeoutMs);
    let any = false;
    for (const a of this.map!.assignments) {
      if (a.pivot !== pivot || !a.followers.includes(this.name)) continue;
      let given = this.promises.get(a.shard);
      if (!given) this.promises.set(a.shard, (given = new Map()));
      given.set(pivot, until);
      any = true;
    }
    return any;
  }

  /** How long (ms) promises to pivots of `shard` other than `pivot` still hold, forgotten ones included. */
  private promisedMs(shard: number, pivot: string): number {
    let until = this.forgottenPromisesUntil;
    for (const [to, end] of this.promises.get(shard) ?? []) if (to !== pivot) until = Math.max(until, end);
    return Math.max(0, until - performance.now());
  }

  /** Waits until no promise given to another pivot of `shard` than `pivot` holds any longer. */
  private async outwaitPromises(shard: number, pivot: string): Promise<void> {
    const wait = this.promisedMs(shard, pivot);
    if (wait > 0) await sleep(wait, this.abort.signal);
  }

  handlePosition(req: { epoch: number; shard: number; from?: string }): PositionAnswer {
    this.checkEpoch(req.epoch);
    this.heardFrom(req.from);
    const m = this.store.shardMeta(req.shard);
    // Promises given before this answer are not renewed after it: the old pivot is fenced here now.
    const promisedMs = typeof req.from === 'string' ? this.promisedMs(req.shard, req.from) : 0;
    return {
      ...this.copyState(req.shard),
      history: m.history,
      firstLogSeq: m.firstLogSeq,
      ...(promisedMs > 0 ? { promisedMs } : {}),
    };
  }

  handleLog(req: { epoch: number; shard: number; from: number; limit: number }): LogAnswer {
    this.checkEpoch(req.epoch);
    const m = this.store.shardMeta(req.shard);
    return {
      entries: this.store.readLog(req.shard, req.from, Math.min(req.limit, 10_000)),
      position: this.store.position(req.shard),
      history: m.history,
      firstLogSeq: m.firstLogSeq,
    };
  }

  handleSnapshot(req: { epoch: number; shard: number; after: (string | number)[] | null }): SnapshotAnswer {
    this.checkEpoch(req.epoch);
    const durable = this.store.durableSeq(req.shard);
    const base = req.after === null ? this.store.position(req.shard) : undefined;
    const history = base ? this.store.shardMeta(req.shard).history : undefined;
    const page = this.store.snapshotPage(req.shard, req.after, 1000);
    return { records: page.records, last: page.last, ...(base ? { base, history } : {}), durable };
  }

  /** Wipes this copy durably and copies the shard from `source`; serves once caught up. */
  async copyFrom(source: string, shard: number, reason: string): Promise<void> {
    if (this.copying.has(shard)) return;
    this.copying.add(shard);
    const rt = this.shards.get(shard);
    try {
      if (rt) rt.state = 'wiping';
      this.log.warn({ shard, source, reason }, 'wiping shard to copy it afresh');
      await this.store.beginCopy(shard, reason);
      this.changes.emit('reset', shard);
      this.metrics.wipes.inc({ reason: reason.split(':')[0]! });
      if (rt) rt.state = 'syncing';
      const epoch = this.epoch();
      let after: (string | number)[] | null = null;
      let base: Position | undefined;
      let history = [] as PositionAnswer['history'];
      let durable = 0;
      for (;;) {
        const { value, bytes }: { value: SnapshotAnswer; bytes: number } =
          await this.callPeer<SnapshotAnswer>(source, '/_pivot/v1/replicate/snapshot', {
            epoch,
            shard,
            after,
          });
        this.metrics.bytesSynced.inc({ direction: 'received', kind: 'snapshot' }, bytes);
        if (value.base) {
          base = value.base;
          history = value.history!;
        }
        durable = value.durable;
        if (value.records.length === 0) break;
        await this.store.copyRecords(shard, value.records);
        after = value.last;
      }
      await this.store.finishCopy(shard, base!, history, durable);
      this.log.info({ shard, source, base, syncTarget: durable }, 'snapshot copy finished');
    } catch (error) {
      this.log.error(
        { shard, source, err: (error as Error).message },
        'snapshot copy failed; the pivot will ask again',
      );
    } finally {
      this.copying.delete(shard);
      if (rt && rt.state !== 'promoting') rt.state = this.copyState(shard).serving ? 'serving' : 'syncing';
    }
  }

  private async dropCopy(shard: number) {
    const rt = this.shards.get(shard)!;
    rt.state = 'wiping';
    await this.store.wipeShard(shard, 'copy removed from this agent by the shard map');
    this.changes.emit('reset', shard);
    this.metrics.wipes.inc({ reason: 'removed' });
    rt.state = 'serving';
  }

  // ---- pivot write path -------------------------------------------------------------------

  private committedLocally(shard: number, entries: LogEntry[]) {
    const rt = this.shards.get(shard);
    if (rt?.role === 'pivot') {
      let buf = this.recent.get(shard);
      if (!buf) this.recent.set(shard, (buf = []));
      buf.push(...entries);
      if (buf.length > RECENT_ENTRIES * 2) buf.splice(0, buf.length - RECENT_ENTRIES);
      for (const link of this.links.values()) link.kick();
      this.onProgress(shard);
    }
    this.changes.emit('shard', shard, entries);
  }

  recentEntries(shard: number, from: number, upTo: number): LogEntry[] {
    const buf = this.recent.get(shard);
    if (buf && buf.length && buf[0]!.seq <= from && buf[buf.length - 1]!.seq >= upTo) {
      const start = from - buf[0]!.seq;
      return buf.slice(start, start + (upTo - from + 1));
    }
    return this.store.readLog(shard, from, upTo - from + 1);
  }

  private requiredFor(shard: number): number {
    const a = this.map!.assignments[shard]!;
    return requiredCopies(this.map!.writeConcern, copiesOf(a).length);
  }

  /** At the pivot: the highest seq the write concern's copies hold durably. */
  private committedOf(shard: number): number {
    const a = this.map!.assignments[shard]!;
    const followers = a.followers.map((f) => {
      const link = this.links.get(f);
      const p = link?.progress.get(shard);
      return { applied: p?.applied ?? 0, serving: !!p && !link!.down && p.mode === 'stream' && p.serving };
    });
    return committedSeq(this.store.durableSeq(shard), followers, this.requiredFor(shard));
  }

  onProgress(shard: number): void {
    const a = this.map?.assignments[shard];
    if (!a || a.pivot !== this.name) return;
    const committed = this.committedOf(shard);
    this.waiters.committed(shard, committed);
    const pending = this.unacked.get(shard);
    if (pending) for (const [scope, seq] of pending) if (seq <= committed) pending.delete(scope);
  }

  /**
   * At the pivot: a write is visible in storage from its local commit on, but acknowledged only
   * once its write concern is met; if this pivot died in between, the write could be gone. A
   * strong read must not show such a write, so the key and its collection are noted here until
   * the write is acknowledged, and `awaitAcknowledged` holds a strong read until then.
   */
  noteUnacknowledged(shard: number, entry: LogEntry): void {
    let pending = this.unacked.get(shard);
    if (!pending) this.unacked.set(shard, (pending = new Map()));
    pending.set(keyScope(entry.parent, entry.index), entry.seq);
    pending.set(collectionScope(entry.parent), entry.seq);
  }

  /** Resolves once no write to the key (or, with `index` undefined, the collection) awaits its write concern. */
  async awaitAcknowledged(shard: number, parent: string, index: string | undefined): Promise<void> {
    const scope = index === undefined ? collectionScope(parent) : keyScope(parent, index);
    for (let seq = this.unacked.get(shard)?.get(scope); seq !== undefined;) {
      await this.awaitWriteConcern(shard, seq);
      seq = this.unacked.get(shard)?.get(scope);
    }
  }

  onPeerDown(_peer: string): void {
    if (!this.map) return;
    for (const shard of this.waiters.shards()) {
      const a = this.map.assignments[shard]!;
      const up = 1 + a.followers.filter((f) => this.links.get(f) && !this.links.get(f)!.down).length;
      if (up < this.requiredFor(shard))
        this.waiters.failAll(
          shard,
          unavailable(`shard ${shard}: fewer copies reachable than the write concern needs`, 2),
        );
    }
  }

  /** The runtime of a shard this agent leads and may write now, or a 503 saying why not. */
  writable(shard: number): ShardRuntime {
    const rt = this.shards.get(shard);
    if (!rt || rt.role !== 'pivot') throw unavailable(`this agent is not the pivot of shard ${shard}`);
    if (this.fenced()) throw unavailable(`shard ${shard}: a newer shard map exists; waiting for it`);
    if (rt.state !== 'serving') throw unavailable(`shard ${shard} is ${rt.state}; retry shortly`);
    return rt;
  }

  /** Waits until the write at `seq` holds the copies the write concern requires. */
  async awaitWriteConcern(shard: number, seq: number): Promise<void> {
    const p = this.policy();
    const budget = p.maxAttempts * p.timeoutMs;
    const wait = this.waiters.wait(shard, seq, budget);
    this.onProgress(shard);
    this.onPeerDown('');
    await wait;
  }

  /**
   * At the pivot: enough followers confirm our epoch after the call, so no newer pivot acked
   * anything we miss. Calls of one event-loop turn share one round, which starts after the last
   * of them arrived; a call during a running round waits for the next.
   */
  confirmLeadership(shard: number): Promise<void> {
    const need = this.confirmationsNeeded(shard);
    if (need === 0) return Promise.resolve();
    if (this.holdsReadLease(shard, need)) {
      this.metrics.strongReads.inc({ via: 'lease' });
      return Promise.resolve();
    }
    this.metrics.strongReads.inc({ via: 'round' });
    let round = this.readRounds.get(shard);
    if (!round) {
      round = new Promise<void>((started) => setImmediate(started)).then(() => {
        this.readRounds.delete(shard);
        return this.confirmRound(shard);
      });
      this.readRounds.set(shard, round);
    }
    return round;
  }

  /** Enough followers' read-lease promises still hold: no newer pivot can have acknowledged a write. */
  private holdsReadLease(shard: number, need: number): boolean {
    const rt = this.shards.get(shard);
    if (rt?.role !== 'pivot' || rt.state !== 'serving' || this.fenced()) return false;
    const epoch = this.epoch();
    const granted = this.map!.assignments[shard]!.followers.map(
      (f) => this.links.get(f)?.promisedAt(epoch) ?? 0,
    );
    return leaseHolds(granted, need, readLeaseMs(this.policy().timeoutMs), performance.now());
  }

  private confirmationsNeeded(shard: number): number {
    return readConfirmations(this.map!.writeConcern, copiesOf(this.map!.assignments[shard]!).length);
  }

  private async confirmRound(shard: number): Promise<void> {
    const need = this.confirmationsNeeded(shard);
    if (need === 0) return; // the map changed since the read arrived
    const a = this.map!.assignments[shard]!;
    const started = performance.now();
    const confirmations = a.followers.map((f) => this.linkTo(f).confirmAfter(started));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(unavailable(`shard ${shard}: followers did not confirm this pivot in time`)),
        this.policy().timeoutMs,
      );
    });
    let got = 0;
    try {
      await Promise.race([
        new Promise<void>((resolve) => {
          for (const c of confirmations)
            c.then(
              () => {
                if (++got >= need) resolve();
              },
              () => {}, // an unreachable follower simply does not confirm
            );
        }),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
    if (this.fenced() || this.shards.get(shard)?.role !== 'pivot')
      throw unavailable(`shard ${shard} changed pivot`);
  }

  /** Keeps each shard's log within both bounds, trimming once it is a quarter over either. */
  private async trimLogs() {
    const { logRetain, logRetainBytes } = this.config;
    for (const shard of this.store.shardsWithData()) {
      const m = this.store.shardMeta(shard);
      let keepFrom = 0;
      if (m.seq - m.firstLogSeq + 1 > logRetain * 1.25) keepFrom = m.seq - logRetain + 1;
      if ((m.logBytes ?? 0) > logRetainBytes * 1.25)
        keepFrom = Math.max(keepFrom, this.store.keepFromForBytes(shard, logRetainBytes));
      if (keepFrom > m.firstLogSeq)
        await this.store
          .trimLog(shard, keepFrom)
          .catch((e: Error) => this.log.error({ shard, err: e.message }, 'log trim failed'));
    }
  }

  status() {
    return {
      name: this.name,
      clusterUid: this.map?.clusterUid ?? this.config.clusterUid ?? null,
      epoch: this.epoch(),
      ready: this.ready,
      shards: [...this.shards.values()]
        .filter((rt) => rt.role !== 'none')
        .map((rt) => {
          const position = this.store.position(rt.shard);
          const meta = this.store.shardMeta(rt.shard);
          const committed = rt.role === 'pivot' ? this.committedOf(rt.shard) : position.seq;
          const followers =
            rt.role === 'pivot'
              ? this.map!.assignments[rt.shard]!.followers.map((f) => {
                  const p = this.links.get(f)?.progress.get(rt.shard);
                  return {
                    name: f,
                    applied: p?.applied ?? 0,
                    serving: !!p?.serving,
                    mode: p?.mode ?? 'probe',
                    down: !!this.links.get(f)?.down,
                  };
                })
              : undefined;
          const lag = followers ? Math.max(0, ...followers.map((f) => position.seq - f.applied)) : 0;
          return {
            shard: rt.shard,
            role: rt.role,
            pivot: rt.pivot,
            state: rt.state,
            position,
            committedSeq: committed,
            lagSeq: lag,
            log: { firstSeq: meta.firstLogSeq, bytes: meta.logBytes ?? 0 },
            ...(followers ? { followers } : {}),
          };
        }),
      wipes: this.store.wipes(),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.trimTimer);
    this.abort.abort(new Error('agent shutting down'));
    for (const shard of this.waiters.shards())
      this.waiters.failAll(shard, unavailable('agent shutting down'));
    await Promise.all([...this.links.values()].map((l) => l.close()));
    await Promise.all([...this.clients.values()].map((c) => c.close().catch(() => {})));
  }
}
