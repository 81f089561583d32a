// The kubelet stand-in: registers the cluster's Nodes (Ready, renewed Leases) and runs every pod
// bound to them as local processes, each pod in its own network namespace on the cluster bridge.
// It also binds a hostPath PersistentVolume (a directory) to every pending claim.
//
//   node hack/local-cluster/kubelet.ts <state.json>     (started by cluster.ts; one process, all nodes)
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { join } from 'node:path';
import {
  CoreV1Api,
  KubeConfig,
  makeInformer,
  type V1Container,
  type V1PersistentVolumeClaim,
  type V1Pod,
  type V1Probe,
} from '@kubernetes/client-node';
import { apiClient, ApiError, apiTime, microTime } from './api.ts';
import { certPaths } from './certs.ts';
import { readClusterState } from './cluster.ts';
import { expandReferences, resolveCommand } from './images.ts';
import { clusterNetwork, createPodNetns, deleteNetns, podNetwork, type PodNetwork } from './netns.ts';

const state = readClusterState(process.argv[2]!);
const net = clusterNetwork(state.subnet);
const api = apiClient(state.apiServerUrl, certPaths(state.certDir));
const kc = new KubeConfig();
kc.loadFromFile(state.kubeconfigPath);
const core = kc.makeApiClient(CoreV1Api);
const myNodes = new Set(state.nodes);

const log = (msg: string) => process.stdout.write(`${new Date().toISOString()} ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const is404 = (err: unknown) => err instanceof ApiError && err.status === 404;
const is409 = (err: unknown) => err instanceof ApiError && err.status === 409;

// ---------------------------------------------------------------------------------------- nodes

function nodeStatus() {
  const now = apiTime();
  const resources = { cpu: '16', memory: '64Gi', pods: '110', 'ephemeral-storage': '100Gi' };
  return {
    capacity: resources,
    allocatable: resources,
    addresses: [{ type: 'InternalIP', address: net.gateway }],
    conditions: [
      {
        type: 'Ready',
        status: 'True',
        reason: 'KubeletReady',
        message: 'pivot kubelet stand-in is posting ready status',
        lastHeartbeatTime: now,
        lastTransitionTime: now,
      },
      ...['MemoryPressure', 'DiskPressure', 'PIDPressure'].map((type) => ({
        type,
        status: 'False',
        reason: `KubeletHasNo${type}`,
        message: 'ok',
        lastHeartbeatTime: now,
        lastTransitionTime: now,
      })),
    ],
    nodeInfo: {
      kubeletVersion: state.kubernetesVersion,
      kubeProxyVersion: '',
      operatingSystem: 'linux',
      architecture: 'amd64',
      containerRuntimeVersion: 'pivot-local://processes',
      kernelVersion: '',
      osImage: 'local processes',
      machineID: '',
      systemUUID: '',
      bootID: '',
    },
    daemonEndpoints: { kubeletEndpoint: { Port: 0 } },
  };
}

async function registerNode(name: string): Promise<void> {
  const labels = {
    'kubernetes.io/hostname': name,
    'kubernetes.io/os': 'linux',
    'kubernetes.io/arch': 'amd64',
    'pivot.dev/local-cluster': state.name,
  };
  await api
    .call('POST', '/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name, labels }, spec: {} })
    .catch((err) => {
      if (!is409(err)) throw err;
    });
  await api.call(
    'PATCH',
    `/api/v1/nodes/${name}/status`,
    { status: nodeStatus() },
    'application/strategic-merge-patch+json',
  );
  // Admission taints new Nodes not-ready; the node-lifecycle controller (left out on purpose) would lift it.
  await api.call(
    'PATCH',
    `/api/v1/nodes/${name}`,
    { spec: { taints: null } },
    'application/merge-patch+json',
  );
}

async function renewLease(name: string): Promise<void> {
  const path = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${name}`;
  const spec = { holderIdentity: name, leaseDurationSeconds: 40, renewTime: microTime() };
  try {
    await api.call('PATCH', path, { spec }, 'application/merge-patch+json');
  } catch (err) {
    if (!is404(err)) throw err;
    await api.call('POST', '/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name },
      spec,
    });
  }
}

