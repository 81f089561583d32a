// `npm run bench:ladder`: where a write's CPU goes, one rung at a time, on this machine. Each rung
// adds one part of the path a replicated PUT takes, so the differences between rows are the cost
// of that part: a bare fastify server (paced and saturated: the cost of waking an idle process),
// the agent's store alone (one write at a time and 32 at once), then one PUT at a time through
// 1 agent at rf 1, 3 agents at rf 1 (two of three forwarded) and 3 agents at rf 3. Reported,
// never asserted; needs wrk (Debian package `wrk`).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import { Pool } from 'undici';
import { Cluster, freePort, NODE_BIN, waitFor } from '../e2e/agent/harness.ts';
import type { LogEntry, StoredRecord } from '../node-agent/src/storage/records.ts';
import { Store } from '../node-agent/src/storage/store.ts';
import { cpuSecondsOf } from './proc.ts';
import { runWithTeardown } from './teardown.ts';
import { runWrk, wrkAvailable } from './wrk.ts';

const { values: flags } = parseArgs({
  options: { serve: { type: 'string' }, seconds: { type: 'string', default: '4' } },
});
const seconds = Number(flags.seconds);
const VALUE = JSON.stringify({ payload: 'x'.repeat(1024 - '{"payload":""}'.length) });

interface Rung {
  rung: string;
  rate: number;
  cpuMsPerOp: number;
  p50Ms?: number;
}
const rungs: Rung[] = [];
/** What is running now, for the teardown after an interrupt. */
const running = new Set<() => Promise<void>>();

/** `--serve=<port>`: the bare server, run as its own process so its CPU can be read from /proc. */
async function serveBare(port: number): Promise<void> {
  const app = Fastify({ logger: false });
  app.get('/v1/data/*', async () => ({ key: 'k', data: VALUE }));
  await app.listen({ port, host: '127.0.0.1' });
}

async function bareServer(): Promise<void> {
  const port = await freePort();
  const child = spawn(NODE_BIN, [process.argv[1]!, `--serve=${port}`], { stdio: 'ignore' });
  const stop = async () => void child.kill('SIGKILL');
  running.add(stop);
  try {
    const url = `http://127.0.0.1:${port}`;
    await waitFor(
      () =>
        fetch(`${url}/v1/data/k`)
          .then((r) => r.ok)
          .catch(() => false),
      {
        timeoutMs: 10_000,
        message: () => 'the bare fastify server to answer',
      },
    );
    // Saturated first: it also warms the JIT for the paced rows.
    const before = cpuSecondsOf([child.pid!]);
    const r = await runWrk({
      targets: [url],
      connections: 8,
      durationMs: seconds * 1000,
      template: { method: 'GET', path: '/v1/data/{key}', headers: {} },
      keyPrefix: 'k',
    });
    const cpu = cpuSecondsOf([child.pid!]) - before;
    rungs.push({
      rung: 'bare fastify GET, saturated (wrk, 8 connections)',
      rate: r.opsPerSec,
      cpuMsPerOp: (cpu * 1000) / r.ops,
      p50Ms: r.p50Ms,
    });
    const pool = new Pool(url, { connections: 4 });
    for (const rate of [200, 1000, 3000]) {
      // Open loop at a fixed rate: the server sleeps between requests, as agents do under light load.
      const n = rate * seconds;
      const before = cpuSecondsOf([child.pid!]);
      const started = performance.now();
      const pending: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        const due = started + (i * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        pending.push(pool.request({ method: 'GET', path: '/v1/data/k' }).then((r) => r.body.dump()));
      }
      await Promise.all(pending);
      const cpu = cpuSecondsOf([child.pid!]) - before;
      rungs.push({ rung: `bare fastify GET, paced at ${rate}/s`, rate, cpuMsPerOp: (cpu * 1000) / n });
    }
    await pool.close();
  } finally {
    running.delete(stop);
    await stop();
  }
}

