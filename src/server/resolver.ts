/**
 * A query from arrival to answer, in one place.
 *
 *   listener ─► HitPath.handle (hit-path.ts: parse, refuse, cache hit ─► send)
 *                 │ miss (token, key, upstream query)
 *                 ▼
 *               Resolver.forward (here)
 *                 ├─ cluster zone, name certainly absent (--local-negative) ─► the view's NXDOMAIN now
 *                 ├─ cluster zone, upstream failing ─► the view's answer now (if it has one)
 *                 └─ send upstream with a deadline; a cluster-zone query still
 *                    unanswered after --fallback-after is answered from the view
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
import { refreshesName } from '../cache/policy.js';
import { scanAnswer } from '../dns/answer.js';
import { questionMessage, upstreamQuery } from '../dns/build.js';
import { RCODE_MASK, OFF_FLAGS, QType, Rcode } from '../dns/constants.js';
import { scrubOutOfBailiwick } from '../dns/bailiwick.js';
import { appendTargetAnswer } from '../dns/merge.js';
import { nameToWire } from '../dns/name.js';
import { QueryStatus, parseQuery } from '../dns/query.js';
import type { Clock } from '../clock.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import { Fifo } from '../upstream/fifo.js';
import { serverFailed } from '../upstream/health.js';
import { HOST_BUDGET_CAP_MS } from '../upstream/host-route.js';
import type { ZoneRouter } from '../upstream/router.js';
import { MAX_CONCURRENT_REJECTS_HELP } from '../upstream/upstream-counters.js';
import type { UpstreamExchange, UpstreamFailure } from '../upstream/types.js';
import type { MissOutcome, MissSink } from './hit-path.js';
import { PendingQuery, type PendingOwner } from './pending.js';
import type { LocalAnswer, Route } from './route.js';
import type { UpstreamLoad } from './upstream-load.js';

export const RESOLVER_COUNTERS = defineCounters({
  forwarded: { name: 'nodelocal_upstream_questions_total', help: 'Questions handed to an upstream transport, all upstreams (those it refused at its queue limit included: nodelocal_upstream_failures_total{reason="overloaded"}; per upstream: coredns_forward_requests_total{to}).' },
  failTimeout: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'timeout' }, help: 'Upstream exchanges that failed, by reason.' },
  failNetwork: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'network' }, help: 'Upstream exchanges that failed, by reason.' },
  failOverloaded: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'overloaded' }, help: 'Upstream exchanges that failed, by reason.' },
  failClosed: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'closed' }, help: 'Upstream exchanges that failed, by reason.' },
  failServfail: { name: 'nodelocal_upstream_failures_total', labels: { reason: 'servfail' }, help: 'Upstream exchanges that failed, by reason.' },
  localOnFailure: { name: 'nodelocal_local_answers_total', labels: { why: 'upstream_failed' }, help: 'Cluster-zone questions answered from the local view, by why.' },
  localLate: { name: 'nodelocal_local_answers_total', labels: { why: 'upstream_late' }, help: 'Cluster-zone questions answered from the local view, by why.' },
  localFailing: { name: 'nodelocal_local_answers_total', labels: { why: 'upstream_failing' }, help: 'Cluster-zone questions answered from the local view, by why.' },
  localNegative: { name: 'nodelocal_local_answers_total', labels: { why: 'local_negative' }, help: 'Cluster-zone questions answered from the local view, by why.' },
  chases: { name: 'nodelocal_externalname_chases_total', help: 'ExternalName targets looked up to complete a local answer.' },
  maxConcurrentRejects: {
    name: 'coredns_forward_max_concurrent_rejects_total', labels: { to: 'all' },
    help: MAX_CONCURRENT_REJECTS_HELP,
  },
  inflight: { name: 'nodelocal_upstream_inflight', type: 'gauge', help: 'Questions in flight upstream, all upstreams together.' },
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
  /** A cluster-zone forward not answered by then is answered from the view (0: only on failure). */
  readonly fallbackAfterMs: number;
  /** Answer names the view certainly lacks (search-path junk) without asking the upstream. */
  readonly localNegative: boolean;
  /**
   * Upstream queries in flight across every upstream (CoreDNS forward's
   * max_concurrent); beyond it a new miss fails at once (stale or SERVFAIL),
   * cached answers are still served.
   */
  readonly maxConcurrent: number;
  /** Where the batched workers read the count in flight and the cap (upstream-load.ts); default none. */
  readonly load?: UpstreamLoad | null;
}

