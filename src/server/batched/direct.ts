/**
 * A batched worker's waiting clients, held and answered by the main thread:
 * when the outcome of a worker's miss is known here, the clients waiting on
 * it get their answer at once, sent on the worker's own socket (same
 * process, same fd) with one sendmmsg per socket per main-loop turn, instead
 * of the outcome crossing back to the worker and waking it (eventfd) to send
 * one datagram.
 *
 *   worker: miss ─ report: (token, key, query) + waiters (token, sockaddr, client datagram)
 *   main:   outcome for token ─► each waiter: parse its datagram, serve (id, 0x20 case, EDNS, size) ─► send vector
 *           end of turn: post the completions to the worker (no wake-up), then sendmmsg
 *   worker: takes the completions with its next batch or poll timeout: closes the question
 *           (nothing to store: the exchange stored the answer, nothing to send)
 *
 * Every outcome is answered here as the worker's hit path would answer it:
 * the answer as it came, or for a failure (timeout, SERVFAIL, NOTIMP,
 * malformed) the stale entry the one cache still holds, else SERVFAIL. So
 * the worker keeps nothing per waiting client but a count (HitPath
 * remoteWaiters): under a miss flood the waiting clients were what every
 * young-generation collection of the worker copied, with its hits waiting.
 * It keeps a client of its own only when it samples it for the query log;
 * it logs it, and this side still answers it.
 *
 * A client whose record arrives after its question was answered here (it
 * joined the miss in the worker while the completion was on its way) is
 * handed back ('again'): the worker runs its query through the hit path
 * once more, now usually a hit.
 */
import { AnswerCopy, type CacheEntry } from '../../cache/entry.js';
import { planCaching, refreshesName } from '../../cache/policy.js';
import { scanAnswer, type AnswerScan } from '../../dns/answer.js';
import { QueryScratch, QueryStatus, parseQuery, parseQueryInto } from '../../dns/query.js';
import type { NativeBlock, UdpBatchSys } from '../../sys/udp-batch.js';
import { serverFailed } from '../../upstream/health.js';
import { IntTable } from '../../int-table.js';
import { Transport } from '../listener.js';
import { RCODE_SLOT_BASE, RCODE_SLOT_OTHER, SERVER_COUNTERS } from '../stats.js';
import { answerLimit, serveFromCache, serveOne, type DirectDeps } from './direct-serve.js';
import { Arena, MAX_DATAGRAM_BYTES, SendVec, vecBytes } from './msgvec.js';
import { Packer, WAITER_ARRIVED_WORD, WAITER_STRIDE, itemBytes, itemExtra, itemExtraOffset, itemTag, itemToken, msSince16, type Packed } from './protocol.js';
import { BATCHED_COUNTERS } from './stats.js';
import { MISS_TRACE, traceMarks, traceNow, traceRecord } from '../../miss-trace.js';
const IO = BATCHED_COUNTERS.slot;
/** Failed questions remembered for late clients: at 20k failures/s, the last 50 ms. */
const FAILED_TOKENS_KEPT = 1024;
/** Its worker dead, how long an answer with no live worker's socket waits for one (a successor's, bound at its spawn 1 s after the death). */
export const ORPHAN_HOLD_MS = 2000;
const ORPHAN_RETRY_MS = 50;
const SV = SERVER_COUNTERS.slot;

/** One client waiting on a worker's miss, as its record arrived. */
interface DirectWaiter {
  readonly sock: number;
  readonly nameLen: number;
  /** The sockaddr: WAITER_SOCKADDR_WORDS words from wordOff (a view of the record's index). */
  readonly words: Uint32Array;
  readonly wordOff: number;
  /** The client's datagram (a view of the record's bytes). */
  readonly msg: Buffer;
  /** When its query reached the worker (the record's stamp), in this thread's clock ms; without a stamp, when its record came. */
  readonly at: number;
}

