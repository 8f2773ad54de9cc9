/**
 * Cache counters in the one counter model (stats/counters.ts). Names follow
 * CoreDNS's cache plugin where the meaning is the same.
 */
import { defineCounters, type Counters } from '../stats/counters.js';

/** coredns_cache_entries and nodelocal_cache_bytes: published by the main thread's cache and by each batched worker's, under one help text. */
export const CACHE_ENTRIES_HELP = 'The number of elements in the cache.';
export const CACHE_BYTES_HELP = 'Bytes the cache charges against --cache-memory; the hash table, sized by the entry capacities, is not in it.';

export const CACHE_COUNTERS = defineCounters({
  hitPositive: { name: 'coredns_cache_hits_total', labels: { type: 'success' }, help: 'Queries answered from the cache.' },
  hitNegative: { name: 'coredns_cache_hits_total', labels: { type: 'denial' }, help: 'Queries answered from the cache.' },
  miss: { name: 'coredns_cache_misses_total', help: 'Queries the cache could not answer.' },
  prefetch: { name: 'coredns_cache_prefetch_total', help: 'Background refreshes of popular entries.' },
  evictPositive: { name: 'coredns_cache_evictions_total', labels: { type: 'success' }, help: 'Entries evicted to make room (count or byte budget).' },
  evictNegative: { name: 'coredns_cache_evictions_total', labels: { type: 'denial' }, help: 'Entries evicted to make room (count or byte budget).' },
  insertPositive: { name: 'nodelocal_cache_inserts_total', labels: { type: 'success' }, help: 'Answers stored.' },
  insertNegative: { name: 'nodelocal_cache_inserts_total', labels: { type: 'denial' }, help: 'Answers stored.' },
  uncacheable: { name: 'nodelocal_cache_uncacheable_total', help: 'Answers passed through without storing (rcode, TC, zero TTL, no SOA, too big).' },
  stale: { name: 'coredns_cache_served_stale_total', help: 'Expired answers given because the upstream failed, or because the query was shed or its client was over its miss rate (RFC 8767).' },
  tableRebuilds: {
    name: 'nodelocal_cache_table_rebuilds_total',
    help: 'Rebuilds of the cache\'s hash table in place (its deleted cells piled up): each one a window in which every batched worker\'s read waits or goes to the main thread.',
  },
  readGaveUp: {
    name: 'nodelocal_cache_reads_given_up_total',
    help: 'Cache reads by a batched worker that found the store mid-change on every attempt (its writer, the main thread, busy or preempted inside a change): each went to the main thread, which answers it from the same store.',
  },
});
export type CacheCounterName = keyof typeof CACHE_COUNTERS.slot;
export type CacheCounters = Counters<CacheCounterName>;
