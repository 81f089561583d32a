// Black-box harness for Pivot agents: real `node node-agent/src/main.ts` processes on loopback
// ports, real data directories on disk, real SIGKILLs. Used by e2e/agent tests and bench/.
//
// Every process started here is tracked by PID and killed in teardown, and again (SIGKILL) when
// the test process exits, so a failing or interrupted test never leaves an agent behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';
import WebSocket from 'ws';
import { shardForKey } from '../../lib/hash.ts';
import { placeShards } from '../../lib/placement.ts';
import {
  PermanentError,
  retryPolicyFromSpec,
  withRetry,
  type RetryPolicy,
  type RetryPolicySpec,
} from '../../lib/retry.ts';
import { copiesOf, type ShardAssignment, type ShardMap, type WriteConcern } from '../../lib/shard-map.ts';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const AGENT_ENTRY = path.join(REPO_ROOT, 'node-agent/src/main.ts');

// The project's Node 24 (the `node` devDependency); the system node may be older.
export const NODE_BIN =
  Number(process.versions.node.split('.')[0]) >= 24
    ? process.execPath
    : path.join(REPO_ROOT, 'node_modules/.bin/node');

// ---------------------------------------------------------------------------------------------
// Waiting

export interface WaitOptions {
  timeoutMs: number;
  /** What was awaited; a function may describe the last observed state. */
  message: string | (() => string);
  intervalMs?: number;
}

/**
 * Polls `cond` until it returns something other than false/undefined/null, and returns that.
 * Errors thrown by `cond` count as "not yet" and are reported if the wait times out.
 */
export async function waitFor<T>(
  cond: () => Promise<T | false | undefined | null> | T | false | undefined | null,
  { timeoutMs, message, intervalMs = 50 }: WaitOptions,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await cond();
      if (value !== false && value !== undefined && value !== null) return value;
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const what = typeof message === 'function' ? message() : message;
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}${cause}`);
    }
    await delay(intervalMs);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Client (public API, contract §3)

export interface StoredObject {
  key: string;
  index: string;
  data: unknown;
  created: number;
  updated: number;
  version: string;
}

export interface Reply<T = unknown> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  /** The raw body text, for non-JSON answers and error messages. */
  text: string;
}

export type Consistency = 'strong' | 'local';

/** URL path of a key: each segment percent-encoded, a trailing `*` kept as the collection mark. */
export function keyPath(key: string): string {
  return key
    .split('/')
    .map((segment, i, all) => (segment === '*' && i === all.length - 1 ? '*' : encodeURIComponent(segment)))
    .join('/');
}

// One connection pool per client process; short keep-alive so killed agents' sockets go quickly.
// Created on first use and closed by closeConnections() so jest can exit without waiting.
let dispatcher: Agent | null = null;
const pool = () => (dispatcher ??= new Agent({ keepAliveTimeout: 1000, connections: 64 }));

/** Closes the pooled keep-alive connections; the next request opens new ones. */
export async function closeConnections(): Promise<void> {
  const d = dispatcher;
  dispatcher = null;
  await d?.close();
}

export class PivotClient {
  readonly baseUrl: string;
  readonly token: string | null;
  readonly timeoutMs: number;

  constructor(baseUrl: string, token: string | null, timeoutMs = 15_000) {
    this.baseUrl = baseUrl;
    this.token = token;
    this.timeoutMs = timeoutMs;
  }

  /** Any request; `body` objects are sent as JSON, strings as they are (for malformed bodies). */
  async raw<T = unknown>(
    method: Dispatcher.HttpMethod,
    urlPath: string,
    options: { body?: unknown; headers?: Record<string, string>; token?: string | null } = {},
  ): Promise<Reply<T>> {
    const token = options.token === undefined ? this.token : options.token;
    const headers: Record<string, string> = { ...options.headers };
    if (token) headers.authorization = `Bearer ${token}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
      headers['content-type'] ??= 'application/json';
    }
    let res: Dispatcher.ResponseData;
    let text: string;
    try {
      res = await request(this.baseUrl + urlPath, {
        method,
        headers,
        body,
        dispatcher: pool(),
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      text = await res.body.text();
    } catch (error) {
      // Name the request: undici's own errors say only "connect ECONNREFUSED <address>".
      throw new Error(`${method} ${this.baseUrl}${urlPath}: ${(error as Error).message}`, { cause: error });
    }
    let parsed: unknown = text;
    if (String(res.headers['content-type'] ?? '').includes('json') && text.length > 0) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    return { status: res.statusCode, headers: res.headers, body: parsed as T, text };
  }

  put(key: string, data: unknown, options: { ifMatch?: string } = {}) {
    const headers: Record<string, string> = options.ifMatch ? { 'if-match': options.ifMatch } : {};
    return this.raw<StoredObject>('PUT', `/v1/data/${keyPath(key)}`, {
      body: JSON.stringify(data),
      headers,
    });
  }

  /** POST to `collection/*`; pass the collection with or without the trailing `/*`. */
  push(collection: string, data: unknown) {
    const key = collection.endsWith('/*') ? collection : `${collection}/*`;
    return this.raw<StoredObject>('POST', `/v1/data/${keyPath(key)}`, { body: JSON.stringify(data) });
  }

  get(key: string, options: { consistency?: Consistency } = {}) {
    return this.raw<StoredObject>(
      'GET',
      `/v1/data/${keyPath(key)}${query({ consistency: options.consistency })}`,
    );
  }

  list(
    collection: string,
    options: { consistency?: Consistency; limit?: number; after?: string } = {},
  ): Promise<Reply<StoredObject[]>> {
    const key = collection.endsWith('/*') ? collection : `${collection}/*`;
    return this.raw<StoredObject[]>('GET', `/v1/data/${keyPath(key)}${query(options)}`);
  }

  /** Every item of a collection, following `?limit=&after=` pages. */
  async listAll(collection: string, options: { consistency?: Consistency; pageSize?: number } = {}) {
    const items: StoredObject[] = [];
    const pageSize = options.pageSize ?? 1000;
    let after: string | undefined;
    for (;;) {
      const reply = await this.list(collection, { consistency: options.consistency, limit: pageSize, after });
      if (reply.status !== 200) throw new Error(`list ${collection} answered ${reply.status}: ${reply.text}`);
      items.push(...reply.body);
      if (reply.body.length < pageSize) return items;
      after = reply.body[reply.body.length - 1]!.index;
    }
  }

  delete(key: string) {
    return this.raw('DELETE', `/v1/data/${keyPath(key)}`);
  }

  /** Opens `GET /v1/watch/<key>`; extra query parameters (e.g. a resume version) go in `query`. */
  watch(key: string, options: { query?: Record<string, string | undefined>; token?: string | null } = {}) {
    const token = options.token === undefined ? this.token : options.token;
    const url = `${this.baseUrl.replace(/^http/, 'ws')}/v1/watch/${keyPath(key)}${query(options.query ?? {})}`;
    return new Watch(url, token);
  }
}

