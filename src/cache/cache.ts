/**
 * The answer cache: two LRU stores (positive and negative, separate
 * capacities, as in CoreDNS) of wire-format entries keyed by the query key
 * (dns/query.ts). Lookup is find, check freshness, done; everything else was
 * decided at insert.
 */
import { LRUCache } from 'lru-cache';
import type { AnswerScan } from '../dns/answer.js';
import { CacheEntry } from './entry.js';
import { planCaching, type CachePlan, type TtlCaps } from './policy.js';
import { prefetchStart, type PrefetchOptions } from './prefetch.js';
import { CacheCounter, newCacheCounters } from './stats.js';

export interface CacheOptions extends TtlCaps, PrefetchOptions {
  readonly positiveCapacity: number;
  readonly negativeCapacity: number;
  /** How long past expiry an entry may still answer when its upstream fails (RFC 8767); 0 = never. */
  readonly staleMs: number;
}

/** RFC 8767 4: the TTL of a stale answer, so clients come back soon but not at once. */
export const STALE_ANSWER_TTL = 30;

export class DnsCache {
  readonly counters: Float64Array;
  readonly #positive: LRUCache<string, CacheEntry>;
  readonly #negative: LRUCache<string, CacheEntry>;
  readonly #opts: CacheOptions;

  constructor(opts: CacheOptions) {
    this.#opts = opts;
    this.counters = newCacheCounters();
    const counters = this.counters;
    this.#positive = new LRUCache<string, CacheEntry>({
      max: opts.positiveCapacity,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') counters[CacheCounter.EVICT_POSITIVE]!++;
      },
    });
    this.#negative = new LRUCache<string, CacheEntry>({
      max: opts.negativeCapacity,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') counters[CacheCounter.EVICT_NEGATIVE]!++;
      },
    });
  }

  /** A fresh entry for `key`, counting the hit; undefined (and a miss) otherwise. */
  lookup(key: string, now: number): CacheEntry | undefined {
    const positive = this.#positive.get(key);
    const entry = positive ?? this.#negative.get(key);
    if (entry !== undefined) {
      if (now < entry.expiresAt) {
        entry.hits++;
        this.counters[positive !== undefined ? CacheCounter.HIT_POSITIVE : CacheCounter.HIT_NEGATIVE]!++;
        return entry;
      }
      // Expired entries stay for the stale window: they may still answer if the upstream fails.
      if (now >= entry.expiresAt + this.#opts.staleMs) (positive !== undefined ? this.#positive : this.#negative).delete(key);
    }
    this.counters[CacheCounter.MISS]!++;
    return undefined;
  }

  /**
   * An expired entry still inside the stale window, for when the upstream
   * failed (RFC 8767); counted as served. Does not touch LRU order.
   */
  stale(key: string, now: number): CacheEntry | undefined {
    const entry = this.#positive.peek(key) ?? this.#negative.peek(key);
    if (entry === undefined || now < entry.expiresAt || now >= entry.expiresAt + this.#opts.staleMs) return undefined;
    this.counters[CacheCounter.STALE]!++;
    return entry;
  }

  /** True when a hit on `entry` at `now` should start a background refresh (and marks it started). */
  claimPrefetch(entry: CacheEntry, now: number): boolean {
    if (entry.refreshing || now < entry.prefetchAt || entry.hits < this.#opts.minHits) return false;
    entry.refreshing = true;
    this.counters[CacheCounter.PREFETCH]!++;
    return true;
  }

  /**
   * Stores a validated upstream answer if policy allows, and returns the
   * entry to answer waiting clients from (transient when not stored).
   */
  insert(key: string, answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    const plan: CachePlan = planCaching(scan, this.#opts);
    if (plan.kind === 'none') {
      this.counters[CacheCounter.UNCACHEABLE]!++;
      return CacheEntry.fromAnswer(answer, scan, now, 0, Number.POSITIVE_INFINITY, false);
    }
    const negative = plan.kind === 'negative';
    const entry = CacheEntry.fromAnswer(answer, scan, now, plan.ttl, prefetchStart(now, plan.ttl, this.#opts), negative);
    if (negative) {
      // A name that turned negative must not keep answering from the positive store, and vice versa.
      this.#positive.delete(key);
      this.#negative.set(key, entry);
      this.counters[CacheCounter.INSERT_NEGATIVE]!++;
    } else {
      this.#negative.delete(key);
      this.#positive.set(key, entry);
      this.counters[CacheCounter.INSERT_POSITIVE]!++;
    }
    return entry;
  }

  get positiveSize(): number {
    return this.#positive.size;
  }

  get negativeSize(): number {
    return this.#negative.size;
  }

  clear(): void {
    this.#positive.clear();
    this.#negative.clear();
  }
}
