/**
 * The cache's storage: every answer's bytes in one slab, every entry's
 * fields in typed arrays indexed by a slot number, an open-addressing hash
 * table from key to slot, and two LRU lists (positive, negative) threaded
 * through the slots. No object and no Buffer per entry (lru-cache with a
 * CacheEntry and a Buffer each cost about 1.5 KB of RSS per entry; one A
 * record here takes a 112-byte record and 64 bytes of index; cache.ts has the
 * measurement). Policy (what to store, for how long)
 * and counters stay in cache.ts; this file only keeps bytes and order.
 *
 * One writer, any number of readers: this class is the only thing that
 * changes the store; with a shared layout (store-layout.ts, on
 * SharedArrayBuffers) batched worker threads read it at the same time
 * (reader.ts). Everything is allocated once at its final size, so no buffer
 * is ever replaced under a reader.
 *
 * The order of a new key: its record and fields are written into a free
 * slot (version odd, then even), then the table cell is stored, the
 * publication. A replacement (a refresh) writes the new entry into another
 * slot and then points the key's cell at it, one store, so no reader ever
 * finds the key missing in between; then the old slot is freed. An
 * eviction leaves a tombstone and makes the slot's offset point nowhere
 * (NO_RECORD), so a reader still holding the slot from the table gets a
 * miss, even after a sweep reuses its bytes.
 *
 * The slab's record format is in store-slab.ts, where records go and the
 * sweep that reclaims removed ones in store-space.ts, the hash
 * table's upkeep in store-table.ts, the LRU lists and eviction's choice in
 * store-lru.ts, the lookups and an entry's fields in store-fields.ts (the
 * class AnswerStore extends), the entry handle lookups return in
 * stored-entry.ts, and the slot versions and global word that keep readers
 * on other threads from using a change half-made in store-versions.ts.
 */
import { hashKey } from '../dns/query.js';
import { SLOT_OVERHEAD_BYTES } from './cache-api.js';
import { StoreFields } from './store-fields.js';
import { allocLayout, DEAD, NO_RECORD, NONE, REBUILDS, RECORD_HEADER, StoreView, type ListId } from './store-layout.js';
import { evictionVictim, linkMru, unlink } from './store-lru.js';
import { INITIAL_SLAB, MAX_SLAB, recordBytes } from './store-slab.js';
import { SlabSpace } from './store-space.js';
import { REBUILD_AT, tableDelete, tableInsert, tableRebuild, tableReplace } from './store-table.js';
import { beginAll, closeSlot, endAll, openSlot, unpointSlot } from './store-versions.js';

export { NEGATIVE, POSITIVE, type ListId, type StoreLayout } from './store-layout.js';

// Defined in cache-api.ts, whose constants the hit path reads: a batched worker need not load the store for them.
export { SLOT_OVERHEAD_BYTES } from './cache-api.js';

export interface StoreOptions {
  /** Entry capacity of each list. */
  readonly capacity: readonly [number, number];
  /** Byte budget of each list: slab record bytes plus SLOT_OVERHEAD_BYTES per entry. */
  readonly budget: readonly [number, number];
  /** Largest the slab may grow (the cache's byte budget). */
  readonly slabCap: number;
  /** Tests only: bits of the hash kept (0: every key hashes alike), to force collisions. */
  readonly hashMask?: number;
  /** On SharedArrayBuffers, for reader threads (layout); default: ordinary ArrayBuffers. */
  readonly shared?: boolean;
}

/** Entries as AnswerStore.capture saw them: slot i held the key whose hash is hashes[i]. */
export interface ExportOrder {
  readonly slots: Int32Array;
  readonly hashes: Uint32Array;
}

/** The fields of an entry to store; its bytes are copied into the slab. */
export interface StoreInput {
  readonly wire: Buffer;
  readonly questionEnd: number;
  readonly ttlOffsets: Uint16Array;
  readonly storedAt: number;
  readonly expiresAt: number;
  readonly prefetchAt: number;
  readonly hits: number;
}

