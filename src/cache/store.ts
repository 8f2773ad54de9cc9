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
 * Slab record, 8-byte aligned so its TTL offsets can be read as a Uint16Array:
 *
 *     +0  slot, u32 (DEAD when the entry is gone)
 *     +4  record length, u32 (a multiple of 8)
 *     +8  TTL offsets, u16 each, relative to the wire's first byte
 *         key bytes (the latin1 key of dns/query.ts)
 *         wire bytes (id 0, no OPT, TTLs capped; entry.ts)
 *
 * Freed space: records are appended at the tail; a removed record is marked
 * DEAD and its bytes counted as dead. When the tail reaches the end, the slab
 * is compacted in place (live records slid down in address order, their
 * slots' offsets rewritten) if it is mostly dead, or grown (x1.5, copying only
 * the live records, so growth compacts too) while it is below its cap. The
 * cap is the byte budget, and the lists' budgets leave LIVE_SHARE of it for
 * live records, so a compaction at the cap frees at least a fifth of the slab
 * and its cost (a memmove of the live bytes) is amortised over that many
 * inserted bytes. No size classes, so no internal fragmentation.
 *
 * Hash table: linear probing over a power-of-two Int32Array of slots (-1
 * empty), at most half full, deletion by backward shift (no tombstones). The
 * full 32-bit hash is kept per slot, so a probe compares key bytes only when
 * the hashes agree. The hash is dns/query.ts hashKey, seeded per process:
 * names are chosen by whoever sends queries, and a fixed hash would let them
 * build long probe chains. The hit path looks up by the key's bytes and the
 * hash the parser computed while building them (findBytes), everything else
 * by the key string (find); both hash the same bytes the same way, so both
 * find the same slot.
 */
import { writeAnswerFrom } from '../dns/patch.js';
import { hashKey, type Query } from '../dns/query.js';
import type { CacheEntry } from './entry.js';

/** The two LRU lists. */
export const POSITIVE = 0;
export const NEGATIVE = 1;
export type ListId = typeof POSITIVE | typeof NEGATIVE;

const DEAD = 0xffffffff;
const RECORD_HEADER = 8;
const NONE = -1;
const FLAG_REFRESHING = 1;
/** Slots allocated at first; the arrays grow by half up to the two capacities together. */
const INITIAL_SLOTS = 1024;
/** The slab's first size; it grows by half up to its cap. */
const INITIAL_SLAB = 64 * 1024;
/** A Buffer's largest length in Node 20 (buffer.constants.MAX_LENGTH), less alignment: offsets are u32. */
export const MAX_SLAB = 2 ** 32 - 8;
/**
 * Share of the byte budget the lists may fill with live records (charged with
 * their index overhead); the rest is the slab's room to append between
 * compactions. At 0.8 a compaction at the cap moves at most 4 bytes per byte
 * appended since the last one.
 */
export const LIVE_SHARE = 0.8;
/**
 * Index bytes per entry besides its slab record: the per-slot typed arrays
 * (about 50 bytes) and its share of the hash table (2 x 4 bytes at half
 * load), rounded up. Charged against the budget with the record.
 */
export const SLOT_OVERHEAD_BYTES = 64;

export interface StoreOptions {
  /** Entry capacity of each list. */
  readonly capacity: readonly [number, number];
  /** Byte budget of each list: slab record bytes plus SLOT_OVERHEAD_BYTES per entry. */
  readonly budget: readonly [number, number];
  /** Largest the slab may grow (the cache's byte budget). */
  readonly slabCap: number;
  /** Tests only: bits of the hash kept (0: every key hashes alike), to force collisions. */
  readonly hashMask?: number;
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

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Bytes a record takes in the slab. */
export function recordBytes(keyLen: number, wireLen: number, ttlCount: number): number {
  return align8(RECORD_HEADER + 2 * ttlCount + keyLen + wireLen);
}

export class AnswerStore {
  readonly #hashMask: number;
  readonly #capacity: readonly [number, number];
  readonly #budget: readonly [number, number];
  readonly #slabCap: number;

