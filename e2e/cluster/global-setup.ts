// Jest globalSetup for the `cluster` project: one real local cluster per test run, shared by every
// test file (each file works in its own namespace). Test files find it through KUBECONFIG and
// PIVOT_CLUSTER_STATE (the state file: API server URL, cert dir, nodes, image map, bin dir).
import { startLocalCluster, sweepAbandonedClusters } from '../../hack/local-cluster/cluster.ts';

export default async function globalSetup(): Promise<void> {
  const log = (line: string) => process.stderr.write(`[cluster e2e] ${line}\n`);
  // A run that crashed or was killed leaves its cluster behind; its owner PID is dead now.
  for (const name of await sweepAbandonedClusters(log)) log(`removed abandoned cluster ${name}`);
  const cluster = await startLocalCluster({
    name: `e2e-${process.pid}`,
    nodes: Number(process.env.PIVOT_CLUSTER_NODES ?? 3),
    ownerPid: process.pid,
    build: true,
    // operator/test/steady-state.test.ts counts the operator's write requests in it.
    auditLog: true,
    log,
  });
  process.env.KUBECONFIG = cluster.kubeconfigPath;
  process.env.PIVOT_CLUSTER_STATE = cluster.statePath;
  process.env.PIVOT_CLUSTER_NAME = cluster.name;
}