/** A worker's miss in flight: its cache key (for a stale answer) and the clients waiting on it. */
interface PendingMiss {
  readonly key: string;
  readonly waiters: DirectWaiter[];
}

export type { DirectDeps, DirectPolicy } from './direct-serve.js';

export class DirectAnswers {
  readonly #sys: UdpBatchSys;
  /** The worker's sockets: emptied when they are closed, so nothing is ever sent on a closed (or reused) fd. */
  readonly #fds: readonly number[];
  /** Once the worker died with clients held here (orphan()): a live sibling's sockets, asked at each send (null: none). */
  #via: (() => readonly number[] | null) | null = null;
  /** Until when (performance.now()) an orphan's answers with no socket wait for one (ORPHAN_HOLD_MS); 0: not at all. */
  #holdUntil = 0;
  #retry: NodeJS.Timeout | null = null;
  /** Told once, when it closes (an orphan: its last client answered). */
  onClosed: (() => void) | null = null;
  readonly #deps: DirectDeps;
  readonly #v: Float64Array;
  /** coredns_dns_responses_total and the truncated count of what is sent from here (the worker takes its own count back). */
  readonly #server: Float64Array;
  readonly #block: NativeBlock;
  readonly #arena: Arena;
  readonly #send: SendVec[];
  /** An answer too big for the send slots goes out alone from here, with its source address as any other. */
  readonly #alone: SendVec;
  /** The worker's misses in flight, by its token (int-table.ts: a Map here left old-generation garbage per miss). */
  readonly #pending = new IntTable<PendingMiss>();
  /** Records to hand back to the worker (WAITER_STRIDE): takeAgain(). */
  readonly #again = new Packer(false, WAITER_STRIDE);
  #closed = false;
  /** Questions of the worker's that failed lately, by token, with their keys: a client whose record comes late gets the failure's answer. */
  readonly #failed = new Map<number, string>();
  /** Past abort(): nothing waits here any more; new records go back to the worker, which answers them at once. */
  #aborted = false;
  readonly #scratch = new QueryScratch();
  /** Its worker has exited: a record can no longer be handed back to it, and is answered here (#answerLate). */
  #gone = false;
  /**
   * A failure was answered here since the completions were last posted: that
   * post wakes the worker, so its count of misses in flight drops at once,
   * not at its next datagram or poll timeout. Its shed gate reads that count
   * (against its share of the cap) after the main thread refused misses for load, and
   * completions left lazy then kept it shedding what this thread had room
   * for (measured: a third of the misses forwarded beside a 20k/s flood).
   */
  failedSincePost = false;

  constructor(sys: UdpBatchSys, fds: readonly number[], batch: number, slotBytes: number, deps: DirectDeps) {
    this.#sys = sys;
    this.#fds = fds;
    this.#deps = deps;
    this.#v = deps.counters.values;
    this.#server = deps.server.values;
    this.#block = sys.alloc(fds.length * vecBytes(batch, slotBytes) + vecBytes(1, MAX_DATAGRAM_BYTES));
    this.#arena = new Arena(this.#block.address, this.#block.bytes);
    this.#send = fds.map(() => new SendVec(this.#arena, batch, slotBytes));
    this.#alone = new SendVec(this.#arena, 1, MAX_DATAGRAM_BYTES);
  }

