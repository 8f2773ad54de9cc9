/**
 * The completions a batched worker's loop (loop.ts) owes its hit path: the
 * main thread's 'done' messages queued as they come, applied a bounded
 * number per turn so the hits behind them are not held. A completion whose
 * clients the main thread already answered (direct.ts) only closes the
 * question; the others are answered here. Kept apart so loop.ts reads as
 * the turn, and this file as what a completion does.
 */
import type { HitPath } from '../hit-path.js';
import { Peer, type ReportLogger, type TurnClock } from './loop-parts.js';
import type { SocketChannel } from './loop-send.js';
import { PackedRing } from './packed-ring.js';
import { OUTCOMES, WAITER_ARRIVED_WORD, itemBytes, itemExtra, itemExtraOffset, itemTag, itemToken, msSince16, type Packed } from './protocol.js';
import type { ClientPeer } from '../listener.js';

/** What handing a client back needs from the loop: its sockets' channels, and what it does with a client left waiting. */
export interface AgainParts {
  readonly channels: readonly SocketChannel[];
  /** `arrivedAt`: when the client's query first came (epoch ms; default: this turn). */
  readonly settle: (peer: Peer, s: number, msg: Buffer, arrivedAt?: number) => boolean;
  readonly logger: ReportLogger;
  /** HitPath remoteWaiters: every client reported is the main thread's, answered there or handed back (direct.ts). */
  readonly remoteWaiters: boolean;
  /** The hit path's cache, whose lookups (hits, misses) a client handed back must not count twice. */
  readonly lookups: { counting: boolean };
}

/** Every client the main thread heard of is its to answer: it sends the answer, or hands the client back to run again. */
const HELD_BY_MAIN = (): boolean => true;

/**
 * Completions answered per turn at most. A main thread that fell behind
 * hands back thousands at once; answering them all in one turn would hold
 * the hits queued behind them for milliseconds (measured: hit p99 from
 * 3 ms to 50 ms under a miss flood). 256 is about a batch's worth of work.
 */
export const COMPLETIONS_PER_TURN = 256;
/**
 * Completions per turn while a socket is behind (its last recvmmsg filled the
 * vector, so the kernel holds more). Under a miss flood a completion is
 * cache work (~4 us: the main thread answered its clients already) and the
 * queries behind in the socket queue are hits waiting: 256 took two thirds
 * of each turn, and a hit waited ~15 turns of it (measured with per-datagram
 * kernel timestamps: 20-28 ms). 32 take ~130 us beside a full batch's
 * ~600 us, and still apply ~40k completions a second while behind, more than
 * the main thread produces.
 */
export const COMPLETIONS_WHEN_BEHIND = 32;

export class Completions {
  readonly #hits: HitPath;
  readonly #clock: TurnClock;
  readonly #again: AgainParts;
  /**
   * With remoteWaiters, whom the main thread answers (HELD_BY_MAIN): even a
   * client kept here for the query log whose record came late, or at abort,
   * is never sent an answer from here (it would get two); else undefined.
   */
  readonly heldByMain: ((peer: ClientPeer) => boolean) | undefined;
  /**
   * Completions taken from the port and not yet applied, oldest first; #doneAt indexes into the first. Clients
   * handed back ('again') queue here too, in the order they came: after the completion of the question they waited on.
   */
  readonly #done: Packed[];
  readonly #handedBack = new WeakSet<Packed>();
  #doneAt: number;

  /** The main thread's completions ring (WorkerInit.completions). */
  readonly #ring: PackedRing;

  constructor(hits: HitPath, clock: TurnClock, again: AgainParts, ring: SharedArrayBuffer) {
    this.#ring = new PackedRing(ring);
    this.#hits = hits;
    this.#clock = clock;
    this.#again = again;
    this.heldByMain = again.remoteWaiters ? HELD_BY_MAIN : undefined;
    this.#done = [];
    this.#doneAt = 0;
  }

  /** Some wait: a turn with them left over is no idle turn. */
  get waiting(): boolean {
    return this.#done.length > 0;
  }

