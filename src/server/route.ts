/**
 * Where a zone's misses go: an upstream (with its health), how long the
 * whole exchange may take there, and optionally a local answerer (the
 * cluster view, for the cluster zones) that answers when the upstream
 * cannot.
 */
import type { Upstream } from '../upstream/types.js';

/**
 * A local answer in upstream form (id 0, question, records, no OPT), cached
 * and served like any other. `chase` is '' unless the answer ends in a CNAME
 * to a name outside the zone (an ExternalName service): the resolver then
 * looks that name up through its own route and appends what it gets, as
 * CoreDNS does.
 */
export type LocalAnswer = { readonly answer: Buffer; readonly chase: string } | null;

/** Answers a question without the upstream (the cluster view), or says it cannot (null). */
export interface LocalAnswerer {
  answer(key: string): LocalAnswer;
  /** The name certainly does not exist (search-path junk under the cluster zone); false when in any doubt. */
  deniesForSure(key: string): boolean;
}

export interface Route {
  readonly upstream: Upstream;
  /** The exchange's deadline: the cluster pool's single try, or a host resolver's tries across its servers. */
  readonly timeoutMs: number;
  readonly local: LocalAnswerer | null;
}
