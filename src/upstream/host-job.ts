/**
 * One exchange of HostResolvers (host-resolvers.ts) from send() until it
 * completes: which servers it has tried and in what order, the try that is
 * current, the tries still listening, and a SERVFAIL/NOTIMP/REFUSED answer kept in
 * case no other server does better; and which server the next try goes to:
 * round after round in the order it was given (server-order.ts), skipping
 * servers that already answered one of those to this query. Plain data and
 * that choice; every transition is HostResolvers'.
 */
import { HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT, QType, RCODE_MASK, Rcode } from '../dns/constants.js';
import { skipUncompressedName } from '../dns/name.js';
import type { UpstreamExchange, UpstreamFailure } from './types.js';
import type { QueryAttempt } from './udp-client.js';

export class HostJob {
  readonly ex: UpstreamExchange;
  /** The servers of one round, in the order asked. */
  readonly round: readonly number[];
  readonly total: number;
  /** A recheck of a server moved back (server-order.ts), not a client's exchange: it feeds neither health nor exchange counts. */
  readonly recheck: boolean;
  tries: number;
  lastServer: number;
  /** The newest try: its timeout starts the next one. Null inside a transition, or once out of tries while earlier ones listen. */
  current: QueryAttempt<HostJob> | null;
  /** Clock ms when the newest try times out: out of tries, the earlier ones listen until then. */
  lastDeadline: number;
  /** Every try still listening, oldest first, `current` included. */
  readonly live: QueryAttempt<HostJob>[];
  lastFailure: UpstreamFailure;
  /** A SERVFAIL/NOTIMP/REFUSED answer kept in case no other server does better. */
  badAnswer: Buffer | null;
  /** Servers that answered SERVFAIL/NOTIMP/REFUSED; not asked again for this query. */
  badServers: Set<number> | null;
  /** The query without its OPT record, once a server answered that it does not know EDNS; asked so from then on. */
  plainQuery: Buffer | null;
  noEdns: Set<number> | null;
  done: boolean;
  /** Its key among the exchanges in flight (HostResolvers' KeyedSet). */
  tableKey: number;
  constructor(ex: UpstreamExchange, round: readonly number[], rounds: number, recheck = false) {
    this.ex = ex;
    this.round = round;
    this.total = rounds * round.length;
    this.recheck = recheck;
    this.tries = 0;
    this.lastServer = -1;
    this.current = null;
    this.lastDeadline = 0;
    this.live = [];
    this.lastFailure = 'timeout';
    this.badAnswer = null;
    this.badServers = null;
    this.plainQuery = null;
    this.noEdns = null;
    this.done = false;
    this.tableKey = 0;
  }

  /** What server `idx` is sent: the query as given, or without OPT to a server that does not know EDNS. */
  queryFor(idx: number): Buffer {
    return this.noEdns !== null && this.noEdns.has(idx) ? this.plainQuery! : this.ex.query;
  }

  /**
   * What FORMERR or NOTIMP without OPT from server `idx` to the query `sent` says: 'retry' when `sent` carried OPT
   * and the server was asked with it so far (a server from before EDNS, RFC 6891 7, RFC 2671 5.3; one that knows
   * EDNS answers a query with OPT with one): `idx` is asked without OPT from now
   * on, for this query, as glibc would ask it; 'stale' when it answers an earlier try with OPT while the retry
   * without is under way (a lost try answered late): nothing to take from it. Null for any other answer.
   */
  ednsRefusal(idx: number, answer: Buffer, sent: Buffer): 'retry' | 'stale' | null {
    const rcode = answer[OFF_FLAGS + 1]! & RCODE_MASK;
    if ((rcode !== Rcode.FORMERR && rcode !== Rcode.NOTIMP) || answer.readUInt16BE(OFF_ARCOUNT) !== 0 || sent !== this.ex.query) return null;
    if (this.noEdns !== null && this.noEdns.has(idx)) return 'stale';
    this.plainQuery ??= withoutOpt(this.ex.query);
    // One with no question (question.ts: questionlessFormerr) is never passed on: without a retry, nothing to take.
    if (this.plainQuery === null) return answer.readUInt16BE(OFF_QDCOUNT) === 0 ? 'stale' : null;
    (this.noEdns ??= new Set()).add(idx);
    return 'retry';
  }

  /** Server `idx` said lately, to another exchange, that it does not know EDNS: asked without OPT from the first try. */
  withoutEdns(idx: number): void {
    this.plainQuery ??= withoutOpt(this.ex.query);
    if (this.plainQuery !== null) (this.noEdns ??= new Set()).add(idx);
  }

  /** The server the next try goes to, counting the try; -1 when tries or time (at `now`) have run out. */
  nextServer(now: number): number {
    while (this.tries < this.total && now < this.ex.deadline) {
      const idx = this.round[this.tries % this.round.length]!;
      this.tries++;
      if (this.badServers !== null && this.badServers.has(idx)) continue;
      return idx;
    }
    return -1;
  }
}

/**
 * How long a server that answered FORMERR to OPT (HostJob.ednsRefusal) is asked without it by every exchange: Unbound
 * keeps a server's EDNS lameness in its infrastructure cache as long (infra-host-ttl), glibc for its resolver state's life.
 */
export const NO_EDNS_MEMORY_MS = 900_000;

/** Which servers said lately that they do not know EDNS, across exchanges, and new exchanges that take it into account. */
export class EdnsMemory {
  /** Per server, the clock ms until which it is asked without OPT; 0: not known so. */
  readonly #until: Float64Array;

  constructor(servers: number) {
    this.#until = new Float64Array(servers);
  }

  /**
   * Server `idx` answered `rcode` (FORMERR or NOTIMP) to OPT at `now` (ednsRefusal said 'retry'). Only FORMERR is
   * kept (RFC 6891 7's answer): NOTIMP is a weaker sign, and a modern server that sent it by mistake would lose DO
   * and large UDP answers for the whole memory; its retry without OPT stays this exchange's.
   */
  refused(idx: number, rcode: number, now: number): void {
    if (rcode === Rcode.FORMERR) this.#until[idx] = now + NO_EDNS_MEMORY_MS;
  }

  /** A new exchange over `round`, sent without OPT to the servers lately found not to know EDNS. */
  job(ex: UpstreamExchange, round: readonly number[], rounds: number, recheck: boolean, now: number): HostJob {
    const job = new HostJob(ex, round, rounds, recheck);
    for (const idx of round) if (now < this.#until[idx]!) job.withoutEdns(idx);
    return job;
  }
}

/** `query` (one question, then only an OPT record) without the OPT; null when it carries none. */
function withoutOpt(query: Buffer): Buffer | null {
  const qEnd = skipUncompressedName(query, HEADER_LEN) + 4;
  if (qEnd < HEADER_LEN + 5 || query.readUInt16BE(OFF_ARCOUNT) !== 1 || query.readUInt16BE(OFF_ANCOUNT) !== 0 || query.readUInt16BE(OFF_NSCOUNT) !== 0) return null;
  if (query.length < qEnd + 3 || query[qEnd] !== 0 || query.readUInt16BE(qEnd + 1) !== QType.OPT) return null;
  const plain = Buffer.from(query.subarray(0, qEnd));
  plain.writeUInt16BE(0, OFF_ARCOUNT);
  return plain;
}
