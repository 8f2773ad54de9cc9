/**
 * The memory of one answer store (store.ts) and the reads every thread may
 * do on it. Two buffers, allocated once at their final size and never
 * replaced, so a worker thread handed them (SharedArrayBuffers) reads the
 * very store the main thread writes:
 *
 *   index: a header (the global sequence word, the rebuild count), then
 *          per slot, each array `slots` long: storedAt, expiresAt,
 *          prefetchAt (f64); keyHash, off, wireLen, hits, newer, older, ver
 *          (u32/i32); the hash table (i32, `tableSize` long, slot+1 per
 *          entry, 0 empty, so a fresh buffer is an empty table, TOMB for a
 *          deleted entry); keyLen, questionEnd, ttlCount (u16); list,
 *          flags, ref (u8).
 *   slab:  the records (store-slab.ts has their format), `slabBytes` long.
 *
 * Allocated at the capacities and the byte budget up front, not grown: the
 * kernel backs a page only once it is written, so a 256 MiB slab of which
 * the store has used 20 MiB costs about 20 MiB (test/store.test.ts checks
 * RssAnon). The store's "soft end" (store-slab.ts) keeps the used part as small
 * as growth by copying kept it.
 *
 * Reads here are bounded whatever the bytes say (bounded probes, slot
 * numbers, offsets and lengths checked before use, bounded waits on a
 * slot's version): a reader on another thread may see a record
 * half-written, and must get a miss or an answer it then throws away (the
 * version checks, reader.ts), never an exception or an endless loop.
 *
 * Two kinds of version (reader.ts has the protocol):
 *   - per slot, `ver`: odd while the writer changes that slot's fields or
 *     record bytes (a new entry in it, a sweep moving its record), and
 *     moved by two at once when the slot is freed (its offset then points
 *     nowhere). A writer preempted in a change blocks the readers of that
 *     one key.
 *   - the global sequence word, header[SEQ]: odd only while everything
 *     changes at once (the table's rebuild, clear). Rare.
 * The hash table never moves a cell under a reader: a deletion leaves a
 * tombstone (store-table.ts), so a probe that began before a change still
 * passes every cell of its key's chain.
 */
import { MAX_MESSAGE } from '../dns/constants.js';
import { writeAnswerFrom } from '../dns/patch.js';
import { keyHashSeed, type Query } from '../dns/query.js';

/** What a thread needs to read a store another thread writes (WorkerInit carries it). */
export interface StoreLayout {
  /** SharedArrayBuffer when the store is shared. */
  readonly index: ArrayBufferLike;
  readonly slab: ArrayBufferLike;
  readonly slots: number;
  readonly tableSize: number;
  /** Bits of the key hash the table uses (tests force collisions with fewer). */
  readonly hashMask: number;
  /** The writer's dns/query.ts key hash seed: a reader must hash keys alike. */
  readonly hashSeed: number;
}

export const DEAD = 0xffffffff;
export const RECORD_HEADER = 8;
export const NONE = -1;
export const FLAG_REFRESHING = 1;
/** Index header words (Int32): the global sequence word, and how often the table was rebuilt (diagnostics, tests). */
export const SEQ = 0;
export const REBUILDS = 1;
/** A table cell whose entry was deleted: probes pass it, an insert may reuse it (store-table.ts). */
export const TOMB = -1;
/** find's answer when the key's slot stayed mid-change (its version odd) past SLOT_SPINS loads: the reader gives this key up. */
export const BUSY = -2;
/** Loads of an odd slot version a lookup waits before it answers BUSY (an insert's change takes about a microsecond). */
export const SLOT_SPINS = 256;
/** A removed slot's offset: unaligned, so no read takes the slot's fields for a record (its bytes may be reused). */
export const NO_RECORD = 1;
const HEADER_BYTES = 16;
/** Compares of one candidate slot that found it changed before find answers BUSY. */
const SLOT_TRIES = 4;
/** The bytes argument of #findSlow when it compares a key string. */
const NO_BYTES = new Uint8Array(0);

/** The lists, as stored in `list`. */
export const POSITIVE = 0;
export const NEGATIVE = 1;
export type ListId = typeof POSITIVE | typeof NEGATIVE;

