/**
 * The hit path's side of a miss (hit-path.ts): one question in flight and
 * the clients waiting on it, each with its own snapshot of its query (the
 * datagram it came in is reused as soon as handle() returns). Kept apart so
 * hit-path.ts reads as the decisions, and this file as what a waiting
 * client keeps.
 */
import { copyBytes } from '../dns/name.js';
import { hashKey, QuerySnapshot, type Query, type QueryScratch } from '../dns/query.js';
import type { ClientBucket } from './client-limit.js';
import type { ClientChannel, ClientPeer } from './listener.js';
import { HashChains } from '../int-table.js';

/**
 * Clients that may wait on one question in flight. Without a cap they grow
 * with rate x deadline: a popular name during an upstream stall at 100k q/s
 * would hold 200,000 waiters (tens of MB) for 2 s. Past it a query is shed at
 * once with what a failed upstream would give (stale, else SERVFAIL), cheaply
 * and without queueing; glibc retries, by then the question is answered.
 */
export const MAX_WAITERS_PER_QUESTION = 1024;

/**
 * How many of one question's waiting slots one client address may hold: a
 * pod whose threads ask one name at once, or that retries it, still waits
 * for the answer; one that floods the name is shed past it (as past
 * MAX_WAITERS_PER_QUESTION), and the other 960 slots stay for other pods.
 */
export const MAX_WAITERS_PER_CLIENT = 64;
/** ClientShares' table: sets of ways, each way one (question, client) pair and its count. */
const SHARE_WAYS = 4;
const SHARE_SETS = 1024;

/**
 * Each client's count of waiters per question in flight, in a fixed table
 * (no object or Map per question, nothing allocated per query; 48 KB). A
 * pair's set comes from its token and client hash; a pair not in it takes
 * the way of a question no longer in flight (so nothing is ever removed),
 * else of the pair holding least: a pair forgotten starts again from 0, so
 * a client at its share is the last to lose its count.
 */
export class ClientShares {
  readonly #token = new Int32Array(SHARE_SETS * SHARE_WAYS);
  readonly #client = new Int32Array(SHARE_SETS * SHARE_WAYS);
  readonly #count = new Int32Array(SHARE_SETS * SHARE_WAYS);
  /** The questions in flight by token (tokens start at 1: an empty way's 0 is never in flight). */
  readonly #live: { get(token: number): unknown };

  constructor(live: { get(token: number): unknown }) {
    this.#live = live;
  }

