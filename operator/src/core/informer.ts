// client-node's informer stops for good on any error other than 410 Gone and client timeouts.
// This wrapper restarts it with capped exponential backoff, so a flaky API server or an expired
// token never leaves the controller blind.
import { makeInformer } from '@kubernetes/client-node';
import type {
  Informer,
  KubeConfig,
  KubernetesObject,
  ListPromise,
  ObjectCache,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Metrics } from './metrics.ts';

export interface InformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** Watch path, e.g. /apis/apps/v1/statefulsets or /api/v1/namespaces/ns/pods. */
  path: string;
  list: ListPromise<T>;
  labelSelector?: string;
  /** Name for logs and metrics. */
  resource: string;
  log: Logger;
  metrics?: Metrics;
  /** Called for every add, update and delete (after the cache is updated). */
  onEvent: (obj: T) => void;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export class RestartingInformer<T extends KubernetesObject> {
  private readonly o: InformerOptions<T>;
  private readonly inner: Informer<T> & ObjectCache<T>;
  private backoffMs: number;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private failedSinceStart = false;
  private hasSynced = false;

  constructor(options: InformerOptions<T>) {
    this.o = options;
    this.backoffMs = options.minBackoffMs ?? 500;
    this.inner = makeInformer(options.kubeConfig, options.path, options.list, options.labelSelector);
    this.inner.on('add', options.onEvent);
    this.inner.on('update', options.onEvent);
    this.inner.on('delete', options.onEvent);
    this.inner.on('error', (err) => this.restartLater(err));
  }

  /** Resolves once the first list has filled the cache (retrying until then). */
  async start(): Promise<void> {
    this.stopped = false;
    while (!this.stopped) {
      this.failedSinceStart = false;
      let error: unknown;
      const onError = (err: unknown) => (error = err);
      this.inner.on('error', onError);
      try {
        await this.inner.start();
      } catch (err) {
        error = err;
      } finally {
        this.inner.off('error', onError);
      }
      if (error === undefined && !this.failedSinceStart) {
        this.hasSynced = true;
        this.backoffMs = this.o.minBackoffMs ?? 500;
        return;
      }
      const delay = this.nextBackoff();
      this.o.log.warn(
        { err: error, resource: this.o.resource, delayMs: delay },
        'informer failed to list; retrying',
      );
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  synced(): boolean {
    return this.hasSynced;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.inner.stop();
  }

  get(name: string, namespace?: string): T | undefined {
    return this.inner.get(name, namespace);
  }

  list(namespace?: string): readonly T[] {
    return this.inner.list(namespace);
  }

  private restartLater(err: unknown): void {
    this.failedSinceStart = true;
    if (this.stopped || this.timer || !this.hasSynced) return;
    const delay = this.nextBackoff();
    this.o.log.warn({ err, resource: this.o.resource, delayMs: delay }, 'informer stopped; restarting');
    this.o.metrics?.informerRestarts.inc({ resource: this.o.resource });
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.stopped) return;
      this.inner.start().then(
        () => {
          if (!this.failedSinceStart) this.backoffMs = this.o.minBackoffMs ?? 500;
        },
        (e: unknown) => this.restartLater(e),
      );
      this.failedSinceStart = false;
    }, delay);
  }

  private nextBackoff(): number {
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.o.maxBackoffMs ?? 30_000, this.backoffMs * 2);
    return delay;
  }
}
