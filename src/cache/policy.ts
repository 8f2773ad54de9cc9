/**
 * What may be cached, and for how long: decided once, at insert (dnsdist's
 * rule: all the policy at insert, lookup stays short). Pure.
 */
import { Rcode } from '../dns/constants.js';
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

export function planCaching(scan: AnswerScan, caps: TtlCaps): CachePlan {
  // A truncated answer is incomplete by definition; caching it would pin TC=1 on every client.
  if (scan.truncated) return { kind: 'none', reason: 'truncated' };
  if (scan.rcode === Rcode.NOERROR && scan.ancount > 0) {
    const ttl = Math.min(scan.minTtl, caps.successTtl);
    return ttl > 0 ? { kind: 'positive', ttl } : { kind: 'none', reason: 'zero-ttl' };
  }
  if (scan.rcode === Rcode.NXDOMAIN || scan.rcode === Rcode.NOERROR) {
    // RFC 2308 5: no SOA, no negative caching. The TTL is min(SOA TTL, MINIMUM),
    // and no longer than any other record it came with (a CNAME before an NXDOMAIN).
    if (scan.negativeTtl < 0) return { kind: 'none', reason: 'no-soa' };
    const ttl = Math.min(scan.negativeTtl, scan.minTtl, caps.denialTtl);
    return ttl > 0 ? { kind: 'negative', ttl } : { kind: 'none', reason: 'zero-ttl' };
  }
  // SERVFAIL, REFUSED, NOTIMP...: never cached. Coalescing already stops a
  // burst of identical queries from hammering a failing upstream.
  return { kind: 'none', reason: 'rcode' };
}
