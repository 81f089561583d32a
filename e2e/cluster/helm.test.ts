// Helm v3 (built by hack/build-k8s.sh) against the local cluster: a chart with a kubeVersion
// constraint installs, upgrades and uninstalls; a constraint the server does not meet is refused.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  createNamespace,
  deleteNamespace,
  isReady,
  isStatus,
  listPods,
  podHttp,
  testCluster,
  waitFor,
} from './kube.ts';

const { api, state } = testCluster();
const TEST_TIMEOUT = 150_000;

function chartFiles(kubeVersion: string): Record<string, string> {
  return {
    'Chart.yaml': `apiVersion: v2\nname: hello\nversion: 0.1.0\nappVersion: "1.0"\nkubeVersion: "${kubeVersion}"\n`,
    'values.yaml': 'greeting: hello\nreplicas: 1\n',
    'templates/configmap.yaml': `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: {{ .Values.greeting | quote }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
`,
    'templates/deployment.yaml': `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-server
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: { app: {{ .Release.Name }}-server }
  template:
    metadata:
      labels: { app: {{ .Release.Name }}-server }
      annotations: { greeting: {{ .Values.greeting | quote }} }
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: server
          image: pivot/testserver:dev
          ports: [{ name: http, containerPort: 8080 }]
          env:
            - name: GREETING
              valueFrom: { configMapKeyRef: { name: {{ .Release.Name }}-config, key: greeting } }
          readinessProbe:
            httpGet: { path: /healthz, port: http }
            periodSeconds: 1
`,
  };
}

describe('Helm on the local cluster', () => {
  let ns = '';
  let work = '';
  beforeAll(async () => {
    ns = await createNamespace(api, 'helm');
    work = await mkdtemp(join(tmpdir(), 'pivot-helm-'));
  });
  afterAll(async () => {
    await deleteNamespace(api, ns);
    await rm(work, { recursive: true, force: true });
  });

  async function writeChart(name: string, kubeVersion: string): Promise<string> {
    const dir = join(work, name);
    for (const [file, text] of Object.entries(chartFiles(kubeVersion))) {
      await mkdir(join(dir, file, '..'), { recursive: true });
      await writeFile(join(dir, file), text);
    }
    return dir;
  }

  /** Runs helm; resolves with { code, out } (stdout + stderr) so refusals can be asserted. */
  function helm(...args: string[]): Promise<{ code: number; out: string }> {
    const env = {
      ...process.env,
      KUBECONFIG: state.kubeconfigPath,
      HELM_CACHE_HOME: join(work, 'cache'),
      HELM_CONFIG_HOME: join(work, 'config'),
      HELM_DATA_HOME: join(work, 'data'),
    };
    return new Promise((resolve) => {
      execFile(
        join(state.binDir, 'helm'),
        [...args, '--namespace', ns],
        { env, timeout: 120_000 },
        (err, stdout, stderr) => {
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
        },
      );
    });
  }

  const greetingServed = async (expected: string) =>
    waitFor(
      `the Ready server pod to serve GREETING=${expected}`,
      async () => {
        const pods = (await listPods(api, ns, 'app=hello-server')).filter(
          (p) => !p.metadata.deletionTimestamp,
        );
        if (pods.length !== 1 || !isReady(pods[0])) return undefined;
        const env = await podHttp<{ value: string | null }>(pods[0].status.podIP!, '/env/GREETING');
        return env.value === expected ? env.value : undefined;
      },
      90_000,
    );

  it(
    'installs, upgrades and uninstalls a chart whose kubeVersion constraint the server meets',
    async () => {
      const chart = await writeChart('hello', '>=1.30.0-0');
      const install = await helm('install', 'hello', chart, '--wait', '--timeout', '90s');
      expect(install).toMatchObject({ code: 0 });
      const config = await api.call<{ data: Record<string, string> }>(
        'GET',
        `/api/v1/namespaces/${ns}/configmaps/hello-config`,
      );
      expect(config.data).toEqual({ greeting: 'hello', kubeVersion: state.kubernetesVersion });
      expect(await greetingServed('hello')).toBe('hello');

      const upgrade = await helm(
        'upgrade',
        'hello',
        chart,
        '--set',
        'greeting=bonjour',
        '--wait',
        '--timeout',
        '90s',
      );
      expect(upgrade).toMatchObject({ code: 0 });
      expect(await greetingServed('bonjour')).toBe('bonjour');
      const history = await helm('history', 'hello', '-o', 'json');
      expect(JSON.parse(history.out).map((r: { revision: number }) => r.revision)).toEqual([1, 2]);

      const uninstall = await helm('uninstall', 'hello', '--wait', '--timeout', '90s');
      expect(uninstall).toMatchObject({ code: 0 });
      await waitFor(
        'the released objects and pods to be gone',
        async () => {
          const cm = await api
            .call('GET', `/api/v1/namespaces/${ns}/configmaps/hello-config`)
            .catch((err) => {
              if (isStatus(err, 404)) return null;
              throw err;
            });
          return cm === null && (await listPods(api, ns, 'app=hello-server')).length === 0 ? true : undefined;
        },
        90_000,
      );
    },
    TEST_TIMEOUT,
  );

  it(
    'refuses a chart whose kubeVersion constraint the server does not meet',
    async () => {
      const chart = await writeChart('too-new', '>=99.0.0-0');
      const install = await helm('install', 'too-new', chart);
      expect(install.code).not.toBe(0);
      expect(install.out).toContain(
        `chart requires kubeVersion: >=99.0.0-0 which is incompatible with Kubernetes ${state.kubernetesVersion}`,
      );
    },
    TEST_TIMEOUT,
  );
});