function query(params: Record<string, string | number | undefined>): string {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined) as [string, string | number][];
  if (entries.length === 0) return '';
  return '?' + new URLSearchParams(entries.map(([k, v]): [string, string] => [k, String(v)])).toString();
}

/** Watch messages (the agent's format): a snapshot first, then one message per change. */
export type WatchMessage =
  | { type: 'snapshot'; version: string; reset?: boolean; data: StoredObject | StoredObject[] | null }
  | { type: 'set'; version: string; object: StoredObject }
  | { type: 'delete'; version: string; key: string }
  | { type: 'error'; error: { code: string; message: string } };

/**
 * The state a watcher holds after applying `messages` to `start`: key → [data, version].
 * A snapshot replaces everything; set and delete change one key.
 */
export function foldWatch(
  messages: readonly unknown[],
  start: ReadonlyMap<string, [unknown, string]> = new Map(),
): Map<string, [unknown, string]> {
  const state = new Map(start);
  for (const m of messages as WatchMessage[]) {
    if (m.type === 'snapshot') {
      state.clear();
      const objects = m.data === null ? [] : Array.isArray(m.data) ? m.data : [m.data];
      for (const o of objects) state.set(o.key, [o.data, o.version]);
    } else if (m.type === 'set') state.set(m.object.key, [m.object.data, m.object.version]);
    else if (m.type === 'delete') state.delete(m.key);
    else throw new Error(`unexpected watch message ${JSON.stringify(m)}`);
  }
  return state;
}

/** A WebSocket watch that buffers every message it receives. */
export class Watch {
  readonly messages: unknown[] = [];
  readonly socket: WebSocket;
  readonly opened: Promise<void>;
  closed = false;
  closeCode: number | null = null;

