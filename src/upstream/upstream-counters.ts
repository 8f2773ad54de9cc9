/**
 * Counter slots both upstream transports declare the same way, spread into
 * each transport's own schema so that one metric family means one thing (and
 * has one help text) whichever transport bumps it: queries sent, answers by
 * rcode and local rejects under CoreDNS forward's names; how exchanges end and
 * which answers get dropped under ours.
 */
import { Rcode } from '../dns/constants.js';
import type { CounterDef } from '../stats/counters.js';

/** One help for the agent-wide cap's series (server/resolver.ts, to="all") and each upstream's own. */
export const MAX_CONCURRENT_REJECTS_HELP =
  'Questions refused at once, never sent, because the queries in flight were at a cap: to="all", the agent-wide --max-concurrent; else that upstream\'s own limit. Answered from the view, stale, or SERVFAIL.';

const RESPONSES = 'coredns_forward_responses_total';
const RESPONSES_HELP = 'Answers received from an upstream that matched their query, by rcode.';
const EXCHANGES = 'nodelocal_upstream_exchanges_total';
const EXCHANGES_HELP = 'Exchanges (one per cache miss sent to this upstream) by how they ended.';

export const upstreamCounterDefs = {
  sent: { name: 'coredns_forward_requests_total', help: 'Queries written to an upstream server (a retry over TCP after TC=1 is one more).' },
  responsesNoError: { name: RESPONSES, help: RESPONSES_HELP, labels: { rcode: 'NOERROR' } },
  responsesNxDomain: { name: RESPONSES, help: RESPONSES_HELP, labels: { rcode: 'NXDOMAIN' } },
  responsesServfail: { name: RESPONSES, help: RESPONSES_HELP, labels: { rcode: 'SERVFAIL' } },
  responsesRefused: { name: RESPONSES, help: RESPONSES_HELP, labels: { rcode: 'REFUSED' } },
  // FORMERR, NOTIMP and the rare rest: kept apart from the four that dashboards watch, without a slot each.
  responsesOther: { name: RESPONSES, help: RESPONSES_HELP, labels: { rcode: 'OTHER' } },
  // Exchanges that completed; 'overloaded' ones were never sent and 'closed' ones are shutdown noise.
  answered: { name: EXCHANGES, help: EXCHANGES_HELP, labels: { result: 'answer' } },
  timeouts: { name: EXCHANGES, help: EXCHANGES_HELP, labels: { result: 'timeout' } },
  networkErrors: { name: EXCHANGES, help: EXCHANGES_HELP, labels: { result: 'network' } },
  overloaded: {
    name: 'coredns_forward_max_concurrent_rejects_total',
    help: MAX_CONCURRENT_REJECTS_HELP,
  },
} as const satisfies Record<string, CounterDef>;

type ResponseCounter = 'responsesNoError' | 'responsesNxDomain' | 'responsesServfail' | 'responsesRefused' | 'responsesOther';

/** Answers dropped rather than passed on; each transport labels its own reasons. */
export const ignoredAnswersFamily = {
  name: 'nodelocal_upstream_ignored_answers_total',
  help: 'Answers received and dropped: wrong source, id or question (spoofed or mismatched), or for a query no longer in flight (late).',
} as const;

/**
 * rcode (0..15) -> slot, worked out once per schema so the hot path is one
 * table read: `values[table[rcode]]++`.
 */
export function rcodeSlots(slot: Readonly<Record<ResponseCounter, number>>): Uint8Array {
  const table = new Uint8Array(16).fill(slot.responsesOther);
  table[Rcode.NOERROR] = slot.responsesNoError;
  table[Rcode.NXDOMAIN] = slot.responsesNxDomain;
  table[Rcode.SERVFAIL] = slot.responsesServfail;
  table[Rcode.REFUSED] = slot.responsesRefused;
  return table;
}
