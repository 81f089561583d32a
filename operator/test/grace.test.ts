// A pivot back within failover.notReadyGracePeriod keeps its role (issue #4): kill -9 of a pivot
// agent (and of its restarts for the first 3 s, so it is down long enough for the operator to
// notice on a busy machine); the kubelet restarts it and it is Ready again well inside a 20 s
// grace period. The operator sees it not ready (status.readyReplicas drops) but must not fail it over: the shard map
// in status stays exactly as it was through the whole grace window, no Failover Event or metric,
// and writes to the pivot's shards succeed afterwards with every write readable everywhere.
// Failover once the grace has passed is covered by operator.test.ts.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import type { V1Pod } from '@kubernetes/client-node';
import { shardForKey } from '../../lib/hash.ts';
import type { AgentStatus } from '../src/cluster/types.ts';
import {
  OperatorProcess,
  agentClients,
  agentPods,
  createCluster,
  getCluster,
  keysOnShard,
  notReadBack,
  pivotCluster,
  processId,
  startEnv,
  waitFor,
  waitStable,
  type TestEnv,
} from './harness.ts';

jest.setTimeout(180_000);

const NAME = 'grace';
const SHARDS = 6;
const GRACE_MS = 20_000;
const KEEP_DOWN_MS = 3_000;

let env: TestEnv;
let operator: OperatorProcess | null = null;

beforeAll(async () => {
  env = await startEnv('pivot-grace');
  operator = await OperatorProcess.start(env, 'op-grace');
}, 240_000);

afterAll(async () => {
  await operator?.stop();
  await env?.teardown();
});

const failure = (what: string) => () => `${what}\n--- operator log ---\n${operator?.tail(30)}`;
const isReady = (pod: V1Pod | undefined) =>
  pod?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;

