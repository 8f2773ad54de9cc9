/**
 * Counters of the batched UDP backend's I/O, one block per worker in shared
 * memory (the worker bumps, the main thread publishes). The worker's hit
 * path and cache count in their own blocks (server/stats.ts, cache/stats.ts),
 * placed in the same shared buffer.
 */
import { CACHE_BYTES_HELP, CACHE_COUNTERS, CACHE_ENTRIES_HELP, type CacheCounters } from '../../cache/stats.js';
import { HIT_PATH_HISTOGRAM_BYTES, TypedHistogram, hitPathHistograms, type HistogramDef } from '../../ops/histogram.js';
import type { HitPathHistograms } from '../hit-path.js';
import { Counters, defineCounters, sumArraysInto } from '../../stats/counters.js';
import { COALESCED_HELP, DROPPED_HELP, SERVER_COUNTERS, type ServerCounters } from '../stats.js';

/** Two slots of the worker's block, each with one writer: to: main, the worker (loop-report.ts); to: worker, the main thread (worker-link.ts). */
const RING_HELP = 'Turns whose misses (to main) or completions (to worker) went by post instead of the ring between a batched worker and the main thread (packed-ring.ts): they did not fit, or an earlier turn that did not was still unread (order is kept); the reading thread was behind.';

export const BATCHED_COUNTERS = defineCounters({
  batches: { name: 'nodelocal_udp_batches_total', help: 'recvmmsg calls that returned datagrams (datagrams / batches = mean batch size).' },
  datagrams: { name: 'nodelocal_udp_batched_datagrams_total', help: 'Datagrams received by the batched UDP workers.' },
  sends: { name: 'nodelocal_udp_sendmmsg_total', help: 'sendmmsg calls.' },
  wakeups: { name: 'nodelocal_udp_worker_wakeups_total', help: 'Times a worker woke from poll (idle to busy).' },
  oversize: { name: 'nodelocal_dropped_total', labels: { reason: 'oversize_query' }, help: DROPPED_HELP },
  stale: { name: 'nodelocal_dropped_total', labels: { reason: 'stale_query' }, help: DROPPED_HELP },
  recvErrors: { name: 'nodelocal_udp_errors_total', labels: { op: 'recv' }, help: 'Errors of the UDP sockets pods query (the batched workers\' and the dgram listener\'s), by operation.' },
  sendErrors: { name: 'nodelocal_udp_errors_total', labels: { op: 'send' }, help: 'Errors of the UDP sockets pods query (the batched workers\' and the dgram listener\'s), by operation.' },
  overloaded: {
    name: 'nodelocal_worker_misses_refused_total',
    labels: { reason: 'worker_limit' },
    help: 'Misses a batched worker answered itself at once (stale, else SERVFAIL), by reason: worker_limit, its limit already waited on the main thread; upstream_busy, the main thread was at --max-concurrent, or had refused one of that worker\'s misses there in the last 2 s and the worker already had its share of the cap waiting.',
  },
  shedBusy: {
    name: 'nodelocal_worker_misses_refused_total',
    labels: { reason: 'upstream_busy' },
    help: 'Misses a batched worker answered itself at once (stale, else SERVFAIL), by reason: worker_limit, its limit already waited on the main thread; upstream_busy, the main thread was at --max-concurrent, or had refused one of that worker\'s misses there in the last 2 s and the worker already had its share of the cap waiting.',
  },
  ringToMain: { name: 'nodelocal_udp_worker_ring_overflows_total', labels: { to: 'main' }, help: RING_HELP },
  ringToWorker: { name: 'nodelocal_udp_worker_ring_overflows_total', labels: { to: 'worker' }, help: RING_HELP },
  restarts: { name: 'nodelocal_udp_worker_restarts_total', help: 'Batched UDP workers that died and were started again (counted once the replacement was ready).' },
  idleGcs: { name: 'nodelocal_udp_worker_idle_gcs_total', help: 'Full garbage collections a batched worker ran once quiet after a burst (its event loop never runs V8\'s own).' },
  sharedHits: {
    name: 'nodelocal_shared_cache_hits_total',
    help: 'Worker cache misses answered from the cache on the main thread (the entry arrived after the worker looked, or its read found the store changing), without an upstream query.',
  },
  directAnswers: {
    name: 'nodelocal_udp_direct_answers_total',
    help: 'Answers to batched workers\' misses that the main thread sent itself on the worker\'s socket (the worker releases its waiters later, without a wake-up).',
  },
  crossWorkerCoalesced: { name: 'nodelocal_coalesced_total', labels: { across: 'workers' }, help: COALESCED_HELP },
  workersLive: {
    name: 'nodelocal_udp_workers_live',
    type: 'gauge',
    help: 'Batched UDP workers in their loop, taking queries: fewer than --workers while one is being restarted, 0 when none serves UDP.',
  },
  inflight: { name: 'nodelocal_udp_worker_inflight', type: 'gauge', help: 'Questions the batched UDP workers have waiting on the upstream side.' },
  entriesPositive: { name: 'coredns_cache_entries', labels: { type: 'success' }, type: 'gauge', help: CACHE_ENTRIES_HELP },
  entriesNegative: { name: 'coredns_cache_entries', labels: { type: 'denial' }, type: 'gauge', help: CACHE_ENTRIES_HELP },
  cacheBytes: { name: 'nodelocal_cache_bytes', type: 'gauge', help: CACHE_BYTES_HELP },
});
export type BatchedCounterName = keyof typeof BATCHED_COUNTERS.slot;
export type BatchedCounters = Counters<BatchedCounterName>;

