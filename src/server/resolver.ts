/**
 * The query pipeline, top to bottom: parse, refuse what we do not serve,
 * answer from the cache, else join or start the upstream query, then answer
 * every waiting client. Exactly one place sends (#send). The hit path is
 * synchronous: no await, no promise, no full decode.
 */
import { scanAnswer } from '../dns/answer.js';
import { DEFAULT_EDNS_SIZE, RCODE_BADVERS, errorResponse, upstreamQuery } from '../dns/build.js';
import { CLASSIC_UDP_LIMIT, MAX_MESSAGE, Rcode } from '../dns/constants.js';
import { QueryStatus, parseQuery, type Query } from '../dns/query.js';
import { STALE_ANSWER_TTL, type DnsCache } from '../cache/cache.js';
import type { CacheEntry } from '../cache/entry.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { ZoneRouter } from '../upstream/router.js';
import type { Upstream, UpstreamFailure } from '../upstream/types.js';
import { Transport, type ClientChannel, type ClientPeer, type QueryHandler } from './listener.js';
import { PendingQuery, type PendingOwner } from './pending.js';
import { ServerCounter, newServerCounters } from './stats.js';

/** Where a zone's misses go, and how long the whole exchange may take there. */
export interface Route {
  readonly upstream: Upstream;
  /**
   * The exchange's deadline: the cluster pool's single try, or a host
   * resolver's tries across its servers.
   */
  readonly timeoutMs: number;
}

export interface ResolverOptions {
  readonly cache: DnsCache;
  readonly router: ZoneRouter<Route>;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Largest UDP answer whatever the client advertises. */
  readonly maxUdpSize: number;
}

const failureCounter: Record<UpstreamFailure, number> = {
  timeout: ServerCounter.UPSTREAM_TIMEOUT,
  network: ServerCounter.UPSTREAM_NETWORK,
  overloaded: ServerCounter.UPSTREAM_OVERLOADED,
  closed: ServerCounter.UPSTREAM_CLOSED,
};

export class Resolver implements QueryHandler, PendingOwner {
  readonly counters: Float64Array;
  readonly #cache: DnsCache;
  readonly #router: ZoneRouter<Route>;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #maxUdpSize: number;
  /** Questions in flight upstream, by cache key: identical misses share one. */
  readonly #inflight: Map<string, PendingQuery>;
  #drained: (() => void) | null;

  constructor(opts: ResolverOptions) {
    this.#cache = opts.cache;
    this.#router = opts.router;
    this.#clock = opts.clock;
    this.#logger = opts.logger;
    this.#maxUdpSize = opts.maxUdpSize;
    this.counters = newServerCounters();
    this.#inflight = new Map();
    this.#drained = null;
  }

