// Operator at scale: one operator and 50 PivotClusters on the local Kubernetes cluster
// (hack/local-cluster, started here with the API server's audit log on). Measures the time until
// all are Ready, the operator's work queue and reconcile times (its /metrics, controller-runtime
// names), the API writes it sends while nothing changes, and how fast it reacts to a spec change
// and to kill -9 of a pivot agent with 1 cluster and with 50. Numbers are reported, never asserted.
//
//   npm run bench:operator -- [--clusters=50] [--repeats=3]
//
// One "probe" cluster (3 agents, 4 shards, rf 3) is measured alone first; then the others (1 agent,
// 2 shards, rf 1 each: the smallest valid size, so 50 clusters fit a 2-core machine) are created at
// once and the probe is measured again. The operator runs as its own ServiceAccount, so the audit
// log names exactly its requests. Every wait is bounded; the operator, the namespace and the
// cluster are removed at the end, also on error or Ctrl-C.
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { closeConnections } from '../e2e/agent/harness.ts';
import {
  auditEvents,
  auditMark,
  serviceAccountIdentity,
  startAuditedEnv,
  writesBy,
  type Identity,
} from '../operator/test/audit.ts';
import {
  OperatorProcess,
  agentPods,
  createCluster,
  getCluster,
  patchSpec,
  pivotCluster,
  processId,
  waitFor,
  waitStable,
  type TestEnv,
} from '../operator/test/harness.ts';
import { GROUP, PLURAL, VERSION, type PivotCluster } from '../operator/src/cluster/types.ts';
import { RESYNC_MS } from '../operator/src/cluster/reconcile.ts'; // the operator's default resync period
import { quantile } from './load.ts';
import { runWithTeardown } from './teardown.ts';

const PROBE = 'probe';
const STEADY_MS = 2 * RESYNC_MS + 5_000;
const QUEUE = 'pivotcluster';
const RECONCILES = 'controller_runtime_reconcile_total';
const REACTION_TIMEOUT_MS = 60_000;
const ALL_READY_TIMEOUT_MS = 15 * 60_000;

interface Args {
  clusters: number;
  repeats: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { clusters: 50, repeats: 3 };
  for (const arg of argv) {
    const m = /^--(clusters|repeats)=(\d+)$/.exec(arg);
    if (!m) throw new Error(`unknown argument ${arg} (usage: --clusters=N --repeats=N)`);
    args[m[1] as keyof Args] = Number(m[2]);
  }
  if (args.clusters < 2 || args.clusters > 100) throw new Error(`--clusters must be 2..100`);
  if (args.repeats < 1 || args.repeats > 10) throw new Error(`--repeats must be 1..10`);
  return args;
}

// ---- the operator's /metrics ----

type Snapshot = Map<string, number>;

function parseMetrics(text: string): Snapshot {
  const series = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    series.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return series;
}

