import { afterEach, describe, expect, it, jest } from '@jest/globals';
import fc from 'fast-check';
import { KubeConfig } from '@kubernetes/client-node';
import type { KubernetesListObject, V1ConfigMap } from '@kubernetes/client-node';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { FakeClock } from './fake-clock.ts';
import { RestartingInformer } from './informer.ts';
import { createMetrics } from './metrics.ts';

jest.setTimeout(30_000);

const PATH = '/api/v1/namespaces/ns/configmaps';
type WatchType = 'ADDED' | 'MODIFIED' | 'DELETED';

/**
 * A fake of the API server's list and watch for one resource: the list is a function, the watch
 * a real chunked HTTP stream on loopback so client-node's own watch client and ListWatch run
 * unchanged. Keeps a change history for watches that resume from a resourceVersion; compact()
 * drops it, after which an older resourceVersion gets 410 Gone (as an ERROR event in the stream,
 * as the watch cache answers, or as an HTTP status).
 */
class FakeApiServer {
  readonly objects = new Map<string, V1ConfigMap>();
  /** resourceVersion query of every watch request, in order. */
  readonly watchRequests: string[] = [];
  lists = 0;
  failNextLists = 0;
  failNextWatches = 0;
  goneAs: 'event' | 'status' = 'event';
  /** While set, lists wait for it to resolve. */
  listGate: Promise<void> | null = null;
  private rv = 100;
  private compactedRv = 0;
  private history: { type: WatchType; object: V1ConfigMap }[] = [];
  private readonly streams = new Set<ServerResponse>();
  private readonly server: Server;

  constructor() {
    this.server = createServer((req, res) => this.watch(req, res));
  }

