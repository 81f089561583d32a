// The API server itself refuses invalid PivotClusters, with messages that say what to fix.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { createCluster, getCluster, patchSpec, pivotCluster, startEnv, type TestEnv } from './harness.ts';

jest.setTimeout(120_000);

let env: TestEnv;
beforeAll(async () => {
  env = await startEnv('pivot-crd');
}, 180_000);
afterAll(async () => {
  await env?.teardown();
});

const refusal = async (promise: Promise<unknown>): Promise<string> => {
  try {
    await promise;
  } catch (e) {
    const err = e as { code?: number; body?: unknown };
    expect(err.code).toBe(422);
    // The Status object's message, HTML-escaped characters decoded.
    const status = (typeof err.body === 'string' ? JSON.parse(err.body) : err.body) as { message: string };
    return status.message;
  }
  throw new Error('the API server accepted an invalid PivotCluster');
};

describe('PivotCluster validation by the API server', () => {
  it('applies the defaults of the contract to a minimal spec', async () => {
    await createCluster(env, { ...pivotCluster('minimal', {}, env.namespace), spec: {} as never });
    const pc = await getCluster(env, 'minimal');
    expect(pc.spec).toEqual({
      replicas: 3,
      shards: 16,
      replicationFactor: 3,
      writeConcern: 'majority',
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '100ms',
        maxBackoff: '5s',
        multiplier: 2,
        timeout: '2s',
      },
      failover: { notReadyGracePeriod: '1s' },
      storage: { size: '1Gi', retentionPolicy: 'Retain' },
    });
  });

  it.each([
    {
      name: 'rf above replicas',
      spec: { replicas: 2, replicationFactor: 3 },
      says: 'replicationFactor must be <= replicas',
    },
    { name: 'no shards', spec: { shards: 0 }, says: 'spec.shards' },
    { name: 'too many shards', spec: { shards: 4097 }, says: 'less than or equal to 4096' },
    { name: 'rf above 7', spec: { replicas: 9, replicationFactor: 8 }, says: 'less than or equal to 7' },
    {
      name: 'unknown write concern',
      spec: { writeConcern: 'most' },
      says: 'supported values: "one", "majority", "all"',
    },
    {
      name: 'bad duration',
      spec: { retryPolicy: { timeout: '2 seconds' } },
      says: 'must be a duration such as 500ms',
    },
    {
      name: 'bad grace period',
      spec: { failover: { notReadyGracePeriod: '1' } },
      says: 'must be a duration',
    },
    {
      name: 'backoff bounds reversed',
      spec: { retryPolicy: { initialBackoff: '10s', maxBackoff: '1s' } },
      says: 'maxBackoff must be >= retryPolicy.initialBackoff',
    },
    { name: 'bad storage size', spec: { storage: { size: 'lots' } }, says: 'spec.storage.size' },
  ])('refuses $name', async ({ spec, says }) => {
    const body = await refusal(createCluster(env, pivotCluster('bad', spec as never, env.namespace)));
    expect(body).toContain(says);
  });

  it('refuses changing shards after creation, and rf above a scaled-down replicas', async () => {
    await createCluster(env, pivotCluster('fixed', { replicas: 3, replicationFactor: 2 }, env.namespace));
    expect(await refusal(patchSpec(env, 'fixed', { shards: 32 }))).toContain('shards is immutable');
    expect(await refusal(patchSpec(env, 'fixed', { replicas: 1 }))).toContain(
      'replicationFactor must be <= replicas',
    );
    await patchSpec(env, 'fixed', { replicas: 5 });
    expect((await getCluster(env, 'fixed')).spec.replicas).toBe(5);
  });
});
