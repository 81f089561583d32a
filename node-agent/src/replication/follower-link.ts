// Pivot side of replication towards one peer: one persistent connection pool, one batch in
// flight, carrying every shard this agent leads and the peer follows. A peer that keeps failing
// is backed off on the seed-000 schedule; when it answers again the catch-up starts at once.
import { HEALTHY, peerFailed, peerRecheckDelay, type PeerHealth } from '../../../lib/peer-backoff.ts';
import { withRetry, type RetryPolicy } from '../../../lib/retry.ts';
import type { Metrics } from '../metrics.ts';
import type { LogEntry } from '../storage/records.ts';
import type { Store } from '../storage/store.ts';
import { decideCatchUp, newestTerm, termAt } from './history.ts';
import type { BatchAnswer, BatchItem, BatchRequest } from './protocol.ts';
import { peerError, type PeerClient } from './transport.ts';

export interface FollowerProgress {
  mode: 'probe' | 'stream' | 'copy';
  next: number;
  applied: number;
  serving: boolean;
  /** A copy was asked for and not yet seen finishing. */
  copyAsked: boolean;
  /** A copy to ask for in the next batch, with its reason. */
  copyReason?: string;
  /** The follower is ahead of this pivot: polled, never streamed to or wiped. */
  ahead?: boolean;
}

/** What a link needs from its agent. */
export interface LinkHost {
  readonly name: string;
  readonly store: Store;
  readonly metrics: Metrics;
  epoch(): number;
  policy(): RetryPolicy;
  /** Shards this agent leads (and may write) that `peer` follows. */
  shardsFollowedBy(peer: string): number[];
  recentEntries(shard: number, from: number, upTo: number): LogEntry[];
  /** A follower's progress changed, or the peer went down/up. */
  onProgress(shard: number): void;
  onPeerDown(peer: string): void;
  /** A peer refused our epoch as stale: stop acting as pivot. */
  onStaleEpoch(theirEpoch: number): void;
  log: { warn(o: object, m: string): void; info(o: object, m: string): void };
}

const MAX_ENTRIES_PER_SHARD = 2000;
const COPY_POLL_MS = 300;

export class FollowerLink {
  readonly peer: string;
  readonly client: PeerClient;
  private readonly host: LinkHost;
  readonly progress = new Map<number, FollowerProgress>();
  health: PeerHealth = HEALTHY;
  private running = false;
  private again = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly abort = new AbortController();
  /** Send time of the last batch the peer accepted at our epoch. */
  private confirmedSentAt = 0;
  /** Send time of the last batch the peer accepted at our epoch and answered at it (a read-lease promise), and that epoch. */
  private promisedSentAt = 0;
  private promisedEpoch = 0;
  private lastSentAt = 0;
  private confirmWaiters: { after: number; resolve: () => void; reject: (e: Error) => void }[] = [];

  constructor(peer: string, client: PeerClient, host: LinkHost) {
    this.peer = peer;
    this.client = client;
    this.host = host;
  }

  get down(): boolean {
    return this.health.downSince !== null;
  }

  progressOf(shard: number): FollowerProgress {
    let p = this.progress.get(shard);
    if (!p) {
      p = { mode: 'probe', next: 0, applied: 0, serving: false, copyAsked: false };
      this.progress.set(shard, p);
    }
    return p;
  }

  /** New entries or a new shard: send now, unless the peer is backed off. */
  kick(): void {
    if (this.closed || this.down) return;
    if (this.running) {
      this.again = true;
      return;
    }
    void this.pump();
  }

  /** Send time of the peer's newest read-lease promise at `epoch` (history.ts), 0 when none. */
  promisedAt(epoch: number): number {
    return this.promisedEpoch === epoch ? this.promisedSentAt : 0;
  }

  /** Resolves once a batch sent at or after `after` was accepted (strong-read confirmation). */
  confirmAfter(after: number): Promise<void> {
    if (this.confirmedSentAt >= after) return Promise.resolve();
    if (this.down || this.closed) return Promise.reject(new Error(`${this.peer} is backed off`));
    return new Promise((resolve, reject) => {
      this.confirmWaiters.push({ after, resolve, reject });
      this.kick();
    });
  }

