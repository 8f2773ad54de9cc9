/**
 * A saved record back into the cache (a warm restart: snapshot*.ts, then
 * DnsCache.restore). A record goes through today's checks again, as an
 * upstream answer does before it is stored: its bytes must scan as a
 * cacheable answer to its key with nothing the bailiwick scrub would remove,
 * and a cap lowered since then shortens its life. Pure: the record, the time and
 * the policy in, an entry (or why not) out.
 */
import { scanAnswer } from '../dns/answer.js';
import { scrubOutOfBailiwick } from '../dns/bailiwick.js';
import { HEADER_LEN } from '../dns/constants.js';
import type { CachePolicyOptions } from './cache-api.js';
import { AnswerCopy, type CacheRecord } from './entry.js';
import { planCaching } from './policy.js';
import { prefetchStart } from './prefetch.js';

/** What DnsCache.restore did with the records it was given. */
export interface RestoreCounts {
  /** Entries now in the cache (all of them, when it started empty). */
  restored: number;
  /** Past their stale window by now. */
  expired: number;
  /** Not an answer today's policy caches the same way, not the answer to its key, or holding what the bailiwick scrub removes. */
  invalid: number;
  /** The key was already cached: a live answer is fresher than a restored one. */
  present: number;
  /** Did not fit the capacities or the byte budget (the least recent give way). */
  noRoom: number;
}

/**
 * Whether `key` (dns/query.ts: lower-cased wire name, type, class, one flags
 * byte) is the key of the question in `wire`. A restored entry under the
 * wrong key would answer one name with another's records.
 */
function keyMatchesQuestion(key: string, wire: Buffer, questionEnd: number): boolean {
  const nameEnd = questionEnd - 4;
  // The flags byte holds only KEY_DO | KEY_CD.
  if (key.length !== questionEnd - HEADER_LEN + 1 || key.charCodeAt(key.length - 1) > 3) return false;
  for (let i = HEADER_LEN; i < questionEnd; i++) {
    const c = wire[i]!;
    const want = i < nameEnd && c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
    if (key.charCodeAt(i - HEADER_LEN) !== want) return false;
  }
  return true;
}

/**
 * The entry `r` becomes when put back at `now`, stored `r.ageMs` before it
 * (so hits count its TTLs down from where they were and it expires when it
 * would have); 'invalid' when it is not an answer today's policy caches the
 * same way, 'expired' when it is past its stale window by now.
 */
export function reviveRecord(r: CacheRecord, now: number, opts: CachePolicyOptions): AnswerCopy | 'invalid' | 'expired' {
  const scan = scanAnswer(r.wire);
  if (scan === undefined || scan.optStart >= 0 || scan.end !== r.wire.length || !keyMatchesQuestion(r.key, r.wire, scan.questionEnd)) {
    return 'invalid';
  }
  // Every answer was scrubbed before it was stored; one written by an agent of another version may hold what today's
  // scrub removes (an intruder an older scrub missed): the whole record goes rather than its intruder being served.
  if (scrubOutOfBailiwick(r.wire) !== null) return 'invalid';
  const plan = planCaching(scan, opts, r.wire);
  // Its TTLs were capped to its life at insert, so the plan gives that life
  // back, or less under a cap lowered since; more would mean bytes and life disagree.
  if (plan.kind === 'none' || (plan.kind === 'negative') !== r.negative || plan.ttl > r.ttlSec) return 'invalid';
  const ageMs = r.ageMs > 0 ? r.ageMs : 0;
  if (ageMs >= plan.ttl * 1000 + opts.staleMs) return 'expired';
  const storedAt = now - ageMs;
  // fromAnswer copies the bytes (the caller's buffer may be a whole file) and re-caps the TTLs.
  const entry = AnswerCopy.fromAnswer(r.wire, scan, storedAt, plan.ttl, prefetchStart(storedAt, plan.ttl, opts), r.negative);
  entry.hits = r.hits;
  return entry;
}
