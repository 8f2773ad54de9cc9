/**
 * A batched worker's cache: a read-only view of the store the main thread
 * writes (store.ts, on SharedArrayBuffers handed over in WorkerInit), so all
 * the workers and the main thread hold one copy of every answer, and a name
 * fetched through one worker is a hit in every other.
 *
 * No lock on this side. Two versions guard a read (store-layout.ts):
 *   - the slot's: the writer makes ver[slot] odd while it changes that
 *     slot's fields or record (a new entry in it, a sweep moving it) and
 *     even after, and moves it by two when it frees the slot (removal,
 *     refresh, clear). The lookup takes it (Atomics.load) before
 *     comparing the slot's key; the read serves (copies the answer out and
 *     patches it in its own buffer), then takes it again: unchanged means
 *     the slot held the key's entry throughout. A slot reused under a stale
 *     table reference is caught alike: the reuse changed its version, and
 *     the key compare is inside the check.
 *   - the global sequence word, odd only while the table is rebuilt or the
 *     store cleared: taken before the lookup and checked after, so a probe
 *     through a table rebuilt under it (which may miss a key that is there)
 *     is tried again rather than counted a miss.
 * A changed version is a retry, a few times, then a miss. A version that
 * stays odd (the writer preempted inside that slot's change, or a rebuild)
 * is waited for a few hundred loads, then the read gives up (gaveUp): the
 * main thread, asked next, answers from the same store. A writer preempted
 * in one slot's change so blocks the readers of that one key; the hash
 * table never moves a cell under a probe (store-table.ts), so every other
 * key's read goes on. Reads are bounded whatever they find
 * (store-layout.ts), so a torn read costs a retry, never an exception or a
 * loop.
 *
 * Memory order: the checks are Atomics; the data reads between them are
 * plain. V8 does not move plain typed-array accesses across Atomics
 * operations, and on x86 loads are not reordered with loads. On arm64 the
 * second check's load-acquire would not keep the plain reads before it, so
 * an Atomics.store to a word of our own comes first (a store-release there,
 * which the reads before it cannot pass, and which the load-acquire after
 * it cannot pass either); on x86 it costs one locked instruction a read.
 * The writer does the mirror image (store-versions.ts openSlot, beginAll).
 * The table cell itself is a plain load: the writer stores it last (Atomics.store, a
 * store-release on arm64), and what the reader loads next is at addresses
 * computed from it, which arm64 keeps in order (store-table.ts). A key
 * compare that finds another key is not fenced (find checks the version
 * again, but on arm64 a compare torn past that check is possible): at worst
 * a miss, never a wrong answer.
 *
 * What a reader writes: the entry's `ref` byte (eviction gives a referenced
 * entry a second chance, since readers cannot reorder the LRU lists) and its
 * hit count (for prefetch's min-hits), both after the read checked out, both
 * racy by design: a stray mark or a lost increment on a slot reused
 * meanwhile only nudges eviction or prefetch. It never sets the entry's
 * "refreshing" flag (the slot may hold another entry by then): a due refresh
 * is reported (refreshDue), sent to the main thread as a refresh miss, and
 * the main thread claims the flag (DnsCache.claimRefresh) or drops it.
 *
 * Expired entries are misses here (the main thread removes them, or serves
 * them stale); nothing is ever stored from this side (insert only prepares
 * the answer for the worker's own waiting clients).
 */
import type { AnswerScan } from '../dns/answer.js';
import { hashKey, keyHashSeed, useKeyHashSeed, type QueryScratch } from '../dns/query.js';
import type { CachePolicyOptions, HitCache } from './cache-api.js';
import { AnswerCopy, type CacheEntry } from './entry.js';
import { planCaching } from './policy.js';
import { prefetchStart } from './prefetch.js';
import { CACHE_COUNTERS, type CacheCounters } from './stats.js';
import { BUSY, FLAG_REFRESHING, NEGATIVE, NONE, POSITIVE, StoreView, type StoreLayout } from './store-layout.js';

