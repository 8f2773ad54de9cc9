/**
 * The cache's surface apart from its implementation: the options a cache is
 * built and reconfigured with, how the byte budget is shared, and HitCache,
 * what a hit path needs of either cache (DnsCache in cache.ts on the main
 * thread, CacheReader in reader.ts in a batched worker). Kept apart so the
 * reader and revive.ts depend on the contract, not on DnsCache; cache.ts
 * re-exports all of it.
 */
import type { AnswerScan } from '../dns/answer.js';
import type { QueryScratch } from '../dns/query.js';
import type { CacheEntry } from './entry.js';
import type { TtlCaps } from './policy.js';
import type { PrefetchOptions } from './prefetch.js';
import type { CacheCounters } from './stats.js';


export interface CacheOptions extends TtlCaps, PrefetchOptions {
  readonly positiveCapacity: number;
  readonly negativeCapacity: number;
  /**
   * Byte budget for both stores together (--cache-memory). The negative store
   * gets NEGATIVE_SHARE of it: its answers are small and short-lived, and a
   * flood of junk names must not push out the positive entries.
   */
  readonly maxBytes: number;
  /** How long past expiry an entry may still answer when its upstream fails (RFC 8767); 0 = never. */
  readonly staleMs: number;
}

/** RFC 8767 4: the TTL of a stale answer, so clients come back soon but not at once. */
export const STALE_ANSWER_TTL = 30;

export type CachePolicyOptions = TtlCaps & PrefetchOptions & { readonly staleMs: number };

/**
 * What a hit path needs of a cache: the writer's (DnsCache, on the main
 * thread) or a reader's (reader.ts CacheReader, in a batched worker, over
 * the same store).
 */
export interface HitCache {
  readonly counters: CacheCounters;
  /**
   * The answer to `q` (its key bytes and hash) from a fresh entry, counting
   * the hit; null (and a miss) otherwise. After a hit, refreshDue says
   * whether the hit path should refresh the entry in the background.
   */
  answer(q: QueryScratch, now: number, limit: number, ednsSize: number): Buffer | null;
  readonly refreshDue: boolean;
  /** Stores a validated upstream answer if policy allows (a reader never stores); returns the entry to answer its waiters from. */
  insert(key: string, answer: Buffer, scan: AnswerScan, now: number): CacheEntry;
  /** What insert would return, without storing: for a hit path whose answers another part stores. */
  prepare(answer: Buffer, scan: AnswerScan, now: number): CacheEntry;
  /** An expired entry still inside the stale window (RFC 8767), as a copy; counted as served. */
  /** `served`: how many clients the stale answer goes to, each counted as served stale (default 1). `key`: a string, or a parsed query's key bytes and hash (no string made). */
  stale(key: string | QueryScratch, now: number, served?: number): CacheEntry | undefined;
}

/**
 * The store's index bytes per entry besides its slab record (store.ts): the
 * per-slot typed arrays (61 bytes with the slot version) and its share of
 * the hash table (2 x 4 bytes at half load; the default capacities leave it
 * a third full). Charged against the budget with the record; a few bytes
 * under the truth at half load, kept at 64 because --cache-memory is
 * documented with it.
 */
export const SLOT_OVERHEAD_BYTES = 64;

/**
 * What an entry costs besides its slab record (answer, key, TTL offsets and
 * an 8-byte header): its slot in the typed-array indexes and the hash table.
 * An entry of one A record is charged about 175 bytes in all; the agent's
 * RSS grows by about 550 bytes per cached name with 100,000 of them (most
 * of the rest is the V8 heap the misses that filled it left behind), against
 * 1,590 with the lru-cache store this replaced (bench/agent-memory.ts).
 */
export const ENTRY_OVERHEAD_BYTES = SLOT_OVERHEAD_BYTES;

/** Share of maxBytes given to negative answers. */
export const NEGATIVE_SHARE = 0.25;

export interface DnsCacheOptions {
  /** Tests only: bits of the key hash kept, to force hash collisions (store.ts). */
  readonly hashMask?: number;
  /** The store on SharedArrayBuffers, for batched workers to read (layout, reader.ts). */
  readonly shared?: boolean;
}
