// `npm run bench [-- --quick] [-- --soak=600]`: Pivot (3 agents on loopback, rf 1 and rf 3 with
// writeConcern majority) side by side with etcd (1 and 3 members) measured in the same run on the
// same machine: PUT and GET throughput and latency, p99 at half the max PUT load, the catch-up of
// a member that missed N writes, and memory (RSS). Numbers are reported, never asserted.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { Cluster, REPO_ROOT, waitFor } from '../e2e/agent/harness.ts';
import { EtcdCluster, etcdPut, etcdRange, etcdTemplate, findEtcd } from './etcd.ts';
import { runLoad, type LoadResult, type Request } from './load.ts';
import { cpuSecondsOf, rssMiB } from './proc.ts';
import { runWrk, wrkAvailable, type RequestTemplate } from './wrk.ts';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    soak: { type: 'string' },
    duration: { type: 'string' },
    concurrency: { type: 'string', default: '32' },
    'catchup-keys': { type: 'string' },
    only: { type: 'string' },
    loadgen: { type: 'string' },
  },
});

const quick = flags.quick!;
const phaseMs = 1000 * Number(flags.duration ?? (quick ? 1 : 10));
const soakSeconds = Number(flags.soak ?? (quick ? 1 : 20));
const concurrency = Number(flags.concurrency);
const catchupKeys = Number(flags['catchup-keys'] ?? (quick ? 2_000 : 100_000));
// wrk (C) drives the closed-loop phases when installed: the Node load generator costs the
// servers' own CPU on a 2-core machine. `--loadgen=node` forces load.ts everywhere.
const loadgen = flags.loadgen ?? (wrkAvailable() ? 'wrk' : 'node');
if (loadgen !== 'wrk' && loadgen !== 'node') throw new Error('--loadgen must be wrk or node');
const MAX_OPS = 2_000_000;

// A 1 KB JSON document as the value (the same bytes go to etcd).
const VALUE = JSON.stringify({ payload: 'x'.repeat(1024 - '{"payload":""}'.length) });

interface System {
  label: string;
  targets: string[];
  put(origin: string, key: string): Request;
  get(origin: string, key: string): Request;
  /** A read served from the receiving copy (`?consistency=local`, etcd `serializable`). */
  getLocal(origin: string, key: string): Request;
  /** The same three requests for wrk, with `{key}` where the key goes. */
  template(op: 'put' | 'get' | 'getLocal'): RequestTemplate;
  /** V8 heap in use of one process, where the system reports it. */
  heapUsedMiB?(name: string): Promise<number>;
  /** The system's processes now (a killed member is absent until restarted). */
  processes(): { name: string; pid: number }[];
  /** Kill -9 one copy, write `n` keys, restart it, and time until it has applied them all. */
  catchUp?(n: number): Promise<{ writeOpsPerSec: number; seconds: number }>;
  stop(): Promise<void>;
}

interface RssSummary {
  start: number;
  peak: number;
  end: number;
  /** Peak RSS per process name. */
  peaks: Map<string, { total: number; anon: number }>;
}

type PhaseResult = LoadResult & { cpuMsPerOp: number };

interface Row {
  put: PhaseResult;
  get: PhaseResult;
  getLocal: PhaseResult;
  halfLoad: LoadResult;
  catchUp?: { writeOpsPerSec: number; seconds: number };
  soak?: LoadResult;
  rssMiB: RssSummary;
  soakRssMiB: RssSummary;
  /** 1-minute load average of the machine when the measurement started and ended. */
  load: [number, number];
}

/** CPU seconds (user + system) used so far by the system's processes. */
const cpuSeconds = (system: System) => cpuSecondsOf(system.processes().map((p) => p.pid));

/**
 * Runs one closed-loop phase and adds the server CPU it cost per operation. Request i uses key
 * `${keyPrefix}${i}`, or one of the first `readOf` keys when reading back what was written.
 */
async function phase(
  system: System,
  op: 'put' | 'get' | 'getLocal',
  keyPrefix: string,
  readOf?: number,
): Promise<LoadResult & { cpuMsPerOp: number; contiguousKeys?: number }> {
  const before = cpuSeconds(system);
  const t = system.targets;
  const keyOf = (i: number) => `${keyPrefix}${readOf ? (i * 7919) % readOf : i}`;
  const result =
    loadgen === 'wrk'
      ? await runWrk({
          targets: t,
          connections: concurrency,
          durationMs: phaseMs,
          template: system.template(op),
          keyPrefix,
          ...(readOf ? { modulo: readOf } : {}),
        })
      : await runLoad({
          concurrency,
          durationMs: phaseMs,
          maxOps: MAX_OPS,
          request: (i) => system[op](t[i % t.length]!, keyOf(i)),
        });
  return { ...result, cpuMsPerOp: ((cpuSeconds(system) - before) * 1000) / Math.max(1, result.ops) };
}

