// A frozen pivot (SIGSTOP: the process keeps its sockets but answers nothing, as in a long pause or
// a one-way partition) is failed over like a dead one, and the operator never spends a map push on
// it: a push to an agent that did not answer its status call would hold the reconcile for the whole
// retry policy each time, delaying this cluster's failover and every other cluster's work.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import {
  OperatorProcess,
  agentClients,
  agentPods,
  createCluster,
  getCluster,
  keyOnShard,
  pivotCluster,
  processId,
  startEnv,
  waitFor,
  waitStable,
  type TestEnv,
} from './harness.ts';

jest.setTimeout(180_000);

const NAME = 'frozen';
const SHARDS = 4;

let env: TestEnv;
let operator: OperatorProcess | null = null;

beforeAll(async () => {
  env = await startEnv('pivot-frozen');
  operator = await OperatorProcess.start(env, 'op-frozen', { leaderElect: false });
}, 240_000);

afterAll(async () => {
  await operator?.stop();
  await env?.teardown();
});

const failedPushes = async (op: OperatorProcess) =>
  Number(/^pivot_shard_map_pushes_total\{result="error"\} (\d+)$/m.exec(await op.metrics())?.[1] ?? 0);

describe('a frozen pivot', () => {
  it('is failed over, writes go on, and no map push is spent on it', async () => {
    await createCluster(
      env,
      pivotCluster(NAME, { replicas: 3, shards: SHARDS, replicationFactor: 3 }, env.namespace),
    );
    const before = await waitStable(env, NAME, 120_000, 'Ready after create');
    const failedBefore = await failedPushes(operator!);
    const victim = before.status!.assignments![0]!.pivot;
    const led = before.status!.assignments!.filter((a) => a.pivot === victim).map((a) => a.shard);
    const pid = processId((await agentPods(env, NAME)).find((p) => p.metadata!.name === victim)!);
    const survivor = [...(await agentClients(env, NAME))].find(([n]) => n !== victim)![1];

    process.kill(pid, 'SIGSTOP');
    try {
      const after = await waitFor(
        async () => {
          const pc = await getCluster(env, NAME);
          return led.every((s) => pc.status!.assignments![s]!.pivot !== victim) ? pc : null;
        },
        { timeoutMs: 30_000, intervalMs: 100, message: `a new pivot for shards ${led.join(', ')}` },
      );
      expect(after.status!.epoch).toBeGreaterThan(before.status!.epoch!);
      for (const shard of led) {
        const key = `${keyOnShard(shard, SHARDS, 'frozen')}/k`;
        await waitFor(async () => (await survivor.put(key, { shard })).status === 200, {
          timeoutMs: 20_000,
          message: `a write to shard ${shard} after its pivot froze`,
        });
      }
    } finally {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // its liveness probe had it killed and restarted meanwhile
      }
    }
    await waitStable(env, NAME, 120_000, 'Ready again once the frozen agent runs again');
    expect(await failedPushes(operator!)).toBe(failedBefore);
  });
});