/** Reads of one query that found the store changing before it counts a miss. */
export const READ_ATTEMPTS = 4;
/** Global-word loads a read waits while the writer rebuilds the table or clears the store. */
const SPINS = 256;

const S = CACHE_COUNTERS.slot;
const MISS = 0;
const HIT = 1;
const TORN = 2;
/** The key's slot stayed mid-change: give this key up (find's BUSY). */
const GIVE_UP = 3;

export class CacheReader implements HitCache {
  readonly counters: CacheCounters;
  readonly #v: StoreView;
  readonly #hashMask: number;
  #policy: CachePolicyOptions;
  refreshDue: boolean;
  /** The last read's outputs (no object per read). */
  #reply: Buffer | null;
  #slot: number;
  /** The version #slot was found under (StoreView.foundVer). */
  #ver: number;
  /** Reads that found the store changing and gave up (tests, diagnostics). */
  gaveUp: number;
  /**
   * The last answer() gave up rather than found nothing: its miss is not a
   * miss of the store, and the main thread answers it from there (never shed
   * or refused on the worker's side: shed-gate.ts, loop.ts forward).
   */
  lastGaveUp: boolean;
  /** A word of our own to store to between a read and its check (the memory order note above). */
  readonly #fence: Int32Array;
  /** Where lookups are counted: the published counters, or (uncounted()) a block nobody reads. */
  #tally: Float64Array;
  readonly #unpublished: Float64Array;

  constructor(layout: StoreLayout, policy: CachePolicyOptions, counters: CacheCounters) {
    // The writer's hash: keys parsed on this thread must land where it put them.
    if (keyHashSeed() !== layout.hashSeed) useKeyHashSeed(layout.hashSeed);
    this.#v = new StoreView(layout);
    this.#hashMask = layout.hashMask;
    this.#policy = policy;
    this.counters = counters;
    this.refreshDue = false;
    this.#reply = null;
    this.#slot = NONE;
    this.#ver = 0;
    this.gaveUp = 0;
    this.lastGaveUp = false;
    this.#fence = new Int32Array(new SharedArrayBuffer(4));
    this.#tally = counters.values;
    this.#unpublished = new Float64Array(counters.values.length);
  }

  /**
   * Lookups made while `on` is false are not counted (a client handed back
   * was counted at its first look). Counting elsewhere, not undoing counts
   * after: a scrape in between would see a counter go back.
   */
  set counting(on: boolean) {
    this.#tally = on ? this.counters.values : this.#unpublished;
  }

  /** A reload: new TTL caps (for prepare), prefetch and stale window. */
  configure(policy: CachePolicyOptions): void {
    this.#policy = { ...this.#policy, ...policy };
  }

