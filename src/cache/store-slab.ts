/**
 * The answer store's slab (store.ts): how big a record is, how far the used
 * part grows, and moving records. Where the next record goes and when
 * records move is store-space.ts's; this module holds the record format and
 * the mechanisms.
 *
 * Slab record, 8-byte aligned so its TTL offsets can be read as a Uint16Array:
 *
 *     +0  slot, u32 (DEAD when the entry is gone)
 *     +4  record length, u32 (a multiple of 8)
 *     +8  TTL offsets, u16 each, relative to the wire's first byte
 *         key bytes (the latin1 key of dns/query.ts)
 *         wire bytes (id 0, no OPT, TTLs capped; entry.ts)
 *
 * Freed space: records are appended at the head; a removed record is marked
 * DEAD and its bytes counted as dead. The slab is allocated at its cap, but
 * used only up to a soft end, which moves up (x1.5, nothing copied) while
 * the slab is mostly live and under the cap; past that, a sweep slides live
 * records down over the dead ones a few at a time (store-space.ts). Pages
 * past the soft end are never written, so they cost no memory. The cap is
 * the byte budget, and the lists' budgets leave LIVE_SHARE of it for live
 * records, so a sweep at the cap frees at least a fifth of what it walks.
 * No size classes, so no internal fragmentation.
 */
import { RECORD_HEADER, type StoreView } from './store-layout.js';

/** The slab's first soft end; it moves up by half up to its cap. */
export const INITIAL_SLAB = 64 * 1024;
/**
 * The largest slab: offsets are u32, and a SharedArrayBuffer (like a Buffer
 * in Node 20) may be 2^32 bytes at most; less alignment.
 */
export const MAX_SLAB = 2 ** 32 - 8;
/**
 * Share of the byte budget the lists may fill with live records (charged with
 * their index overhead); the rest is the slab's room to append while a sweep
 * frees more. At 0.8 a sweep at the cap moves at most 4 bytes per byte it
 * frees.
 */
export const LIVE_SHARE = 0.8;

/** Arithmetic, not `& ~7`: bitwise operators are 32-bit signed, and slab sizes pass 2^31 (a budget past 2 GiB). */
function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/** Bytes a record takes in the slab. */
export function recordBytes(keyLen: number, wireLen: number, ttlCount: number): number {
  return align8(RECORD_HEADER + 2 * ttlCount + keyLen + wireLen);
}

/** The soft end moved up from `end` by half at a time until `need` bytes fit, at most `cap`. */
export function grownSoftEnd(end: number, need: number, cap: number): number {
  // x1.5, not x2: pages once written stay resident, and a doubled slab is up to half empty for good once the cache stops growing.
  // Math.floor, not >>> 1: past 2^32 (a need beyond the cap) a shift wraps and the loop would never reach it.
  let size = align8(end + Math.floor(end / 2));
  while (size < need) size = align8(size + Math.floor(size / 2));
  return Math.min(size, cap);
}

/**
 * Bytes a sweep (store-space.ts) moves in one step at most (a run of
 * adjacent live records is cut at a record boundary past this): the records
 * of one step have their slot versions odd together, so a writer preempted
 * inside one blocks the readers of those keys only, for one step.
 */
export const MOVE_CHUNK = 64 * 1024;

/** Moves the records in slab[start, end) down to `dst` and points their slots there; returns the new end of what was moved. */
export function moveRun(v: StoreView, start: number, end: number, dst: number): number {
  if (end === start) return dst;
  if (dst !== start) {
    const u32 = v.slabU32;
    const ver = v.ver;
    let slot = 0;
    for (let at = start; at < end; at += u32[(at >>> 2) + 1]!) Atomics.add(ver, (slot = u32[at >>> 2]!), 1);
    // On arm64 the adds are store-releases: this load-acquire keeps the copy below from being seen before them (x86: a plain load).
    Atomics.load(ver, slot);
    v.slab.copyWithin(dst, start, end);
    for (let at = dst, stop = dst + (end - start); at < stop; at += u32[(at >>> 2) + 1]!) {
      slot = u32[at >>> 2]!;
      v.off[slot] = at;
      Atomics.add(ver, slot, 1);
    }
  }
  return dst + (end - start);
}
