/**
 * A worker turn's misses and waiting clients as the main thread takes them
 * (from the ring, or a report that overflowed it: packed-ring.ts): the
 * clients to direct.ts, which answers them when their question completes,
 * the misses to the exchange.
 */
import type { DnsCache } from '../../cache/cache.js';
import type { Clock } from '../../clock.js';
import type { MissExchange } from './miss-exchange.js';
import { MISS_REFRESH, itemBytes, itemTag, itemToken, type Packed } from './protocol.js';
import type { WorkerLink } from './worker-link.js';

export function takeItems(link: WorkerLink, m: Packed | null, w: Packed | null, exchange: MissExchange, cache: DnsCache, clock: Clock): void {
  const direct = link.direct;
  if (direct !== null) {
    // The waiters before the misses go out: a miss may complete at once (shared cache) and find its waiters.
    if (m !== null) for (let k = 0; k < m.count; k++) direct.expect(itemToken(m, k), m.keys![k]!);
    // Late records go back to the worker, after the completions queued here (their question's among them).
    if (w !== null && direct.add(w)) link.handBack();
  }
  if (m === null) return;
  const keys = m.keys!;
  for (let k = 0; k < m.count; k++) {
    // A worker's refresh is claimed here (readers never set the flag). Refused (claimed elsewhere, prefetch off since
    // a reload) it is no refresh, as in the dgram backend, but a plain miss (clients may have joined it): answered from
    // the store while the entry is fresh, else joined to the fetch in flight or asked.
    const refresh = itemTag(m, k) === MISS_REFRESH && cache.claimRefresh(keys[k]!, clock.now());
    exchange.forward(link, itemToken(m, k), keys[k]!, itemBytes(m, k)!, refresh);
  }
}
