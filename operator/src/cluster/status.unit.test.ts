import { describe, expect, it } from '@jest/globals';
import { agentObs } from './fixtures.ts';
import type { Plan } from './plan.ts';
import { MAX_WIPE_RECORDS, computeStatus, mergeWipes, setCondition, type StatusInput } from './status.ts';

const idle: Plan = {
  assignments: null,
  operation: null,
  events: [],
  failovers: [],
  deletePod: null,
  statefulSetReplicas: 3,
  refusal: null,
  waiting: null,
  rebalanceMoves: null,
};
const map = [{ shard: 0, pivot: 'c-0', followers: ['c-1', 'c-2'] }];
const agents = new Map(['c-0', 'c-1', 'c-2'].map((n) => [n, agentObs(n)]));
const input = (over: Partial<StatusInput> = {}): StatusInput => ({
  generation: 2,
  previous: {},
  desiredReplicas: 3,
  selector: 'app.kubernetes.io/instance=c,app.kubernetes.io/name=pivot-agent',
  agents,
  plan: idle,
  epoch: 4,
  assignments: map,
  underReplicated: [],
  wipes: [],
  paused: false,
  now: new Date('2026-11-21T23:00:00Z'),
  ...over,
});
const summary = (s: ReturnType<typeof computeStatus>) =>
  Object.fromEntries(s.conditions!.map((c) => [c.type, `${c.status}/${c.reason}`]));

describe('computeStatus', () => {
  it.each([
    {
      name: 'healthy and settled',
      over: {},
      want: { Ready: 'True/AllShardsReplicated', Progressing: 'False/Stable', Degraded: 'False/AsExpected' },
    },
    {
      name: 'before the first assignment',
      over: { assignments: [], epoch: 0, plan: { ...idle, waiting: 'waiting for 1 of 3 agents' } },
      want: {
        Ready: 'False/WaitingForAgents',
        Progressing: 'True/Initializing',
        Degraded: 'False/AsExpected',
      },
    },
    {
      name: 'under-replicated',
      over: { underReplicated: [0] },
      want: { Ready: 'False/UnderReplicated', Progressing: 'False/Stable', Degraded: 'True/UnderReplicated' },
    },
    {
      name: 'failing over',
      over: {
        plan: { ...idle, assignments: map, operation: { type: 'Failover' as const, message: 'promoted' } },
        underReplicated: [0],
      },
      want: {
        Ready: 'False/UnderReplicated',
        Progressing: 'True/Failover',
        Degraded: 'True/UnderReplicated',
      },
    },
    {
      name: 'a refused failover',
      over: { plan: { ...idle, refusal: { reason: 'FailoverRefused', message: 'no' } } },
      want: {
        Ready: 'True/AllShardsReplicated',
        Progressing: 'False/Stable',
        Degraded: 'True/FailoverRefused',
      },
    },
    {
      name: 'an agent not ready',
      over: { agents: new Map([...agents, ['c-2', agentObs('c-2', { podReady: false })]]) },
      want: { Ready: 'False/AgentsNotReady', Progressing: 'False/Stable', Degraded: 'False/AsExpected' },
    },
  ])('$name', ({ over, want }) => {
    const s = computeStatus(input(over));
    expect(summary(s)).toEqual(want);
    expect(s.conditions!.map((c) => c.type)).toEqual(['Ready', 'Progressing', 'Degraded']);
    for (const c of s.conditions!) expect(c.observedGeneration).toBe(2);
  });

  it('fills the scale subresource fields and the kubectl column', () => {
    const s = computeStatus(
      input({ agents: new Map([...agents, ['c-2', agentObs('c-2', { podReady: false })]]) }),
    );
    expect(s).toMatchObject({
      observedGeneration: 2,
      replicas: 3,
      readyReplicas: 2,
      readyAgents: '2/3',
      epoch: 4,
    });
    expect(s.selector).toBe('app.kubernetes.io/instance=c,app.kubernetes.io/name=pivot-agent');
  });

  it('keeps an operation start time while the same operation continues', () => {
    const plan = { ...idle, operation: { type: 'Rebalance' as const, message: 'step 2' } };
    const previous = {
      operation: { type: 'Rebalance' as const, message: 'step 1', startedAt: '2026-11-21T22:00:00.000Z' },
    };
    expect(computeStatus(input({ plan, previous })).operation!.startedAt).toBe('2026-11-21T22:00:00.000Z');
    expect(computeStatus(input({ plan })).operation!.startedAt).toBe('2026-11-21T23:00:00.000Z');
    expect(computeStatus(input({ previous })).operation).toBeNull();
  });
});

describe('setCondition', () => {
  it('moves lastTransitionTime only when the status changes', () => {
    const t1 = new Date('2026-01-01T00:00:00Z');
    const t2 = new Date('2026-01-01T00:05:00Z');
    const first = setCondition([], { type: 'Ready', status: 'True', reason: 'A', message: '' }, t1);
    const same = setCondition(first, { type: 'Ready', status: 'True', reason: 'B', message: 'x' }, t2);
    expect(same[0]).toMatchObject({ reason: 'B', lastTransitionTime: t1.toISOString() });
    const flipped = setCondition(same, { type: 'Ready', status: 'False', reason: 'C', message: '' }, t2);
    expect(flipped[0]!.lastTransitionTime).toBe(t2.toISOString());
  });
});

describe('mergeWipes', () => {
  const withWipes = (name: string, wipes: { shard: number; at: string; completed: boolean }[]) =>
    agentObs(name, {
      status: {
        name,
        epoch: 1,
        ready: true,
        shards: [],
        wipes: wipes.map((w) => ({ ...w, reason: 'diverged' })),
      },
    });

  it('records each wipe once, tracks completion, and reports only new ones', () => {
    const first = mergeWipes(
      [],
      new Map([['c-1', withWipes('c-1', [{ shard: 3, at: 't1', completed: false }])]]),
    );
    expect(first.fresh).toEqual([{ agent: 'c-1', shard: 3, at: 't1', reason: 'diverged', completed: false }]);
    const second = mergeWipes(
      first.wipes,
      new Map([['c-1', withWipes('c-1', [{ shard: 3, at: 't1', completed: true }])]]),
    );
    expect(second.fresh).toEqual([]);
    expect(second.wipes).toEqual([{ agent: 'c-1', shard: 3, at: 't1', reason: 'diverged', completed: true }]);
    // An agent that restarted and forgot its wipes does not erase the record.
    expect(mergeWipes(second.wipes, new Map([['c-1', agentObs('c-1')]])).wipes).toEqual(second.wipes);
  });

  it(`keeps the newest ${MAX_WIPE_RECORDS}`, () => {
    const many = Array.from({ length: 60 }, (_, i) => ({
      shard: i,
      at: `t${String(i).padStart(3, '0')}`,
      completed: true,
    }));
    const { wipes, fresh } = mergeWipes([], new Map([['c-1', withWipes('c-1', many)]]));
    expect(fresh).toHaveLength(60);
    expect(wipes).toHaveLength(MAX_WIPE_RECORDS);
    expect(wipes[0]!.shard).toBe(10);
  });
});
