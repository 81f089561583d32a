// Pure decisions about shard histories: log matching, catch-up mode, promotion quorum and
// write-concern accounting. Everything here is table-tested in history.unit.test.ts.
import { requiredCopies, type WriteConcern } from '../../../lib/shard-map.ts';

/** A log position. Positions order by (term, seq); (0, 0) is the empty shard. */
export interface Position {
  term: number;
  seq: number;
}

/** A term starts at `start`: every seq >= start (up to the next term's start) was written in it. */
export interface TermStart {
  term: number;
  start: number;
}

export const EMPTY: Position = Object.freeze({ term: 0, seq: 0 });

export function comparePositions(a: Position, b: Position): number {
  return a.term - b.term || a.seq - b.seq;
}

/** The term of entry `seq` in a history, or 0 for seq 0 / before any term. */
export function termAt(history: readonly TermStart[], seq: number): number {
  let term = 0;
  for (const t of history) {
    if (t.start > seq) break;
    term = t.term;
  }
  return seq === 0 ? 0 : term;
}

/** The history with a new term appended (terms only grow; a term with no entries is replaced). */
export function appendTerm(history: readonly TermStart[], term: number, start: number): TermStart[] {
  const kept = history.filter((t) => t.start < start);
  const last = kept[kept.length - 1];
  if (last && last.term === term) return kept;
  return [...kept, { term, start }];
}

/** The history restricted to entries up to `seq` (for a copy that holds a prefix). */
export function historyUpTo(history: readonly TermStart[], seq: number): TermStart[] {
  return history.filter((t) => t.start <= seq);
}

/**
 * Log matching: a copy whose last entry is `copy` holds a prefix of `source` (last entry
 * `sourceLast`, history `sourceHistory`) when the source has that entry, in the same term.
 */
export function isPrefixOf(
  copy: Position,
  sourceHistory: readonly TermStart[],
  sourceLast: Position,
): boolean {
  if (copy.seq === 0) return true;
  if (copy.seq > sourceLast.seq) return false;
  return termAt(sourceHistory, copy.seq) === copy.term;
}

export type CatchUp =
  | { mode: 'stream'; from: number }
  | { mode: 'snapshot'; reason: 'diverged' | 'trimmed' | 'incomplete' }
  | { mode: 'hold'; reason: 'ahead' };

/** The newest term a history has started (its own term, at a pivot that has taken over). */
export function newestTerm(history: readonly TermStart[]): number {
  return history[history.length - 1]?.term ?? 0;
}

/**
 * A copy extends the pivot's history when it is further along in a term at least as new as the
 * newest one the pivot has started: it holds writes (possibly acknowledged) the pivot lacks, so
 * the pivot is behind it (still taking over, or stale) and must pull from it, never wipe it. A
 * copy ahead only in an older term holds leftovers that the pivot's takeover superseded.
 */
export function extendsPivot(copy: Position, pivotLast: Position, pivotTerm: number): boolean {
  return comparePositions(copy, pivotLast) > 0 && copy.term >= pivotTerm;
}

/**
 * How the pivot brings a follower up to date: stream its log from the follower's next seq when
 * the follower holds a prefix and the log still reaches back, else a snapshot (the follower
 * wipes its copy first). A follower that extends the pivot's history is held, never wiped.
 */
export function decideCatchUp(input: {
  follower: Position;
  followerComplete: boolean;
  pivotHistory: readonly TermStart[];
  pivotLast: Position;
  firstLogSeq: number;
}): CatchUp {
  if (!input.followerComplete) return { mode: 'snapshot', reason: 'incomplete' };
  if (extendsPivot(input.follower, input.pivotLast, newestTerm(input.pivotHistory)))
    return { mode: 'hold', reason: 'ahead' };
  if (!isPrefixOf(input.follower, input.pivotHistory, input.pivotLast))
    return { mode: 'snapshot', reason: 'diverged' };
  const from = input.follower.seq + 1;
  if (from <= input.pivotLast.seq && from < input.firstLogSeq) return { mode: 'snapshot', reason: 'trimmed' };
  return { mode: 'stream', from };
}

/**
 * Answers a newly promoted pivot needs (itself included) before it may take writes: enough that
 * any `required` of the previous `copies` intersect them, so the most advanced answer holds every
 * acknowledged write.
 */
export function promotionQuorum(writeConcern: WriteConcern, previousCopies: number): number {
  return previousCopies - requiredCopies(writeConcern, previousCopies) + 1;
}

/** The most advanced position among answers; ties keep the first. */
export function mostAdvanced<T extends { position: Position }>(answers: readonly T[]): T | undefined {
  let best: T | undefined;
  for (const a of answers) if (!best || comparePositions(a.position, best.position) > 0) best = a;
  return best;
}

/**
 * The highest seq held durably by `required` copies: the pivot's own durable seq and the
 * applied seq of each serving follower. Followers still syncing do not count.
 */
export function committedSeq(
  pivotDurable: number,
  followers: readonly { applied: number; serving: boolean }[],
  required: number,
): number {
  const held = [
    pivotDurable,
    ...followers.filter((f) => f.serving).map((f) => Math.min(f.applied, pivotDurable)),
  ];
  if (held.length < required) return 0;
  held.sort((a, b) => b - a);
  return held[required - 1]!;
}

/**
 * Followers that must confirm the pivot's epoch before it serves a strong read: enough that the
 * confirmers intersect the acknowledging copies of any write a newer pivot could have taken.
 */
export function readConfirmations(writeConcern: WriteConcern, copies: number): number {
  return Math.max(0, copies - requiredCopies(writeConcern, copies));
}

/**
 * Read leases. A follower that accepts a batch from the shard's pivot at its own epoch promises
 * that pivot, for `leaseMs` of its own clock from receipt, to take no entries of that shard from
 * any other agent and not to take the shard over itself. The pivot counts each promise from the
 * batch's send time (before the receipt) and gives up `LEASE_DRIFT` of it for clocks that tick at
 * different rates, so its lease ends before any promise does.
 */
export const MAX_LEASE_MS = 1000;
export const LEASE_DRIFT = 0.1;

/** Half the per-attempt timeout (a held batch must not time out), at most MAX_LEASE_MS. */
export function readLeaseMs(timeoutMs: number): number {
  return Math.min(MAX_LEASE_MS, Math.floor(timeoutMs / 2));
}

/**
 * Whether the pivot may serve a strong read at `now` without a confirmation round: `need`
 * followers sent a promise that still holds (`grantedAt`: send time of each follower's newest
 * batch accepted at this epoch, 0 when none).
 */
export function leaseHolds(
  grantedAt: readonly number[],
  need: number,
  leaseMs: number,
  now: number,
): boolean {
  if (need === 0) return true;
  const until = leaseMs * (1 - LEASE_DRIFT);
  return grantedAt.filter((t) => t > 0 && now < t + until).length >= need;
}