/** Samples the largest per-process RSS of the system once a second, and each process's peak. */
function rssSampler(system: System) {
  const samples: number[] = [];
  const peaks = new Map<string, { total: number; anon: number }>();
  const sample = () => {
    let largest = 0;
    for (const { name, pid } of system.processes()) {
      const mib = rssMiB(pid);
      largest = Math.max(largest, mib.total);
      const peak = peaks.get(name) ?? { total: 0, anon: 0 };
      peaks.set(name, { total: Math.max(peak.total, mib.total), anon: Math.max(peak.anon, mib.anon) });
    }
    samples.push(largest);
  };
  sample();
  const timer = setInterval(sample, 1000);
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      return { start: samples[0]!, peak: Math.max(...samples), end: samples[samples.length - 1]!, peaks };
    },
  };
}

async function pivotSystem(replicationFactor: number): Promise<System> {
  const cluster = await Cluster.start({
    agents: 3,
    shards: 16,
    replicationFactor,
    writeConcern: 'majority',
    retryPolicy: { maxAttempts: 5, initialBackoff: '100ms', maxBackoff: '5s', multiplier: 2, timeout: '2s' },
    logLevel: 'warn',
    namePrefix: 'bench',
    readyTimeoutMs: 60_000,
  });
  const auth = { authorization: `Bearer ${cluster.token}` };
  return {
    label: `Pivot rf ${replicationFactor}`,
    targets: cluster.names().map((n) => cluster.url(n)),
    heapUsedMiB: async (name) => {
      const text = await (await fetch(`${cluster.url(name)}/metrics`)).text();
      const used = /^nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1];
      if (used === undefined) throw new Error('no nodejs_heap_size_used_bytes');
      return Number(used) / 2 ** 20;
    },
    put: (origin, key) => ({
      origin,
      method: 'PUT',
      path: `/v1/data/${key}`,
      headers: { ...auth, 'content-type': 'application/json' },
      body: VALUE,
    }),
    get: (origin, key) => ({ origin, method: 'GET', path: `/v1/data/${key}`, headers: auth }),
    getLocal: (origin, key) => ({
      origin,
      method: 'GET',
      path: `/v1/data/${key}?consistency=local`,
      headers: auth,
    }),
    template: (op) =>
      op === 'put'
        ? {
            method: 'PUT',
            path: '/v1/data/{key}',
            headers: { ...auth, 'content-type': 'application/json' },
            body: VALUE,
          }
        : {
            method: 'GET',
            path: op === 'get' ? '/v1/data/{key}' : '/v1/data/{key}?consistency=local',
            headers: auth,
          },
    processes: () =>
      cluster.names().flatMap((name) => (cluster.pid(name) ? [{ name, pid: cluster.pid(name)! }] : [])),
    catchUp:
      replicationFactor === 3
        ? async (n) => {
            // The victim follows the shards written to (its pivoted shards have no pivot while
            // it is down and no failover runs here), so every write is acknowledged by majority.
            const victim = 'bench-2';
            const live = cluster.names().filter((x) => x !== victim);
            const keys: string[] = [];
            for (let j = 0; keys.length < n; j++) {
              const key = `catchup-${j}`;
              if (cluster.pivotOf(cluster.shardOf(key)) !== victim) keys.push(key);
            }
            await cluster.kill9(victim);
            const write = await runLoad({
              concurrency: 64,
              durationMs: 600_000,
              maxOps: n,
              request: (i) => ({
                origin: cluster.url(live[i % live.length]!),
                method: 'PUT',
                path: `/v1/data/${keys[i]}`,
                headers: { ...auth, 'content-type': 'application/json' },
                body: VALUE,
              }),
            });
            if (write.errors > 0) throw new Error(`catch-up writes failed: ${write.firstError}`);
            const started = performance.now();
            await cluster.restart(victim, { waitReady: false });
            await waitFor(
              async () => {
                const mine = await cluster.status(victim);
                for (const a of cluster.map.assignments) {
                  const pivot = (await cluster.status(a.pivot)).shards.find((s) => s.shard === a.shard)!;
                  const copy = mine.shards.find((s) => s.shard === a.shard);
                  if (!copy || copy.state !== 'serving') return false;
                  if (copy.position.term !== pivot.position.term || copy.position.seq !== pivot.position.seq)
                    return false;
                }
                return true;
              },
              { timeoutMs: 600_000, intervalMs: 100, message: `${victim} to reach every pivot's position` },
            );
            return { writeOpsPerSec: write.opsPerSec, seconds: (performance.now() - started) / 1000 };
          }
        : undefined,
    stop: () => cluster.teardown(),
  };
}

