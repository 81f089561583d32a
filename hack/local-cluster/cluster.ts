// A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler built from upstream source (hack/build-k8s.sh), plus the kubelet stand-in that runs
// pods as local processes in their own network namespaces. Everything a cluster starts is recorded
// in a state file so `downCluster` can clean up after a crashed run too.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { generateCerts, writeKubeconfig } from './certs.ts';
import { defaultImages, projectNode, REPO_ROOT, type ImageMap } from './images.ts';
import { apiClient } from './api.ts';
import {
  clusterNetwork,
  createBridge,
  deleteLink,
  deleteNetns,
  listNetns,
  netnsPrefix,
  subnetsInUse,
} from './netns.ts';
import { run, waitFor } from './run.ts';

export const API_SERVER_PORT = 6443;
export const SERVICE_CLUSTER_IP_RANGE = '10.96.0.0/16';
const FIRST_SERVICE_IP = '10.96.0.1';

export interface LocalClusterOptions {
  /** Names the state dir; a cluster already recorded under this name is removed first. */
  name?: string;
  /** Number of Nodes the kubelet stand-in registers (pivot-<name>-node-1 …). */
  nodes?: number;
  /** Extra image → command entries, merged over the defaults (pivot/node-agent, pivot/operator, pivot/testserver). */
  images?: ImageMap;
  /** PID whose death marks the cluster as abandoned (sweepAbandonedClusters); default: none. */
  ownerPid?: number;
  /** Run hack/build-k8s.sh first (builds the binaries when missing); otherwise fail if they are. */
  build?: boolean;
  /** Opt-in: the API server writes an audit event for every write request to `auditLogPath`. */
  auditLog?: boolean;
  log?: (line: string) => void;
}

export interface RecordedProcess {
  role: string;
  pid: number;
  /** A substring of /proc/<pid>/cmdline, checked before killing so a reused PID is never hit. */
  match: string;
}

export interface ClusterState {
  name: string;
  dir: string;
  subnet: number;
  bridge: string;
  gateway: string;
  netnsPrefix: string;
  apiServerUrl: string;
  apiServerPort: number;
  kubeconfigPath: string;
  certDir: string;
  kubernetesVersion: string;
  nodes: string[];
  images: ImageMap;
  binDir: string;
  ownerPid?: number;
  processes: RecordedProcess[];
  /** With the auditLog option: JSON lines, one audit event (level Metadata) per write request. */
  auditLogPath?: string;
  /** True once every node is Ready and pods can be created. */
  ready: boolean;
}

export interface LocalCluster {
  name: string;
  kubeconfigPath: string;
  apiServerUrl: string;
  nodes: string[];
  statePath: string;
  stop: () => Promise<void>;
}

export function cacheRoot(): string {
  return process.env.PIVOT_CACHE_DIR || join(homedir(), '.cache/pivot');
}

export function clustersRoot(): string {
  return join(cacheRoot(), 'clusters');
}

export function statePathFor(name: string): string {
  return join(clustersRoot(), name, 'state.json');
}

/** The state file a cluster was recorded in (LocalCluster.statePath, PIVOT_CLUSTER_STATE). */
export function readClusterState(statePath: string): ClusterState {
  return JSON.parse(readFileSync(statePath, 'utf8')) as ClusterState;
}

