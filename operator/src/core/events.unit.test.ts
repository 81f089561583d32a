import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { ApiException } from '@kubernetes/client-node';
import type { CoreV1Api, CoreV1Event, KubernetesObject } from '@kubernetes/client-node';
import pino from 'pino';
import { Writable } from 'node:stream';
import { KubeEventRecorder } from './events.ts';
import { FakeClock } from './fake-clock.ts';

type Call =
  | { verb: 'create'; namespace: string; body: CoreV1Event }
  | { verb: 'patch'; namespace: string; name: string; body: { count: number; lastTimestamp: string } };

/**
 * A fake of the two Event calls the recorder makes. Each call waits for `answer` (a test can hold
 * answers back) and then fails with the next queued failure, if any.
 */
class FakeEventsApi {
  readonly calls: Call[] = [];
  readonly stored = new Map<string, CoreV1Event>();
  /** Next answers: an HTTP error, a thrown network error, or 'lost' (done, then a 504). */
  failures: (number | 'throw' | 'lost')[] = [];
  answer: Promise<void> = Promise.resolve();

  asApi(): CoreV1Api {
    return {
      createNamespacedEvent: async (p: { namespace: string; body: CoreV1Event }) => {
        this.calls.push({ verb: 'create', namespace: p.namespace, body: structuredClone(p.body) });
        await this.answer;
        const lost = this.failures[0] === 'lost' && this.failures.shift();
        if (!lost) this.fail();
        const key = `${p.namespace}/${p.body.metadata!.name}`;
        if (this.stored.has(key)) throw new ApiException(409, 'AlreadyExists', {}, {});
        this.stored.set(key, structuredClone(p.body));
        if (lost) throw new ApiException(504, 'answer lost', {}, {});
        return p.body;
      },
      patchNamespacedEvent: async (p: {
        namespace: string;
        name: string;
        body: { count: number; lastTimestamp: string };
      }) => {
        this.calls.push({ verb: 'patch', namespace: p.namespace, name: p.name, body: { ...p.body } });
        await this.answer;
        this.fail();
        const stored = this.stored.get(`${p.namespace}/${p.name}`);
        if (!stored) throw new ApiException(404, 'NotFound', {}, {});
        stored.count = p.body.count;
        stored.lastTimestamp = new Date(p.body.lastTimestamp);
        return stored;
      },
    } as unknown as CoreV1Api;
  }

  private fail(): void {
    const f = this.failures.shift();
    if (f === 'throw') throw new Error('connection refused');
    if (typeof f === 'number') throw new ApiException(f, `HTTP ${f}`, {}, {});
  }
}

const pod: KubernetesObject = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'demo-0', namespace: 'ns1', uid: 'uid-pod', resourceVersion: '42' },
};
const cluster: KubernetesObject = {
  apiVersion: 'pivot.io/v1alpha1',
  kind: 'PivotCluster',
  metadata: { name: 'demo', namespace: 'ns1', uid: 'uid-pc', resourceVersion: '7' },
};
const node: KubernetesObject = { apiVersion: 'v1', kind: 'Node', metadata: { name: 'n1', uid: 'uid-node' } };

const WINDOW = 60_000;
let api: FakeEventsApi;
let clock: FakeClock;
let warnings: string[];
let recorder: KubeEventRecorder;

beforeEach(() => {
  api = new FakeEventsApi();
  clock = new FakeClock(Date.parse('2026-11-22T01:00:00Z'));
  warnings = [];
  const sink = new Writable({
    write: (chunk: Buffer, _enc, done) => {
      warnings.push(JSON.parse(chunk.toString()).msg);
      done();
    },
  });
  recorder = new KubeEventRecorder(
    api.asApi(),
    'pivot-operator',
    pino({ level: 'warn' }, sink),
    WINDOW,
    clock,
  );
});

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => unhandled.push(e);
beforeEach(() => {
  process.on('unhandledRejection', onUnhandled);
});
afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
  expect(unhandled.splice(0)).toEqual([]);
});

