// Agent configuration: flags and environment (docs/internal-api.md), and the standalone cluster
// file, turned into the same ShardMap the operator would push.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { placeShards } from '../../lib/placement.ts';
import { retryPolicyFromSpec, type RetryPolicySpec } from '../../lib/retry.ts';
import {
  validateShardMap,
  type AgentInfo,
  type ShardAssignment,
  type ShardMap,
  type WriteConcern,
} from '../../lib/shard-map.ts';

export interface AgentConfig {
  name: string;
  dataDir: string;
  host: string;
  port: number;
  advertiseUrl: string;
  clusterFile?: string;
  clusterUid?: string;
  token?: string;
  logLevel: string;
  /** Log entries kept per shard for catch-up before a follower needs a snapshot. */
  logRetain: number;
  /** The same bound in bytes (values of a few MB would otherwise make the entry bound huge). */
  logRetainBytes: number;
  /** Connections to each peer, per kind of traffic (replication, forwarded requests). */
  peerConnections: number;
}

const FLAGS = {
  name: 'PIVOT_AGENT_NAME',
  'data-dir': 'PIVOT_DATA_DIR',
  listen: 'PIVOT_LISTEN',
  'advertise-url': 'PIVOT_ADVERTISE_URL',
  'cluster-file': 'PIVOT_CLUSTER_FILE',
  'cluster-uid': 'PIVOT_CLUSTER_UID',
  'token-file': 'PIVOT_AUTH_TOKEN_FILE',
  'log-level': 'PIVOT_LOG_LEVEL',
  'log-retain': 'PIVOT_LOG_RETAIN',
  'log-retain-bytes': 'PIVOT_LOG_RETAIN_BYTES',
  'peer-connections': 'PIVOT_PEER_CONNECTIONS',
} as const;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Flags win over environment variables. */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): AgentConfig {
  const { values } = parseArgs({
    args: argv,
    options: Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' as const }])),
    strict: true,
  });
  const get = (flag: keyof typeof FLAGS) => (values[flag] as string | undefined) ?? env[FLAGS[flag]];
  const listen = get('listen') ?? '0.0.0.0:8080';
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new ConfigError(`--listen must be host:port, got ${JSON.stringify(listen)}`);
  const host = m[1]!.replace(/^\[|\]$/g, '');
  const port = Number(m[2]);
  const advertiseHost = host === '0.0.0.0' || host === '::' ? hostname() : host;
  const tokenFile = get('token-file');
  const token = tokenFile ? readFileSync(tokenFile, 'utf8').trim() : env.PIVOT_AUTH_TOKEN || undefined;
  if (tokenFile && !token) throw new ConfigError(`token file ${tokenFile} is empty`);
  const logRetain = Number(get('log-retain') ?? 20_000);
  if (!Number.isInteger(logRetain) || logRetain < 1)
    throw new ConfigError('--log-retain must be an integer >= 1');
  const logRetainBytes = Number(get('log-retain-bytes') ?? 32 * 2 ** 20);
  if (!Number.isInteger(logRetainBytes) || logRetainBytes < 1)
    throw new ConfigError('--log-retain-bytes must be an integer >= 1');
  const peerConnections = Number(get('peer-connections') ?? 32);
  if (!Number.isInteger(peerConnections) || peerConnections < 1)
    throw new ConfigError('--peer-connections must be an integer >= 1');
  const clusterFile = get('cluster-file');
  const clusterUid = get('cluster-uid');
  return {
    name: get('name') ?? hostname(),
    dataDir: get('data-dir') ?? './data',
    host,
    port,
    advertiseUrl:
      get('advertise-url') ??
      `http://${advertiseHost.includes(':') ? `[${advertiseHost}]` : advertiseHost}:${port}`,
    ...(clusterFile ? { clusterFile } : {}),
    ...(clusterUid ? { clusterUid } : {}),
    ...(token ? { token } : {}),
    logLevel: get('log-level') ?? 'info',
    logRetain,
    logRetainBytes,
    peerConnections,
  };
}

export interface ClusterFile {
  clusterId: string;
  epoch: number;
  shards: number;
  replicationFactor: number;
  writeConcern?: WriteConcern;
  retryPolicy?: RetryPolicySpec;
  agents: AgentInfo[];
  assignments?: ShardAssignment[];
}

/** The shard map a cluster file describes; placement is computed when it names no assignments. */
export function shardMapFromClusterFile(file: ClusterFile): ShardMap {
  if (!file || typeof file !== 'object') throw new ConfigError('cluster file must be a JSON object');
  if (typeof file.clusterId !== 'string' || !file.clusterId)
    throw new ConfigError('cluster file needs clusterId');
  if (!Array.isArray(file.agents) || file.agents.length === 0)
    throw new ConfigError('cluster file needs agents');
  const map: ShardMap = {
    clusterUid: file.clusterId,
    epoch: file.epoch,
    shards: file.shards,
    replicationFactor: file.replicationFactor,
    writeConcern: file.writeConcern ?? 'majority',
    retryPolicy: retryPolicyFromSpec(file.retryPolicy),
    agents: file.agents,
    assignments:
      file.assignments ??
      placeShards({ shards: file.shards, replicationFactor: file.replicationFactor, agents: file.agents }),
  };
  const problems = validateShardMap(map);
  if (problems.length) throw new ConfigError(`cluster file is invalid: ${problems.join('; ')}`);
  return map;
}

export function readClusterFile(path: string): ShardMap {
  let parsed: ClusterFile;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as ClusterFile;
  } catch (error) {
    throw new ConfigError(`cannot read cluster file ${path}: ${(error as Error).message}`);
  }
  return shardMapFromClusterFile(parsed);
}
