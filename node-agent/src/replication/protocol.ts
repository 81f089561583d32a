// Wire shapes of the agent-to-agent routes under /_pivot/v1/replicate (MessagePack bodies).
// Every request carries the sender's epoch; a receiver on a newer epoch refuses it (STALE_EPOCH),
// a receiver on an older one learns that a newer map exists and stops acknowledging writes.
import type { LogEntry, StoredRecord } from '../storage/records.ts';
import type { Position, TermStart } from './history.ts';

/** One shard's part of a batch from the shard's pivot to one follower. */
export interface BatchItem {
  shard: number;
  /** The pivot's durable seq (for the follower's lag metric). */
  pivotSeq: number;
  /** Position the entries follow; the follower refuses them unless it stands exactly there. */
  prev?: Position;
  entries?: LogEntry[];
  /** Asks the follower to wipe its copy and pull a snapshot from the sender; the reason. */
  copy?: string;
  /** With `copy`: the pivot's last entry and newest term, so a follower ahead refuses the wipe. */
  pivotLast?: Position;
  pivotTerm?: number;
}

export interface BatchRequest {
  epoch: number;
  from: string;
  items: BatchItem[];
}

export interface CopyState {
  position: Position;
  /** False while a snapshot copy is incomplete. */
  complete: boolean;
  /** Complete and caught up to its sync target: may count towards the write concern. */
  serving: boolean;
  copying: boolean;
}

export interface BatchItemAnswer extends CopyState {
  shard: number;
  /** The entries did not follow this copy's position: the pivot decides again. */
  mismatch?: boolean;
  refused?: string;
}

export interface BatchAnswer {
  epoch: number;
  items: BatchItemAnswer[];
  /** A read-lease promise to the sender (history.ts) was given with this answer. */
  promised?: boolean;
}

export interface PositionAnswer extends CopyState {
  history: TermStart[];
  firstLogSeq: number;
  /** How long (ms) read-lease promises to other pivots of the shard still hold here: the asker waits that out before taking writes. */
  promisedMs?: number;
}

export interface LogAnswer {
  entries: LogEntry[];
  position: Position;
  history: TermStart[];
  firstLogSeq: number;
}

export interface SnapshotAnswer {
  records: StoredRecord[];
  last: (string | number)[] | null;
  /** First page only: the source's position and history when it started reading. */
  base?: Position;
  history?: TermStart[];
  /** The source's durable seq: the copy is consistent once it has replayed this far. */
  durable: number;
}