/** Lets the recorder's queued writes run against the (immediately answering) fake. */
async function settled(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

const events = () => [...api.stored.values()];

describe('KubeEventRecorder', () => {
  it('creates an Event naming the object, with type, reason, message, source and count 1', async () => {
    recorder.event(cluster, 'Warning', 'Failover', 'shard 3: promoted demo-1 (epoch 5)');
    await settled();
    expect(api.calls).toHaveLength(1);
    const [e] = events();
    expect(e).toEqual({
      metadata: { name: expect.stringMatching(/^demo\.[0-9a-f]+$/), namespace: 'ns1' },
      involvedObject: {
        apiVersion: 'pivot.io/v1alpha1',
        kind: 'PivotCluster',
        name: 'demo',
        namespace: 'ns1',
        uid: 'uid-pc',
        resourceVersion: '7',
      },
      type: 'Warning',
      reason: 'Failover',
      message: 'shard 3: promoted demo-1 (epoch 5)',
      source: { component: 'pivot-operator' },
      reportingComponent: 'pivot-operator',
      reportingInstance: process.env.POD_NAME ?? 'pivot-operator',
      firstTimestamp: new Date('2026-11-22T01:00:00Z'),
      lastTimestamp: new Date('2026-11-22T01:00:00Z'),
      count: 1,
    });
  });

  it('counts repeats within the window on the same Event, in order, and starts a new one after it', async () => {
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    await settled();
    clock.advance(1_000);
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    clock.advance(1_000);
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    await settled();
    expect(events()).toHaveLength(1);
    expect(events()[0]).toMatchObject({ count: 3, lastTimestamp: new Date('2026-11-22T01:00:02Z') });
    expect(events()[0]!.firstTimestamp).toEqual(new Date('2026-11-22T01:00:00Z'));
    expect(api.calls.map((c) => [c.verb, c.body.count])).toEqual([
      ['create', 1],
      ['patch', 2],
      ['patch', 3],
    ]);

    // The window runs from the last repeat: a repeat 59 s later still counts, one a window later does not.
    clock.advance(WINDOW - 1);
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    clock.advance(WINDOW);
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    await settled();
    expect(events().map((e) => e.count)).toEqual([4, 1]);
  });

  it.each([
    ['another type', pod, 'Warning', 'Wipe', 'shard 1 wiped'],
    ['another reason', pod, 'Normal', 'WipeDone', 'shard 1 wiped'],
    ['another message', pod, 'Normal', 'Wipe', 'shard 2 wiped'],
    [
      'another object',
      { ...pod, metadata: { ...pod.metadata, name: 'demo-1', uid: 'uid-pod-1' } },
      'Normal',
      'Wipe',
      'shard 1 wiped',
    ],
  ] as const)('does not aggregate an event with %s', async (_what, object, type, reason, message) => {
    recorder.event(pod, 'Normal', 'Wipe', 'shard 1 wiped');
    recorder.event(object, type, reason, message);
    await settled();
    expect(events().map((e) => [e.involvedObject.name, e.type, e.reason, e.message, e.count])).toEqual([
      ['demo-0', 'Normal', 'Wipe', 'shard 1 wiped', 1],
      [object.metadata!.name, type, reason, message, 1],
    ]);
  });

  it('records events of a cluster-scoped object in the default namespace and truncates long messages', async () => {
    recorder.event(node, 'Warning', 'NodeNotReady', 'x'.repeat(5000));
    await settled();
    const [e] = events();
    expect(e!.metadata!.namespace).toBe('default');
    expect(e!.involvedObject).toEqual({ apiVersion: 'v1', kind: 'Node', name: 'n1', uid: 'uid-node' });
    expect(e!.message).toBe('x'.repeat(1024));
  });

  it('sends a repeat only after the create it follows was answered', async () => {
    let answer!: () => void;
    api.answer = new Promise((r) => (answer = r));
    recorder.event(pod, 'Warning', 'Slow', 'api is slow');
    recorder.event(pod, 'Warning', 'Slow', 'api is slow');
    recorder.event(pod, 'Warning', 'Slow', 'api is slow');
    await settled();
    expect(api.calls.map((c) => c.verb)).toEqual(['create']);
    answer();
    await settled();
    expect(api.calls.map((c) => c.verb)).toEqual(['create', 'patch', 'patch']);
    expect(events()[0]!.count).toBe(3);
    expect(warnings).toEqual([]);
  });

  it('never throws into the caller when writing fails, logs it, and the next repeat recovers', async () => {
    api.failures = ['throw', 500];
    expect(() => recorder.event(pod, 'Warning', 'Down', 'api down')).not.toThrow();
    await settled();
    expect(warnings).toEqual(['could not record event']);
    expect(events()).toEqual([]);
    // The failed create left no Event: the repeat creates it, with the count so far.
    recorder.event(pod, 'Warning', 'Down', 'api down');
    await settled();
    expect(warnings).toHaveLength(2);
    recorder.event(pod, 'Warning', 'Down', 'api down');
    await settled();
    expect(events().map((e) => e.count)).toEqual([3]);
    expect(api.calls.map((c) => c.verb)).toEqual(['create', 'create', 'create']);
  });

  it('creates the Event again when it was deleted between repeats', async () => {
    recorder.event(pod, 'Normal', 'Scaled', 'to 5');
    await settled();
    api.stored.clear(); // TTL expiry or kubectl delete
    recorder.event(pod, 'Normal', 'Scaled', 'to 5');
    await settled();
    expect(api.calls.map((c) => c.verb)).toEqual(['create', 'patch', 'create']);
    expect(events().map((e) => e.count)).toEqual([2]);
  });

  it('patches after a create whose answer was lost (409 on the next create)', async () => {
    api.failures = ['lost'];
    recorder.event(pod, 'Normal', 'Lost', 'answer lost'); // stored, but the recorder sees a 504
    recorder.event(pod, 'Normal', 'Lost', 'answer lost'); // create → 409: it exists after all
    recorder.event(pod, 'Normal', 'Lost', 'answer lost'); // → patch
    await settled();
    expect(api.calls.map((c) => c.verb)).toEqual(['create', 'create', 'patch']);
    expect(events().map((e) => e.count)).toEqual([3]);
    expect(warnings).toHaveLength(2);
  });

  it('drops an event for an object without a name with a warning, without throwing', async () => {
    expect(() => recorder.event({ kind: 'Pod' }, 'Warning', 'Odd', 'no metadata')).not.toThrow();
    await settled();
    expect(api.calls).toEqual([]);
    expect(warnings).toEqual(['could not record event: object has no name']);
  });
});
