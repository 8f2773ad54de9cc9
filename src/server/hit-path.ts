/**
 * The hit path: everything between a query's bytes and its answer that needs
 * no upstream. Parse, refuse what we do not serve, answer from the cache,
 * else park the client as a waiter and hand the question across the miss
 * boundary; when the answer (or a failure) comes back, cache it and answer
 * every waiter with its own id and spelling.
 *
 * Self-contained on purpose (design section 7): it depends on the cache,
 * dns/ and the listener seam only, never on upstreams, the view, config or
 * the event loop, so a worker thread that owns a socket can run it as is.
 * What crosses the boundary is shaped like a message (a token is a small
 * number; no channel, peer or Query object crosses):
 *
 *   hit path ── forward(token, key, query bytes) ──► MissSink (upstream side)
 *   hit path ◄── complete(token, answer bytes | failure) ── upstream side
 *
 * Buffer ownership: the `msg` given to handle() is valid only during the
 * call (a batched backend reuses its receive ring). A waiter keeps a private
 * copy of the header and question (id, flags, the 0x20 echo), nothing else;
 * with remoteWaiters (a batched worker) the main thread holds the client
 * and this side only counts it, so a miss flood leaves no objects per
 * client in the worker's heap for its collections to copy.
 *
 * Allocation: a hit allocates its answer Buffer and nothing else (one
 * QueryScratch per HitPath, looked up by key bytes and hash); key strings
 * and Query copies are made only for what outlives the call.
 *
 * Types: miss-boundary.ts, hit-path-options.ts, miss-waiters.ts (re-exported).
 * How answers leave (size limit, counting, the query log): answer-out.ts.
 */
import { scanAnswer } from '../dns/answer.js';
import { DEFAULT_EDNS_SIZE, RCODE_BADVERS, errorResponse, truncatedResponse, upstreamQuery } from '../dns/build.js';
import { Rcode } from '../dns/constants.js';
import { QueryScratch, QueryStatus, parseQueryInto, type Query } from '../dns/query.js';
import { tsigErrorResponse } from '../dns/tsig.js';
import { STALE_ANSWER_TTL, type HitCache } from '../cache/cache-api.js';
import { refreshesName } from '../cache/policy.js';
import { serverFailed } from '../upstream/health.js';
import type { CacheEntry } from '../cache/entry.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { AnswerOut } from './answer-out.js';
import { closeOpened, keepBuckets, type ClientMissLimiter } from './client-limit.js';
import type { ClientTagger, HitPathHistograms, HitPathOptions, ScrubAnswer } from './hit-path-options.js';
import type { ClientChannel, ClientPeer, QueryHandler } from './listener.js';
import type { MissGate, MissOutcome, MissSink } from './miss-boundary.js';
import { IntTable } from '../int-table.js';
import { ClientShares, InFlight, MAX_WAITERS_PER_QUESTION, Miss, RecentFailures, Waiter, clientHash } from './miss-waiters.js';
import { SERVER_COUNTERS, type ServerCounters } from './stats.js';

export type * from './miss-boundary.js';
export type * from './hit-path-options.js';
export { MAX_WAITERS_PER_QUESTION };

const S = SERVER_COUNTERS.slot;

export class HitPath implements QueryHandler {
  readonly counters: ServerCounters;
  /** The token of the question the last query handled waits on (it joined or opened one): read right after handle() for a client left unanswered. */
  waitsOn = 0;
  /** That client is kept here (a Waiter: its peer must outlive the call); false: only counted, the sink's side holds it (remoteWaiters). */
  waitsLocally = true;
  readonly #remoteWaiters: boolean;
  readonly #cache: HitCache;
  /**
   * Scrubs and stores what its misses bring back; null when the sink has done
   * both before it completes (the batched miss exchange, once for every
   * thread that waits on the answer).
   */
  #scrub: ScrubAnswer | null;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #out: AnswerOut;
  readonly #v: Float64Array;
  #sink: MissSink | null = null;
  /** Questions in flight, by cache key (identical misses share one) and by token (answers come back by token). */
  readonly #byKey = new InFlight();
  readonly #byToken = new IntTable<Miss>();
  /** Each client's waiters per question: one pod cannot take every slot of one (MAX_WAITERS_PER_CLIENT). */
  readonly #shares = new ClientShares(this.#byToken);
  #nextToken = 1;
  #drained: (() => void) | null = null;
  #logEvery: number;
  #logCountdown: number;
  #clientLimit: ClientMissLimiter | null;
  readonly #hist: HitPathHistograms | null;
  readonly #tagger: ClientTagger | null;
  readonly #gate: MissGate | null;
  /** What handle() parses into; overwritten by the next query, so nothing may keep it (a Waiter copies what it keeps). */
  readonly #scratch = new QueryScratch();
  /** Inside handle(): a re-entrant call (a channel that answers synchronously into handle) gets its own scratch. */
  #busy = false;
  readonly #recentFailures = new RecentFailures();