/** The q-quantile of a histogram's observations between two snapshots (Prometheus' interpolation). */
function histogramQuantile(before: Snapshot, after: Snapshot, name: string, q: number): number {
  const buckets: { le: number; count: number }[] = [];
  for (const [series, value] of after) {
    const m = new RegExp(`^${name}_bucket\\{.*le="([^"]+)"`).exec(series);
    if (m)
      buckets.push({
        le: m[1] === '+Inf' ? Infinity : Number(m[1]),
        count: value - (before.get(series) ?? 0),
      });
  }
  buckets.sort((a, b) => a.le - b.le);
  const total = buckets.at(-1)?.count ?? 0;
  if (total === 0) return NaN;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return lower; // beyond the last finite bucket: its bound is all we know
      return lower + ((b.le - lower) * (rank - below)) / Math.max(1, b.count - below);
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

const delta = (before: Snapshot, after: Snapshot, series: string) =>
  (after.get(series) ?? 0) - (before.get(series) ?? 0);

const sumOf = (s: Snapshot, name: string) =>
  [...s].filter(([k]) => k === name || k.startsWith(`${name}{`)).reduce((n, [, v]) => n + v, 0);

interface Phase {
  name: string;
  startedAt: number;
  endedAt: number;
  before: Snapshot;
  after: Snapshot;
  depths: number[];
}

/** Samples the queue depth every second and snapshots /metrics at each phase boundary. */
class Recorder {
  readonly phases: Phase[] = [];
  private current: Phase | null = null;
  private readonly timer: NodeJS.Timeout;
  /** The process sampled; replaced when the operator restarts. */
  operator: OperatorProcess;

  constructor(operator: OperatorProcess) {
    this.operator = operator;
    this.timer = setInterval(() => {
      void this.snapshot()
        .then((s) => this.current?.depths.push(s.get(`workqueue_depth{name="${QUEUE}"}`) ?? 0))
        .catch(() => {});
    }, 1_000);
  }

  private async snapshot(): Promise<Snapshot> {
    return parseMetrics(await this.operator.metrics());
  }

  async begin(name: string): Promise<void> {
    this.current = {
      name,
      startedAt: performance.now(),
      endedAt: 0,
      before: await this.snapshot(),
      after: new Map(),
      depths: [],
    };
  }

  async end(): Promise<Phase> {
    const phase = this.current!;
    phase.after = await this.snapshot();
    phase.endedAt = performance.now();
    this.phases.push(phase);
    this.current = null;
    return phase;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

// ---- PivotClusters ----

const isReady = (pc: PivotCluster) =>
  pc.status?.observedGeneration === pc.metadata?.generation &&
  pc.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true &&
  pc.status?.conditions?.some((c) => c.type === 'Progressing' && c.status === 'False') === true;

async function listClusters(env: TestEnv): Promise<PivotCluster[]> {
  const list = (await env.custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: env.namespace,
    plural: PLURAL,
  })) as { items: PivotCluster[] };
  return list.items;
}

interface Readiness {
  /** ms from the start of the wait. */
  ms: number;
  /** Wall clock (Date.now()) when first seen Ready. */
  at: number;
}

/** When each named cluster was first seen Ready (listed every 250 ms). */
async function timeToReady(env: TestEnv, names: string[], since: number): Promise<Map<string, Readiness>> {
  const ready = new Map<string, Readiness>();
  await waitFor(
    async () => {
      const items = await listClusters(env);
      const ms = performance.now() - since;
      const at = Date.now();
      for (const pc of items)
        if (names.includes(pc.metadata!.name!) && !ready.has(pc.metadata!.name!) && isReady(pc))
          ready.set(pc.metadata!.name!, { ms, at });
      return ready.size === names.length;
    },
    {
      timeoutMs: ALL_READY_TIMEOUT_MS,
      intervalMs: 250,
      message: () => `all ${names.length} Ready; not yet: ${names.filter((n) => !ready.has(n)).join(', ')}`,
    },
  );
  return ready;
}

/** Patch the probe's grace period; ms until status.observedGeneration reaches the new generation. */
async function specChangeReaction(env: TestEnv, grace: string): Promise<number> {
  const generation = (await getCluster(env, PROBE)).metadata!.generation!;
  const t0 = performance.now();
  await patchSpec(env, PROBE, { failover: { notReadyGracePeriod: grace } });
  await waitFor(async () => ((await getCluster(env, PROBE)).status?.observedGeneration ?? 0) > generation, {
    timeoutMs: REACTION_TIMEOUT_MS,
    intervalMs: 20,
    message: `observedGeneration > ${generation}`,
  });
  return performance.now() - t0;
}

/**
 * kill -9 (or SIGSTOP: frozen, its sockets open but silent) the probe's first pivot; ms until status
 * records another pivot for every shard it led. A frozen agent is let go (SIGCONT) afterwards.
 */
async function pivotLossReaction(env: TestEnv, signal: 'SIGKILL' | 'SIGSTOP'): Promise<number> {
  const pc = await waitStable(env, PROBE, 180_000, `probe Ready before ${signal}`);
  const victim = pc.status!.assignments![0]!.pivot;
  const led = pc.status!.assignments!.filter((a) => a.pivot === victim).map((a) => a.shard);
  const pod = (await agentPods(env, PROBE)).find((p) => p.metadata!.name === victim);
  if (!pod) throw new Error(`no pod ${victim}`);
  const pid = processId(pod);
  const t0 = performance.now();
  process.kill(pid, signal);
  try {
    await waitFor(
      async () => {
        const now = (await getCluster(env, PROBE)).status?.assignments ?? [];
        return led.every((s) => now.find((a) => a.shard === s)?.pivot !== victim);
      },
      {
        timeoutMs: REACTION_TIMEOUT_MS,
        intervalMs: 20,
        message: `a new pivot for shards ${led.join(', ')} after ${signal}`,
      },
    );
    return performance.now() - t0;
  } finally {
    if (signal === 'SIGSTOP') {
      try {
        process.kill(pid, 'SIGCONT'); // its liveness probe may have had it killed already
      } catch {
        /* gone */
      }
    }
    await waitStable(env, PROBE, 180_000, `probe Ready after ${signal}`);
  }
}

let graceChanges = 0;

interface Reactions {
  spec: number[];
  kill: number[];
  freeze: number[];
}

async function reactions(env: TestEnv, repeats: number): Promise<Reactions> {
  const r: Reactions = { spec: [], kill: [], freeze: [] };
  for (let i = 0; i < repeats; i++) {
    await waitStable(env, PROBE, 180_000, 'probe Ready before a spec change');
    // A new value each time (a repeated one would not bump the generation), all about 1 s so the
    // pivot losses below see the same grace period in every phase.
    r.spec.push(await specChangeReaction(env, `${1000 + ++graceChanges}ms`));
  }
  for (let i = 0; i < repeats; i++) r.kill.push(await pivotLossReaction(env, 'SIGKILL'));
  for (let i = 0; i < repeats; i++) r.freeze.push(await pivotLossReaction(env, 'SIGSTOP'));
  return r;
}

/**
 * Per cluster, ms from its last agent pod turning Ready (the kubelet's lastTransitionTime, whole
 * seconds, so up to 1 s too early) to the PivotCluster first seen Ready: the operator's share.
 */
async function operatorLag(env: TestEnv, ready: Map<string, Readiness>): Promise<number[]> {
  const pods = await env.core.listNamespacedPod({ namespace: env.namespace });
  const lastPodReady = new Map<string, number>();
  for (const pod of pods.items) {
    const cluster = pod.metadata?.labels?.['app.kubernetes.io/instance'];
    const ready = pod.status?.conditions?.find((c) => c.type === 'Ready' && c.status === 'True');
    if (!cluster || !ready?.lastTransitionTime) continue;
    const at = new Date(ready.lastTransitionTime).getTime();
    lastPodReady.set(cluster, Math.max(lastPodReady.get(cluster) ?? 0, at));
  }
  return [...ready].filter(([n]) => lastPodReady.has(n)).map(([n, r]) => r.at - lastPodReady.get(n)!);
}

// ---- report ----

const s = (ms: number) => (Number.isNaN(ms) ? '–' : `${(ms / 1000).toFixed(2)} s`);
const msOf = (seconds: number) => seconds * 1000;
const dist = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `p50 ${s(quantile(sorted, 0.5))} · p95 ${s(quantile(sorted, 0.95))} · max ${s(sorted.at(-1) ?? NaN)}`;
};

