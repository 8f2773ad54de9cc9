/**
 * The answer cache: two LRU lists (positive and negative, separate
 * capacities, as in CoreDNS) of wire-format entries keyed by the query key
 * (dns/query.ts), kept in one compact store (store.ts: a slab of bytes and
 * typed-array indexes, no object per entry). Lookup is find, check
 * freshness, done; everything else was decided at insert.
 *
 * With batched UDP workers this is the one cache of the process: built
 * `shared` (its store on SharedArrayBuffers), written only here, on the main
 * thread, and read by every worker through reader.ts (HitCache is what a
 * hit path needs of either).
 *
 * Bounded twice: by entries (node-cache's 9984 each) and by bytes. Entry
 * counts alone let 12,000 names with 64 KB answers take 800 MB; the byte
 * budget charges each entry its slab record plus its index overhead, and
 * caps the slab itself, so memory stays bounded whatever the answers weigh.
 *
 * export/restore carry the entries across a restart (snapshot.ts); whether a
 * restored record is still an answer to cache, and as what, is revive.ts's.
 */
import type { AnswerScan } from '../dns/answer.js';
import { Rcode } from '../dns/constants.js';
import type { QueryScratch } from '../dns/query.js';
import { NEGATIVE_SHARE, type CacheOptions, type CachePolicyOptions, type DnsCacheOptions, type HitCache } from './cache-api.js';
import { AnswerCopy, lifeSec, type CacheEntry, type CacheRecord } from './entry.js';
import { planCaching, type CachePlan } from './policy.js';
import { prefetchStart } from './prefetch.js';
import { reviveRecord, type RestoreCounts } from './revive.js';
import { CACHE_COUNTERS, type CacheCounters } from './stats.js';
import { AnswerStore, NEGATIVE, POSITIVE, type ExportOrder, type ListId, type StoreLayout } from './store.js';
import { LIVE_SHARE, MAX_SLAB } from './store-slab.js';

export * from './cache-api.js';

const S = CACHE_COUNTERS.slot;

/** What a cache and its views (exchangeView) share. */
interface Core {
  readonly store: AnswerStore;
  opts: CacheOptions;
  /** True while restore() runs: its evictions are records that did not fit, not the cache's churn. */
  restoring: boolean;
  restoreEvictions: number;
  /** The store's table rebuilds already added to the counters (the exchange's view shares them). */
  rebuildsCounted: number;
}

export class DnsCache implements HitCache {
  readonly counters: CacheCounters;
  readonly #core: Core;
  readonly #store: AnswerStore;
  /** Where hits and misses are counted: `counters`, but a view's own block (exchangeView). */
  readonly #lookups: Float64Array;
  refreshDue: boolean;

  constructor(opts: CacheOptions, counters: CacheCounters, o: DnsCacheOptions = {}, view?: { core: Core; lookups: CacheCounters }) {
    this.counters = counters;
    this.refreshDue = false;
    if (view !== undefined) {
      this.#core = view.core;
      this.#lookups = view.lookups.values;
    } else {
      // LIVE_SHARE of the budget for live entries, the rest is the slab's room to append while a sweep frees more
      // (store-space.ts). Of the budget the store can hold: lists allowed more than the slab fills it with live
      // records, and then every insert evicts one and sweeps the whole slab for its bytes.
      const room = Math.min(opts.maxBytes, MAX_SLAB);
      const live = room * LIVE_SHARE;
      const negativeBytes = Math.max(1, Math.floor(live * NEGATIVE_SHARE));
      const store = new AnswerStore({
        capacity: [opts.positiveCapacity, opts.negativeCapacity],
        budget: [Math.max(1, Math.floor(live - negativeBytes)), negativeBytes],
        slabCap: room,
        shared: o.shared === true,
        ...(o.hashMask !== undefined ? { hashMask: o.hashMask } : {}),
      });
      this.#core = { store, opts, restoring: false, restoreEvictions: 0, rebuildsCounted: 0 };
      this.#lookups = counters.values;
    }
    this.#store = this.#core.store;
  }

