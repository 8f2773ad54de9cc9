/**
 * What a batched worker's loop (loop.ts) tells the main thread: the turn's
 * misses, its waiting clients (so the main thread answers them itself,
 * direct.ts), its log lines, whether it is drained (paused and nothing in
 * flight: said again whenever that changes) and the one-off
 * messages (ready, configured, aborted, closed). A client that joins a
 * miss in flight is reported under the token the hit path says it waits on
 * (it once kept our misses in flight here too, by key and token: two maps
 * set and cleared per miss, garbage beside a flood). Kept apart so loop.ts reads as the turn, and this file as the
 * report that ends it.
 */
import type { MessagePort } from 'node:worker_threads';
import { MISS_TRACE, traceNow } from '../../miss-trace.js';
import type { Peer, ReportLogger } from './loop-parts.js';
import { RING_WAKE, PackedRing, wakeDue } from './packed-ring.js';
import { BATCHED_COUNTERS } from './stats.js';
import { Ctl, MISS_REFRESH, Packer, WAITER_ARRIVED_WORD, WAITER_SOCKADDR_WORDS, WAITER_STRIDE, stamp16Of, transferOf, waiterTag, type Packed, type WorkerReport } from './protocol.js';

const IO = BATCHED_COUNTERS.slot;

export class Outbox {
  readonly #port: MessagePort;
  readonly #ctl: Int32Array;
  readonly #ring: PackedRing;
  /** The worker's io counters (ringToMain). */
  readonly #io: Float64Array;
  readonly #logger: ReportLogger;
  readonly #misses: Packer;
  /** This turn's waiting clients, for the main thread to answer itself (protocol.ts WAITER_STRIDE). */
  readonly #waiters: Packer;
  /** The main thread answers our waiting clients (direct.ts): each is reported. Else it would only drop the records. */
  readonly #reportWaiters: boolean;
  /**
   * What the main thread last heard: drained or not. Not said once and for
   * all: a socket left in its group at the pause (a wildcard) keeps taking
   * queries, and a miss taken after 'drained' must be waited for again.
   */
  #drainedSaid: boolean;
  /** Under NODELOCAL_MISS_TRACE only: when this turn began, and whether it followed a sleep in poll. */
  traceTurnAt: number;
  traceSlept: boolean;
  traceCompletedAt: number;

  constructor(port: MessagePort, ctl: Int32Array, ring: SharedArrayBuffer, io: Float64Array, logger: ReportLogger, reportWaiters: boolean) {
    this.#port = port;
    this.#io = io;
    this.#ctl = ctl;
    this.#ring = new PackedRing(ring);
    this.#logger = logger;
    this.#misses = new Packer(true);
    this.#waiters = new Packer(false, WAITER_STRIDE);
    this.#reportWaiters = reportWaiters;
    this.#drainedSaid = false;
    this.traceTurnAt = 0;
    this.traceSlept = false;
    this.traceCompletedAt = 0;
  }

  /** This turn has misses to report. */
  get missed(): boolean {
    return this.#misses.count > 0;
  }

  /** A new miss, for this turn's report (the loop's forward() admitted it). */
  miss(token: number, key: string, query: Buffer, refresh: boolean): void {
    this.#misses.push(token, refresh ? MISS_REFRESH : 0, query, key);
  }

  /**
   * Tells the main thread about a waiting client, so it sends the answer
   * itself as soon as it has it (no wake-up of this thread on the way back).
   * `token`: the question it waits on (HitPath.waitsOn), which went to the
   * main thread in this report or an earlier one (every miss still in
   * flight went through forward()). `arrivedAt`: when its query first came (epoch ms).
   */
  waiter(peer: Peer, s: number, msg: Buffer, token: number, arrivedAt: number): void {
    if (!this.#reportWaiters) return;
    this.#waiters.push(token, waiterTag(s, peer.nameLen), msg, null);
    this.#waiters.extraWords(peer.words, peer.wordOff, WAITER_SOCKADDR_WORDS);
    // 0 says "not known": a stamp that comes round to 0 (once in 74 hours) is said as 1/16 ms later.
    this.#waiters.extra(WAITER_ARRIVED_WORD, stamp16Of(arrivedAt) || 1);
  }

  /**
   * The turn's report, if it has anything to say: its misses and waiters
   * into the ring, with a wake-up posted unless one is still unread; the
   * rest (logs, drained) posted, after them (packed-ring.ts). `drainable`:
   * paused or closing, with nothing in flight (said when it changes: drained).
   */
  send(drainable: boolean): void {
    let misses: Packed | null = null;
    let waiters: Packed | null = null;
    let ringed = false;
    if (this.#misses.count > 0 || this.#waiters.count > 0) {
      if (Atomics.load(this.#ctl, Ctl.OVERFLOW) === 0 && this.#ring.write(this.#misses.view(), this.#waiters.view())) {
        this.#misses.clear();
        this.#waiters.clear();
        ringed = true;
      } else {
        misses = this.#misses.count > 0 ? this.#misses.take() : null;
        waiters = this.#waiters.count > 0 ? this.#waiters.take() : null;
        Atomics.add(this.#ctl, Ctl.OVERFLOW, 1);
        this.#io[IO.ringToMain]!++;
      }
    }
    const logs = this.#logger.records.length > 0 ? this.#logger.records : null;
    if (logs !== null) this.#logger.records = [];
    // In the report that follows the misses which undo it: the main thread never sees them while it still counts us drained.
    const changed = drainable !== this.#drainedSaid;
    this.#drainedSaid = drainable;
    if (misses === null && waiters === null && logs === null && !changed) {
      if (ringed && wakeDue(this.#ctl)) this.#port.postMessage(MISS_TRACE ? this.#traced({ misses: null, logs: null }) : RING_WAKE);
      return;
    }
    const report: WorkerReport = {
      misses, waiters, logs, ...(changed ? { drained: drainable } : {}), ...(misses !== null || waiters !== null ? { overflow: true as const } : {}),
    };
    const transfer = misses === null ? [] : transferOf(misses);
    if (waiters !== null) transfer.push(...transferOf(waiters));
    this.#port.postMessage(MISS_TRACE && ringed ? this.#traced(report) : report, transfer);
  }

  #traced(r: WorkerReport): WorkerReport {
    const trace = [this.traceTurnAt, traceNow(), this.traceSlept ? 1 : 0, this.traceCompletedAt];
    this.traceSlept = false;
    return { ...r, trace };
  }

  post(r: WorkerReport): void {
    this.#port.postMessage(r);
  }
}
