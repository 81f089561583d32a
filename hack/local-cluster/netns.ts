// Pod networking without a container runtime: one Linux bridge per cluster with the host's
// address on it, and per pod a network namespace joined to the bridge by a veth pair. The range is
// 10.244.<subnet>.0/24, used only inside this machine; nothing is routed off the host.
import { readdir } from 'node:fs/promises';
import { run, waitFor } from './run.ts';

export interface ClusterNetwork {
  subnet: number; // third octet of 10.244.<subnet>.0/24
  bridge: string;
  gateway: string; // the host's address on the bridge; the API server listens here
}

export function clusterNetwork(subnet: number): ClusterNetwork {
  if (!Number.isInteger(subnet) || subnet < 1 || subnet > 254)
    throw new Error(`subnet ${subnet} out of 1..254`);
  return { subnet, bridge: `pvb${subnet}`, gateway: `10.244.${subnet}.1` };
}

export interface PodNetwork {
  netns: string;
  hostVeth: string;
  ip: string;
}

/** Names for host index 2..254 of a cluster's subnet (interface names must stay under 16 chars). */
export function podNetwork(net: ClusterNetwork, host: number): PodNetwork {
  if (!Number.isInteger(host) || host < 2 || host > 254)
    throw new Error(`pod host index ${host} out of 2..254`);
  return {
    netns: netnsPrefix(net) + host,
    hostVeth: `pvh${net.subnet}x${host}`,
    ip: `10.244.${net.subnet}.${host}`,
  };
}

export function netnsPrefix(net: ClusterNetwork): string {
  return `pivot-${net.subnet}-`;
}

/** Fails when the bridge exists: that subnet belongs to another live cluster. */
export async function createBridge(net: ClusterNetwork): Promise<void> {
  await run('ip', ['link', 'add', net.bridge, 'type', 'bridge']);
  await run('ip', ['addr', 'add', `${net.gateway}/24`, 'dev', net.bridge]);
  await run('ip', ['link', 'set', net.bridge, 'up']);
}

export async function deleteLink(name: string): Promise<void> {
  await run('ip', ['link', 'del', name]).catch(() => undefined);
}

export async function createPodNetns(net: ClusterNetwork, pod: PodNetwork): Promise<void> {
  await deleteNetns(pod.netns);
  await deleteLink(pod.hostVeth);
  await run('ip', ['netns', 'add', pod.netns]);
  await run('ip', ['link', 'add', pod.hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns]);
  await run('ip', ['link', 'set', pod.hostVeth, 'master', net.bridge, 'up']);
  await run('ip', ['-n', pod.netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0']);
  await run('ip', ['-n', pod.netns, 'link', 'set', 'eth0', 'up']);
  await run('ip', ['-n', pod.netns, 'link', 'set', 'lo', 'up']);
  await run('ip', ['-n', pod.netns, 'route', 'add', 'default', 'via', net.gateway]);
  // The host may still cache the MAC of an earlier pod that had this address.
  await run('ip', ['neigh', 'flush', 'to', pod.ip, 'dev', net.bridge]).catch(() => undefined);
}

/** PIDs of every process inside a namespace (the pod's processes and their children). */
export async function netnsPids(netns: string): Promise<number[]> {
  const out = await run('ip', ['netns', 'pids', netns]).catch(() => '');
  return out
    .split('\n')
    .filter(Boolean)
    .map((s) => Number(s));
}

/**
 * SIGKILLs whatever still runs inside and waits (bounded) until it is gone, then removes the
 * namespace (which removes its veth too).
 */
export async function deleteNetns(netns: string): Promise<void> {
  const pids = await netnsPids(netns);
  const stillRunning = (pid: number) => {
    try {
      process.kill(pid, 'SIGKILL');
      return true;
    } catch {
      return false;
    }
  };
  await waitFor(
    `processes ${pids.join(', ')} in ${netns} to exit`,
    () => (pids.some(stillRunning) ? undefined : true),
    10_000,
    50,
  ).catch(() => undefined); // a process stuck in the kernel must not stop the rest of the cleanup
  await run('ip', ['netns', 'del', netns]).catch(() => undefined);
}

export async function listNetns(prefix: string): Promise<string[]> {
  const names = await readdir('/var/run/netns').catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(prefix));
}

/** Subnets whose bridge exists on this host, so a new cluster never reuses a live one. */
export async function subnetsInUse(): Promise<Set<number>> {
  const out = await run('ip', ['-o', 'link', 'show', 'type', 'bridge']).catch(() => '');
  const used = new Set<number>();
  for (const m of out.matchAll(/^\d+: pvb(\d+)[:@]/gm)) used.add(Number(m[1]));
  return used;
}
