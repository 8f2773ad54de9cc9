/**
 * What the batched UDP backend (listener.ts) is configured with: its
 * options, the batch and in-flight defaults, and each worker's share of the
 * per-client miss limit. Kept apart so listener.ts reads as what it does
 * with its workers, and this file as what it was given.
 */
import type { DnsCache, CacheOptions } from '../../cache/cache.js';
import type { Clock } from '../../clock.js';
import type { Logger } from '../../log.js';
import type { UdpBatchSys } from '../../sys/udp-batch.js';
import type { ServerAddress } from '../../upstream/types.js';
import type { CachePolicy, WorkerSettings } from './protocol.js';

/**
 * Datagrams per recvmmsg and answers per sendmmsg. 64 amortises the two
 * calls to well under the per-packet kernel cost; more only grows the
 * latency of the batch's last answer.
 */
export const DEFAULT_BATCH = 64;
/**
 * Questions one worker may have waiting on the main thread. About twice
 * what the upstream side itself admits (2 x 1000 on the cluster pool, 1000
 * per host resolver), so in normal operation the upstream side's own limits
 * decide; this only bounds memory when the main thread falls behind.
 */
export const DEFAULT_MAX_INFLIGHT = 4096;

export interface BatchedUdpOptions {
  readonly listen: readonly ServerAddress[];
  readonly workers: number;
  /** The cache as configured (--cache-size, --cache-memory...): the policy the workers read with, and the store's size when `store` is not given. */
  readonly cache: CacheOptions;
  /**
   * The main thread's cache, built `shared` (the agent's, which its TCP hit
   * path uses too, and whose gauges and counters the agent publishes). Not
   * given: the listener makes its own and publishes it in totals().
   */
  readonly store?: DnsCache;
  readonly maxUdpSize: number;
  readonly queryLogEvery: number;
  /** --client-miss-rate and --client-miss-burst for the whole agent (0: off); each worker gets its share (workerMissLimit). */
  readonly clientMissRate?: number;
  readonly clientMissBurst?: number;
  /** The most questions one client may have in flight under the limit, agent-wide (client-limit.ts clientInflightCap); default none. */
  readonly clientMissInflight?: number;
  readonly logger: Logger;
  /** The libc binding, from probeBatchedIo(). */
  readonly sys: UdpBatchSys;
  readonly batch?: number;
  readonly maxInflight?: number;
  /** A worker drops a query that waited longer than this in the kernel (0: never); default config.ts DEFAULTS. */
  readonly maxQueryAgeMs?: number;
  /** The exchange's clock, for its lookups and inserts (tests). */
  readonly clock?: Clock;
  /** The main thread answers the workers' misses itself (direct.ts); default on. Off: every answer goes back through the worker (tests, comparisons). */
  readonly directAnswers?: boolean;
  /** Zones the main thread answers from its cluster view when the upstream side is at its limit (Routing.localZones): workers never shed those (shed-gate.ts). Default none. */
  readonly localZones?: readonly string[];
  /**
   * A worker's idle sleep in poll (default 1 s): only a safety net, since the main thread wakes it for anything it
   * must act on. Tests lengthen it, so that a missing wake-up shows as a hang instead of a second's delay.
   */
  readonly idlePollMs?: number;
  /** Bytes of each ring between a worker and this thread (packed-ring.ts RING_BYTES by default): tests shrink it so that turns overflow it. */
  readonly ringBytes?: number;
}

/**
 * A worker's part of the per-client miss limit. The kernel spreads a
 * client's queries over the workers by source address and port, and libc
 * resolvers use a new source port per lookup, so each worker sees about
 * 1/N of a client's misses: a 1/N share keeps the agent-wide limit where
 * --client-miss-rate puts it. (A client that sends everything from one
 * port lands on one worker and gets 1/N: stricter.) The burst is the one
 * share that can be looser: a bucket admits nothing below one whole token,
 * so each worker gets at least 1, and with --client-miss-burst below N the
 * agent-wide burst is N. So does the cap on a client's questions in flight
 * (a worker counts those it opened), at least one each.
 */
export function workerMissLimit(
  rate: number, burst: number, inflight: number, workers: number,
): { clientMissRate: number; clientMissBurst: number; clientMissInflight: number } {
  if (rate <= 0) return { clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Number.POSITIVE_INFINITY };
  return { clientMissRate: rate / workers, clientMissBurst: Math.max(1, burst / workers), clientMissInflight: Math.max(1, Math.floor(inflight / workers)) };
}

/** What a reload may change of the workers' settings (BatchedUdpListener.configure()). */
export type SettingsUpdate = Pick<BatchedUdpOptions, 'maxUdpSize' | 'queryLogEvery' | 'clientMissRate' | 'clientMissBurst' | 'clientMissInflight' | 'localZones'> & {
  readonly cache: CachePolicy;
};

/** Every worker's settings for `o` with `workers` of them: the cache policy, limits and log share (at start, and at each reload). */
export function workerSettings(o: SettingsUpdate, workers: number): WorkerSettings {
  const c = o.cache;
  return {
    cache: { successTtl: c.successTtl, denialTtl: c.denialTtl, minHits: c.minHits, percent: c.percent, staleMs: c.staleMs },
    maxUdpSize: o.maxUdpSize,
    queryLogEvery: o.queryLogEvery,
    localZones: o.localZones ?? [],
    ...workerMissLimit(o.clientMissRate ?? 0, o.clientMissBurst ?? 1, o.clientMissInflight ?? Number.POSITIVE_INFINITY, workers),
  };
}
