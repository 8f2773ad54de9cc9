/**
 * Counters of the hit path (parse, cache, answer), declared once in the one
 * counter model (stats/counters.ts). CoreDNS names where the meaning is the
 * same, so dashboards built for node-cache keep working.
 */
import { defineCounters, type CounterDef, type Counters } from '../stats/counters.js';

/**
 * The query types CoreDNS names in coredns_dns_requests_total{type}
 * (plugin/metrics/vars/monitor.go monitorType); every other type is "other".
 * Bounded on purpose: a client asking for random types must not grow the
 * series set. The index in this list is the type's index in the slot block.
 */
export const REQUEST_TYPES = [
  'A', 'AAAA', 'CNAME', 'DNSKEY', 'DS', 'MX', 'NSEC3', 'NSEC', 'NS', 'PTR', 'RRSIG', 'SOA', 'SRV', 'TXT', 'HTTPS', 'SVCB', 'IXFR', 'AXFR', 'ANY', 'other',
] as const;
type RequestType = (typeof REQUEST_TYPES)[number];

const TYPE_CODES: Readonly<Record<Exclude<RequestType, 'other'>, number>> = {
  A: 1, AAAA: 28, CNAME: 5, DNSKEY: 48, DS: 43, MX: 15, NSEC3: 50, NSEC: 47, NS: 2, PTR: 12, RRSIG: 46, SOA: 6, SRV: 33, TXT: 16, HTTPS: 65, SVCB: 64,
  IXFR: 251, AXFR: 252, ANY: 255,
};

export const REQUEST_TYPE_COUNT = REQUEST_TYPES.length;
const TYPE_OTHER = REQUEST_TYPE_COUNT - 1;

/** qtype (below 256: every named type is) -> index in REQUEST_TYPES; one byte read on the hot path. */
const TYPE_INDEX: Uint8Array = (() => {
  const t = new Uint8Array(256).fill(TYPE_OTHER);
  REQUEST_TYPES.forEach((name, i) => {
    if (name !== 'other') t[TYPE_CODES[name]] = i;
  });
  return t;
})();

export function requestTypeIndex(qtype: number): number {
  return qtype < 256 ? TYPE_INDEX[qtype]! : TYPE_OTHER;
}

/**
 * CoreDNS's family label: "1" IPv4, "2" IPv6; an IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d, what a dual-stack socket reports for an IPv4 client) is
 * IPv4, as Go's To4() makes it. Returns 0 (IPv4) or 1 (IPv6). Reads the
 * address string in place: no allocation.
 */
export function addressFamilyIndex(address: string): number {
  if (address.indexOf(':') < 0) return 0;
  return address.startsWith('::ffff:') && address.indexOf('.') > 0 ? 0 : 1;
}

/**
 * The family index of a client: from `peer.family` when the listener gives
 * it (dgram's RemoteInfo, the batched backend: no address string read or
 * built), else from the address. An IPv6 socket bound to the wildcard "::"
 * reports an IPv4 client through dgram as family 'IPv6' with a
 * ::ffff:a.b.c.d address: counted as family 2 there (the agent listens on
 * specific addresses, where this does not happen).
 */
export function peerFamilyIndex(peer: { readonly address: string; readonly family?: string }): number {
  const f = peer.family;
  if (f === 'IPv4') return 0;
  if (f === 'IPv6') return 1;
  return addressFamilyIndex(peer.address);
}

type Proto = 'udp' | 'tcp';
type Family = '1' | '2';
type RequestKey = `req_${Proto}_${Family}_${RequestType}`;
const REQUESTS_HELP = 'Counter of DNS requests made per zone, protocol and family.';

/**
 * coredns_dns_requests_total{proto,family,type}: one slot per combination,
 * laid out so slot = REQUEST_SLOT_BASE + (transport * 2 + family) * REQUEST_TYPE_COUNT + type
 * (transport: UDP 0, TCP 1, as listener.ts Transport; family: 0 IPv4, 1 IPv6).
 */
function requestDefs(): Record<RequestKey, CounterDef> {
  const out = {} as Record<RequestKey, CounterDef>;
  for (const proto of ['udp', 'tcp'] as const) {
    for (const family of ['1', '2'] as const) {
      for (const type of REQUEST_TYPES) out[`req_${proto}_${family}_${type}`] = { name: 'coredns_dns_requests_total', labels: { proto, family, type }, help: REQUESTS_HELP };
    }
  }
  return out;
}

/**
 * Families the batched workers' own blocks (batched/stats.ts) add series to:
 * one help text for every series, and every series with the same label names
 * (a sum by a label some series lack would mix totals with parts).
 */