  private buildItems(): BatchItem[] {
    const items: BatchItem[] = [];
    const { store } = this.host;
    for (const shard of this.host.shardsFollowedBy(this.peer)) {
      const p = this.progressOf(shard);
      const pivotSeq = store.durableSeq(shard);
      if (p.mode === 'stream' && p.next <= pivotSeq) {
        const upTo = Math.min(pivotSeq, p.next + MAX_ENTRIES_PER_SHARD - 1);
        const entries = this.host.recentEntries(shard, p.next, upTo);
        if (entries.length > 0 && entries[0]!.seq === p.next) {
          const prevSeq = p.next - 1;
          const prev = { term: termAt(store.shardMeta(shard).history, prevSeq), seq: prevSeq };
          items.push({ shard, pivotSeq, prev, entries });
          continue;
        }
        p.mode = 'probe'; // trimmed meanwhile: decide again
      }
      if (p.mode === 'copy' && p.copyReason) {
        const pivotTerm = newestTerm(store.shardMeta(shard).history);
        items.push({ shard, pivotSeq, copy: p.copyReason, pivotLast: store.position(shard), pivotTerm });
      } else if (p.mode === 'probe' || p.mode === 'copy' || !p.serving) items.push({ shard, pivotSeq });
    }
    return items;
  }

  private async pump(): Promise<void> {
    this.running = true;
    try {
      for (;;) {
        this.again = false;
        const items = this.buildItems();
        const wantConfirm = this.confirmWaiters.length > 0;
        const hasWork = items.some((i) => {
          const p = this.progressOf(i.shard);
          return i.entries || i.copy || (p.mode === 'probe' && !p.ahead);
        });
        // A copy in progress or a follower ahead of us changes without telling: ask it again,
        // at most every COPY_POLL_MS (only its answer says that a copy finished, or restarted).
        const poll = items.length > 0 && performance.now() - this.lastSentAt >= COPY_POLL_MS;
        if (!hasWork && !wantConfirm && !poll) {
          if (items.length > 0) this.schedule(COPY_POLL_MS);
          break;
        }
        const ok = await this.send(items);
        if (!ok || this.closed) break;
      }
    } finally {
      this.running = false;
    }
    if (this.again && !this.down) this.kick();
  }

  private async send(items: BatchItem[], singleAttempt = false): Promise<boolean> {
    const epoch = this.host.epoch();
    const request: BatchRequest = { epoch, from: this.host.name, items };
    const sentAt = performance.now();
    this.lastSentAt = sentAt;
    try {
      const policy = this.host.policy();
      const { value, bytes } = await withRetry(
        singleAttempt ? { ...policy, maxAttempts: 1 } : policy,
        (signal) => this.client.call<BatchAnswer>('/_pivot/v1/replicate/batch', request, signal),
        {
          signal: this.abort.signal,
          onRetry: () => this.host.metrics.retries.inc({ call: 'replicate' }),
        },
      );
      this.host.metrics.bytesSynced.inc({ direction: 'sent', kind: 'log' }, bytes);
      if (this.down) this.host.log.info({ peer: this.peer }, 'peer answers again; catching it up');
      this.health = HEALTHY;
      this.host.metrics.peerDown.set({ peer: this.peer }, 0);
      // A peer already on a newer map: fenced before anything of its answer counts.
      if (value.epoch > epoch) this.host.onStaleEpoch(value.epoch);
      if (epoch === this.host.epoch()) this.confirm(sentAt);
      if (value.promised && value.epoch === epoch && sentAt > this.promisedSentAt) {
        this.promisedSentAt = sentAt;
        this.promisedEpoch = epoch;
      }
      this.absorb(value, items);
      return true;
    } catch (error) {
      if (this.closed) return false;
      const pe = peerError(error);
      if (pe?.code === 'STALE_EPOCH') {
        if (epoch < this.host.epoch()) {
          // Sent before our own map moved on: resend at the current epoch.
          this.again = true;
          return false;
        }
        for (const w of this.confirmWaiters.splice(0)) w.reject(new Error(`${this.peer} has a newer epoch`));
        this.host.onStaleEpoch(Math.max((pe.body as { epoch?: number })?.epoch ?? 0, epoch + 1));
        return false;
      }
      this.markDown(error);
      return false;
    }
  }

