// `npm start`: a local 3-agent cluster on loopback (contract §5). Writes a cluster file, starts
// one child agent process per entry, prints `agent <name> <url>` per agent once all are ready,
// and runs until Ctrl-C, then stops the agents gracefully (SIGTERM, they drain and flush).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const AGENTS = Number(process.env.PIVOT_LOCAL_AGENTS ?? 3);
const HOST = '127.0.0.1';

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, HOST, () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => ok(port));
    });
  });
}

async function waitReady(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`agent at ${url} exited with code ${child.exitCode}`);
    try {
      // Ready, and every shard it leads has finished taking over (writes accepted).
      const res = await fetch(`${url}/_pivot/v1/status`);
      const status = (await res.json()) as { ready: boolean; shards: { state: string }[] };
      if (status.ready && status.shards.every((s) => s.state === 'serving')) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`agent at ${url} not ready after ${timeoutMs} ms`);
}

async function main() {
  const dir = process.env.PIVOT_LOCAL_DIR
    ? resolve(process.env.PIVOT_LOCAL_DIR)
    : mkdtempSync(join(tmpdir(), 'pivot-local-'));
  mkdirSync(dir, { recursive: true });
  const agents = [];
  for (let i = 0; i < AGENTS; i++)
    agents.push({ name: `agent-${i}`, url: `http://${HOST}:${await freePort()}` });
  const clusterFile = join(dir, 'cluster.json');
  writeFileSync(
    clusterFile,
    JSON.stringify(
      {
        clusterId: 'local',
        epoch: 1,
        shards: 16,
        replicationFactor: Math.min(3, AGENTS),
        writeConcern: 'majority',
        agents,
      },
      null,
      2,
    ),
  );
  console.log(`data under ${dir}`);
  const main = join(import.meta.dirname, 'main.ts');
  const children = agents.map((a) => {
    const child = spawn(
      process.execPath,
      [
        main,
        '--name',
        a.name,
        '--listen',
        a.url.slice('http://'.length),
        '--data-dir',
        join(dir, a.name),
        '--cluster-file',
        clusterFile,
      ],
      {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: { ...process.env, PIVOT_LOG_LEVEL: process.env.PIVOT_LOG_LEVEL ?? 'warn' },
      },
    );
    return { ...a, child };
  });
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    await Promise.all(
      children.map(
        ({ child }) =>
          new Promise<void>((done) => {
            if (child.exitCode !== null) return done();
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      ),
    );
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));
  for (const c of children)
    c.child.once('exit', (code) => !stopping && console.error(`agent ${c.name} exited (${code})`));
  try {
    await Promise.all(children.map((c) => waitReady(c.url, c.child, 30_000)));
  } catch (error) {
    console.error((error as Error).message);
    return stop(1);
  }
  for (const c of children) console.log(`agent ${c.name} ${c.url}`);
}

void main();
