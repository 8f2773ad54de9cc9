/**
 * One exchange of HostResolvers (host-resolvers.ts) from send() until it
 * completes: which servers it has tried and in what order, the try that is
 * current, the tries still listening, and a SERVFAIL/NOTIMP/REFUSED answer kept in
 * case no other server does better; and which server the next try goes to,
 * in glibc res_send's order (the host-resolvers.ts header), skipping servers
 * that already answered one of those to this query. Plain data and that
 * choice; every transition is HostResolvers'.
 */
import type { UpstreamExchange, UpstreamFailure } from './types.js';
import type { QueryAttempt } from './udp-client.js';

export class HostJob {
  readonly ex: UpstreamExchange;
  readonly start: number;
  readonly total: number;
  tries: number;
  lastServer: number;
  /** The newest try: its timeout starts the next one. Null only inside a transition. */
  current: QueryAttempt<HostJob> | null;
  /** Every try still listening, oldest first, `current` included. */
  readonly live: QueryAttempt<HostJob>[];
  lastFailure: UpstreamFailure;
  /** A SERVFAIL/NOTIMP/REFUSED answer kept in case no other server does better. */
  badAnswer: Buffer | null;
  /** Servers that answered SERVFAIL/NOTIMP/REFUSED; not asked again for this query. */
  badServers: Set<number> | null;
  done: boolean;
  constructor(ex: UpstreamExchange, start: number, total: number) {
    this.ex = ex;
    this.start = start;
    this.total = total;
    this.tries = 0;
    this.lastServer = -1;
    this.current = null;
    this.live = [];
    this.lastFailure = 'timeout';
    this.badAnswer = null;
    this.badServers = null;
    this.done = false;
  }

  /** The server (index among `n`) the next try goes to, counting the try; -1 when tries or time (at `now`) have run out. */
  nextServer(n: number, now: number): number {
    while (this.tries < this.total && now < this.ex.deadline) {
      const idx = (this.start + this.tries) % n;
      this.tries++;
      if (this.badServers !== null && this.badServers.has(idx)) continue;
      return idx;
    }
    return -1;
  }
}