/**
 * An answer that is a failure (SERVFAIL, NOTIMP, REFUSED, or too short to say): it answers nothing. The same rcodes
 * the upstream side moves on from and its health counts (health.ts serverFailed): one judgement of a server's answer.
 */
function failedAnswer(answer: Buffer): boolean {
  return serverFailed(answer.length > OFF_FLAGS + 1 ? answer[OFF_FLAGS + 1]! & RCODE_MASK : Rcode.SERVFAIL);
}

/** An answer that reads and says something of the name (NOERROR or NXDOMAIN), as the hit path judges it. */
function speaksOfName(answer: Buffer): boolean {
  const scan = scanAnswer(answer);
  return scan !== undefined && refreshesName(scan.rcode);
}

/** Why a local answer is being given, for its counter. */
type LocalWhy = 'localOnFailure' | 'localLate' | 'localFailing' | 'localNegative';

export class Resolver implements MissSink, PendingOwner {
  readonly counters: Counters<ResolverCounterName>;
  #router: ZoneRouter<Route>;
  readonly #clock: Clock;
  readonly #hits: MissCompleter;
  readonly #v: Float64Array;
  #fallbackAfterMs: number;
  #localNegative: boolean;
  #maxConcurrent: number;
  #inflight: number;
  readonly #load: UpstreamLoad | null;
  /**
   * Cluster-zone forwards in the order sent: with one fallback delay for all,
   * the oldest is always first, so the sweep looks only at the front. The
   * answered ones leave the front as they complete (released()), not at the
   * next sweep: held 50 ms, each outlived two young-generation collections
   * under a miss load and was promoted, with its query and key.
   */
  readonly #watch: Fifo<PendingQuery>;
  #sweep: (() => void) | null;
  /** Shut down (close()): an upstream's 'closed' is the end, not a reload to follow. */
  #closed = false;

  constructor(opts: ResolverOptions) {
    this.#router = opts.router;
    this.#clock = opts.clock;
    this.#hits = opts.hits;
    this.counters = opts.counters;
    this.#v = opts.counters.values;
    this.#fallbackAfterMs = opts.fallbackAfterMs;
    this.#localNegative = opts.localNegative;
    this.#maxConcurrent = opts.maxConcurrent;
    this.#inflight = 0;
    this.#load = opts.load ?? null;
    this.#load?.setCap(opts.maxConcurrent);
    this.#watch = new Fifo();
    this.#sweep = null;
  }

  forward(token: number, key: string, query: Buffer): void {
    this.#forward(token, key, query, null);
  }