/** Writes counted by verb and resource: `patch statefulsets.apps ×50, …`. */
function summarize(writes: string[]): string {
  const counts = new Map<string, number>();
  for (const w of writes) {
    const kind = w.split(' ').slice(0, 2).join(' ');
    counts.set(kind, (counts.get(kind) ?? 0) + 1);
  }
  return [...counts].map(([k, n]) => `${k} ×${n}`).join(', ') || 'none';
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [
    line(rows[0]!),
    `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
    ...rows.slice(1).map(line),
  ].join('\n');
}

function phaseRow(p: Phase): string[] {
  const wall = (p.endedAt - p.startedAt) / 1000;
  const reconciles = sumOf(p.after, RECONCILES) - sumOf(p.before, RECONCILES);
  const errors = delta(
    p.before,
    p.after,
    'controller_runtime_reconcile_errors_total{controller="pivotcluster"}',
  );
  const cpu = delta(p.before, p.after, 'process_cpu_seconds_total');
  const q = (name: string, x: number) => s(msOf(histogramQuantile(p.before, p.after, name, x)));
  const depths = [...p.depths].sort((a, b) => a - b);
  return [
    p.name,
    `${wall.toFixed(0)} s`,
    `${reconciles} (${errors} err)`,
    `${q('controller_runtime_reconcile_time_seconds', 0.5)} / ${q('controller_runtime_reconcile_time_seconds', 0.95)} / ${q('controller_runtime_reconcile_time_seconds', 0.99)}`,
    `${q('workqueue_queue_duration_seconds', 0.5)} / ${q('workqueue_queue_duration_seconds', 0.95)}`,
    `${quantile(depths, 0.5) || 0} / ${depths.at(-1) ?? 0}`,
    `${delta(p.before, p.after, 'pivot_shard_map_pushes_total{result="success"}')} / ${delta(p.before, p.after, 'pivot_shard_map_pushes_total{result="error"}')}`,
    `${((100 * cpu) / wall).toFixed(0)} %`,
    `${((p.after.get('process_resident_memory_bytes') ?? 0) / 2 ** 20).toFixed(0)} MiB`,
  ];
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const others = args.clusters - 1;
  const machine = () =>
    `${cpus().length} cores (${cpus()[0]?.model}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB ` +
    `(${(freemem() / 2 ** 30).toFixed(0)} free), load ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`;
  console.log(
    `operator bench: ${args.clusters} PivotClusters, ${args.repeats} repeats; ${machine()}; ` +
      `Node ${process.version}; ${new Date().toISOString()}`,
  );

  let env: TestEnv | null = null;
  let identity: Identity | null = null;
  let operator: OperatorProcess | null = null;
  let recorder: Recorder | null = null;
  const body = async () => {
    const audited = await startAuditedEnv('pivot-opbench');
    env = audited.env;
    identity = await serviceAccountIdentity(env, 'pivot-operator');
    operator = await OperatorProcess.start({ ...env, kubeconfigPath: identity.kubeconfigPath }, 'op-bench', {
      leaderElect: false,
    });
    recorder = new Recorder(operator);
    console.log(`cluster up, operator ${operator.pid} running as ${identity.username}`);

    // 1. The probe alone.
    await recorder.begin('1 cluster: create → Ready');
    const probeCreated = performance.now();
    await createCluster(
      env,
      pivotCluster(PROBE, { replicas: 3, shards: 4, replicationFactor: 3 }, env.namespace),
    );
    const probeReadiness = await timeToReady(env, [PROBE], probeCreated);
    const probeReady = probeReadiness.get(PROBE)!.ms;
    const probeLag = await operatorLag(env, probeReadiness);
    await recorder.end();
    console.log(`probe Ready after ${s(probeReady)}`);
    await recorder.begin('1 cluster: reactions');
    const alone = await reactions(env, args.repeats);
    await recorder.end();
    console.log(
      `alone: spec change ${alone.spec.map(s).join(', ')}; kill ${alone.kill.map(s).join(', ')}; ` +
        `freeze ${alone.freeze.map(s).join(', ')}`,
    );

    // 2. The others, created at once.
    const names = Array.from({ length: others }, (_, i) => `c${String(i + 1).padStart(2, '0')}`);
    await recorder.begin(`${others} more: create → all Ready`);
    const burst = performance.now();
    await Promise.all(
      names.map((n) =>
        createCluster(
          env!,
          pivotCluster(n, { replicas: 1, shards: 2, replicationFactor: 1 }, env!.namespace),
        ),
      ),
    );
    const created = performance.now() - burst;
    const ready = await timeToReady(env, names, burst);
    await recorder.end();
    const readyTimes = [...ready.values()].map((r) => r.ms);
    const lags = await operatorLag(env, ready);
    console.log(`${others} created in ${s(created)}; all Ready after ${s(Math.max(...readyTimes))}`);

    // 3. Steady: nothing changes for two resync periods.
    await waitStable(env, PROBE, 180_000, 'probe Ready before the steady window');
    await recorder.begin(`${args.clusters} clusters: steady ${STEADY_MS / 1000} s`);
    const mark = await auditMark(audited.auditLogPath);
    await sleep(STEADY_MS); // the observation window itself
    const steady = await recorder.end();
    const writes = writesBy(await auditEvents(audited.auditLogPath, mark), identity.username);
    const pushes =
      sumOf(steady.after, 'pivot_shard_map_pushes_total') -
      sumOf(steady.before, 'pivot_shard_map_pushes_total');
    console.log(`steady: ${writes.length} API writes by the operator, ${pushes} map pushes`);
    for (const w of writes.slice(0, 20)) console.log(`  ${w}`);

    // 4. The probe again, with every other cluster there.
    await recorder.begin(`${args.clusters} clusters: reactions`);
    const loaded = await reactions(env, args.repeats);
    await recorder.end();
    console.log(
      `with ${args.clusters}: spec change ${loaded.spec.map(s).join(', ')}; kill ${loaded.kill.map(s).join(', ')}; ` +
        `freeze ${loaded.freeze.map(s).join(', ')}`,
    );

    // 5. Every cluster's spec changes at once.
    await recorder.begin(`${args.clusters} clusters: all specs changed at once`);
    const all = [PROBE, ...names];
    const generations = new Map(
      (await listClusters(env)).map((pc) => [pc.metadata!.name!, pc.metadata!.generation!]),
    );
    const changed = performance.now();
    await Promise.all(all.map((n) => patchSpec(env!, n, { failover: { notReadyGracePeriod: '3s' } })));
    const observed = new Map<string, number>();
    await waitFor(
      async () => {
        const now = performance.now();
        for (const pc of await listClusters(env!)) {
          const n = pc.metadata!.name!;
          if (!observed.has(n) && (pc.status?.observedGeneration ?? 0) > generations.get(n)!)
            observed.set(n, now - changed);
        }
        return observed.size === all.length;
      },
      { timeoutMs: 5 * 60_000, intervalMs: 100, message: () => `${all.length} observedGeneration updates` },
    );
    await recorder.end();
    const allSpec = [...observed.values()];

    // 6. A restarted operator: every cluster is reconciled once from fresh caches.
    await operator.stop();
    const restartMark = await auditMark(audited.auditLogPath);
    const restarted = performance.now();
    operator = await OperatorProcess.start(
      { ...env, kubeconfigPath: identity.kubeconfigPath },
      'op-bench-restarted',
      { leaderElect: false },
    );
    recorder.operator = operator;
    await recorder.begin(`${args.clusters} clusters: operator restarted, first resync`);
    const restartedOp = operator;
    await waitFor(async () => sumOf(parseMetrics(await restartedOp.metrics()), RECONCILES) >= args.clusters, {
      timeoutMs: 5 * 60_000,
      message: `${args.clusters} reconciles after the restart`,
    });
    const allReconciled = performance.now() - restarted;
    await sleep(Math.max(0, RESYNC_MS + 5_000 - allReconciled)); // one resync period after the start
    await recorder.end();
    const restartWrites = writesBy(await auditEvents(audited.auditLogPath, restartMark), identity.username);

    console.log(`\n## Operator at scale — ${new Date().toISOString()}; ${machine()}\n`);
    console.log(
      table([
        ['measure', '1 cluster', `${args.clusters} clusters`],
        ['create → Ready', s(probeReady), `${others} at once: ${dist(readyTimes)}`],
        ['  of which: last agent pod Ready → cluster Ready', dist(probeLag), dist(lags)],
        [`spec change → observedGeneration (probe, ×${args.repeats})`, dist(alone.spec), dist(loaded.spec)],
        [
          `kill -9 pivot → new pivot in status (probe, ×${args.repeats})`,
          dist(alone.kill),
          dist(loaded.kill),
        ],
        [
          `SIGSTOP pivot → new pivot in status (probe, ×${args.repeats})`,
          dist(alone.freeze),
          dist(loaded.freeze),
        ],
        ['all specs changed at once → observedGeneration', '', dist(allSpec)],
        [
          `API writes by the operator in ${STEADY_MS / 1000} s steady`,
          '',
          `${writes.length} (${pushes} map pushes)`,
        ],
        [
          `operator restart → every cluster reconciled once`,
          '',
          `${s(allReconciled)}; API writes in the first ${(RESYNC_MS + 5_000) / 1000} s: ${restartWrites.length} (${summarize(restartWrites)})`,
        ],
      ]),
    );
    console.log('');
    console.log(
      table([
        [
          'phase',
          'wall',
          'reconciles',
          'reconcile time p50 / p95 / p99',
          'queue wait p50 / p95',
          'queue depth median / max',
          'map pushes ok / failed',
          'operator CPU',
          'operator RSS',
        ],
        ...recorder.phases.map(phaseRow),
      ]),
    );
    console.log(
      `\nload at end ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
  };
  await runWithTeardown({
    name: 'operator bench',
    body,
    cleanup: async () => {
      recorder?.stop();
      await operator?.stop().catch(() => {});
      await identity?.remove().catch(() => {});
      await closeConnections().catch(() => {});
      await env?.teardown().catch((e: Error) => console.error(`teardown: ${e.message}`));
    },
    failureDetail: () => (operator ? `--- operator log ---\n${operator.tail(30)}` : undefined),
  });
}

await main();
