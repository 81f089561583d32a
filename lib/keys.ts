// Key grammar shared by the agent (validation at the edge) and smart clients (routing).
//
// A key is a `/`-separated path of one or more segments. A segment is 1..MAX_SEGMENT_LENGTH
// printable Unicode characters other than `/` and `*`. A trailing `/*` names a collection: the
// items one level below it (`things/*` holds `things/a`, not `things/a/b`).

export const MAX_KEY_LENGTH = 1024; // UTF-8 bytes of the whole key
export const MAX_SEGMENTS = 32;

export type ParsedKey =
  | { kind: 'single'; key: string; segments: string[]; collection: string | null; index: string }
  | { kind: 'collection'; key: string; segments: string[]; collection: string };

export class KeyError extends Error {
  override readonly name = 'KeyError';
}

// Control characters (C0, DEL, C1), unpaired surrogates and the two structural characters are
// refused; everything else printable in Unicode is allowed.
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[\u0000-\u001f\u007f-\u009f/*]|\p{Cs}/u;

export function validateSegment(segment: string): void {
  if (segment.length === 0) throw new KeyError('key has an empty segment');
  if (FORBIDDEN.test(segment)) {
    throw new KeyError(`key segment ${JSON.stringify(segment)} holds '/', '*' or a control character`);
  }
  if (!segment.isWellFormed()) throw new KeyError('key segment is not well-formed Unicode');
}

/** Parses a decoded key path (no leading slash), e.g. `things/42`, `things/*`, `settings`. */
export function parseKey(raw: string): ParsedKey {
  if (raw.length === 0) throw new KeyError('key is empty');
  if (Buffer.byteLength(raw, 'utf8') > MAX_KEY_LENGTH) {
    throw new KeyError(`key is longer than ${MAX_KEY_LENGTH} bytes`);
  }
  const isCollection = raw === '*' || raw.endsWith('/*');
  const body = isCollection ? raw.slice(0, -2) : raw;
  if (isCollection && body.length === 0)
    throw new KeyError('a collection needs a parent path, as in things/*');
  const segments = body.split('/');
  if (segments.length > MAX_SEGMENTS) throw new KeyError(`key has more than ${MAX_SEGMENTS} segments`);
  for (const s of segments) validateSegment(s);
  if (isCollection) return { kind: 'collection', key: raw, segments, collection: body };
  const index = segments[segments.length - 1]!;
  const collection = segments.length > 1 ? segments.slice(0, -1).join('/') : null;
  return { kind: 'single', key: raw, segments, collection, index };
}

/**
 * The string that decides a key's shard. Items of a collection share the collection's routing
 * key so that one shard holds the whole collection and lists it without fan-out; a top-level key
 * routes by itself (so `settings` and `settings/*` live together too).
 */
export function routingKey(parsed: ParsedKey): string {
  if (parsed.kind === 'collection') return parsed.collection;
  return parsed.collection ?? parsed.key;
}
