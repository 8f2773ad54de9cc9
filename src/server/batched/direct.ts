/**
 * A batched worker's misses answered by the main thread itself: when the
 * upstream's answer arrives here, the clients waiting on it get it at once,
 * sent on the worker's own socket (same process, same fd) with one sendmmsg
 * per socket per main-loop turn, instead of the answer crossing back to the
 * worker and waking it (eventfd) to send one datagram.
 *
 *   worker: miss ─ report: (token, key, query) + waiters (token, sockaddr, client datagram)
 *   main:   answer for token ─► each waiter: parse its datagram, serve (id, 0x20 case, EDNS, size) ─► send vector
 *           end of turn: post the completions to the worker (no wake-up), then sendmmsg
 *   worker: takes the completions with its next batch or poll timeout: releases its waiters
 *           (nothing to store: the exchange stored the answer), sends nothing to the clients
 *           the main thread answered
 *
 * Which clients those are: each waiter record has a sequence number (its
 * place in the worker's record order, counted on both sides), and a
 * completion carries the number of the last record received when its
 * clients were answered. A client that joined the miss later (its record
 * still on its way) has a higher number: the worker answers it, and the
 * main thread wakes it when that late record arrives.
 *
 * Only answers the worker would serve as they are: a failure (timeout,
 * SERVFAIL, NOTIMP, malformed) may be answered stale, which the worker decides with
 * its own hit path, so those go back as before and wake the worker.
 */
import { AnswerCopy } from '../../cache/entry.js';
import { planCaching, refreshesName, type TtlCaps } from '../../cache/policy.js';
import { scanAnswer } from '../../dns/answer.js';
import { DEFAULT_EDNS_SIZE } from '../../dns/build.js';
import { CLASSIC_UDP_LIMIT } from '../../dns/constants.js';
import { QueryStatus, parseQuery } from '../../dns/query.js';
import type { NativeBlock, UdpBatchSys } from '../../sys/udp-batch.js';
import { MAX_UDP_PAYLOAD_IPV4 } from '../answer-out.js';
import type { HitPathHistograms } from '../hit-path.js';
import { Transport } from '../listener.js';
import { RCODE_SLOT_BASE, RCODE_SLOT_OTHER, SERVER_COUNTERS, type ServerCounters } from '../stats.js';
import { Arena, SOCKADDR_SLOT_BYTES, SendVec, vecBytes } from './msgvec.js';
import { itemBytes, itemExtraOffset, itemTag, itemToken, nextSeq, type Packed } from './protocol.js';
import { BATCHED_COUNTERS, type BatchedCounters } from './stats.js';
import { MISS_TRACE, traceMarks, traceNow, traceRecord } from '../../miss-trace.js';

const IO = BATCHED_COUNTERS.slot;
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
  /** When its record reached this thread (clock ms): its duration runs from here, missing the worker's one turn before. */
  readonly at: number;
}

/** What the main thread applies as the worker would: its TTL caps and largest UDP answer (the listener's current settings). */
export interface DirectPolicy {
  readonly cache: TtlCaps;
  readonly maxUdpSize: number;
}

export class DirectAnswers {
  readonly #sys: UdpBatchSys;
  /** The worker's sockets: emptied when they are closed, so nothing is ever sent on a closed (or reused) fd. */
  readonly #fds: readonly number[];
  readonly #policy: () => DirectPolicy;
  readonly #v: Float64Array;
  /** coredns_dns_responses_total and the truncated count of what is sent from here (the worker takes its own count back). */
  readonly #server: Float64Array;
  /** coredns_dns_request_duration_seconds and the response sizes of what is sent from here (the worker only releases these clients). */
  readonly #hist: HitPathHistograms;
  readonly #now: () => number;
  readonly #block: NativeBlock;
  readonly #arena: Arena;
  readonly #send: SendVec[];
  readonly #scratchOff: number;
  /** Waiters by the worker's token, for misses in flight. */
  readonly #pending: Map<number, DirectWaiter[]>;
  /** Sequence number of the last waiter record received. */
  #received: number;
  #closed: boolean;
  /** A completion went back with clients the worker must answer itself: it has to be woken. */
  needWake: boolean;

  constructor(
    sys: UdpBatchSys, fds: readonly number[], batch: number, slotBytes: number, policy: () => DirectPolicy, counters: BatchedCounters, server: ServerCounters,
    hist: HitPathHistograms, now: () => number,
  ) {
    this.#hist = hist;
    this.#now = now;
    this.#sys = sys;
    this.#fds = fds;
    this.#policy = policy;
    this.#v = counters.values;
    this.#server = server.values;
    this.#block = sys.alloc(fds.length * vecBytes(batch, slotBytes) + 64);
    this.#arena = new Arena(this.#block.address, this.#block.bytes);
    this.#send = fds.map(() => new SendVec(this.#arena, batch, slotBytes));
    this.#scratchOff = this.#arena.take(SOCKADDR_SLOT_BYTES);
    this.#pending = new Map();
    this.#received = 0;
    this.#closed = false;
    this.needWake = false;
  }

  /** A miss of the worker's: its waiters' records follow (in this report or later ones). */
  expect(token: number): void {
    this.#pending.set(token, []);
  }