async function storeAlone(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pivot-ladder-'));
  const { store } = await Store.open(dir, 'ladder');
  try {
    let next = 0;
    const writeOne = (shard: number) =>
      store.write(shard, (seq) => {
        const key = `k${next++}`;
        const record: StoredRecord = {
          key,
          parent: '',
          index: key,
          created: 1n,
          updated: 1n,
          version: `1.${seq}`,
          data: VALUE,
        };
        const entry: LogEntry = { term: 1, seq, op: 'put', key, parent: '', index: key, record };
        return { entry, result: record };
      });
    for (const concurrency of [1, 32]) {
      const n = concurrency === 1 ? 2000 : 20_000;
      let done = 0;
      const latencies: number[] = [];
      const cpu = process.cpuUsage();
      const started = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async (_, w) => {
          while (done < n) {
            done++;
            const t = performance.now();
            await writeOne(w % 16);
            latencies.push(performance.now() - t);
          }
        }),
      );
      const elapsed = (performance.now() - started) / 1000;
      const used = process.cpuUsage(cpu);
      latencies.sort((a, b) => a - b);
      rungs.push({
        rung: `store write (LMDB, fsync'd), ${concurrency} at a time`,
        rate: n / elapsed,
        cpuMsPerOp: (used.user + used.system) / 1000 / n,
        p50Ms: latencies[Math.floor(latencies.length / 2)]!,
      });
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One PUT at a time, all sent to the first agent: the cost of one write on an otherwise idle cluster. */
async function serialPuts(agents: number, replicationFactor: number, label: string): Promise<void> {
  const cluster = await Cluster.start({
    agents,
    shards: 16,
    replicationFactor,
    writeConcern: 'majority',
    logLevel: 'warn',
    namePrefix: 'ladder',
    readyTimeoutMs: 60_000,
  });
  const stop = () => cluster.teardown();
  running.add(stop);
  try {
    const target = cluster.url(cluster.names()[0]!);
    const template = {
      method: 'PUT',
      path: '/v1/data/{key}',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' },
      body: VALUE,
    };
    // Warm the JIT first, so the row shows steady state.
    await runWrk({ targets: [target], connections: 8, durationMs: 2000, template, keyPrefix: 'warm-' });
    const pids = cluster.names().map((n) => cluster.pid(n)!);
    const before = cpuSecondsOf(pids);
    const r = await runWrk({
      targets: [target],
      connections: 1,
      durationMs: seconds * 1000,
      template,
      keyPrefix: 'k-',
    });
    const cpu = cpuSecondsOf(pids) - before;
    if (r.errors) throw new Error(`${label}: ${r.firstError}`);
    rungs.push({ rung: label, rate: r.opsPerSec, cpuMsPerOp: (cpu * 1000) / r.ops, p50Ms: r.p50Ms });
  } finally {
    running.delete(stop);
    await stop();
  }
}

function table(): string {
  const rows = rungs.map(
    (r) =>
      `| ${r.rung} | ${Math.round(r.rate).toLocaleString('en-US')} | ${r.cpuMsPerOp.toFixed(3)} | ${r.p50Ms === undefined ? '–' : r.p50Ms.toFixed(2)} |`,
  );
  return ['| rung | ops/s | CPU ms per op (all processes) | p50 ms |', '|---|---|---|---|', ...rows].join(
    '\n',
  );
}

if (flags.serve) {
  await serveBare(Number(flags.serve));
} else {
  if (!wrkAvailable()) throw new Error('bench:ladder needs wrk (apt-get install wrk)');
  await runWithTeardown({
    name: 'bench:ladder',
    body: async () => {
      await bareServer();
      await storeAlone();
      await serialPuts(1, 1, 'PUT one at a time: 1 agent, rf 1');
      await serialPuts(3, 1, 'PUT one at a time: 3 agents, rf 1 (2 of 3 forwarded)');
      await serialPuts(3, 3, 'PUT one at a time: 3 agents, rf 3 majority (2 of 3 forwarded)');
      console.log(table());
    },
    cleanup: async () => {
      await Promise.all([...running].map((stop) => stop()));
    },
  });
}
