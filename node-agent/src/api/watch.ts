// GET /v1/watch/<key or collection/*> (WebSocket): a snapshot, then one message per change.
// `?since=<version>` resumes: the changes after that version are replayed from the shard's log,
// or, when the log no longer reaches back, a fresh snapshot marked `"reset": true` is sent.
// An agent without a copy of the shard relays the pivot's stream.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import WebSocket from 'ws';
import { parseKey, routingKey, type ParsedKey } from '../../../lib/keys.ts';
import { shardOfRoutingKey } from '../../../lib/hash.ts';
import type { Agent } from '../agent.ts';
import { parseVersion, recordJson, recordsJson, versionOf, type LogEntry } from '../storage/records.ts';
import { termAt } from '../replication/history.ts';
import { keyFromUrl, MAX_PAGE } from './data.ts';
import { ApiError } from './errors.ts';

export function entryMessage(e: LogEntry): string {
  return e.op === 'put'
    ? `{"type":"set","version":"${versionOf(e.term, e.seq)}","object":${recordJson(e.record!)}}`
    : `{"type":"delete","key":${JSON.stringify(e.key)},"version":"${versionOf(e.term, e.seq)}"}`;
}

export const entryMatches = (parsed: ParsedKey, e: LogEntry) =>
  parsed.kind === 'single' ? e.key === parsed.key : e.parent === parsed.collection;

export function watchRoutes(agent: Agent) {
  return async (app: FastifyInstance) => {
    app.get<{ Querystring: { since?: string } }>('/v1/watch/*', { websocket: true }, (socket, req) => {
      const fail = (code: string, message: string) => {
        socket.send(JSON.stringify({ type: 'error', error: { code, message } }));
        socket.close(1008, code);
      };
      let parsed: ParsedKey;
      let since: { term: number; seq: number } | null = null;
      try {
        parsed = parseKey(keyFromUrl(req.url, '/v1/watch/'));
        if (req.query.since !== undefined) {
          since = parseVersion(req.query.since);
          if (!since) throw new ApiError(400, 'INVALID_QUERY', 'since must be a version like 3.1042');
        }
      } catch (error) {
        return fail(error instanceof ApiError ? error.code : 'INVALID_KEY', (error as Error).message);
      }
      if (!agent.map) return fail('SHARD_UNAVAILABLE', 'this agent has no shard map yet');
      const shard = shardOfRoutingKey(routingKey(parsed), agent.map.shards);
      const rt = agent.shards.get(shard)!;
      if (rt.role === 'none') return relay(agent, req, socket, rt.pivot);

      let sentSeq = 0;
      const onChange = (s: number, entries: LogEntry[]) => {
        if (s !== shard) return;
        for (const e of entries) {
          if (e.seq <= sentSeq) continue;
          sentSeq = e.seq;
          if (entryMatches(parsed, e)) socket.send(entryMessage(e));
        }
      };
      // This copy was wiped (to be copied afresh, or removed): its history no longer continues
      // what was sent. Close so the client reconnects with ?since= and gets a reset snapshot.
      const onReset = (s: number) => {
        if (s === shard) socket.close(1012, 'copy replaced; reconnect with since');
      };
      // Subscribe and read in the same tick: every later commit reaches onChange.
      agent.changes.on('shard', onChange);
      agent.changes.on('reset', onReset);
      socket.on('close', () => {
        agent.changes.off('shard', onChange);
        agent.changes.off('reset', onReset);
      });
      const pos = agent.store.position(shard);
      const meta = agent.store.shardMeta(shard);
      sentSeq = pos.seq;
      // Replay only when `since` is in this copy's history (same term at that seq) and the log
      // still reaches back to it; otherwise the client gets a fresh snapshot marked reset.
      const resumable =
        since !== null &&
        since.seq >= meta.firstLogSeq - 1 &&
        since.seq <= pos.seq &&
        (since.seq === 0 || termAt(meta.history, since.seq) === since.term);
      if (resumable && since) {
        for (let from = since.seq + 1; from <= pos.seq;) {
          const entries = agent.store.readLog(shard, from, 1000);
          if (entries.length === 0) break;
          for (const e of entries) if (entryMatches(parsed, e)) socket.send(entryMessage(e));
          from = entries[entries.length - 1]!.seq + 1;
        }
        return;
      }
      const version = versionOf(pos.term, pos.seq);
      const reset = since ? ',"reset":true' : '';
      if (parsed.kind === 'single') {
        const r = agent.store.get(shard, parsed.collection ?? '', parsed.index);
        socket.send(
          `{"type":"snapshot","version":"${version}"${reset},"data":${r ? recordJson(r) : 'null'}}`,
        );
      } else {
        const list = agent.store.list(shard, parsed.collection, undefined, MAX_PAGE);
        const items = list.found ? list.items : [];
        socket.send(`{"type":"snapshot","version":"${version}"${reset},"data":${recordsJson(items)}}`);
      }
    });
  };
}

function relay(agent: Agent, req: FastifyRequest, socket: WebSocket, pivot: string) {
  const base = agent.urlOf(pivot);
  if (!base) {
    socket.close(1011, 'no pivot');
    return;
  }
  const upstream = new WebSocket(base.replace(/^http/, 'ws') + req.url, {
    headers: agent.config.token ? { authorization: `Bearer ${agent.config.token}` } : {},
  });
  upstream.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  // 1005/1006 (no status, abnormal) may not be sent on the wire: the pivot went away.
  const sendable = (code: number) =>
    code === 1000 || (code >= 1001 && code <= 1014 && code !== 1005 && code !== 1006);
  upstream.on('close', (code) => socket.close(sendable(code) ? code : 1011, 'pivot stream ended'));
  upstream.on('error', () => socket.close(1011, 'pivot unreachable'));
  socket.on('close', () => upstream.terminate());
}