  /**
   * A report's waiter records, in order. Returns true when one belongs to a
   * miss already completed: the worker answers that client, and must be woken
   * for it (its completion may have gone without a wake).
   */
  add(p: Packed): boolean {
    let late = false;
    const words = new Uint32Array(p.index.buffer, p.index.byteOffset, p.index.length);
    const at = this.#now();
    for (let i = 0; i < p.count; i++) {
      this.#received = nextSeq(this.#received);
      const list = this.#pending.get(itemToken(p, i));
      if (list === undefined) {
        late = true;
        continue;
      }
      const tag = itemTag(p, i);
      list.push({ sock: tag & 0xff, nameLen: tag >>> 8, words, wordOff: itemExtraOffset(p, i), msg: itemBytes(p, i)!, at });
    }
    return late;
  }

  /**
   * The outcome for the worker's `token`: its clients are answered here when
   * the worker would answer them with `answer` as it is. Returns the
   * completion's answered-through mark (protocol.ts DONE_STRIDE): the last
   * record's number, or 0 when the worker answers every client itself.
   */
  answer(token: number, answer: Buffer | null): number {
    const list = this.#pending.get(token);
    if (list === undefined) return 0;
    this.#pending.delete(token);
    if (list.length === 0) return this.#received;
    if (answer === null || this.#closed || !this.#serve(list, answer)) {
      this.needWake = true;
      return 0;
    }
    return this.#received;
  }

  /** Shutdown past its grace period: the worker answers everyone still waiting (stale or SERVFAIL); nothing more from here. */
  forget(): void {
    this.#pending.clear();
  }

  /** Sends what this turn queued: one sendmmsg per socket (more only past a vector's worth). */
  flush(): void {
    for (let s = 0; s < this.#send.length; s++) if (this.#send[s]!.filled > 0) this.#flushSocket(s);
  }

  /** The worker's sockets are closed (it exited): nothing is sent from here on, and the native memory goes. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pending.clear();
    this.#block.free();
  }

  /** As the worker's hit path would: validate, the entry it would store (or a transient one), served to each client (the exchange scrubbed the answer). */
  #serve(list: DirectWaiter[], a: Buffer): boolean {
    const scan = scanAnswer(a);
    // Any rcode but NOERROR and NXDOMAIN failed to refresh the name (RFC 8767 4): the worker answers stale, if it can.
    if (scan === undefined || !refreshesName(scan.rcode)) return false;
    const policy = this.#policy();
    const plan = planCaching(scan, policy.cache, a);
    // Served the same second it is stored: no aging, so the clock does not matter here.
    const entry = AnswerCopy.fromAnswer(a, scan, 0, plan.kind === 'none' ? 0 : plan.ttl, Number.POSITIVE_INFINITY, plan.kind === 'negative');
    const queries = list.map((w) => parseQuery(w.msg));
    // Each parsed in the worker (it became a waiter); one that does not here (nothing sent, so no send error) goes
    // back with all the others: the worker answers them, with its own copy of the datagram.
    if (queries.some((q) => q.status !== QueryStatus.OK)) return false;
    list.forEach((w, k) => {
      const q = queries[k]!;
      // The client's family is not at hand here: past 65,507 bytes (one IPv4 datagram) the answer is cut to fit either.
      const limit = Math.min(!q.edns ? CLASSIC_UDP_LIMIT : q.udpSize < policy.maxUdpSize ? q.udpSize : policy.maxUdpSize, MAX_UDP_PAYLOAD_IPV4);
      this.#queue(w, entry.serve(q, 0, limit, DEFAULT_EDNS_SIZE));
    });
    return true;
  }

  #queue(w: DirectWaiter, reply: Buffer): void {
    this.#v[IO.directAnswers]!++;
    // Counted as the answer leaves, as the hit path counts its own (loop.ts takes the worker's count of it back).
    const rcode = reply[3]! & 0x0f;
    this.#server[rcode <= 5 ? RCODE_SLOT_BASE + rcode : RCODE_SLOT_OTHER]!++;
    if ((reply[2]! & 0x02) !== 0) this.#server[SV.truncated]!++;
    this.#hist.responseSize[Transport.UDP].observe(reply.length);
    this.#hist.duration.observeMs(this.#now() - w.at);
    const vec = this.#send[w.sock];
    if (vec === undefined) return;
    if (reply.length > vec.slotBytes) {
      // A reload raised --max-udp-size past the slots: this answer goes alone.
      const fd = this.#fds[w.sock];
      if (fd === undefined) return;
      const u32 = this.#arena.u32;
      const dst = this.#scratchOff >> 2;
      for (let k = 0; k < w.nameLen >> 2; k++) u32[dst + k] = w.words[w.wordOff + k]!;
      if (this.#sys.sendto(fd, reply, this.#arena.address + this.#scratchOff, w.nameLen) < 0) this.#v[IO.sendErrors]!++;
      return;
    }
    if (vec.full) this.#flushSocket(w.sock);
    vec.push(reply, w.words, w.wordOff, w.nameLen);
  }

  #flushSocket(s: number): void {
    const vec = this.#send[s]!;
    const fd = this.#fds[s];
    const filled = vec.filled;
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
