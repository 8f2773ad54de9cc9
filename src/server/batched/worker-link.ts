/**
 * One batched UDP worker thread as the main thread holds it: the thread,
 * its message port, shared control words and rings, its counters, and the
 * completions it is owed (written once per event-loop turn, with the
 * clients' answers sent from here when direct.ts can: listener.ts says how
 * the backend fits together).
 */
import type { CacheEntry } from '../../cache/entry.js';
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import type { UdpBatchSys } from '../../sys/udp-batch.js';
import type { AnswerScan } from '../../dns/answer.js';
import type { MissOutcome } from '../hit-path.js';
import { DirectAnswers, type DirectDeps } from './direct.js';
import { stampRefusal } from './shed-gate.js';
import type { MissReturn } from './miss-exchange.js';
import { Ctl, DONE_STRIDE, PENDING_PORT, PENDING_RING, OUTCOME_INDEX, Packer, stamp16, takeBlock, transferOf, type ToWorker, type WorkerInit } from './protocol.js';
import { MISS_TRACE, traceNow, traceRecord } from '../../miss-trace.js';
import { PackedRing, RING_BYTES, ringBuffer } from './packed-ring.js';
import { BATCHED_COUNTERS, WORKER_STATS_BYTES, workerCounters, type WorkerCounters } from './stats.js';

/**
 * A worker's young generation (semi-spaces), MB. A hit allocates next to
 * nothing, so V8's default (up to 3 x 16 MB per isolate) only holds garbage
 * from misses and configuration messages: a small one is as fast here and
 * saves RSS per worker.
 */
const WORKER_YOUNG_GENERATION_MB = 4;
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url);

/** One worker thread as the main thread holds it. */
export class WorkerLink implements MissReturn {
  readonly index: number;
  readonly fds: number[];
  readonly wakeFd: number;
  readonly ctl: Int32Array;
  /** Its misses and waiting clients, as it writes them (packed-ring.ts): read on each of its messages. */
  readonly reports: PackedRing;
  /** Our completions for it, as it reads them. */
  readonly #completions: PackedRing;
  readonly counters: WorkerCounters;
  readonly worker: Worker;
  readonly port: MessagePort;
  alive: boolean;
  /** In its loop: it said it was ready (alive may already be false again). */
  ready: boolean;
  closing: boolean;
  drained: boolean;
  /** Asked to abort and not yet answered. */
  aborting: boolean;
  /** Reloads posted and not yet applied, in order. */
  readonly configuring: (() => void)[];
  /** Answers to this worker's clients sent from this thread; null when turned off (tests). */
  readonly direct: DirectAnswers | null;
  /**
   * A live sibling's sockets (null: none now): where the clients held here are answered should this worker die
   * (closeFds()). A successor still starting counts: its sockets are bound from its spawn, closed only once it is gone.
   */
  siblings: (() => readonly number[] | null) | null = null;
  /**
   * Completions whose clients were all answered here go without waking the
   * worker (it takes them with its next batch or poll timeout). Off once
   * paused, aborting or closing: then the worker has nothing else to wake it.
   */
  lazy: boolean;
  readonly #sys: UdpBatchSys;
  #done: Packer;
  #flushQueued: boolean;
  #fdsClosed = false;

