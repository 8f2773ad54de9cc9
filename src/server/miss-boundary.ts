/**
 * The miss boundary's contract (hit-path.ts): what the hit path hands the
 * upstream side (MissSink), what comes back (MissOutcome), and the gate a
 * new miss may be turned away at (MissGate). Kept apart so the upstream side
 * (resolver.ts, the batched miss exchange and its protocol) reads the
 * boundary without the hit path's code; hit-path.ts re-exports it.
 */

/**
 * How a miss came back: with an answer from the upstream or the local view,
 * or failed, and why. On a failure the upstream side has already tried what
 * it could (the local view, when the route has one); the hit path then
 * answers stale if it can, else SERVFAIL.
 */
export type MissOutcome =
  | 'upstream' // answered by the upstream
  | 'local' // answered by the route's local answerer (the cluster view)
  | 'timeout' // no answer by the deadline
  | 'network' // unreachable, reset, refused
  | 'overloaded' // a local limit (an upstream's own in-flight cap, a worker's): never sent
  | 'capped' // --max-concurrent, the cap across every upstream: never sent
  | 'closed' // shutting down
  | 'servfail' // the upstream answered SERVFAIL or REFUSED
  | 'malformed'; // the upstream's answer failed validation

/** The upstream side of the boundary. */
export interface MissSink {
  /**
   * Resolve `query` (our canonical upstream form) for cache key `key`; call
   * HitPath.complete(token, ...) exactly once, now or later. `refresh`: a
   * background refresh of a cached entry (no client waits on it).
   */
  forward(token: number, key: string, query: Buffer, refresh?: boolean): void;
}

/**
 * Asked before a new question goes to the upstream side (after coalescing,
 * before the per-client limit: a miss turned away here costs its client no
 * token): false turns it away at once with what a failed upstream would
 * give (stale, else SERVFAIL). A batched worker's ShedGate, while the main
 * thread is refusing misses for load.
 */
export interface MissGate {
  /** `q`: the parsed query, its cache key in keyBytes[0, keyLen) (dns/query.ts): read as bytes, no key string made. */
  admits(q: { readonly keyBytes: Uint8Array; readonly keyLen: number; readonly keyHash: number }): boolean;
}