export const DROPPED_HELP =
  'Queries dropped unanswered, by reason: invalid_query, an unreadable header, a response sent to us, or (UDP) a source port of 0; with --io batched also oversize_query, a datagram larger than the receive buffer, and stale_query, one that waited past --max-query-age in the kernel.';
export const COALESCED_HELP =
  'Misses that joined an identical question already in flight, by across: none, one the same thread had in flight (the main thread, or one batched worker); workers, one another batched worker had in flight.';

export const SERVER_COUNTERS = defineCounters({
  ...requestDefs(),
  requestsUdp: { name: 'nodelocal_requests_total', labels: { proto: 'udp' }, help: 'Queries received, by transport (coredns_dns_requests_total summed over family and type).' },
  requestsTcp: { name: 'nodelocal_requests_total', labels: { proto: 'tcp' }, help: 'Queries received, by transport (coredns_dns_requests_total summed over family and type).' },
  dropped: { name: 'nodelocal_dropped_total', labels: { reason: 'invalid_query' }, help: DROPPED_HELP },
  rcode0: { name: 'coredns_dns_responses_total', labels: { rcode: 'NOERROR' }, help: 'Answers sent, by rcode.' },
  rcode1: { name: 'coredns_dns_responses_total', labels: { rcode: 'FORMERR' }, help: 'Answers sent, by rcode.' },
  rcode2: { name: 'coredns_dns_responses_total', labels: { rcode: 'SERVFAIL' }, help: 'Answers sent, by rcode.' },
  rcode3: { name: 'coredns_dns_responses_total', labels: { rcode: 'NXDOMAIN' }, help: 'Answers sent, by rcode.' },
  rcode4: { name: 'coredns_dns_responses_total', labels: { rcode: 'NOTIMP' }, help: 'Answers sent, by rcode.' },
  rcode5: { name: 'coredns_dns_responses_total', labels: { rcode: 'REFUSED' }, help: 'Answers sent, by rcode.' },
  rcodeOther: { name: 'coredns_dns_responses_total', labels: { rcode: 'other' }, help: 'Answers sent, by rcode.' },
  truncated: { name: 'nodelocal_truncated_total', help: 'Answers sent with TC=1 because they exceed what the client takes.' },
  coalesced: { name: 'nodelocal_coalesced_total', labels: { across: 'none' }, help: COALESCED_HELP },
  misses: { name: 'nodelocal_misses_forwarded_total', help: 'Distinct questions handed to the upstream side (prefetches included).' },
  upstreamMalformed: { name: 'nodelocal_upstream_malformed_total', help: 'Upstream answers that failed validation (not cached; answered stale or SERVFAIL).' },
  scrubbedAnswers: { name: 'nodelocal_bailiwick_scrubbed_answers_total', help: 'Upstream answers that carried records outside the question\'s bailiwick (removed before caching).' },
  scrubbedRecords: { name: 'nodelocal_bailiwick_scrubbed_records_total', help: 'Out-of-bailiwick records removed from upstream answers.' },
  clientLimited: { name: 'nodelocal_client_miss_limited_total', help: 'Misses refused because their client was over --client-miss-rate (answered stale or SERVFAIL).' },
  shed: { name: 'nodelocal_shed_total', help: 'Queries turned away at once because 1,024 clients, or 64 from their own address, already waited on their question (answered stale or SERVFAIL).' },
  abortedAtShutdown: { name: 'nodelocal_shutdown_aborted_total', help: 'Queries still waiting at the end of the shutdown grace period, answered stale or SERVFAIL.' },
  // The batched workers' series (batched/stats.ts sendErrors) under the same name, labels and help: published as one sum.
  udpSendErrors: { name: 'nodelocal_udp_errors_total', labels: { op: 'send' }, help: 'Errors of the UDP sockets pods query (the batched workers\' and the dgram listener\'s), by operation.' },
});
export type ServerCounterName = keyof typeof SERVER_COUNTERS.slot;
export type ServerCounters = Counters<ServerCounterName>;

/** Slot of coredns_dns_responses_total for an rcode: 0-5 have their own, the rest share one. */
export const RCODE_SLOT_BASE = SERVER_COUNTERS.slot.rcode0;
export const RCODE_SLOT_OTHER = SERVER_COUNTERS.slot.rcodeOther;

/** First slot of coredns_dns_requests_total (see requestDefs for the layout). */
export const REQUEST_SLOT_BASE = SERVER_COUNTERS.slot.req_udp_1_A;
