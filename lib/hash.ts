import { parseKey, routingKey } from './keys.ts';

// The documented routing recipe (docs/api.md): shard = FNV-1a-32(UTF-8(routingKey)) mod shards.
// FNV-1a is tiny, fast, has no dependencies and is easy to reimplement in any client language.
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

export function fnv1a32(text: string): number {
  let hash = FNV_OFFSET;
  for (const byte of Buffer.from(text, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, FNV_PRIME) >>> 0;
  }
  return hash >>> 0;
}

export function shardOfRoutingKey(key: string, shards: number): number {
  return fnv1a32(key) % shards;
}

/** Shard of a raw key path (`things/42`, `things/*`, `settings`). Throws KeyError on bad keys. */
export function shardForKey(key: string, shards: number): number {
  return shardOfRoutingKey(routingKey(parseKey(key)), shards);
}
