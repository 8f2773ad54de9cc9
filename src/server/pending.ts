/**
 * A miss on the upstream side: one object per distinct question in flight.
 * It is the UpstreamExchange the transport completes, so a miss costs one
 * object and no promise or closure. It knows its token (to answer across
 * the miss boundary) and its route (health, local answerer).
 */
import type { UpstreamExchange, UpstreamFailure } from '../upstream/types.js';
import type { Route } from './route.js';

/** Who learns the outcome: the resolver. */
export interface PendingOwner {
  answered(p: PendingQuery, answer: Buffer): void;
  failed(p: PendingQuery, reason: UpstreamFailure): void;
  /** The transport is done with it (answered, failed, or late after a claim): its upstream slot is free. */
  released(p: PendingQuery): void;
}

export class PendingQuery implements UpstreamExchange {
  readonly token: number;
  readonly key: string;
  readonly route: Route;
  readonly query: Buffer;
  /** Clock ms when it was sent. */
  readonly sentAt: number;
  /** Clock ms when its client asked: sentAt, or for a question asked again (after a reload) the first send's; --fallback-after and an ExternalName target's budget count from it. */
  readonly askedAt: number;
  /** The route's timeout from sentAt, and never past the first send's: a question asked again keeps its client's deadline. */
  readonly deadline: number;
  readonly #owner: PendingOwner;
  /** The outcome is decided (by the transport, or claimed by a local answer). */
  #done: boolean;
  /** The transport has completed it. */
  #released: boolean;

  /** `retryOf`: the exchange whose upstream closed it (a reload), whose question this asks again. */
  constructor(owner: PendingOwner, token: number, key: string, route: Route, query: Buffer, sentAt: number, retryOf: PendingQuery | null = null) {
    this.#owner = owner;
    this.sentAt = sentAt;
    this.askedAt = retryOf === null ? sentAt : retryOf.askedAt;
    this.token = token;
    this.key = key;
    this.route = route;
    this.query = query;
    this.deadline = retryOf === null ? sentAt + route.timeoutMs : Math.min(sentAt + route.timeoutMs, retryOf.deadline);
    this.#done = false;
    this.#released = false;
  }

  get done(): boolean {
    return this.#done;
  }

  /** Takes the outcome away from the transport (answered another way); false when it already completed. */
  claim(): boolean {
    if (this.#done) return false;
    this.#done = true;
    return true;
  }

  // The transports promise exactly-once; the guards make a broken promise harmless rather than a double answer.
  resolve(answer: Buffer): void {
    if (!this.#release()) return;
    this.#owner.answered(this, answer);
  }

  reject(reason: UpstreamFailure): void {
    if (!this.#release()) return;
    this.#owner.failed(this, reason);
  }

  /** True when the owner should hear the outcome (not already decided). */
  #release(): boolean {
    if (!this.#released) {
      this.#released = true;
      this.#owner.released(this);
    }
    if (this.#done) return false;
    this.#done = true;
    return true;
  }
}