  // The slab and its views (replaced together when it grows).
  #slab: Buffer;
  #u16: Uint16Array;
  #u32: Uint32Array;
  #tail: number;
  #dead: number;

  // Per slot.
  #slots: number;
  #keyHash: Uint32Array;
  #off: Uint32Array;
  #keyLen: Uint16Array;
  #wireLen: Uint32Array;
  #questionEnd: Uint16Array;
  #ttlCount: Uint16Array;
  #list: Uint8Array;
  #flags: Uint8Array;
  #hits: Uint32Array;
  #storedAt: Float64Array;
  #expiresAt: Float64Array;
  #prefetchAt: Float64Array;
  /** LRU links: towards the most recently used, towards the least. Free slots chain through #older. */
  #newer: Int32Array;
  #older: Int32Array;
  #freeSlot: number;
  /** Slots never used yet start here. */
  #fresh: number;

  // Hash table.
  #table: Int32Array;
  #mask: number;

  // Lists.
  readonly #mru: Int32Array;
  readonly #lru: Int32Array;
  readonly #count: Float64Array;
  readonly #bytes: Float64Array;
  /** Entries pushed out to make room, per list, since the owner last read them. */
  readonly evicted: Float64Array;

  /** The one entry handle lookups return (see StoredEntry). */
  readonly view: StoredEntry;

  constructor(opts: StoreOptions) {
    this.#hashMask = opts.hashMask ?? 0xffffffff;
    this.#capacity = opts.capacity;
    this.#budget = opts.budget;
    this.#slabCap = Math.max(RECORD_HEADER, Math.min(MAX_SLAB, Math.floor(opts.slabCap / 8) * 8));
    this.#slab = Buffer.alloc(0);
    this.#u16 = new Uint16Array(0);
    this.#u32 = new Uint32Array(0);
    this.#tail = 0;
    this.#dead = 0;
    this.#slots = 0;
    this.#keyHash = new Uint32Array(0);
    this.#off = new Uint32Array(0);
    this.#keyLen = new Uint16Array(0);
    this.#wireLen = new Uint32Array(0);
    this.#questionEnd = new Uint16Array(0);
    this.#ttlCount = new Uint16Array(0);
    this.#list = new Uint8Array(0);
    this.#flags = new Uint8Array(0);
    this.#hits = new Uint32Array(0);
    this.#storedAt = new Float64Array(0);
    this.#expiresAt = new Float64Array(0);
    this.#prefetchAt = new Float64Array(0);
    this.#newer = new Int32Array(0);
    this.#older = new Int32Array(0);
    this.#freeSlot = NONE;
    this.#fresh = 0;
    this.#table = new Int32Array(0);
    this.#mask = 0;
    this.#mru = new Int32Array([NONE, NONE]);
    this.#lru = new Int32Array([NONE, NONE]);
    this.#count = new Float64Array(2);
    this.#bytes = new Float64Array(2);
    this.evicted = new Float64Array(2);
    this.view = new StoredEntry(this);
    this.#setSlab(Buffer.allocUnsafeSlow(Math.min(INITIAL_SLAB, this.#slabCap)));
    this.#growSlots(Math.min(INITIAL_SLOTS, Math.max(1, opts.capacity[0] + opts.capacity[1])));
  }

  // ---- lookups (the hit path: no allocation) ----

