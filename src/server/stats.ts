/**
 * Resolver counters, one typed-array slot each, bumped on the hot path and
 * published at scrape time. Slot comments name the CoreDNS-compatible metric.
 */
export const ServerCounter = {
  /** coredns_dns_requests_total{proto="udp"} */
  REQUESTS_UDP: 0,
  /** coredns_dns_requests_total{proto="tcp"} */
  REQUESTS_TCP: 1,
  /** nodelocal_dropped_total: unreadable header or a response sent to us */
  DROPPED: 2,
  /** coredns_dns_responses_total{rcode=...}: slots 3..8 are rcodes 0..5, slot 9 any other */
  RCODE_BASE: 3,
  RCODE_OTHER: 9,
  /** nodelocal_truncated_total: answers sent TC=1 because they exceed the client's size */
  TRUNCATED: 10,
  /** nodelocal_coalesced_total: misses that joined a query already in flight */
  COALESCED: 11,
  /** coredns_forward_requests_total */
  FORWARDED: 12,
  /** nodelocal_upstream_failures_total{reason="timeout"|"network"|"overloaded"|"closed"|"malformed"} */
  UPSTREAM_TIMEOUT: 13,
  UPSTREAM_NETWORK: 14,
  UPSTREAM_OVERLOADED: 15,
  UPSTREAM_CLOSED: 16,
  UPSTREAM_MALFORMED: 17,
} as const;
export const SERVER_COUNTERS = 18;

export function newServerCounters(): Float64Array {
  return new Float64Array(SERVER_COUNTERS);
}
