// The operator against a real control plane and real agents (processes run by the kubelet
// stand-in): first assignment, failover after kill -9, scaling, restart mid-operation, leader
// election, deletion. The tests share one cluster and run in order; each says what it needs.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { shardForKey } from '../../lib/hash.ts';
import { copiesOf } from '../../lib/shard-map.ts';
import type { PivotClient } from '../../e2e/agent/harness.ts';
import {
  OperatorProcess,
  agentClients,
  agentPods,
  createCluster,
  getCluster,
  notReadBack,
  patchSpec,
  pivotCluster,
  processId,
  startEnv,
  waitFor,
  waitStable,
  type TestEnv,
} from './harness.ts';
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { GROUP, PLURAL, VERSION } from '../src/cluster/types.ts';

jest.setTimeout(180_000);

let env: TestEnv;
let operator: OperatorProcess | null = null;
const operators: OperatorProcess[] = [];

beforeAll(async () => {
  env = await startEnv('pivot-op');
  operator = await OperatorProcess.start(env, 'op-a');
  operators.push(operator);
}, 240_000);

afterAll(async () => {
  await Promise.all(operators.map((o) => o.stop()));
  await env?.teardown();
});

/** Writes `count` keys through `client`; returns the acknowledged ones with their data. */
async function writeKeys(client: PivotClient, prefix: string, count: number): Promise<Map<string, unknown>> {
  const acked = new Map<string, unknown>();
  for (let i = 0; i < count; i++) {
    const key = `${prefix}/${i}`;
    const data = { prefix, i };
    const reply = await client.put(key, data);
    if (reply.status === 200) acked.set(key, data);
  }
  return acked;
}

const failure = (what: string) => () => `${what}\n--- operator log ---\n${operators.at(-1)?.tail(30)}`;