  constructor(url: string, token: string | null) {
    this.socket = new WebSocket(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    this.opened = new Promise((resolve, reject) => {
      this.socket.once('open', () => resolve());
      this.socket.once('error', (error) =>
        reject(new Error(`watch ${url}: ${error.message}`, { cause: error })),
      );
      this.socket.once('unexpected-response', (req, res) => {
        // With this listener ws leaves the refused request open; close it or it outlives the test.
        req.destroy();
        reject(new Error(`watch upgrade refused with HTTP ${res.statusCode}`));
      });
    });
    this.opened.catch(() => undefined);
    this.socket.on('message', (data) => {
      const text = data.toString();
      try {
        this.messages.push(JSON.parse(text));
      } catch {
        this.messages.push(text);
      }
    });
    this.socket.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
    });
    this.socket.on('error', () => undefined);
  }

  /** Waits until at least `count` messages arrived. */
  async waitForMessages(count: number, timeoutMs = 5000): Promise<unknown[]> {
    await waitFor(() => this.messages.length >= count, {
      timeoutMs,
      message: () =>
        `${count} watch messages (got ${this.messages.length}: ${JSON.stringify(this.messages)})`,
    });
    return this.messages;
  }

  close(): void {
    this.socket.terminate();
  }
}

// ---------------------------------------------------------------------------------------------
// Agent status (docs/internal-api.md)

export interface ShardStatus {
  shard: number;
  role: 'pivot' | 'follower' | 'none';
  pivot: string;
  state: 'serving' | 'syncing' | 'wiping';
  position: { term: number; seq: number };
  committedSeq: number;
  lagSeq: number;
  /** At the pivot: each follower's replication state. */
  followers?: { name: string; applied: number; serving: boolean; mode: string; down: boolean }[];
  /** The shard's log: first seq still held and its approximate size. */
  log: { firstSeq: number; bytes: number };
}

export interface AgentStatus {
  name: string;
  clusterUid: string;
  epoch: number;
  ready: boolean;
  shards: ShardStatus[];
  wipes: { shard: number; at: string; reason: string; completed: boolean }[];
}

// ---------------------------------------------------------------------------------------------
// Cluster

export interface ClusterOptions {
  agents?: number;
  shards?: number;
  replicationFactor?: number;
  writeConcern?: WriteConcern;
  /** Small by default so failures surface in well under a second. */
  retryPolicy?: RetryPolicySpec;
  clusterId?: string;
  /** `null` runs without auth. */
  token?: string | null;
  logLevel?: string;
  /** Names are `${namePrefix}-0` … */
  namePrefix?: string;
  readyTimeoutMs?: number;
  /**
   * false: agents start as under the operator (`--cluster-uid`, no cluster file) and get their
   * map only from pushMap; start() pushes it unless `waitReady` is false.
   */
  clusterFile?: boolean;
  /** false: start() returns once every agent answers HTTP, before any readiness. */
  waitReady?: boolean;
  /** More command-line flags for every agent (e.g. `['--log-retain-bytes', '65536']`). */
  agentArgs?: string[];
}

export const TEST_RETRY_POLICY: RetryPolicySpec = {
  maxAttempts: 3,
  initialBackoff: '20ms',
  maxBackoff: '200ms',
  multiplier: 2,
  timeout: '1s',
};

interface AgentProcess {
  name: string;
  port: number;
  url: string;
  dataDir: string;
  logFile: string;
  child: ChildProcess | null;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null;
}

