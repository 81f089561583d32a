// etcd as the benchmark's reference peer: 1 or 3 members on loopback with temp data dirs,
// driven through its v3 JSON gateway (/v3/kv/put, /v3/kv/range, base64 keys and values).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort, REPO_ROOT, waitFor } from '../e2e/agent/harness.ts';
import type { RequestTemplate } from './wrk.ts';

export interface EtcdBinary {
  path: string;
  version: string;
  /** Where it came from, for the report. */
  source: string;
}

/** etcd 3.6 from hack/build-k8s.sh's cache when built, else Debian's etcd-server on PATH. */
export function findEtcd(): EtcdBinary | null {
  const candidates: { path: string; source: string }[] = [];
  try {
    const dir = execFileSync('bash', [path.join(REPO_ROOT, 'hack/build-k8s.sh'), '--print-dir'], {
      encoding: 'utf8',
    }).trim();
    candidates.push({ path: path.join(dir, 'etcd'), source: 'hack/build-k8s.sh cache' });
  } catch {
    // script missing or failing: fall through to the system one
  }
  candidates.push({ path: '/usr/bin/etcd', source: 'Debian etcd-server package' });
  for (const c of candidates) {
    if (!existsSync(c.path)) continue;
    const out = execFileSync(c.path, ['--version'], { encoding: 'utf8' });
    const version = /etcd Version:\s*(\S+)/.exec(out)?.[1] ?? 'unknown';
    return { path: c.path, version, source: c.source };
  }
  return null;
}

export class EtcdCluster {
  readonly clientUrls: string[];
  private readonly root: string;
  private readonly binary: EtcdBinary;
  private readonly args: string[][];
  private readonly children: (ChildProcess | null)[];

  private constructor(root: string, binary: EtcdBinary, clientUrls: string[], args: string[][]) {
    this.root = root;
    this.binary = binary;
    this.clientUrls = clientUrls;
    this.args = args;
    this.children = args.map(() => null);
  }

  get pids(): number[] {
    return this.children.flatMap((c) => (c?.pid === undefined ? [] : [c.pid]));
  }

  private spawnMember(i: number): void {
    const log = openSync(path.join(this.root, `e${i}.log`), 'a');
    const child = spawn(this.binary.path, this.args[i]!, { stdio: ['ignore', log, log] });
    closeSync(log);
    const pid = child.pid!;
    trackedPids.add(pid);
    child.once('exit', () => {
      trackedPids.delete(pid);
      if (this.children[i] === child) this.children[i] = null;
    });
    this.children[i] = child;
  }

  async waitHealthy(url: string): Promise<void> {
    await waitFor(
      async () => {
        const r = await fetch(`${url}/health`);
        return r.ok && ((await r.json()) as { health: string }).health === 'true';
      },
      { timeoutMs: 30_000, message: `etcd ${url}/health`, intervalMs: 200 },
    );
  }

  /** SIGKILL member `i` and wait until it is gone. */
  async kill9(i: number): Promise<void> {
    const child = this.children[i];
    if (!child) throw new Error(`etcd member ${i} is not running`);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  /** Starts member `i` again on its data dir (no health wait: callers time the catch-up). */
  restart(i: number): void {
    if (this.children[i]) throw new Error(`etcd member ${i} is still running`);
    this.spawnMember(i);
  }

  private async memberStatus(i: number) {
    const r = await fetch(`${this.clientUrls[i]}/v3/maintenance/status`, { method: 'POST', body: '{}' });
    return (await r.json()) as { header?: { revision?: string; member_id?: string }; leader?: string };
  }

  /** The store revision member `i` has applied (POST /v3/maintenance/status). */
  async revision(i: number): Promise<number> {
    return Number((await this.memberStatus(i)).header?.revision ?? NaN);
  }

  async isLeader(i: number): Promise<boolean> {
    const s = await this.memberStatus(i);
    return s.leader !== undefined && s.leader === s.header?.member_id;
  }

  static async start(binary: EtcdBinary, members: number): Promise<EtcdCluster> {
    const root = await mkdtemp(path.join(tmpdir(), 'pivot-bench-etcd-'));
    const ports: { client: number; peer: number }[] = [];
    const used = new Set<number>();
    while (ports.length < members) {
      const client = await freePort();
      const peer = await freePort();
      if (client === peer || used.has(client) || used.has(peer)) continue;
      used.add(client).add(peer);
      ports.push({ client, peer });
    }
    const initialCluster = ports.map((p, i) => `e${i}=http://127.0.0.1:${p.peer}`).join(',');
    const args = ports.map((p, i) => [
      `--name=e${i}`,
      `--data-dir=${path.join(root, `e${i}`)}`,
      `--listen-client-urls=http://127.0.0.1:${p.client}`,
      `--advertise-client-urls=http://127.0.0.1:${p.client}`,
      `--listen-peer-urls=http://127.0.0.1:${p.peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${p.peer}`,
      `--initial-cluster=${initialCluster}`,
      '--initial-cluster-state=new',
      '--initial-cluster-token=pivot-bench',
    ]);
    const cluster = new EtcdCluster(
      root,
      binary,
      ports.map((p) => `http://127.0.0.1:${p.client}`),
      args,
    );
    try {
      args.forEach((_, i) => cluster.spawnMember(i));
      for (const url of cluster.clientUrls) await cluster.waitHealthy(url);
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  async stop(): Promise<void> {
    await Promise.all(this.children.map((c, i) => (c ? this.kill9(i) : undefined)));
    await rm(this.root, { recursive: true, force: true });
  }
}

const trackedPids = new Set<number>();
process.on('exit', () => {
  for (const pid of trackedPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
});

const b64 = (text: string) => Buffer.from(text).toString('base64');

export function etcdPut(origin: string, key: string, value: string) {
  return {
    origin,
    method: 'POST' as const,
    path: '/v3/kv/put',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ key: b64(key), value: b64(value) }),
  };
}

/** A range read of one key; `serializable` answers from the member's copy (like `?consistency=local`). */
export function etcdRange(origin: string, key: string, serializable = false) {
  return {
    origin,
    method: 'POST' as const,
    path: '/v3/kv/range',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(serializable ? { key: b64(key), serializable: true } : { key: b64(key) }),
  };
}

/** The put / range requests for wrk: `{key}` is replaced by the base64 key. */
export function etcdTemplate(op: 'put' | 'get' | 'getLocal', value: string): RequestTemplate {
  const headers = { 'content-type': 'application/json' };
  if (op === 'put')
    return {
      method: 'POST',
      path: '/v3/kv/put',
      headers,
      body: `{"key":"{key}","value":"${b64(value)}"}`,
      keyEncoding: 'base64',
    };
  return {
    method: 'POST',
    path: '/v3/kv/range',
    headers,
    body: op === 'get' ? '{"key":"{key}"}' : '{"key":"{key}","serializable":true}',
    keyEncoding: 'base64',
  };
}
