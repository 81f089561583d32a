// Leader election on a coordination.k8s.io/v1 Lease, with client-go's timings (15 s lease,
// 10 s renew deadline, 2 s retry period). Expiry is judged by the local clock from the moment
// this process last saw the lease record change, never by comparing another machine's clock.
import { V1MicroTime } from '@kubernetes/client-node';
import type { CoordinationV1Api, V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Metrics } from './metrics.ts';
import { realClock, type Clock } from './workqueue.ts';

export interface LeaderElectionTimings {
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
}

export const DEFAULT_TIMINGS: Readonly<LeaderElectionTimings> = Object.freeze({
  leaseDurationMs: 15_000,
  renewDeadlineMs: 10_000,
  retryPeriodMs: 2_000,
});

export interface LeaseRecord {
  holder: string;
  leaseDurationSeconds: number;
  renewTime: string;
  transitions: number;
}

export interface Observation {
  record: LeaseRecord;
  /** Local time at which this record (holder + renewTime) was first seen. */
  observedAt: number;
}

export type LeaseDecision =
  | { action: 'create' }
  | { action: 'renew' }
  | { action: 'acquire'; transitions: number }
  | { action: 'wait'; holder: string; expiresInMs: number };

const sameRecord = (a: LeaseRecord, b: LeaseRecord) => a.holder === b.holder && a.renewTime === b.renewTime;

/** Updates what we know of the lease: a changed record restarts its expiry clock. */
export function observe(
  previous: Observation | null,
  record: LeaseRecord | null,
  now: number,
): Observation | null {
  if (!record) return null;
  if (previous && sameRecord(previous.record, record)) return previous;
  return { record, observedAt: now };
}

/** What to do with the lease now. Pure: same inputs, same answer. */
export function decide(observation: Observation | null, identity: string, now: number): LeaseDecision {
  if (!observation) return { action: 'create' };
  const { record, observedAt } = observation;
  if (record.holder === identity) return { action: 'renew' };
  const expiresAt = observedAt + record.leaseDurationSeconds * 1000;
  if (record.holder === '' || now >= expiresAt)
    return { action: 'acquire', transitions: record.transitions + 1 };
  return { action: 'wait', holder: record.holder, expiresInMs: expiresAt - now };
}

export interface LeaderElectorOptions {
  api: CoordinationV1Api;
  namespace: string;
  name: string;
  identity: string;
  log: Logger;
  metrics?: Metrics;
  timings?: LeaderElectionTimings;
  clock?: Clock;
  onStartedLeading: () => void;
  /** Leadership lost (renew deadline passed). The process should stop reconciling at once. */
  onStoppedLeading: () => void;
}

const toRecord = (lease: V1Lease): LeaseRecord => ({
  holder: lease.spec?.holderIdentity ?? '',
  leaseDurationSeconds: lease.spec?.leaseDurationSeconds ?? 15,
  renewTime: lease.spec?.renewTime ? new Date(lease.spec.renewTime as unknown as string).toISOString() : '',
  transitions: lease.spec?.leaseTransitions ?? 0,
});

const statusCode = (e: unknown) => (e as { code?: number }).code;

export class LeaderElector {
  private readonly o: LeaderElectorOptions;
  private readonly timings: LeaderElectionTimings;
  private readonly clock: Clock;
  private observation: Observation | null = null;
  private lease: V1Lease | null = null;
  private leading = false;
  private lastRenew = 0;
  private stopped = false;
  private cancelTimer: (() => void) | null = null;

  constructor(options: LeaderElectorOptions) {
    this.o = options;
    this.timings = options.timings ?? DEFAULT_TIMINGS;
    this.clock = options.clock ?? realClock;
  }

  isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.o.metrics?.leaderStatus.set({ name: this.o.name }, 0);
    void this.tick();
  }

  /** Stops trying; a leader releases the lease so a standby takes over without waiting for expiry. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    if (!this.leading || !this.lease) return;
    this.setLeading(false);
    try {
      const body = structuredClone(this.lease);
      body.spec = { ...body.spec, holderIdentity: '', leaseDurationSeconds: 1 };
      await this.o.api.replaceNamespacedLease({ name: this.o.name, namespace: this.o.namespace, body });
    } catch (e) {
      this.o.log.warn({ err: e }, 'could not release the leader lease');
    }
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.tryAcquireOrRenew();
    } catch (e) {
      this.o.log.warn({ err: e }, 'leader election attempt failed');
    }
    if (this.leading && this.clock.now() - this.lastRenew > this.timings.renewDeadlineMs) {
      this.o.log.error('failed to renew the leader lease within the renew deadline');
      this.setLeading(false);
      this.o.onStoppedLeading();
    }
    if (this.stopped) return;
    this.cancelTimer = this.clock.schedule(() => void this.tick(), this.timings.retryPeriodMs);
  }

  private async tryAcquireOrRenew(): Promise<void> {
    const { api, namespace, name, identity } = this.o;
    const now = this.clock.now();
    try {
      this.lease = await api.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (statusCode(e) !== 404) throw e;
      this.lease = null;
    }
    this.observation = observe(this.observation, this.lease ? toRecord(this.lease) : null, now);
    const decision = decide(this.observation, identity, now);
    if (decision.action === 'wait') {
      if (this.leading) {
        this.setLeading(false);
        this.o.onStoppedLeading();
      }
      return;
    }
    const stamp = new V1MicroTime(now);
    const spec = {
      holderIdentity: identity,
      leaseDurationSeconds: this.timings.leaseDurationMs / 1000,
      renewTime: stamp,
      acquireTime: decision.action === 'renew' ? this.lease?.spec?.acquireTime : stamp,
      leaseTransitions:
        decision.action === 'acquire' ? decision.transitions : (this.lease?.spec?.leaseTransitions ?? 0),
    };
    // The resourceVersion in the body makes the update conditional: of two candidates racing
    // for an expired lease only one succeeds.
    this.lease =
      decision.action === 'create'
        ? await api.createNamespacedLease({ namespace, body: { metadata: { name, namespace }, spec } })
        : await api.replaceNamespacedLease({
            name,
            namespace,
            body: { metadata: this.lease!.metadata, spec },
          });
    this.observation = observe(this.observation, toRecord(this.lease), this.clock.now());
    this.lastRenew = now;
    if (!this.leading) {
      this.o.log.info({ lease: `${namespace}/${name}`, identity }, 'became leader');
      this.setLeading(true);
      this.o.onStartedLeading();
    }
  }

  private setLeading(leading: boolean): void {
    this.leading = leading;
    this.o.metrics?.leaderStatus.set({ name: this.o.name }, leading ? 1 : 0);
  }
}
