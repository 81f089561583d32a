import { afterEach, describe, expect, it } from '@jest/globals';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { packr, PeerClient } from '../replication/transport.ts';
import {
  FORWARD_STREAM,
  forwardFrame,
  Forwarder,
  MAX_BATCH,
  NotDelivered,
  type DataRequest,
  type ForwardBatch,
} from './forward.ts';

// A stand-in pivot on loopback: records what arrives and streams each forwarded request's answer
// (its own URL, so the test can tell which went where) after `delayMs(url)`, last request first
// unless delays say otherwise. `cutAfter` ends the stream after that many answers.
interface Seen {
  path: string;
  headers: IncomingMessage['headers'];
  batch?: ForwardBatch;
  body?: string;
}

async function fakePivot(options: {
  batchRoute: boolean;
  delayMs?: (url: string) => number;
  cutAfter?: number;
  status?: number;
}) {
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
        if (options.status) {
          res.writeHead(options.status, { 'content-type': 'application/json' });
          return res.end('{"error":{"code":"NOT_READY","message":"shutting down"}}');
        }
        res.writeHead(200, { 'content-type': FORWARD_STREAM });
        let sent = 0;
        batch.requests.forEach((r, i) =>
          setTimeout(
            () => {
              if (options.cutAfter !== undefined && sent === options.cutAfter) return void res.destroy();
              sent++;
              res.write(forwardFrame({ i, answer: { status: 200, body: `"${r.url}"` } }));
              if (sent === batch.requests.length) res.end();
            },
            options.delayMs?.(r.url) ?? 0,
          ),
        );
        return;
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

  async function setup(batchRoute: boolean, options: Parameters<typeof fakePivot>[0] = { batchRoute }) {
    const pivot = await fakePivot({ ...options, batchRoute });
    const client = new PeerClient(pivot.url, 'secret', 4);
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

  it('each answer arrives as soon as its request is done: a slow one does not hold up the rest', async () => {
    const { forwarder } = await setup(true, {
      batchRoute: true,
      delayMs: (url) => (url.endsWith('k1') ? 400 : 0),
    });
    const order: number[] = [];
    await Promise.all([1, 2, 3].map((i) => forwarder.send('agent-1', put(i)).then(() => order.push(i))));
    expect(order).toEqual([2, 3, 1]);
  });

  it('a stream cut short keeps the answers that arrived and rejects only the rest', async () => {
    const { forwarder } = await setup(true, {
      batchRoute: true,
      delayMs: (url) => Number(url.slice(-1)) * 50,
      cutAfter: 2,
    });
    const results = await Promise.allSettled([1, 2, 3].map((i) => forwarder.send('agent-1', put(i))));
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
    expect(results[2]!.status === 'rejected' && results[2]!.reason).not.toBeInstanceOf(NotDelivered);
  });

  it('a batch refused as a whole is NotDelivered (safe to resend)', async () => {
    const { forwarder } = await setup(true, { batchRoute: true, status: 503 });
    await expect(forwarder.send('agent-1', put(1))).rejects.toBeInstanceOf(NotDelivered);
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
