// npm run cluster:up [-- --name N --nodes 3]   start a local cluster and print `export KUBECONFIG=…`
// npm run cluster:down [-- --name N]           remove it (processes, namespaces, bridge, files)
// node hack/local-cluster/cli.ts status [--name N]
// node hack/local-cluster/cli.ts sweep                remove clusters whose owner process died (crashed test runs)
import { parseArgs } from 'node:util';
import { downCluster, isAlive, readState, startLocalCluster, sweepAbandonedClusters } from './cluster.ts';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { name: { type: 'string', default: 'pivot' }, nodes: { type: 'string', default: '3' } },
});
const command = positionals[0];
const name = values.name;

if (command === 'up') {
  const cluster = await startLocalCluster({ name, nodes: Number(values.nodes), build: true });
  process.stdout.write(`export KUBECONFIG=${cluster.kubeconfigPath}\n`);
} else if (command === 'down') {
  await downCluster(name, (l) => process.stderr.write(`[local-cluster] ${l}\n`));
} else if (command === 'sweep') {
  const swept = await sweepAbandonedClusters((l) => process.stderr.write(`[local-cluster] ${l}\n`));
  process.stdout.write(swept.length ? `removed: ${swept.join(' ')}\n` : 'no abandoned clusters\n');
} else if (command === 'status') {
  const state = await readState(name);
  if (!state) {
    process.stdout.write(`cluster ${name}: not running\n`);
    process.exitCode = 1;
  } else {
    process.stdout.write(
      `cluster ${name}: ${state.ready ? 'ready' : 'starting'} at ${state.apiServerUrl}\nexport KUBECONFIG=${state.kubeconfigPath}\n`,
    );
    for (const p of state.processes)
      process.stdout.write(`  ${p.role.padEnd(24)} pid ${p.pid} ${isAlive(p.pid) ? 'running' : 'DEAD'}\n`);
  }
} else {
  process.stderr.write('usage: cli.ts up|down|status|sweep [--name NAME] [--nodes N]\n');
  process.exitCode = 2;
}
