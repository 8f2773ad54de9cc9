/**
 * What a HitPath (hit-path.ts) is built with: the cache, clock, logger and
 * counters, its limits, and its optional hooks (the histograms, the
 * namespace tagger, the miss gate). Kept apart so the metrics side
 * (histogram.ts, namespace-metrics.ts) reads the hooks' shapes without the
 * hit path's code; hit-path.ts re-exports them.
 */
import type { HitCache } from '../cache/cache-api.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { DurationHistogram, TypedHistogram } from '../ops/histogram.js';
import type { ClientMissLimiter } from './client-limit.js';
import type { MissGate } from './miss-boundary.js';
import type { ServerCounters } from './stats.js';

/**
 * Scrubs one upstream answer and counts it (scrub.ts scrubCounted). Handed to
 * HitPath.connect() by the thread that scrubs, so a batched worker, whose
 * answers come scrubbed, never loads the scrub and dns-packet with it.
 */
export type ScrubAnswer = (answer: Buffer, server: Float64Array) => Buffer;

export interface HitPathOptions {
  /** The main thread's DnsCache, or a batched worker's read-only view of it (cache/reader.ts). */
  readonly cache: HitCache;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly counters: ServerCounters;
  /** Largest UDP answer whatever the client advertises. */
  readonly maxUdpSize: number;
  /** Log one query in this many, fractions kept (1.43: 70%; 0: no query log). A countdown, not a random draw: no cost on the other queries. */
  readonly queryLogEvery?: number;
  /** Per-client limit on new upstream questions (null: off). */
  readonly clientLimit?: ClientMissLimiter | null;
  /** coredns_dns_request_duration_seconds and the size histograms (typed arrays: a few ns an observe). */
  readonly histograms?: HitPathHistograms | null;
  /** Requests by client namespace; null (the default): off, one null check per query. */
  readonly tagger?: ClientTagger | null;
  /** Turns new misses away before any work (null, the default: every miss goes to the sink). */
  readonly gate?: MissGate | null;
  /**
   * The clients waiting on a miss are held, and answered whatever the
   * outcome, by the sink's side (the batched main thread: direct.ts): this
   * hit path keeps only their number, and a Waiter only for a client
   * sampled for the query log (logged here). Off (the default): every
   * waiting client is answered from here.
   */
  readonly remoteWaiters?: boolean;
}

/**
 * Counts a query by who sent it (--metrics-by-namespace: the client pod's
 * namespace). Called once per query with the peer's address, before parsing;
 * must be a lookup and a typed-array add, nothing more.
 */
export interface ClientTagger {
  tag(address: string): void;
}

/** Indexed by Transport (UDP 0, TCP 1). */
export interface HitPathHistograms {
  readonly duration: DurationHistogram;
  readonly requestSize: readonly [TypedHistogram, TypedHistogram];
  readonly responseSize: readonly [TypedHistogram, TypedHistogram];
}