  /** `retryOf`: the exchange a retired upstream closed, whose question this asks again (within its client's deadline). */
  #forward(token: number, key: string, query: Buffer, retryOf: PendingQuery | null): void {
    const route = this.#router.route(key);
    const local = route.local;
    const now = this.#clock.now();
    if (local !== null) {
      if (this.#localNegative && local.deniesForSure(key) && this.#answerLocally(token, key, route, local.answer(key), 'localNegative', now)) return;
      // Failing: the view answers at once; the health probe, not pods' queries, finds out when the upstream is back.
      if (!route.upstream.health.healthy && this.#answerLocally(token, key, route, local.answer(key), 'localFailing', now)) return;
    }
    if (this.#inflight >= this.#maxConcurrent) {
      // Shed before any work: no socket, no upstream traffic; the hit path answers stale or SERVFAIL.
      this.#v[S.maxConcurrentRejects]!++;
      if (local !== null && this.#answerLocally(token, key, route, local.answer(key), 'localOnFailure', now, true)) return;
      this.#hits.complete(token, null, 'capped');
      return;
    }
    const p = new PendingQuery(this, token, key, route, query, now, retryOf);
    this.#inflight++;
    this.#published();
    this.#v[S.forwarded]!++;
    if (local !== null && this.#fallbackAfterMs > 0) this.#watchLate(p);
    // May complete synchronously (reject 'overloaded').
    route.upstream.send(p);
  }

  answered(p: PendingQuery, answer: Buffer): void {
    // An upstream that answers SERVFAIL, NOTIMP or REFUSED has failed this question: clients get our failure
    // order, never a REFUSED or NOTIMP (musl ignores both and waits out its whole timeout; unbound answers SERVFAIL too).
    if (failedAnswer(answer)) {
      this.#v[S.failServfail]!++;
      this.#fallBack(p, 'servfail');
      return;
    }
    // A malformed answer, or one with an rcode that says nothing of the name (FORMERR...: RFC 8767 4), is a failed
    // forward too: where the view has an answer it comes first, before a stale one (else the hit path answers stale,
    // or passes it on, or counts it malformed). Read only on routes with a view: the hit path scans every answer anyway.
    const local = p.route.local;
    if (local !== null && !speaksOfName(answer) && this.#answerLocally(p.token, p.key, p.route, local.answer(p.key), 'localOnFailure', p.askedAt)) return;
    this.#hits.complete(p.token, answer, 'upstream');
  }

  released(p: PendingQuery): void {
    this.#inflight--;
    this.#published();
    // Answers come back in about the order asked: what they leave decided at the front goes now (p is deciding).
    const w = this.#watch;
    for (let f = w.peek(); f !== undefined && (f === p || f.done); f = w.peek()) w.shift();
  }

  /** The count in flight changed: to the gauge, and to the workers that shed at the cap. */
  #published(): void {
    this.#v[S.inflight] = this.#inflight;
    this.#load?.setInflight(this.#inflight);
  }

  /** Cluster-zone forwards held for --fallback-after: unanswered ones, and answered ones behind an older unanswered one. */
  get watched(): number {
    return this.#watch.length;
  }

  /** Upstream queries in flight (a late one still counts after a local answer was given: it still loads the upstream). */
  get inflight(): number {
    return this.#inflight;
  }

  failed(p: PendingQuery, reason: UpstreamFailure): void {
    this.#v[failureSlot[reason]]!++;
    // 'closed' while we still serve: a reload retired that upstream (close() rejects what it still queued). The new
    // routes are in place, so the question is asked there, once: the route it gets is not the one that closed.
    if (reason === 'closed' && !this.#closed && this.#router.route(p.key).upstream !== p.route.upstream) {
      this.#forward(p.token, p.key, p.query, p);
      return;
    }
    this.#fallBack(p, reason);
  }

  /**
   * A reload: new routes and fallback settings for the next miss. Queries in
   * flight keep the route they were sent on (each PendingQuery holds it).
   */
  configure(o: { router: ZoneRouter<Route>; fallbackAfterMs: number; localNegative: boolean; maxConcurrent: number }): void {
    this.#router = o.router;
    this.#fallbackAfterMs = o.fallbackAfterMs;
    this.#localNegative = o.localNegative;
    this.#maxConcurrent = o.maxConcurrent;
    this.#load?.setCap(o.maxConcurrent);
    // Fallback turned off: the sweep's cutoff would be "now", so every query still watched would go to the view.
    if (o.fallbackAfterMs === 0) this.#unwatchAll();
  }

  /** Stops the fallback sweep (shutdown); from here an upstream's 'closed' ends its question. */
  close(): void {
    this.#closed = true;
    this.#unwatchAll();
  }

  /** The failure order's first step; the hit path does the rest (stale, then SERVFAIL). */
  #fallBack(p: PendingQuery, reason: MissOutcome): void {
    const local = p.route.local;
    if (local !== null && reason !== 'closed' && this.#answerLocally(p.token, p.key, p.route, local.answer(p.key), 'localOnFailure', p.askedAt)) return;
    this.#hits.complete(p.token, null, reason);
  }

  /**
   * Serves a local answer, chasing an ExternalName target first when it has one; false when there is none.
   * `askedAt`: when the question came (Clock ms), which the target's lookup is timed from.
   * `shed`: the query was already turned away (and counted) at --max-concurrent.
   */
  #answerLocally(token: number, key: string, route: Route, la: LocalAnswer, why: LocalWhy, askedAt: number, shed = false): boolean {
    if (la === null) return false;
    this.#v[S[why]]!++;
    if (la.chase === '') {
      this.#hits.complete(token, la.answer, 'local');
      return true;
    }
    this.#chase(token, key, route, la.answer, la.chase, askedAt, shed);
    return true;
  }

  /**
   * An ExternalName service answered from the view: its CNAME target lies
   * outside the cluster, so look it up through the router (the host
   * resolvers, usually) and hand the client the CNAME plus the target's
   * records. If that fails, the CNAME alone is still a true answer. The
   * lookup has what is left of the client's own budget: after the cluster
   * DNS failed (--timeout) or was late (--fallback-after), a fresh deadline
   * would run past the 5 s a pod's resolver waits (musl gives up then) and
   * the client would get nothing, where the CNAME alone was in time.
   */
  #chase(token: number, key: string, route: Route, cname: Buffer, target: string, askedAt: number, shed: boolean): void {
    let wire: Buffer;
    try {
      wire = nameToWire(target);
    } catch {
      this.#hits.complete(token, cname, 'local');
      return;
    }
    const qtype = (key.charCodeAt(key.length - 5) << 8) | key.charCodeAt(key.length - 4);
    const q = parseQuery(questionMessage(wire, qtype === QType.ANY ? QType.A : qtype));
    const targetRoute = q.status === QueryStatus.OK ? this.#router.route(q.key) : null;
    // A target that routes back to a cluster zone would only loop through the view: give the CNAME alone.
    if (targetRoute === null || targetRoute.local !== null || targetRoute === route) {
      this.#hits.complete(token, cname, 'local');
      return;
    }
    // The route's deadline, within the client's: HOST_BUDGET_CAP_MS from its question (or the route's own, if longer).
    const now = this.#clock.now();
    const deadline = Math.min(now + targetRoute.timeoutMs, askedAt + Math.max(HOST_BUDGET_CAP_MS, targetRoute.timeoutMs));
    if (deadline <= now) {
      this.#hits.complete(token, cname, 'local');
      return;
    }
    // An upstream query like any miss: held to --max-concurrent and counted in flight (the CNAME alone past the cap).
    if (this.#inflight >= this.#maxConcurrent) {
      // One client query, one rejection: a query shed at the cap whose view answer led here was counted then.
      if (!shed) this.#v[S.maxConcurrentRejects]!++;
      this.#hits.complete(token, cname, 'local');
      return;
    }
    // Counted here, where the target is really asked (the metric's help: targets looked up); the CNAME alone before.
    this.#v[S.chases]!++;
    this.#inflight++;
    this.#published();
    this.#v[S.forwarded]!++;
    let settled = false;
    const settle = (failure: number): void => {
      if (settled) return;
      settled = true;
      this.#inflight--;
      this.#published();
      if (failure >= 0) this.#v[failure]!++;
    };
    const hits = this.#hits;
    const exchange: UpstreamExchange = {
      query: upstreamQuery(q),
      deadline,
      resolve: (answer) => {
        // A target that failed (SERVFAIL, NOTIMP, REFUSED) adds nothing: the CNAME alone, NOERROR, as CoreDNS answers;
        // the join would carry the target's rcode, and musl fails a whole lookup on either family's SERVFAIL.
        const failed = failedAnswer(answer);
        settle(failed ? S.failServfail : -1);
        if (failed) {
          hits.complete(token, cname, 'local');
          return;
        }
        // The host resolver's answer joins ours, and the join completes as 'local', which the hit path does not
        // scrub: so the target's records are scrubbed here against the target's own question, or one owned by our
        // question's name (or any other) would be served and cached with it.
        const scrubbed = scrubOutOfBailiwick(answer);
        const clean = scrubbed === null ? answer : scrubbed === 'unusable' ? null : scrubbed.msg;
        hits.complete(token, clean === null ? cname : (appendTargetAnswer(cname, clean) ?? cname), 'local');
      },
      reject: (reason) => {
        settle(failureSlot[reason]);
        hits.complete(token, cname, 'local');
      },
    };
    targetRoute.upstream.send(exchange);
  }

  #unwatchAll(): void {
    if (this.#sweep !== null) this.#sweep();
    this.#sweep = null;
    this.#watch.drain();
  }

  #watchLate(p: PendingQuery): void {
    this.#watch.push(p);
    if (this.#sweep === null) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => {
    const cutoff = now - this.#fallbackAfterMs;
    const w = this.#watch;
    for (let p = w.peek(); p !== undefined; p = w.peek()) {
      // Timed from its client's question (a question asked again after a reload: the first send). Watched in send order,
      // such a one may wait behind the questions sent before its retry, never past its retry's own --fallback-after.
      if (!p.done && p.askedAt > cutoff) break;
      w.shift();
      // Late, not failed: answer the clients from the view now; a later upstream answer is ignored (the exchange is claimed).
      if (!p.done && p.route.local !== null) {
        const la = p.route.local.answer(p.key);
        if (la !== null && p.claim()) this.#answerLocally(p.token, p.key, p.route, la, 'localLate', p.askedAt);
      }
    }
    if (w.length === 0) {
      if (this.#sweep !== null) this.#sweep();
      this.#sweep = null;
    }
  };
}