  /** One more of `client`'s queries waits on question `token`; false, nothing counted, when it holds its share already. */
  take(token: number, client: number): boolean {
    const base = (Math.imul(client ^ Math.imul(token, 0x85ebca6b), 0x9e3779b1) >>> 22) * SHARE_WAYS;
    for (let i = base; i < base + SHARE_WAYS; i++) {
      if (this.#token[i] !== token || this.#client[i] !== client) continue;
      if (this.#count[i]! >= MAX_WAITERS_PER_CLIENT) return false;
      this.#count[i]!++;
      return true;
    }
    let way = base;
    let least = Infinity;
    for (let i = base; i < base + SHARE_WAYS; i++) {
      const n = this.#live.get(this.#token[i]!) === undefined ? 0 : this.#count[i]!;
      if (n < least) {
        least = n;
        way = i;
      }
    }
    this.#token[way] = token;
    this.#client[way] = client;
    this.#count[way] = 1;
    return true;
  }
}

/** A client's address as a number for ClientShares: the peer's own when it has one (batched: no string decoded), else its text hashed. */
export function clientHash(peer: ClientPeer): number {
  return peer.addressHash ?? hashKey(peer.address);
}

/**
 * One client waiting on a miss: its own snapshot of its query (the header
 * and question copied, with the query's parsed fields) and where to answer,
 * in one object. Under a miss flood a batched worker keeps thousands of
 * these, and each young-generation collection copies the young ones with
 * the worker's hits waiting: a Query and a waiter object apart cost one
 * object more each.
 */
export class Waiter extends QuerySnapshot {
  readonly channel: ClientChannel;
  readonly peer: ClientPeer;
  /** Clock ms when the query arrived, for duration histograms. */
  readonly arrivedAt: number;
  /** Chosen for the sampled query log: logged when answered. */
  readonly logged: boolean;

  /**
   * `q` may be the scratch the next query is parsed into, its message a view
   * of a receive buffer reused as soon as handle() returns: both are copied.
   */
  constructor(q: Query, key: string, channel: ClientChannel, peer: ClientPeer, arrivedAt: number, logged: boolean) {
    const end = q.qnameEnd + 4;
    const msg = Buffer.allocUnsafe(end);
    copyBytes(q.msg, 0, msg, 0, end);
    super(q, msg, key);
    this.channel = channel;
    this.peer = peer;
    this.arrivedAt = arrivedAt;
    this.logged = logged;
  }
}

/** One distinct question in flight: its waiters (none for a background refresh). */
export class Miss {
  readonly token: number;
  readonly key: string;
  /** The key's hash (dns/query.ts hashKey), where InFlight files it. */
  readonly hash: number;
  /** The next question in flight whose key has the same hash (InFlight's chain). */
  sameHash: Miss | undefined;
  readonly waiters: Waiter[];
  /** Clients waiting that the sink's side holds and answers (HitPathOptions.remoteWaiters): counted, not kept. */
  remote: number;
  /** The bucket of the client that opened it under --client-miss-rate: its in-flight count drops when it closes. */
  opener: ClientBucket | null;
  /**
   * `first`: the client that asked (null for a refresh, or one held remotely). Most misses keep
   * one waiter until the answer, so the list starts with exactly that room:
   * an empty list would grow to 17 slots on its first push, and under a miss
   * flood these lists are what a worker's young generation copies.
   */
  constructor(token: number, key: string, hash: number, first: Waiter | null) {
    this.token = token;
    this.key = key;
    this.hash = hash;
    this.sameHash = undefined;
    this.waiters = first === null ? [] : [first];
    this.remote = 0;
    this.opener = null;
  }

  /** Every client waiting on it, kept here or held remotely. */
  get waiting(): number {
    return this.waiters.length + this.remote;
  }
}

/**
 * The questions in flight by key, found from a parsed query's key bytes and
 * hash: a query that joins one, or is shed, makes no key string. Under a
 * miss flood a batched worker sheds most of what it receives, and that
 * string was the largest garbage each shed query left. Keys that share a
 * hash are chained (Miss.sameHash); a key is in flight at most once.
 */
export class InFlight {
  readonly #byHash = new HashChains<Miss>();

  find(q: QueryScratch): Miss | undefined {
    for (let m = this.#byHash.first(q.keyHash); m !== undefined; m = m.sameHash) if (sameKey(m.key, q.keyBytes, q.keyLen)) return m;
    return undefined;
  }

  add(miss: Miss): void {
    this.#byHash.add(miss);
  }

  /** Takes `miss` out, if it is in. */
  remove(miss: Miss): void {
    this.#byHash.remove(miss);
  }
}

/** The latin1 key string is the key bytes[0, len). */
function sameKey(key: string, bytes: Uint8Array, len: number): boolean {
  if (key.length !== len) return false;
  for (let i = 0; i < len; i++) if (key.charCodeAt(i) !== bytes[i]) return false;
  return true;
}

/** RFC 8767 5's failure recheck timer: how long after a timeout a question is not asked again while a stale answer can be given. */
export const FAILURE_RECHECK_MS = 30_000;
/** Names remembered at once; past it the oldest is forgotten (it is then asked once more, as before the window). */
export const MAX_RECENT_FAILURES = 4096;

/**
 * Questions whose upstream timed out recently. While an upstream is down every
 * query for an expired name would otherwise wait out the whole deadline (up
 * to 4.5 s for the host's resolvers) before its stale answer; inside the
 * window it gets that answer at once, and the upstream is asked again once
 * the window has passed.
 */
export class RecentFailures {
  readonly #at = new Map<string, number>();
  /**
   * How many of those keys have each hash (dns/query.ts hashKey): a query
   * whose hash is not here is ruled out without its key string. A flood
   * brings timeouts, and then every new miss beside it asked this.
   */
  readonly #hashes = new Map<number, number>();

  failed(key: string, now: number): void {
    if (!this.#at.delete(key)) this.#count(hashKey(key), 1);
    this.#at.set(key, now);
    if (this.#at.size > MAX_RECENT_FAILURES) this.#forget(this.#at.keys().next().value!);
  }

  /** `key` is in the window (or was, and is not yet forgotten). */
  has(key: string): boolean {
    return this.#at.size !== 0 && this.#at.has(key);
  }

  answered(key: string): void {
    if (this.#at.size !== 0) this.#forget(key);
  }

  /** True while `q`'s key failed less than FAILURE_RECHECK_MS ago (its key string is read only when one with its hash did). */
  holds(q: { readonly key: string; readonly keyHash: number }, now: number): boolean {
    if (this.#at.size === 0 || !this.#hashes.has(q.keyHash)) return false;
    const key = q.key;
    const at = this.#at.get(key);
    if (at === undefined) return false;
    if (now - at < FAILURE_RECHECK_MS) return true;
    this.#forget(key);
    return false;
  }

  #forget(key: string): void {
    if (this.#at.delete(key)) this.#count(hashKey(key), -1);
  }

  #count(hash: number, d: number): void {
    const n = (this.#hashes.get(hash) ?? 0) + d;
    if (n <= 0) this.#hashes.delete(hash);
    else this.#hashes.set(hash, n);
  }
}
