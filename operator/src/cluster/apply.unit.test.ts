import { describe, expect, it } from '@jest/globals';
import type { KubernetesObject, V1ManagedFieldsEntry } from '@kubernetes/client-node';
import {
  APPLIED_HASH_ANNOTATION,
  canonical,
  childUpToDate,
  ownershipFingerprint,
  withAppliedHash,
} from './apply.ts';
import { FIELD_MANAGER } from './types.ts';

const desired = withAppliedHash({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'demo', namespace: 'ns', labels: { app: 'demo' } },
  spec: { ports: [{ name: 'http', port: 8080 }] },
} as KubernetesObject);
const hash = desired.metadata!.annotations![APPLIED_HASH_ANNOTATION]!;

const ours: V1ManagedFieldsEntry = {
  manager: FIELD_MANAGER,
  operation: 'Apply',
  fieldsV1: { 'f:spec': { 'f:ports': {} } },
};
const statusWriter: V1ManagedFieldsEntry = {
  manager: 'kube-controller-manager',
  operation: 'Update',
  subresource: 'status',
  fieldsV1: { 'f:status': { 'f:replicas': {} } },
};
const editor: V1ManagedFieldsEntry = {
  manager: 'kubectl-edit',
  operation: 'Update',
  fieldsV1: { 'f:spec': { 'f:ports': {} } },
};
const live = (
  annotationHash: string | undefined,
  managedFields: V1ManagedFieldsEntry[],
): KubernetesObject => ({
  ...desired,
  metadata: {
    ...desired.metadata,
    resourceVersion: '42',
    annotations: annotationHash ? { [APPLIED_HASH_ANNOTATION]: annotationHash } : {},
    managedFields,
  },
});

describe('childUpToDate', () => {
  const afterOurApply = live(hash, [ours, editor]);
  it.each([
    { name: 'no live object', live: undefined, remembered: undefined, upToDate: false },
    {
      name: 'live object from before the hash (or edited away)',
      live: live(undefined, [ours]),
      remembered: undefined,
      upToDate: false,
    },
    {
      name: 'desired object changed',
      live: live('0123456789abcdef', [ours]),
      remembered: undefined,
      upToDate: false,
    },
    {
      name: 'after a restart, we are the only writer',
      live: live(hash, [ours]),
      remembered: undefined,
      upToDate: true,
    },
    {
      name: 'status written by a controller does not count',
      live: live(hash, [ours, statusWriter]),
      remembered: undefined,
      upToDate: true,
    },
    {
      name: 'after a restart, someone else wrote it too',
      live: live(hash, [ours, editor]),
      remembered: undefined,
      upToDate: false,
    },
    {
      name: 'ownership as our last apply left it',
      live: afterOurApply,
      remembered: ownershipFingerprint(afterOurApply),
      upToDate: true,
    },
    {
      name: 'someone took a field since our last apply',
      live: live(hash, [{ ...ours, fieldsV1: {} }, editor]),
      remembered: ownershipFingerprint(afterOurApply),
      upToDate: false,
    },
    {
      name: 'only status changed since our last apply',
      live: live(hash, [ours, editor, statusWriter]),
      remembered: ownershipFingerprint(afterOurApply),
      upToDate: true,
    },
    {
      name: 'another manager applying',
      live: live(hash, [{ ...ours, manager: 'someone' }]),
      remembered: undefined,
      upToDate: false,
    },
  ])('$name → $upToDate', ({ live: l, remembered, upToDate }) => {
    expect(childUpToDate(desired, l, remembered)).toBe(upToDate);
  });

  it('never skips a desired object without a hash', () => {
    expect(childUpToDate({ ...desired, metadata: { name: 'demo' } }, live(hash, [ours]), undefined)).toBe(
      false,
    );
  });
});

describe('withAppliedHash', () => {
  const base = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'a', annotations: { keep: 'me' } } };
  it('keeps other annotations and ignores key order', () => {
    const a = withAppliedHash({ ...base, spec: { x: 1, y: 2 } } as KubernetesObject);
    const b = withAppliedHash({ spec: { y: 2, x: 1 }, ...base } as KubernetesObject);
    expect(a.metadata!.annotations).toEqual({
      keep: 'me',
      [APPLIED_HASH_ANNOTATION]: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    expect(a.metadata!.annotations![APPLIED_HASH_ANNOTATION]).toBe(
      b.metadata!.annotations![APPLIED_HASH_ANNOTATION],
    );
  });
  it('changes when the content changes', () => {
    const a = withAppliedHash({ ...base, spec: { x: 1 } } as KubernetesObject);
    const b = withAppliedHash({ ...base, spec: { x: 2 } } as KubernetesObject);
    expect(a.metadata!.annotations![APPLIED_HASH_ANNOTATION]).not.toBe(
      b.metadata!.annotations![APPLIED_HASH_ANNOTATION],
    );
  });
});

describe('canonical', () => {
  it('sorts keys and leaves out null fields (a merge patch null is an absent field)', () => {
    expect(canonical({ b: 1, a: { d: null, c: [3, { f: 1, e: 2 }] } })).toBe(
      '{"a":{"c":[3,{"e":2,"f":1}]},"b":1}',
    );
  });
});