async function heartbeatLoop(): Promise<void> {
  for (let tick = 0; ; tick++) {
    for (const name of myNodes) {
      try {
        await renewLease(name);
        if (tick % 4 === 3)
          await api.call(
            'PATCH',
            `/api/v1/nodes/${name}/status`,
            { status: nodeStatus() },
            'application/strategic-merge-patch+json',
          );
      } catch (err) {
        log(`heartbeat for ${name} failed: ${(err as Error).message}`);
      }
    }
    await sleep(10_000);
  }
}

// ------------------------------------------------------------------------------------ volumes

async function provisionVolume(pvc: V1PersistentVolumeClaim): Promise<void> {
  const { uid, name, namespace } = pvc.metadata ?? {};
  if (!uid || pvc.spec?.volumeName || pvc.metadata?.deletionTimestamp || pvc.status?.phase !== 'Pending')
    return;
  const dir = join(state.dir, 'volumes', `pvc-${uid}`);
  await mkdir(dir, { recursive: true });
  await api
    .call('POST', '/api/v1/persistentvolumes', {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: `pvc-${uid}`, labels: { 'pivot.dev/local-cluster': state.name } },
      spec: {
        capacity: { storage: pvc.spec?.resources?.requests?.storage ?? '1Gi' },
        accessModes: pvc.spec?.accessModes ?? ['ReadWriteOnce'],
        volumeMode: pvc.spec?.volumeMode ?? 'Filesystem',
        storageClassName: pvc.spec?.storageClassName ?? '',
        persistentVolumeReclaimPolicy: 'Retain', // we delete it ourselves when the claim goes
        hostPath: { path: dir, type: 'DirectoryOrCreate' },
        claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace, name, uid },
      },
    })
    .then(
      () => log(`bound PV pvc-${uid} (${dir}) to claim ${namespace}/${name}`),
      (err) => {
        if (!is409(err)) throw err;
      },
    );
}

async function releaseVolume(pvc: V1PersistentVolumeClaim): Promise<void> {
  const uid = pvc.metadata?.uid;
  if (!uid) return;
  await api.call('DELETE', `/api/v1/persistentvolumes/pvc-${uid}`).catch((err) => {
    if (!is404(err)) throw err;
  });
  await rm(join(state.dir, 'volumes', `pvc-${uid}`), { recursive: true, force: true });
}

// ----------------------------------------------------------------------------------------- pods

interface Mount {
  source: string;
  target: string;
}

interface ContainerRun {
  spec: V1Container;
  child?: ChildProcess;
  restartCount: number;
  ready: boolean;
  started: boolean;
  state: Record<string, unknown>;
  lastState: Record<string, unknown>;
  timers: NodeJS.Timeout[];
  everStarted: boolean;
}

function fieldValue(pod: V1Pod, path: string, ip: string): string {
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (m) return (m[1] === 'labels' ? pod.metadata?.labels : pod.metadata?.annotations)?.[m[2]] ?? '';
  const fields: Record<string, string | undefined> = {
    'metadata.name': pod.metadata?.name,
    'metadata.namespace': pod.metadata?.namespace,
    'metadata.uid': pod.metadata?.uid,
    'spec.nodeName': pod.spec?.nodeName,
    'spec.serviceAccountName': pod.spec?.serviceAccountName,
    'status.podIP': ip,
    'status.podIPs': ip,
    'status.hostIP': net.gateway,
    'status.hostIPs': net.gateway,
  };
  return fields[path] ?? '';
}

async function readKey(
  kind: 'configmaps' | 'secrets',
  ns: string,
  name: string,
): Promise<Record<string, string>> {
  const obj = await api.call<{ data?: Record<string, string> }>(
    'GET',
    `/api/v1/namespaces/${ns}/${kind}/${name}`,
  );
  const data = obj.data ?? {};
  if (kind === 'configmaps') return data;
  return Object.fromEntries(
    Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
  );
}