  handle(msg: Buffer, channel: ClientChannel, peer: ClientPeer): void {
    this.counters[channel.transport === Transport.TCP ? ServerCounter.REQUESTS_TCP : ServerCounter.REQUESTS_UDP]!++;
    const q = parseQuery(msg);
    if (q.status !== QueryStatus.OK) {
      if (q.status === QueryStatus.DROP) {
        this.counters[ServerCounter.DROPPED]!++;
        channel.discard(peer);
        return;
      }
      const rcode = q.status === QueryStatus.NOTIMP ? Rcode.NOTIMP : q.status === QueryStatus.BADVERS ? RCODE_BADVERS : Rcode.FORMERR;
      this.#send(errorResponse(q, rcode), channel, peer);
      return;
    }

    const now = this.#clock.now();
    const entry = this.#cache.lookup(q.key, now);
    if (entry !== undefined) {
      this.#send(entry.serve(q, now, this.#limit(q, channel), DEFAULT_EDNS_SIZE), channel, peer);
      if (this.#cache.claimPrefetch(entry, now)) this.#refresh(q, now);
      return;
    }

    let pending = this.#inflight.get(q.key);
    if (pending !== undefined) {
      this.counters[ServerCounter.COALESCED]!++;
      pending.waiters.push({ q, channel, peer });
      return;
    }
    const route = this.#router.route(q.key);
    pending = new PendingQuery(this, q.key, upstreamQuery(q), now + route.timeoutMs);
    pending.waiters.push({ q, channel, peer });
    this.#forward(pending, route.upstream);
  }

  /** An upstream answer for a pending question: validate, cache, answer every waiter with its own id and case. */
  answered(p: PendingQuery, answer: Buffer): void {
    this.#settle(p);
    const scan = scanAnswer(answer);
    const now = this.#clock.now();
    if (scan === undefined) {
      // Logged the first time and every 1000th after: a broken upstream must not become a log flood.
      if (this.counters[ServerCounter.UPSTREAM_MALFORMED]!++ % 1000 === 0) {
        this.#logger.warn('malformed upstream answer: not cached, client gets a stale answer or SERVFAIL', {
          bytes: answer.length,
          seen: this.counters[ServerCounter.UPSTREAM_MALFORMED],
        });
      }
      if (!this.#answerStale(p, now)) this.#failWaiters(p);
      return;
    }
    if ((scan.rcode === Rcode.SERVFAIL || scan.rcode === Rcode.REFUSED) && this.#answerStale(p, now)) return;
    const entry: CacheEntry = this.#cache.insert(p.key, answer, scan, now);
    for (const w of p.waiters) this.#send(entry.serve(w.q, now, this.#limit(w.q, w.channel), DEFAULT_EDNS_SIZE), w.channel, w.peer);
  }

  failed(p: PendingQuery, reason: UpstreamFailure): void {
    this.#settle(p);
    this.counters[failureCounter[reason]]!++;
    if (this.#answerStale(p, this.#clock.now())) return;
    this.#failWaiters(p);
  }

  /** Questions still waiting on an upstream. */
  get inflight(): number {
    return this.#inflight.size;
  }

  /** Resolves once no question is in flight (each has a deadline, so this ends). */
  drain(): Promise<void> {
    if (this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = resolve;
    });
  }

  #forward(p: PendingQuery, upstream: Upstream): void {
    this.#inflight.set(p.key, p);
    this.counters[ServerCounter.FORWARDED]!++;
    // May complete synchronously (reject 'overloaded'): the pending is registered first so #settle finds it.
    upstream.send(p);
  }

  /**
   * Background refresh of a popular entry: a pending with no waiters, which
   * misses may join once the entry expires. A failed refresh is not retried:
   * the entry runs out and the next query is an ordinary miss.
   */
  #refresh(q: Query, now: number): void {
    if (this.#inflight.has(q.key)) return;
    const route = this.#router.route(q.key);
    this.#forward(new PendingQuery(this, q.key, upstreamQuery(q), now + route.timeoutMs), route.upstream);
  }

  #settle(p: PendingQuery): void {
    if (this.#inflight.get(p.key) === p) this.#inflight.delete(p.key);
    if (this.#inflight.size === 0 && this.#drained !== null) {
      const done = this.#drained;
      this.#drained = null;
      queueMicrotask(done);
    }
  }

  /** The upstream failed: answer from an expired entry still in its stale window, if there is one (RFC 8767). */
  #answerStale(p: PendingQuery, now: number): boolean {
    if (p.waiters.length === 0) return false;
    const stale = this.#cache.stale(p.key, now);
    if (stale === undefined) return false;
    for (const w of p.waiters) this.#send(stale.serveStale(w.q, STALE_ANSWER_TTL, this.#limit(w.q, w.channel), DEFAULT_EDNS_SIZE), w.channel, w.peer);
    return true;
  }

  #failWaiters(p: PendingQuery): void {
    for (const w of p.waiters) this.#send(errorResponse(w.q, Rcode.SERVFAIL), w.channel, w.peer);
  }

  /** UDP: 512 without EDNS, else the client's size capped by ours (RFC 6891 6.2.5); TCP: the message limit. */
  #limit(q: Query, channel: ClientChannel): number {
    if (channel.transport === Transport.TCP) return MAX_MESSAGE;
    if (!q.edns) return CLASSIC_UDP_LIMIT;
    return q.udpSize < this.#maxUdpSize ? q.udpSize : this.#maxUdpSize;
  }

  #send(answer: Buffer, channel: ClientChannel, peer: ClientPeer): void {
    const rcode = answer[3]! & 0x0f;
    this.counters[rcode <= 5 ? ServerCounter.RCODE_BASE + rcode : ServerCounter.RCODE_OTHER]!++;
    if ((answer[2]! & 0x02) !== 0) this.counters[ServerCounter.TRUNCATED]!++;
    channel.send(answer, peer);
  }
}
