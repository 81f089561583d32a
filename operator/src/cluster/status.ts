// Pure: the whole PivotCluster status, computed in one place from the plan and the observations.
import type { ShardAssignment } from '../../../lib/shard-map.ts';
import type { Plan } from './plan.ts';
import type { AgentObservation, Condition, PivotClusterStatus, WipeRecord } from './types.ts';

export const MAX_WIPE_RECORDS = 50;

export interface StatusInput {
  generation: number;
  previous: PivotClusterStatus;
  desiredReplicas: number;
  selector: string;
  agents: ReadonlyMap<string, AgentObservation>;
  plan: Plan;
  /** The map after this reconcile (the plan's new one, or the recorded one). */
  epoch: number;
  assignments: readonly ShardAssignment[];
  underReplicated: readonly number[];
  wipes: WipeRecord[];
  paused: boolean;
  now: Date;
}

/** Sets a condition, keeping lastTransitionTime when its status does not change (metav1 semantics). */
export function setCondition(
  conditions: readonly Condition[],
  next: Omit<Condition, 'lastTransitionTime'>,
  now: Date,
): Condition[] {
  const old = conditions.find((c) => c.type === next.type);
  const lastTransitionTime = old && old.status === next.status ? old.lastTransitionTime : now.toISOString();
  return [...conditions.filter((c) => c.type !== next.type), { ...next, lastTransitionTime }];
}

export function computeStatus(input: StatusInput): PivotClusterStatus {
  const { plan, generation, now } = input;
  const pods = [...input.agents.values()];
  const readyReplicas = pods.filter((a) => a.podReady && !a.deleting).length;
  const unassigned = input.assignments.length === 0;
  const under = input.underReplicated;
  const progressing = plan.operation !== null || plan.assignments !== null || plan.deletePod !== null;

  let ready: Omit<Condition, 'lastTransitionTime'>;
  if (input.paused)
    ready = {
      type: 'Ready',
      status: 'Unknown',
      reason: 'Paused',
      message: 'reconciling is paused by the pivot.dev/paused annotation',
    };
  else if (unassigned)
    ready = {
      type: 'Ready',
      status: 'False',
      reason: 'WaitingForAgents',
      message: plan.waiting ?? 'no shard map yet',
    };
  else if (under.length > 0)
    ready = {
      type: 'Ready',
      status: 'False',
      reason: 'UnderReplicated',
      message: `${under.length} shard(s) have fewer serving copies than the replication factor: ${under.slice(0, 10).join(', ')}`,
    };
  else if (readyReplicas < input.desiredReplicas)
    ready = {
      type: 'Ready',
      status: 'False',
      reason: 'AgentsNotReady',
      message: `${readyReplicas} of ${input.desiredReplicas} agents are ready`,
    };
  else
    ready = {
      type: 'Ready',
      status: 'True',
      reason: 'AllShardsReplicated',
      message: `every shard has its pivot and replication factor of serving copies`,
    };

  const progressingCondition: Omit<Condition, 'lastTransitionTime'> = input.paused
    ? { type: 'Progressing', status: 'False', reason: 'Paused', message: 'reconciling is paused' }
    : unassigned
      ? {
          type: 'Progressing',
          status: 'True',
          reason: 'Initializing',
          message: plan.waiting ?? 'assigning shards',
        }
      : progressing
        ? {
            type: 'Progressing',
            status: 'True',
            reason: plan.operation?.type ?? 'Reconciling',
            message: plan.operation?.message ?? 'applying a new shard map',
          }
        : {
            type: 'Progressing',
            status: 'False',
            reason: 'Stable',
            message: 'the shard map matches the target placement',
          };

  const degraded: Omit<Condition, 'lastTransitionTime'> = plan.refusal
    ? { type: 'Degraded', status: 'True', reason: plan.refusal.reason, message: plan.refusal.message }
    : !unassigned && under.length > 0
      ? { type: 'Degraded', status: 'True', reason: 'UnderReplicated', message: ready.message }
      : { type: 'Degraded', status: 'False', reason: 'AsExpected', message: 'no shard is missing copies' };

  let conditions = input.previous.conditions ?? [];
  for (const c of [ready, progressingCondition, degraded])
    conditions = setCondition(conditions, { ...c, observedGeneration: generation }, now);
  conditions.sort(
    (a, b) =>
      ['Ready', 'Progressing', 'Degraded'].indexOf(a.type) -
      ['Ready', 'Progressing', 'Degraded'].indexOf(b.type),
  );

  const previousOp = input.previous.operation;
  const operation = plan.operation
    ? {
        type: plan.operation.type,
        message: plan.operation.message,
        startedAt: previousOp?.type === plan.operation.type ? previousOp.startedAt : now.toISOString(),
      }
    : null;

  return {
    observedGeneration: generation,
    replicas: pods.length,
    readyReplicas,
    readyAgents: `${readyReplicas}/${input.desiredReplicas}`,
    selector: input.selector,
    epoch: input.epoch,
    assignments: [...input.assignments],
    operation,
    wipes: input.wipes,
    conditions,
  };
}

/**
 * Merges the wipes agents report into the recorded ones. Returns the bounded list and the wipes
 * seen for the first time (each gets an Event and a metric increment).
 */
export function mergeWipes(
  recorded: readonly WipeRecord[],
  agents: ReadonlyMap<string, AgentObservation>,
): { wipes: WipeRecord[]; fresh: WipeRecord[] } {
  const key = (w: { agent: string; shard: number; at: string }) => `${w.agent}/${w.shard}/${w.at}`;
  const byKey = new Map(recorded.map((w) => [key(w), { ...w }]));
  const fresh: WipeRecord[] = [];
  for (const a of agents.values())
    for (const w of a.status?.wipes ?? []) {
      const rec = { agent: a.name, shard: w.shard, at: w.at, reason: w.reason, completed: w.completed };
      const old = byKey.get(key(rec));
      if (old) old.completed = old.completed || rec.completed;
      else {
        byKey.set(key(rec), rec);
        fresh.push(rec);
      }
    }
  const wipes = [...byKey.values()]
    .sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0))
    .slice(-MAX_WIPE_RECORDS);
  return { wipes, fresh };
}
