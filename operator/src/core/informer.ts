// client-node's informer stops for good on any error other than 410 Gone and client timeouts.
// This wrapper restarts it with capped exponential backoff, so a flaky API server or an expired
// token never leaves the controller blind. It also makes stop() final: client-node's ListWatch
// opens a new watch after a list or reconnect delay that was in flight when it was stopped.
import { ListWatch, Watch } from '@kubernetes/client-node';
import type { KubeConfig, KubernetesObject, ListPromise } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Metrics } from './metrics.ts';
import { realClock, type Clock } from './workqueue.ts';

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
  /** Drives restart backoff and the watch reconnect delay (tests use a fake one). */
  clock?: Clock;
}

export class RestartingInformer<T extends KubernetesObject> {
  private readonly o: InformerOptions<T>;
  private readonly clock: Clock;
  private readonly inner: ListWatch<T>;
  private backoffMs: number;
  /** Cancels of every pending timer: the restart, start()'s retry sleep, watch reconnect delays. */
  private readonly timers = new Set<() => void>();
  private restartPending = false;
  private stopped = false;
  private failedSinceStart = false;
  private hasSynced = false;

  constructor(options: InformerOptions<T>) {
    this.o = options;
    this.clock = options.clock ?? realClock;
    this.backoffMs = options.minBackoffMs ?? 500;
    const watch = new Watch(options.kubeConfig);
    // A watch requested or established after stop() is never opened or is aborted at once.
    const gatedWatch = {
      watch: async (...args: Parameters<Watch['watch']>) => {
        if (this.stopped) return new AbortController();
        const request = await watch.watch(...args);
        if (this.stopped) request.abort();
        return request;
      },
    } as Watch;
    this.inner = new ListWatch(
      options.path,
      gatedWatch,
      options.list,
      false,
      options.labelSelector,
      undefined,
      // After stop() a pending reconnect delay never resolves, so no watch follows it.
      { delayFn: (ms) => new Promise((resolve) => this.after(ms, resolve)) },
    );
    this.inner.on('add', options.onEvent);
    this.inner.on('update', options.onEvent);
    this.inner.on('delete', options.onEvent);
    this.inner.on('error', (err) => this.restartLater(err));
  }

  /** Resolves once the first list has filled the cache (retrying until then, or until stop()). */
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
      await new Promise<void>((resolve) => this.after(delay, resolve, resolve));
    }
  }

  synced(): boolean {
    return this.hasSynced;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const cancel of [...this.timers]) cancel();
    this.restartPending = false;
    await this.inner.stop();
  }

  get(name: string, namespace?: string): T | undefined {
    return this.inner.get(name, namespace);
  }

  list(namespace?: string): readonly T[] {
    return this.inner.list(namespace);
  }

  /** Runs fn after ms unless stop() comes first (then onCancel runs, if given). */
  private after(ms: number, fn: () => void, onCancel?: () => void): void {
    const cancelTimer = this.clock.schedule(() => {
      this.timers.delete(cancel);
      fn();
    }, ms);
    const cancel = () => {
      this.timers.delete(cancel);
      cancelTimer();
      onCancel?.();
    };
    this.timers.add(cancel);
  }

  private restartLater(err: unknown): void {
    this.failedSinceStart = true;
    if (this.stopped || this.restartPending || !this.hasSynced) return;
    const delay = this.nextBackoff();
    this.o.log.warn({ err, resource: this.o.resource, delayMs: delay }, 'informer stopped; restarting');
    this.o.metrics?.informerRestarts.inc({ resource: this.o.resource });
    this.restartPending = true;
    this.after(delay, () => {
      this.restartPending = false;
      this.failedSinceStart = false;
      this.inner.start().then(
        () => {
          if (!this.failedSinceStart) this.backoffMs = this.o.minBackoffMs ?? 500;
        },
        (e: unknown) => this.restartLater(e),
      );
    });
  }

  private nextBackoff(): number {
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.o.maxBackoffMs ?? 30_000, this.backoffMs * 2);
    return delay;
  }
}
