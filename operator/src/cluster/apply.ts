// Pure: whether a child object must be server-side applied again. An apply that changes nothing is
// still a write request, so an unchanged cluster must not send one, also right after the operator
// (re)starts with nothing in memory. Each applied child carries the hash of what was applied; its
// managedFields (every manager's fields on the main resource, status left out) show whether anyone
// else has written it since.
import type { KubernetesObject, V1ManagedFieldsEntry } from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import { FIELD_MANAGER } from './types.ts';

export const APPLIED_HASH_ANNOTATION = 'pivot.dev/applied-hash';

/** Deterministic JSON: sorted keys, null fields left out (in a merge patch null means absent). */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(
          Object.entries(v)
            .filter(([, field]) => field !== null)
            .sort(([a], [b]) => (a < b ? -1 : 1)),
        )
      : v,
  );
}

/** The desired object stamped with the hash of its content. */
export function withAppliedHash<T extends KubernetesObject>(desired: T): T {
  const hash = createHash('sha256').update(canonical(desired)).digest('hex').slice(0, 16);
  return {
    ...desired,
    metadata: {
      ...desired.metadata,
      annotations: { ...desired.metadata?.annotations, [APPLIED_HASH_ANNOTATION]: hash },
    },
  };
}

const onMainResource = (m: V1ManagedFieldsEntry) => !m.subresource;

/** Who owns which fields of the object itself, plus the hash of what we last applied. */
export function ownershipFingerprint(live: KubernetesObject): string {
  return canonical({
    hash: live.metadata?.annotations?.[APPLIED_HASH_ANNOTATION],
    fields: (live.metadata?.managedFields ?? [])
      .filter(onMainResource)
      .map((m) => ({ manager: m.manager, operation: m.operation, fields: m.fieldsV1 }))
      .sort((a, b) => canonical(a).localeCompare(canonical(b))),
  });
}

/**
 * True when applying `desired` (stamped by withAppliedHash) to `live` would change nothing: live
 * carries the same hash and either nobody changed its ownership since our last apply
 * (`rememberedFingerprint`, the fingerprint of what that apply returned), or our apply is the only
 * writer of the object's fields (after a restart, when nothing is remembered). Known gap: a field of
 * ours that someone removed while no operator ran leaves no other writer behind, so it comes back
 * only with the next change of the desired object.
 */
export function childUpToDate(
  desired: KubernetesObject,
  live: KubernetesObject | undefined,
  rememberedFingerprint: string | undefined,
): boolean {
  if (!live) return false;
  const want = desired.metadata?.annotations?.[APPLIED_HASH_ANNOTATION];
  if (!want || live.metadata?.annotations?.[APPLIED_HASH_ANNOTATION] !== want) return false;
  if (rememberedFingerprint === ownershipFingerprint(live)) return true;
  const writers = (live.metadata?.managedFields ?? []).filter(onMainResource);
  return writers.length === 1 && writers[0]!.manager === FIELD_MANAGER && writers[0]!.operation === 'Apply';
}
