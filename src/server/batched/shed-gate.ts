/**
 * A batched worker's echo of the main thread's overload: a new miss the
 * main thread would refuse at --max-concurrent (the cap across every
 * upstream) is answered here, as the main thread would answer it (stale,
 * else SERVFAIL), instead of being packed, posted, refused and only then
 * answered. One upstream's own in-flight limit does not count: it says
 * nothing of the other routes.
 *
 * Why: under a miss flood every refused miss cost its worker about 10 us
 * and 2 KB of garbage on the way there and back (waiter copies, maps, the
 * report, the completion), and that work and its garbage collections are
 * what cached answers waited behind (README, "Hits beside a miss flood"). Shed
 * here, a flood miss costs what an error answer costs.
 *
 * Two tests, the second only after a refusal:
 *   - at the cap now: the main thread's count in flight and its cap, read
 *     from shared memory (upstream-load.ts), two loads per new miss;
 *   - for SOFT_PERIOD_MS after the main thread last refused one of this
 *     worker's misses at the cap (a refusal means misses crossed faster
 *     than that count showed: sent in the same turn, or queued behind a
 *     saturated main thread), those beyond the worker's share of the cap
 *     (the cap over the workers, at least MIN_SHARE) of its own already
 *     waiting on the main thread. That bounds what a worker holds for a
 *     main thread that is behind, whose refusals come back hundreds of ms
 *     late: each held miss's state survives the worker's scavenges, which
 *     then copy it (measured, with no bound: 6k misses/s crossed beside a
 *     20k/s flood, scavenges of 9-57 ms, hits waiting behind them).
 *
 * Until 2026-12-03 the gate guessed instead: every new miss shed for 50 ms
 * after each refusal, then all but 64 per worker for 2 s. A handful of
 * refusals at a cold start (34-55, as `--io dgram` had) became thousands of
 * SERVFAILs (6-21% of 5,000 misses/s for 5 s), and beside a flood the
 * workers shed 96% of the misses while the main thread sat 37-43% busy.
 *
 * The refusal stamp: the main thread stores the time (ms,
 * performance.timeOrigin + performance.now(): the same clock in every
 * thread, never stepped as the wall clock is, and the worker reads it once
 * a turn, TurnClock: Date.now() made a number, 16 bytes of garbage, for
 * every shed miss) in a shared 64-bit word each time it refuses one of this
 * worker's questions at the cap. The whole stamp, not 32 bits of it: a cut
 * stamp came round again every 2^32 ms (49.7 days), and every worker (all
 * stamped at spawn) then read "refused just now" at once. A stamp up to
 * STAMP_AHEAD_MS ahead of the turn's time is a refusal made during the
 * turn; one further ahead (a clock out of step, never expected) ends the
 * period rather than stretching it.
 *
 * Never shed here:
 *   - names in the zones the main thread can answer from its own cluster
 *     view: at its limit it answers those locally, not with a SERVFAIL;
 *   - a query whose cache read gave up (the store was mid-change on every
 *     attempt): the name may be cached, and the main thread answers it from
 *     the store; a flood keeps the writer busy, so these come with one;
 *   - questions already in flight: this worker's are joined (the hit path
 *     looks first); those of another worker or of TCP are seen in the main
 *     thread's table of questions in flight (upstream-load.ts, by key
 *     hash) and sent on, for the main thread to join.
 */
import { nameInZone, nameToWire } from '../../dns/name.js';
import { KEY_TAIL } from '../../dns/query-result.js';
import type { MissGate } from '../miss-boundary.js';
import { UpstreamLoad } from '../upstream-load.js';
import { Ctl } from './protocol.js';

/** How long after a refusal a worker keeps its own waiting misses within its share of the cap, ms. */
export const SOFT_PERIOD_MS = 2000;
/** A stamp this far ahead of the turn's clock is a refusal made during the turn, ms; further ahead, a clock out of step. */
export const STAMP_AHEAD_MS = 50;

/**
 * The stamp's word pair as one BigInt64, for the writer (Atomics: never
 * written half). A Float64 would hold the ms without a BigInt, but Atomics
 * does not take one, and a plain access racing another may tear.
 */
