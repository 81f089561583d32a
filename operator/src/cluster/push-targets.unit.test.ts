import { describe, expect, it } from '@jest/globals';
import { agentObs } from './fixtures.ts';
import { mapPushTargets } from './push-targets.ts';

describe('mapPushTargets (the map at epoch 5)', () => {
  it.each([
    { name: 'behind and answering', agent: agentObs('c-0', { epoch: 4 }), push: ['c-0'], unanswered: [] },
    { name: 'already at the epoch', agent: agentObs('c-0', { epoch: 5 }), push: [], unanswered: [] },
    { name: 'ahead (a newer map elsewhere)', agent: agentObs('c-0', { epoch: 6 }), push: [], unanswered: [] },
    {
      name: 'did not answer (dead or frozen)',
      agent: agentObs('c-0', { status: null }),
      push: [],
      unanswered: ['c-0'],
    },
    {
      name: 'no pod IP yet',
      agent: agentObs('c-0', { ip: undefined, status: null }),
      push: [],
      unanswered: [],
    },
    {
      name: 'pod being deleted',
      agent: agentObs('c-0', { epoch: 4, deleting: true }),
      push: [],
      unanswered: [],
    },
  ])('$name', ({ agent, push, unanswered }) => {
    expect(mapPushTargets([agent], 5)).toEqual({ push, unanswered });
  });

  it('sorts a mixed cluster into both lists', () => {
    const agents = [
      agentObs('c-0', { epoch: 4 }),
      agentObs('c-1', { status: null }),
      agentObs('c-2', { epoch: 5 }),
      agentObs('c-3', { epoch: 1 }),
    ];
    expect(mapPushTargets(agents, 5)).toEqual({ push: ['c-0', 'c-3'], unanswered: ['c-1'] });
  });
});
