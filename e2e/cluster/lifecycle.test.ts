// The local cluster's own lifecycle: a cluster whose owner process died (a crashed test run) is
// removed completely by the next sweep — control plane, kubelet stand-in, pod processes, network
// namespaces, bridge and files.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from '@jest/globals';
import { apiClient } from '../../hack/local-cluster/api.ts';
import { certPaths } from '../../hack/local-cluster/certs.ts';
import {
  downCluster,
  startLocalCluster,
  sweepAbandonedClusters,
  readClusterState,
} from '../../hack/local-cluster/cluster.ts';
import { isAlive, isReady, podHttp, testCluster, waitFor, type Pod } from './kube.ts';

const name = `crash-${process.pid}`;

describe('local cluster lifecycle', () => {
  afterAll(async () => {
    await downCluster(name);
  }, 60_000);

  it('a cluster whose owner died is swept: no process, namespace, bridge or file is left', async () => {
    const owner = spawn('sleep', ['600'], { stdio: 'ignore' });
    const cluster = await startLocalCluster({ name, nodes: 1, ownerPid: owner.pid, log: () => undefined });
    const state = readClusterState(cluster.statePath);
    const api = apiClient(state.apiServerUrl, certPaths(state.certDir));
    await api.call('POST', '/api/v1/namespaces/default/pods', {
      metadata: { name: 'survivor' },
      spec: {
        containers: [
          {
            name: 'server',
            image: 'pivot/testserver:dev',
            readinessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 1 },
          },
        ],
      },
    });
    const pod = await waitFor(
      'the pod to be Ready',
      async () => {
        const p = await api.call<Pod>('GET', '/api/v1/namespaces/default/pods/survivor');
        return isReady(p) ? p : undefined;
      },
      60_000,
    );
    const podPid = (await podHttp<{ pid: number }>(pod.status.podIP!, '/info')).pid;
    const pids = [...state.processes.map((p) => p.pid), podPid];
    expect(pids.every(isAlive)).toBe(true);

    owner.kill('SIGKILL');
    await waitFor('the owner to die', () => (isAlive(owner.pid!) ? undefined : true), 10_000, 50);
    expect(await sweepAbandonedClusters()).toContain(name);

    expect(pids.filter(isAlive)).toEqual([]);
    const namespaces = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    expect(namespaces.split('\n').filter((l) => l.startsWith(state.netnsPrefix))).toEqual([]);
    const bridges = execFileSync('ip', ['-o', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' });
    expect(bridges).not.toContain(`${state.bridge}:`);
    expect(existsSync(state.dir)).toBe(false);
  }, 180_000);

  it("the stand-in's Nodes are Ready and untainted with their labels, and their Leases are renewed", async () => {
    const { api, state } = testCluster();
    interface Node {
      metadata: { name: string; labels: Record<string, string> };
      spec: { taints?: unknown[] };
      status: { conditions: { type: string; status: string }[]; nodeInfo: { kubeletVersion: string } };
    }
    const nodes = (await api.call<{ items: Node[] }>('GET', '/api/v1/nodes')).items;
    expect(nodes.map((n) => n.metadata.name).sort()).toEqual([...state.nodes].sort());
    for (const n of nodes) {
      expect(n.metadata.labels['kubernetes.io/hostname']).toBe(n.metadata.name);
      expect(n.spec.taints ?? []).toEqual([]);
      expect(n.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
      expect(n.status.nodeInfo.kubeletVersion).toBe(state.kubernetesVersion);
    }
    const leasePath = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${state.nodes[0]}`;
    const first = await api.call<{ spec: { holderIdentity: string; renewTime: string } }>('GET', leasePath);
    expect(first.spec.holderIdentity).toBe(state.nodes[0]);
    await waitFor(
      `the Lease of ${state.nodes[0]} to be renewed (every 10 s)`,
      async () => {
        const lease = await api.call<{ spec: { renewTime: string } }>('GET', leasePath);
        return Date.parse(lease.spec.renewTime) > Date.parse(first.spec.renewTime) ? true : undefined;
      },
      30_000,
      1000,
    );
  }, 45_000);
});