const livePids = new Set<number>();
process.on('exit', () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

export interface ClusterFile {
  clusterId: string;
  epoch: number;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
  retryPolicy: RetryPolicySpec;
  agents: { name: string; url: string }[];
  assignments?: ShardAssignment[];
}

/** Per shard, a digest of the content an agent holds for the given keys (local reads). */
export interface Write {
  key: string;
  data: unknown;
  /** The agent the request is sent to. */
  via: string;
}

export interface WriteOutcome extends Write {
  /** HTTP status, 0 when the request failed at the network level. */
  status: number;
  version?: string;
  reply: string;
}

export type ShardDigests = Map<number, { digest: string; entries: Map<string, string> }>;

export class Cluster {
  readonly root: string;
  readonly token: string | null;
  readonly clusterFilePath: string;
  readonly retryPolicy: RetryPolicy;
  readonly readyTimeoutMs: number;
  readonly logLevel: string;
  readonly agentArgs: string[];
  readonly usesClusterFile: boolean;
  clusterFile: ClusterFile;
  /** The newest map this harness knows (the cluster file's, then whatever pushMap sent). */
  map: ShardMap;
  private readonly agents = new Map<string, AgentProcess>();

  private constructor(root: string, options: Required<ClusterOptions>, ports: number[]) {
    this.root = root;
    this.token = options.token;
    this.readyTimeoutMs = options.readyTimeoutMs;
    this.logLevel = options.logLevel;
    this.agentArgs = options.agentArgs;
    this.usesClusterFile = options.clusterFile;
    this.clusterFilePath = path.join(root, 'cluster.json');
    this.retryPolicy = retryPolicyFromSpec(options.retryPolicy);
    const names = ports.map((_, i) => `${options.namePrefix}-${i}`);
    ports.forEach((port, i) => {
      const name = names[i]!;
      this.agents.set(name, {
        name,
        port,
        url: `http://127.0.0.1:${port}`,
        dataDir: path.join(root, name, 'data'),
        logFile: path.join(root, `${name}.log`),
        child: null,
        exited: null,
      });
    });
    this.clusterFile = {
      clusterId: options.clusterId,
      epoch: 1,
      shards: options.shards,
      replicationFactor: options.replicationFactor,
      writeConcern: options.writeConcern,
      retryPolicy: options.retryPolicy,
      agents: names.map((name) => ({ name, url: this.agents.get(name)!.url })),
    };
    this.map = {
      clusterUid: options.clusterId,
      epoch: 1,
      shards: options.shards,
      replicationFactor: options.replicationFactor,
      writeConcern: options.writeConcern,
      retryPolicy: this.retryPolicy,
      agents: this.clusterFile.agents,
      assignments: placeShards({
        shards: options.shards,
        replicationFactor: options.replicationFactor,
        agents: names.map((name) => ({ name })),
      }),
    };
  }

  /** Starts N agents from a generated cluster file and waits until every one is ready. */
  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    const opts: Required<ClusterOptions> = {
      agents: options.agents ?? 3,
      shards: options.shards ?? 4,
      replicationFactor: options.replicationFactor ?? 3,
      writeConcern: options.writeConcern ?? 'majority',
      retryPolicy: options.retryPolicy ?? TEST_RETRY_POLICY,
      clusterId: options.clusterId ?? `e2e-${randomBytes(4).toString('hex')}`,
      token: options.token === undefined ? randomBytes(16).toString('hex') : options.token,
      logLevel: options.logLevel ?? process.env.PIVOT_E2E_LOG_LEVEL ?? 'info',
      namePrefix: options.namePrefix ?? 'agent',
      agentArgs: options.agentArgs ?? [],
      readyTimeoutMs: options.readyTimeoutMs ?? 20_000,
      clusterFile: options.clusterFile ?? true,
      waitReady: options.waitReady ?? true,
    };
    const root = await mkdtemp(path.join(tmpdir(), 'pivot-e2e-'));
    const ports: number[] = [];
    while (ports.length < opts.agents) {
      const port = await freePort();
      if (!ports.includes(port)) ports.push(port);
    }
    const cluster = new Cluster(root, opts, ports);
    await cluster.writeClusterFile();
    if (cluster.token) await writeFile(path.join(root, 'token'), cluster.token + '\n', { mode: 0o600 });
    try {
      for (const name of cluster.names()) cluster.spawn(name);
      if (!opts.waitReady) {
        await Promise.all(cluster.names().map((name) => cluster.waitListening(name)));
        return cluster;
      }
      if (!opts.clusterFile) {
        await Promise.all(cluster.names().map((name) => cluster.waitListening(name)));
        await cluster.pushMapOrThrow(cluster.map);
      }
      await Promise.all(cluster.names().map((name) => cluster.waitReady(name)));
      await cluster.waitWritable();
    } catch (error) {
      await cluster.teardown({ keepFiles: true });
      throw annotate(error, cluster);
    }
    return cluster;
  }

  names(): string[] {
    return [...this.agents.keys()];
  }

  running(): string[] {
    return this.names().filter((n) => this.agents.get(n)!.child !== null);
  }

  url(name: string): string {
    return this.agent(name).url;
  }

  dataDir(name: string): string {
    return this.agent(name).dataDir;
  }

  pid(name: string): number | null {
    return this.agent(name).child?.pid ?? null;
  }

  client(name: string, options: { token?: string | null; timeoutMs?: number } = {}): PivotClient {
    return new PivotClient(
      this.url(name),
      options.token === undefined ? this.token : options.token,
      options.timeoutMs,
    );
  }

  /** Rewrites the cluster file (e.g. another clusterId); agents read it at start and on SIGHUP. */
  async writeClusterFile(changes: Partial<ClusterFile> = {}): Promise<void> {
    this.clusterFile = { ...this.clusterFile, ...changes };
    await writeFile(this.clusterFilePath, JSON.stringify(this.clusterFile, null, 2));
  }

  private agent(name: string): AgentProcess {
    const a = this.agents.get(name);
    if (!a) throw new Error(`no agent named ${name} (have ${this.names().join(', ')})`);
    return a;
  }

  private spawn(name: string): void {
    const a = this.agent(name);
    if (a.child) throw new Error(`${name} is already running (pid ${a.child.pid})`);
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PIVOT_')));
    const args = [
      AGENT_ENTRY,
      '--name',
      name,
      '--data-dir',
      a.dataDir,
      '--listen',
      `127.0.0.1:${a.port}`,
      '--advertise-url',
      a.url,
      ...(this.usesClusterFile
        ? ['--cluster-file', this.clusterFilePath]
        : ['--cluster-uid', this.map.clusterUid]),
      '--log-level',
      this.logLevel,
      ...this.agentArgs,
    ];
    if (this.token) args.push('--token-file', path.join(this.root, 'token'));
    const log = openSync(a.logFile, 'a');
    const child = spawn(NODE_BIN, args, { cwd: REPO_ROOT, env, stdio: ['ignore', log, log] });
    closeSync(log);
    if (child.pid === undefined) throw new Error(`could not start ${name}`);
    const pid = child.pid;
    livePids.add(pid);
    a.child = child;
    a.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        livePids.delete(pid);
        if (a.child === child) a.child = null;
        resolve({ code, signal });
      });
    });
  }

  /** Waits until `/readyz` answers 200; fails at once if the process exits. */
  async waitReady(name: string, timeoutMs = this.readyTimeoutMs): Promise<void> {
    const a = this.agent(name);
    await waitFor(
      async () => {
        if (!a.child) throw new Error(`${name} exited before becoming ready`);
        const res = await this.client(name, { timeoutMs: 1000 }).raw('GET', '/readyz');
        return res.status === 200;
      },
      { timeoutMs, message: `${name} /readyz to answer 200` },
    ).catch((error) => {
      if (!a.child) throw new Error(`${name} exited before becoming ready`);
      throw error;
    });
  }

  /**
   * Waits until every shard acknowledges a write: ready agents may still be establishing their
   * pivots or backing off from peers that started after them (503 meanwhile). One probe key per
   * shard is written through its pivot and deleted again.
   */
  async waitWritable(timeoutMs = this.readyTimeoutMs): Promise<void> {
    await Promise.all(
      this.map.assignments.map(async ({ shard }) => {
        const key = this.keyOnShard(shard, 'harness-probe');
        const client = this.client(this.pivotOf(shard), { timeoutMs: 5000 });
        let last = '';
        await waitFor(
          async () => {
            const r = await client.put(key, 'probe');
            last = `${r.status} ${r.text}`;
            return r.status === 200;
          },
          {
            timeoutMs,
            intervalMs: 100,
            message: () => `a write to shard ${shard} to succeed (last: ${last})`,
          },
        );
        const d = await client.delete(key);
        if (d.status !== 204) throw new Error(`deleting probe ${key} answered ${d.status}: ${d.text}`);
      }),
    );
    // A write succeeds with a majority; a test that then kills one copy needs the others to be
    // streaming already, not backed off after answering late at start.
    let lagging = '';
    await waitFor(
      async () => {
        for (const name of this.running()) {
          for (const s of (await this.status(name)).shards) {
            const bad = (s.followers ?? []).filter(
              (f) => this.running().includes(f.name) && (f.down || !f.serving || f.mode !== 'stream'),
            );
            if (bad.length) {
              lagging = `${name} shard ${s.shard}: ${JSON.stringify(bad)}`;
              return false;
            }
          }
        }
        return true;
      },
      { timeoutMs, intervalMs: 100, message: () => `every running follower to stream (${lagging})` },
    );
  }

  /** Waits until the agent answers HTTP at all (any status). */
  async waitListening(name: string, timeoutMs = this.readyTimeoutMs): Promise<void> {
    const a = this.agent(name);
    await waitFor(
      async () => {
        if (!a.child) throw new Error(`${name} exited`);
        await this.client(name, { timeoutMs: 1000 }).raw('GET', '/healthz');
        return true;
      },
      { timeoutMs, message: `${name} to accept HTTP` },
    );
  }

  /** SIGKILL the real process and wait until it is gone. */
  async kill9(name: string): Promise<void> {
    const a = this.agent(name);
    if (!a.child || !a.exited) throw new Error(`${name} is not running`);
    a.child.kill('SIGKILL');
    await a.exited;
  }

  /**
   * SIGSTOP: the process freezes (a long GC pause or a partition as its peers see it) but keeps its
   * sockets; `resume` (SIGCONT) lets it run on with whatever it believed before.
   */
  pause(name: string): void {
    const a = this.agent(name);
    if (!a.child) throw new Error(`${name} is not running`);
    a.child.kill('SIGSTOP');
  }

  resume(name: string): void {
    const a = this.agent(name);
    if (!a.child) throw new Error(`${name} is not running`);
    a.child.kill('SIGCONT');
  }

  /**
   * After a test: resume paused agents, restart stopped ones (newest map pushed) and wait until
   * every shard takes writes again, so one failing test does not fail the ones after it.
   */
  async heal(): Promise<void> {
    const down = this.names().filter((n) => !this.agents.get(n)!.child);
    for (const name of this.running()) this.resume(name);
    if (down.length === 0) return;
    await Promise.all(down.map((name) => this.restart(name)));
    await this.waitWritable();
  }

  /** SIGTERM, then wait for a graceful exit; returns the exit code. */
  async stop(name: string, timeoutMs = 10_000): Promise<number | null> {
    const a = this.agent(name);
    if (!a.child || !a.exited) throw new Error(`${name} is not running`);
    const child = a.child;
    child.kill('SIGTERM');
    // An unref'd timer: once the agent has exited it must not keep the test process alive.
    const result = await Promise.race([a.exited, delay(timeoutMs, null, { ref: false })]);
    if (result === null) {
      child.kill('SIGKILL');
      await a.exited;
      throw new Error(`${name} did not exit within ${timeoutMs} ms of SIGTERM (killed it)`);
    }
    return result.code;
  }

  /**
   * Starts a stopped agent again with the same data dir and port. If the harness pushed maps
   * since the cluster file was written, the newest one is pushed to it (as the operator would)
   * before waiting for readiness.
   */
  async restart(name: string, options: { waitReady?: boolean } = {}): Promise<void> {
    const a = this.agent(name);
    if (a.child) throw new Error(`${name} is still running; kill9() or stop() it first`);
    this.spawn(name);
    if (!this.usesClusterFile || this.map.epoch > this.clusterFile.epoch) {
      await this.waitListening(name);
      await this.pushMap(this.map, { to: [name] });
    }
    if (options.waitReady ?? true) await this.waitReady(name);
  }

  /**
   * PUT /_pivot/v1/shardmap to each target (default: every running agent) with the cluster's
   * retry policy. Returns the final HTTP status per agent (0 = unreachable after all retries).
   * The map becomes the harness's current map unless `remember` is false.
   */
  async pushMap(
    map: ShardMap,
    options: { to?: string[]; remember?: boolean } = {},
  ): Promise<Map<string, { status: number; body: unknown }>> {
    if (options.remember ?? true) this.map = map;
    const targets = options.to ?? this.running();
    const results = new Map<string, { status: number; body: unknown }>();
    await Promise.all(
      targets.map(async (name) => {
        try {
          const reply = await withRetry(this.retryPolicy, async () => {
            const r = await this.client(name, { timeoutMs: this.retryPolicy.timeoutMs }).raw(
              'PUT',
              '/_pivot/v1/shardmap',
              { body: map },
            );
            if (r.status >= 500) throw new Error(`${name} answered ${r.status}: ${r.text}`);
            if (r.status !== 200)
              throw new PermanentError(JSON.stringify({ status: r.status, body: r.body }));
            return r;
          });
          results.set(name, { status: reply.status, body: reply.body });
        } catch (error) {
          if (error instanceof PermanentError) {
            const { status, body } = JSON.parse(error.message) as { status: number; body: unknown };
            results.set(name, { status, body });
          } else results.set(name, { status: 0, body: String(error) });
        }
      }),
    );
    return results;
  }

  /** pushMap that fails unless every target answers 200. */
  async pushMapOrThrow(map: ShardMap, options: { to?: string[] } = {}): Promise<void> {
    const results = await this.pushMap(map, options);
    const refused = [...results].filter(([, r]) => r.status !== 200);
    if (refused.length)
      throw new Error(
        `map epoch ${map.epoch} refused: ${refused.map(([n, r]) => `${n} ${r.status} ${JSON.stringify(r.body)}`).join('; ')}`,
      );
  }

  /** The current map with epoch+1 and the given assignment changes applied. */
  nextMap(change: (assignments: ShardAssignment[]) => ShardAssignment[]): ShardMap {
    const assignments = change(this.map.assignments.map((a) => ({ ...a, followers: [...a.followers] })));
    return { ...this.map, epoch: this.map.epoch + 1, assignments };
  }

  /** A map (epoch+1) that promotes `newPivot` for `shard`; the old pivot becomes a follower. */
  promoteMap(shard: number, newPivot: string): ShardMap {
    return this.nextMap((assignments) => {
      const a = assignments[shard]!;
      if (!copiesOf(a).includes(newPivot)) throw new Error(`${newPivot} holds no copy of shard ${shard}`);
      assignments[shard] = {
        shard,
        pivot: newPivot,
        followers: copiesOf(a).filter((n) => n !== newPivot),
      };
      return assignments;
    });
  }

  async status(name: string): Promise<AgentStatus> {
    const r = await this.client(name, { timeoutMs: 5000 }).raw<AgentStatus>('GET', '/_pivot/v1/status');
    if (r.status !== 200) throw new Error(`${name} status answered ${r.status}: ${r.text}`);
    return r.body;
  }

  shardOf(key: string): number {
    return shardForKey(key, this.map.shards);
  }

  assignment(shard: number): ShardAssignment {
    return this.map.assignments[shard]!;
  }

  pivotOf(shard: number): string {
    return this.assignment(shard).pivot;
  }

  followersOf(shard: number): string[] {
    return this.assignment(shard).followers;
  }

  /** A top-level key `${prefix}-<n>` that lands on `shard` (also names a collection there). */
  keyOnShard(shard: number, prefix: string): string {
    for (let i = 0; i < 100_000; i++) {
      const key = `${prefix}-${i}`;
      if (this.shardOf(key) === shard) return key;
    }
    throw new Error(`no key with prefix ${prefix} on shard ${shard}`);
  }

  /** A shard the agent pivots, and one it follows (first found), per the current map. */
  shardWhere(name: string, role: 'pivot' | 'follower' | 'none'): number | undefined {
    return this.map.assignments.find((a) =>
      role === 'pivot'
        ? a.pivot === name
        : role === 'follower'
          ? a.followers.includes(name)
          : !copiesOf(a).includes(name),
    )?.shard;
  }

  /**
   * Reads `keys` (single keys and `coll/*` collections) with `?consistency=local` from one agent
   * and digests them per shard. Only shards the agent holds in the current map are read.
   */
  async localDigests(name: string, keys: readonly string[]): Promise<ShardDigests> {
    const client = this.client(name);
    const byShard: ShardDigests = new Map();
    const entry = (shard: number) => {
      let e = byShard.get(shard);
      if (!e) byShard.set(shard, (e = { digest: '', entries: new Map() }));
      return e;
    };
    for (const key of keys) {
      const shard = this.shardOf(key);
      if (!copiesOf(this.assignment(shard)).includes(name)) continue;
      const e = entry(shard);
      if (key.endsWith('/*')) {
        e.entries.set(key, '[collection]');
        for (const item of await client.listAll(key, { consistency: 'local' }))
          e.entries.set(item.key, JSON.stringify([item.data, item.version, item.created]));
      } else {
        const r = await client.get(key, { consistency: 'local' });
        if (r.status !== 200 && r.status !== 404)
          throw new Error(`${name} local GET ${key} answered ${r.status}: ${r.text}`);
        e.entries.set(key, r.status === 404 ? '404' : JSON.stringify([r.body.data, r.body.version]));
      }
    }
    for (const e of byShard.values()) {
      const hash = createHash('sha256');
      for (const k of [...e.entries.keys()].sort()) hash.update(`${k}\u0000${e.entries.get(k)}\u0000`);
      e.digest = hash.digest('hex');
    }
    return byShard;
  }

  /**
   * Waits until every running holder of each shard has the same content for `keys` as the
   * shard's pivot. Returns that content: every present key (collection items included) with its
   * data and version. The timeout message names the shard,
   * the agents and a few differing keys.
   */
  async waitConverged(
    keys: readonly string[],
    options: { timeoutMs?: number; agents?: string[] } = {},
  ): Promise<Map<string, { data: unknown; version: string }>> {
    let problem = '';
    const perShard = await waitFor(
      async () => {
        const agents = options.agents ?? this.running();
        const digests = new Map<string, ShardDigests>();
        for (const name of agents) digests.set(name, await this.localDigests(name, keys));
        const result = new Map<number, Map<string, string>>();
        for (const a of this.map.assignments) {
          const holders = copiesOf(a).filter((n) => agents.includes(n));
          const reference = holders.includes(a.pivot) ? a.pivot : holders[0];
          if (!reference) continue;
          const ref = digests.get(reference)!.get(a.shard);
          if (!ref) continue;
          for (const other of holders) {
            const mine = digests.get(other)!.get(a.shard)!;
            if (mine.digest !== ref.digest) {
              problem = `shard ${a.shard}: ${other} differs from ${reference}: ${describeDiff(ref.entries, mine.entries)}`;
              return false;
            }
          }
          result.set(a.shard, ref.entries);
        }
        return result;
      },
      {
        timeoutMs: options.timeoutMs ?? 20_000,
        intervalMs: 200,
        message: () => `every copy to hold the same content (${problem || 'no comparison finished'})`,
      },
    );
    const content = new Map<string, { data: unknown; version: string }>();
    for (const entries of perShard.values()) {
      for (const [key, value] of entries) {
        if (value === '404' || value === '[collection]') continue;
        const [data, version] = JSON.parse(value) as [unknown, string];
        content.set(key, { data, version });
      }
    }
    return content;
  }

  /**
   * PUTs every write through its `via` agent, at most `concurrency` at once. Network errors (an
   * agent killed mid-request) become outcomes with status 0 instead of throwing.
   */
  async writeAll(writes: readonly Write[], concurrency = 16): Promise<WriteOutcome[]> {
    return mapLimit(writes, concurrency, async (w) => {
      try {
        const r = await this.client(w.via).put(w.key, w.data);
        return {
          ...w,
          status: r.status,
          version: r.status === 200 ? r.body.version : undefined,
          reply: r.text,
        };
      } catch (error) {
        return { ...w, status: 0, reply: String(error) };
      }
    });
  }

  logTail(name: string, lines = 40): string {
    try {
      const text = readFileSync(this.agent(name).logFile, 'utf8');
      return text
        .split('\n')
        .slice(-lines - 1)
        .join('\n');
    } catch {
      return '(no log)';
    }
  }

  logTails(lines = 40): string {
    return this.names()
      .map(
        (n) => `----- ${n} (${this.agent(n).logFile}) last ${lines} lines -----\n${this.logTail(n, lines)}`,
      )
      .join('\n');
  }

  /** Kills every agent still running (SIGKILL) and removes the temp dir unless asked to keep it. */
  async teardown(options: { keepFiles?: boolean } = {}): Promise<void> {
    await Promise.all(
      [...this.agents.values()].map(async (a) => {
        if (!a.child || !a.exited) return;
        a.child.kill('SIGKILL');
        await a.exited;
      }),
    );
    if (!options.keepFiles && !process.env.PIVOT_E2E_KEEP) {
      await rm(this.root, { recursive: true, force: true });
    }
  }
}

