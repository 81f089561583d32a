// core/v1 Events on the objects the operator manages. A repeat of the same event (same object,
// type, reason and message) within the window bumps the existing Event's count instead of
// creating a new one, as kubelet and client-go's recorder do.
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import type { CoreV1Api, KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';

export type EventType = 'Normal' | 'Warning';

export interface EventRecorder {
  event(object: KubernetesObject, type: EventType, reason: string, message: string): void;
}

interface Seen {
  name: string;
  namespace: string;
  count: number;
  lastSeen: number;
}

const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export class KubeEventRecorder implements EventRecorder {
  private readonly seen = new Map<string, Seen>();
  private readonly api: CoreV1Api;
  private readonly component: string;
  private readonly log: Logger;
  private readonly windowMs: number;

  constructor(api: CoreV1Api, component: string, log: Logger, windowMs = 10 * 60_000) {
    this.api = api;
    this.component = component;
    this.log = log;
    this.windowMs = windowMs;
  }

  event(object: KubernetesObject, type: EventType, reason: string, message: string): void {
    void this.record(object, type, reason, message).catch((err: unknown) =>
      this.log.warn({ err, reason }, 'could not record event'),
    );
  }

  private async record(object: KubernetesObject, type: EventType, reason: string, message: string) {
    const meta = object.metadata!;
    const namespace = meta.namespace ?? 'default';
    const key = `${meta.uid}/${type}/${reason}/${message}`;
    const now = Date.now();
    this.prune(now);
    const stamp = new Date(now);
    const seen = this.seen.get(key);
    if (seen && now - seen.lastSeen < this.windowMs) {
      seen.count++;
      seen.lastSeen = now;
      await this.api.patchNamespacedEvent(
        { name: seen.name, namespace, body: { count: seen.count, lastTimestamp: stamp.toISOString() } },
        MERGE_PATCH,
      );
      return;
    }
    const name = `${meta.name}.${now.toString(16)}${randomBytes(3).toString('hex')}`;
    this.seen.set(key, { name, namespace, count: 1, lastSeen: now });
    await this.api.createNamespacedEvent({
      namespace,
      body: {
        metadata: { name, namespace },
        involvedObject: {
          apiVersion: object.apiVersion,
          kind: object.kind,
          name: meta.name,
          namespace,
          uid: meta.uid,
          resourceVersion: meta.resourceVersion,
        },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: this.component },
        reportingComponent: this.component,
        reportingInstance: process.env.POD_NAME ?? this.component,
        firstTimestamp: stamp,
        lastTimestamp: stamp,
        count: 1,
      },
    });
  }

  private prune(now: number): void {
    for (const [k, v] of this.seen) if (now - v.lastSeen >= this.windowMs) this.seen.delete(k);
  }
}