export class AnswerStore extends StoreFields {
  readonly #v: StoreView;
  readonly #hashMask: number;
  readonly #capacity: readonly [number, number];
  readonly #budget: readonly [number, number];
  /** Where records go in the slab, and sweeping dead ones out (store-space.ts). */
  readonly #space: SlabSpace;
  #freeSlot: number;
  /** Slots never used yet start here. */
  #fresh: number;
  /** Table cells in use: live entries and tombstones (store-table.ts). */
  #cellsUsed: number;
  /** #cellsUsed past which the table is rebuilt. */
  readonly #rebuildAt: number;

  // Lists.
  readonly #mru: Int32Array;
  readonly #lru: Int32Array;
  readonly #count: Float64Array;
  readonly #bytes: Float64Array;
  /** Entries pushed out to make room, per list, since the owner last read them. */
  readonly evicted: Float64Array;

  constructor(opts: StoreOptions) {
    const hashMask = (opts.hashMask ?? 0xffffffff) >>> 0;
    const cap = Math.max(RECORD_HEADER, Math.min(MAX_SLAB, Math.floor(opts.slabCap / 8) * 8));
    const slots = Math.max(1, opts.capacity[0] + opts.capacity[1] + 1);
    const v = new StoreView(allocLayout(slots, cap, hashMask, opts.shared === true));
    super(v, hashMask);
    this.#v = v;
    this.#hashMask = hashMask;
    this.#capacity = opts.capacity;
    this.#budget = opts.budget;
    this.#space = new SlabSpace(v, cap, Math.min(INITIAL_SLAB, cap));
    this.#freeSlot = NONE;
    this.#fresh = 0;
    this.#cellsUsed = 0;
    this.#rebuildAt = Math.floor((this.#v.tableMask + 1) * REBUILD_AT);
    this.#mru = new Int32Array([NONE, NONE]);
    this.#lru = new Int32Array([NONE, NONE]);
    this.#count = new Float64Array(2);
    this.#bytes = new Float64Array(2);
    this.evicted = new Float64Array(2);
  }

  // ---- use (the hit path: no allocation; the lookups are StoreFields') ----