describe('notReadyGracePeriod', () => {
  it('a pivot killed with -9 and Ready again within the grace period keeps its shards; writes to them succeed', async () => {
    await createCluster(
      env,
      pivotCluster(
        NAME,
        { replicas: 3, shards: SHARDS, replicationFactor: 3, failover: { notReadyGracePeriod: '20s' } },
        env.namespace,
      ),
    );
    const before = await waitStable(env, NAME, 120_000, 'Ready after create').catch((e: Error) => {
      throw new Error(failure(e.message)());
    });
    const assignments = before.status!.assignments!;
    const victim = assignments[0]!.pivot;
    const victimShards = assignments.filter((a) => a.pivot === victim).map((a) => a.shard);
    const clients = await agentClients(env, NAME);
    const other = [...clients.entries()].find(([n]) => n !== victim)!;

    // Acknowledged writes on the victim's shards before the kill (through another agent).
    const written = new Map<string, unknown>();
    for (const key of victimShards.flatMap((s) => keysOnShard(s, SHARDS, 'before', 3))) {
      const data = { key, phase: 'before' };
      const reply = await other[1].put(key, data);
      expect({ key, status: reply.status }).toEqual({ key, status: 200 });
      written.set(key, data);
    }

    const pod = (await agentPods(env, NAME)).find((p) => p.metadata!.name === victim)!;
    const pid = processId(pod);
    const restarts = pod.status!.containerStatuses![0]!.restartCount;
    const killedAt = Date.now();
    process.kill(pid, 'SIGKILL');
    const killed = new Set([pid]);

    // Watch status and the pod through the whole grace window (and a little after it): the map
    // must never change. Also record that the pod really went down and came back in time, and
    // that the operator saw it not ready, or this run proves nothing.
    const changes: string[] = [];
    let sawPodNotReady = false;
    let backAfterMs: number | null = null;
    let minReadyReplicas = Infinity;
    const windowEnd = killedAt + GRACE_MS + 3_000;
    while (Date.now() < windowEnd) {
      const [pc, pods] = await Promise.all([getCluster(env, NAME), agentPods(env, NAME)]);
      if (pc.status!.epoch !== before.status!.epoch)
        changes.push(`epoch ${before.status!.epoch} → ${pc.status!.epoch} at ${Date.now() - killedAt} ms`);
      if (JSON.stringify(pc.status!.assignments) !== JSON.stringify(assignments))
        changes.push(
          `assignments changed at ${Date.now() - killedAt} ms: ${JSON.stringify(pc.status!.assignments)}`,
        );
      minReadyReplicas = Math.min(minReadyReplicas, pc.status!.readyReplicas ?? 0);
      const current = pods.find((p) => p.metadata!.name === victim);
      const currentPid = current?.status?.containerStatuses?.[0]?.state?.running ? processId(current) : null;
      if (currentPid !== null && !killed.has(currentPid) && Date.now() < killedAt + KEEP_DOWN_MS) {
        process.kill(currentPid, 'SIGKILL');
        killed.add(currentPid);
        continue;
      }
      if (!isReady(current)) sawPodNotReady = true;
      else if (sawPodNotReady && backAfterMs === null && currentPid !== null && !killed.has(currentPid))
        backAfterMs = Date.now() - killedAt;
      if (changes.length > 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(changes).toEqual([]);
    expect(sawPodNotReady).toBe(true);
    if (backAfterMs === null || backAfterMs >= GRACE_MS)
      throw new Error(`${victim} was not Ready again within the grace period (back after ${backAfterMs} ms)`);
    expect(minReadyReplicas).toBe(2); // the operator saw the pivot not ready
    const returned = (await agentPods(env, NAME)).find((p) => p.metadata!.name === victim)!;
    expect(returned.status!.containerStatuses![0]!.restartCount).toBe(restarts + killed.size);

    const events = await env.core.listNamespacedEvent({ namespace: env.namespace });
    const failovers = events.items.filter((e) => e.reason?.startsWith('Failover'));
    expect(failovers.map((e) => `${e.reason}: ${e.message}`)).toEqual([]);
    expect(await operator!.metrics()).not.toMatch(
      new RegExp(`pivot_failovers_total\\{[^}]*cluster="${NAME}"[^}]*\\} [1-9]`),
    );

    // The returned agent leads its shards at the same epoch and takes writes again, directly and
    // through another agent.
    const after = await agentClients(env, NAME);
    const victimClient = after.get(victim)!;
    const status = await waitFor(
      async () => {
        const s = (await victimClient.raw<AgentStatus>('GET', '/_pivot/v1/status')).body;
        return s.epoch === before.status!.epoch && s.ready ? s : null;
      },
      { timeoutMs: 30_000, message: failure(`${victim} ready at epoch ${before.status!.epoch}`) },
    );
    expect(
      status.shards
        .filter((s) => s.role === 'pivot')
        .map((s) => s.shard)
        .sort((a, b) => a - b),
    ).toEqual(victimShards);
    const afterKeys = victimShards.flatMap((s) => keysOnShard(s, SHARDS, 'after', 2));
    for (const [i, key] of afterKeys.entries()) {
      const data = { key, phase: 'after' };
      const via = i % 2 === 0 ? victimClient : after.get(other[0])!;
      const ok = await waitFor(async () => ((await via.put(key, data)).status === 200 ? true : null), {
        timeoutMs: 20_000,
        message: failure(`a write of ${key} (shard ${shardForKey(key, SHARDS)})`),
      });
      expect(ok).toBe(true);
      written.set(key, data);
    }
    for (const [name, client] of after)
      expect({ agent: name, wrong: await notReadBack(client, written) }).toEqual({ agent: name, wrong: [] });
    const final = await getCluster(env, NAME);
    expect({ epoch: final.status!.epoch, assignments: final.status!.assignments }).toEqual({
      epoch: before.status!.epoch,
      assignments,
    });
    console.log(
      `grace: ${victim} (pivot of shards ${victimShards.join(',')}) killed ${killed.size}× in ${KEEP_DOWN_MS} ms, ` +
        `Ready again ${backAfterMs} ms after the first kill -9; kept its role`,
    );
  });
});