  answer(q: QueryScratch, now: number, limit: number, ednsSize: number): Buffer | null {
    const v = this.#v;
    const h = (q.keyHash & this.#hashMask) >>> 0;
    this.refreshDue = false;
    this.lastGaveUp = false;
    let spins = 0;
    let settled = false;
    for (let attempt = 0; attempt < READ_ATTEMPTS; ) {
      const before = v.seq();
      if ((before & 1) !== 0) {
        if (++spins > SPINS) break;
        continue;
      }
      const r = this.#read(q, h, now, limit, ednsSize);
      if (r === GIVE_UP) break;
      Atomics.store(this.#fence, 0, 0);
      // The slot first (a miss with no slot has none to check), then the table as a whole.
      if ((this.#slot >= 0 && Atomics.load(v.ver, this.#slot) !== this.#ver) || v.seq() !== before) {
        attempt++;
        continue;
      }
      settled = true;
      // TORN on a store that did not change: cannot happen; a miss, not a loop.
      if (r !== HIT) break;
      const slot = this.#slot;
      v.ref[slot] = 1;
      v.hitsA[slot]!++;
      this.#tally[v.list[slot] === POSITIVE ? S.hitPositive : S.hitNegative]!++;
      const reply = this.#reply;
      this.#reply = null;
      return reply;
    }
    if (!settled) {
      this.gaveUp++;
      this.lastGaveUp = true;
      this.counters.values[S.readGaveUp]!++;
    }
    this.#reply = null;
    this.#tally[S.miss]!++;
    return null;
  }

  /** One unchecked read: GIVE_UP, MISS, TORN, or HIT with #reply and refreshDue set; #slot and #ver what it read (#slot NONE: no slot). */
  #read(q: QueryScratch, h: number, now: number, limit: number, ednsSize: number): number {
    const v = this.#v;
    this.#reply = null;
    const slot = v.findBytes(q.keyBytes, q.keyLen, h);
    this.#slot = slot >= 0 ? slot : NONE;
    if (slot < 0) return slot === BUSY ? GIVE_UP : MISS;
    this.#ver = v.foundVer;
    const storedAt = v.storedAtA[slot]!;
    const expiresAt = v.expiresAtA[slot]!;
    if (!(now < expiresAt)) return MISS;
    const age = now > storedAt ? Math.floor((now - storedAt) / 1000) : 0;
    let reply: Buffer | null;
    try {
      reply = v.serve(slot, q, age, -1, limit, ednsSize);
    } catch {
      // Bounded reads do not throw; a torn one that still did is a retry, not a dead worker.
      return TORN;
    }
    if (reply === null) return TORN;
    const p = this.#policy;
    this.refreshDue = p.minHits > 0 && now >= v.prefetchAtA[slot]! && v.hitsA[slot]! + 1 >= p.minHits && (v.flags[slot]! & FLAG_REFRESHING) === 0;
    this.#reply = reply;
    return HIT;
  }

  /** Never stores (the main thread does): the answer for this worker's waiting clients. */
  insert(_key: string, answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    return this.prepare(answer, scan, now);
  }

  prepare(answer: Buffer, scan: AnswerScan, now: number): CacheEntry {
    const plan = planCaching(scan, this.#policy, answer);
    if (plan.kind === 'none') return AnswerCopy.fromAnswer(answer, scan, now, 0, Number.POSITIVE_INFINITY, false);
    return AnswerCopy.fromAnswer(answer, scan, now, plan.ttl, prefetchStart(now, plan.ttl, this.#policy), plan.kind === 'negative');
  }

  /** An expired entry inside the stale window, copied out under the same check as a hit. */
  stale(key: string | QueryScratch, now: number, served = 1): CacheEntry | undefined {
    const v = this.#v;
    const h = ((typeof key === 'string' ? hashKey(key) : key.keyHash) & this.#hashMask) >>> 0;
    for (let attempt = 0, spins = 0; attempt < READ_ATTEMPTS && spins <= SPINS; ) {
      const before = v.seq();
      if ((before & 1) !== 0) {
        spins++;
        continue;
      }
      const slot = typeof key === 'string' ? v.find(key, h) : v.findBytes(key.keyBytes, key.keyLen, h);
      if (slot === BUSY) return undefined;
      const ver = v.foundVer;
      let copy: AnswerCopy | undefined;
      if (slot >= 0) {
        const expiresAt = v.expiresAtA[slot]!;
        if (now >= expiresAt && now < expiresAt + this.#policy.staleMs) {
          try {
            copy = new AnswerCopy(
              v.wireCopy(slot), v.questionEndA[slot]!, v.ttlOffsetsCopy(slot), v.storedAtA[slot]!, expiresAt, v.prefetchAtA[slot]!,
              v.list[slot] === NEGATIVE,
            );
          } catch {
            // As in #read: a torn read that still threw is a retry (the version check below fails it), not a dead worker.
            copy = undefined;
          }
        }
      }
      Atomics.store(this.#fence, 0, 0);
      if ((slot >= 0 && Atomics.load(v.ver, slot) !== ver) || v.seq() !== before) {
        attempt++;
        continue;
      }
      if (copy === undefined || copy.wire.length < 12 || copy.questionEnd > copy.wire.length) return undefined;
      this.counters.values[S.stale]! += served;
      return copy;
    }
    return undefined;
  }
}