  /** The main thread's completions as it wrote them to the ring (packed-ring.ts), applied in the turns to come. */
  takeRing(): void {
    this.#ring.drain(this.#fromRing);
  }

  readonly #fromRing = (items: Packed | null): void => {
    if (items !== null) this.#done.push(items);
  };

  /** A 'done' message's completions, applied in the turns to come; `again`: an 'again' message's clients. */
  push(items: Packed, again = false): void {
    if (again) this.#handedBack.add(items);
    this.#done.push(items);
  }

  /**
   * At abort: every queued completion first (its clients may have had their
   * answer from the main thread, and must not get a SERVFAIL after it), then
   * `abortAll`, then the clients handed back meanwhile. Run before it, one
   * would join a question the abort closes, or miss afresh, and be reported
   * to a main thread that stopped waiting and closes us next: never answered.
   * After it, the loop's forward() answers a new miss at once.
   */
  abort(abortAll: () => number): number {
    const again: [Packed, number][] = [];
    while (this.waiting) this.apply(COMPLETIONS_PER_TURN, again);
    const n = abortAll();
    for (const [p, i] of again) this.#handleAgain(p, i);
    return n;
  }

  /** Applies up to `limit` queued completions; returns how many. `defer`: clients handed back go there, not run. */
  apply(limit = COMPLETIONS_PER_TURN, defer: [Packed, number][] | null = null): number {
    let n = 0;
    while (n < limit && this.#done.length > 0) {
      const p = this.#done[0]!;
      const i = this.#doneAt++;
      if (this.#doneAt >= p.count) {
        this.#done.shift();
        this.#doneAt = 0;
      }
      if (i >= p.count) continue;
      if (this.#handedBack.has(p)) {
        if (defer !== null) defer.push([p, i]);
        else this.#handleAgain(p, i);
        n++;
        continue;
      }
      const token = itemToken(p, i);
      const outcome = OUTCOMES[itemTag(p, i)] ?? 'network';
      const answered = this.heldByMain;
      // Every client of it had its answer from the main thread, which stored it too: only the question to close.
      if (answered !== undefined && this.#hits.release(token, answered, outcome)) {
        n++;
        continue;
      }
      const turn = this.#clock.stamp;
      // Its clients had their answer when the main thread sent it: logged with their duration as of then.
      if (itemExtra(p, i, 0) !== 0) this.#clock.stamp = turn - msSince16(itemExtra(p, i, 1), turn);
      try {
        // The clients the main thread holds (heldByMain) get nothing from here, and are not counted twice.
        this.#hits.complete(token, itemBytes(p, i), outcome, answered);
      } finally {
        this.#clock.stamp = turn;
      }
      n++;
    }
    return n;
  }

  /**
   * A client the main thread handed back (protocol.ts 'again'): its record
   * reached the main thread after the question it joined here was answered
   * there. Its query goes through the hit path again, as if just received:
   * now a hit, usually, as the answer was stored; else a miss of its own.
   */
  #handleAgain(p: Packed, i: number): void {
    const tag = itemTag(p, i);
    const s = tag & 0xff;
    const channel = this.#again.channels[s];
    const msg = itemBytes(p, i);
    if (channel === undefined || msg === null) return;
    const peer = new Peer(new Uint32Array(p.index.buffer, p.index.byteOffset, p.index.length), itemExtraOffset(p, i));
    peer.sock = s;
    peer.nameLen = tag >>> 8;
    // When it first asked (a record without the word: as of this turn), so its duration is not observed as 0 s.
    const now = this.#clock.stamp;
    const arrived = itemExtra(p, i, WAITER_ARRIVED_WORD);
    const arrivedAt = arrived === 0 ? now : now - msSince16(arrived, now);
    // Its first look was counted (a miss): this one is not, so a query is one lookup, as with the dgram backend.
    this.#again.lookups.counting = false;
    try {
      this.#hits.handle(msg, channel, peer, arrivedAt);
    } catch (err) {
      this.#again.logger.error('query handler threw', { error: String(err) });
      return;
    } finally {
      this.#again.lookups.counting = true;
    }
    this.#again.settle(peer, s, msg, arrivedAt);
  }
}
