// core/v1 Events on the objects the operator manages. A repeat of the same event (same object,
// type, reason and message) within the window bumps the existing Event's count instead of
// creating a new one, as kubelet and client-go's recorder do. Recording is best effort: it never
// throws into or blocks the caller, and a failed write is logged, not retried.
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import type { CoreV1Api, CoreV1Event, KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import { realClock, type Clock } from './workqueue.ts';

export type EventType = 'Normal' | 'Warning';

export interface EventRecorder {
  event(object: KubernetesObject, type: EventType, reason: string, message: string): void;
}

interface Series {
  name: string;
  namespace: string;
  count: number;
  first: Date;
  lastSeen: number;
  /** Whether the Event object is known to exist (a failed create leaves it to the next repeat). */
  exists: boolean;
  /** Writes of one series run in order, so a count never goes backwards or patches a missing Event. */
  writes: Promise<void>;
}

const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const MAX_MESSAGE = 1024;
const statusCode = (e: unknown) => (e as { code?: number }).code;

export class KubeEventRecorder implements EventRecorder {
  private readonly series = new Map<string, Series>();
  private readonly api: CoreV1Api;
  private readonly component: string;
  private readonly log: Logger;
  private readonly windowMs: number;
  private readonly clock: Clock;

  constructor(api: CoreV1Api, component: string, log: Logger, windowMs = 10 * 60_000, clock = realClock) {
    this.api = api;
    this.component = component;
    this.log = log;
    this.windowMs = windowMs;
    this.clock = clock;
  }

  event(object: KubernetesObject, type: EventType, reason: string, message: string): void {
    const meta = object.metadata;
    if (!meta?.name) {
      this.log.warn({ reason, kind: object.kind }, 'could not record event: object has no name');
      return;
    }
    const now = this.clock.now();
    this.prune(now);
    const namespace = meta.namespace ?? 'default';
    const key = `${meta.uid ?? `${namespace}/${object.kind}/${meta.name}`}/${type}/${reason}/${message}`;
    let s = this.series.get(key);
    if (!s) {
      const name = `${meta.name}.${now.toString(16)}${randomBytes(3).toString('hex')}`;
      s = {
        name,
        namespace,
        count: 0,
        first: new Date(now),
        lastSeen: now,
        exists: false,
        writes: Promise.resolve(),
      };
      this.series.set(key, s);
    }
    s.count++;
    s.lastSeen = now;
    const series = s;
    const count = s.count;
    const body: CoreV1Event = {
      metadata: { name: s.name, namespace },
      involvedObject: {
        apiVersion: object.apiVersion,
        kind: object.kind,
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resourceVersion: meta.resourceVersion,
      },
      type,
      reason,
      message: message.slice(0, MAX_MESSAGE),
      source: { component: this.component },
      reportingComponent: this.component,
      reportingInstance: process.env.POD_NAME ?? this.component,
      firstTimestamp: s.first,
      lastTimestamp: new Date(now),
      count,
    };
    s.writes = s.writes
      .then(() => this.write(series, body))
      .catch((err: unknown) => this.log.warn({ err, reason, count }, 'could not record event'));
  }

  private async write(s: Series, body: CoreV1Event): Promise<void> {
    if (s.exists) {
      try {
        await this.api.patchNamespacedEvent(
          {
            name: s.name,
            namespace: s.namespace,
            body: { count: body.count, lastTimestamp: body.lastTimestamp!.toISOString() },
          },
          MERGE_PATCH,
        );
        return;
      } catch (err) {
        // Deleted meanwhile (TTL or by hand): create it again with the count so far.
        if (statusCode(err) !== 404) throw err;
        s.exists = false;
      }
    }
    try {
      await this.api.createNamespacedEvent({ namespace: s.namespace, body });
    } catch (err) {
      // A create whose answer was lost left the Event behind: the next repeat patches it.
      if (statusCode(err) === 409) s.exists = true;
      throw err;
    }
    s.exists = true;
  }

  private prune(now: number): void {
    for (const [k, v] of this.series) if (now - v.lastSeen >= this.windowMs) this.series.delete(k);
  }
}
