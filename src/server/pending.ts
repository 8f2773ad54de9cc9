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
}

export class PendingQuery implements UpstreamExchange {
  readonly token: number;
  readonly key: string;
  readonly route: Route;
  readonly query: Buffer;
  /** Clock ms when it was sent. */
  readonly sentAt: number;
  readonly deadline: number;
  readonly #owner: PendingOwner;
  #done: boolean;

  constructor(owner: PendingOwner, token: number, key: string, route: Route, query: Buffer, sentAt: number) {
    this.#owner = owner;
    this.sentAt = sentAt;
    this.token = token;
    this.key = key;
    this.route = route;
    this.query = query;
    this.deadline = sentAt + route.timeoutMs;
    this.#done = false;
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
