/**
 * The bailiwick scrub (dns/bailiwick.ts) as the server applies and counts it,
 * once per upstream answer: by the hit path that fetched it (`--io dgram`),
 * or by the batched backend's miss exchange before it stores the answer and
 * fans it out to every thread that waited (miss-exchange.ts).
 */
import { scrubOutOfBailiwick } from '../dns/bailiwick.js';
import { SERVER_COUNTERS } from './stats.js';

const S = SERVER_COUNTERS.slot;
const UNUSABLE = Buffer.alloc(0);

/**
 * The answer to cache and serve: `answer` itself when every record belongs,
 * the scrubbed copy when some did not, or an empty message (which every
 * reader treats as malformed: stale or SERVFAIL, never cached) when records
 * must go and the rest cannot be re-encoded, or when it cannot be checked
 * at all (dns-packet does not read it). Counted in a server block.
 */
export function scrubCounted(answer: Buffer, server: Float64Array): Buffer {
  const scrubbed = scrubOutOfBailiwick(answer);
  if (scrubbed === null) return answer;
  if (scrubbed === 'unusable') return UNUSABLE;
  server[S.scrubbedAnswers]!++;
  server[S.scrubbedRecords]! += scrubbed.removed;
  return scrubbed.msg;
}
