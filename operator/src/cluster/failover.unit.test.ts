import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { WriteConcern } from '../../../lib/shard-map.ts';
import { agentObs, follower } from './fixtures.ts';
import { chooseFailover, pivotHealth } from './failover.ts';
import type { AgentObservation } from './types.ts';

const shard0 = { shard: 0, pivot: 'c-0', followers: ['c-1', 'c-2'] };
const agents = (...list: AgentObservation[]) => new Map(list.map((a) => [a.name, a]));

describe('pivotHealth', () => {
  const notReady = (over: Partial<AgentObservation> = {}) =>
    agentObs('c-0', { podReady: false, notReadySince: 1000, status: null, ...over });
  it.each([
    { name: 'gone', agent: undefined, now: 0, failed: true },
    { name: 'terminating', agent: agentObs('c-0', { deleting: true }), now: 0, failed: true },
    { name: 'ready', agent: agentObs('c-0'), now: 0, failed: false },
    { name: 'not ready within grace', agent: notReady(), now: 1999, failed: false },
    { name: 'not ready past grace, agent silent', agent: notReady(), now: 2000, failed: true },
    {
      name: 'not ready past grace, agent answers not ready at the current epoch',
      agent: notReady({ status: { name: 'c-0', epoch: 5, ready: false, shards: [] } }),
      now: 2000,
      failed: true,
    },
    {
      name: 'not ready past grace, agent answers but has not got the current map (just started)',
      agent: notReady({ status: { name: 'c-0', epoch: 4, ready: false, shards: [] } }),
      now: 2000,
      failed: false,
    },
  ])('$name → failed=$failed', ({ agent, now, failed }) => {
    expect(pivotHealth(agent, now, 1000, 5).failed).toBe(failed);
  });
});

describe('chooseFailover', () => {
  it.each<{ name: string; wc: WriteConcern; list: AgentObservation[]; want: string | null }>([
    {
      name: 'promotes the most caught-up follower',
      wc: 'majority',
      list: [
        agentObs('c-1', { shards: [follower(0, 'c-0', 7)] }),
        agentObs('c-2', { shards: [follower(0, 'c-0', 9)] }),
      ],
      want: 'c-2',
    },
    {
      name: 'orders positions by term first',
      wc: 'majority',
      list: [
        agentObs('c-1', { shards: [follower(0, 'c-0', 3, 'serving', 2)] }),
        agentObs('c-2', { shards: [follower(0, 'c-0', 9, 'serving', 1)] }),
      ],
      want: 'c-1',
    },
    {
      name: 'breaks ties by name',
      wc: 'majority',
      list: [
        agentObs('c-2', { shards: [follower(0, 'c-0', 9)] }),
        agentObs('c-1', { shards: [follower(0, 'c-0', 9)] }),
      ],
      want: 'c-1',
    },
    {
      name: 'refuses with majority at rf 3 when one follower is unreachable (it may hold the only acked copy)',
      wc: 'majority',
      list: [agentObs('c-1', { shards: [follower(0, 'c-0', 9)] }), agentObs('c-2', { status: null })],
      want: null,
    },
    {
      name: 'refuses when the follower has not applied the current epoch',
      wc: 'majority',
      list: [
        agentObs('c-1', { epoch: 0, shards: [follower(0, 'c-0', 9)] }),
        agentObs('c-2', { shards: [follower(0, 'c-0', 9)] }),
      ],
      want: null,
    },
    {
      name: 'never promotes a syncing follower, but it does not block the serving one',
      wc: 'majority',
      list: [
        agentObs('c-1', { shards: [follower(0, 'c-0', 99, 'syncing')] }),
        agentObs('c-2', { shards: [follower(0, 'c-0', 9)] }),
      ],
      want: 'c-2',
    },
    {
      name: 'refuses when the most caught-up follower is not ready (pod readiness cross-check)',
      wc: 'majority',
      list: [
        agentObs('c-1', { shards: [follower(0, 'c-0', 7)] }),
        agentObs('c-2', { podReady: false, notReadySince: 0, shards: [follower(0, 'c-0', 9)] }),
      ],
      want: null,
    },
    {
      name: 'with all, one known serving follower is enough',
      wc: 'all',
      list: [agentObs('c-1', { status: null }), agentObs('c-2', { shards: [follower(0, 'c-0', 9)] })],
      want: 'c-2',
    },
    {
      name: 'with one, promotes (with a loss warning) even if followers are unknown',
      wc: 'one',
      list: [agentObs('c-1', { status: null }), agentObs('c-2', { shards: [follower(0, 'c-0', 4)] })],
      want: 'c-2',
    },
  ])('$name', ({ wc, list, want }) => {
    const choice = chooseFailover(shard0, agents(...list), wc, 1);
    if (want === null) expect(choice.kind).toBe('refuse');
    else {
      expect(choice).toMatchObject({ kind: 'promote', promote: want });
      if (choice.kind === 'promote') {
        expect(choice.assignment.pivot).toBe(want);
        expect(choice.assignment.followers).not.toContain('c-0');
        expect(choice.assignment.followers).not.toContain(want);
        expect(choice.mayLoseWrites).toBe(wc === 'one');
      }
    }
  });

  it('warns when pod readiness and the agent disagree', () => {
    const choice = chooseFailover(
      shard0,
      agents(
        agentObs('c-1', { status: null }),
        agentObs('c-2', { podReady: false, shards: [follower(0, 'c-0', 9)] }),
      ),
      'majority',
      1,
    );
    expect(choice.warnings).toEqual([
      'c-1: pod is ready but the agent did not answer its status',
      'c-2: agent reports ready but its pod is not ready',
    ]);
  });

  it('never promotes a follower behind another serving follower (property)', () => {
    const arbFollower = fc.record({
      seq: fc.nat(20),
      term: fc.integer({ min: 1, max: 3 }),
      state: fc.constantFrom('serving' as const, 'syncing' as const),
      reachable: fc.boolean(),
      ready: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.array(arbFollower, { minLength: 1, maxLength: 6 }),
        fc.constantFrom<WriteConcern>('majority', 'all'),
        (fs, wc) => {
          const names = fs.map((_, i) => `c-${i + 1}`);
          const obs = agents(
            ...fs.map((f, i) =>
              agentObs(names[i]!, {
                podReady: f.ready,
                status: f.reachable
                  ? {
                      name: names[i]!,
                      epoch: 1,
                      ready: f.ready,
                      shards: [follower(0, 'c-0', f.seq, f.state, f.term)],
                    }
                  : null,
              }),
            ),
          );
          const choice = chooseFailover({ shard: 0, pivot: 'c-0', followers: names }, obs, wc, 1);
          if (choice.kind !== 'promote') return;
          const chosen = fs[names.indexOf(choice.promote)]!;
          expect(chosen.ready && chosen.reachable && chosen.state === 'serving').toBe(true);
          // Nobody serving and reachable is ahead of the chosen one.
          for (const f of fs)
            if (f.reachable && f.state === 'serving')
              expect(f.term < chosen.term || (f.term === chosen.term && f.seq <= chosen.seq)).toBe(true);
          // Every acknowledged write is on required-1 serving followers: an unseen set that large must not exist.
          const unknown = fs.filter((f) => !f.reachable).length;
          const required = wc === 'all' ? fs.length + 1 : Math.floor((fs.length + 1) / 2) + 1;
          expect(unknown).toBeLessThan(required - 1);
        },
      ),
    );
  });
});
