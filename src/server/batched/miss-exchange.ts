/**
 * The main thread's side of the workers' miss boundary: misses from every
 * worker, and from the main thread's own hit path (TCP), go to one MissSink
 * (the Resolver), identical questions in flight
 * from several workers share one upstream query, and each outcome is handed
 * back to every worker that asked, under that worker's own token.
 *
 *   worker A ─ (a7, key, query) ─┐                     ┌─► A: complete(a7, ...)
 *   worker B ─ (b3, key, query) ─┴► Shared{t42} ─ forward(t42) ─► Resolver
 *                                   Resolver ─ complete(t42, answer) ─┘ └─► B: complete(b3, ...)
 *
 * The exchange stores every answer in the one cache all threads read
 * (listener.ts): from then on every worker hits the name itself. A worker's
 * miss is asked of that cache first (TTLs aged), because the entry may have
 * arrived since the worker looked, or the worker's lock-free read gave up
 * while the store was changing under it. A refresh is not answered from an
 * entry due for prefetch, so it always reaches the upstream; a client's miss
 * still is, until the entry expires.
 */
import type { DnsCache } from '../../cache/cache.js';
import { HashChains, IntTable } from '../../int-table.js';
import type { CacheEntry } from '../../cache/entry.js';
import type { Clock } from '../../clock.js';
import { scanAnswer, type AnswerScan } from '../../dns/answer.js';
import { DEFAULT_EDNS_SIZE } from '../../dns/build.js';
import { MAX_MESSAGE } from '../../dns/constants.js';
import { QueryStatus, hashKey, parseQuery } from '../../dns/query.js';
import type { UpstreamLoad } from '../upstream-load.js';
import type { MissOutcome, MissSink } from '../hit-path.js';
import { scrubCounted } from '../scrub.js';
import { serverFailed } from '../../upstream/health.js';
import type { ServerCounters } from '../stats.js';
import type { MissCompleter } from '../resolver.js';
import { BATCHED_COUNTERS, type BatchedCounters } from './stats.js';

const S = BATCHED_COUNTERS.slot;

/** A worker as the exchange sees it: somewhere to hand outcomes. */
export interface MissReturn {
  /** False once nothing there waits for outcomes any more (a worker gone, and the clients the main thread held for it too): they are dropped. */
  readonly listening: boolean;
  /**
   * `scan`: the answer's scanAnswer() when this side made one (undefined: not made, or malformed), so it is read once;
   * `stored`: the entry the one cache made of it (DnsCache.insert, stored or not), which the clients held here are served from.
   */
  deliver(token: number, answer: Buffer | null, outcome: MissOutcome, scan?: AnswerScan, stored?: CacheEntry): void;
  /**
   * One of its questions was refused at --max-concurrent (outcome 'capped'):
   * a worker sheds its next misses itself for a while (shed-gate.ts). Only
   * that cap: it turns away every route's misses alike, as the worker does;
   * one upstream's own limit ('overloaded') says nothing of the others.
   */
  refusedForLoad(): void;
}

interface Waiter {
  readonly to: MissReturn;
  readonly token: number;
}

class Shared {
  readonly token: number;
  readonly key: string;
  /** Its key's hash (dns/query.ts hashKey): where it is found by key, and where the workers see it in flight (upstream-load.ts). */
  readonly hash: number;
  readonly waiters: Waiter[];
  /** The next question in flight whose key has the same hash (MissExchange #byHash). */
  sameHash: Shared | undefined;
  constructor(token: number, key: string, hash: number, first: Waiter) {
    this.token = token;
    this.key = key;
    this.hash = hash;
    this.waiters = [first];
    this.sameHash = undefined;
  }
}

export interface MissExchangeOptions {
  /** Main-thread slots of the batched block: cross-worker coalescing, shared-cache hits. */
  readonly counters: BatchedCounters;
  /** The scrub's counts (nodelocal_bailiwick_scrubbed_*). */
  readonly server: ServerCounters;
  /** The one cache the workers read (its exchangeView); null: answers are only handed back. */
  readonly shared: DnsCache | null;
  readonly clock: Clock;
  /** Where the workers' shed gates read which questions are in flight; absent: nowhere (tests). */
  readonly load?: UpstreamLoad;
}

export class MissExchange implements MissCompleter {
  #sink: MissSink | null;
  /**
   * Questions in flight by their key's hash, those sharing one chained (Shared.sameHash), and by token: tables that
   * make no garbage per miss (int-table.ts says why a Map did, in the old generation).
   */
  readonly #byHash: HashChains<Shared>;
  readonly #byToken: IntTable<Shared>;
  #nextToken: number;
  /** Main-thread slots: cross-worker coalescing, shared-cache hits. */
  readonly #v: Float64Array;
  /** Where the bailiwick scrub is counted (the listener's own server block, summed with the workers'). */
  readonly #server: Float64Array;
  readonly #shared: DnsCache | null;
  readonly #clock: Clock;
  readonly #load: UpstreamLoad | null;

