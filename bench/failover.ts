// Operator failover benchmark: on the local Kubernetes cluster (hack/local-cluster), with the
// operator and a PivotCluster of real agent pods, time from kill -9 of a shard pivot's process to
// the first acknowledged write on each shard it led. Numbers are reported, never asserted.
//
//   npm run bench:failover -- --kills=5
//
// Traffic goes only to pod IPs on the cluster's own bridge (10.244.<n>.0/24); every wait is
// bounded; the namespace, the operator and (unless PIVOT_TEST_KUBECONFIG names an existing
// cluster) the cluster itself are removed at the end, also on error or Ctrl-C.
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { PivotClient, closeConnections } from '../e2e/agent/harness.ts';
import {
  OperatorProcess,
  agentPods,
  authToken,
  createCluster,
  keyOnShard,
  pivotCluster,
  processId,
  startEnv,
  waitStable,
  type TestEnv,
} from '../operator/test/harness.ts';
import { quantile } from './load.ts';
import { runWithTeardown } from './teardown.ts';

const NAME = 'fo';
const SHARDS = 8;
const TARGET_P95_MS = 3_000;
const WRITE_DEADLINE_MS = 30_000; // per shard, after the kill
const WRITE_ATTEMPTS = 3_000; // per shard, after the kill
const REQUEST_TIMEOUT_MS = 1_000;
const POD_IP = /^10\.244\.\d{1,3}\.\d{1,3}$/;

function parseKills(argv: string[]): number {
  let kills = 5;
  for (const arg of argv) {
    const m = /^--kills=(\d+)$/.exec(arg);
    if (m) kills = Number(m[1]);
    else throw new Error(`unknown argument ${arg} (usage: --kills=N)`);
  }
  if (kills < 1 || kills > 50) throw new Error(`--kills must be 1..50, got ${kills}`);
  return kills;
}

/** Clients for the agents that are running and have a pod IP, by pod name. */
async function clientsByPod(env: TestEnv, token: string): Promise<Map<string, PivotClient>> {
  const clients = new Map<string, PivotClient>();
  for (const pod of await agentPods(env, NAME)) {
    const ip = pod.status?.podIP;
    if (!ip || pod.metadata?.deletionTimestamp) continue;
    if (!POD_IP.test(ip))
      throw new Error(`pod ${pod.metadata?.name} has IP ${ip}, not on the cluster bridge`);
    clients.set(pod.metadata!.name!, new PivotClient(`http://${ip}:8080`, token, REQUEST_TIMEOUT_MS));
  }
  return clients;
}

interface ShardResult {
  shard: number;
  ms: number;
  attempts: number;
  lastError: string;
}

