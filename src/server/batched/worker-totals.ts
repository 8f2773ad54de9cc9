/**
 * What the batched UDP backend publishes (listener.ts totals()): every
 * worker's counter blocks added up with the main thread's own, into the
 * same blocks at each scrape, the blocks of workers that died kept in with
 * their gauges zeroed. Kept apart so listener.ts reads as the workers'
 * lifecycle, and this file as the sums a scrape reads.
 */
import type { DnsCache } from '../../cache/cache.js';
import { CACHE_COUNTERS, type CacheCounters } from '../../cache/stats.js';
import { TypedHistogram, hitPathHistograms, sumHistogram, sumHistogramsInto } from '../../ops/histogram.js';
import { Counters } from '../../stats/counters.js';
import type { HitPathHistograms } from '../hit-path.js';
import { SERVER_COUNTERS, type ServerCounters } from '../stats.js';
import { BATCHED_COUNTERS, QUEUE_WAIT, sumInto, type BatchedCounters, type WorkerCounters } from './stats.js';

export interface BatchedTotals {
  server: ServerCounters;
  cache: CacheCounters;
  io: BatchedCounters;
  hist: HitPathHistograms;
  queueWait: TypedHistogram;
}

export class WorkerTotals {
  /** Main-thread counters (restarts, cross-worker coalescing), summed with the workers'. */
  readonly #own: BatchedCounters;
  /** Answers the main thread sent on the workers' sockets (direct.ts), by rcode: summed with the workers' own. */
  readonly #ownServer: ServerCounters;
  /** The histograms of what this thread sends itself on the workers' sockets (direct.ts), summed with the workers'. */
  readonly #ownHist: HitPathHistograms;
  readonly #cache: DnsCache;
  /** True when the cache is the listener's own (no `store` given): its counters and gauges are published with the workers' totals. */
  readonly #ownsCache: boolean;
  readonly #sums: BatchedTotals;
  /**
   * What workers that died had counted, folded into one block (gauges
   * zeroed), so a restart never makes a counter go down, and a worker that
   * keeps dying (restarted for the life of the process) adds nothing to hold
   * or to sum at each scrape. The first dead worker's own block, adopted.
   */
  #dead: WorkerCounters | null;
  /** Dead workers' blocks already in `#dead`, skipped while the listener still lists them. */
  readonly #folded: WeakSet<WorkerCounters>;

  constructor(own: BatchedCounters, ownServer: ServerCounters, ownHist: HitPathHistograms, cache: DnsCache, ownsCache: boolean) {
    this.#own = own;
    this.#ownServer = ownServer;
    this.#ownHist = ownHist;
    this.#cache = cache;
    this.#ownsCache = ownsCache;
    this.#sums = {
      server: new Counters(SERVER_COUNTERS), cache: new Counters(CACHE_COUNTERS), io: new Counters(BATCHED_COUNTERS), hist: hitPathHistograms(), queueWait: new TypedHistogram(QUEUE_WAIT),
    };
    this.#dead = null;
    this.#folded = new WeakSet();
  }

  /** A worker died (not closed): its counts join the dead ones', its gauges dropped. */
  died(c: WorkerCounters): void {
    if (this.#folded.has(c)) return;
    this.#folded.add(c);
    zeroGauges(c);
    if (this.#dead === null) this.#dead = c;
    else addWorkerCounters(this.#dead, c);
  }

  /** Blocks kept for the dead workers (always one at most). */
  get deadBlocks(): number {
    return this.#dead === null ? 0 : 1;
  }

  /** `workers`: every worker's blocks the listener holds (a dead one's among them until its successor replaces it). */
  sum(workers: readonly WorkerCounters[]): BatchedTotals {
    const live = workers.filter((c) => !this.#folded.has(c));
    const blocks = this.#dead === null ? live : [this.#dead, ...live];
    sumInto(this.#sums.server, [this.#ownServer, ...blocks.map((b) => b.server)]);
    const cache = this.#cache;
    if (this.#ownsCache) {
      // Its inserts, evictions and claimed refreshes (its lookups are the exchange's, counted apart); the gauges are the one store's.
      sumInto(this.#sums.cache, [cache.counters, ...blocks.map((b) => b.cache)]);
      const io = this.#own.values;
      io[BATCHED_COUNTERS.slot.entriesPositive] = cache.positiveSize;
      io[BATCHED_COUNTERS.slot.entriesNegative] = cache.negativeSize;
      io[BATCHED_COUNTERS.slot.cacheBytes] = cache.bytes;
    } else {
      sumInto(this.#sums.cache, blocks.map((b) => b.cache));
    }
    sumInto(this.#sums.io, [this.#own, ...blocks.map((b) => b.io)]);
    sumHistogramsInto(this.#sums.hist, [this.#ownHist, ...blocks.map((b) => b.hist)]);
    sumHistogram(this.#sums.queueWait, blocks.map((b) => b.queueWait));
    return this.#sums;
  }
}

/** Adds `from`'s counts into `into`, slot by slot (the histograms' buckets, counts and sums alike). */
function addWorkerCounters(into: WorkerCounters, from: WorkerCounters): void {
  const add = (a: Float64Array, b: Float64Array): void => {
    for (let i = 0; i < a.length; i++) a[i]! += b[i]!;
  };
  add(into.server.values, from.server.values);
  add(into.cache.values, from.cache.values);
  add(into.io.values, from.io.values);
  add(into.queueWait.values, from.queueWait.values);
  add(into.hist.duration.values, from.hist.duration.values);
  for (const t of [0, 1] as const) {
    add(into.hist.requestSize[t].values, from.hist.requestSize[t].values);
    add(into.hist.responseSize[t].values, from.hist.responseSize[t].values);
  }
}

/** The block with its gauge slots zeroed (a dead worker holds no entries and waits on nothing). */
function zeroGauges(c: WorkerCounters): WorkerCounters {
  for (const block of [c.server, c.cache, c.io] as const) {
    block.schema.defs.forEach((d, i) => {
      if (d.type === 'gauge') block.values[i] = 0;
    });
  }
  return c;
}