  constructor(o: MissExchangeOptions) {
    this.#sink = null;
    this.#byHash = new HashChains();
    this.#byToken = new IntTable();
    this.#nextToken = 1;
    this.#v = o.counters.values;
    this.#server = o.server.values;
    this.#shared = o.shared;
    this.#clock = o.clock;
    this.#load = o.load ?? null;
  }

  /** Wires the upstream side (the Resolver); set once before the first miss. */
  connect(sink: MissSink): void {
    this.#sink = sink;
  }

  /** Questions in flight on the upstream side. */
  get inflight(): number {
    return this.#byToken.size;
  }

  /** A worker's miss; `refresh`: a background refresh of an entry it hit (no client waits on it). */
  forward(from: MissReturn, token: number, key: string, query: Buffer, refresh = false): void {
    if (this.#shared !== null && this.#fromShared(from, token, key, query, refresh)) return;
    const waiter: Waiter = { to: from, token };
    const hash = hashKey(key);
    const shared = this.#find(key, hash);
    if (shared !== undefined) {
      this.#v[S.crossWorkerCoalesced]!++;
      shared.waiters.push(waiter);
      return;
    }
    if (this.#sink === null) {
      from.deliver(token, null, 'closed');
      return;
    }
    // Tokens wrap long before a double could lose precision; a live token is never reused (2^31 misses apart).
    const t = this.#nextToken;
    this.#nextToken = t >= 0x7fffffff ? 1 : t + 1;
    const s = new Shared(t, key, hash, waiter);
    this.#byHash.add(s);
    this.#byToken.set(t, s);
    this.#load?.mark(hash, 1);
    // May complete synchronously: registered first so complete() finds it.
    this.#sink.forward(t, key, query);
  }

  /** A MissSink whose misses are `to`'s (the main thread's hit path: see BatchedUdpListener.mainSink). */
  sinkFor(to: MissReturn): MissSink {
    return { forward: (token, key, query, refresh) => this.forward(to, token, key, query, refresh) };
  }

  /**
   * MissCompleter: the upstream side's outcome, fanned out to every worker
   * that asked. Unknown tokens are ignored. An upstream answer is scrubbed
   * here, once, before it is stored and handed on: every hit path behind the
   * exchange is connected as validated and serves it as it comes.
   */
  complete(token: number, answer: Buffer | null, outcome: MissOutcome): void {
    const s = this.#byToken.get(token);
    if (s === undefined) return;
    this.#byToken.delete(token);
    this.#byHash.remove(s);
    this.#load?.mark(s.hash, -1);
    if (answer !== null && outcome === 'upstream') answer = scrubCounted(answer, this.#server);
    // Read once, here, for the store and for every main-thread answer to the workers' clients (direct.ts).
    const scan = answer === null ? undefined : scanAnswer(answer);
    const stored = this.#shared !== null && scan !== undefined ? this.#store(s.key, answer!, scan) : undefined;
    for (const w of s.waiters) {
      if (!w.to.listening) continue;
      w.to.deliver(w.token, answer, outcome, scan, stored);
      if (outcome === 'capped') w.to.refusedForLoad();
    }
  }

  /** The question in flight for `key` (its hash `hash`), if one is. */
  #find(key: string, hash: number): Shared | undefined {
    for (let s = this.#byHash.first(hash); s !== undefined; s = s.sameHash) if (s.key === key) return s;
    return undefined;
  }

  /**
   * Answers a miss from the shared cache when it holds the key fresh, and a
   * refresh only while the entry is not yet due for one (one claimed after
   * another refresh stored the answer).
   */
  #fromShared(from: MissReturn, token: number, key: string, query: Buffer, refresh: boolean): boolean {
    const now = this.#clock.now();
    const entry = this.#shared!.lookup(key, now);
    if (entry === undefined || (refresh && now >= entry.prefetchAt)) return false;
    // The worker's own upstream form of the question: the answer comes back with its id and spelling, and our OPT.
    const q = parseQuery(query);
    if (q.status !== QueryStatus.OK) return false;
    this.#v[S.sharedHits]!++;
    from.deliver(token, entry.serve(q, now, MAX_MESSAGE, DEFAULT_EDNS_SIZE), 'upstream');
    return true;
  }

  /** Stores the (scrubbed) answer in the one cache the workers read (the same validation and policy as every insert). */
  #store(key: string, answer: Buffer, scan: AnswerScan): CacheEntry | undefined {
    if (serverFailed(scan.rcode)) return undefined;
    return this.#shared!.insert(key, answer, scan, this.#clock.now());
  }
}
