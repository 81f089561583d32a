// Jest wiring for the harness (kept apart so bench/ can import harness.ts outside jest).
import { afterAll, afterEach, beforeAll, it } from '@jest/globals';
import { annotate, closeConnections, Cluster, type ClusterOptions } from './harness.ts';

/**
 * Starts a cluster in beforeAll and tears it down in afterAll (every process SIGKILLed, even when
 * tests failed). `test` is `it` with the cluster passed in and agent log tails appended to failures.
 */
export function useCluster(options: ClusterOptions = {}, startTimeoutMs = 60_000) {
  let cluster: Cluster | undefined;
  beforeAll(async () => {
    cluster = await Cluster.start(options);
  }, startTimeoutMs);
  afterAll(async () => {
    await cluster?.teardown();
    await closeConnections();
  }, 30_000);
  afterEach(async () => {
    await cluster?.heal();
  }, 60_000);
  const get = (): Cluster => {
    if (!cluster) throw new Error('cluster did not start (see the beforeAll failure)');
    return cluster;
  };
  const test = (name: string, fn: (c: Cluster) => Promise<void>, timeoutMs = 30_000) =>
    it(
      name,
      async () => {
        const c = get();
        try {
          await fn(c);
        } catch (error) {
          throw annotate(error, c);
        }
      },
      timeoutMs,
    );
  return { cluster: get, test };
}
