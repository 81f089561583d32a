import { describe, expect, it } from '@jest/globals';
import { ConfigError, parseConfig, shardMapFromClusterFile } from './config.ts';

describe('parseConfig', () => {
  it('reads env, and flags win', () => {
    const c = parseConfig(['--name', 'from-flag', '--listen', '127.0.0.1:7100'], {
      PIVOT_AGENT_NAME: 'from-env',
      PIVOT_DATA_DIR: '/d',
      PIVOT_AUTH_TOKEN: 'tok',
      PIVOT_LOG_RETAIN: '50',
      PIVOT_LOG_RETAIN_BYTES: '4096',
      PIVOT_PEER_CONNECTIONS: '8',
    });
    expect(c).toMatchObject({
      name: 'from-flag',
      dataDir: '/d',
      host: '127.0.0.1',
      port: 7100,
      token: 'tok',
      logRetain: 50,
      logRetainBytes: 4096,
      peerConnections: 8,
    });
    expect(parseConfig([], {}).logRetainBytes).toBe(32 * 2 ** 20);
    expect(parseConfig([], {}).peerConnections).toBe(32);
    expect(c.advertiseUrl).toBe('http://127.0.0.1:7100');
  });

  it.each([
    [['--listen', 'nonsense'], {}],
    [['--log-retain', '0'], {}],
    [['--log-retain-bytes', '1.5'], {}],
    [['--peer-connections', '0'], {}],
    [['--unknown-flag', 'x'], {}],
  ])('refuses %j', (argv, env) => expect(() => parseConfig(argv, env)).toThrow());
});

describe('shardMapFromClusterFile', () => {
  const agents = [0, 1, 2].map((i) => ({ name: `a-${i}`, url: `http://127.0.0.1:${7100 + i}` }));
  it('computes placement and the retry policy', () => {
    const map = shardMapFromClusterFile({
      clusterId: 'local',
      epoch: 1,
      shards: 8,
      replicationFactor: 3,
      agents,
      retryPolicy: { timeout: '1s' },
    });
    expect(map.assignments).toHaveLength(8);
    expect(map.writeConcern).toBe('majority');
    expect(map.retryPolicy.timeoutMs).toBe(1000);
    for (const a of map.assignments) expect(new Set([a.pivot, ...a.followers]).size).toBe(3);
  });

  it.each([
    [{ epoch: 1, shards: 8, replicationFactor: 3, agents }, 'clusterId'],
    [{ clusterId: 'x', epoch: 1, shards: 0, replicationFactor: 3, agents }, 'shards'],
    [
      {
        clusterId: 'x',
        epoch: 1,
        shards: 2,
        replicationFactor: 1,
        agents,
        assignments: [{ shard: 0, pivot: 'zz', followers: [] }],
      },
      'assignments',
    ],
  ])('refuses an invalid file (%#)', (file, word) => {
    expect(() => shardMapFromClusterFile(file as never)).toThrow(ConfigError);
    expect(() => shardMapFromClusterFile(file as never)).toThrow(new RegExp(word));
  });
});
