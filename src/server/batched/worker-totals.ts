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
  /** Counter blocks of workers that died: their counts stay in the totals (gauges zeroed), so a restart never makes a counter go down. */
  readonly #dead: WorkerCounters[];

  constructor(own: BatchedCounters, ownServer: ServerCounters, ownHist: HitPathHistograms, cache: DnsCache, ownsCache: boolean) {
    this.#own = own;
    this.#ownServer = ownServer;
    this.#ownHist = ownHist;
    this.#cache = cache;
    this.#ownsCache = ownsCache;
    this.#sums = {
      server: new Counters(SERVER_COUNTERS), cache: new Counters(CACHE_COUNTERS), io: new Counters(BATCHED_COUNTERS), hist: hitPathHistograms(), queueWait: new TypedHistogram(QUEUE_WAIT),
    };
    this.#dead = [];
  }

  /** A worker died (not closed): its block joins the dead ones, gauges zeroed. */
  died(c: WorkerCounters): void {
    this.#dead.push(zeroGauges(c));
  }

  /** `workers`: every worker's blocks the listener holds (a dead one's among them until its successor replaces it). */
  sum(workers: readonly WorkerCounters[]): BatchedTotals {
    const blocks = [...this.#dead, ...workers.filter((c) => !this.#dead.includes(c))];
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

/** The block with its gauge slots zeroed (a dead worker holds no entries and waits on nothing). */
function zeroGauges(c: WorkerCounters): WorkerCounters {
  for (const block of [c.server, c.cache, c.io] as const) {
    block.schema.defs.forEach((d, i) => {
      if (d.type === 'gauge') block.values[i] = 0;
    });
  }
  return c;
}