  constructor(opts: HitPathOptions) {
    this.#cache = opts.cache;
    this.#clock = opts.clock;
    this.#logger = opts.logger;
    this.counters = opts.counters;
    this.#remoteWaiters = opts.remoteWaiters === true;
    this.#v = opts.counters.values;
    this.#hist = opts.histograms ?? null;
    this.#out = new AnswerOut({ maxUdpSize: opts.maxUdpSize, values: this.#v, histograms: this.#hist, clock: opts.clock, logger: opts.logger });
    this.#scrub = null;
    this.#logEvery = opts.queryLogEvery ?? 0;
    this.#logCountdown = this.#logEvery;
    this.#clientLimit = opts.clientLimit ?? null;
    this.#tagger = opts.tagger ?? null;
    this.#gate = opts.gate ?? null;
  }

  /** A reload: the new largest UDP answer, query-log sampling and client limit apply from the next query (the limiter's buckets kept while it stays on). */
  configure(o: { maxUdpSize: number; queryLogEvery: number; clientLimit: ClientMissLimiter | null }): void {
    this.#out.maxUdpSize = o.maxUdpSize;
    this.#clientLimit = keepBuckets(this.#clientLimit, o.clientLimit);
    this.#logEvery = o.queryLogEvery;
    this.#logCountdown = o.queryLogEvery;
  }

  /**
   * Wires the upstream side; set once before the first query. `scrub`
   * (scrub.ts scrubCounted) null: the sink scrubs every answer and stores it
   * in the one cache before it completes (the batched backend's miss
   * exchange, for every worker and the main thread's TCP path), so
   * completions only answer the waiting clients: an answer is decoded once,
   * not once per thread that waited.
   */
  connect(sink: MissSink, scrub: ScrubAnswer | null): void {
    this.#sink = sink;
    this.#scrub = scrub;
  }

  /** `again` >= 0: a query handled before (a batched client handed back: direct.ts) that arrived then (clock ms): counted once, timed from then. */
  handle(msg: Buffer, channel: ClientChannel, peer: ClientPeer, again = -1): void {
    if (this.#busy) {
      this.#handle(msg, new QueryScratch(), channel, peer, again);
      return;
    }
    this.#busy = true;
    try {
      this.#handle(msg, this.#scratch, channel, peer, again);
    } finally {
      this.#busy = false;
    }
  }

