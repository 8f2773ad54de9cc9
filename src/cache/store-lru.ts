/**
 * The answer store's two LRU lists (positive, negative), threaded through
 * the slots' `newer`/`older` links, and which entry an eviction takes.
 * store.ts owns the list ends (`mru`, `lru`: one slot per list, NONE when
 * empty) and calls these as it links, unlinks and evicts.
 *
 * LRU order is the writer's: its own lookups move an entry to the front; a
 * reader only sets the entry's `ref` byte, and eviction gives an entry with
 * it set a second chance (cleared, moved to the front) instead of evicting it.
 */
import { NONE, type ListId, type StoreView } from './store-layout.js';

/**
 * Referenced entries an eviction moves to the front before it takes the
 * least recent one whatever its mark: bounds one insert's work when readers
 * have marked a long run of the list (moving one is two link updates on the
 * writer's own arrays, no reader waits). Big enough for a hot set that sits
 * together in the list: names warmed at once (a pod's start-up, a cache
 * restored from its snapshot) reach the end of the list together, and at
 * 64 a flood of one-shot names evicted a few of them on every pass (the
 * isolation bench's 1,000 probe names: 36-80 SERVFAILs per flooded phase).
 * The work stays amortised: each chance spends a mark only a hit sets.
 */
export const SECOND_CHANCES = 4096;

/** Makes `slot` the most recent of `list`. */
export function linkMru(v: StoreView, mru: Int32Array, lru: Int32Array, slot: number, list: number): void {
  const head = mru[list]!;
  v.newer[slot] = NONE;
  v.older[slot] = head;
  if (head !== NONE) v.newer[head] = slot;
  else lru[list] = slot;
  mru[list] = slot;
}

/** Takes `slot` out of `list`. */
export function unlink(v: StoreView, mru: Int32Array, lru: Int32Array, slot: number, list: number): void {
  const newer = v.newer[slot]!;
  const older = v.older[slot]!;
  if (newer !== NONE) v.older[newer] = older;
  else mru[list] = older;
  if (older !== NONE) v.newer[older] = newer;
  else lru[list] = newer;
}

/**
 * The slot an eviction from `list` removes: the least recent, after up to
 * SECOND_CHANCES marked ones were cleared and moved to the front.
 */
export function evictionVictim(v: StoreView, mru: Int32Array, lru: Int32Array, list: ListId): number {
  const ref = v.ref;
  let victim = lru[list]!;
  for (let k = 0; k < SECOND_CHANCES && ref[victim] !== 0; k++) {
    ref[victim] = 0;
    unlink(v, mru, lru, victim, list);
    linkMru(v, mru, lru, victim, list);
    victim = lru[list]!;
  }
  return victim;
}
