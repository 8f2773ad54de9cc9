/**
 * Retry delays against the API server: the numbers of client-go's reflector
 * (tools/cache/reflector.go, NewExponentialBackoffManager(800ms, 30s, 2min,
 * 2.0, 1.0)). Every node runs one reflector per kind, so what matters is the
 * load a whole cluster puts on a sick API server: once capped, each retries
 * once per 30-60 s, so 5,000 nodes x 3 kinds make about 330 requests/s instead
 * of 15,000/s at a fixed 1 s. The random factor in [1, 2) keeps nodes that
 * lost the API server at the same moment from coming back in lockstep.
 */
export interface BackoffPolicy {
  readonly initialMs: number;
  readonly capMs: number;
  /** With no failure for this long, the next failure starts again at initialMs. */
  readonly resetMs: number;
}

export const backoffDefaults: BackoffPolicy = { initialMs: 800, capMs: 30_000, resetMs: 120_000 };

/** Delay before retry number `attempt` (0-based); `random` in [0, 1). */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: number): number {
  const base = Math.min(policy.capMs, policy.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 + random));
}

/** The failure streak of one reflector; time comes from the caller's Clock. */
export class Backoff {
  readonly #policy: BackoffPolicy;
  #attempt = 0;
  #lastFailureMs = Number.NEGATIVE_INFINITY;

  constructor(policy: BackoffPolicy) {
    this.#policy = policy;
  }

  /** Records a failure at `nowMs` and returns how long to wait before retrying. */
  next(nowMs: number, random: number): number {
    if (nowMs - this.#lastFailureMs >= this.#policy.resetMs) this.#attempt = 0;
    this.#lastFailureMs = nowMs;
    return backoffDelay(this.#policy, this.#attempt++, random);
  }
}