  /**
   * The same cache for the batched miss exchange (miss-exchange.ts): its
   * lookups (a worker's miss asked again here) are counted in `lookups`, not
   * published (the worker already counted the miss). What it inserts the
   * exchange has scrubbed of out-of-bailiwick records, as a hit path does
   * before it stores: the workers serve straight from this store.
   */
  exchangeView(lookups: CacheCounters): DnsCache {
    return new DnsCache(this.#core.opts, this.counters, {}, { core: this.#core, lookups });
  }

  /** The store's buffers, for batched workers to read (meaningful when built `shared`). */
  get layout(): StoreLayout {
    return this.#store.layout;
  }

  get #opts(): CacheOptions {
    return this.#core.opts;
  }

  /**
   * A reload: new TTL caps, prefetch and stale window, applied from the next
   * insert (entries already stored keep the life they were given). Capacities
   * and the byte budget are fixed for the process's life.
   */
  configure(policy: CachePolicyOptions): void {
    this.#core.opts = { ...this.#core.opts, ...policy };
  }

  /** HitCache: lookupBytes, serve and claimPrefetch in one call. */
  answer(q: QueryScratch, now: number, limit: number, ednsSize: number): Buffer | null {
    const entry = this.lookupBytes(q.keyBytes, q.keyLen, q.keyHash, now);
    if (entry === undefined) return null;
    const reply = entry.serve(q, now, limit, ednsSize);
    this.refreshDue = this.claimPrefetch(entry, now);
    return reply;
  }

