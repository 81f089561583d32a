// Reconciling an unchanged cluster makes no writes to the API server (issue #4, Speed). The
// evidence is the API server's own audit log, filtered to the operator's ServiceAccount: it records
// every write request, including a server-side apply that changes nothing (which resourceVersions
// would not show). The operator runs with a 2 s resync period so several resyncs fit the window.
import { setTimeout as sleep } from 'node:timers/promises';
import { PatchStrategy, PolicyV1Api, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { auditEvents, auditMark, serviceAccountIdentity, startAuditedEnv, writesBy } from './audit.ts';
import type { Identity } from './audit.ts';
import {
  OperatorProcess,
  createCluster,
  pivotCluster,
  waitFor,
  waitStable,
  type TestEnv,
} from './harness.ts';

jest.setTimeout(180_000);

const NAME = 'steady';
const RESYNC_MS = 2_000;
const RESYNCS = 3;
const RECONCILES = 'controller_runtime_reconcile_total';
const MAP_PUSHES = 'pivot_shard_map_pushes_total';

let env: TestEnv;
let auditLogPath: string;
let identity: Identity | null = null;
let operator: OperatorProcess | null = null;
/** Leader election off; the kubeconfig makes the operator the ServiceAccount. */
const startOperator = (name: string) =>
  OperatorProcess.start({ ...env, kubeconfigPath: identity!.kubeconfigPath }, name, {
    leaderElect: false,
    flags: [`--resync-period=${RESYNC_MS}ms`],
  });

beforeAll(async () => {
  ({ env, auditLogPath } = await startAuditedEnv('pivot-steady'));
  identity = await serviceAccountIdentity(env, 'pivot-operator');
  operator = await startOperator('op-steady');
}, 240_000);

afterAll(async () => {
  await operator?.stop();
  await identity?.remove().catch(() => {});
  await env?.teardown();
});

/** A counter of the operator's /metrics, summed over its label sets (0 before its first sample). */
async function counter(op: OperatorProcess, name: string): Promise<number> {
  let total = 0;
  for (const m of (await op.metrics()).matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)$`, 'gm')))
    total += Number(m[1]);
  return total;
}

describe('an unchanged PivotCluster', () => {
  it('is reconciled at every resync without a single write request to the API server', async () => {
    const start = await auditMark(auditLogPath);
    await createCluster(
      env,
      pivotCluster(NAME, { replicas: 3, shards: 4, replicationFactor: 3 }, env.namespace),
    );
    await waitStable(env, NAME, 120_000, 'Ready after create');

    // The filter sees the operator: creating the cluster took its applies and status writes.
    const creation = writesBy(await auditEvents(auditLogPath, start), identity!.username);
    expect(creation).toEqual(
      expect.arrayContaining([
        `patch statefulsets.apps ${env.namespace}/${NAME} (201)`,
        `patch pivotclusters.pivot.dev/status ${env.namespace}/${NAME} (200)`,
      ]),
    );

    // Steady: several resync periods, each of which reconciled the cluster.
    const mark = await auditMark(auditLogPath);
    const before = await counter(operator!, RECONCILES);
    const pushesBefore = await counter(operator!, MAP_PUSHES);
    await sleep(RESYNCS * RESYNC_MS + 500); // the observation window itself, not a wait for something
    const during = await waitFor(
      async () => {
        const n = (await counter(operator!, RECONCILES)) - before;
        return n >= RESYNCS ? n : null;
      },
      { timeoutMs: 10_000, message: `${RESYNCS} reconciles within ${RESYNCS} resync periods` },
    );
    const writes = writesBy(await auditEvents(auditLogPath, mark), identity!.username);
    expect(during).toBeGreaterThanOrEqual(RESYNCS);
    expect(writes).toEqual([]);
    // Nor does it push the map again to agents that already hold it.
    expect(await counter(operator!, MAP_PUSHES)).toBe(pushesBefore);
  });

  it('still gets back a field someone else changed on a child (the skip does not hide drift)', async () => {
    const policy = env.kc.makeApiClient(PolicyV1Api);
    const pdb = () => policy.readNamespacedPodDisruptionBudget({ name: NAME, namespace: env.namespace });
    expect((await pdb()).spec?.maxUnavailable).toBe(1);
    await policy.patchNamespacedPodDisruptionBudget(
      { name: NAME, namespace: env.namespace, body: { spec: { maxUnavailable: 2 } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    await waitFor(async () => (await pdb()).spec?.maxUnavailable === 1, {
      timeoutMs: 5 * RESYNC_MS,
      message: 'the operator to set the PodDisruptionBudget back to maxUnavailable 1',
    });
  });

  it('is left as it is by a restarted operator, which remembers nothing of its applies', async () => {
    await operator!.stop();
    const mark = await auditMark(auditLogPath);
    operator = await startOperator('op-steady-restarted');
    await sleep(RESYNCS * RESYNC_MS + 500); // the observation window itself, not a wait for something
    const reconciled = await waitFor(
      async () => {
        const n = await counter(operator!, RECONCILES);
        return n >= RESYNCS ? n : null;
      },
      { timeoutMs: 10_000, message: `${RESYNCS} reconciles after the restart` },
    );
    expect(reconciled).toBeGreaterThanOrEqual(RESYNCS);
    expect(writesBy(await auditEvents(auditLogPath, mark), identity!.username)).toEqual([]);
    await waitStable(env, NAME, 10_000, 'still Ready after the restart');
  });
});
