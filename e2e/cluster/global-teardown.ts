// Jest globalTeardown for the `cluster` project: removes the run's cluster (processes, pod network
// namespaces, bridge, files). A run killed before this point is swept by the next globalSetup.
import { downCluster } from '../../hack/local-cluster/cluster.ts';

export default async function globalTeardown(): Promise<void> {
  const name = process.env.PIVOT_CLUSTER_NAME;
  if (name) await downCluster(name, (line) => process.stderr.write(`[cluster e2e] ${line}\n`));
}
