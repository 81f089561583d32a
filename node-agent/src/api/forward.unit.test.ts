import { afterEach, describe, expect, it } from '@jest/globals';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { packr, PeerClient } from '../replication/transport.ts';
import { Forwarder, MAX_BATCH, type DataAnswer, type DataRequest, type ForwardBatch } from './forward.ts';

// A stand-in pivot on loopback: records what arrives and answers each forwarded request with
// its own URL, so the test can tell which answer went to which request.
interface Seen {
  path: string;
  headers: IncomingMessage['headers'];
  batch?: ForwardBatch;
  body?: string;
}

async function fakePivot(options: { batchRoute: boolean }) {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      if (req.url === '/_pivot/v1/forward') {
        if (!options.batchRoute) {
          res.writeHead(404, { 'content-type': 'application/json' });
          return res.end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no route' } }));
        }
        const batch = packr.unpack(raw) as ForwardBatch;
        seen.push({ path: req.url, headers: req.headers, batch });
        const answers: DataAnswer[] = batch.requests.map((r) => ({ status: 200, body: `"${r.url}"` }));
        res.writeHead(200, { 'content-type': 'application/x-msgpack' });
        return res.end(packr.pack({ answers }));
      }
      seen.push({ path: req.url!, headers: req.headers, body: raw.toString() });
      res.writeHead(201, { 'content-type': 'application/json', 'retry-after': '3' });
      res.end(`"http ${req.url}"`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { seen, url, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('Forwarder', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0)) await c();
  });

  async function setup(batchRoute: boolean) {
    const pivot = await fakePivot({ batchRoute });
    const client = new PeerClient(pivot.url, 'secret');
    cleanup.push(() => client.close(), pivot.close);
    const forwarder = new Forwarder({
      name: 'agent-0',
      epoch: () => 7,
      client: (peer) => (peer === 'agent-1' ? client : undefined),
      forwardTimeoutMs: () => 5000,
    });
    return { pivot, forwarder };
  }

  const put = (i: number): DataRequest => ({ method: 'PUT', url: `/v1/data/k${i}`, body: `{"i":${i}}` });

  it('sends the requests of one event-loop turn in one call and gives each its own answer', async () => {
    const { pivot, forwarder } = await setup(true);
    const answers = await Promise.all([1, 2, 3].map((i) => forwarder.send('agent-1', put(i))));
    expect(answers.map((a) => a.body)).toEqual(['"/v1/data/k1"', '"/v1/data/k2"', '"/v1/data/k3"']);
    expect(pivot.seen).toHaveLength(1);
    expect(pivot.seen[0]!.batch).toEqual({ epoch: 7, from: 'agent-0', requests: [put(1), put(2), put(3)] });
    expect(pivot.seen[0]!.headers.authorization).toBe('Bearer secret');
  });

  it(`splits more than ${MAX_BATCH} requests into several calls, in order`, async () => {
    const { pivot, forwarder } = await setup(true);
    const n = MAX_BATCH + 10;
    const answers = await Promise.all(Array.from({ length: n }, (_, i) => forwarder.send('agent-1', put(i))));
    expect(answers.map((a) => a.body)).toEqual(Array.from({ length: n }, (_, i) => `"/v1/data/k${i}"`));
    expect(pivot.seen.map((s) => s.batch!.requests.length)).toEqual([MAX_BATCH, 10]);
  });

  it('falls back to one HTTP request each, marked forwarded, when the pivot predates batches (404)', async () => {
    const { pivot, forwarder } = await setup(false);
    const answer = await forwarder.send('agent-1', { ...put(5), ifMatch: '"1.4"' });
    expect(answer).toEqual({
      status: 201,
      headers: { 'content-type': 'application/json', 'retry-after': '3' },
      body: '"http /v1/data/k5"',
    });
    const http = pivot.seen.find((s) => s.path === '/v1/data/k5')!;
    expect(http.headers['x-pivot-forwarded']).toBe('7');
    expect(http.headers.authorization).toBe('Bearer secret');
    expect(http.headers['if-match']).toBe('"1.4"');
    expect(http.body).toBe('{"i":5}');
  });

  it('an unknown peer or an aborted wait rejects only that request', async () => {
    const { forwarder } = await setup(true);
    await expect(forwarder.send('nobody', put(1))).rejects.toThrow(/unknown agent nobody/);
    const aborted = new AbortController();
    aborted.abort(new Error('gave up'));
    await expect(forwarder.send('agent-1', put(2), aborted.signal)).rejects.toThrow('gave up');
    await expect(forwarder.send('agent-1', put(3))).resolves.toMatchObject({ status: 200 });
  });
});
