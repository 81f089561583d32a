// The operator killed (-9) in the middle of a rebalance is replaced by one that finishes it
// (issue #4): scale 3 → 5 starts moving copies to the new agents; as soon as status records the
// Rebalance operation and a map that already involves a new agent, the operator is killed. A
// fresh operator, which remembers nothing, must bring the cluster to a stable, Ready state with
// every agent holding copies and serving the final epoch, and every acknowledged write intact.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { copiesOf } from '../../lib/shard-map.ts';
import {
  OperatorProcess,
  agentClients,
  createCluster,
  getCluster,
  notReadBack,
  patchSpec,
  pivotCluster,
  startEnv,
  waitFor,
  waitStable,
  type TestEnv,
} from './harness.ts';

jest.setTimeout(240_000);

const NAME = 'rebal';
let env: TestEnv;
const operators: OperatorProcess[] = [];

beforeAll(async () => {
  env = await startEnv('pivot-rebal');
  operators.push(await OperatorProcess.start(env, 'op-a'));
}, 240_000);

afterAll(async () => {
  await Promise.all(operators.map((o) => o.stop()));
  await env?.teardown();
});

const failure = (what: string) => () => `${what}\n--- operator log ---\n${operators.at(-1)?.tail(30)}`;

describe('operator restarted mid-rebalance', () => {
  it('a new operator finishes a scale-up rebalance the killed one had started; no write is lost', async () => {
    await createCluster(
      env,
      pivotCluster(NAME, { replicas: 3, shards: 8, replicationFactor: 2 }, env.namespace),
    );
    await waitStable(env, NAME, 120_000, 'Ready after create');
    const writer = (await agentClients(env, NAME)).get(`${NAME}-0`)!;
    const acked = new Map<string, unknown>();
    for (let i = 0; i < 30; i++) {
      const key = `moved/${i}`;
      if ((await writer.put(key, { i })).status === 200) acked.set(key, { i });
    }
    expect(acked.size).toBe(30);

    await patchSpec(env, NAME, { replicas: 5 });
    const newAgents = [`${NAME}-3`, `${NAME}-4`];
    const midway = await waitFor(
      async () => {
        const pc = await getCluster(env, NAME);
        const involved = (pc.status?.assignments ?? []).some((a) =>
          copiesOf(a).some((n) => newAgents.includes(n)),
        );
        return pc.status?.operation?.type === 'Rebalance' && involved ? pc : null;
      },
      {
        timeoutMs: 120_000,
        intervalMs: 20,
        message: failure('a rebalance recorded that involves a new agent'),
      },
    );
    await operators.at(-1)!.kill9();

    operators.push(await OperatorProcess.start(env, 'op-b'));
    const done = await waitStable(env, NAME, 180_000, 'stable at 5 agents after the operator restart');
    expect(done.status!.operation ?? null).toBeNull();
    expect(done.status!.epoch!).toBeGreaterThanOrEqual(midway.status!.epoch!);
    const holders = new Set(done.status!.assignments!.flatMap(copiesOf));
    expect([...holders].sort()).toEqual([0, 1, 2, 3, 4].map((i) => `${NAME}-${i}`));
    for (const a of done.status!.assignments!) expect(new Set(copiesOf(a)).size).toBe(2);
    // Every agent serves the map the new operator settled on.
    for (const [name, client] of await agentClients(env, NAME)) {
      const status = await client.raw<{ epoch: number }>('GET', '/_pivot/v1/status');
      expect({ name, epoch: status.body.epoch }).toEqual({ name, epoch: done.status!.epoch });
    }
    // The data, read through one of the new agents (forwarded where it is not the pivot).
    expect(await notReadBack((await agentClients(env, NAME)).get(`${NAME}-4`)!, acked)).toEqual([]);
  });
});
