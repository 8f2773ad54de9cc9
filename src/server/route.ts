/**
 * Where a zone's misses go: an upstream (with its health), how long the
 * whole exchange may take there, and optionally a local answerer (the
 * cluster view, for the cluster zones) that answers when the upstream
 * cannot.
 */
import type { Upstream } from '../upstream/types.js';

/**
 * Answers a question without the upstream, or says it cannot. Returns an
 * answer in upstream form (id 0, question, records, no OPT) so it is cached
 * and served like any other, or null when it has nothing to say.
 */
export interface LocalAnswerer {
  answer(key: string, query: Buffer): Buffer | null;
}

export interface Route {
  readonly upstream: Upstream;
  /** The exchange's deadline: the cluster pool's single try, or a host resolver's tries across its servers. */
  readonly timeoutMs: number;
  readonly local: LocalAnswerer | null;
}