  async listen(): Promise<KubeConfig> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    const { port } = this.server.address() as AddressInfo;
    const kc = new KubeConfig();
    kc.loadFromClusterAndUser(
      { name: 'fake', server: `http://127.0.0.1:${port}`, skipTLSVerify: true },
      { name: 'u' },
    );
    return kc;
  }

  async close(): Promise<void> {
    this.closeWatches();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  put(name: string, value: string): void {
    const type = this.objects.has(name) ? 'MODIFIED' : 'ADDED';
    const object: V1ConfigMap = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name, namespace: 'ns', resourceVersion: String(++this.rv) },
      data: { value },
    };
    this.objects.set(name, object);
    this.record(type, object);
  }

  remove(name: string): void {
    const old = this.objects.get(name);
    if (!old) return;
    this.objects.delete(name);
    this.record('DELETED', { ...old, metadata: { ...old.metadata, resourceVersion: String(++this.rv) } });
  }

  /** Forgets the change history: watches from an older resourceVersion get 410 Gone. */
  compact(): void {
    this.history = [];
    this.compactedRv = this.rv;
  }

  resourceVersion(): string {
    return String(this.rv);
  }

  openWatches(): number {
    return this.streams.size;
  }

  closeWatches(): void {
    for (const s of this.streams) s.end();
    this.streams.clear();
  }

  readonly list = async (): Promise<KubernetesListObject<V1ConfigMap>> => {
    this.lists++;
    if (this.listGate) await this.listGate;
    if (this.failNextLists > 0) {
      this.failNextLists--;
      throw new Error('list refused by the fake API server');
    }
    return {
      apiVersion: 'v1',
      kind: 'ConfigMapList',
      metadata: { resourceVersion: String(this.rv) },
      items: [...this.objects.values()].map((o) => structuredClone(o)),
    };
  };

  private record(type: WatchType, object: V1ConfigMap): void {
    this.history.push({ type, object });
    for (const s of this.streams) s.write(JSON.stringify({ type, object }) + '\n');
  }

  private watch(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url!, 'http://x');
    expect(url.pathname).toBe(PATH);
    expect(url.searchParams.get('watch')).toBe('true');
    const from = url.searchParams.get('resourceVersion') ?? '';
    this.watchRequests.push(from);
    if (this.failNextWatches > 0) {
      this.failNextWatches--;
      res.writeHead(500).end('{"kind":"Status","code":500}');
      return;
    }
    if (Number(from) < this.compactedRv) {
      if (this.goneAs === 'status') {
        res.writeHead(410).end('{"kind":"Status","code":410,"reason":"Expired"}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      const gone = { kind: 'Status', status: 'Failure', reason: 'Expired', code: 410 };
      res.end(JSON.stringify({ type: 'ERROR', object: gone }) + '\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.flushHeaders(); // as the API server does: the client's watch() resolves on the headers
    for (const e of this.history)
      if (Number(e.object.metadata!.resourceVersion) > Number(from)) res.write(JSON.stringify(e) + '\n');
    this.streams.add(res);
    res.on('close', () => this.streams.delete(res));
  }
}

const log = pino({ level: 'silent' });

/** Bounded wait on real time for I/O to happen; fails with what it waited for. */
async function waitFor(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const content = (objects: readonly V1ConfigMap[]) =>
  objects
    .map(
      (o) => `${o.metadata!.namespace}/${o.metadata!.name}@${o.metadata!.resourceVersion}=${o.data!.value}`,
    )
    .sort();

interface Setup {
  api: FakeApiServer;
  clock: FakeClock;
  informer: RestartingInformer<V1ConfigMap>;
  seen: string[];
  metrics: ReturnType<typeof createMetrics>;
  /** Waits until the cache equals the server's objects, letting fake time pass for backoffs. */
  converge: () => Promise<void>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function setup(): Promise<Setup> {
  const api = new FakeApiServer();
  const kubeConfig = await api.listen();
  const clock = new FakeClock();
  const seen: string[] = [];
  const metrics = createMetrics();
  const informer = new RestartingInformer<V1ConfigMap>({
    kubeConfig,
    path: PATH,
    list: api.list,
    resource: 'configmaps',
    log,
    metrics,
    clock,
    minBackoffMs: 500,
    maxBackoffMs: 4_000,
    onEvent: (o) => seen.push(`${o.metadata!.name}@${o.metadata!.resourceVersion}`),
  });
  cleanups.push(async () => {
    await informer.stop();
    await api.close();
  });
  const converge = async () => {
    const want = () => content([...api.objects.values()]);
    const deadline = Date.now() + 5_000;
    while (JSON.stringify(content(informer.list())) !== JSON.stringify(want()) || api.openWatches() === 0) {
      if (Date.now() > deadline)
        throw new Error(
          `cache did not converge: cache ${JSON.stringify(content(informer.list()))}, server ${JSON.stringify(want())}, open watches ${api.openWatches()}`,
        );
      if (clock.pending() > 0) clock.advance(4_000);
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  return { api, clock, informer, seen, metrics, converge };
}

const restarts = async (s: Setup) => (await s.metrics.informerRestarts.get()).values[0]?.value ?? 0;

describe('RestartingInformer', () => {
  it('fills the cache from the first list, reports each object, then watches from the list resourceVersion', async () => {
    const s = await setup();
    s.api.put('a', '1');
    s.api.put('b', '2');
    expect(s.informer.synced()).toBe(false);
    await s.informer.start();
    expect(s.informer.synced()).toBe(true);
    expect(content(s.informer.list())).toEqual(['ns/a@101=1', 'ns/b@102=2']);
    expect(s.informer.get('a', 'ns')?.data).toEqual({ value: '1' });
    expect(s.seen.sort()).toEqual(['a@101', 'b@102']);
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    expect(s.api.watchRequests).toEqual(['102']);
    expect(s.api.lists).toBe(1);
  });

  it('applies watched adds, updates and deletes to the cache and reports each', async () => {
    const s = await setup();
    s.api.put('a', '1');
    s.api.put('b', '2');
    await s.informer.start();
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    s.seen.length = 0;
    s.api.put('a', 'one');
    s.api.remove('b');
    s.api.put('c', '3');
    await waitFor(() => s.seen.length === 3, 'three watch events');
    expect(s.seen).toEqual(['a@103', 'b@104', 'c@105']); // a delete reports the object's last state
    expect(content(s.informer.list())).toEqual(['ns/a@103=one', 'ns/c@105=3']);
    expect(s.informer.get('b', 'ns')).toBeUndefined();
    expect(s.api.lists).toBe(1);
  });

  it('resumes a watch the server closed from the last resourceVersion seen, without a relist', async () => {
    const s = await setup();
    s.api.put('a', '1');
    await s.informer.start();
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    s.api.put('a', '2');
    await waitFor(() => s.informer.get('a', 'ns')?.data?.value === '2', 'the update');
    s.api.closeWatches();
    s.api.put('b', '3'); // while no watch is open: the resumed watch replays it
    await s.converge();
    expect(s.api.watchRequests).toEqual(['101', '102']);
    expect(s.api.lists).toBe(1);
    expect(content(s.informer.list())).toEqual(['ns/a@102=2', 'ns/b@103=3']);
  });

  it('restarts itself after a watch error with doubling backoff, resets it after a success, and catches up', async () => {
    const s = await setup();
    s.api.put('a', '1');
    await s.informer.start();
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    s.api.failNextWatches = 3;
    s.api.closeWatches(); // client-node reconnects at once; that and the next two attempts get 500
    await waitFor(() => s.api.watchRequests.length === 2 && s.clock.pending() === 1, 'the failed reconnect');
    expect(await restarts(s)).toBe(1);
    s.api.put('b', '2');
    for (const [n, delay] of [
      [3, 500],
      [4, 1_000],
      [5, 2_000],
    ] as const) {
      s.clock.advance(delay - 1);
      expect(s.api.watchRequests).toHaveLength(n - 1); // not before the backoff is over
      s.clock.advance(1);
      await waitFor(
        () => s.api.watchRequests.length === n && (n === 5 || s.clock.pending() === 1),
        `watch attempt ${n} after ${delay} ms`,
      );
    }
    await waitFor(() => s.api.openWatches() === 1, 'the watch after the restarts');
    await s.converge();
    expect(await restarts(s)).toBe(3);
    expect(s.api.lists).toBe(1); // the resourceVersion was still valid: resumed, not relisted
    expect(content(s.informer.list())).toEqual(['ns/a@101=1', 'ns/b@102=2']);

    // The backoff starts again from the minimum once a restart succeeded.
    s.api.failNextWatches = 2;
    s.api.closeWatches();
    await waitFor(() => s.clock.pending() === 1 && s.api.openWatches() === 0, 'the next failure');
    s.clock.advance(499);
    expect(s.api.watchRequests).toHaveLength(6);
    s.clock.advance(1);
    await waitFor(() => s.api.watchRequests.length === 7, 'the restart after 500 ms');
  });

  it.each(['event', 'status'] as const)(
    'relists when its resourceVersion expired (410 Gone as %s) and reports objects deleted meanwhile',
    async (goneAs) => {
      const s = await setup();
      s.api.goneAs = goneAs;
      for (const n of ['a', 'b', 'c']) s.api.put(n, n);
      await s.informer.start();
      await waitFor(() => s.api.openWatches() === 1, 'the watch');
      s.api.failNextWatches = 1;
      s.api.closeWatches();
      await waitFor(() => s.clock.pending() === 1, 'the restart to be scheduled');
      // Changes the informer cannot replay: the history is compacted while it is away.
      s.api.remove('b');
      s.api.put('a', 'A');
      s.api.put('d', 'd');
      s.api.compact();
      s.seen.length = 0;
      s.clock.advance(500);
      await s.converge();
      expect(s.api.lists).toBe(2);
      expect(s.api.watchRequests.slice(-2)).toEqual(['103', '106']); // expired rv, then the relist's
      expect(content(s.informer.list())).toEqual(['ns/a@105=A', 'ns/c@103=c', 'ns/d@106=d']);
      expect(s.seen.sort()).toEqual(['a@105', 'b@102', 'd@106']); // b reported as deleted
    },
  );

  it('start() retries a failing first list with backoff and resolves once the cache is filled', async () => {
    const s = await setup();
    s.api.put('a', '1');
    s.api.failNextLists = 2;
    let started = false;
    const starting = s.informer.start().then(() => (started = true));
    await waitFor(() => s.api.lists === 1 && s.clock.pending() === 1, 'the first failed list');
    s.clock.advance(499);
    expect(s.api.lists).toBe(1);
    s.clock.advance(1);
    await waitFor(() => s.api.lists === 2 && s.clock.pending() === 1, 'the second failed list');
    s.clock.advance(999);
    expect(s.api.lists).toBe(2);
    expect(started).toBe(false);
    expect(s.informer.synced()).toBe(false);
    s.clock.advance(1);
    await starting;
    expect(s.informer.synced()).toBe(true);
    expect(content(s.informer.list())).toEqual(['ns/a@101=1']);
  });

  it('converges to the server state after any sequence of changes, dropped watches, errors and compactions', async () => {
    const name = fc.constantFrom('a', 'b', 'c', 'd');
    const op = fc.oneof(
      fc.record({ op: fc.constant('put' as const), name, value: fc.string({ maxLength: 3 }) }),
      fc.record({ op: fc.constant('remove' as const), name }),
      fc.constantFrom(
        { op: 'dropWatch' as const },
        { op: 'failWatch' as const },
        { op: 'failList' as const },
        { op: 'compact' as const },
        { op: 'settle' as const },
      ),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 20 }), async (ops) => {
        const s = await setup();
        try {
          await s.informer.start();
          for (const o of ops) {
            if (o.op === 'put') s.api.put(o.name, o.value);
            else if (o.op === 'remove') s.api.remove(o.name);
            else if (o.op === 'dropWatch') s.api.closeWatches();
            else if (o.op === 'failWatch') {
              s.api.failNextWatches++;
              s.api.closeWatches();
            } else if (o.op === 'failList') s.api.failNextLists++;
            else if (o.op === 'compact') s.api.compact();
            else await s.converge();
          }
          await s.converge();
        } finally {
          await cleanups.pop()!();
        }
      }),
      { numRuns: 30 },
    );
  });

  it('stop() closes the watch, cancels a pending restart and opens nothing afterwards', async () => {
    const s = await setup();
    s.api.put('a', '1');
    await s.informer.start();
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    s.api.failNextWatches = 1;
    s.api.closeWatches();
    await waitFor(() => s.clock.pending() === 1, 'the restart to be scheduled');
    await s.informer.stop();
    expect(s.clock.pending()).toBe(0);
    s.clock.advance(60_000);
    s.api.put('b', '2');
    await new Promise((r) => setTimeout(r, 50)); // absence of requests: give one a chance to appear
    expect(s.api.watchRequests).toHaveLength(2);
    expect(s.api.openWatches()).toBe(0);
    expect(content(s.informer.list())).toEqual(['ns/a@101=1']);
  });

  it('stop() while a relist is in flight opens no watch once the list returns', async () => {
    const s = await setup();
    s.api.put('a', '1');
    await s.informer.start();
    await waitFor(() => s.api.openWatches() === 1, 'the watch');
    let release!: () => void;
    s.api.listGate = new Promise((r) => (release = r));
    s.api.failNextWatches = 1;
    s.api.closeWatches();
    await waitFor(() => s.clock.pending() === 1, 'the restart to be scheduled');
    s.api.put('b', '2');
    s.api.compact();
    s.clock.advance(500); // restart → watch from an expired rv → 410 → relist (held by the gate)
    await waitFor(() => s.api.lists === 2, 'the relist');
    await s.informer.stop();
    const watches = s.api.watchRequests.length;
    release();
    await new Promise((r) => setTimeout(r, 50)); // absence of requests: give one a chance to appear
    expect(s.api.watchRequests).toHaveLength(watches);
    expect(s.api.openWatches()).toBe(0);
  });

  it('stop() ends a start() that is waiting to retry its first list', async () => {
    const s = await setup();
    s.api.failNextLists = 1;
    const starting = s.informer.start();
    await waitFor(() => s.clock.pending() === 1, 'the retry to be scheduled');
    await s.informer.stop();
    await starting;
    expect(s.informer.synced()).toBe(false);
    expect(s.api.lists).toBe(1);
    expect(s.clock.pending()).toBe(0);
  });
});
