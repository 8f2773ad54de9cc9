/**
 * What DirectAnswers (direct.ts) answers with, and how it serves one client:
 * the limits and fallbacks the worker's hit path applies, on the main thread.
 */
import type { CacheEntry } from '../../cache/entry.js';
import type { TtlCaps } from '../../cache/policy.js';
import { STALE_ANSWER_TTL } from '../../cache/cache-api.js';
import { DEFAULT_EDNS_SIZE, errorResponse } from '../../dns/build.js';
import { CLASSIC_UDP_LIMIT, Rcode } from '../../dns/constants.js';
import type { Query } from '../../dns/query.js';
import type { Logger } from '../../log.js';
import { MAX_UDP_PAYLOAD_IPV4 } from '../answer-out.js';
import type { HitPathHistograms } from '../hit-path.js';
import type { ServerCounters } from '../stats.js';
import type { BatchedCounters } from './stats.js';

/** What the main thread applies as the worker would: its TTL caps and largest UDP answer (the listener's current settings). */
export interface DirectPolicy {
  readonly cache: TtlCaps;
  readonly maxUdpSize: number;
}

/** What DirectAnswers answers with, besides the worker's sockets. */
export interface DirectDeps {
  readonly policy: () => DirectPolicy;
  readonly counters: BatchedCounters;
  readonly server: ServerCounters;
  readonly hist: HitPathHistograms;
  /** The clock the one cache ages by (ms). */
  readonly now: () => number;
  /** The one cache's expired entry for `key` within the stale window, counted as served `served` times (DnsCache.stale). */
  readonly stale: (key: string, now: number, served: number) => CacheEntry | undefined;
  /** The one cache's fresh entry for `key` (DnsCache.lookup): a late client of an exited worker is answered from it. */
  readonly lookup: (key: string, now: number) => CacheEntry | undefined;
  /** Told of an upstream answer that fails validation, as the hit path warns of one. */
  readonly logger: Logger;
  /** False once the listener stops (pause, close): no successor is started, so an orphan's answer with no socket is given up at once. */
  readonly serving?: () => boolean;
}

/** The client's family is not at hand here: past 65,507 bytes (one IPv4 datagram) the answer is cut to fit either. */
export function answerLimit(q: Query, maxUdpSize: number): number {
  return Math.min(!q.edns ? CLASSIC_UDP_LIMIT : q.udpSize < maxUdpSize ? q.udpSize : maxUdpSize, MAX_UDP_PAYLOAD_IPV4);
}

/** One client's answer: from the fresh answer, else the stale entry, else SERVFAIL. */
export function serveOne(q: Query, fresh: CacheEntry | null, stale: CacheEntry | undefined, limit: number): Buffer {
  if (fresh !== null) return fresh.serve(q, 0, limit, DEFAULT_EDNS_SIZE);
  return stale !== undefined ? stale.serveStale(q, STALE_ANSWER_TTL, limit, DEFAULT_EDNS_SIZE) : errorResponse(q, Rcode.SERVFAIL);
}

/** A client's answer from the one cache as the hit path gives it: fresh, else stale, else SERVFAIL (may throw, as serving does). */
export function serveFromCache(q: Query, deps: DirectDeps): Buffer {
  const now = deps.now();
  const key = q.key;
  const limit = answerLimit(q, deps.policy().maxUdpSize);
  const entry = deps.lookup(key, now);
  return entry !== undefined ? entry.serve(q, now, limit, DEFAULT_EDNS_SIZE) : serveOne(q, null, deps.stale(key, now, 1), limit);
}
