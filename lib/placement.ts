// placeShards: the one placement function, used by the operator for PivotClusters and by agents
// for cluster files. Pure and deterministic: the same input gives the same map on every machine.
//
// Goals, in order: never two copies of a shard on one agent; spread each shard's copies across
// zones, then nodes, far enough that losing one zone or node leaves a majority of its copies;
// keep what the previous map had (move as little as possible); balance copies and pivots so no
// agent holds more than one more than any other.
//
// Spread beats balance up to that majority and no further (docs/decisions.md §15): a zone or node
// may hold at most ⌊(rf−1)/2⌋ copies of a shard (at least 1), fewer domains than that needs are
// filled as evenly as they allow, and beyond it balance decides. So at rf 3 every copy of a shard
// sits on its own node when there are 3 nodes, even when that leaves a lone agent on a node with
// a copy of every shard (5 agents on 3 nodes: 16/8/8/8/8 copies of 16 shards, 16 per node):
// two copies on one node would make that node's loss cost the shard its write majority, and the
// operator then refuses to fail over (the survivor may lack acknowledged writes). Pivots, which
// carry the write load, are balanced per agent regardless.
import { fnv1a32 } from './hash.ts';
import type { ShardAssignment } from './shard-map.ts';

export interface PlacementAgent {
  name: string;
  node?: string;
  zone?: string;
}

export interface PlacementInput {
  shards: number;
  replicationFactor: number;
  /** The agents that may hold copies (ready, not being removed). */
  agents: PlacementAgent[];
  /** The current map; its choices are kept where they remain valid. */
  previous?: readonly ShardAssignment[];
  /**
   * Keep every surviving pivot where it is (no pivot balancing). Failover uses this so that a
   * promotion is not followed at once by a switchover; a later rebalance evens pivots out.
   */
  keepPivots?: boolean;
}

interface Slot {
  shard: number;
  pivot: string | null;
  followers: string[];
}

const compareKeys = (a: number[], b: number[]) => {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
};

// Stable tie-break that spreads shards over agents instead of always preferring the first name.
const rank = (shard: number, agent: string) => fnv1a32(`${shard}/${agent}`);