function refusedAt(ctl: Int32Array): BigInt64Array {
  return new BigInt64Array(ctl.buffer, ctl.byteOffset + Ctl.REFUSED_AT * 4, 1);
}

/**
 * The stamp as the worker reads it, without a BigInt per new miss (one was
 * a third of the garbage a shed miss left): its two words (little-endian:
 * low first) one at a time, the high one again after the low; when the two
 * high reads agree, the low word belongs to a stamp with that high word, old
 * or new, and either is a whole stamp. Bounded: a retry needs a store in
 * between, and the main thread stores at most once per refusal.
 */
function readStamp(ctl: Int32Array): number {
  const lo = Ctl.REFUSED_AT;
  for (;;) {
    const hi = Atomics.load(ctl, lo + 1);
    const low = Atomics.load(ctl, lo) >>> 0;
    if (Atomics.load(ctl, lo + 1) === hi) return hi * 0x100000000 + low;
  }
}

export class ShedGate implements MissGate {
  readonly #ctl: Int32Array;
  readonly #load: UpstreamLoad;
  readonly #v: Float64Array;
  readonly #slot: number;
  /** The worker's turn clock (loop-parts.ts TurnClock): read once a turn, no number made per miss. */
  readonly #clock: { now(): number };
  readonly #reads: { readonly lastGaveUp: boolean };
  /** This worker's misses waiting on the main thread (its hit path). */
  #waiting: { readonly inflight: number };
  /** Zones the main thread answers from its view at its limit, in wire form. */
  #local: Buffer[];

  /**
   * `load`: where the main thread keeps its count in flight and cap (UpstreamLoad's buffer); `reads`: the worker's cache reader, whose last read may have
   * given up on a store mid-change (that is no miss).
   */
  constructor(ctl: Int32Array, load: SharedArrayBuffer, localZones: readonly string[], reads: { readonly lastGaveUp: boolean }, counter: { values: Float64Array; slot: number }, clock: { now(): number }) {
    this.#ctl = ctl;
    this.#load = new UpstreamLoad(load);
    this.#reads = reads;
    this.#v = counter.values;
    this.#slot = counter.slot;
    this.#clock = clock;
    this.#waiting = { inflight: 0 };
    this.#local = [];
    this.configure(localZones);
  }

  /** Whose misses in flight count against the share: the hit path this gate guards (made after the gate). */
  watch(waiting: { readonly inflight: number }): void {
    this.#waiting = waiting;
  }

  /** A reload: the zones with a local answerer may have changed (the cluster view turned on or off). */
  configure(localZones: readonly string[]): void {
    this.#local = localZones.map((zone) => nameToWire(zone));
  }

  /** False: answer this new miss now (stale or SERVFAIL), the main thread would refuse it. Counts what it turns away. */
  admits(q: { readonly keyBytes: Uint8Array; readonly keyLen: number; readonly keyHash: number }): boolean {
    if (!this.#load.atCap) {
      const since = this.#clock.now() - readStamp(this.#ctl);
      // The clock is the turn's, read as it began: a refusal stamped since then reads a little ahead, and is one just
      // now. Far ahead ends the period, never stretches it.
      if (since < -STAMP_AHEAD_MS || since >= SOFT_PERIOD_MS || this.#waiting.inflight < this.#load.share) return true;
    }
    // The name may well be cached: the read met the writer mid-change (preempted inside it, most likely). The main thread answers it from the store.
    if (this.#reads.lastGaveUp) return true;
    // Read from the key's bytes: a string-keyed zone table made the key string and a slice per label for each shed miss.
    for (const zone of this.#local) if (nameInZone(q.keyBytes, q.keyLen - KEY_TAIL, zone)) return true;
    // Asked already, by another worker or over TCP: the main thread joins it to that question, refusing nothing.
    if (this.#load.maybeInflight(q.keyHash)) return true;
    this.#v[this.#slot]!++;
    return false;
  }
}

/** The main thread's side: one of this worker's questions was refused at the cap. */
export function stampRefusal(ctl: Int32Array, ms: number = performance.timeOrigin + performance.now()): void {
  Atomics.store(refusedAt(ctl), 0, BigInt(Math.trunc(ms)));
}
