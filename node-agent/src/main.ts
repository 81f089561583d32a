// The agent process: `node node-agent/src/main.ts [flags]` (docs/internal-api.md).
import { mkdirSync } from 'node:fs';
import pino from 'pino';
import { Agent } from './agent.ts';
import { buildServer } from './api/server.ts';
import { parseConfig, readClusterFile } from './config.ts';
import { createMetrics } from './metrics.ts';
import { Store } from './storage/store.ts';

async function main() {
  const config = parseConfig(process.argv.slice(2), process.env);
  const log = pino({ level: config.logLevel, base: { agent: config.name } });
  if (!config.token) log.warn('no auth token configured: every route is open (local use only)');
  const fileMap = config.clusterFile ? readClusterFile(config.clusterFile) : undefined;
  const clusterUid = config.clusterUid ?? fileMap?.clusterUid ?? '';
  if (fileMap && config.clusterUid && fileMap.clusterUid !== config.clusterUid)
    throw new Error(`cluster file is for ${fileMap.clusterUid}, --cluster-uid says ${config.clusterUid}`);

  mkdirSync(config.dataDir, { recursive: true });
  const { store, foreignWiped } = await Store.open(config.dataDir, clusterUid);
  // A failed commit or fsync leaves memory ahead of the disk: stop, and recover from disk on restart.
  store.onFatal = (error) => {
    log.fatal({ err: error }, 'storage commit failed; exiting so a restart recovers from disk');
    log.flush?.();
    process.exit(70);
  };
  const metrics = createMetrics();
  if (foreignWiped.length) {
    log.warn({ shards: foreignWiped }, 'wiped data that belonged to another cluster');
    metrics.wipes.inc({ reason: 'another cluster' }, foreignWiped.length);
  }
  const agent = new Agent(config, store, metrics, log);
  const stored = store.loadMap();
  if (stored) await agent.applyMap(stored, 'storage');
  if (fileMap && fileMap.epoch > agent.epoch()) await agent.applyMap(fileMap, 'cluster file');
  else if (fileMap && !stored) await agent.applyMap(fileMap, 'cluster file');

  const app = await buildServer(agent);
  await app.listen({ host: config.host, port: config.port });
  log.info({ url: config.advertiseUrl, epoch: agent.epoch() }, 'agent listening');

  process.on('SIGHUP', () => {
    if (!config.clusterFile) return;
    try {
      const next = readClusterFile(config.clusterFile);
      if (next.epoch > agent.epoch())
        void agent
          .applyMap(next, 'cluster file')
          .catch((e: Error) => log.error({ err: e.message }, 'cluster file refused'));
      else log.info({ epoch: next.epoch }, 'cluster file not newer; nothing to apply');
    } catch (error) {
      log.error({ err: (error as Error).message }, 'cannot re-read the cluster file');
    }
  });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: draining requests');
    const force = setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, 15_000);
    try {
      // Stop accepting and wait for in-flight requests (their waits are bounded by the retry
      // policy); connections still busy after the drain period are cut.
      const drained = app.close();
      const drainTimer = setTimeout(() => {
        log.warn('requests still in flight after 5 s; closing their connections');
        app.server.closeAllConnections();
      }, 5000);
      await drained;
      clearTimeout(drainTimer);
      log.info('requests drained');
      await agent.close();
      await store.close(); // flushes pending commits
      clearTimeout(force);
      log.info('stopped');
      log.flush?.();
      process.exit(0);
    } catch (error) {
      log.error({ err: (error as Error).message }, 'shutdown failed');
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((error: Error) => {
  process.stderr.write(`pivot agent: fatal: ${error.stack ?? error.message}\n`);
  process.exit(1);
});
