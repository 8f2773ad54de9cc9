/**
 * Per-client (pod IP) token buckets for misses: one runaway pod must not be
 * able to flood kube-dns or the node's resolvers through us. Hits are never
 * limited (they cost the upstream nothing), and a miss that joins an
 * identical one already in flight is free too; only a new upstream question
 * takes a token.
 *
 * Bounded: at most MAX_CLIENTS buckets; when full, the bucket idle longest
 * goes (Map keeps insertion order, and a bucket is re-inserted when used),
 * so an attacker rotating source addresses can only make us forget, never
 * grow.
 *
 * Kept across reloads (keepBuckets): a new limiter would hand every client,
 * a runaway one held at its rate too, a full burst again with each reload
 * (any change of the config, resolv.conf or the ConfigMap, and SIGHUP).
 */

import type { MissOutcome } from './miss-boundary.js';

/** A node runs at most a few hundred pods; the rest of the room is for churn. */
export const MAX_CLIENTS = 4096;

/**
 * The questions one client may have in flight under the limit: a quarter of
 * --max-concurrent (as --max-tcp-per-client is a quarter of the connections).
 * The rate and burst alone do not bound it: against a stalled upstream a
 * pod's burst (1,000 by default) held the whole --max-concurrent (1,000) for
 * a deadline, and every other pod's new question was refused meanwhile.
 */
export function clientInflightCap(maxConcurrent: number): number {
  return Math.max(1, Math.floor(maxConcurrent / 4));
}

/** One client's state; a question it opened holds its bucket (HitPath) to give its room back when closed. */
export interface ClientBucket {
  tokens: number;
  /** Clock ms of the last refill. */
  at: number;
  /** Its questions in flight (opened by it, not yet answered). */
  inflight: number;
}

export class ClientMissLimiter {
  #ratePerMs: number;
  #burst: number;
  #maxInflight: number;
  readonly #buckets: Map<string, ClientBucket>;

  /** `perSecond` misses a client may start each second on average, `burst` at once, with at most `maxInflight` in flight. */
  constructor(perSecond: number, burst: number, maxInflight = Number.POSITIVE_INFINITY) {
    this.#ratePerMs = perSecond / 1000;
    this.#burst = burst;
    this.#maxInflight = maxInflight;
    this.#buckets = new Map();
  }

  get clients(): number {
    return this.#buckets.size;
  }

  get perSecond(): number {
    return this.#ratePerMs * 1000;
  }

  get burst(): number {
    return this.#burst;
  }

  get maxInflight(): number {
    return this.#maxInflight;
  }

  /**
   * New settings, every bucket kept: a client keeps the tokens it has, never
   * more than the new burst (take() caps them as it refills).
   */
  configure(perSecond: number, burst: number, maxInflight: number): void {
    this.#ratePerMs = perSecond / 1000;
    this.#burst = burst;
    this.#maxInflight = maxInflight;
  }

  /**
   * Takes a token for `client` at `now` for a new question, counted in flight
   * until the question closes (HitPath lowers it); null when it has no
   * token left or already has its most in flight.
   */
  take(client: string, now: number): ClientBucket | null {
    let b = this.#buckets.get(client);
    if (b === undefined) {
      if (this.#buckets.size >= MAX_CLIENTS) {
        const oldest = this.#buckets.keys().next().value;
        if (oldest !== undefined) this.#buckets.delete(oldest);
      }
      b = { tokens: this.#burst, at: now, inflight: 0 };
    } else {
      this.#buckets.delete(client);
      b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#ratePerMs);
      b.at = now;
    }
    this.#buckets.set(client, b);
    if (b.tokens < 1 || b.inflight >= this.#maxInflight) return null;
    b.tokens -= 1;
    b.inflight++;
    return b;
  }
}

/**
 * A question `b`'s client opened has closed: its room in flight comes back,
 * and so does its token when the question was refused unsent for our own
 * load ('capped' at --max-concurrent, 'overloaded' at a local limit), as the
 * batched shed gate costs it none: a pod that retried through our overload
 * is not then refused as over its own rate. (take() caps the tokens at the
 * burst as it refills.)
 */
export function closeOpened(b: ClientBucket, outcome: MissOutcome | undefined): void {
  b.inflight--;
  if (outcome === 'capped' || outcome === 'overloaded') b.tokens += 1;
}

/**
 * The limiter after a reload that asks for `next`: the running one with
 * next's settings, its buckets kept; `next` itself only when the limit is
 * switched on or off.
 */
export function keepBuckets(running: ClientMissLimiter | null, next: ClientMissLimiter | null): ClientMissLimiter | null {
  if (running === null || next === null) return next;
  running.configure(next.perSecond, next.burst, next.maxInflight);
  return running;
}