export function placeShards(input: PlacementInput): ShardAssignment[] {
  const agents = [...input.agents].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  if (agents.length === 0) throw new Error('placeShards needs at least one agent');
  const byName = new Map(agents.map((a) => [a.name, a]));
  const rf = Math.min(input.replicationFactor, agents.length);

  const slots: Slot[] = [];
  for (let shard = 0; shard < input.shards; shard++) {
    const prev = input.previous?.[shard];
    const kept = prev
      ? [prev.pivot, ...prev.followers].filter((n, i, all) => byName.has(n) && all.indexOf(n) === i)
      : [];
    // A missing pivot is replaced by its first surviving follower; callers that know replication
    // positions (failover) choose the follower themselves and pass it as the previous pivot.
    slots.push({ shard, pivot: kept[0] ?? null, followers: kept.slice(1, rf) });
  }

  const copies = (s: Slot) => (s.pivot === null ? s.followers : [s.pivot, ...s.followers]);
  const load = new Map(agents.map((a) => [a.name, 0]));
  const pivots = new Map(agents.map((a) => [a.name, 0]));
  for (const s of slots) {
    for (const c of copies(s)) load.set(c, load.get(c)! + 1);
    if (s.pivot) pivots.set(s.pivot, pivots.get(s.pivot)! + 1);
  }

  // Topology cost of putting a copy of `slot` on `agent`, ignoring the copy on `except`: how far
  // its zone, then its node, would go past the per-domain cap. Zones weigh more than any node
  // excess. Growing with the count, it also fills domains evenly where the cap cannot be met.
  const cap = Math.max(1, Math.floor((rf - 1) / 2));
  const spreadCost = (slot: Slot, agent: string, except?: string) => {
    const a = byName.get(agent)!;
    let sameZone = 0;
    let sameNode = 0;
    for (const c of copies(slot)) {
      if (c === except || c === agent) continue;
      const o = byName.get(c)!;
      if (a.zone !== undefined && o.zone === a.zone) sameZone++;
      if (a.node !== undefined && o.node === a.node) sameNode++;
    }
    const excess = (others: number) => Math.max(0, others + 1 - cap);
    return excess(sameZone) * (rf + 1) + excess(sameNode);
  };

  // 1. Fill every shard up to rf copies.
  for (const s of slots) {
    while (copies(s).length < rf) {
      const held = new Set(copies(s));
      let best: string | null = null;
      let bestKey: number[] | null = null;
      for (const a of agents) {
        if (held.has(a.name)) continue;
        // The first copy of an empty shard becomes its pivot, so it goes where pivots are fewest.
        const key = [
          spreadCost(s, a.name),
          s.pivot === null ? pivots.get(a.name)! : 0,
          load.get(a.name)!,
          rank(s.shard, a.name),
        ];
        if (!bestKey || compareKeys(key, bestKey) < 0) {
          best = a.name;
          bestKey = key;
        }
      }
      load.set(best!, load.get(best!)! + 1);
      if (s.pivot === null) {
        s.pivot = best!;
        pivots.set(best!, pivots.get(best!)! + 1);
      } else s.followers.push(best!);
    }
  }

  // A pivot copy that moves takes the pivot role with it.
  const moveCopy = (s: Slot, from: string, to: string) => {
    if (s.pivot === from) {
      s.pivot = to;
      pivots.set(from, pivots.get(from)! - 1);
      pivots.set(to, pivots.get(to)! + 1);
    } else s.followers[s.followers.indexOf(from)] = to;
    load.set(from, load.get(from)! - 1);
    load.set(to, load.get(to)! + 1);
  };

  // 2. Repair spread the previous map could not have (an agent on a new node or zone joined):
  //    move a copy whose domain is over the cap to the least loaded agent where it costs less,
  //    a follower copy before the pivot's.
  //    Each move lowers the shard's total spread cost, so this terminates.
  const repairSpread = (pivotCopies: boolean) => {
    for (const s of slots) {
      for (let guard = 0; guard < rf * rf * (rf + 1); guard++) {
        let best: { from: string; to: string; key: number[] } | null = null;
        for (const from of pivotCopies ? copies(s) : s.followers) {
          const cost = spreadCost(s, from, from);
          if (cost === 0) continue;
          for (const a of agents) {
            if (copies(s).includes(a.name)) continue;
            const gain = cost - spreadCost(s, a.name, from);
            if (gain <= 0) continue;
            const key = [-gain, from === s.pivot ? 1 : 0, load.get(a.name)!, rank(s.shard, a.name)];
            if (!best || compareKeys(key, best.key) < 0) best = { from, to: a.name, key };
          }
        }
        if (!best) break;
        moveCopy(s, best.from, best.to);
      }
    }
  };

  // 3. Even out copies: move a copy from the fullest agent to the emptiest one that can take it
  //    without hurting spread, preferring follower copies (a pivot copy that moves takes the
  //    pivot role with it). When no shard can go straight there (say every shard of the fullest
  //    agent already has a copy on the emptiest one's node), go through a third agent: one shard
  //    to it, another from it, its load unchanged. Each step lowers the spread of loads, so this
  //    terminates.
  type Move = [Slot, string, string];
  const canMove = (s: Slot, from: string, to: string, pivotCopies: boolean) =>
    (pivotCopies ? s.pivot === from : s.followers.includes(from)) &&
    !copies(s).includes(to) &&
    spreadCost(s, to, from) <= spreadCost(s, from, from);
  const findMove = (pivotCopies: boolean): Move[] | null => {
    const sorted = agents.map((a) => a.name).sort((x, y) => load.get(y)! - load.get(x)! || (x < y ? -1 : 1));
    const pairs: [string, string][] = [];
    for (const from of sorted)
      for (const to of [...sorted].reverse()) {
        if (load.get(from)! - load.get(to)! < 2) break;
        pairs.push([from, to]);
      }
    for (const [from, to] of pairs) {
      const s = slots.find((x) => canMove(x, from, to, pivotCopies));
      if (s) return [[s, from, to]];
    }
    for (const [from, to] of pairs)
      for (const via of sorted) {
        if (via === from || via === to) continue;
        const first = slots.find((x) => canMove(x, from, via, pivotCopies));
        const second = first && slots.find((x) => x !== first && canMove(x, via, to, pivotCopies));
        if (second)
          return [
            [first, from, via],
            [second, via, to],
          ];
      }
    return null;
  };
  const balanceCopies = (pivotCopies: boolean) => {
    for (let guard = 0; guard < input.shards * rf + agents.length; guard++) {
      const moves = findMove(false) ?? (pivotCopies ? findMove(true) : null);
      if (!moves) return;
      for (const m of moves) moveCopy(...m);
    }
  };

  // 4. Even out pivots by handing the pivot role to a follower of the same shard (a switchover,
  //    no data moves).
  const balancePivots = () => {
    for (let guard = 0; guard < input.shards + agents.length; guard++) {
      let moved = false;
      const sorted = agents
        .map((a) => a.name)
        .sort((x, y) => pivots.get(y)! - pivots.get(x)! || (x < y ? -1 : 1));
      outer: for (const from of sorted) {
        for (const s of slots) {
          if (s.pivot !== from) continue;
          const to = [...s.followers].sort((x, y) => pivots.get(x)! - pivots.get(y)! || (x < y ? -1 : 1))[0];
          if (to === undefined || pivots.get(from)! - pivots.get(to)! < 2) continue;
          s.followers[s.followers.indexOf(to)] = from;
          s.pivot = to;
          pivots.set(from, pivots.get(from)! - 1);
          pivots.set(to, pivots.get(to)! + 1);
          moved = true;
          break outer;
        }
      }
      if (!moved) return;
    }
  };

  repairSpread(!input.keepPivots);
  if (input.keepPivots) {
    balanceCopies(false);
  } else {
    balanceCopies(false);
    balancePivots();
    // After step 4 some pivot copies are followers and can move; what still cannot (a shard
    // with no followers at rf 1) moves with its pivot role.
    balanceCopies(true);
    balancePivots();
  }

  return slots.map((s) => ({ shard: s.shard, pivot: s.pivot!, followers: s.followers }));
}