async function etcdSystem(members: number): Promise<System> {
  const binary = findEtcd()!;
  const etcd = await EtcdCluster.start(binary, members);
  return {
    label: `etcd ${binary.version} ×${members}`,
    targets: etcd.clientUrls,
    put: (origin, key) => etcdPut(origin, key, VALUE),
    get: (origin, key) => etcdRange(origin, key),
    getLocal: (origin, key) => etcdRange(origin, key, true),
    template: (op) => etcdTemplate(op, VALUE),
    processes: () => etcd.pids.map((pid, i) => ({ name: `etcd-${i}`, pid })),
    catchUp:
      members === 3
        ? async (n) => {
            let victim = 2;
            while (await etcd.isLeader(victim)) victim--;
            await etcd.kill9(victim);
            const live = etcd.clientUrls.filter((_, i) => i !== victim);
            const leader = victim === 0 ? 1 : 0;
            const write = await runLoad({
              concurrency: 64,
              durationMs: 600_000,
              maxOps: n,
              request: (i) => etcdPut(live[i % 2]!, `catchup-${i}`, VALUE),
            });
            if (write.errors > 0) throw new Error(`etcd catch-up writes failed: ${write.firstError}`);
            const target = await etcd.revision(leader);
            const started = performance.now();
            etcd.restart(victim);
            await waitFor(async () => (await etcd.revision(victim)) >= target, {
              timeoutMs: 600_000,
              intervalMs: 100,
              message: `etcd member ${victim} to reach revision ${target}`,
            });
            return { writeOpsPerSec: write.opsPerSec, seconds: (performance.now() - started) / 1000 };
          }
        : undefined,
    stop: () => etcd.stop(),
  };
}

async function measure(system: System): Promise<Row> {
  const loadAtStart = loadavg()[0]!;
  const rss = rssSampler(system);
  const t = system.targets;
  const put = await phase(system, 'put', 'k-');
  const written = Math.max(1, put.contiguousKeys ?? put.ops);
  const get = await phase(system, 'get', 'k-', written);
  const getLocal = await phase(system, 'getLocal', 'k-', written);
  const halfLoad = await runLoad({
    concurrency: concurrency * 4,
    durationMs: phaseMs,
    maxOps: MAX_OPS,
    ratePerSec: Math.max(1, put.opsPerSec / 2),
    request: (i) => system.put(t[i % t.length]!, `half-${i}`),
  });
  const catchUp = system.catchUp ? await system.catchUp(catchupKeys) : undefined;
  const soakRss = rssSampler(system);
  const soakStarted = performance.now();
  // A line a minute on stderr shows the trend of a long soak, not only its end points.
  // Pivot agents also report their V8 heap (/metrics), which tells a leak from a growing page cache.
  const soakTrend = setInterval(() => {
    void Promise.all(
      system.processes().map(async ({ name, pid }) => {
        const m = rssMiB(pid);
        const heap = await system.heapUsedMiB?.(name).catch(() => undefined);
        return `${name} ${m.total.toFixed(0)} (anon ${m.anon.toFixed(0)}${heap === undefined ? '' : `, heap ${heap.toFixed(0)}`})`;
      }),
    ).then((now) =>
      console.error(
        `${system.label} soak ${((performance.now() - soakStarted) / 1000).toFixed(0)} s: RSS MiB ${now.join(', ')}`,
      ),
    );
  }, 60_000);
  const soak = await runLoad({
    concurrency,
    durationMs: soakSeconds * 1000,
    maxOps: soakSeconds * 100_000,
    request: (i) =>
      i % 2
        ? system.get(t[i % t.length]!, `k-${i % written}`)
        : system.put(t[i % t.length]!, `soak-${i % 10_000}`),
  });
  clearInterval(soakTrend);
  return {
    put,
    get,
    getLocal,
    halfLoad,
    catchUp,
    soak,
    soakRssMiB: soakRss.stop(),
    rssMiB: rss.stop(),
    load: [loadAtStart, loadavg()[0]!],
  };
}

const fmt = {
  ops: (r: LoadResult) =>
    `${Math.round(r.opsPerSec).toLocaleString('en-US')}${r.errors ? ` (${r.errors} err)` : ''}`,
  ms: (v: number) => (Number.isFinite(v) ? v.toFixed(v < 10 ? 2 : 1) : '–'),
};

const mib = (m: { start: number; peak: number; end: number }) =>
  `${m.start.toFixed(0)} / ${m.peak.toFixed(0)} / ${m.end.toFixed(0)}`;

