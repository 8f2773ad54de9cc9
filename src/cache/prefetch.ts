/**
 * Prefetch: a popular entry is refreshed in the background shortly before it
 * expires, so names that are asked for all the time never miss. The rule is
 * CoreDNS's cache `prefetch` in spirit: popular = at least `minHits` hits in
 * the entry's life; "shortly before" = the last `percent` of its TTL, at
 * least one second (a 30 s entry refreshes in its last 3 s).
 */
export interface PrefetchOptions {
  /** Hits an entry needs before it is worth refreshing; 0 turns prefetch off. */
  readonly minHits: number;
  /** Share of the TTL, at the end of it, in which a hit triggers the refresh (1-99). */
  readonly percent: number;
}

/** Clock ms from which a hit may trigger a refresh; Infinity when it never should. */
export function prefetchStart(storedAt: number, ttlSec: number, opts: PrefetchOptions): number {
  // Below 2 s there is no room to refresh before expiry and still have saved anything.
  if (opts.minHits <= 0 || ttlSec < 2) return Number.POSITIVE_INFINITY;
  const windowMs = Math.max(1000, (ttlSec * 1000 * opts.percent) / 100);
  return storedAt + ttlSec * 1000 - windowMs;
}
