// StatefulSets of the testserver image on the local cluster: real kube-apiserver, controllers and
// scheduler; pods are real processes in their own network namespaces (hack/local-cluster).
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  createNamespace,
  deleteNamespace,
  isAlive,
  isReady,
  isStatus,
  listPods,
  podHttp,
  testCluster,
  waitFor,
  type Pod,
} from './kube.ts';

const { api, state } = testCluster();
const TEST_TIMEOUT = 120_000;
const WAIT = 90_000;

interface Info {
  pid: number;
  podName: string;
  podIP: string;
}

function statefulSet(name: string, policy: 'Parallel' | 'OrderedReady', replicas: number) {
  return {
    apiVersion: 'apps/v1',
    kind: 'StatefulSet',
    metadata: { name },
    spec: {
      serviceName: name,
      replicas,
      podManagementPolicy: policy,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 5,
          containers: [
            {
              name: 'server',
              image: 'pivot/testserver:dev',
              ports: [{ name: 'http', containerPort: 8080 }],
              env: [
                { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
                { name: 'DATA_DIR', value: '/data' },
              ],
              readinessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 1 },
              livenessProbe: {
                httpGet: { path: '/healthz', port: 'http' },
                periodSeconds: 2,
                failureThreshold: 3,
              },
              volumeMounts: [{ name: 'data', mountPath: '/data' }],
            },
          ],
        },
      },
      volumeClaimTemplates: [
        {
          metadata: { name: 'data' },
          spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
        },
      ],
    },
  };
}

async function createStatefulSet(
  ns: string,
  name: string,
  policy: 'Parallel' | 'OrderedReady',
  replicas: number,
) {
  await api.call('POST', `/api/v1/namespaces/${ns}/services`, {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name },
    spec: { clusterIP: 'None', selector: { app: name }, ports: [{ name: 'http', port: 8080 }] },
  });
  await api.call('POST', `/apis/apps/v1/namespaces/${ns}/statefulsets`, statefulSet(name, policy, replicas));
}

/** Waits until exactly `replicas` pods `<name>-0…` are Ready (and no others exist). */
async function readyPods(ns: string, name: string, replicas: number): Promise<Pod[]> {
  const expected = Array.from({ length: replicas }, (_, i) => `${name}-${i}`);
  return waitFor(
    `${replicas}/${replicas} Ready pods of StatefulSet ${ns}/${name}`,
    async () => {
      const pods = await listPods(api, ns, `app=${name}`);
      const names = pods.map((p) => p.metadata.name);
      const ok =
        JSON.stringify(names) === JSON.stringify(expected) &&
        pods.every((p) => isReady(p) && !p.metadata.deletionTimestamp);
      return ok ? pods : undefined;
    },
    WAIT,
  );
}

async function readyEndpointIPs(
  ns: string,
  service: string,
): Promise<{ slices: string[]; endpoints: string[] }> {
  const slices = await api.call<{
    items: { endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[] }[];
  }>(
    'GET',
    `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D${service}`,
  );
  const endpoints = await api.call<{ subsets?: { addresses?: { ip: string }[] }[] }>(
    'GET',
    `/api/v1/namespaces/${ns}/endpoints/${service}`,
  );
  return {
    slices: slices.items
      .flatMap((s) => s.endpoints ?? [])
      .filter((e) => e.conditions?.ready)
      .flatMap((e) => e.addresses)
      .sort(),
    endpoints: (endpoints.subsets ?? [])
      .flatMap((s) => s.addresses ?? [])
      .map((a) => a.ip)
      .sort(),
  };
}

function netnsNames(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter(Boolean);
}

