/**
 * The hit path's side of a miss (hit-path.ts): one question in flight and
 * the clients waiting on it, each with its own snapshot of its query (the
 * datagram it came in is reused as soon as handle() returns). Kept apart so
 * hit-path.ts reads as the decisions, and this file as what a waiting
 * client keeps.
 */
import { queryCopy, type Query } from '../dns/query.js';
import type { ClientChannel, ClientPeer } from './listener.js';

/** One client waiting on a miss: a private copy of its query header and question, and where to answer. */
export interface Waiter {
  readonly q: Query;
  readonly channel: ClientChannel;
  readonly peer: ClientPeer;
  /** Clock ms when the query arrived, for duration histograms. */
  readonly arrivedAt: number;
  /** Chosen for the sampled query log: logged when answered. */
  readonly logged: boolean;
}

/** One distinct question in flight: its waiters (none for a background refresh). */
export class Miss {
  readonly token: number;
  readonly key: string;
  readonly waiters: Waiter[];
  /**
   * `first`: the client that asked (null for a refresh). Most misses keep
   * one waiter until the answer, so the list starts with exactly that room:
   * an empty list would grow to 17 slots on its first push, and under a miss
   * flood these lists are what a worker's young generation copies.
   */
  constructor(token: number, key: string, first: Waiter | null) {
    this.token = token;
    this.key = key;
    this.waiters = first === null ? [] : [first];
  }
}

/**
 * A waiter's own snapshot of the query, with its own copy of the header and
 * question: the client's datagram may be a view of a receive buffer that is
 * reused as soon as handle() returns, and `q` the scratch the next query is
 * parsed into.
 */
export function retain(q: Query, key: string): Query {
  const end = q.qnameEnd + 4;
  const msg = Buffer.allocUnsafe(end);
  q.msg.copy(msg, 0, 0, end);
  return queryCopy(q, msg, key);
}