function describeDiff(a: Map<string, string>, b: Map<string, string>): string {
  const out: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    if (a.get(k) !== b.get(k)) out.push(`${k}: ${a.get(k) ?? 'absent'} vs ${b.get(k) ?? 'absent'}`);
    if (out.length >= 3) break;
  }
  return out.join('; ');
}

/** Appends the agents' log tails to a failure so the jest report shows what the agents saw. */
export function annotate(error: unknown, cluster: Cluster | undefined): unknown {
  if (!cluster) return error;
  // Errors raised by Node's own modules come from another realm than jest's test code, so
  // `instanceof Error` is false for them: wrap those to keep their stack and the log tails.
  const wrapped = error instanceof Error ? error : new Error(String(error), { cause: error });
  if (!(error instanceof Error) && typeof error === 'object' && error !== null && 'stack' in error)
    wrapped.stack = String(error.stack);
  wrapped.message += `\n\n${cluster.logTails(30)}`;
  return wrapped;
}

/** The first `limit` writes that were not acknowledged, one short line each (no values). */
export function refused(outcomes: readonly WriteOutcome[], limit = 5): string[] {
  return outcomes
    .filter((o) => o.status !== 200)
    .slice(0, limit)
    .map((o) => `${o.key} via ${o.via}: ${o.status} ${o.reply.slice(0, 200)}`);
}

/** Runs `fn` over `items` with at most `limit` in flight; results keep the input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Asserts the contract's error shape `{ error: { code, message } }` and returns the code. */
export function errorCode(reply: Reply): string {
  const body = reply.body as { error?: { code?: unknown; message?: unknown } };
  if (typeof body?.error?.code !== 'string' || typeof body.error.message !== 'string')
    throw new Error(`HTTP ${reply.status} without a JSON { error: { code, message } } body: ${reply.text}`);
  return body.error.code;
}