  /**
   * A batched worker's hit asks for a background refresh (it cannot claim
   * the entry's flag itself: reader.ts): true, and the entry marked, when it
   * is fresh, due and not being refreshed already.
   */
  claimRefresh(key: string, now: number): boolean {
    const st = this.#store;
    const slot = st.find(key);
    // minHits 0 now: a reload turned prefetch off after the worker asked (prefetchAt was set under the old settings).
    if (slot < 0 || this.#opts.minHits <= 0 || now >= st.expiresAt(slot) || now < st.prefetchAt(slot) || st.refreshing(slot)) return false;
    st.setRefreshing(slot);
    this.counters.values[S.prefetch]!++;
    return true;
  }

  /**
   * A fresh entry for `key`, counting the hit; undefined (and a miss)
   * otherwise. The entry is the store's one handle (stored-entry.ts StoredEntry):
   * valid until the next call into this cache, so serve it at once.
   */
  lookup(key: string, now: number): CacheEntry | undefined {
    return this.#found(this.#store.find(key), now);
  }

  /**
   * lookup for the key in bytes[0, len) (dns/query.ts QueryScratch: keyBytes,
   * keyLen, keyHash), so a hit makes no key string. `hash` must be the
   * key's hashKey.
   */
  lookupBytes(bytes: Uint8Array, len: number, hash: number, now: number): CacheEntry | undefined {
    return this.#found(this.#store.findBytes(bytes, len, hash), now);
  }

  #found(slot: number, now: number): CacheEntry | undefined {
    const st = this.#store;
    if (slot >= 0) {
      st.touch(slot);
      const expiresAt = st.expiresAt(slot);
      if (now < expiresAt) {
        st.addHit(slot);
        this.#lookups[st.listOf(slot) === POSITIVE ? S.hitPositive : S.hitNegative]!++;
        st.view.slot = slot;
        return st.view;
      }
      // Expired entries stay for the stale window: they may still answer if the upstream fails.
      if (now >= expiresAt + this.#opts.staleMs) st.remove(slot);
    }
    this.#lookups[S.miss]!++;
    return undefined;
  }

  /**
   * An expired entry still inside the stale window, for when the upstream
   * failed (RFC 8767); counted as served. Does not touch LRU order. A copy:
   * it answers every waiter of the failed miss.
   */
  stale(key: string | QueryScratch, now: number, served = 1): CacheEntry | undefined {
    const st = this.#store;
    const slot = typeof key === 'string' ? st.find(key) : st.findBytes(key.keyBytes, key.keyLen, key.keyHash);
    if (slot < 0) return undefined;
    const expiresAt = st.expiresAt(slot);
    if (now < expiresAt || now >= expiresAt + this.#opts.staleMs) return undefined;
    this.counters.values[S.stale]! += served;
    return new AnswerCopy(
      st.wireCopy(slot), st.questionEnd(slot), st.ttlOffsetsCopy(slot), st.storedAt(slot), expiresAt, st.prefetchAt(slot),
      st.listOf(slot) === NEGATIVE,
    );
  }

  /** True when a hit on `entry` (the handle lookup just returned) at `now` should start a background refresh (and marks it started). */
  claimPrefetch(entry: CacheEntry, now: number): boolean {
    const st = this.#store;
    if (entry !== st.view) return false;
    const slot = st.view.slot;
    // prefetchAt was set at insert, under the settings then: a reload to minHits 0 (off) must stop it, not let every hit through.
    const minHits = this.#opts.minHits;
    if (minHits <= 0 || st.refreshing(slot) || now < st.prefetchAt(slot) || st.hits(slot) < minHits) return false;
    st.setRefreshing(slot);
    this.counters.values[S.prefetch]!++;
    return true;
  }

  /**
   * Stores a validated upstream answer if policy allows (an answer about the
   * name it does not keep removes the key's entry), and returns the entry to
   * answer waiting clients from (a copy of what was stored; transient when
   * not stored).
   */
  insert(key: string, answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    const plan: CachePlan = planCaching(scan, this.#opts, answer);
    if (plan.kind === 'none') {
      this.counters.values[S.uncacheable]!++;
      // A TTL of 0 or a denial without SOA (NXDOMAIN after a CNAME too) is still the upstream's word on the name,
      // newer than what the key holds: kept, that older entry would come back stale on the next failure (RFC 8767).
      // A truncated or SERVFAIL answer says nothing about the name, nor does a NOERROR CNAME alone without SOA (its
      // target's answer missing: the view's ExternalName whose target failed), so the entry stays for that failure.
      if (plan.reason === 'zero-ttl' || (plan.reason === 'no-soa' && (scan.ancount === 0 || scan.rcode === Rcode.NXDOMAIN))) {
        const slot = this.#store.find(key);
        if (slot >= 0) this.#store.remove(slot);
      }
      return AnswerCopy.fromAnswer(answer, scan, now, 0, Number.POSITIVE_INFINITY, false);
    }
    const negative = plan.kind === 'negative';
    const entry = AnswerCopy.fromAnswer(answer, scan, now, plan.ttl, prefetchStart(now, plan.ttl, this.#opts), negative);
    // The store drops any entry the key had in the other list: a name that turned negative must not keep answering positive.
    // It refuses one bigger than its list's byte budget (the old entry gone all the same): passed through, not stored.
    const stored = this.#store.insert(negative ? NEGATIVE : POSITIVE, key, entry) >= 0;
    this.#countEvictions();
    this.counters.values[stored ? (negative ? S.insertNegative : S.insertPositive) : S.uncacheable]!++;
    return entry;
  }

  /** HitCache: what insert would return, not stored and not counted. */
  prepare(answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    const plan = planCaching(scan, this.#opts, answer);
    if (plan.kind === 'none') return AnswerCopy.fromAnswer(answer, scan, now, 0, Number.POSITIVE_INFINITY, false);
    return AnswerCopy.fromAnswer(answer, scan, now, plan.ttl, prefetchStart(now, plan.ttl, this.#opts), plan.kind === 'negative');
  }

  /** Moves the store's evictions into the counters (or, during a restore, into the records that did not fit). */
  #countEvictions(): void {
    const rebuilds = this.#store.rebuilds;
    const core = this.#core;
    if (rebuilds !== core.rebuildsCounted) {
      this.counters.values[S.tableRebuilds]! += rebuilds - core.rebuildsCounted;
      core.rebuildsCounted = rebuilds;
    }
    const ev = this.#store.evicted;
    if (ev[0] === 0 && ev[1] === 0) return;
    if (this.#core.restoring) this.#core.restoreEvictions += ev[0]! + ev[1]!;
    else {
      this.counters.values[S.evictPositive]! += ev[0]!;
      this.counters.values[S.evictNegative]! += ev[1]!;
    }
    ev.fill(0);
  }

  /**
   * Every entry still inside its stale window, as records aged to `now`:
   * positive store first, then negative, each least recently used first, so
   * restoring them in this order keeps their recency. Each record's `wire` is
   * its own copy. The cache may change between two records (a periodic
   * snapshot walks it across event-loop turns): the walk follows the order
   * taken when it began, and writes each entry as it is when reached; one
   * removed by then is left out, and the entries stored since the walk began
   * come last (their order taken when the first part ends). A key refreshed
   * after its old entry was written comes twice, the older first (a restore
   * keeps the more recently stored).
   */
  *export(now: number): Generator<CacheRecord> {
    const st = this.#store;
    yield* this.#records(st.capture(Number.NEGATIVE_INFINITY), now, now);
    yield* this.#records(st.capture(now), now, Number.POSITIVE_INFINITY);
  }

  /** The records of `order`'s entries that are still there, stored at most at `storedUpTo` and inside their stale window at `now`. */
  *#records(order: ExportOrder, now: number, storedUpTo: number): Generator<CacheRecord> {
    const st = this.#store;
    const { slots, hashes } = order;
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      if (!st.holds(slot, hashes[i]!)) continue;
      const storedAt = st.storedAt(slot);
      const expiresAt = st.expiresAt(slot);
      // Stored since the walk began (a slot reused for the same key): the second part has it.
      if (storedAt > storedUpTo || now >= expiresAt + this.#opts.staleMs) continue;
      yield {
        key: st.keyOf(slot),
        wire: st.wireCopy(slot),
        ttlSec: lifeSec(storedAt, expiresAt),
        ageMs: now > storedAt ? now - storedAt : 0,
        hits: st.hits(slot),
        negative: st.listOf(slot) === NEGATIVE,
      };
    }
  }

  /**
   * Puts records back (a warm restart), each stored `ageMs` before `now`, so
   * hits count its TTLs down from where they were and it expires when it
   * would have. Each record goes through today's policy again, as an insert
   * does: the bytes must scan as a cacheable answer to the record's key, and a
   * cap lowered since then shortens its life. Meant for an empty cache at
   * start (an entry found for a key is taken as an earlier record of this
   * load, counted restored): of two copies of one key the more recently
   * stored decides, so a copy superseded in the file is dropped even when the
   * newer one has expired by now or is invalid.
   */
  restore(records: Iterable<CacheRecord>, now: number): RestoreCounts {
    const counts: RestoreCounts = { restored: 0, expired: 0, invalid: 0, present: 0, noRoom: 0 };
    const st = this.#store;
    this.#countEvictions();
    const core = this.#core;
    core.restoring = true;
    core.restoreEvictions = 0;
    try {
      for (const r of records) {
        const found = st.find(r.key);
        if (found >= 0) {
          // The more recently stored copy decides: a key twice in one file (refreshed after a periodic write's walk
          // passed it) has its newer copy later, and the earlier answer had been replaced even if the newer expired since.
          counts.present++;
          if (st.storedAt(found) >= now - r.ageMs) continue;
          st.remove(found);
          counts.restored--;
        }
        const entry = reviveRecord(r, now, this.#opts);
        if (entry === 'invalid') counts.invalid++;
        else if (entry === 'expired') counts.expired++;
        else {
          const list: ListId = entry.negative ? NEGATIVE : POSITIVE;
          if (st.insert(list, r.key, entry) >= 0) counts.restored++;
          else counts.noRoom++;
          this.#countEvictions();
        }
      }
    } finally {
      core.restoring = false;
    }
    counts.restored -= core.restoreEvictions;
    counts.noRoom += core.restoreEvictions;
    return counts;
  }

  /** The byte budget both stores share: --cache-memory, at most what the store can hold (its slab's cap). */
  get maxBytes(): number {
    return this.#store.slabCap;
  }

  get positiveSize(): number {
    return this.#store.size(POSITIVE);
  }

  get negativeSize(): number {
    return this.#store.size(NEGATIVE);
  }

  /** Bytes charged against the budget (slab records plus per-entry index overhead). */
  get bytes(): number {
    return this.#store.charged(POSITIVE) + this.#store.charged(NEGATIVE);
  }

  /** The part of the slab in use now (its soft end: it moves up to maxBytes), live and dead records together. */
  get slabBytes(): number {
    return this.#store.slabBytes;
  }

  clear(): void {
    this.#store.clear();
  }
}