async function containerEnv(pod: V1Pod, c: V1Container, ip: string): Promise<Record<string, string>> {
  const ns = pod.metadata!.namespace!;
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: '/root',
    HOSTNAME: pod.spec?.hostname ?? pod.metadata!.name!,
    KUBERNETES_SERVICE_HOST: net.gateway,
    KUBERNETES_SERVICE_PORT: String(state.apiServerPort),
    KUBERNETES_SERVICE_PORT_HTTPS: String(state.apiServerPort),
    KUBERNETES_PORT: `tcp://${net.gateway}:${state.apiServerPort}`,
  };
  for (const from of c.envFrom ?? []) {
    const ref = from.configMapRef ?? from.secretRef;
    if (!ref?.name) continue;
    const data = await readKey(from.configMapRef ? 'configmaps' : 'secrets', ns, ref.name).catch((err) => {
      if (ref.optional && is404(err)) return {};
      throw err;
    });
    for (const [k, v] of Object.entries(data)) env[(from.prefix ?? '') + k] = v;
  }
  for (const e of c.env ?? []) {
    const vf = e.valueFrom;
    if (!vf) env[e.name] = expandReferences(e.value ?? '', env);
    else if (vf.fieldRef) env[e.name] = fieldValue(pod, vf.fieldRef.fieldPath, ip);
    else if (vf.resourceFieldRef) {
      const [kind, res] = vf.resourceFieldRef.resource.split('.');
      const limits = kind === 'limits' ? c.resources?.limits : c.resources?.requests;
      env[e.name] = String(limits?.[res] ?? (res === 'cpu' ? '16' : '68719476736'));
    } else {
      const ref = vf.configMapKeyRef ?? vf.secretKeyRef!;
      const data = await readKey(vf.configMapKeyRef ? 'configmaps' : 'secrets', ns, ref.name!).catch(
        (err) => {
          if (ref.optional && is404(err)) return {} as Record<string, string>;
          throw err;
        },
      );
      if (ref.key in data) env[e.name] = data[ref.key];
      else if (!ref.optional) throw new Error(`env ${e.name}: key "${ref.key}" not found in ${ref.name}`);
    }
  }
  return env;
}

class PodWorker {
  pod: V1Pod;
  uid: string;
  key: string;
  dir: string;
  network?: PodNetwork;
  netnsRemoval?: Promise<void>;
  hostIndex = 0;
  containers: ContainerRun[] = [];
  mountsByContainer = new Map<string, Mount[]>();
  envByContainer = new Map<string, Record<string, string>>();
  conditionTimes = new Map<string, { status: string; time: string }>();
  startTime?: string;
  terminating = false;
  gone = false;
  cleanedUp = false;
  queue: Promise<void> = Promise.resolve();
  lastStatusJson = '';
  setupError?: string;

  constructor(pod: V1Pod) {
    this.pod = pod;
    this.uid = pod.metadata!.uid!;
    this.key = `${pod.metadata!.namespace}/${pod.metadata!.name}`;
    this.dir = join(state.dir, 'pods', this.uid);
  }

  enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn).catch((err) => {
      log(`${this.key}: ${(err as Error).stack ?? err}`);
    });
  }

  update(pod: V1Pod): void {
    this.pod = pod;
    if (pod.metadata?.deletionTimestamp && !this.terminating) this.enqueue(() => this.terminate(true));
  }

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    this.hostIndex = allocateHost(this.uid);
    this.network = podNetwork(net, this.hostIndex);
    await createPodNetns(net, this.network);
    this.startTime = apiTime();
    this.containers = (this.pod.spec?.containers ?? []).map((spec) => ({
      spec,
      restartCount: 0,
      ready: false,
      started: false,
      state: { waiting: { reason: 'ContainerCreating' } },
      lastState: {},
      timers: [],
      everStarted: false,
    }));
    await this.prepareAndRun();
  }

  /** Volumes and env, then the containers; retried every 2 s while a referenced object is missing. */
  async prepareAndRun(): Promise<void> {
    if (this.terminating || this.gone) return;
    try {
      const volumes = await this.prepareVolumes();
      for (const c of this.containers) {
        this.mountsByContainer.set(
          c.spec.name,
          (c.spec.volumeMounts ?? []).flatMap((vm) => {
            const source = volumes.get(vm.name);
            return source
              ? [{ source: vm.subPath ? join(source, vm.subPath) : source, target: vm.mountPath }]
              : [];
          }),
        );
        this.envByContainer.set(c.spec.name, await containerEnv(this.pod, c.spec, this.network!.ip));
      }
    } catch (err) {
      // Like the kubelet: a ConfigMap, Secret or claim that is not there yet is waited for.
      this.setupError = (err as Error).message;
      log(`${this.key}: setup failed (retrying in 2s): ${this.setupError}`);
      for (const c of this.containers)
        c.state = { waiting: { reason: 'CreateContainerConfigError', message: this.setupError } };
      await this.pushStatus();
      setTimeout(() => this.enqueue(() => this.prepareAndRun()), 2000);
      return;
    }
    this.setupError = undefined;
    for (const c of this.containers) this.startContainer(c);
    await this.pushStatus();
  }

  async prepareVolumes(): Promise<Map<string, string>> {
    const dirs = new Map<string, string>();
    const ns = this.pod.metadata!.namespace!;
    for (const v of this.pod.spec?.volumes ?? []) {
      const local = join(this.dir, 'volumes', v.name);
      if (v.persistentVolumeClaim) {
        const claim = v.persistentVolumeClaim.claimName;
        const pvc = await api.call<V1PersistentVolumeClaim>(
          'GET',
          `/api/v1/namespaces/${ns}/persistentvolumeclaims/${claim}`,
        );
        if (!pvc.spec?.volumeName) throw new Error(`claim ${claim} is not bound`);
        const pv = await api.call<{ spec: { hostPath?: { path: string } } }>(
          'GET',
          `/api/v1/persistentvolumes/${pvc.spec.volumeName}`,
        );
        if (!pv.spec.hostPath) throw new Error(`volume ${pvc.spec.volumeName} is not a hostPath volume`);
        await mkdir(pv.spec.hostPath.path, { recursive: true });
        dirs.set(v.name, pv.spec.hostPath.path);
      } else if (v.hostPath) {
        await mkdir(v.hostPath.path, { recursive: true });
        dirs.set(v.name, v.hostPath.path);
      } else {
        await mkdir(local, { recursive: true });
        const files: Record<string, string> = {};
        const items = (data: Record<string, string>, list?: { key: string; path: string }[]) => {
          for (const [k, val] of Object.entries(data)) {
            const item = list?.find((i) => i.key === k);
            if (!list || item) files[item?.path ?? k] = val;
          }
        };
        if (v.configMap) items(await readKey('configmaps', ns, v.configMap.name!), v.configMap.items);
        if (v.secret) items(await readKey('secrets', ns, v.secret.secretName!), v.secret.items);
        for (const item of v.downwardAPI?.items ?? [])
          if (item.fieldRef)
            files[item.path] = fieldValue(this.pod, item.fieldRef.fieldPath, this.network!.ip);
        for (const src of v.projected?.sources ?? []) {
          if (src.serviceAccountToken)
            files[src.serviceAccountToken.path] = await this.token(
              src.serviceAccountToken.audience,
              src.serviceAccountToken.expirationSeconds,
            );
          if (src.configMap) items(await readKey('configmaps', ns, src.configMap.name!), src.configMap.items);
          if (src.secret) items(await readKey('secrets', ns, src.secret.name!), src.secret.items);
          for (const item of src.downwardAPI?.items ?? [])
            if (item.fieldRef)
              files[item.path] = fieldValue(this.pod, item.fieldRef.fieldPath, this.network!.ip);
        }
        for (const [path, content] of Object.entries(files)) {
          await mkdir(join(local, path, '..'), { recursive: true });
          await writeFile(join(local, path), content);
        }
        dirs.set(v.name, local);
      }
    }
    return dirs;
  }

  async token(audience?: string, expirationSeconds?: number): Promise<string> {
    const ns = this.pod.metadata!.namespace!;
    const sa = this.pod.spec?.serviceAccountName ?? 'default';
    const res = await api.call<{ status: { token: string } }>(
      'POST',
      `/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`,
      {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: {
          audiences: audience ? [audience] : [],
          expirationSeconds: expirationSeconds ?? 3607,
          boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: this.pod.metadata!.name, uid: this.uid },
        },
      },
    );
    return res.status.token;
  }

  startContainer(c: ContainerRun): void {
    if (this.terminating) return;
    const resolved = resolveCommand(state.images, c.spec.image ?? '', c.spec.command, c.spec.args);
    if (!resolved.ok) {
      // Nothing to pull here: report it the way the kubelet does, once, and never hang.
      c.state = {
        waiting: { reason: c.everStarted ? 'ImagePullBackOff' : 'ErrImagePull', message: resolved.message },
      };
      log(`${this.key}/${c.spec.name}: ${resolved.message}`);
      return;
    }
    const env = this.envByContainer.get(c.spec.name) ?? {};
    const argv = resolved.argv.map((a) => expandReferences(a, env));
    const mounts = this.mountsByContainer.get(c.spec.name) ?? [];
    // Inside the pod's network namespace: own UTS namespace (hostname = pod name) and bind mounts of
    // the pod's volumes at their mountPaths (ip netns exec already gives a private mount namespace).
    const script =
      'hostname "$1"; n=$2; shift 2; while [ "$n" -gt 0 ]; do mkdir -p "$2" && mount --bind "$1" "$2" || exit 97; shift 2; n=$((n-1)); done; exec "$@"';
    const args = [
      'netns',
      'exec',
      this.network!.netns,
      'unshare',
      '--uts',
      'sh',
      '-c',
      script,
      'sh',
      env.HOSTNAME,
      String(mounts.length),
      ...mounts.flatMap((m) => [m.source, m.target]),
      ...argv,
    ];
    const logPath = join(this.dir, `${c.spec.name}.log`);
    void open(logPath, 'a').then((fh) => {
      if (this.terminating) return fh.close();
      const child = spawn('ip', args, {
        detached: true,
        env,
        cwd: c.spec.workingDir ?? resolved.cwd,
        stdio: ['ignore', fh.fd, fh.fd],
      });
      void fh.close();
      c.child = child;
      c.everStarted = true;
      c.started = true;
      c.ready = !c.spec.readinessProbe;
      c.state = { running: { startedAt: apiTime() } };
      log(`${this.key}/${c.spec.name}: started pid ${child.pid}: ${argv.join(' ')}`);
      child.on('exit', (code, signal) => this.enqueue(() => this.onExit(c, child, code, signal)));
      child.on('error', (err) => log(`${this.key}/${c.spec.name}: spawn error ${err.message}`));
      this.startProbes(c, child);
      this.enqueue(() => this.pushStatus());
    });
  }

  async onExit(
    c: ContainerRun,
    child: ChildProcess,
    code: number | null,
    signal: NodeJS.Signals | null,
  ): Promise<void> {
    if (c.child !== child) return;
    for (const t of c.timers) clearTimeout(t);
    c.timers = [];
    c.child = undefined;
    c.ready = false;
    c.started = false;
    const exitCode = code ?? 128 + (signal ? signalNumber(signal) : 0);
    const terminated = {
      exitCode,
      reason: exitCode === 0 ? 'Completed' : 'Error',
      ...(signal ? { signal: signalNumber(signal) } : {}),
      startedAt: (c.state.running as { startedAt?: string } | undefined)?.startedAt,
      finishedAt: apiTime(),
    };
    log(`${this.key}/${c.spec.name}: exited code=${code} signal=${signal}`);
    const policy = this.pod.spec?.restartPolicy ?? 'Always';
    const restart = !this.terminating && (policy === 'Always' || (policy === 'OnFailure' && exitCode !== 0));
    if (!restart) {
      c.state = { terminated };
      await this.pushStatus();
      return;
    }
    c.lastState = { terminated };
    c.restartCount++;
    const backoffMs = Math.min(1000 * 2 ** (c.restartCount - 1), 20_000);
    c.state = {
      waiting: {
        reason: 'CrashLoopBackOff',
        message: `back-off ${backoffMs / 1000}s restarting failed container=${c.spec.name} pod=${this.pod.metadata?.name}`,
      },
    };
    await this.pushStatus();
    c.timers.push(setTimeout(() => this.startContainer(c), backoffMs));
  }

  startProbes(c: ContainerRun, child: ChildProcess): void {
    const schedule = (probe: V1Probe, onResult: (ok: boolean) => void) => {
      const period = (probe.periodSeconds ?? 10) * 1000;
      const tick = async () => {
        if (c.child !== child) return;
        const ok = await this.probe(c.spec, probe);
        if (c.child !== child) return;
        onResult(ok);
        c.timers.push(setTimeout(tick, period));
      };
      c.timers.push(setTimeout(tick, (probe.initialDelaySeconds ?? 0) * 1000));
    };
    const threshold = (probe: V1Probe, onSuccess: () => void, onFailure: () => void) => {
      let successes = 0;
      let failures = 0;
      return (ok: boolean) => {
        successes = ok ? successes + 1 : 0;
        failures = ok ? 0 : failures + 1;
        if (ok && successes >= (probe.successThreshold ?? 1)) onSuccess();
        if (!ok && failures >= (probe.failureThreshold ?? 3)) onFailure();
      };
    };
    const readiness = c.spec.readinessProbe;
    const liveness = c.spec.livenessProbe;
    const startup = c.spec.startupProbe;
    const kill = (why: string) => {
      log(`${this.key}/${c.spec.name}: ${why}, restarting`);
      void this.stopContainer(
        c,
        (liveness?.terminationGracePeriodSeconds ?? this.pod.spec?.terminationGracePeriodSeconds ?? 30) *
          1000,
      );
    };
    const afterStartup = () => {
      if (readiness) {
        schedule(
          readiness,
          threshold(
            readiness,
            () => this.setReady(c, true),
            () => this.setReady(c, false),
          ),
        );
      }
      if (liveness)
        schedule(
          liveness,
          threshold(
            liveness,
            () => {},
            () => kill('liveness probe failed'),
          ),
        );
    };
    if (!startup) return afterStartup();
    let done = false;
    schedule(
      startup,
      threshold(
        startup,
        () => {
          if (done) return;
          done = true;
          afterStartup();
        },
        () => {
          if (!done) kill('startup probe failed');
        },
      ),
    );
  }

  setReady(c: ContainerRun, ready: boolean): void {
    if (c.ready === ready) return;
    c.ready = ready;
    this.enqueue(() => this.pushStatus());
  }

  async probe(spec: V1Container, probe: V1Probe): Promise<boolean> {
    const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
    const port = (p: number | string): number =>
      typeof p === 'number' ? p : Number(spec.ports?.find((cp) => cp.name === p)?.containerPort ?? p);
    const ip = this.network!.ip;
    if (probe.httpGet) {
      const g = probe.httpGet;
      const req = g.scheme === 'HTTPS' ? httpsRequest : httpRequest;
      return new Promise<boolean>((resolve) => {
        const r = req(
          {
            host: g.host ?? ip,
            port: port(g.port),
            path: g.path ?? '/',
            timeout: timeoutMs,
            rejectUnauthorized: false,
            headers: Object.fromEntries((g.httpHeaders ?? []).map((h) => [h.name, h.value])),
          },
          (res) => {
            res.resume();
            resolve((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400);
          },
        );
        r.on('timeout', () => r.destroy());
        r.on('error', () => resolve(false));
        r.end();
      });
    }
    if (probe.tcpSocket) {
      const t = probe.tcpSocket;
      return new Promise<boolean>((resolve) => {
        const s = connect({ host: t.host ?? ip, port: port(t.port), timeout: timeoutMs }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('timeout', () => (s.destroy(), resolve(false)));
        s.on('error', () => resolve(false));
      });
    }
    if (probe.exec?.command?.length) {
      const cmd = probe.exec.command;
      return new Promise<boolean>((resolve) => {
        const p = spawn('ip', ['netns', 'exec', this.network!.netns, ...cmd], {
          stdio: 'ignore',
          timeout: timeoutMs,
        });
        p.on('exit', (code) => resolve(code === 0));
        p.on('error', () => resolve(false));
      });
    }
    log(`${this.key}/${spec.name}: unsupported probe type (grpc); treating as success`);
    return true;
  }

  /** SIGTERM, wait up to the grace period, SIGKILL. Resolves when the process is gone. */
  async stopContainer(c: ContainerRun, graceMs: number): Promise<void> {
    const child = c.child;
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  async terminate(deleteFromApi: boolean): Promise<void> {
    if (this.terminating) return;
    this.terminating = true;
    const graceSeconds =
      this.pod.metadata?.deletionGracePeriodSeconds ?? this.pod.spec?.terminationGracePeriodSeconds ?? 30;
    log(`${this.key}: terminating (grace ${graceSeconds}s)`);
    for (const c of this.containers) for (const t of c.timers) clearTimeout(t);
    await Promise.all(this.containers.map((c) => this.stopContainer(c, graceSeconds * 1000)));
    // Before the API delete: once the pod is gone there, nothing of it may still run (a
    // StatefulSet creates the successor, with the same volume, at once).
    await this.removeNetns();
    if (deleteFromApi) {
      const ns = this.pod.metadata!.namespace!;
      await api
        .call('DELETE', `/api/v1/namespaces/${ns}/pods/${this.pod.metadata!.name}`, {
          apiVersion: 'v1',
          kind: 'DeleteOptions',
          gracePeriodSeconds: 0,
          preconditions: { uid: this.uid },
        })
        .catch((err) => {
          if (!is404(err) && !is409(err)) throw err;
        });
    }
    await this.cleanup();
  }

  async cleanup(): Promise<void> {
    // Runs once: a second run (our own final delete plus the watch's DELETED event) would remove
    // the namespace of a new pod that has meanwhile been given the same address.
    if (this.cleanedUp) return;
    this.cleanedUp = true;
    await this.removeNetns();
    releaseHost(this.uid);
    await rm(this.dir, { recursive: true, force: true });
    workers.delete(this.uid);
    log(`${this.key}: removed`);
  }

  /**
   * Kills whatever still runs in the pod's namespace and removes it, once: terminate does it before
   * the API delete, cleanup for a pod deleted without terminate (forced) and shutdown for the rest.
   */
  removeNetns(): Promise<void> {
    if (!this.network) return Promise.resolve();
    return (this.netnsRemoval ??= deleteNetns(this.network.netns));
  }

  condition(type: string, ok: boolean, reason?: string) {
    const status = ok ? 'True' : 'False';
    const prev = this.conditionTimes.get(type);
    const time = prev && prev.status === status ? prev.time : apiTime();
    this.conditionTimes.set(type, { status, time });
    return { type, status, lastTransitionTime: time, lastProbeTime: null, ...(reason ? { reason } : {}) };
  }

  phase(): string {
    const policy = this.pod.spec?.restartPolicy ?? 'Always';
    const states = this.containers.map((c) => c.state);
    if (this.setupError || this.containers.some((c) => !c.everStarted)) return 'Pending';
    if (policy !== 'Always' && states.every((s) => s.terminated)) {
      return states.every((s) => (s.terminated as { exitCode: number }).exitCode === 0)
        ? 'Succeeded'
        : 'Failed';
    }
    return 'Running';
  }

  async pushStatus(): Promise<void> {
    if (this.gone || this.terminating) return;
    const allReady = this.containers.length > 0 && this.containers.every((c) => c.ready);
    const status = {
      phase: this.phase(),
      hostIP: net.gateway,
      hostIPs: [{ ip: net.gateway }],
      podIP: this.network?.ip,
      podIPs: this.network ? [{ ip: this.network.ip }] : [],
      startTime: this.startTime,
      conditions: [
        this.condition('PodReadyToStartContainers', this.network !== undefined),
        this.condition('Initialized', true),
        this.condition('ContainersReady', allReady, allReady ? undefined : 'ContainersNotReady'),
        this.condition('Ready', allReady, allReady ? undefined : 'ContainersNotReady'),
      ],
      containerStatuses: this.containers.map((c) => ({
        name: c.spec.name,
        image: c.spec.image,
        imageID: `pivot-local://${c.spec.image}`,
        containerID: c.child?.pid ? `process://${c.child.pid}` : undefined,
        ready: c.ready,
        started: c.started,
        restartCount: c.restartCount,
        state: c.state,
        lastState: c.lastState,
      })),
    };
    const json = JSON.stringify(status);
    if (json === this.lastStatusJson) return;
    const ns = this.pod.metadata!.namespace!;
    try {
      await api.call(
        'PATCH',
        `/api/v1/namespaces/${ns}/pods/${this.pod.metadata!.name}/status`,
        { metadata: { uid: this.uid }, status },
        'application/strategic-merge-patch+json',
      );
      this.lastStatusJson = json;
    } catch (err) {
      if (is404(err) || is409(err)) return; // pod gone or replaced (uid precondition)
      throw err;
    }
  }
}

function signalNumber(signal: NodeJS.Signals): number {
  return (
    (
      { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGABRT: 6, SIGSEGV: 11 } as Record<
        string,
        number
      >
    )[signal] ?? 0
  );
}

// Host indexes 2..254 of the cluster /24, one per pod (kept across container restarts). Handed out
// round-robin: an address reused at once would meet neighbours (the host, other pods) that still
// cache the previous pod's MAC address, and stay unreachable until that ARP entry times out.
const hostByUid = new Map<string, number>();
let lastHost = 1;
function allocateHost(uid: string): number {
  const used = new Set(hostByUid.values());
  for (let step = 1; step <= 253; step++) {
    const i = ((lastHost - 2 + step) % 253) + 2;
    if (!used.has(i)) {
      hostByUid.set(uid, i);
      lastHost = i;
      return i;
    }
  }
  throw new Error('no free pod address in the cluster subnet');
}
function releaseHost(uid: string): void {
  hostByUid.delete(uid);
}

const workers = new Map<string, PodWorker>();

function onPod(pod: V1Pod): void {
  const uid = pod.metadata?.uid;
  if (!uid || !pod.spec?.nodeName || !myNodes.has(pod.spec.nodeName)) return;
  const existing = workers.get(uid);
  if (existing) return existing.update(pod);
  if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') {
    if (!pod.metadata?.deletionTimestamp) return;
  }
  const w = new PodWorker(pod);
  workers.set(uid, w);
  if (pod.metadata?.deletionTimestamp) w.enqueue(() => w.terminate(true));
  else w.enqueue(() => w.start());
}

function onPodDeleted(pod: V1Pod): void {
  const w = pod.metadata?.uid ? workers.get(pod.metadata.uid) : undefined;
  if (!w) return;
  w.gone = true;
  // Deleted without our final delete (forced): kill everything now.
  w.terminating = true;
  for (const c of w.containers) c.child?.kill('SIGKILL');
  w.enqueue(() => w.cleanup());
}

function watch<T extends { metadata?: { name?: string } }>(
  path: string,
  list: () => Promise<{ items: T[] }>,
  handlers: {
    add: (o: T) => void;
    update: (o: T) => void;
    delete: (o: T) => void;
  },
): void {
  const informer = makeInformer(kc, path, list as never);
  informer.on('add', handlers.add as never);
  informer.on('update', handlers.update as never);
  informer.on('delete', handlers.delete as never);
  informer.on('error', (err: unknown) => {
    log(`watch ${path} failed: ${(err as Error)?.message ?? err}; restarting in 1s`);
    setTimeout(() => void informer.start().catch(() => undefined), 1000);
  });
  void informer.start();
}

async function main(): Promise<void> {
  for (const name of myNodes) await registerNode(name);
  log(`registered nodes ${[...myNodes].join(', ')}`);
  void heartbeatLoop();
  const provision = (pvc: V1PersistentVolumeClaim) =>
    void provisionVolume(pvc).catch((err) => log(`provision ${pvc.metadata?.name}: ${err.message}`));
  watch<V1PersistentVolumeClaim>(
    '/api/v1/persistentvolumeclaims',
    () => core.listPersistentVolumeClaimForAllNamespaces(),
    {
      add: provision,
      update: provision,
      delete: (pvc) =>
        void releaseVolume(pvc).catch((err) => log(`release ${pvc.metadata?.name}: ${err.message}`)),
    },
  );
  watch<V1Pod>('/api/v1/pods', () => core.listPodForAllNamespaces(), {
    add: onPod,
    update: onPod,
    delete: onPodDeleted,
  });
}

async function shutdown(): Promise<void> {
  log('shutting down: killing pod processes');
  await Promise.all([...workers.values()].map((w) => w.removeNetns()));
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown());
process.on('SIGINT', () => void shutdown());

await main();
