/**
 * The answer store's hash table from key to slot, the writer's side:
 * publishing, replacing, deleting and rebuilding. The probes that find a
 * key are StoreView.find/findBytes (store-layout.ts), which reader threads
 * share while these run.
 *
 * Linear probing over a power-of-two Int32Array of slot+1 (0 empty), at most
 * half full of live entries. Cells never move under a reader: a deletion
 * writes a tombstone (TOMB) into its cell, one store, so a probe that began
 * before it still passes every cell of its own key's chain (backward-shift
 * deletion, which this replaced, moved later cells up, and a reader between
 * two moves could miss a key that never left: every such change had to be a
 * window of the one global sequence word). A deleted cell with an empty one
 * after it becomes empty instead, and so do the tombstones just before it:
 * no chain runs through a cell followed by an empty one.
 *
 * Tombstones left inside runs accumulate; when live + tombstones pass
 * REBUILD_AT of the table, store.ts rebuilds it in place (tableRebuild)
 * under the global sequence word, the rare "everything changes" window.
 * With live entries at most half the table, at least a quarter of it must
 * have turned into tombstones since the last rebuild, so a rebuild (one pass
 * over the table and the live slots) is amortised over that many deletions.
 *
 * The full 32-bit hash is kept per slot, so a probe compares key bytes only
 * when the hashes agree, and a deletion finds its cell without hashing the key.
 */
import { NONE, TOMB, type StoreView } from './store-layout.js';

/** Share of the table live entries and tombstones together may fill before it is rebuilt. */
export const REBUILD_AT = 0.75;

/**
 * Publishes `slot` (its fields and record complete, its version even) for a
 * key known absent: in the first tombstone of its chain, else the empty cell
 * that ends it. Returns the number of cells newly in use (1 when it took an
 * empty one, 0 when it reused a tombstone).
 *
 * The store is an Atomics.store: it comes after every write of the slot
 * (x86 keeps stores in order anyway; on arm64 it is a store-release). A
 * reader loads the cell plainly, then the slot's version with Atomics.load
 * and its fields at addresses computed from the cell's value: arm64 keeps
 * such address-dependent loads after the load they depend on, so a reader
 * that sees the cell sees the slot as it was when the cell was stored.
 */
export function tableInsert(v: StoreView, slot: number, h: number): number {
  const table = v.table;
  const mask = v.tableMask;
  let i = h & mask;
  let tomb = NONE;
  for (let k = 0; table[i] !== 0 && k <= mask; i = (i + 1) & mask, k++) if (tomb === NONE && table[i] === TOMB) tomb = i;
  Atomics.store(table, tomb !== NONE ? tomb : i, slot + 1);
  return tomb !== NONE ? 0 : 1;
}

/** The cell holding `slot`, or NONE. */
function cellOf(v: StoreView, slot: number): number {
  const table = v.table;
  const mask = v.tableMask;
  for (let i = v.keyHash[slot]! & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
    const c = table[i]!;
    if (c === slot + 1) return i;
    if (c === 0) return NONE;
  }
  return NONE;
}

/**
 * Points the cell of `old` at `slot` (same key, so the same chain), one
 * store: a reader finds the old entry or the new one, never neither.
 */
export function tableReplace(v: StoreView, old: number, slot: number): void {
  const i = cellOf(v, old);
  if (i !== NONE) Atomics.store(v.table, i, slot + 1);
}

/** Deletes `slot`'s cell. Returns the number of cells no longer in use (0 when it left a tombstone). */
export function tableDelete(v: StoreView, slot: number): number {
  const table = v.table;
  const mask = v.tableMask;
  let i = cellOf(v, slot);
  if (i === NONE) return 0;
  if (table[(i + 1) & mask] !== 0) {
    // A plain store: a reader that still sees the old cell holds a slot whose version the removal moves next (store.ts).
    table[i] = TOMB;
    return 0;
  }
  // The chain ends here: this cell and the tombstones just before it lead nowhere.
  let freed = 0;
  for (let k = 0; k <= mask && (freed === 0 || table[i] === TOMB); i = (i - 1) & mask, k++) {
    table[i] = 0;
    freed++;
  }
  return freed;
}

/**
 * Rebuilds the table in place from the live slots (both lists, walked from
 * `mru` by their `older` links): no tombstones left. The caller holds the
 * global sequence word odd. Returns the cells in use (the live entries).
 */
export function tableRebuild(v: StoreView, mru: Int32Array): number {
  const table = v.table;
  const mask = v.tableMask;
  table.fill(0);
  let used = 0;
  for (let list = 0; list < mru.length; list++) {
    for (let s = mru[list]!; s !== NONE; s = v.older[s]!) {
      let i = v.keyHash[s]! & mask;
      while (table[i] !== 0) i = (i + 1) & mask;
      table[i] = s + 1;
      used++;
    }
  }
  return used;
}