function table(results: { label: string; row: Row }[]): string {
  const lines: [string, (r: Row) => string][] = [
    ['PUT ops/s (1 KB, closed loop)', (r) => fmt.ops(r.put)],
    ['PUT p50 / p99 ms', (r) => `${fmt.ms(r.put.p50Ms)} / ${fmt.ms(r.put.p99Ms)}`],
    ['GET ops/s', (r) => fmt.ops(r.get)],
    ['GET p50 / p99 ms', (r) => `${fmt.ms(r.get.p50Ms)} / ${fmt.ms(r.get.p99Ms)}`],
    ['GET local/serializable ops/s', (r) => fmt.ops(r.getLocal)],
    ['GET local p50 / p99 ms', (r) => `${fmt.ms(r.getLocal.p50Ms)} / ${fmt.ms(r.getLocal.p99Ms)}`],
    [
      'server CPU ms per op (all members): PUT / GET / GET local',
      (r) => [r.put, r.get, r.getLocal].map((p) => p.cpuMsPerOp.toFixed(2)).join(' / '),
    ],
    ['PUT at half max load: rate ops/s', (r) => fmt.ops(r.halfLoad)],
    [
      'PUT at half max load: p50 / p99 ms',
      (r) => `${fmt.ms(r.halfLoad.p50Ms)} / ${fmt.ms(r.halfLoad.p99Ms)}`,
    ],
    [
      `catch-up of ${catchupKeys.toLocaleString('en-US')} missed keys, s`,
      (r) => (r.catchUp ? r.catchUp.seconds.toFixed(1) : '–'),
    ],
    [
      '  (their write rate with one copy down, ops/s)',
      (r) => (r.catchUp ? fmt.ops({ opsPerSec: r.catchUp.writeOpsPerSec, errors: 0 } as LoadResult) : '–'),
    ],
    [`mixed soak ${soakSeconds} s ops/s`, (r) => (r.soak ? fmt.ops(r.soak) : '–')],
    ['RSS MiB, largest process, whole run: start / peak / end', (r) => mib(r.rssMiB)],
    ['RSS MiB, largest process, during the soak', (r) => mib(r.soakRssMiB)],
    ['machine load avg (1 min) at start / end', (r) => `${r.load[0].toFixed(1)} / ${r.load[1].toFixed(1)}`],
  ];
  const header = `| metric | ${results.map((r) => r.label).join(' | ')} |`;
  const rule = `|---|${results.map(() => '---').join('|')}|`;
  return [
    header,
    rule,
    ...lines.map(([name, f]) => `| ${name} | ${results.map((r) => f(r.row)).join(' | ')} |`),
  ].join('\n');
}

async function main() {
  const etcd = findEtcd();
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model;
  const commit = spawnSync('git', ['describe', '--always', '--dirty'], { cwd: REPO_ROOT, encoding: 'utf8' });
  console.log(`# Pivot benchmark ${new Date().toISOString()}, commit ${commit.stdout.trim() || 'unknown'}`);
  console.log(
    `machine: ${cpus().length} CPUs (${cpu}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM, node ${process.version}`,
  );
  console.log(
    `settings: ${phaseMs / 1000} s per phase, ${concurrency} connections, 1 KB JSON values, loopback only; load: ${loadgen === 'wrk' ? 'wrk (one thread per member) for PUT/GET/GET local, ' : ''}the Node load generator in this process for the rest`,
  );
  console.log(
    etcd ? `etcd: ${etcd.version} from ${etcd.source} (${etcd.path})` : 'etcd: not found, Pivot only',
  );

  const factories: [string, () => Promise<System>][] = [
    ['pivot-rf1', () => pivotSystem(1)],
    ['pivot-rf3', () => pivotSystem(3)],
  ];
  if (etcd) factories.push(['etcd-1', () => etcdSystem(1)], ['etcd-3', () => etcdSystem(3)]);
  const only = flags.only?.split(',');
  const results: { label: string; row: Row }[] = [];
  for (const [id, start] of factories) {
    if (only && !only.includes(id)) continue;
    const system = await start();
    try {
      console.error(`measuring ${system.label} …`);
      results.push({ label: system.label, row: await measure(system) });
    } finally {
      await system.stop();
    }
  }
  console.log('');
  console.log(table(results));
  for (const r of results) {
    const errors = [r.row.put, r.row.get, r.row.getLocal, r.row.halfLoad, r.row.soak].find(
      (x) => x?.firstError,
    )?.firstError;
    if (errors) console.log(`first error for ${r.label}: ${errors}`);
    const peaks = [...r.row.rssMiB.peaks]
      .map(([name, mib]) => `${name} ${mib.total.toFixed(0)} (anonymous ${mib.anon.toFixed(0)})`)
      .join(', ');
    console.log(`peak RSS MiB per process, ${r.label}: ${peaks}`);
  }
}

await main();