  constructor(
    index: number, fds: number[], wakeFd: number, init: Omit<WorkerInit, 'index' | 'fds' | 'wakeFd' | 'ctl' | 'stats' | 'reports' | 'completions'>, sys: UdpBatchSys,
    direct: DirectDeps | null, ringBytes = RING_BYTES,
  ) {
    this.index = index;
    this.fds = fds;
    this.wakeFd = wakeFd;
    const ctl = new SharedArrayBuffer(Ctl.WORDS * 4);
    const stats = new SharedArrayBuffer(WORKER_STATS_BYTES);
    this.ctl = new Int32Array(ctl);
    const reports = ringBuffer(ringBytes);
    this.reports = new PackedRing(reports);
    const completions = ringBuffer(ringBytes);
    this.#completions = new PackedRing(completions);
    // Long ago: the worker starts admitting every miss.
    stampRefusal(this.ctl, performance.timeOrigin + performance.now() - 3_600_000);
    this.counters = workerCounters(stats);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    // With direct answers the main thread holds the waiting clients; the worker only counts them (direct.ts).
    const full: WorkerInit = { ...init, index, fds, wakeFd, ctl, reports, completions, stats, remoteWaiters: direct !== null };
    // Its native block before the thread: an allocation that fails after `new Worker` left a running thread no one held.
    this.direct = direct === null ? null : new DirectAnswers(sys, fds, init.batch, init.maxUdpSize, direct);
    try {
      this.worker = new Worker(WORKER_URL, { workerData: { init: full, port: port2 }, transferList: [port2], name: `udp-worker-${index}`, resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB } });
    } catch (err) {
      this.direct?.close();
      throw err;
    }
    this.alive = true;
    this.ready = false;
    this.closing = false;
    this.drained = false;
    this.aborting = false;
    this.configuring = [];
    this.#sys = sys;
    this.#done = new Packer(false, DONE_STRIDE);
    this.#flushQueued = false;
    this.lazy = true;
  }

  /**
   * MissReturn: the clients answered from here when they can be (direct.ts),
   * the completion queued for the worker (to release its waiters); all written once per
   * event-loop turn (the turn's completions in one ring record: packed-ring.ts).
   */
  deliver(token: number, answer: Buffer | null, outcome: MissOutcome, scan?: AnswerScan, stored?: CacheEntry): void {
    // Dead, it may still have clients held here (closeFds()): those are answered all the same.
    const here = this.direct !== null && this.direct.answer(token, answer, scan, stored);
    this.#done.push(token, OUTCOME_INDEX[outcome], answer, null);
    this.#done.extra(0, here ? 1 : 0);
    if (here) this.#done.extra(1, stamp16());
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      setImmediate(this.#flush);
    }
  }

  /** MissReturn: stamps the shared word the worker's ShedGate reads. */
  refusedForLoad(): void {
    stampRefusal(this.ctl);
  }

  /**
   * This turn's direct answers sent and their completions posted now, not
   * at the end of the turn: before an abort, so that no client this thread
   * just answered hears SERVFAIL from the worker first.
   */
  flushNow(): void {
    this.#flush();
  }

  post(m: ToWorker, transfer: ArrayBuffer[] = []): void {
    this.#post(m, transfer, true);
  }

  /**
   * Clients whose records came after their question was answered here
   * (direct.ts): back to the worker at once, and after the completions
   * queued this turn (their question's among them), so it finds that
   * question closed and runs them through its hit path again.
   */
  handBack(): void {
    this.#flush();
    // Late clients of a failed question, answered as they came (direct.ts add()): out now, not with the next completion.
    this.direct?.flush();
    const items = this.direct?.takeAgain() ?? null;
    if (items !== null) this.#post({ t: 'again', items }, transferOf(items), true);
  }

  #post(m: ToWorker, transfer: ArrayBuffer[], wake: boolean): void {
    if (!this.alive) return;
    this.port.postMessage(m, transfer);
    this.#signal(PENDING_PORT, wake);
  }

  /** After the post or the ring record, so a worker that sees PENDING finds it; SLEEPING read after PENDING set (loop-poll.ts). */
  #signal(bit: number, wake: boolean): void {
    Atomics.or(this.ctl, Ctl.PENDING, bit);
    if (wake && Atomics.load(this.ctl, Ctl.SLEEPING) === 1) this.#sys.wake(this.wakeFd);
  }

  readonly #flush = (): void => {
    this.#flushQueued = false;
    if (this.#done.count === 0) return;
    const direct = this.direct;
    // The answers first: posting the completions (a structured clone and a
    // wake-up of the worker's port, before the ring) took 10-60 us of every
    // direct answer's way out. A client that asks again within the microseconds between the two
    // finds the miss still in flight in its worker and joins it; its record
    // then arrives late here and is handed back to the worker, which runs it
    // through its hit path again (direct.ts): slower for that client, never wrong.
    direct?.flush();
    const at = MISS_TRACE ? traceNow() : 0;
    const wake = direct === null || direct.failedSincePost || !this.lazy;
    if (direct !== null) direct.failedSincePost = false;
    if (!this.alive) {
      this.#done.clear();
    } else if (Atomics.load(this.ctl, Ctl.DONE_OVERFLOW) === 0 && this.#completions.write(this.#done.view())) {
      this.#done.clear();
      this.#signal(PENDING_RING, wake);
    } else {
      const items = this.#done.take();
      Atomics.add(this.ctl, Ctl.DONE_OVERFLOW, 1);
      this.counters.io.values[BATCHED_COUNTERS.slot.ringToWorker]!++;
      this.#post({ t: 'done', items, overflow: true }, transferOf(items), wake);
    }
    if (MISS_TRACE) traceRecord('done.post', traceNow() - at);
    // Clients this turn could not answer here (a datagram that does not parse here): the worker's, woken for them.
    const again = direct?.takeAgain() ?? null;
    if (again !== null) this.#post({ t: 'again', items: again }, transferOf(again), true);
  };

  /**
   * MissReturn: outcomes are still wanted while the thread lives, or once it
   * died while clients held here for it wait on their misses (closeFds()).
   */
  get listening(): boolean {
    return this.alive || this.direct?.orphaned === true;
  }

  /**
   * Sockets and eventfd: only once the thread has left its loop (it may be
   * inside recvmmsg or poll on them). A worker that died (not closing) with
   * clients held here leaves them to be answered on a sibling's sockets.
   */
  closeFds(): void {
    // Once: a second close of a number the kernel may have handed out again would close someone else's descriptor.
    if (this.#fdsClosed) return;
    this.#fdsClosed = true;
    if (!this.closing && this.siblings !== null) this.direct?.orphan(this.siblings);
    else this.direct?.close();
    for (const fd of this.fds) this.#sys.close(fd);
    this.#sys.close(this.wakeFd);
    this.fds.length = 0;
  }

  /**
   * The thread's native block (~360 KB and ~90 KB a socket), once the thread
   * is gone ('exit'), unless it freed it itself: one ended by terminate() or
   * out of heap ran no finally (protocol.ts holdBlock). Never while it may run.
   */
  freeBlock(): void {
    const address = takeBlock(this.ctl);
    if (address !== null) this.#sys.freeAddress(address);
  }
}
