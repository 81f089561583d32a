// Writes waiting at the pivot for their write concern, per shard, in seq order.
import { unavailable } from '../api/errors.ts';

interface Waiter {
  seq: number;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class CommitWaiters {
  private readonly byShard = new Map<number, Waiter[]>();

  /** Resolves when `committed(shard) >= seq`; rejects with 503 after `timeoutMs` or failAll. */
  wait(shard: number, seq: number, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const list = this.byShard.get(shard) ?? [];
      this.byShard.set(shard, list);
      const waiter: Waiter = {
        seq,
        resolve,
        reject,
        timer: setTimeout(() => {
          list.splice(list.indexOf(waiter), 1);
          reject(unavailable(`shard ${shard}: the write concern was not met within the retry policy`));
        }, timeoutMs),
      };
      // Seqs arrive in order, so pushing keeps the list sorted.
      list.push(waiter);
    });
  }

  committed(shard: number, seq: number): void {
    const list = this.byShard.get(shard);
    if (!list) return;
    let n = 0;
    while (n < list.length && list[n]!.seq <= seq) {
      clearTimeout(list[n]!.timer);
      list[n]!.resolve();
      n++;
    }
    if (n) list.splice(0, n);
  }

  failAll(shard: number, error: Error): void {
    const list = this.byShard.get(shard);
    if (!list) return;
    this.byShard.delete(shard);
    for (const w of list) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }

  pending(shard: number): number {
    return this.byShard.get(shard)?.length ?? 0;
  }

  shards(): number[] {
    return [...this.byShard.keys()];
  }
}