  /** Makes `slot` the most recently used of its list (a use by this thread: any reader's mark is spent). */
  touch(slot: number): void {
    const v = this.#v;
    v.ref[slot] = 0;
    const list = v.list[slot]!;
    if (this.#mru[list] === slot) return;
    unlink(v, this.#mru, this.#lru, slot, list);
    linkMru(v, this.#mru, this.#lru, slot, list);
  }

  // ---- sizes ----

  size(list: ListId): number {
    return this.#count[list]!;
  }
  /** Bytes charged to `list`: its records plus SLOT_OVERHEAD_BYTES each. */
  charged(list: ListId): number {
    return this.#bytes[list]!;
  }
  /** The part of the slab in use: its soft end (it moves up to the cap, the byte budget). */
  get slabBytes(): number {
    return this.#space.softEnd;
  }
  /** The most the slab may grow to: the byte budget, at most MAX_SLAB. */
  get slabCap(): number {
    return this.#space.cap;
  }
  /** Bytes of removed records not yet reclaimed by a sweep. */
  get deadBytes(): number {
    return this.#space.dead;
  }
  /** What an entry of this shape is charged. */
  static charge(keyLen: number, wireLen: number, ttlCount: number): number {
    return recordBytes(keyLen, wireLen, ttlCount) + SLOT_OVERHEAD_BYTES;
  }

  // ---- changes ----

  /**
   * Stores `key` in `list`, replacing any entry it had (in either list), and
   * makes it the most recently used. Evicts the least recently used of the
   * list (second chance for entries readers marked) while the list is over
   * its capacity or budget, then (if the slab cannot make room otherwise) of
   * either list. Returns the slot, or -1 when the entry alone is bigger than
   * the list's budget (any old entry for the key is gone then too, as
   * lru-cache did).
   */
  insert(list: ListId, key: string, e: StoreInput): number {
    const old = this.find(key);
    if (old !== NONE) this.#detach(old);
    return this.#insert(list, key, e, old);
  }

  /**
   * `key` is not in the store, or only in `old`, detached (out of its list
   * and counts, still in the table and readable until the new entry
   * replaces it there).
   */
  #insert(list: ListId, key: string, e: StoreInput, old: number): number {
    const ttlCount = e.ttlOffsets.length;
    const keyLen = key.length;
    const wireLen = e.wire.length;
    const rec = recordBytes(keyLen, wireLen, ttlCount);
    const charge = rec + SLOT_OVERHEAD_BYTES;
    if (charge > this.#budget[list]! || rec > this.#space.cap || keyLen > 0xffff || ttlCount > 0xffff) return this.#dropDetached(old);
    while (this.#count[list]! >= this.#capacity[list]! || this.#bytes[list]! + charge > this.#budget[list]!) this.#evict(list);
    while (!this.#space.reserve(rec)) {
      if (this.#lru[list] !== NONE) this.#evict(list);
      else if (this.#lru[1 - list] !== NONE) this.#evict((1 - list) as ListId);
      else return this.#dropDetached(old); // cannot happen: rec and a detached old record fit in the cap (LIVE_SHARE)
    }
    const v = this.#v;
    // Never past the arrays: at most capacity[0] + capacity[1] - 1 entries counted here, a detached old one, and this one.
    const slot = this.#takeSlot();
    const off = this.#space.take(rec);
    const h = (hashKey(key) & this.#hashMask) >>> 0;
    // Odd while the slot changes: a reader still holding it from a table cell read before its last removal retries or misses.
    openSlot(v, slot);
    const u32 = v.slabU32;
    u32[off >>> 2] = slot;
    u32[(off >>> 2) + 1] = rec;
    v.slabU16.set(e.ttlOffsets, (off + RECORD_HEADER) >>> 1);
    const slab = v.slab;
    const keyAt = off + RECORD_HEADER + 2 * ttlCount;
    for (let i = 0; i < keyLen; i++) slab[keyAt + i] = key.charCodeAt(i);
    slab.set(e.wire, keyAt + keyLen);
    v.keyHash[slot] = h;
    v.off[slot] = off;
    v.keyLen[slot] = keyLen;
    v.wireLen[slot] = wireLen;
    v.questionEndA[slot] = e.questionEnd;
    v.ttlCount[slot] = ttlCount;
    v.list[slot] = list;
    v.flags[slot] = 0;
    v.ref[slot] = 0;
    v.hitsA[slot] = e.hits;
    v.storedAtA[slot] = e.storedAt;
    v.expiresAtA[slot] = e.expiresAt;
    v.prefetchAtA[slot] = e.prefetchAt;
    closeSlot(v, slot);
    // Published: from here readers can find it (the cell store comes after everything above: store-table.ts).
    if (old === NONE) this.#cellsUsed += tableInsert(v, slot, h);
    else {
      tableReplace(v, old, slot);
      this.#free(old);
    }
    linkMru(v, this.#mru, this.#lru, slot, list);
    this.#count[list]!++;
    this.#bytes[list]! += charge;
    if (this.#cellsUsed > this.#rebuildAt) this.#rebuild();
    return slot;
  }

  /** Removes the entry in `slot`; its slab bytes become dead space. */
  remove(slot: number): void {
    this.#cellsUsed -= tableDelete(this.#v, slot);
    this.#detach(slot);
    this.#free(slot);
  }

  /** Takes `slot` out of its list and counts; the table and its record untouched. */
  #detach(slot: number): void {
    const v = this.#v;
    const list = v.list[slot] as ListId;
    const rec = v.slabU32[(v.off[slot]! >>> 2) + 1]!;
    unlink(v, this.#mru, this.#lru, slot, list);
    this.#count[list]!--;
    this.#bytes[list]! -= rec + SLOT_OVERHEAD_BYTES;
  }

  /**
   * A detached slot no table cell points at any more: its record dead, its
   * offset pointing nowhere (a reader that still holds the slot must not
   * take bytes a sweep may overwrite for the key's), the slot free.
   */
  #free(slot: number): void {
    const v = this.#v;
    const off = v.off[slot]!;
    v.slabU32[off >>> 2] = DEAD;
    this.#space.freed(v.slabU32[(off >>> 2) + 1]!);
    unpointSlot(v, slot);
    v.older[slot] = this.#freeSlot;
    this.#freeSlot = slot;
  }

  /** An insert that stores nothing: a detached old entry for the key goes too. */
  #dropDetached(old: number): number {
    if (old !== NONE) {
      this.#cellsUsed -= tableDelete(this.#v, old);
      this.#free(old);
    }
    return NONE;
  }

  clear(): void {
    beginAll(this.#v);
    try {
      // Every slot freed as #free frees one: a reader still holding one from before reads no record, whatever the global word.
      for (let s = 0; s < this.#fresh; s++) unpointSlot(this.#v, s);
      this.#v.table.fill(0);
      this.#mru.fill(NONE);
      this.#lru.fill(NONE);
      this.#count.fill(0);
      this.#bytes.fill(0);
      this.#freeSlot = NONE;
      this.#fresh = 0;
      this.#space.clear();
      this.#cellsUsed = 0;
    } finally {
      endAll(this.#v);
    }
  }

  /** The table without tombstones, in place, under the global word (store-table.ts). */
  #rebuild(): void {
    beginAll(this.#v);
    try {
      this.#cellsUsed = tableRebuild(this.#v, this.#mru);
    } finally {
      endAll(this.#v);
    }
    this.#v.header[REBUILDS]!++;
  }

  /** Table rebuilds so far (the shared header's count). */
  get rebuilds(): number {
    return this.#v.header[REBUILDS]!;
  }

  /**
   * The entries of both lists stored after clock ms `storedAfter` (positive
   * first, each least recently used first), as slots and their key hashes
   * now. Walked later, across event-loop turns, with holds(): unlike the
   * lists' links, these stay valid whatever changes meanwhile (a hit moving
   * an entry, an eviction's second chance, a slot reused). 8 bytes an entry.
   */
  capture(storedAfter: number): ExportOrder {
    const v = this.#v;
    const n = this.#count[0]! + this.#count[1]!;
    const slots = new Int32Array(n);
    const hashes = new Uint32Array(n);
    let i = 0;
    for (const list of [0, 1]) {
      for (let s = this.#lru[list]!; s !== NONE && i < n; s = v.newer[s]!) {
        if (v.storedAtA[s]! <= storedAfter) continue;
        slots[i] = s;
        hashes[i++] = v.keyHash[s]!;
      }
    }
    return { slots: slots.subarray(0, i), hashes: hashes.subarray(0, i) };
  }

  /** Whether `slot` still holds the entry capture() saw there (key hash `hash`): not freed, not reused for another key; a sweep may have moved it. */
  holds(slot: number, hash: number): boolean {
    const v = this.#v;
    return v.off[slot] !== NO_RECORD && v.keyHash[slot] === hash;
  }

  #evict(list: ListId): void {
    this.remove(evictionVictim(this.#v, this.#mru, this.#lru, list));
    this.evicted[list]!++;
  }

  // ---- slots ----

  #takeSlot(): number {
    if (this.#freeSlot !== NONE) {
      const s = this.#freeSlot;
      this.#freeSlot = this.#v.older[s]!;
      return s;
    }
    return this.#fresh++;
  }
}
