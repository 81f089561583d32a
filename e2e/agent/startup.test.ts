// How agents come up: as under the operator (no cluster file, the map arrives by push), with
// another cluster's data on disk, and as `npm start`'s local cluster (contract §5).
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import { errorCode, NODE_BIN, PivotClient, REPO_ROOT, waitFor } from './harness.ts';
import { useCluster } from './use-cluster.ts';

describe('agents started as under the operator (no cluster file, 3 agents, 4 shards, rf 3)', () => {
  const { test } = useCluster({ clusterFile: false, waitReady: false, clusterId: 'uid-operator-a' });

  test('without a map they are alive but not ready and refuse data with 503; the pushed map makes them serve', async (c) => {
    for (const name of c.names()) {
      const client = c.client(name);
      expect({ name, healthz: (await client.raw('GET', '/healthz')).status }).toEqual({ name, healthz: 200 });
      expect({ name, readyz: (await client.raw('GET', '/readyz')).status }).toEqual({ name, readyz: 503 });
      const put = await client.put('early', 1);
      expect({ name, status: put.status, retryAfter: put.headers['retry-after'] !== undefined }).toEqual({
        name,
        status: 503,
        retryAfter: true,
      });
      errorCode(put);
      expect((await c.status(name)).ready).toBe(false);
    }

    // A malformed map is refused and changes nothing.
    const malformed = await c.pushMap({ ...c.map, shards: 0 }, { to: ['agent-0'], remember: false });
    expect(malformed.get('agent-0')!.status).toBe(400);
    expect((await c.client('agent-0').raw('GET', '/readyz')).status).toBe(503);

    await c.pushMapOrThrow(c.map);
    for (const name of c.names()) await c.waitReady(name);
    await c.waitWritable();
    expect((await c.client('agent-0').put('pushed', { via: 'operator' })).status).toBe(200);
    for (const name of c.names()) {
      const status = await c.status(name);
      expect({ name, epoch: status.epoch, clusterUid: status.clusterUid }).toEqual({
        name,
        epoch: 1,
        clusterUid: 'uid-operator-a',
      });
      expect((await c.client(name).get('pushed')).body.data).toEqual({ via: 'operator' });
      expect((await c.client(name).get('early')).status).toBe(404);
    }

    // kill -9 and restart: it comes back with its stored map and data.
    await c.kill9('agent-1');
    await c.restart('agent-1');
    expect((await c.client('agent-1').get('pushed', { consistency: 'local' })).body.data).toEqual({
      via: 'operator',
    });
  });

  test('started with another --cluster-uid, each agent wipes the old data and reports it', async (c) => {
    await c.pushMapOrThrow(c.map); // already applied unless the test above failed early
    await c.waitWritable();
    expect((await c.client('agent-2').put('old-life', 'a')).status).toBe(200);
    for (const name of c.names()) expect(await c.stop(name)).toBe(0);
    c.map = { ...c.map, clusterUid: 'uid-operator-b' };
    for (const name of c.names()) await c.restart(name);
    await c.waitWritable();
    for (const name of c.names()) {
      const status = await c.status(name);
      expect({ name, clusterUid: status.clusterUid, wiped: status.wipes.some((w) => w.completed) }).toEqual({
        name,
        clusterUid: 'uid-operator-b',
        wiped: true,
      });
      for (const key of ['old-life', 'pushed'])
        expect({
          name,
          key,
          status: (await c.client(name).get(key, { consistency: 'local' })).status,
        }).toEqual({
          name,
          key,
          status: 404,
        });
    }
  });
});

describe('an agent without a map yet (operator mode)', () => {
  const { test } = useCluster({
    agents: 1,
    replicationFactor: 1,
    clusterFile: false,
    waitReady: false,
    clusterId: 'uid-mine',
  });

  test('refuses a map for another cluster UID and stays unready', async (c) => {
    const foreign = await c.pushMap({ ...c.map, clusterUid: 'uid-someone-else' }, { remember: false });
    expect({ status: foreign.get('agent-0')!.status, body: foreign.get('agent-0')!.body }).toEqual({
      status: 400,
      body: { error: { code: expect.any(String), message: expect.any(String) } },
    });
    expect((await c.client('agent-0').raw('GET', '/readyz')).status).toBe(503);
    expect((await c.status('agent-0')).clusterUid).toBe('uid-mine');
  });
});

describe('npm start (local 3-agent cluster)', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    // The launcher and its agents share a process group: SIGKILL all of them if still there.
    if (child?.pid && child.exitCode === null && child.signalCode === null)
      process.kill(-child.pid, 'SIGKILL');
  });

  it('prints one `agent <name> <url>` line per agent, serves the API, and stops every agent on SIGINT', async () => {
    child = spawn(NODE_BIN, [path.join(REPO_ROOT, 'node-agent/src/local.ts')], {
      cwd: REPO_ROOT,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PIVOT_'))),
    });
    const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const lines = await waitFor(
      () => {
        const agents = out.split('\n').filter((l) => /^agent \S+ http:\/\/\S+$/.test(l));
        return agents.length >= 3 ? agents : false;
      },
      {
        timeoutMs: 60_000,
        message: () => `three agent lines on stdout (stdout: ${out}; stderr: ${err.slice(-2000)})`,
      },
    );
    const urls = lines.map((l) => l.split(' ')[2]!);
    expect(lines.length).toBe(3);
    for (const url of urls) expect(new URL(url).hostname).toBe('127.0.0.1');

    const [a, b] = urls.map((u) => new PivotClient(u, null)) as [PivotClient, PivotClient];
    const written = await waitFor(
      async () => {
        const r = await a.put('local/hello', { from: 'npm start' });
        return r.status === 200 ? r : false;
      },
      { timeoutMs: 15_000, message: 'a write to the local cluster to succeed' },
    );
    expect(written.body.data).toEqual({ from: 'npm start' });
    expect((await b.list('local')).body.map((o) => o.data)).toEqual([{ from: 'npm start' }]);

    process.kill(child.pid!, 'SIGINT');
    const code = await Promise.race([
      exited,
      new Promise((r) => setTimeout(() => r('timeout'), 20_000).unref()),
    ]);
    expect({ code, stderrTail: code === 0 ? '' : err.slice(-2000) }).toEqual({ code: 0, stderrTail: '' });
    // Every agent it started is gone.
    for (const url of urls)
      await expect(new PivotClient(url, null, 1000).raw('GET', '/healthz')).rejects.toThrow();
  }, 90_000);
});