  /** The slot holding `key`, or -1. Does not touch LRU order. */
  find(key: string): number {
    const h = (hashKey(key) & this.#hashMask) >>> 0;
    const table = this.#table;
    const mask = this.#mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const slot = table[i]!;
      if (slot === NONE) return NONE;
      if (this.#keyHash[slot] === h && this.#keyEquals(slot, key)) return slot;
    }
  }

  /**
   * find for the key in bytes[0, len) whose hashKey is `hash` (the parser
   * computes it while building the key): the hit path's lookup, no string.
   */
  findBytes(bytes: Uint8Array, len: number, hash: number): number {
    const h = (hash & this.#hashMask) >>> 0;
    const table = this.#table;
    const mask = this.#mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const slot = table[i]!;
      if (slot === NONE) return NONE;
      if (this.#keyHash[slot] === h && this.#keyBytesEqual(slot, bytes, len)) return slot;
    }
  }

  #keyEquals(slot: number, key: string): boolean {
    const n = this.#keyLen[slot]!;
    if (n !== key.length) return false;
    const slab = this.#slab;
    const at = this.#off[slot]! + RECORD_HEADER + 2 * this.#ttlCount[slot]!;
    for (let i = 0; i < n; i++) if (slab[at + i] !== key.charCodeAt(i)) return false;
    return true;
  }

  #keyBytesEqual(slot: number, bytes: Uint8Array, len: number): boolean {
    if (this.#keyLen[slot] !== len) return false;
    const slab = this.#slab;
    const at = this.#off[slot]! + RECORD_HEADER + 2 * this.#ttlCount[slot]!;
    for (let i = 0; i < len; i++) if (slab[at + i] !== bytes[i]) return false;
    return true;
  }

  /** Makes `slot` the most recently used of its list. */
  touch(slot: number): void {
    const list = this.#list[slot]!;
    if (this.#mru[list] === slot) return;
    this.#unlink(slot, list);
    this.#linkMru(slot, list);
  }

  listOf(slot: number): ListId {
    return this.#list[slot] as ListId;
  }
  storedAt(slot: number): number {
    return this.#storedAt[slot]!;
  }
  expiresAt(slot: number): number {
    return this.#expiresAt[slot]!;
  }
  prefetchAt(slot: number): number {
    return this.#prefetchAt[slot]!;
  }
  hits(slot: number): number {
    return this.#hits[slot]!;
  }
  addHit(slot: number): void {
    this.#hits[slot]!++;
  }
  refreshing(slot: number): boolean {
    return (this.#flags[slot]! & FLAG_REFRESHING) !== 0;
  }
  setRefreshing(slot: number): void {
    this.#flags[slot]! |= FLAG_REFRESHING;
  }

  /** The slot's answer for one client: copy and patch straight from the slab. */
  serve(slot: number, q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number): Buffer {
    const off = this.#off[slot]!;
    const ttlCount = this.#ttlCount[slot]!;
    const wireAt = off + RECORD_HEADER + 2 * ttlCount + this.#keyLen[slot]!;
    return writeAnswerFrom(
      this.#slab, wireAt, this.#wireLen[slot]!, this.#questionEnd[slot]!, this.#u16, (off + RECORD_HEADER) >>> 1, ttlCount,
      q, ageSec, fixedTtl, limit, ednsSize,
    );
  }

  /** A copy of the slot's stored wire bytes. */
  wireCopy(slot: number): Buffer {
    const off = this.#off[slot]!;
    const at = off + RECORD_HEADER + 2 * this.#ttlCount[slot]! + this.#keyLen[slot]!;
    const len = this.#wireLen[slot]!;
    const out = Buffer.allocUnsafe(len);
    this.#slab.copy(out, 0, at, at + len);
    return out;
  }

  /** A copy of the slot's TTL offsets. */
  ttlOffsetsCopy(slot: number): Uint16Array {
    const at = (this.#off[slot]! + RECORD_HEADER) >>> 1;
    return this.#u16.slice(at, at + this.#ttlCount[slot]!);
  }

  questionEnd(slot: number): number {
    return this.#questionEnd[slot]!;
  }

  keyOf(slot: number): string {
    const at = this.#off[slot]! + RECORD_HEADER + 2 * this.#ttlCount[slot]!;
    return this.#slab.toString('latin1', at, at + this.#keyLen[slot]!);
  }

  // ---- sizes ----

  size(list: ListId): number {
    return this.#count[list]!;
  }
  /** Bytes charged to `list`: its records plus SLOT_OVERHEAD_BYTES each. */
  charged(list: ListId): number {
    return this.#bytes[list]!;
  }
  /** The slab's current length (its cap is the byte budget). */
  get slabBytes(): number {
    return this.#slab.length;
  }
  /** Bytes of removed records not yet reclaimed by a compaction. */
  get deadBytes(): number {
    return this.#dead;
  }
  /** What an entry of this shape is charged. */
  static charge(keyLen: number, wireLen: number, ttlCount: number): number {
    return recordBytes(keyLen, wireLen, ttlCount) + SLOT_OVERHEAD_BYTES;
  }

  // ---- changes ----

  /**
   * Stores `key` in `list`, replacing any entry it had (in either list), and
   * makes it the most recently used. Evicts the least recently used of the
   * list while the list is over its capacity or budget, then (if the slab
   * cannot make room otherwise) of either list. Returns the slot, or -1 when
   * the entry alone is bigger than the list's budget (any old entry for the
   * key is gone then too, as lru-cache did).
   */
  insert(list: ListId, key: string, e: StoreInput): number {
    const old = this.find(key);
    if (old !== NONE) this.remove(old);
    const ttlCount = e.ttlOffsets.length;
    const keyLen = key.length;
    const wireLen = e.wire.length;
    const rec = recordBytes(keyLen, wireLen, ttlCount);
    const charge = rec + SLOT_OVERHEAD_BYTES;
    if (charge > this.#budget[list]! || rec > this.#slabCap || keyLen > 0xffff || ttlCount > 0xffff) return NONE;
    while (this.#count[list]! >= this.#capacity[list]! || this.#bytes[list]! + charge > this.#budget[list]!) this.#evict(list);
    while (!this.#reserve(rec)) {
      if (this.#lru[list] !== NONE) this.#evict(list);
      else if (this.#lru[1 - list] !== NONE) this.#evict((1 - list) as ListId);
      else return NONE; // cannot happen: rec <= cap and an empty slab compacts to nothing
    }
    const slot = this.#takeSlot();
    const off = this.#tail;
    this.#tail = off + rec;
    const u32 = this.#u32;
    u32[off >>> 2] = slot;
    u32[(off >>> 2) + 1] = rec;
    this.#u16.set(e.ttlOffsets, (off + RECORD_HEADER) >>> 1);
    const slab = this.#slab;
    const keyAt = off + RECORD_HEADER + 2 * ttlCount;
    for (let i = 0; i < keyLen; i++) slab[keyAt + i] = key.charCodeAt(i);
    slab.set(e.wire, keyAt + keyLen);
    const h = (hashKey(key) & this.#hashMask) >>> 0;
    this.#keyHash[slot] = h;
    this.#off[slot] = off;
    this.#keyLen[slot] = keyLen;
    this.#wireLen[slot] = wireLen;
    this.#questionEnd[slot] = e.questionEnd;
    this.#ttlCount[slot] = ttlCount;
    this.#list[slot] = list;
    this.#flags[slot] = 0;
    this.#hits[slot] = e.hits;
    this.#storedAt[slot] = e.storedAt;
    this.#expiresAt[slot] = e.expiresAt;
    this.#prefetchAt[slot] = e.prefetchAt;
    this.#tableInsert(slot, h);
    this.#linkMru(slot, list);
    this.#count[list]!++;
    this.#bytes[list]! += charge;
    return slot;
  }

  /** Removes the entry in `slot`; its slab bytes become dead space. */
  remove(slot: number): void {
    const list = this.#list[slot] as ListId;
    const off = this.#off[slot]!;
    const rec = this.#u32[(off >>> 2) + 1]!;
    this.#u32[off >>> 2] = DEAD;
    this.#dead += rec;
    this.#tableDelete(slot);
    this.#unlink(slot, list);
    this.#count[list]!--;
    this.#bytes[list]! -= rec + SLOT_OVERHEAD_BYTES;
    this.#older[slot] = this.#freeSlot;
    this.#freeSlot = slot;
  }

  clear(): void {
    this.#table.fill(NONE);
    this.#mru.fill(NONE);
    this.#lru.fill(NONE);
    this.#count.fill(0);
    this.#bytes.fill(0);
    this.#freeSlot = NONE;
    this.#fresh = 0;
    this.#tail = 0;
    this.#dead = 0;
  }

  /** Slots of `list`, least recently used first. Do not change the store while iterating. */
  *slots(list: ListId): Generator<number> {
    for (let s = this.#lru[list]!; s !== NONE; s = this.#newer[s]!) yield s;
  }

  #evict(list: ListId): void {
    const victim = this.#lru[list]!;
    this.remove(victim);
    this.evicted[list]!++;
  }

  // ---- slab ----

  #setSlab(slab: Buffer): void {
    this.#slab = slab;
    this.#u16 = new Uint16Array(slab.buffer, slab.byteOffset, slab.length >>> 1);
    this.#u32 = new Uint32Array(slab.buffer, slab.byteOffset, slab.length >>> 2);
  }

  /**
   * Makes `rec` bytes free at the tail: as it is, by growing (while mostly
   * live and under the cap), or by compacting. False when only an eviction
   * can make room.
   */
  #reserve(rec: number): boolean {
    const cap = this.#slab.length;
    if (this.#tail + rec <= cap) return true;
    const live = this.#tail - this.#dead;
    if ((live + rec) * 4 > cap * 3 && cap < this.#slabCap) {
      // x1.5, not x2: a doubled slab is up to half empty for good once the cache stops growing.
      let size = align8(cap + (cap >>> 1));
      while (size < live + rec) size = align8(size + (size >>> 1));
      this.#moveLive(Buffer.allocUnsafeSlow(Math.min(size, this.#slabCap)));
      return this.#tail + rec <= this.#slab.length;
    }
    if (this.#dead > 0 && live + rec <= cap) {
      this.#moveLive(this.#slab);
      return true;
    }
    return false;
  }

  /**
   * Copies the live records, in address order, to the start of `to` (the
   * slab itself: compaction in place). Runs of adjacent live records move in
   * one copy.
   */
  #moveLive(to: Buffer): void {
    const from = this.#slab;
    const u32 = this.#u32;
    let dst = 0;
    let runStart = 0;
    let runEnd = 0;
    for (let src = 0; src < this.#tail; ) {
      const slot = u32[src >>> 2]!;
      const rec = u32[(src >>> 2) + 1]!;
      if (slot !== DEAD) {
        if (src !== runEnd) {
          dst = moveRun(from, to, runStart, runEnd, dst);
          runStart = src;
        }
        runEnd = src + rec;
        this.#off[slot] = dst + (src - runStart);
      }
      src += rec;
    }
    dst = moveRun(from, to, runStart, runEnd, dst);
    if (to !== from) this.#setSlab(to);
    this.#tail = dst;
    this.#dead = 0;
  }

  // ---- slots ----

  #takeSlot(): number {
    if (this.#freeSlot !== NONE) {
      const s = this.#freeSlot;
      this.#freeSlot = this.#older[s]!;
      return s;
    }
    if (this.#fresh === this.#slots) this.#growSlots(this.#slots + (this.#slots >>> 1) + 1);
    return this.#fresh++;
  }

  /** Reallocates every per-slot array at `n` slots (at most both capacities), and the table at twice that, rehashed. */
  #growSlots(want: number): void {
    const n = Math.max(1, Math.min(want, this.#capacity[0] + this.#capacity[1] + 1));
    this.#keyHash = grow(this.#keyHash, new Uint32Array(n));
    this.#off = grow(this.#off, new Uint32Array(n));
    this.#keyLen = grow(this.#keyLen, new Uint16Array(n));
    this.#wireLen = grow(this.#wireLen, new Uint32Array(n));
    this.#questionEnd = grow(this.#questionEnd, new Uint16Array(n));
    this.#ttlCount = grow(this.#ttlCount, new Uint16Array(n));
    this.#list = grow(this.#list, new Uint8Array(n));
    this.#flags = grow(this.#flags, new Uint8Array(n));
    this.#hits = grow(this.#hits, new Uint32Array(n));
    this.#storedAt = grow(this.#storedAt, new Float64Array(n));
    this.#expiresAt = grow(this.#expiresAt, new Float64Array(n));
    this.#prefetchAt = grow(this.#prefetchAt, new Float64Array(n));
    this.#newer = grow(this.#newer, new Int32Array(n));
    this.#older = grow(this.#older, new Int32Array(n));
    this.#slots = n;
    let size = 16;
    while (size < n * 2) size *= 2;
    this.#table = new Int32Array(size).fill(NONE);
    this.#mask = size - 1;
    for (const list of [POSITIVE, NEGATIVE] as const) {
      for (let s = this.#lru[list]!; s !== NONE; s = this.#newer[s]!) this.#tableInsert(s, this.#keyHash[s]!);
    }
  }

  // ---- hash table ----

  #tableInsert(slot: number, h: number): void {
    const table = this.#table;
    const mask = this.#mask;
    let i = h & mask;
    while (table[i] !== NONE) i = (i + 1) & mask;
    table[i] = slot;
  }

  /** Backward-shift deletion: later entries of the same run move up, so probes never need tombstones. */
  #tableDelete(slot: number): void {
    const table = this.#table;
    const mask = this.#mask;
    let i = this.#keyHash[slot]! & mask;
    while (table[i] !== slot) i = (i + 1) & mask;
    let hole = i;
    for (let j = (hole + 1) & mask; table[j] !== NONE; j = (j + 1) & mask) {
      const home = this.#keyHash[table[j]!]! & mask;
      // Moves j into the hole unless its home lies cyclically in (hole, j].
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        table[hole] = table[j]!;
        hole = j;
      }
    }
    table[hole] = NONE;
  }

  // ---- LRU lists ----

  #linkMru(slot: number, list: number): void {
    const head = this.#mru[list]!;
    this.#newer[slot] = NONE;
    this.#older[slot] = head;
    if (head !== NONE) this.#newer[head] = slot;
    else this.#lru[list] = slot;
    this.#mru[list] = slot;
  }

  #unlink(slot: number, list: number): void {
    const newer = this.#newer[slot]!;
    const older = this.#older[slot]!;
    if (newer !== NONE) this.#older[newer] = older;
    else this.#mru[list] = older;
    if (older !== NONE) this.#newer[older] = newer;
    else this.#lru[list] = newer;
  }
}

/** Moves from[start, end) to `to` at `dst`; returns the new end of what was moved. */
function moveRun(from: Buffer, to: Buffer, start: number, end: number, dst: number): number {
  if (end === start) return dst;
  if (to !== from) from.copy(to, dst, start, end);
  else if (dst !== start) from.copyWithin(dst, start, end);
  return dst + (end - start);
}

function grow<T extends Uint8Array | Uint16Array | Uint32Array | Int32Array | Float64Array>(old: T, into: T): T {
  into.set(old as ArrayLike<number>);
  return into;
}

/**
 * The entry handle a lookup returns: one per store, pointing at the slot the
 * last lookup found, so a hit allocates nothing. It is valid until the next
 * call into the cache; the hit path uses it at once (serve, then
 * claimPrefetch). Whatever must outlive that (an insert's answer for its
 * waiters, a stale answer) is a copy (entry.ts AnswerCopy).
 */
export class StoredEntry implements CacheEntry {
  readonly #store: AnswerStore;
  slot: number;

  constructor(store: AnswerStore) {
    this.#store = store;
    this.slot = NONE;
  }

  get prefetchAt(): number {
    return this.#store.prefetchAt(this.slot);
  }
  get expiresAt(): number {
    return this.#store.expiresAt(this.slot);
  }
  get negative(): boolean {
    return this.#store.listOf(this.slot) === NEGATIVE;
  }
  get hits(): number {
    return this.#store.hits(this.slot);
  }

  serve(q: Query, now: number, limit: number, ednsSize: number): Buffer {
    const storedAt = this.#store.storedAt(this.slot);
    const age = now > storedAt ? Math.floor((now - storedAt) / 1000) : 0;
    return this.#store.serve(this.slot, q, age, -1, limit, ednsSize);
  }

  serveStale(q: Query, ttl: number, limit: number, ednsSize: number): Buffer {
    return this.#store.serve(this.slot, q, 0, ttl, limit, ednsSize);
  }
}
