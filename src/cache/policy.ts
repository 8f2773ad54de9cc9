/**
 * What may be cached, and for how long: decided once, at insert (dnsdist's
 * rule: all the policy at insert, lookup stays short). Pure.
 */
import { QType, Rcode } from '../dns/constants.js';
import type { AnswerScan } from '../dns/answer.js';

export interface TtlCaps {
  /** Longest a positive answer is kept, seconds (node-cache's `success` 30). */
  readonly successTtl: number;
  /** Longest a negative answer is kept, seconds (node-cache's `denial` 5). */
  readonly denialTtl: number;
}

export type CachePlan =
  | { readonly kind: 'positive' | 'negative'; readonly ttl: number }
  | { readonly kind: 'none'; readonly reason: 'rcode' | 'truncated' | 'zero-ttl' | 'no-soa' };

/** `answer` is the message `scan` was made of: its record types tell an answer from a CNAME chain ending in NODATA. */
export function planCaching(scan: AnswerScan, caps: TtlCaps, answer: Uint8Array): CachePlan {
  // A truncated answer is incomplete by definition; caching it would pin TC=1 on every client.
  if (scan.truncated) return { kind: 'none', reason: 'truncated' };
  if (scan.rcode === Rcode.NOERROR && scan.ancount > 0 && answersQuestion(answer, scan)) {
    const ttl = Math.min(scan.minTtl, caps.successTtl);
    return ttl > 0 ? { kind: 'positive', ttl } : { kind: 'none', reason: 'zero-ttl' };
  }
  if (scan.rcode === Rcode.NXDOMAIN || scan.rcode === Rcode.NOERROR) {
    // RFC 2308 5: no SOA, no negative caching. The TTL is min(SOA TTL, MINIMUM),
    // and no longer than any other record it came with (a CNAME before an NXDOMAIN or a NODATA).
    if (scan.negativeTtl < 0) return { kind: 'none', reason: 'no-soa' };
    const ttl = Math.min(scan.negativeTtl, scan.minTtl, caps.denialTtl);
    return ttl > 0 ? { kind: 'negative', ttl } : { kind: 'none', reason: 'zero-ttl' };
  }
  // SERVFAIL, REFUSED, NOTIMP...: never cached. Coalescing already stops a
  // burst of identical queries from hammering a failing upstream.
  return { kind: 'none', reason: 'rcode' };
}

/**
 * Whether an upstream answer with this rcode says anything about the name
 * (RFC 8767 4): only NOERROR and NXDOMAIN do. Any other (SERVFAIL, REFUSED,
 * NOTIMP, FORMERR...) is a failure to refresh it: a client gets the stale
 * entry when there is one.
 */
export function refreshesName(rcode: number): boolean {
  return rcode === Rcode.NOERROR || rcode === Rcode.NXDOMAIN;
}

/**
 * Whether the answer section holds a record of the question's type. A
 * NOERROR answer with only the CNAME/DNAME chain there is a NODATA for the
 * chain's end (RFC 2308 2.2): what a client caches from it is the absence,
 * which lives as long as the SOA says, not as long as the CNAME.
 */
function answersQuestion(answer: Uint8Array, scan: AnswerScan): boolean {
  const qtype = u16(answer, scan.questionEnd - 4);
  if (qtype === QType.ANY) return true;
  // The answer section has no OPT (scanAnswer refuses one there), so its records are the first ancount TTL offsets.
  for (let i = 0; i < scan.ancount; i++) if (u16(answer, scan.ttlOffsets[i]! - 4) === qtype) return true;
  return false;
}

function u16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}