  private confirm(sentAt: number) {
    this.confirmedSentAt = Math.max(this.confirmedSentAt, sentAt);
    const due = this.confirmWaiters.filter((w) => w.after <= sentAt);
    this.confirmWaiters = this.confirmWaiters.filter((w) => w.after > sentAt);
    for (const w of due) w.resolve();
  }

  private absorb(answer: BatchAnswer, items: BatchItem[]) {
    const { store } = this.host;
    for (const a of answer.items) {
      const p = this.progressOf(a.shard);
      const sent = items.find((i) => i.shard === a.shard);
      if (sent?.copy) p.copyReason = undefined;
      p.applied = a.position.seq;
      p.serving = a.serving && !a.copying;
      const wasAhead = p.ahead;
      p.ahead = false;
      if (a.refused) {
        p.mode = 'probe';
        p.serving = false;
      } else if (a.copying) {
        p.mode = 'copy';
      } else if (p.mode === 'stream' && !a.mismatch && a.complete) {
        p.next = a.position.seq + 1;
      } else if (!(p.mode === 'copy' && p.copyAsked && !a.complete)) {
        const decision = decideCatchUp({
          follower: a.position,
          followerComplete: a.complete,
          pivotHistory: store.shardMeta(a.shard).history,
          pivotLast: store.position(a.shard),
          firstLogSeq: store.shardMeta(a.shard).firstLogSeq,
        });
        if (decision.mode === 'stream') {
          Object.assign(p, { mode: 'stream', next: decision.from, copyAsked: false });
        } else if (decision.mode === 'hold') {
          // Only a pivot still taking over (or a stale one) can be behind a follower: poll it.
          if (!wasAhead)
            this.host.log.warn(
              { peer: this.peer, shard: a.shard, follower: a.position, pivot: store.position(a.shard) },
              'follower is ahead of this pivot; not streaming to it or wiping it',
            );
          Object.assign(p, { mode: 'probe', serving: false, copyAsked: false, ahead: true });
        } else {
          this.host.log.info(
            { peer: this.peer, shard: a.shard, reason: decision.reason },
            'follower needs a snapshot copy',
          );
          Object.assign(p, { mode: 'copy', copyAsked: true, serving: false, copyReason: decision.reason });
          this.again = true;
        }
      }
      const lag = Math.max(0, store.durableSeq(a.shard) - a.position.seq);
      this.host.metrics.lag.set({ shard: String(a.shard), follower: this.peer }, lag);
      this.host.onProgress(a.shard);
    }
  }

  private markDown(error: unknown) {
    const now = Date.now();
    if (!this.down)
      this.host.log.warn({ peer: this.peer, err: (error as Error).message }, 'peer unreachable; backing off');
    this.health = peerFailed(this.health, now);
    this.host.metrics.peerDown.set({ peer: this.peer }, 1);
    for (const w of this.confirmWaiters.splice(0)) w.reject(new Error(`${this.peer} is unreachable`));
    for (const p of this.progress.values())
      Object.assign(p, { mode: 'probe', serving: false, copyAsked: false });
    this.host.onPeerDown(this.peer);
    this.schedule(peerRecheckDelay(this.health.downSince!, now), true);
  }

  private schedule(ms: number, recheck = false) {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (recheck) {
        // Re-check a backed-off peer: one probe; success clears `down` and streams the catch-up.
        if (this.running) return;
        void this.probeAfterDown();
      } else this.kick();
    }, ms);
    this.timer.unref();
  }

  private async probeAfterDown() {
    this.running = true;
    try {
      const items = this.host
        .shardsFollowedBy(this.peer)
        .map((shard) => ({ shard, pivotSeq: this.host.store.durableSeq(shard) }));
      const ok = await this.send(items, true);
      if (!ok) return;
    } finally {
      this.running = false;
    }
    this.kick();
  }

  /** The peer just called us, so it is up again: re-check it now instead of on the schedule. */
  recheckNow(): void {
    if (!this.down || this.running || this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    void this.probeAfterDown();
  }

  /** The shard is no longer led here or no longer followed by this peer. */
  forget(shard: number) {
    this.progress.delete(shard);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.abort.abort(new Error('agent shutting down'));
    clearTimeout(this.timer);
    for (const w of this.confirmWaiters.splice(0)) w.reject(new Error('agent shutting down'));
  }
}
