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
import { scanAnswer, type AnswerScan } from '../dns/answer.js';
import { HEADER_LEN } from '../dns/constants.js';
import { CacheEntry, type CacheRecord } from './entry.js';
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

/** What DnsCache.restore did with the records it was given. */
export interface RestoreCounts {
  /** Entries now in the cache (all of them, when it started empty). */
  restored: number;
  /** Past their stale window by now. */
  expired: number;
  /** Not an answer today's policy caches the same way, or not the answer to its key. */
  invalid: number;
  /** The key was already cached: a live answer is fresher than a restored one. */
  present: number;
  /** Did not fit the capacities or the byte budget (the least recent give way). */
  noRoom: number;
}

/**
 * Whether `key` (dns/query.ts: lower-cased wire name, type, class, one flags
 * byte) is the key of the question in `wire`. A restored entry under the
 * wrong key would answer one name with another's records.
 */
function keyMatchesQuestion(key: string, wire: Buffer, questionEnd: number): boolean {
  const nameEnd = questionEnd - 4;
  // The flags byte holds only KEY_DO | KEY_CD.
  if (key.length !== questionEnd - HEADER_LEN + 1 || key.charCodeAt(key.length - 1) > 3) return false;
  for (let i = HEADER_LEN; i < questionEnd; i++) {
    const c = wire[i]!;
    const want = i < nameEnd && c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
    if (key.charCodeAt(i - HEADER_LEN) !== want) return false;
  }
  return true;
}

function entryBytes(e: CacheEntry, key: string): number {
  return e.wire.length + e.ttlOffsets.byteLength + key.length + ENTRY_OVERHEAD_BYTES;
}

export class DnsCache {
  readonly counters: CacheCounters;
  readonly #positive: LRUCache<string, CacheEntry>;
  readonly #negative: LRUCache<string, CacheEntry>;
  #opts: CacheOptions;
  /** True while restore() runs: its evictions are records that did not fit, not the cache's churn. */
  #restoring: boolean;
  #restoreEvictions: number;

  constructor(opts: CacheOptions, counters: CacheCounters) {
    this.#opts = opts;
    this.counters = counters;
    this.#restoring = false;
    this.#restoreEvictions = 0;
    const v = counters.values;
    const negativeBytes = Math.max(1, Math.floor(opts.maxBytes * NEGATIVE_SHARE));
    this.#positive = new LRUCache<string, CacheEntry>({
      max: opts.positiveCapacity,
      maxSize: Math.max(1, opts.maxBytes - negativeBytes),
      sizeCalculation: entryBytes,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') {
          if (this.#restoring) this.#restoreEvictions++;
          else v[S.evictPositive]!++;
        }
      },
    });
    this.#negative = new LRUCache<string, CacheEntry>({
      max: opts.negativeCapacity,
      maxSize: negativeBytes,
      sizeCalculation: entryBytes,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') {
          if (this.#restoring) this.#restoreEvictions++;
          else v[S.evictNegative]!++;
        }
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

  /**
   * Every entry still inside its stale window, as records aged to `now`:
   * positive store first, then negative, each least recently used first, so
   * restoring them in this order keeps their recency. Do not change the cache
   * while iterating.
   */
  *export(now: number): Generator<CacheRecord> {
    const staleMs = this.#opts.staleMs;
    for (const store of [this.#positive, this.#negative]) {
      // lru-cache 11 types rentries() as (K | V)[]; it yields [key, value] like entries().
      for (const [key, entry] of store.rentries() as Generator<[string, CacheEntry]>) {
        if (now < entry.expiresAt + staleMs) yield entry.toRecord(key, now);
      }
    }
  }

  /**
   * Puts records back (a warm restart), each stored `ageMs` before `now`, so
   * hits count its TTLs down from where they were and it expires when it
   * would have. Each record goes through today's policy again, as an insert
   * does: the bytes must scan as a cacheable answer to the record's key, and a
   * cap lowered since then shortens its life. Meant for an empty cache at
   * start; a key already cached keeps its live entry.
   */
  restore(records: Iterable<CacheRecord>, now: number): RestoreCounts {
    const counts: RestoreCounts = { restored: 0, expired: 0, invalid: 0, present: 0, noRoom: 0 };
    this.#restoring = true;
    this.#restoreEvictions = 0;
    try {
      for (const r of records) {
        if (this.#positive.has(r.key) || this.#negative.has(r.key)) {
          counts.present++;
          continue;
        }
        const entry = this.#revive(r, now);
        if (entry === 'invalid') counts.invalid++;
        else if (entry === 'expired') counts.expired++;
        else {
          const store = entry.negative ? this.#negative : this.#positive;
          store.set(r.key, entry);
          // lru-cache refuses, without a word, an entry bigger than the whole budget.
          if (store.has(r.key)) counts.restored++;
          else counts.noRoom++;
        }
      }
    } finally {
      this.#restoring = false;
    }
    counts.restored -= this.#restoreEvictions;
    counts.noRoom += this.#restoreEvictions;
    return counts;
  }

  #revive(r: CacheRecord, now: number): CacheEntry | 'invalid' | 'expired' {
    const scan = scanAnswer(r.wire);
    if (scan === undefined || scan.optStart >= 0 || scan.end !== r.wire.length || !keyMatchesQuestion(r.key, r.wire, scan.questionEnd)) {
      return 'invalid';
    }
    const plan = planCaching(scan, this.#opts);
    // Its TTLs were capped to its life at insert, so the plan gives that life
    // back, or less under a cap lowered since; more would mean bytes and life disagree.
    if (plan.kind === 'none' || (plan.kind === 'negative') !== r.negative || plan.ttl > r.ttlSec) return 'invalid';
    const ageMs = r.ageMs > 0 ? r.ageMs : 0;
    if (ageMs >= plan.ttl * 1000 + this.#opts.staleMs) return 'expired';
    const storedAt = now - ageMs;
    // fromAnswer copies the bytes (the caller's buffer may be a whole file) and re-caps the TTLs.
    const entry = CacheEntry.fromAnswer(r.wire, scan, storedAt, plan.ttl, prefetchStart(storedAt, plan.ttl, this.#opts), r.negative);
    entry.hits = r.hits;
    return entry;
  }

  /** The byte budget both stores share (--cache-memory). */
  get maxBytes(): number {
    return this.#opts.maxBytes;
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
