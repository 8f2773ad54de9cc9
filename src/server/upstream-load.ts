/**
 * The main thread's upstream questions in flight and its cap on them
 * (--max-concurrent), in shared memory where every batched worker reads
 * them: a worker turns a new miss away itself when the main thread is at
 * its cap now (shed-gate.ts), as the main thread would, instead of guessing
 * from how lately it refused one.
 *
 * Why: the guess (shed everything for 50 ms after each refusal, then all
 * but 64 a worker for 2 s) turned a handful of refusals into thousands of
 * SERVFAILs. A batched agent meeting 5,000 misses/s from a cold start, its
 * main thread briefly at the cap (34-55 refusals, as `--io dgram` had),
 * shed 2,765-2,910 more with SERVFAIL in 5 s (6-21% of its answers), and
 * beside a 20,000/s flood the workers shed 96% of the misses while the main
 * thread sat 37-43% busy (README "Where the speed and memory goals stand").
 *
 * The main thread stores each change of its count (Atomics: one store, a
 * few ns, beside the question it counts); a worker loads two words per new
 * miss. What a worker sent this turn is not counted yet: the main thread
 * refuses that overshoot itself, at most a turn's misses.
 *
 * Also which questions are in flight, so that at the cap a worker still
 * sends one another worker (or TCP) already asked: the main thread joins
 * it to that question instead of refusing it, where shedding it gave a
 * SERVFAIL (or stale) for a name about to be answered, a popular expired
 * name beside a flood most of all. A counting table by key hash (the hash
 * the worker's parser already made): the main thread adds one when a
 * question goes up and takes it away when it completes; a worker reads one
 * word. Two questions on one counter (1,000 in flight: about 3% of the
 * rest) only send a miss to be refused there, as before this table.
 */
const INFLIGHT = 0;
const CAP = 1;
const WORKERS = 2;
const WORDS = 3;
/** Counters of the in-flight table (a power of two): 128 KiB. */
const MARKS = 32_768;
/** No cap written yet (the resolver writes its own when it connects): nothing is at it. */
const NO_CAP = 0x7fffffff;
/**
 * A worker's share of the cap, the most of its own misses it lets wait on
 * the main thread while that refuses some, is never below this: a main
 * thread that refuses because one worker holds the cap still hears from the
 * others.
 */
export const MIN_SHARE = 64;

export class UpstreamLoad {
  readonly buffer: SharedArrayBuffer;
  readonly #w: Int32Array;
  readonly #marks: Int32Array;

  /** `workers`: how many workers share the cap (the main thread's side); a worker attaches to `buffer`. */
  constructor(from: { workers: number } | SharedArrayBuffer) {
    const fresh = !(from instanceof SharedArrayBuffer);
    this.buffer = fresh ? new SharedArrayBuffer((WORDS + MARKS) * 4) : from;
    this.#w = new Int32Array(this.buffer, 0, WORDS);
    this.#marks = new Int32Array(this.buffer, WORDS * 4, MARKS);
    if (fresh) {
      Atomics.store(this.#w, CAP, NO_CAP);
      Atomics.store(this.#w, WORKERS, Math.max(1, from.workers));
    }
  }

  /** The main thread: its questions in flight now. */
  setInflight(n: number): void {
    Atomics.store(this.#w, INFLIGHT, n);
  }

  /** The main thread: --max-concurrent (at start and each reload). */
  setCap(n: number): void {
    Atomics.store(this.#w, CAP, Math.min(n, NO_CAP));
  }

  /** The main thread would refuse a new question now. */
  get atCap(): boolean {
    return Atomics.load(this.#w, INFLIGHT) >= Atomics.load(this.#w, CAP);
  }

  /** The main thread: a question with key hash `hash` went up (+1) or completed (-1). */
  mark(hash: number, delta: 1 | -1): void {
    Atomics.add(this.#marks, hash & (MARKS - 1), delta);
  }

  /** A question with key hash `hash` may be in flight on the main thread (it would join it). */
  maybeInflight(hash: number): boolean {
    return Atomics.load(this.#marks, hash & (MARKS - 1)) > 0;
  }

  /** A worker's share of the cap (at least MIN_SHARE). */
  get share(): number {
    return Math.max(MIN_SHARE, Math.floor(Atomics.load(this.#w, CAP) / Atomics.load(this.#w, WORKERS)));
  }
}
