/**
 * A cache miss on its way upstream: one object per distinct question in
 * flight, shared by every client asking it meanwhile (coalescing). It is the
 * UpstreamExchange the transport completes, so a miss costs one object and no
 * promise or closure.
 */
import type { Query } from '../dns/query.js';
import type { UpstreamExchange, UpstreamFailure } from '../upstream/types.js';
import type { ClientChannel, ClientPeer } from './listener.js';

export interface Waiter {
  readonly q: Query;
  readonly channel: ClientChannel;
  readonly peer: ClientPeer;
}

/** Who learns the outcome: the resolver. */
export interface PendingOwner {
  answered(p: PendingQuery, answer: Buffer): void;
  failed(p: PendingQuery, reason: UpstreamFailure): void;
}

export class PendingQuery implements UpstreamExchange {
  readonly key: string;
  readonly query: Buffer;
  readonly deadline: number;
  /** Clients to answer; empty for a background refresh (prefetch). */
  readonly waiters: Waiter[];
  readonly #owner: PendingOwner;
  #done: boolean;

  constructor(owner: PendingOwner, key: string, query: Buffer, deadline: number) {
    this.#owner = owner;
    this.key = key;
    this.query = query;
    this.deadline = deadline;
    this.waiters = [];
    this.#done = false;
  }

  // The transports promise exactly-once; the guard makes a broken promise harmless rather than a double answer.
  resolve(answer: Buffer): void {
    if (this.#done) return;
    this.#done = true;
    this.#owner.answered(this, answer);
  }

  reject(reason: UpstreamFailure): void {
    if (this.#done) return;
    this.#done = true;
    this.#owner.failed(this, reason);
  }
}
