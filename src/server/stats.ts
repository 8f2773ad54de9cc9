/**
 * Counters of the hit path (parse, cache, answer), declared once in the one
 * counter model (stats/counters.ts). CoreDNS names where the meaning is the
 * same, so dashboards built for node-cache keep working.
 */
import { defineCounters, type Counters } from '../stats/counters.js';

export const SERVER_COUNTERS = defineCounters({
  requestsUdp: { name: 'coredns_dns_requests_total', labels: { proto: 'udp' }, help: 'Queries received.' },
  requestsTcp: { name: 'coredns_dns_requests_total', labels: { proto: 'tcp' }, help: 'Queries received.' },
  dropped: { name: 'nodelocal_dropped_total', help: 'Queries dropped unanswered: unreadable header, or a response sent to us.' },
  rcode0: { name: 'coredns_dns_responses_total', labels: { rcode: 'NOERROR' }, help: 'Answers sent, by rcode.' },
  rcode1: { name: 'coredns_dns_responses_total', labels: { rcode: 'FORMERR' }, help: 'Answers sent, by rcode.' },
  rcode2: { name: 'coredns_dns_responses_total', labels: { rcode: 'SERVFAIL' }, help: 'Answers sent, by rcode.' },
  rcode3: { name: 'coredns_dns_responses_total', labels: { rcode: 'NXDOMAIN' }, help: 'Answers sent, by rcode.' },
  rcode4: { name: 'coredns_dns_responses_total', labels: { rcode: 'NOTIMP' }, help: 'Answers sent, by rcode.' },
  rcode5: { name: 'coredns_dns_responses_total', labels: { rcode: 'REFUSED' }, help: 'Answers sent, by rcode.' },
  rcodeOther: { name: 'coredns_dns_responses_total', labels: { rcode: 'other' }, help: 'Answers sent, by rcode.' },
  truncated: { name: 'nodelocal_truncated_total', help: 'Answers sent with TC=1 because they exceed what the client takes.' },
  coalesced: { name: 'nodelocal_coalesced_total', help: 'Misses that joined an identical question already in flight.' },
  misses: { name: 'nodelocal_misses_forwarded_total', help: 'Distinct questions handed to the upstream side (prefetches included).' },
  upstreamMalformed: { name: 'nodelocal_upstream_malformed_total', help: 'Upstream answers that failed validation (not cached; answered stale or SERVFAIL).' },
  scrubbedAnswers: { name: 'nodelocal_bailiwick_scrubbed_answers_total', help: 'Upstream answers that carried records outside the question\'s bailiwick (removed before caching).' },
  scrubbedRecords: { name: 'nodelocal_bailiwick_scrubbed_records_total', help: 'Out-of-bailiwick records removed from upstream answers.' },
  clientLimited: { name: 'nodelocal_client_miss_limited_total', help: 'Misses refused because their client was over --client-miss-rate (answered stale or SERVFAIL).' },
  shed: { name: 'nodelocal_shed_total', help: 'Queries turned away at once because 1,024 clients already waited on their question (answered stale or SERVFAIL).' },
  abortedAtShutdown: { name: 'nodelocal_shutdown_aborted_total', help: 'Queries still waiting at the end of the shutdown grace period, answered stale or SERVFAIL.' },
});
export type ServerCounterName = keyof typeof SERVER_COUNTERS.slot;
export type ServerCounters = Counters<ServerCounterName>;

/** Slot of coredns_dns_responses_total for an rcode: 0-5 have their own, the rest share one. */
export const RCODE_SLOT_BASE = SERVER_COUNTERS.slot.rcode0;
export const RCODE_SLOT_OTHER = SERVER_COUNTERS.slot.rcodeOther;
