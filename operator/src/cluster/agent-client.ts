// The operator's calls to agents (docs/internal-api.md): read their status, push the shard map.
// Pushes use the cluster's retry policy; a refusal (4xx, stale epoch) is permanent.
import { PermanentError, withRetry, type RetryPolicy } from '../../../lib/retry.ts';
import type { ShardMap } from '../../../lib/shard-map.ts';
import type { AgentStatus } from './types.ts';

export interface AgentClient {
  /** One attempt bounded by the policy's timeout; null when the agent does not answer. */
  status(url: string, token: string | null, policy: RetryPolicy): Promise<AgentStatus | null>;
  pushMap(
    url: string,
    token: string | null,
    map: ShardMap,
    policy: RetryPolicy,
    signal?: AbortSignal,
  ): Promise<void>;
}

const headers = (token: string | null): Record<string, string> =>
  token ? { authorization: `Bearer ${token}` } : {};

export const httpAgentClient: AgentClient = {
  async status(url, token, policy) {
    try {
      const res = await fetch(new URL('/_pivot/v1/status', url), {
        headers: headers(token),
        signal: AbortSignal.timeout(policy.timeoutMs),
      });
      if (!res.ok) {
        await res.body?.cancel();
        return null;
      }
      const body = (await res.json()) as AgentStatus;
      return typeof body?.epoch === 'number' && Array.isArray(body.shards) ? body : null;
    } catch {
      return null;
    }
  },

  async pushMap(url, token, map, policy, signal) {
    await withRetry(
      policy,
      async (attemptSignal) => {
        const res = await fetch(new URL('/_pivot/v1/shardmap', url), {
          method: 'PUT',
          headers: { ...headers(token), 'content-type': 'application/json' },
          body: JSON.stringify(map),
          signal: attemptSignal,
        });
        const text = await res.text();
        if (res.ok) return;
        const message = `PUT ${url}/_pivot/v1/shardmap epoch ${map.epoch}: ${res.status} ${text.slice(0, 300)}`;
        if (res.status >= 400 && res.status < 500) throw new PermanentError(message);
        throw new Error(message);
      },
      { signal },
    );
  },
};
