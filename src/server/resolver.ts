/**
 * A query from arrival to answer, in one place.
 *
 *   listener ─► HitPath.handle (hit-path.ts: parse, refuse, cache hit ─► send)
 *                 │ miss (token, key, upstream query)
 *                 ▼
 *               Resolver.forward (here: route by zone, send upstream with a deadline)
 *                 │ answer ─────────────────────────────────► HitPath.complete: cache, answer every waiter
 *                 │ failure (timeout, unreachable, SERVFAIL, REFUSED, malformed)
 *                 ▼
 *               the failure order, written once (#fallBack):
 *                 1. the route's local answerer (the cluster view), if it has something to say
 *                 2. a stale cached answer (RFC 8767)          ─┐ in HitPath, which owns the cache
 *                 3. SERVFAIL                                   ─┘
 *
 * The hit path runs where the socket is (this thread, or a worker later);
 * this side owns upstream I/O, health and the view, and talks to the hit
 * path only through tokens and bytes (MissSink / complete).
 */
import { RCODE_MASK, OFF_FLAGS, Rcode } from '../dns/constants.js';
import type { Clock } from '../clock.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import type { ZoneRouter } from '../upstream/router.js';
import type { UpstreamFailure } from '../upstream/types.js';
import type { MissOutcome, MissSink } from './hit-path.js';
import { PendingQuery, type PendingOwner } from './pending.js';
import type { Route } from './route.js';

export const RESOLVER_COUNTERS = defineCounters({
  forwarded: { name: 'coredns_forward_requests_total', help: 'Questions sent to an upstream.' },
  failTimeout: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'timeout' }, help: 'Upstream exchanges that failed, by reason.' },
  failNetwork: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'network' }, help: 'Upstream exchanges that failed, by reason.' },
  failOverloaded: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'overloaded' }, help: 'Upstream exchanges that failed, by reason.' },
  failClosed: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'closed' }, help: 'Upstream exchanges that failed, by reason.' },
  failServfail: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'servfail' }, help: 'Upstream exchanges that failed, by reason.' },
  localAnswers: { name: 'nodelocal_local_answers_total', help: 'Misses answered from the local view because the upstream failed.' },
});
export type ResolverCounterName = keyof typeof RESOLVER_COUNTERS.slot;

const S = RESOLVER_COUNTERS.slot;
const failureSlot: Record<UpstreamFailure, number> = {
  timeout: S.failTimeout,
  network: S.failNetwork,
  overloaded: S.failOverloaded,
  closed: S.failClosed,
};

/** The hit path's half of the boundary, as the resolver sees it. */
export interface MissCompleter {
  complete(token: number, answer: Buffer | null, outcome: MissOutcome): void;
}

export interface ResolverOptions {
  readonly router: ZoneRouter<Route>;
  readonly clock: Clock;
  readonly counters: Counters<ResolverCounterName>;
  readonly hits: MissCompleter;
}

export class Resolver implements MissSink, PendingOwner {
  readonly counters: Counters<ResolverCounterName>;
  readonly #router: ZoneRouter<Route>;
  readonly #clock: Clock;
  readonly #hits: MissCompleter;
  readonly #v: Float64Array;

  constructor(opts: ResolverOptions) {
    this.#router = opts.router;
    this.#clock = opts.clock;
    this.#hits = opts.hits;
    this.counters = opts.counters;
    this.#v = opts.counters.values;
  }

  forward(token: number, key: string, query: Buffer): void {
    const route = this.#router.route(key);
    const p = new PendingQuery(this, token, key, route, query, this.#clock.now() + route.timeoutMs);
    this.#v[S.forwarded]!++;
    // May complete synchronously (reject 'overloaded').
    route.upstream.send(p);
  }

  answered(p: PendingQuery, answer: Buffer): void {
    // An upstream that answers SERVFAIL or REFUSED has failed this question: clients get our failure
    // order, never a REFUSED (musl then waits out its whole timeout; unbound answers SERVFAIL too).
    const rcode = answer.length > OFF_FLAGS + 1 ? answer[OFF_FLAGS + 1]! & RCODE_MASK : Rcode.SERVFAIL;
    if (rcode === Rcode.SERVFAIL || rcode === Rcode.REFUSED) {
      this.#v[S.failServfail]!++;
      this.#fallBack(p, 'servfail');
      return;
    }
    this.#hits.complete(p.token, answer, 'upstream');
  }

  failed(p: PendingQuery, reason: UpstreamFailure): void {
    this.#v[failureSlot[reason]]!++;
    this.#fallBack(p, reason);
  }

  /** The failure order's first step; the hit path does the rest (stale, then SERVFAIL). */
  #fallBack(p: PendingQuery, reason: MissOutcome): void {
    const local = p.route.local;
    if (local !== null && reason !== 'closed') {
      const answer = local.answer(p.key, p.query);
      if (answer !== null) {
        this.#v[S.localAnswers]!++;
        this.#hits.complete(p.token, answer, 'local');
        return;
      }
    }
    this.#hits.complete(p.token, null, reason);
  }
}