/** Bytes of the index buffer for `slots` slots and a `tableSize` table. */
function indexBytes(slots: number, tableSize: number): number {
  return HEADER_BYTES + slots * 3 * 8 + slots * 7 * 4 + tableSize * 4 + align4(slots * 3 * 2) + slots * 3;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** A new layout: both buffers zeroed (the kernel's zero pages until written). */
export function allocLayout(slots: number, slabBytes: number, hashMask: number, shared: boolean): StoreLayout {
  let tableSize = 16;
  while (tableSize < slots * 2) tableSize *= 2;
  const n = indexBytes(slots, tableSize);
  return {
    index: shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n),
    slab: shared ? new SharedArrayBuffer(slabBytes) : new ArrayBuffer(slabBytes),
    slots,
    tableSize,
    hashMask,
    hashSeed: keyHashSeed(),
  };
}

/**
 * Typed-array views of a layout, and the bounded reads (lookups by key,
 * serving a slot's answer). The writer (store.ts AnswerStore) and the
 * readers (reader.ts) both build on it.
 */
export class StoreView {
  readonly layout: StoreLayout;
  readonly header: Int32Array;
  readonly slots: number;
  readonly tableMask: number;
  readonly hashMask: number;
  readonly slab: Buffer;
  readonly slabU16: Uint16Array;
  readonly slabU32: Uint32Array;
  readonly storedAtA: Float64Array;
  readonly expiresAtA: Float64Array;
  readonly prefetchAtA: Float64Array;
  readonly keyHash: Uint32Array;
  readonly off: Uint32Array;
  readonly wireLen: Uint32Array;
  /**
   * Hits per slot. Readers on other threads bump it without a lock (a lost
   * or stray increment only nudges prefetch's min-hits), and the writer
   * resets it when the slot gets a new entry.
   */
  readonly hitsA: Uint32Array;
  readonly newer: Int32Array;
  readonly older: Int32Array;
  /** Per slot: odd while the writer changes the slot (see the header); readers check it around their read. */
  readonly ver: Int32Array;
  /** slot+1 per entry, 0 empty, TOMB deleted. */
  readonly table: Int32Array;
  readonly keyLen: Uint16Array;
  readonly questionEndA: Uint16Array;
  readonly ttlCount: Uint16Array;
  readonly list: Uint8Array;
  readonly flags: Uint8Array;
  /** Set by readers on a hit (they cannot reorder the LRU lists); the writer's eviction gives such an entry a second chance. */
  readonly ref: Uint8Array;
  /** The version find/findBytes saw, even, on the slot they returned: the reader checks it again after its read. */
  foundVer: number;

  constructor(layout: StoreLayout) {
    this.layout = layout;
    const n = layout.slots;
    const buf = layout.index;
    this.slots = n;
    this.tableMask = layout.tableSize - 1;
    this.hashMask = layout.hashMask;
    let at = 0;
    this.header = new Int32Array(buf, at, HEADER_BYTES / 4);
    at += HEADER_BYTES;
    const f64 = (): Float64Array => {
      const a = new Float64Array(buf, at, n);
      at += n * 8;
      return a;
    };
    this.storedAtA = f64();
    this.expiresAtA = f64();
    this.prefetchAtA = f64();
    this.keyHash = new Uint32Array(buf, at, n);
    at += n * 4;
    this.off = new Uint32Array(buf, at, n);
    at += n * 4;
    this.wireLen = new Uint32Array(buf, at, n);
    at += n * 4;
    this.hitsA = new Uint32Array(buf, at, n);
    at += n * 4;
    this.newer = new Int32Array(buf, at, n);
    at += n * 4;
    this.older = new Int32Array(buf, at, n);
    at += n * 4;
    this.ver = new Int32Array(buf, at, n);
    at += n * 4;
    this.table = new Int32Array(buf, at, layout.tableSize);
    at += layout.tableSize * 4;
    this.keyLen = new Uint16Array(buf, at, n);
    at += n * 2;
    this.questionEndA = new Uint16Array(buf, at, n);
    at += n * 2;
    this.ttlCount = new Uint16Array(buf, at, n);
    at = align4(at + n * 2);
    this.list = new Uint8Array(buf, at, n);
    at += n;
    this.flags = new Uint8Array(buf, at, n);
    at += n;
    this.ref = new Uint8Array(buf, at, n);
    this.slab = Buffer.from(layout.slab);
    this.slabU16 = new Uint16Array(layout.slab, 0, this.slab.length >>> 1);
    this.slabU32 = new Uint32Array(layout.slab, 0, this.slab.length >>> 2);
    this.foundVer = 0;
  }

  /** The global sequence word: odd while the writer rebuilds the table or clears the store (reader.ts). */
  seq(): number {
    return Atomics.load(this.header, SEQ);
  }

  /**
   * The slot holding `key`, -1 (NONE), or BUSY when a slot that may hold it
   * stayed mid-change; foundVer is the slot's version the key compared
   * under. At most two passes over the table and bounded waits, whatever it
   * holds. The writer's own thread uses findOwn.
   */
  find(key: string, h: number): number {
    const table = this.table;
    const mask = this.tableMask;
    const slots = this.slots;
    for (let i = h & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
      const cell = table[i]!;
      if (cell === 0) return NONE;
      const slot = cell - 1;
      // A tombstone (or garbage), or another key's hash: probe on.
      if (slot < 0 || slot >= slots || this.keyHash[slot] !== h) continue;
      const before = Atomics.load(this.ver, slot);
      if ((before & 1) === 0) {
        if (this.#keyEquals(slot, key)) {
          this.foundVer = before;
          return slot;
        }
        // Another key with the same hash: probe on, unless the slot or the cell changed under the compare.
        if (Atomics.load(this.ver, slot) === before && table[i] === cell) continue;
      }
      return this.#findSlow(key, NO_BYTES, 0, h);
    }
    return NONE;
  }

  /** find for the key in bytes[0, len) whose (masked) hash is `h`: the hit path's lookup, no string. */
  findBytes(bytes: Uint8Array, len: number, h: number): number {
    const table = this.table;
    const mask = this.tableMask;
    const slots = this.slots;
    for (let i = h & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
      const cell = table[i]!;
      if (cell === 0) return NONE;
      const slot = cell - 1;
      // A tombstone (or garbage), or another key's hash: probe on.
      if (slot < 0 || slot >= slots || this.keyHash[slot] !== h) continue;
      const before = Atomics.load(this.ver, slot);
      if ((before & 1) === 0) {
        if (this.#keyBytesEqual(slot, bytes, len)) {
          this.foundVer = before;
          return slot;
        }
        // Another key with the same hash: probe on, unless the slot or the cell changed under the compare.
        if (Atomics.load(this.ver, slot) === before && table[i] === cell) continue;
      }
      return this.#findSlow(null, bytes, len, h);
    }
    return NONE;
  }

  /**
   * find on the writer's own thread (store-fields.ts): no slot is ever mid-change
   * between its calls, so no version to take or check, and its table holds
   * no garbage. Tombstones are passed like any other key's cell.
   */
  findOwn(key: string, h: number): number {
    const table = this.table;
    const mask = this.tableMask;
    for (let i = h & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
      const cell = table[i]!;
      if (cell === 0) return NONE;
      const slot = cell - 1;
      if (slot >= 0 && this.keyHash[slot] === h && this.#keyEquals(slot, key)) return slot;
    }
    return NONE;
  }

  /** findBytes on the writer's own thread (as findOwn). */
  findBytesOwn(bytes: Uint8Array, len: number, h: number): number {
    const table = this.table;
    const mask = this.tableMask;
    for (let i = h & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
      const cell = table[i]!;
      if (cell === 0) return NONE;
      const slot = cell - 1;
      if (slot >= 0 && this.keyHash[slot] === h && this.#keyBytesEqual(slot, bytes, len)) return slot;
    }
    return NONE;
  }

  /**
   * find's and findBytes' careful pass, when a slot was mid-change or changed
   * under a compare: waits and retries, bounded. The key is `key` when it is
   * not null, else bytes[0, len) (off the hot path: one branch per compare).
   */
  #findSlow(key: string | null, bytes: Uint8Array, len: number, h: number): number {
    const table = this.table;
    const mask = this.tableMask;
    const slots = this.slots;
    let spins = 0;
    let tries = 0;
    for (let i = h & mask, k = 0; k <= mask; i = (i + 1) & mask, k++) {
      let cell = table[i]!;
      for (;;) {
        if (cell === 0) return NONE;
        const slot = cell - 1;
        if (slot < 0 || slot >= slots || this.keyHash[slot] !== h) break;
        const before = Atomics.load(this.ver, slot);
        if ((before & 1) !== 0) {
          if (++spins > SLOT_SPINS) return BUSY;
          continue;
        }
        if (key !== null ? this.#keyEquals(slot, key) : this.#keyBytesEqual(slot, bytes, len)) {
          this.foundVer = before;
          return slot;
        }
        // Changed under the compare, or a refresh pointed the cell at a new slot meanwhile (the old one freed, so no
        // longer the key's): this cell again, a few times in all.
        const now = table[i]!;
        if (now === cell && Atomics.load(this.ver, slot) === before) break;
        if (++tries >= SLOT_TRIES) return BUSY;
        cell = now;
      }
    }
    return NONE;
  }

  /** Slab offset of the slot's key, or -1 when the slot's fields do not describe a record inside the slab. */
  #keyAt(slot: number, keyLen: number): number {
    const off = this.off[slot]!;
    const at = off + RECORD_HEADER + 2 * this.ttlCount[slot]!;
    return (off & 7) === 0 && at + keyLen + this.wireLen[slot]! <= this.slab.length ? at : -1;
  }

  #keyEquals(slot: number, key: string): boolean {
    const n = this.keyLen[slot]!;
    if (n !== key.length) return false;
    const at = this.#keyAt(slot, n);
    if (at < 0) return false;
    const slab = this.slab;
    for (let i = 0; i < n; i++) if (slab[at + i] !== key.charCodeAt(i)) return false;
    return true;
  }

  #keyBytesEqual(slot: number, bytes: Uint8Array, len: number): boolean {
    if (this.keyLen[slot] !== len) return false;
    const at = this.#keyAt(slot, len);
    if (at < 0) return false;
    const slab = this.slab;
    for (let i = 0; i < len; i++) if (slab[at + i] !== bytes[i]) return false;
    return true;
  }

  /**
   * The slot's answer for one client, copied and patched straight from the
   * slab; null when its fields do not describe an answer inside the slab (a
   * reader caught the writer mid-change).
   */
  serve(slot: number, q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number): Buffer | null {
    const off = this.off[slot]!;
    const ttlCount = this.ttlCount[slot]!;
    const wireLen = this.wireLen[slot]!;
    const questionEnd = this.questionEndA[slot]!;
    const wireAt = off + RECORD_HEADER + 2 * ttlCount + this.keyLen[slot]!;
    if ((off & 7) !== 0 || wireLen > MAX_MESSAGE || wireAt + wireLen > this.slab.length || questionEnd > wireLen || questionEnd < 12) return null;
    return writeAnswerFrom(this.slab, wireAt, wireLen, questionEnd, this.slabU16, (off + RECORD_HEADER) >>> 1, ttlCount, q, ageSec, fixedTtl, limit, ednsSize);
  }

  /** A copy of the slot's stored wire bytes (bounded like serve: empty when they are not inside the slab). */
  wireCopy(slot: number): Buffer {
    const at = this.off[slot]! + RECORD_HEADER + 2 * this.ttlCount[slot]! + this.keyLen[slot]!;
    const len = Math.min(this.wireLen[slot]!, MAX_MESSAGE);
    // A lock-free reader can see a new offset with an old entry's key length: out of the slab is an empty copy
    // (the reader's version check then retries), never a RangeError in a worker.
    if (at + len > this.slab.length) return Buffer.alloc(0);
    const out = Buffer.alloc(len);
    this.slab.copy(out, 0, at, at + len);
    return out;
  }

  /** A copy of the slot's TTL offsets. */
  ttlOffsetsCopy(slot: number): Uint16Array {
    const at = (this.off[slot]! + RECORD_HEADER) >>> 1;
    return this.slabU16.slice(at, at + this.ttlCount[slot]!);
  }

  keyOf(slot: number): string {
    const at = this.off[slot]! + RECORD_HEADER + 2 * this.ttlCount[slot]!;
    return this.slab.toString('latin1', at, at + this.keyLen[slot]!);
  }
}