  /** A miss of the worker's, `key` its cache key: its waiters' records follow (in this report or later ones). */
  expect(token: number, key: string): void {
    if (!this.#aborted) this.#pending.set(token, { key, waiters: [] });
  }

  /**
   * A report's waiter records, in order. Returns true when one came late:
   * handed back to the worker (its question was answered here already, or
   * nothing waits here any more: post takeAgain() to it, and wake it), or
   * answered now (its question failed: flush()).
   */
  add(p: Packed): boolean {
    let late = false;
    const words = new Uint32Array(p.index.buffer, p.index.byteOffset, p.index.length);
    const now = this.#deps.now();
    const wall = performance.timeOrigin + performance.now();
    for (let i = 0; i < p.count; i++) {
      const tag = itemTag(p, i);
      const arrived = itemExtra(p, i, WAITER_ARRIVED_WORD);
      const at = arrived === 0 ? now : now - msSince16(arrived, wall);
      const w: DirectWaiter = { sock: tag & 0xff, nameLen: tag >>> 8, words, wordOff: itemExtraOffset(p, i), msg: itemBytes(p, i)!, at };
      const token = itemToken(p, i);
      const m = this.#pending.get(token);
      const failed = m === undefined ? this.#failed.get(token) : undefined;
      if (m !== undefined) m.waiters.push(w);
      // Late for a question that failed: its answer now, as the worker gave one joining before the failure (else it would
      // miss again and wait out another deadline).
      else if (failed !== undefined) late = (this.#answerAll({ key: failed, waiters: [w] }, null), true);
      else late = this.#handBack(token, w);
    }
    return late;
  }

  /**
   * The outcome for the worker's `token` (`answer` null: a failure without
   * one): every client waiting on it is answered here, and every record
   * for it that comes later is answered or handed back here too. False when
   * this side does not know the question (it went before expect(), or the
   * worker is gone): the worker answers its clients. `scan`: the answer's,
   * when the exchange read it (else read here); `stored`: the entry the one
   * cache made of it, served from instead of a copy of its own.
   */
  answer(token: number, answer: Buffer | null, scan = answer === null ? undefined : scanAnswer(answer), stored?: CacheEntry): boolean {
    const m = this.#pending.get(token);
    if (m === undefined || this.#closed) return false;
    this.#pending.delete(token);
    const fresh = this.#judge(m.key, answer, scan, stored);
    if (fresh === null) this.#rememberFailed(token, m.key);
    if (m.waiters.length > 0) this.#answerAll(m, fresh);
    return true;
  }

  /** Records handed back since the last call, for an 'again' message (null: none). */
  takeAgain(): Packed | null {
    return this.#again.count > 0 ? this.#again.take() : null;
  }

  /**
   * Shutdown past its grace period: every client waiting here is answered
   * now (stale or SERVFAIL), as the worker answers its own; records that
   * come later are handed back. Sent before the worker hears 'abort'.
   * Returns how many were answered.
   */
  abort(): number {
    this.#aborted = true;
    // Shutdown: no successor comes. A dead worker's clients are counted here (a live one's hit path counts its own abort).
    this.#holdUntil = 0;
    let n = 0;
    for (const m of this.#pending.values()) {
      n += m.waiters.length;
      if (m.waiters.length > 0) this.#answerAll(m, null);
    }
    this.#pending.clear();
    if (this.orphaned) this.#server[SV.abortedAtShutdown]! += n;
    this.flush();
    return n;
  }

  /** Sends what this turn queued: one sendmmsg per socket (more only past a vector's worth). */
  flush(): void {
    for (let s = 0; s < this.#send.length; s++) if (this.#send[s]!.filled > 0) this.#flushSocket(s);
    if (this.orphaned && this.#waiting() === 0 && this.#retry === null) this.close();
  }

  /** Clients held here, on questions still in flight. */
  #waiting(): number {
    let n = 0;
    for (const m of this.#pending.values()) n += m.waiters.length;
    return n;
  }

  /** Where answers go out: the worker's sockets, or once it died a sibling's (empty: none, or closed since). */
  #sockets(): readonly number[] {
    return this.#via === null ? this.#fds : this.#via() ?? [];
  }

  /** Its worker died and clients still wait here (orphan()): they are answered as their misses complete. */
  get orphaned(): boolean {
    return this.#via !== null && !this.#closed;
  }

  /**
   * The worker died, its sockets closed: the clients held here are still
   * answered as their misses complete, on `via`'s sockets (a live sibling's,
   * a successor still starting too, bound to the same addresses and ports:
   * the client sees the same source);
   * with none at the time, the answer waits for one up to ORPHAN_HOLD_MS (while serving),
   * then is lost and counted as a send error. Closed once the last is
   * answered (and sent, or given up); at once when none waits.
   */
  orphan(via: () => readonly number[] | null): void {
    this.#via = via;
    this.#holdUntil = performance.now() + ORPHAN_HOLD_MS;
    this.#aborted = true;
    if (this.#waiting() === 0) this.close();
  }

  /** The worker's sockets are closed (it exited): nothing is sent from here on, and the native memory goes. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#retry = null;
    this.#pending.clear();
    this.#block.free();
    this.onClosed?.();
  }

  /**
   * As the worker's hit path (complete()) would: the answer as it came
   * (validated and scrubbed by the exchange) unless it failed to answer
   * the name (serverFailed; another rcode but NOERROR and NXDOMAIN only
   * when nothing stale is held: RFC 8767 4), else stale, else SERVFAIL.
   */
  #judge(key: string, a: Buffer | null, scan: AnswerScan | undefined, stored: CacheEntry | undefined): CacheEntry | null {
    // Counted and logged here, where it is read (the worker only closes the question): the first and every 1000th.
    if (a !== null && scan === undefined && this.#server[SV.upstreamMalformed]!++ % 1000 === 0) {
      this.#deps.logger.warn('malformed upstream answer: not cached, client gets a stale answer or SERVFAIL', { bytes: a.length, seen: this.#server[SV.upstreamMalformed] });
    }
    if (scan === undefined || serverFailed(scan.rcode) || (!refreshesName(scan.rcode) && this.#deps.stale(key, this.#deps.now(), 0) !== undefined)) return null;
    // The one cache's entry of it, made under the same TTL caps, is what this copy would be; served the same second it
    // was stored (no aging: served as of 0).
    if (stored !== undefined) return stored;
    const plan = planCaching(scan, this.#deps.policy().cache, a!);
    return AnswerCopy.fromAnswer(a!, scan, 0, plan.kind === 'none' ? 0 : plan.ttl, Number.POSITIVE_INFINITY, plan.kind === 'negative');
  }

  /** `m`'s clients, each from `fresh` (#judge), or for a failure (null) stale, else SERVFAIL. */
  #answerAll(m: PendingMiss, fresh: CacheEntry | null): void {
    // One scratch for every client (serving keeps nothing of it): no parsed copy per client.
    const q = this.#scratch;
    let stale: CacheEntry | undefined;
    // Counted once per client it answers, as the hit path counts.
    if (fresh === null) {
      let ok = 0;
      for (const w of m.waiters) if (parseQueryInto(w.msg, q) === QueryStatus.OK) ok++;
      stale = this.#deps.stale(m.key, this.#deps.now(), ok);
      this.failedSincePost = true;
    }
    const maxUdpSize = this.#deps.policy().maxUdpSize;
    for (const w of m.waiters) {
      // Each parsed in the worker; one that does not here (or cannot be served) goes back: the worker answers it as its hit path does.
      if (parseQueryInto(w.msg, q) !== QueryStatus.OK) {
        this.#handBack(0, w);
        continue;
      }
      let reply: Buffer;
      try {
        reply = serveOne(q, fresh, stale, answerLimit(q, maxUdpSize));
      } catch {
        this.#handBack(0, w);
        continue;
      }
      this.#queue(w, reply);
    }
  }

  /** The last FAILED_TOKENS_KEPT failed questions by token (a late client's record comes within a worker turn or two). */
  #rememberFailed(token: number, key: string): void {
    this.#failed.set(token, key);
    if (this.#failed.size > FAILED_TOKENS_KEPT) this.#failed.delete(this.#failed.keys().next().value!);
  }

  /** The worker has exited ('exit'; its last records are read after this): a client it can no longer take back is answered here. */
  workerExited(): void {
    this.#gone = true;
  }

  /** `w`'s record, into the next 'again' message (once the worker has exited: answered here). True (the caller wakes the worker, or sends). */
  #handBack(token: number, w: DirectWaiter): boolean {
    if (this.#gone) return (this.#answerLate(w), true);
    const p = this.#again;
    p.push(token, w.sock | (w.nameLen << 8), w.msg, null);
    // Every word, its first arrival too: the worker times the client from then, whatever it runs into again.
    p.extraWords(w.words, w.wordOff, WAITER_STRIDE - 4);
    return true;
  }

  /**
   * A client of an exited worker whose question was answered here already (or is unknown here): as its hit path would
   * have, from the one cache, fresh, else stale, else SERVFAIL. One that does not parse here: counted as a send error.
   */
  #answerLate(w: DirectWaiter): void {
    const q = parseQuery(w.msg);
    if (q.status !== QueryStatus.OK) return void this.#v[IO.sendErrors]!++;
    let reply: Buffer;
    try {
      reply = serveFromCache(q, this.#deps);
    } catch {
      return void this.#v[IO.sendErrors]!++;
    }
    this.#queue(w, reply);
  }

  #queue(w: DirectWaiter, reply: Buffer): void {
    this.#v[IO.directAnswers]!++;
    // Counted as the answer leaves, as the hit path counts its own (loop.ts takes the worker's count of it back).
    const rcode = reply[3]! & 0x0f;
    this.#server[rcode <= 5 ? RCODE_SLOT_BASE + rcode : RCODE_SLOT_OTHER]!++;
    if ((reply[2]! & 0x02) !== 0) this.#server[SV.truncated]!++;
    this.#deps.hist.responseSize[Transport.UDP].observe(reply.length);
    this.#deps.hist.duration.observeMs(this.#deps.now() - w.at);
    const vec = this.#send[w.sock];
    if (vec === undefined) return;
    if (reply.length > vec.slotBytes) {
      // A reload raised --max-udp-size past the slots: this answer goes alone.
      const fd = this.#sockets()[w.sock];
      if (fd === undefined) return void this.#v[IO.sendErrors]!++;
      this.#alone.push(reply, w.words, w.wordOff, w.nameLen);
      if (this.#sys.sendmmsg(fd, this.#alone.address, 1) < 1) this.#v[IO.sendErrors]!++;
      this.#alone.clear();
      return;
    }
    if (vec.full) this.#flushSocket(w.sock);
    vec.push(reply, w.words, w.wordOff, w.nameLen);
  }

  #retryLater(): void {
    if (this.#retry !== null) return;
    this.#retry = setTimeout(() => {
      this.#retry = null;
      this.flush();
    }, ORPHAN_RETRY_MS);
  }

  #flushSocket(s: number): void {
    const vec = this.#send[s]!;
    const fd = this.#sockets()[s];
    const filled = vec.filled;
    // An orphan's answers with no socket yet: kept for a successor's while one may come (a full vector goes as it would).
    if (fd === undefined && !this.#closed && !vec.full && performance.now() < this.#holdUntil && this.#deps.serving?.() !== false) return this.#retryLater();
    vec.clear();
    if (fd === undefined || this.#closed) {
      this.#v[IO.sendErrors]! += filled;
      return;
    }
    let k = 0;
    const at = MISS_TRACE ? traceNow() : 0;
    // Bounded: every round either sends something or gives up on one message (as the worker's flush).
    while (k < filled) {
      const r = this.#sys.sendmmsg(fd, vec.at(k), filled - k);
      this.#v[IO.sends]!++;
      if (r > 0) k += r;
      else {
        this.#v[IO.sendErrors]!++;
        k++;
      }
    }
    if (MISS_TRACE) {
      const now = traceNow();
      traceRecord('send.call', now - at);
      traceRecord('data.sent', now - traceMarks.dataAt);
    }
  }
}
