// The stored object and the log entry, plus their exact JSON forms. `created`/`updated` are Unix
// nanoseconds held as bigint (a JS number loses precision there) and written as integer digits.
// `data` is kept as the JSON text the client sent: it was validated once and is never re-encoded.

export interface StoredRecord {
  key: string;
  /** Path of the collection the key sits in; '' for a top-level key. */
  parent: string;
  index: string;
  created: bigint;
  updated: bigint;
  version: string;
  /** JSON text of the value. */
  data: string;
}

export type LogOp = 'put' | 'del';

export interface LogEntry {
  term: number;
  seq: number;
  op: LogOp;
  key: string;
  parent: string;
  index: string;
  /** The whole new object for `put`, so applying an entry never needs the old one. */
  record?: StoredRecord;
}

export const versionOf = (term: number, seq: number) => `${term}.${seq}`;

/** What a log entry costs in the log, roughly: its value and key plus framing. */
export const logEntryBytes = (e: LogEntry) => (e.record?.data.length ?? 0) + e.key.length + 64;

export function parseVersion(text: string): { term: number; seq: number } | null {
  const m = /^"?(\d+)\.(\d+)"?$/.exec(text.trim());
  return m ? { term: Number(m[1]), seq: Number(m[2]) } : null;
}

export function recordJson(r: StoredRecord): string {
  return (
    `{"key":${JSON.stringify(r.key)},"index":${JSON.stringify(r.index)},"data":${r.data},` +
    `"created":${r.created},"updated":${r.updated},"version":"${r.version}"}`
  );
}

export const recordsJson = (rs: readonly StoredRecord[]) => `[${rs.map(recordJson).join(',')}]`;

// Nanosecond wall clock that never repeats or goes backwards within the process.
let lastNs = 0n;
export function nowNs(): bigint {
  const ms = BigInt(Date.now());
  const subMs = process.hrtime.bigint() % 1_000_000n;
  let ns = ms * 1_000_000n + subMs;
  if (ns <= lastNs) ns = lastNs + 1n;
  lastNs = ns;
  return ns;
}

/** Push index: time-ordered, unique within the shard (the seq breaks ties), a valid key segment. */
export const pushIndex = (ns: bigint, seq: number) =>
  `${ns.toString().padStart(20, '0')}-${seq.toString(36).padStart(8, '0')}`;

/** The creation time a push index carries, or undefined when `index` is not one. */
export function pushIndexCreated(index: string): bigint | undefined {
  const m = /^(\d{20})-[0-9a-z]{8,}$/.exec(index);
  return m ? BigInt(m[1]!) : undefined;
}
