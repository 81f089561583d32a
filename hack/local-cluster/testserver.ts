// The `pivot/testserver` image: a tiny HTTP server for the local-cluster tests. It serves
// /healthz, reports who it is and its environment, and reads/writes one file in its data directory (a PVC mount).
import { createServer, type ServerResponse } from 'node:http';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const port = Number(process.env.PORT ?? 8080);
const dataDir = process.env.DATA_DIR ?? '/data';
const dataFile = join(dataDir, 'value.txt');

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = createServer(async (req, res) => {
  try {
    if (req.url === '/healthz') return send(res, 200, { ok: true });
    if (req.url === '/info') {
      return send(res, 200, {
        pid: process.pid,
        podName: process.env.POD_NAME,
        podIP: process.env.POD_IP,
        argv: process.argv.slice(2),
      });
    }
    if (req.url?.startsWith('/env/')) {
      const name = decodeURIComponent(req.url.slice('/env/'.length));
      return send(res, 200, { name, value: process.env[name] ?? null });
    }
    if (req.url === '/data' && req.method === 'GET') {
      const value = await readFile(dataFile, 'utf8').catch(() => null);
      return send(res, value === null ? 404 : 200, { value });
    }
    if (req.url === '/data' && req.method === 'PUT') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      await mkdir(dataDir, { recursive: true });
      await writeFile(dataFile, Buffer.concat(chunks));
      return send(res, 200, { written: true });
    }
    send(res, 404, { error: 'not found', path: req.url });
  } catch (err) {
    send(res, 500, { error: (err as Error).message });
  }
});

server.listen(port, process.env.BIND_ADDRESS ?? '0.0.0.0');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
