/**
 * coredns_forward_request_duration_seconds{to,rcode}: how long an upstream
 * took to answer, from the moment a query was written to it to the moment
 * its matching answer arrived, by the answer's rcode. One set of histograms
 * per upstream server ("IP:port", CoreDNS's `to`), shared by every transport
 * and route that sends to that server, and kept across reloads.
 *
 * Typed histograms (ops/histogram.ts), preallocated for the same five rcode
 * classes as coredns_forward_responses_total: an observation is a table read
 * and a short loop over the bounds, no allocation. Only answers are timed:
 * a timeout or a broken connection has no rcode (CoreDNS does not time them
 * either), and nodelocal_upstream_exchanges_total{result} counts those.
 */
import { Rcode } from '../dns/constants.js';
import { DurationHistogram, TIME_BUCKETS, type HistogramDef } from '../ops/histogram.js';

/** The rcode label values, in the order of ForwardDurations.histograms. */
export const FORWARD_RCODES = ['NOERROR', 'NXDOMAIN', 'SERVFAIL', 'REFUSED', 'OTHER'] as const;
const OTHER = FORWARD_RCODES.length - 1;

/** rcode (0..15) -> index in FORWARD_RCODES. */
const RCODE_INDEX: Uint8Array = (() => {
  const t = new Uint8Array(16).fill(OTHER);
  t[Rcode.NOERROR] = 0;
  t[Rcode.NXDOMAIN] = 1;
  t[Rcode.SERVFAIL] = 2;
  t[Rcode.REFUSED] = 3;
  return t;
})();

export function forwardDurationDef(rcode: (typeof FORWARD_RCODES)[number]): HistogramDef {
  return { name: 'coredns_forward_request_duration_seconds', help: 'Histogram of the time each request took.', bounds: TIME_BUCKETS, labels: { rcode } };
}

export class ForwardDurations {
  /** "IP:port" ("[v6]:port"), the `to` label. */
  readonly to: string;
  /** One per FORWARD_RCODES entry, for the registry. */
  readonly histograms: readonly DurationHistogram[];

  constructor(to: string) {
    this.to = to;
    this.histograms = FORWARD_RCODES.map((r) => new DurationHistogram(forwardDurationDef(r)));
  }

  /** One answer: `rcode` from its header (low 4 bits of byte 3), `ms` from Clock.now() differences. */
  observeMs(rcode: number, ms: number): void {
    this.histograms[RCODE_INDEX[rcode & 0x0f]!]!.observeMs(ms);
  }
}
