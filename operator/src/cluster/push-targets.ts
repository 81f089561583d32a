// Pure: which agents get the recorded shard map pushed in this reconcile.
import type { AgentObservation } from './types.ts';

export interface MapPushTargets {
  /** Running agents that answered their status call from an older epoch: pushed to now. */
  push: string[];
  /**
   * Running agents that did not answer their status call moments ago (dead, frozen, partitioned).
   * Not pushed to: every push would spend the cluster's whole retry policy on them, holding a worker
   * each reconcile while other clusters wait. They count as not reached, so whatever waits for every
   * agent to hold the map keeps waiting, and the reconcile is retried shortly.
   */
  unanswered: string[];
}

export function mapPushTargets(agents: Iterable<AgentObservation>, epoch: number): MapPushTargets {
  const targets: MapPushTargets = { push: [], unanswered: [] };
  for (const a of agents) {
    if (!a.ip || a.deleting) continue;
    if (a.status === null) targets.unanswered.push(a.name);
    else if (a.status.epoch < epoch) targets.push.push(a.name);
  }
  return targets;
}