/**
 * How long a query waited in the kernel before its worker took it: from the
 * datagram's receive timestamp (SO_TIMESTAMPNS, taken as the sender's packet
 * entered the stack, so on loopback about its send time) to the recvmmsg
 * that returned it. The socket queue, the softirq that fills it and the
 * worker's wake-up, everything but the worker's own work on the query. From
 * 10 us (a worker awake and waiting) to 10 s (a stalled one: past
 * --max-query-age the query is dropped, and still counted here).
 */
export const QUEUE_WAIT: HistogramDef = {
  name: 'nodelocal_udp_queue_wait_seconds',
  help: 'Time a query waited in the kernel (socket queue) before a batched UDP worker received it, from its kernel receive timestamp.',
  bounds: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
};

/**
 * A worker's three counter blocks, its hit path's histograms (request
 * duration, request and response sizes) and its queue wait, laid out one
 * after the other in one buffer shared with the main thread, which adds them
 * up at scrape time (the hit path's into its own: with the batched backend
 * the workers answer nearly every UDP query, so without theirs
 * coredns_dns_request_duration_seconds would show only TCP and the main
 * thread's share).
 */
export interface WorkerCounters {
  readonly server: ServerCounters;
  readonly cache: CacheCounters;
  readonly io: BatchedCounters;
  readonly hist: HitPathHistograms;
  readonly queueWait: TypedHistogram;
}

const COUNTER_BYTES = (SERVER_COUNTERS.size + CACHE_COUNTERS.size + BATCHED_COUNTERS.size) * 8;
export const WORKER_STATS_BYTES = COUNTER_BYTES + HIT_PATH_HISTOGRAM_BYTES + TypedHistogram.byteLength(QUEUE_WAIT.bounds.length);

export function workerCounters(buffer: ArrayBufferLike): WorkerCounters {
  return {
    server: new Counters(SERVER_COUNTERS, buffer, 0),
    cache: new Counters(CACHE_COUNTERS, buffer, SERVER_COUNTERS.size * 8),
    io: new Counters(BATCHED_COUNTERS, buffer, (SERVER_COUNTERS.size + CACHE_COUNTERS.size) * 8),
    hist: hitPathHistograms(buffer, COUNTER_BYTES),
    queueWait: new TypedHistogram(QUEUE_WAIT, buffer, COUNTER_BYTES + HIT_PATH_HISTOGRAM_BYTES),
  };
}

/** Adds every worker's block into `into` (zeroed first): what a scrape publishes. */
export function sumInto<K extends string>(into: Counters<K>, blocks: readonly Counters<K>[]): Counters<K> {
  sumArraysInto(into.values, blocks.map((b) => b.values));
  return into;
}
