/**
 * The answer cache: two LRU stores (positive and negative, separate
 * capacities, as in CoreDNS) of wire-format entries keyed by the query key
 * (dns/query.ts). Lookup is find, check freshness, done; everything else was
 * decided at insert.
 *
 * Bounded twice: by entries (node-cache's 9984 each) and by bytes. Entry
 * counts alone let 12,000 names with 64 KB answers take 800 MB; the byte
 * budget charges each entry its answer bytes plus a fixed overhead for the
 * objects around them, so memory stays bounded whatever the answers weigh.
 */
import { LRUCache } from 'lru-cache';
import type { AnswerScan } from '../dns/answer.js';
import { CacheEntry } from './entry.js';
import { planCaching, type CachePlan, type TtlCaps } from './policy.js';
import { prefetchStart, type PrefetchOptions } from './prefetch.js';
import { CACHE_COUNTERS, type CacheCounters } from './stats.js';

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

/**
 * What an entry costs besides its answer bytes: the CacheEntry object, its
 * Buffer and Uint16Array headers, the key string and the LRU's slots.
 * Measured: 100,000 small entries cost about 1.4 KB each in RSS, of which
 * about 100 B are answer bytes (design section 7).
 */
export const ENTRY_OVERHEAD_BYTES = 1024;
/** Share of maxBytes given to negative answers. */
export const NEGATIVE_SHARE = 0.25;

const S = CACHE_COUNTERS.slot;

function entryBytes(e: CacheEntry, key: string): number {
  return e.wire.length + e.ttlOffsets.byteLength + key.length + ENTRY_OVERHEAD_BYTES;
}

export class DnsCache {
  readonly counters: CacheCounters;
  readonly #positive: LRUCache<string, CacheEntry>;
  readonly #negative: LRUCache<string, CacheEntry>;
  #opts: CacheOptions;

  constructor(opts: CacheOptions, counters: CacheCounters) {
    this.#opts = opts;
    this.counters = counters;
    const v = counters.values;
    const negativeBytes = Math.max(1, Math.floor(opts.maxBytes * NEGATIVE_SHARE));
    this.#positive = new LRUCache<string, CacheEntry>({
      max: opts.positiveCapacity,
      maxSize: Math.max(1, opts.maxBytes - negativeBytes),
      sizeCalculation: entryBytes,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') v[S.evictPositive]!++;
      },
    });
    this.#negative = new LRUCache<string, CacheEntry>({
      max: opts.negativeCapacity,
      maxSize: negativeBytes,
      sizeCalculation: entryBytes,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') v[S.evictNegative]!++;
      },
    });
  }

  /**
   * A reload: new TTL caps, prefetch and stale window, applied from the next
   * insert (entries already stored keep the life they were given). Capacities
   * and the byte budget are fixed for the process's life.
   */
  configure(policy: TtlCaps & PrefetchOptions & { readonly staleMs: number }): void {
    this.#opts = { ...this.#opts, ...policy };
  }

  /** A fresh entry for `key`, counting the hit; undefined (and a miss) otherwise. */
  lookup(key: string, now: number): CacheEntry | undefined {
    const positive = this.#positive.get(key);
    const entry = positive ?? this.#negative.get(key);
    if (entry !== undefined) {
      if (now < entry.expiresAt) {
        entry.hits++;
        this.counters.values[positive !== undefined ? S.hitPositive : S.hitNegative]!++;
        return entry;
      }
      // Expired entries stay for the stale window: they may still answer if the upstream fails.
      if (now >= entry.expiresAt + this.#opts.staleMs) (positive !== undefined ? this.#positive : this.#negative).delete(key);
    }
    this.counters.values[S.miss]!++;
    return undefined;
  }

  /**
   * An expired entry still inside the stale window, for when the upstream
   * failed (RFC 8767); counted as served. Does not touch LRU order.
   */
  stale(key: string, now: number): CacheEntry | undefined {
    const entry = this.#positive.peek(key) ?? this.#negative.peek(key);
    if (entry === undefined || now < entry.expiresAt || now >= entry.expiresAt + this.#opts.staleMs) return undefined;
    this.counters.values[S.stale]!++;
    return entry;
  }

  /** True when a hit on `entry` at `now` should start a background refresh (and marks it started). */
  claimPrefetch(entry: CacheEntry, now: number): boolean {
    if (entry.refreshing || now < entry.prefetchAt || entry.hits < this.#opts.minHits) return false;
    entry.refreshing = true;
    this.counters.values[S.prefetch]!++;
    return true;
  }

  /**
   * Stores a validated upstream answer if policy allows, and returns the
   * entry to answer waiting clients from (transient when not stored).
   */
  insert(key: string, answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    const plan: CachePlan = planCaching(scan, this.#opts);
    if (plan.kind === 'none') {
      this.counters.values[S.uncacheable]!++;
      return CacheEntry.fromAnswer(answer, scan, now, 0, Number.POSITIVE_INFINITY, false);
    }
    const negative = plan.kind === 'negative';
    const entry = CacheEntry.fromAnswer(answer, scan, now, plan.ttl, prefetchStart(now, plan.ttl, this.#opts), negative);
    if (negative) {
      // A name that turned negative must not keep answering from the positive store, and vice versa.
      this.#positive.delete(key);
      this.#negative.set(key, entry);
      this.counters.values[S.insertNegative]!++;
    } else {
      this.#negative.delete(key);
      this.#positive.set(key, entry);
      this.counters.values[S.insertPositive]!++;
    }
    return entry;
  }

  get positiveSize(): number {
    return this.#positive.size;
  }

  get negativeSize(): number {
    return this.#negative.size;
  }

  /** Bytes charged against the budget (answer bytes plus per-entry overhead). */
  get bytes(): number {
    return this.#positive.calculatedSize + this.#negative.calculatedSize;
  }

  clear(): void {
    this.#positive.clear();
    this.#negative.clear();
  }
}
