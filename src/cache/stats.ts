/**
 * Cache counters as slots of one typed array: the hot path adds to a slot,
 * metrics publishes them at scrape time (a labelled prom-client inc() costs
 * about 1 us, design 7). Names follow CoreDNS's cache plugin where the
 * meaning is the same.
 */
export const CacheCounter = {
  /** coredns_cache_hits_total{type="success"} */
  HIT_POSITIVE: 0,
  /** coredns_cache_hits_total{type="denial"} */
  HIT_NEGATIVE: 1,
  /** coredns_cache_misses_total */
  MISS: 2,
  /** coredns_cache_prefetch_total */
  PREFETCH: 3,
  /** coredns_cache_evictions_total{type="success"} */
  EVICT_POSITIVE: 4,
  /** coredns_cache_evictions_total{type="denial"} */
  EVICT_NEGATIVE: 5,
  /** nodelocal_cache_inserts_total{type="success"} */
  INSERT_POSITIVE: 6,
  /** nodelocal_cache_inserts_total{type="denial"} */
  INSERT_NEGATIVE: 7,
  /** nodelocal_cache_uncacheable_total: answers passed through without storing */
  UNCACHEABLE: 8,
  /** coredns_cache_served_stale_total: expired answers given because the upstream failed (RFC 8767) */
  STALE: 9,
} as const;
export const CACHE_COUNTERS = 10;

export function newCacheCounters(): Float64Array {
  return new Float64Array(CACHE_COUNTERS);
}