/** The state of the cluster recorded under `name`, or undefined when there is none. */
export async function readState(name: string): Promise<ClusterState | undefined> {
  try {
    return readClusterState(statePathFor(name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function writeState(state: ClusterState): Promise<void> {
  const tmp = `${statePathFor(state.name)}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2));
  await run('mv', ['-f', tmp, statePathFor(state.name)]);
}

/**
 * The bin dir hack/build-k8s.sh builds into (or KUBEBUILDER_ASSETS). With `build` the script runs
 * (it skips work when the binaries exist) and its progress goes to stderr.
 */
export async function controlPlaneBinDir(build: boolean): Promise<string> {
  const script = join(REPO_ROOT, 'hack/build-k8s.sh');
  const dir = build
    ? await new Promise<string>((resolve, reject) => {
        const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d));
        child.on('error', reject);
        child.on('exit', (code) =>
          code === 0 ? resolve(out.trim()) : reject(new Error(`${script} failed (exit ${code})`)),
        );
      })
    : (await run('bash', [script, '--print-dir'])).trim();
  const missing = ['etcd', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler'].filter(
    (b) => !existsSync(join(dir, b)),
  );
  if (missing.length) {
    throw new Error(
      `control-plane binaries missing in ${dir}: ${missing.join(', ')} — run 'npm run k8s:build' first`,
    );
  }
  return dir;
}

function spawnDaemon(bin: string, args: string[], logFile: string): number {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(bin, args, { detached: true, stdio: ['ignore', fd, fd] });
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start ${bin}`);
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/** True while `pid` runs; a zombie (dead, not yet reaped by its parent) counts as gone. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = readFileSyncOrEmpty(`/proc/${pid}/stat`);
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

function readFileSyncOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

async function tail(file: string, lines = 15): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Waits for `check`, failing early with the process's log when it died meanwhile. */
async function waitForProcess<T>(
  p: RecordedProcess,
  logFile: string,
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
): Promise<T> {
  return waitFor(
    what,
    async () => {
      if (!isAlive(p.pid)) throw new Error(`${p.role} exited`);
      return check();
    },
    timeoutMs,
    500,
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}\n--- last lines of ${logFile} ---\n${await tail(logFile)}`);
  });
}

export async function startLocalCluster(opts: LocalClusterOptions = {}): Promise<LocalCluster> {
  const name = opts.name ?? 'pivot';
  const log = opts.log ?? ((line: string) => process.stderr.write(`[local-cluster ${name}] ${line}\n`));
  const nodeCount = opts.nodes ?? 3;
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name))
    throw new Error(`cluster name "${name}" must be a DNS label`);
  if (!Number.isInteger(nodeCount) || nodeCount < 1)
    throw new Error(`nodes must be a positive integer, got ${opts.nodes}`);
  if (await readState(name)) {
    log('removing the previous cluster of this name');
    await downCluster(name, log);
  }
  const binDir = await controlPlaneBinDir(opts.build ?? false);
  const kubernetesVersion = (await run(join(binDir, 'kube-apiserver'), ['--version']))
    .trim()
    .split(' ')
    .pop()!;
  const dir = join(clustersRoot(), name);
  await mkdir(join(dir, 'logs'), { recursive: true });

  const net = await claimSubnet();
  const state: ClusterState = {
    name,
    dir,
    subnet: net.subnet,
    bridge: net.bridge,
    gateway: net.gateway,
    netnsPrefix: netnsPrefix(net),
    apiServerUrl: `https://${net.gateway}:${API_SERVER_PORT}`,
    apiServerPort: API_SERVER_PORT,
    kubeconfigPath: join(dir, 'kubeconfig'),
    certDir: join(dir, 'pki'),
    kubernetesVersion,
    nodes: Array.from({ length: nodeCount }, (_, i) => `${name}-node-${i + 1}`),
    images: { ...defaultImages(), ...opts.images },
    binDir,
    ownerPid: opts.ownerPid,
    processes: [],
    ...(opts.auditLog ? { auditLogPath: join(dir, 'logs', 'audit.log') } : {}),
    ready: false,
  };
  await writeState(state);
  log(`Kubernetes ${kubernetesVersion}; bridge ${net.bridge} ${net.gateway}/24; state in ${dir}`);

  try {
    const certs = await generateCerts(state.certDir, [net.gateway, '127.0.0.1', FIRST_SERVICE_IP]);
    await writeKubeconfig(state.kubeconfigPath, certs, state.apiServerUrl, name);
    const logOf = (role: string) => join(dir, 'logs', `${role}.log`);
    const start = async (role: string, bin: string, args: string[], match = bin.split('/').pop()!) => {
      const p = { role, pid: spawnDaemon(bin, args, logOf(role)), match };
      state.processes.push(p);
      await writeState(state);
      return p;
    };

    // etcd and the API server listen on the cluster's own bridge address: unique per cluster,
    // reachable from every pod namespace, and never on a shared host port.
    const etcdUrl = `http://${net.gateway}:2379`;
    const peerUrl = `http://${net.gateway}:2380`;
    const etcd = await start('etcd', join(binDir, 'etcd'), [
      '--name=default',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=default=${peerUrl}`,
      '--unsafe-no-fsync',
      '--log-level=warn',
    ]);
    await waitForProcess(
      etcd,
      logOf('etcd'),
      'etcd /health',
      async () => ((await fetch(`${etcdUrl}/health`)).ok ? true : undefined),
      60_000,
    );
    log('etcd healthy');

    const audit: string[] = [];
    if (state.auditLogPath) {
      const policy = join(dir, 'audit-policy.yaml');
      await writeFile(policy, AUDIT_WRITES_POLICY);
      audit.push(`--audit-policy-file=${policy}`, `--audit-log-path=${state.auditLogPath}`);
    }
    const apiserver = await start('kube-apiserver', join(binDir, 'kube-apiserver'), [
      ...audit,
      `--etcd-servers=${etcdUrl}`,
      `--bind-address=${net.gateway}`,
      `--advertise-address=${net.gateway}`,
      `--secure-port=${API_SERVER_PORT}`,
      `--cert-dir=${certs.dir}`,
      `--tls-cert-file=${certs.apiserverCert}`,
      `--tls-private-key-file=${certs.apiserverKey}`,
      `--client-ca-file=${certs.caCert}`,
      '--authorization-mode=RBAC',
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${certs.serviceAccountPub}`,
      `--service-account-signing-key-file=${certs.serviceAccountKey}`,
      `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
      '--endpoint-reconciler-type=none',
      '--allow-privileged=true',
      '--profiling=false',
    ]);
    const api = apiClient(state.apiServerUrl, certs);
    await waitForProcess(
      apiserver,
      logOf('kube-apiserver'),
      'kube-apiserver /readyz',
      async () => ((await api.call<string>('GET', '/readyz')) === 'ok' ? true : undefined),
      240_000,
    );
    log(`kube-apiserver ready at ${state.apiServerUrl}`);

    await start('kube-controller-manager', join(binDir, 'kube-controller-manager'), [
      `--kubeconfig=${state.kubeconfigPath}`,
      '--leader-elect=false',
      '--secure-port=0',
      `--root-ca-file=${certs.caCert}`,
      `--service-account-private-key-file=${certs.serviceAccountKey}`,
      `--controllers=${CONTROLLERS.join(',')}`,
    ]);
    await start('kube-scheduler', join(binDir, 'kube-scheduler'), [
      `--kubeconfig=${state.kubeconfigPath}`,
      '--leader-elect=false',
      '--secure-port=0',
    ]);
    const kubelet = await start(
      'kubelet',
      projectNode(),
      [join(REPO_ROOT, 'hack/local-cluster/kubelet.ts'), statePathFor(name)],
      'hack/local-cluster/kubelet.ts',
    );

    await waitForProcess(
      kubelet,
      logOf('kubelet'),
      `${nodeCount} Ready nodes`,
      async () => {
        const nodes = await api.call<{
          items: { status?: { conditions?: { type: string; status: string }[] } }[];
        }>('GET', '/api/v1/nodes');
        const ready = nodes.items.filter((n) =>
          n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
        );
        return ready.length >= nodeCount ? true : undefined;
      },
      60_000,
    );
    // Pods cannot be created before their namespace's default ServiceAccount exists.
    await waitFor(
      'the default ServiceAccount (made by kube-controller-manager)',
      async () => (await api.call('GET', '/api/v1/namespaces/default/serviceaccounts/default')) ?? undefined,
      120_000,
      500,
    );
    state.ready = true;
    await writeState(state);
    log(`ready: ${state.nodes.length} nodes; export KUBECONFIG=${state.kubeconfigPath}`);
  } catch (err) {
    log(`start failed, cleaning up: ${(err as Error).message}`);
    await downCluster(name, log);
    throw err;
  }

  return {
    name,
    kubeconfigPath: state.kubeconfigPath,
    apiServerUrl: state.apiServerUrl,
    nodes: state.nodes,
    statePath: statePathFor(name),
    stop: () => downCluster(name, log),
  };
}

// Who wrote what, without request bodies: reads are not logged, and each write once, when answered.
const AUDIT_WRITES_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
`;

// The upstream controllers a test cluster needs. node-lifecycle is left out on purpose: on a busy
// 2-core machine it would taint and evict pods whose stand-in kubelet is a little late.
export const CONTROLLERS = [
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'root-ca-certificate-publisher-controller',
  'garbage-collector-controller',
  'namespace-controller',
  'statefulset-controller',
  'replicaset-controller',
  'deployment-controller',
  'job-controller',
  'disruption-controller',
  'endpoints-controller',
  'endpointslice-controller',
  'clusterrole-aggregation-controller',
  'persistentvolume-binder-controller',
  'persistentvolume-protection-controller',
  'persistentvolumeclaim-protection-controller',
  'pod-garbage-collector-controller',
  'ttl-after-finished-controller',
];

async function claimSubnet(): Promise<ReturnType<typeof clusterNetwork>> {
  const used = await subnetsInUse();
  for (let subnet = 1; subnet <= 254; subnet++) {
    if (used.has(subnet)) continue;
    const net = clusterNetwork(subnet);
    try {
      await createBridge(net);
      return net;
    } catch {
      // taken by a cluster starting at the same moment: try the next one
    }
  }
  throw new Error('no free 10.244.<n>.0/24 subnet for a new local cluster bridge');
}

async function cmdline(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
}

/** SIGKILLs a recorded process if that PID still runs the same program, and waits until it is gone. */
async function killRecorded(p: RecordedProcess): Promise<void> {
  if (!(await cmdline(p.pid)).includes(p.match)) return;
  try {
    process.kill(p.pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitFor(
    `${p.role} (pid ${p.pid}) to exit`,
    () => (isAlive(p.pid) ? undefined : true),
    10_000,
    50,
  ).catch(() => undefined);
}

/** Removes everything a cluster started: processes, pod namespaces, the bridge and its directory. */
export async function downCluster(
  name: string,
  log: (line: string) => void = () => undefined,
): Promise<void> {
  const state = await readState(name);
  if (!state) return;
  // The kubelet stand-in goes first so it restarts nothing while its pods are being removed.
  const kubelet = state.processes.filter((p) => p.role === 'kubelet');
  for (const p of kubelet) await killRecorded(p);
  const namespaces = await listNetns(state.netnsPrefix);
  for (const ns of namespaces) await deleteNetns(ns);
  for (const p of state.processes.filter((q) => q.role !== 'kubelet').reverse()) await killRecorded(p);
  await deleteLink(state.bridge);
  await rm(state.dir, { recursive: true, force: true });
  log(`removed cluster ${name} (${state.processes.length} processes, ${namespaces.length} pod namespaces)`);
}

/** Stops clusters whose owner process died (a crashed or killed test run left them behind). */
export async function sweepAbandonedClusters(
  log: (line: string) => void = () => undefined,
): Promise<string[]> {
  const names = await readdir(clustersRoot()).catch(() => [] as string[]);
  const swept: string[] = [];
  for (const name of names) {
    const state = await readState(name).catch(() => undefined);
    if (state?.ownerPid !== undefined && !isAlive(state.ownerPid)) {
      await downCluster(name, log);
      swept.push(name);
    }
  }
  return swept;
}