describe('StatefulSets on the local cluster', () => {
  let ns = '';
  beforeAll(async () => {
    ns = await createNamespace(api, 'sts');
  });
  afterAll(async () => {
    await deleteNamespace(api, ns);
  });

  it(
    'Parallel: 3 replicas reach 3/3 Ready with distinct pod IPs, each served by its own process, listed by the Service',
    async () => {
      await createStatefulSet(ns, 'web', 'Parallel', 3);
      const pods = await readyPods(ns, 'web', 3);
      const ips = pods.map((p) => p.status.podIP!);
      expect(new Set(ips).size).toBe(3);
      for (const ip of ips) expect(ip.startsWith(`10.244.${state.subnet}.`)).toBe(true);
      // Each address answers with its own pod's identity (downward-API env) from its own process.
      const infos = await Promise.all(ips.map((ip) => podHttp<Info>(ip, '/info')));
      expect(infos.map((i) => [i.podName, i.podIP])).toEqual(
        pods.map((p) => [p.metadata.name, p.status.podIP]),
      );
      expect(new Set(infos.map((i) => i.pid)).size).toBe(3);
      const want = [...ips].sort();
      const got = await waitFor(
        'Endpoints and EndpointSlices listing the 3 pod IPs',
        async () => {
          const e = await readyEndpointIPs(ns, 'web');
          return JSON.stringify(e.slices) === JSON.stringify(want) &&
            JSON.stringify(e.endpoints) === JSON.stringify(want)
            ? e
            : undefined;
        },
        WAIT,
      );
      expect(got).toEqual({ slices: want, endpoints: want });
    },
    TEST_TIMEOUT,
  );

  it(
    'OrderedReady: pods start one after another, each only once its predecessor is Ready',
    async () => {
      await createStatefulSet(ns, 'ordered', 'OrderedReady', 3);
      const pods = await readyPods(ns, 'ordered', 3);
      expect(new Set(pods.map((p) => p.status.podIP)).size).toBe(3);
      for (let i = 1; i < pods.length; i++) {
        const predecessorReady = pods[i - 1].status.conditions!.find(
          (c) => c.type === 'Ready',
        )!.lastTransitionTime!;
        expect(Date.parse(pods[i].metadata.creationTimestamp)).toBeGreaterThanOrEqual(
          Date.parse(predecessorReady),
        );
      }
    },
    TEST_TIMEOUT,
  );

  it(
    'kill -9 of a pod process: the pod goes not ready, the process restarts, restartCount becomes 1',
    async () => {
      const [pod] = await readyPods(ns, 'web', 3);
      const before = await podHttp<Info>(pod.status.podIP!, '/info');
      process.kill(before.pid, 'SIGKILL');
      await waitFor(
        'web-0 to be reported not ready',
        async () => {
          const p = await api.call<Pod>('GET', `/api/v1/namespaces/${ns}/pods/web-0`);
          return isReady(p) ? undefined : p;
        },
        WAIT,
        100,
      );
      const after = await waitFor(
        'web-0 Ready again with restartCount 1',
        async () => {
          const p = await api.call<Pod>('GET', `/api/v1/namespaces/${ns}/pods/web-0`);
          return isReady(p) && p.status.containerStatuses?.[0].restartCount === 1 ? p : undefined;
        },
        WAIT,
      );
      expect(after.metadata.uid).toBe(pod.metadata.uid);
      expect(after.status.podIP).toBe(pod.status.podIP);
      const status = after.status.containerStatuses![0] as unknown as {
        lastState: { terminated: { exitCode: number } };
      };
      expect(status.lastState.terminated.exitCode).toBe(137);
      const restarted = await podHttp<Info>(after.status.podIP!, '/info');
      expect(restarted.pid).not.toBe(before.pid);
      expect(isAlive(before.pid)).toBe(false);
    },
    TEST_TIMEOUT,
  );

  it(
    'deleting a pod: the StatefulSet recreates it and the new process reads what the old one wrote to its PVC',
    async () => {
      const pods = await readyPods(ns, 'web', 3);
      const old = pods[1];
      const value = `written-by-${old.metadata.uid}`;
      expect(await podHttp(old.status.podIP!, '/data', { method: 'PUT', body: value })).toEqual({
        written: true,
      });
      const oldInfo = await podHttp<Info>(old.status.podIP!, '/info');
      await api.call('DELETE', `/api/v1/namespaces/${ns}/pods/web-1`);
      const replacement = await waitFor(
        'a new Ready web-1',
        async () => {
          const p = await api.call<Pod>('GET', `/api/v1/namespaces/${ns}/pods/web-1`).catch((err) => {
            if (isStatus(err, 404)) return undefined;
            throw err;
          });
          return p && p.metadata.uid !== old.metadata.uid && isReady(p) ? p : undefined;
        },
        WAIT,
      );
      expect(isAlive(oldInfo.pid)).toBe(false);
      expect(await podHttp(replacement.status.podIP!, '/data')).toEqual({ value });
      expect((await podHttp<Info>(replacement.status.podIP!, '/info')).pid).not.toBe(oldInfo.pid);
    },
    TEST_TIMEOUT,
  );

  it(
    'scaling down stops the surplus processes; scaling up brings them back with their volumes',
    async () => {
      const pods = await readyPods(ns, 'web', 3);
      const value = 'kept-across-scale-down';
      await podHttp(pods[2].status.podIP!, '/data', { method: 'PUT', body: value });
      const gone = await Promise.all(pods.slice(1).map((p) => podHttp<Info>(p.status.podIP!, '/info')));
      const scale = (replicas: number) =>
        api.call(
          'PATCH',
          `/apis/apps/v1/namespaces/${ns}/statefulsets/web`,
          { spec: { replicas } },
          'application/merge-patch+json',
        );
      await scale(1);
      await readyPods(ns, 'web', 1);
      await waitFor(
        "the scaled-down pods' processes to exit",
        () => (gone.some((i) => isAlive(i.pid)) ? undefined : true),
        WAIT,
      );
      await scale(3);
      const back = await readyPods(ns, 'web', 3);
      expect(await podHttp(back[2].status.podIP!, '/data')).toEqual({ value });
      // New pods are reachable at once (no liveness restarts from stale neighbour entries).
      expect(back.slice(1).map((p) => p.status.containerStatuses![0].restartCount)).toEqual([0, 0]);
    },
    TEST_TIMEOUT,
  );

  it(
    'an image without a local command fails the pod with ErrImagePull and a clear message',
    async () => {
      await api.call('POST', `/api/v1/namespaces/${ns}/pods`, {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'unknown-image' },
        spec: { containers: [{ name: 'main', image: 'registry.example/not-mapped:1.0' }] },
      });
      const pod = await waitFor(
        'unknown-image to report an image pull error',
        async () => {
          const p = await api.call<Pod>('GET', `/api/v1/namespaces/${ns}/pods/unknown-image`);
          const reason = p.status.containerStatuses?.[0].state.waiting?.reason;
          return reason === 'ErrImagePull' || reason === 'ImagePullBackOff' ? p : undefined;
        },
        WAIT,
      );
      expect(pod.status.phase).toBe('Pending');
      expect(isReady(pod)).toBe(false);
      expect(pod.status.containerStatuses![0].state.waiting!.message).toContain(
        'registry.example/not-mapped:1.0',
      );
    },
    TEST_TIMEOUT,
  );

  it(
    'deleting the namespace removes everything: pods, processes, network namespaces, claims and volumes',
    async () => {
      const pods = await listPods(api, ns, 'app in (web,ordered)');
      expect(pods).toHaveLength(6);
      const pids = await Promise.all(
        pods.map(async (p) => (await podHttp<Info>(p.status.podIP!, '/info')).pid),
      );
      const hostIndexes = pods.map((p) => p.status.podIP!.split('.')[3]);
      const claims = await api.call<{ items: { spec: { volumeName: string } }[] }>(
        'GET',
        `/api/v1/namespaces/${ns}/persistentvolumeclaims`,
      );
      const volumes = claims.items.map((c) => c.spec.volumeName);
      expect(volumes).toHaveLength(6);
      await deleteNamespace(api, ns);
      await waitFor(
        `namespace ${ns} to be gone`,
        async () =>
          (await api
            .call('GET', `/api/v1/namespaces/${ns}`)
            .catch((err) => (isStatus(err, 404) ? null : Promise.reject(err)))) === null
            ? true
            : undefined,
        WAIT,
        500,
      );
      expect(pids.filter(isAlive)).toEqual([]);
      const left = netnsNames().filter((n) => hostIndexes.some((h) => n === `${state.netnsPrefix}${h}`));
      expect(left).toEqual([]);
      await waitFor(
        'the PersistentVolumes of the deleted claims to be removed',
        async () => {
          const pvs = await api.call<{ items: { metadata: { name: string } }[] }>(
            'GET',
            '/api/v1/persistentvolumes',
          );
          return pvs.items.some((pv) => volumes.includes(pv.metadata.name)) ? undefined : true;
        },
        WAIT,
      );
    },
    TEST_TIMEOUT,
  );
});