  #handle(msg: Buffer, q: QueryScratch, channel: ClientChannel, peer: ClientPeer, again: number): void {
    parseQueryInto(msg, q);
    if (again < 0) {
      if (this.#tagger !== null) this.#tagger.tag(peer.address);
      this.#out.countRequest(msg, q.qtype, channel, peer);
    }
    const logged = this.#logEvery > 0 && --this.#logCountdown <= 0;
    // Adding keeps the remainder of a fractional "one in N" (1.43 for a share of 0.7): the share logged is exact.
    if (logged) this.#logCountdown += this.#logEvery;
    if (q.status !== QueryStatus.OK) {
      if (q.status === QueryStatus.DROP) {
        this.#v[S.dropped]!++;
        channel.discard(peer);
        return;
      }
      if (q.status === QueryStatus.TSIG) {
        // We hold no keys: NOTAUTH with an unsigned TSIG saying BADKEY (RFC 8945 5.2), never an unsigned answer; if
        // that is over the client's UDP limit, the question with TC, so it asks again over TCP.
        const notAuth = tsigErrorResponse(q, Math.floor(this.#clock.wall() / 1000));
        this.#out.send(notAuth.length <= this.#out.limit(q, channel, peer) ? notAuth : truncatedResponse(q, Rcode.NOTAUTH), channel, peer);
        return;
      }
      const rcode = q.status === QueryStatus.NOTIMP ? Rcode.NOTIMP : q.status === QueryStatus.BADVERS ? RCODE_BADVERS : Rcode.FORMERR;
      const reply = errorResponse(q, rcode);
      // BADVERS (16) has header bits 0: counted by its full rcode, not as NOERROR.
      this.#out.send(reply, channel, peer, -1, rcode);
      if (logged) this.#out.logQuery(q, peer, reply, 0, 'refused-query', rcode);
      return;
    }

    const now = this.#clock.now();
    const reply = this.#cache.answer(q, now, this.#out.limit(q, channel, peer), DEFAULT_EDNS_SIZE);
    if (reply !== null) {
      // Read before the send: the next call into the cache sets it again.
      const refresh = this.#cache.refreshDue;
      this.#out.send(reply, channel, peer, again);
      if (logged) this.#out.logQuery(q, peer, reply, 0, 'cache');
      if (refresh) this.#refresh(q);
      return;
    }

    // A miss: waiters keep snapshots, never the scratch. The key becomes a string only for a new question in
    // flight (or a recent failure, a local zone): joining one or being shed reads its bytes (InFlight).
    let miss = this.#byKey.find(q);
    if (miss !== undefined) {
      if (miss.waiting >= MAX_WAITERS_PER_QUESTION || !this.#shares.take(miss.token, clientHash(peer))) {
        this.#v[S.shed]!++;
        this.#shed(q, channel, peer, now, logged, again);
        return;
      }
      if (again < 0) this.#v[S.coalesced]!++;
      this.waitsOn = miss.token;
      this.waitsLocally = !this.#remoteWaiters || logged;
      if (this.waitsLocally) miss.waiters.push(new Waiter(q, miss.key, channel, peer, again < 0 ? now : again, logged));
      else miss.remote++;
      return;
    }
    if (this.#recentFailures.holds(q, now) && this.#shed(q, channel, peer, now, logged, again, false)) return;
    // The gate counts what it turns away (it knows why). First: a miss shed for our load costs its client nothing.
    if (this.#gate !== null && !this.#gate.admits(q)) {
      this.#shed(q, channel, peer, now, logged, again);
      return;
    }
    const opener = this.#clientLimit === null ? null : this.#clientLimit.take(peer.address, now);
    if (this.#clientLimit !== null && opener === null) {
      // Over its miss rate or its questions in flight: it gets what a failing upstream would give (stale, else SERVFAIL); nothing is sent.
      this.#v[S.clientLimited]!++;
      this.#shed(q, channel, peer, now, logged, again);
      return;
    }
    const key = q.key;
    const local = !this.#remoteWaiters || logged;
    miss = this.#open(key, q.keyHash, local ? new Waiter(q, key, channel, peer, again < 0 ? now : again, logged) : null);
    if (!local) miss.remote = 1;
    miss.opener = opener;
    this.#shares.take(miss.token, clientHash(peer));
    this.waitsOn = miss.token;
    this.waitsLocally = local;
    this.#forward(miss, q, false);
    // Refused at once (overloaded, closing): a client counted for the sink's side was never handed to it, so it is answered here.
    if (local || this.#byToken.get(miss.token) === miss) return;
    this.waitsOn = 0;
    this.#shed(q, channel, peer, now, logged, again);
  }

  /**
   * The other half of the boundary: the upstream side's outcome for `token`.
   * An answer is validated, cached (if policy allows) and served to every
   * waiter; a failure is answered stale when the cache still holds an
   * expired entry (RFC 8767), else SERVFAIL. Unknown tokens (already
   * aborted) are ignored. The outcome is for the query log. A client for
   * which `answered(peer)` holds had it sent and counted elsewhere.
   */
  complete(token: number, answer: Buffer | null, outcome: MissOutcome, answered?: (peer: ClientPeer) => boolean): void {
    const miss = this.#byToken.get(token);
    if (miss === undefined) return;
    this.#close(miss, outcome);
    const now = this.#clock.now();
    if (answer !== null && outcome === 'upstream' && this.#scrub !== null) answer = this.#scrub(answer, this.#v);
    if (answer !== null) {
      const scan = scanAnswer(answer);
      if (scan === undefined) {
        // Logged the first time and every 1000th after: a broken upstream must not become a log flood.
        if (this.#v[S.upstreamMalformed]!++ % 1000 === 0) {
          this.#logger.warn('malformed upstream answer: not cached, client gets a stale answer or SERVFAIL', {
            bytes: answer.length,
            seen: this.#v[S.upstreamMalformed],
          });
        }
      } else if (!serverFailed(scan.rcode) && (refreshesName(scan.rcode) || this.#cache.stale(miss.key, now, 0) === undefined)) {
        // SERVFAIL, NOTIMP and REFUSED are failures (serverFailed, as the resolver and the upstream side judge). Another
        // rcode (FORMERR...) says nothing of the name either: stale when there is one (RFC 8767 4), else the answer as it came.
        this.#recentFailures.answered(miss.key);
        const fresh: CacheEntry = this.#scrub !== null ? this.#cache.insert(miss.key, answer, scan, now) : this.#cache.prepare(answer, scan, now);
        for (const w of miss.waiters) {
          // Per client: one that cannot be answered must not cut the others short.
          try {
            const reply = fresh.serve(w, now, this.#out.limit(w, w.channel, w.peer), DEFAULT_EDNS_SIZE);
            if (answered === undefined || !answered(w.peer)) this.#out.send(reply, w.channel, w.peer, w.arrivedAt);
            if (w.logged) this.#out.logQuery(w, w.peer, reply, now - w.arrivedAt, outcome === 'local' ? 'view' : 'upstream');
          } catch (err) {
            this.#out.waiterThrew(err);
          }
        }
        return;
      }
    }
    // A deadline passed opens the recheck window (BIND's stale-refresh-time); a fast failure costs a retry nothing.
    if (outcome === 'timeout') this.#recentFailures.failed(miss.key, now);
    this.#fail(miss, now, answered);
  }

  /**
   * A completion whose clients were all answered elsewhere (`answered(peer)`
   * for each: the batched main thread sent them theirs, and stored the
   * answer in the one cache): the question is closed without reading the
   * answer, and nothing is counted here (whoever answered counted). False,
   * with nothing done, when a client still needs its answer from here or is
   * sampled for the query log, or when the outcome opens or may close the
   * failure recheck window (a timeout; the key failed recently): complete() then.
   */
  release(token: number, answered: (peer: ClientPeer) => boolean, outcome: MissOutcome = 'upstream'): boolean {
    const miss = this.#byToken.get(token);
    if (miss === undefined) return true;
    if (outcome === 'timeout' || this.#recentFailures.has(miss.key)) return false;
    for (const w of miss.waiters) if (w.logged || !answered(w.peer)) return false;
    this.#close(miss, outcome);
    return true;
  }

  /** Questions still waiting on the upstream side. */
  get inflight(): number {
    return this.#byToken.size;
  }

  /** Resolves once nothing is in flight (every miss has a deadline, so this ends). */
  drain(): Promise<void> {
    if (this.#byToken.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = resolve;
    });
  }

  /**
   * Shutdown past its grace period: every client still waiting gets a stale
   * answer or SERVFAIL now, so nothing in flight goes unanswered. Late
   * outcomes from the upstream side are then ignored (unknown tokens).
   */
  abortAll(answered?: (peer: ClientPeer) => boolean): number {
    const now = this.#clock.now();
    let n = 0;
    // In the order they were opened (tokens count up; a wrap puts the newest first, which nothing relies on).
    for (const miss of this.#byToken.values().sort((x, y) => x.token - y.token)) {
      this.#close(miss);
      // Those held by the sink's side (remote, or kept for the log: `answered`) are answered there (direct.ts abort()), counted here.
      n += miss.waiting;
      this.#fail(miss, now, answered);
    }
    this.#v[S.abortedAtShutdown]! += n;
    return n;
  }

  /** One query answered at once (too many waiting on its question, its client over its miss rate, the gate, a recent failure): stale if we have it, else SERVFAIL, or (`servfail` false) nothing and false. `again` as in handle(). */
  #shed(q: QueryScratch, channel: ClientChannel, peer: ClientPeer, now: number, logged: boolean, again: number, servfail = true): boolean {
    const stale = this.#cache.stale(q, now);
    if (stale === undefined && !servfail) return false;
    const reply = stale !== undefined ? stale.serveStale(q, STALE_ANSWER_TTL, this.#out.limit(q, channel, peer), DEFAULT_EDNS_SIZE) : errorResponse(q, Rcode.SERVFAIL);
    this.#out.send(reply, channel, peer, again);
    if (logged) this.#out.logQuery(q, peer, reply, again < 0 ? 0 : now - again, stale !== undefined ? 'stale' : 'servfail');
    return true;
  }

  /** Stale if we have it, else SERVFAIL: the last two steps of the failure order (resolver.ts has the first). */
  #fail(miss: Miss, now: number, answered?: (peer: ClientPeer) => boolean): void {
    if (miss.waiters.length === 0) return;
    let mine = miss.waiters.length;
    if (answered !== undefined) for (const w of miss.waiters) if (answered(w.peer)) mine--;
    // Counted once per client it answers, as #shed counts and CoreDNS does (per response); whoever answered the others counted theirs.
    const stale = this.#cache.stale(miss.key, now, mine);
    for (const w of miss.waiters) {
      // Per client, as in complete(): at shutdown (abortAll) a throw would also leave every later question unanswered.
      try {
        const reply = stale !== undefined ? stale.serveStale(w, STALE_ANSWER_TTL, this.#out.limit(w, w.channel, w.peer), DEFAULT_EDNS_SIZE) : errorResponse(w, Rcode.SERVFAIL);
        if (answered === undefined || !answered(w.peer)) this.#out.send(reply, w.channel, w.peer, w.arrivedAt);
        if (w.logged) this.#out.logQuery(w, w.peer, reply, now - w.arrivedAt, stale !== undefined ? 'stale' : 'servfail');
      } catch (err) {
        this.#out.waiterThrew(err);
      }
    }
  }

  /**
   * Background refresh of a popular entry: a miss with no waiters, which
   * clients may join once the entry expires. A failed refresh is not
   * retried: the entry runs out and the next query is an ordinary miss.
   */
  #refresh(q: QueryScratch): void {
    if (this.#byKey.find(q) !== undefined) return;
    this.#forward(this.#open(q.key, q.keyHash, null), q, true);
  }

  #open(key: string, hash: number, first: Waiter | null): Miss {
    // Tokens wrap long before a double could lose precision; a live token is never reused (2^31 misses apart).
    const token = this.#nextToken;
    this.#nextToken = token >= 0x7fffffff ? 1 : token + 1;
    const miss = new Miss(token, key, hash, first);
    this.#byKey.add(miss);
    this.#byToken.set(token, miss);
    return miss;
  }

  /** `q` is read now (for the upstream query's bytes), not kept. */
  #forward(miss: Miss, q: Query, refresh: boolean): void {
    this.#v[S.misses]!++;
    if (this.#sink === null) {
      this.complete(miss.token, null, 'closed');
      return;
    }
    // May complete synchronously (a local limit): the miss is registered first so complete() finds it.
    this.#sink.forward(miss.token, miss.key, upstreamQuery(q), refresh);
  }

  #close(miss: Miss, outcome?: MissOutcome): void {
    if (miss.opener !== null) closeOpened(miss.opener, outcome);
    this.#byToken.delete(miss.token);
    this.#byKey.remove(miss);
    if (this.#byToken.size === 0 && this.#drained !== null) {
      const done = this.#drained;
      this.#drained = null;
      queueMicrotask(done);
    }
  }
}
