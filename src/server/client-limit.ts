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
 */

/** A node runs at most a few hundred pods; the rest of the room is for churn. */
export const MAX_CLIENTS = 4096;

interface Bucket {
  tokens: number;
  /** Clock ms of the last refill. */
  at: number;
}

export class ClientMissLimiter {
  readonly #ratePerMs: number;
  readonly #burst: number;
  readonly #buckets: Map<string, Bucket>;

  /** `perSecond` misses a client may start each second on average, `burst` at once. */
  constructor(perSecond: number, burst: number) {
    this.#ratePerMs = perSecond / 1000;
    this.#burst = burst;
    this.#buckets = new Map();
  }

  get clients(): number {
    return this.#buckets.size;
  }

  /** Takes a token for `client` at `now`; false when it has none left. */
  take(client: string, now: number): boolean {
    let b = this.#buckets.get(client);
    if (b === undefined) {
      if (this.#buckets.size >= MAX_CLIENTS) {
        const oldest = this.#buckets.keys().next().value;
        if (oldest !== undefined) this.#buckets.delete(oldest);
      }
      b = { tokens: this.#burst, at: now };
    } else {
      this.#buckets.delete(client);
      b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#ratePerMs);
      b.at = now;
    }
    this.#buckets.set(client, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
