// Per-peer re-check schedule (seed 000): a peer that keeps failing is re-checked every second,
// every 5 s once it has been down for 10 minutes, every 10 s after 30 minutes. Used by agents
// (replication to followers) and by the operator (probing agents). Pure so both share one rule.

export const PEER_BACKOFF_STEPS: readonly { afterMs: number; everyMs: number }[] = Object.freeze([
  { afterMs: 0, everyMs: 1_000 },
  { afterMs: 10 * 60_000, everyMs: 5_000 },
  { afterMs: 30 * 60_000, everyMs: 10_000 },
]);

/** How long to wait before re-checking a peer that has been failing since `downSinceMs`. */
export function peerRecheckDelay(downSinceMs: number, nowMs: number): number {
  const downFor = Math.max(0, nowMs - downSinceMs);
  let every = PEER_BACKOFF_STEPS[0]!.everyMs;
  for (const step of PEER_BACKOFF_STEPS) if (downFor >= step.afterMs) every = step.everyMs;
  return every;
}

/** Health of one peer as a value: `downSince` is null while it answers. */
export interface PeerHealth {
  downSince: number | null;
  failures: number;
}

export const HEALTHY: PeerHealth = Object.freeze({ downSince: null, failures: 0 });

export function peerFailed(health: PeerHealth, nowMs: number): PeerHealth {
  return { downSince: health.downSince ?? nowMs, failures: health.failures + 1 };
}

export function peerAnswered(): PeerHealth {
  return HEALTHY;
}

/** When the next attempt to reach the peer is due, given when the last one failed. */
export function nextCheckAt(health: PeerHealth, lastFailureMs: number): number {
  if (health.downSince === null) return lastFailureMs;
  return lastFailureMs + peerRecheckDelay(health.downSince, lastFailureMs);
}