/** Writes `key` through `client` until one is acknowledged (200); ms from `killedAt`. */
async function firstAckedWrite(
  client: PivotClient,
  key: string,
  shard: number,
  killedAt: number,
): Promise<ShardResult> {
  let lastError = '';
  for (let attempt = 1; attempt <= WRITE_ATTEMPTS; attempt++) {
    if (performance.now() - killedAt > WRITE_DEADLINE_MS) break;
    try {
      const reply = await client.put(key, { attempt, at: Date.now() });
      if (reply.status === 200)
        return { shard, ms: performance.now() - killedAt, attempts: attempt, lastError };
      lastError = `${reply.status} ${reply.text.slice(0, 100)}`;
    } catch (error) {
      lastError = (error as Error).message.slice(0, 160);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(
    `shard ${shard}: no acknowledged write within ${WRITE_DEADLINE_MS} ms / ${WRITE_ATTEMPTS} attempts; last: ${lastError}`,
  );
}

interface KillResult {
  kill: number;
  victim: string;
  shards: ShardResult[];
  readyAgainMs: number;
}

async function killOnce(env: TestEnv, token: string, kill: number): Promise<KillResult> {
  const pc = await waitStable(env, NAME, 120_000, `Ready before kill ${kill}`);
  const assignments = pc.status!.assignments!;
  // Rotate over the shards so that every agent gets killed in turn.
  const victim = assignments[(kill - 1) % assignments.length]!.pivot;
  const led = assignments.filter((a) => a.pivot === victim).map((a) => a.shard);
  const clients = await clientsByPod(env, token);
  const survivors = [...clients.entries()].filter(([n]) => n !== victim).map(([, c]) => c);
  if (survivors.length === 0) throw new Error('no surviving agent to write through');
  const keys = new Map(led.map((s) => [s, `${keyOnShard(s, SHARDS, `failover-k${kill}`)}/probe`]));
  // Every led shard takes writes before the kill, so the clock below measures only failover.
  for (const [shard, key] of keys) {
    const reply = await survivors[0]!.put(key, { before: true });
    if (reply.status !== 200)
      throw new Error(`shard ${shard} refused a write before the kill: ${reply.status}`);
  }
  const pod = (await agentPods(env, NAME)).find((p) => p.metadata!.name === victim);
  if (!pod) throw new Error(`no pod ${victim}`);
  const pid = processId(pod);

  const killedAt = performance.now();
  process.kill(pid, 'SIGKILL');
  const shards = await Promise.all(
    led.map((shard, i) =>
      firstAckedWrite(survivors[i % survivors.length]!, keys.get(shard)!, shard, killedAt),
    ),
  );
  await waitStable(env, NAME, 120_000, `Ready again after kill ${kill}`);
  return { kill, victim, shards, readyAgainMs: performance.now() - killedAt };
}

const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function main(): Promise<void> {
  const kills = parseKills(process.argv.slice(2));
  const startedAt = new Date();
  console.log(
    `failover bench: ${kills} kills; ${cpus().length} cores (${cpus()[0]?.model}), ` +
      `${(totalmem() / 2 ** 30).toFixed(0)} GiB (${(freemem() / 2 ** 30).toFixed(0)} free); Node ${process.version}; ` +
      `load ${loadavg()[0]!.toFixed(1)}; ${startedAt.toISOString()}`,
  );
  let env: TestEnv | null = null;
  let operator: OperatorProcess | null = null;
  const body = async () => {
    env = await startEnv('pivot-failover');
    operator = await OperatorProcess.start(env, 'op-bench');
    await createCluster(
      env,
      pivotCluster(
        NAME,
        {
          replicas: 3,
          shards: SHARDS,
          replicationFactor: 3,
          writeConcern: 'majority',
          failover: { notReadyGracePeriod: '1s' },
        },
        env.namespace,
      ),
    );
    await waitStable(env, NAME, 180_000, 'Ready after create');
    console.log(
      `cluster ${NAME} Ready: 3 agents, ${SHARDS} shards, rf 3, majority, grace 1 s, readiness probe 1 s`,
    );
    const token = await authToken(env, NAME);

    const results: KillResult[] = [];
    for (let kill = 1; kill <= kills; kill++) {
      const r = await killOnce(env, token, kill);
      results.push(r);
      const per = r.shards.map((s) => `shard ${s.shard} ${fmt(s.ms)} (${s.attempts} tries)`).join(', ');
      console.log(
        `kill ${kill}: ${r.victim} (led ${r.shards.length}) → ${per}; Ready again ${fmt(r.readyAgainMs)}`,
      );
    }

    const all = results.flatMap((r) => r.shards.map((s) => s.ms)).sort((a, b) => a - b);
    const p95 = quantile(all, 0.95);
    console.log(`\nkill -9 → first acknowledged write, ${all.length} shards over ${kills} kills:`);
    console.log(`  p50 ${fmt(quantile(all, 0.5))}   p95 ${fmt(p95)}   max ${fmt(all.at(-1)!)}`);
    console.log(`  target p95 ≤ ${fmt(TARGET_P95_MS)}: ${p95 <= TARGET_P95_MS ? 'met' : 'NOT met'}`);
    console.log(`  load at end ${loadavg()[0]!.toFixed(1)}`);
  };
  await runWithTeardown({
    name: 'failover bench',
    body,
    cleanup: async () => {
      await operator?.stop().catch(() => {});
      await closeConnections().catch(() => {});
      await env?.teardown().catch(() => {});
    },
    failureDetail: () => (operator ? `--- operator log ---\n${operator.tail(30)}` : undefined),
  });
}

await main();