describe('PivotCluster lifecycle', () => {
  it('apply → Ready with every shard assigned, children owned and labelled', async () => {
    await createCluster(
      env,
      pivotCluster('demo', { replicas: 3, shards: 8, replicationFactor: 3 }, env.namespace),
    );
    const pc = await waitStable(env, 'demo', 120_000, 'Ready after create').catch((e: Error) => {
      throw new Error(failure(e.message)());
    });
    expect(pc.status!.assignments).toHaveLength(8);
    for (const a of pc.status!.assignments!) {
      expect(new Set(copiesOf(a)).size).toBe(3);
      for (const c of copiesOf(a)) expect(['demo-0', 'demo-1', 'demo-2']).toContain(c);
    }
    expect(pc.status!.epoch).toBeGreaterThanOrEqual(1);
    expect(pc.status!.selector).toBe('app.kubernetes.io/instance=demo,app.kubernetes.io/name=pivot-agent');
    const sts = await env.apps.readNamespacedStatefulSet({ name: 'demo', namespace: env.namespace });
    expect(sts.metadata!.ownerReferences![0]).toMatchObject({
      kind: 'PivotCluster',
      name: 'demo',
      controller: true,
    });
    expect(sts.metadata!.labels!['app.kubernetes.io/managed-by']).toBe('pivot-operator');
    expect(sts.spec!.podManagementPolicy).toBe('Parallel');
    expect(sts.spec!.updateStrategy!.type).toBe('OnDelete');
    expect(
      sts.metadata!.managedFields!.some((f) => f.manager === 'pivot-operator' && f.operation === 'Apply'),
    ).toBe(true);
    // Agents agree with the recorded map.
    for (const [name, client] of await agentClients(env, 'demo')) {
      const status = await client.raw<{ epoch: number }>('GET', '/_pivot/v1/status');
      expect({ name, epoch: status.body.epoch }).toEqual({ name, epoch: pc.status!.epoch });
    }
  });

  /** SIGKILLs each new process of `podName` until the returned function is called. */
  function keepPodDown(podName: string, firstPid: number): () => Promise<void> {
    let keep = true;
    const loop = (async () => {
      const killed = new Set([firstPid]);
      while (keep) {
        await sleep(100);
        const current = (await agentPods(env, 'demo')).find((p) => p.metadata!.name === podName);
        try {
          const pid = processId(current!);
          if (killed.has(pid)) continue;
          killed.add(pid);
          process.kill(pid, 'SIGKILL');
        } catch {
          // not started yet, or already gone
        }
      }
    })();
    return async () => {
      keep = false;
      await loop;
    };
  }

  it('kill -9 of a shard pivot → a follower is promoted, writes succeed, no acknowledged write is lost, the ex-pivot converges', async () => {
    const clients = await agentClients(env, 'demo');
    const acked = await writeKeys(clients.get('demo-0')!, 'before', 40);
    expect(acked.size).toBe(40);
    const before = await getCluster(env, 'demo');
    const shard = shardForKey('before/0', 8);
    const victim = before.status!.assignments![shard]!.pivot;
    const pod = (await agentPods(env, 'demo')).find((p) => p.metadata!.name === victim)!;
    const killedAt = Date.now();
    process.kill(processId(pod), 'SIGKILL');
    // The kubelet restarts the agent after 1 s; one back and ready within the grace period is
    // rightly not failed over. Kill every restart too until the operator has acted.
    const stopKeeping = keepPodDown(victim, processId(pod));

    const after = await waitFor(
      async () => {
        const pc = await getCluster(env, 'demo');
        return pc.status!.assignments![shard]!.pivot !== victim ? pc : null;
      },
      { timeoutMs: 30_000, intervalMs: 100, message: failure(`a new pivot for shard ${shard}`) },
    ).finally(stopKeeping);
    const promotedAfterMs = Date.now() - killedAt;
    expect(after.status!.epoch).toBeGreaterThan(before.status!.epoch!);
    expect(before.status!.assignments![shard]!.followers).toContain(after.status!.assignments![shard]!.pivot);

    // Writes to the failed-over shard succeed again through a surviving agent.
    const survivor = [...clients.entries()].find(([n]) => n !== victim)![1];
    const retried = await waitFor(
      async () => ((await survivor.put('before/0', { rewritten: true })).status === 200 ? true : null),
      {
        timeoutMs: 20_000,
        message: 'a write to the failed-over shard',
      },
    );
    expect(retried).toBe(true);
    acked.set('before/0', { rewritten: true });
    expect(await notReadBack(survivor, acked)).toEqual([]);

    // The ex-pivot comes back (restartPolicy), gets the map, and serves the same content.
    await waitStable(env, 'demo', 90_000, 'stable again after the ex-pivot returns');
    const exPivot = (await agentClients(env, 'demo')).get(victim)!;
    expect(await notReadBack(exPivot, acked)).toEqual([]);
    const metrics = await operator!.metrics();
    expect(metrics).toMatch(/pivot_failovers_total\{[^}]*cluster="demo"[^}]*\} [1-9]/);
    console.log(`failover: new pivot recorded ${promotedAfterMs} ms after kill -9 (grace 1 s)`);
  });

  it('the operator killed right after recording a failover is replaced by one that finishes it', async () => {
    const clients = await agentClients(env, 'demo');
    const acked = await writeKeys(clients.get('demo-1')!, 'restart', 20);
    const before = await getCluster(env, 'demo');
    const victim = before.status!.assignments!.find((a) => a.pivot !== 'demo-1')!.pivot;
    const pod = (await agentPods(env, 'demo')).find((p) => p.metadata!.name === victim)!;
    process.kill(processId(pod), 'SIGKILL');
    // As soon as the new map is in status, kill the operator: pushes to agents may not have happened.
    const recorded = await waitFor(
      async () => {
        const pc = await getCluster(env, 'demo');
        return pc.status!.epoch! > before.status!.epoch! ? pc : null;
      },
      { timeoutMs: 30_000, intervalMs: 20, message: failure('the failover recorded in status') },
    );
    await operator!.kill9();
    operator = await OperatorProcess.start(env, 'op-b');
    operators.push(operator);
    const pc = await waitStable(env, 'demo', 120_000, 'stable after the restarted operator took over');
    expect(pc.status!.epoch).toBeGreaterThanOrEqual(recorded.status!.epoch!);
    for (const [name, client] of await agentClients(env, 'demo')) {
      const status = await client.raw<{ epoch: number }>('GET', '/_pivot/v1/status');
      expect({ name, epoch: status.body.epoch }).toEqual({ name, epoch: pc.status!.epoch });
    }
    expect(await notReadBack((await agentClients(env, 'demo')).get('demo-1')!, acked)).toEqual([]);
  });

  it('scale 3 → 5 → 2 keeps all data and drains agents before the StatefulSet shrinks', async () => {
    await createCluster(
      env,
      pivotCluster('scale', { replicas: 3, shards: 8, replicationFactor: 2 }, env.namespace),
    );
    await waitStable(env, 'scale', 120_000, 'Ready after create');
    const acked = await writeKeys((await agentClients(env, 'scale')).get('scale-0')!, 'scale', 40);
    expect(acked.size).toBe(40);

    await patchSpec(env, 'scale', { replicas: 5 });
    const grown = await waitStable(env, 'scale', 120_000, 'stable at 5 agents');
    const holders = new Set(grown.status!.assignments!.flatMap(copiesOf));
    expect([...holders].sort()).toEqual(['scale-0', 'scale-1', 'scale-2', 'scale-3', 'scale-4']);
    expect(await notReadBack((await agentClients(env, 'scale')).get('scale-4')!, acked)).toEqual([]);

    await patchSpec(env, 'scale', { replicas: 2 });
    const shrunk = await waitFor(
      async () => {
        const pc = await waitStable(env, 'scale', 120_000, 'stable at 2 agents');
        const sts = await env.apps.readNamespacedStatefulSet({ name: 'scale', namespace: env.namespace });
        return sts.spec!.replicas === 2 ? pc : null;
      },
      { timeoutMs: 120_000, message: failure('StatefulSet shrunk to 2') },
    );
    for (const a of shrunk.status!.assignments!) expect(copiesOf(a).sort()).toEqual(['scale-0', 'scale-1']);
    expect(await notReadBack((await agentClients(env, 'scale')).get('scale-1')!, acked)).toEqual([]);
  });

  it('two operator replicas: one leader, the standby takes over when the leader dies', async () => {
    const standby = await OperatorProcess.start(env, 'op-c');
    operators.push(standby);
    const lease = await env.coordination.readNamespacedLease({
      name: 'pivot-operator',
      namespace: env.namespace,
    });
    expect(lease.spec!.holderIdentity).toBe(operator!.identity);
    expect(await standby.metrics()).toMatch(/leader_election_master_status\{name="pivot-operator"\} 0/);
    expect(await operator!.metrics()).toMatch(/leader_election_master_status\{name="pivot-operator"\} 1/);

    await operator!.kill9();
    const leaderKilledAt = Date.now();
    await waitFor(
      async () =>
        (await env.coordination.readNamespacedLease({ name: 'pivot-operator', namespace: env.namespace }))
          .spec!.holderIdentity === standby.identity,
      { timeoutMs: 40_000, intervalMs: 250, message: 'the standby holds the lease' },
    );
    console.log(
      `leader election: standby took the lease ${Date.now() - leaderKilledAt} ms after kill -9 of the leader`,
    );
    operator = standby;
    // The new leader reconciles: a scale-up is carried out.
    await patchSpec(env, 'scale', { replicas: 3 });
    const pc = await waitStable(env, 'scale', 120_000, 'stable at 3 agents under the new leader');
    expect(new Set(pc.status!.assignments!.flatMap(copiesOf)).has('scale-2')).toBe(true);
  });

  it('a pod template change rolls one pod at a time after moving its pivot roles; data stays', async () => {
    const acked = await writeKeys((await agentClients(env, 'scale')).get('scale-0')!, 'rollout', 20);
    const oldUids = new Map(
      (await agentPods(env, 'scale')).map((p) => [p.metadata!.name!, p.metadata!.uid!]),
    );
    const oldRevision = (
      await env.apps.readNamespacedStatefulSet({ name: 'scale', namespace: env.namespace })
    ).status!.updateRevision;
    await patchSpec(env, 'scale', { image: 'pivot/node-agent:0.1.0-rollout' });
    const rolloutStart = Date.now();
    await waitFor(
      async () =>
        (await env.apps.readNamespacedStatefulSet({ name: 'scale', namespace: env.namespace })).status!
          .updateRevision !== oldRevision,
      { timeoutMs: 30_000, message: failure('the StatefulSet has a new revision') },
    );
    let concurrentlyDown = 0;
    await waitFor(
      async () => {
        const [pods, sts, pc] = await Promise.all([
          agentPods(env, 'scale'),
          env.apps.readNamespacedStatefulSet({ name: 'scale', namespace: env.namespace }),
          getCluster(env, 'scale'),
        ]);
        const down =
          pods.filter(
            (p) =>
              p.metadata!.deletionTimestamp ||
              !p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
          ).length + Math.max(0, 3 - pods.length);
        concurrentlyDown = Math.max(concurrentlyDown, down);
        const updated = pods.every(
          (p) =>
            p.metadata!.labels!['controller-revision-hash'] === sts.status!.updateRevision &&
            !p.metadata!.deletionTimestamp,
        );
        const stable = pc.status!.conditions!.some((c) => c.type === 'Progressing' && c.status === 'False');
        return pods.length === 3 && updated && stable;
      },
      { timeoutMs: 150_000, intervalMs: 200, message: failure('every agent on the new revision and stable') },
    );
    console.log(`rolling update: 3 agents replaced one at a time in ${Date.now() - rolloutStart} ms`);
    const newPods = await agentPods(env, 'scale');
    for (const p of newPods) expect(p.metadata!.uid).not.toBe(oldUids.get(p.metadata!.name!));
    expect(concurrentlyDown).toBeLessThanOrEqual(1);
    await waitStable(env, 'scale', 60_000, 'stable after the rollout');
    expect(await notReadBack((await agentClients(env, 'scale')).get('scale-0')!, acked)).toEqual([]);
  });

  it('the pause annotation stops reconciling one cluster until removed', async () => {
    const annotate = (value: string | null) =>
      env.custom.patchNamespacedCustomObject(
        {
          group: GROUP,
          version: VERSION,
          namespace: env.namespace,
          plural: PLURAL,
          name: 'scale',
          body: { metadata: { annotations: { 'pivot.dev/paused': value } } },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    await annotate('true');
    await waitFor(
      async () =>
        (await getCluster(env, 'scale')).status!.conditions!.some(
          (c) => c.type === 'Ready' && c.reason === 'Paused',
        ),
      { timeoutMs: 30_000, message: 'Ready reason Paused' },
    );
    await patchSpec(env, 'scale', { replicas: 4 });
    // For three seconds nothing may act on the new spec.
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      const sts = await env.apps.readNamespacedStatefulSet({ name: 'scale', namespace: env.namespace });
      expect(sts.spec!.replicas).toBe(3);
      await new Promise((r) => setTimeout(r, 250));
    }
    await annotate(null);
    const pc = await waitStable(env, 'scale', 120_000, 'stable at 4 agents after unpausing');
    expect(new Set(pc.status!.assignments!.flatMap(copiesOf)).has('scale-3')).toBe(true);
  });

  it('deleting a PivotCluster removes its children; PVCs follow storage.retentionPolicy', async () => {
    await createCluster(
      env,
      pivotCluster(
        'gone',
        { replicas: 1, shards: 2, replicationFactor: 1, storage: { retentionPolicy: 'Delete' } },
        env.namespace,
      ),
    );
    await waitStable(env, 'gone', 120_000, 'Ready after create');
    const remove = (name: string) =>
      env.custom.deleteNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: env.namespace,
        plural: PLURAL,
        name,
      });
    await Promise.all([remove('gone'), remove('demo')]);
    const owned = async (instance: string) => {
      const labelSelector = `app.kubernetes.io/instance=${instance}`;
      const [sts, svc, pvc] = await Promise.all([
        env.apps.listNamespacedStatefulSet({ namespace: env.namespace, labelSelector }),
        env.core.listNamespacedService({ namespace: env.namespace, labelSelector }),
        env.core.listNamespacedPersistentVolumeClaim({ namespace: env.namespace, labelSelector }),
      ]);
      return {
        sts: sts.items.length,
        svc: svc.items.length,
        pvc: pvc.items.map((c) => c.metadata!.name!).sort(),
      };
    };
    let last = {};
    await waitFor(
      async () => {
        last = { gone: await owned('gone'), demo: await owned('demo') };
        return (
          JSON.stringify(last) ===
          JSON.stringify({
            gone: { sts: 0, svc: 0, pvc: [] },
            demo: { sts: 0, svc: 0, pvc: ['data-demo-0', 'data-demo-1', 'data-demo-2'] },
          })
        );
      },
      {
        timeoutMs: 90_000,
        intervalMs: 500,
        message: () =>
          `children garbage-collected, PVCs deleted for "gone" (Delete) and kept for "demo" (Retain); last: ${JSON.stringify(last)}`,
      },
    );
  });
});
