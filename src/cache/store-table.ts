/**
 * The answer store's hash table from key to slot, the writer's side: adding
 * and removing a slot. store.ts calls these under the odd sequence word; the
 * probes that find a key are StoreView.find/findBytes (store-layout.ts),
 * which reader threads share.
 *
 * Linear probing over a power-of-two Int32Array of slot+1 (0 empty), at most
 * half full, deletion by backward shift (no tombstones). The full 32-bit
 * hash is kept per slot, so a probe compares key bytes only when the hashes
 * agree, and a deletion finds each entry's home without hashing its key.
 */
import type { StoreView } from './store-layout.js';

export function tableInsert(v: StoreView, slot: number, h: number): void {
  const table = v.table;
  const mask = v.tableMask;
  let i = h & mask;
  while (table[i] !== 0) i = (i + 1) & mask;
  table[i] = slot + 1;
}

/** Backward-shift deletion: later entries of the same run move up, so probes never need tombstones. */
export function tableDelete(v: StoreView, slot: number): void {
  const table = v.table;
  const mask = v.tableMask;
  let i = v.keyHash[slot]! & mask;
  while (table[i] !== slot + 1) i = (i + 1) & mask;
  let hole = i;
  for (let j = (hole + 1) & mask; table[j] !== 0; j = (j + 1) & mask) {
    const home = v.keyHash[table[j]! - 1]! & mask;
    // Moves j into the hole unless its home lies cyclically in (hole, j].
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      table[hole] = table[j]!;
      hole = j;
    }
  }
  table[hole] = 0;
}
