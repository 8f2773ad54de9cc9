/**
 * The buffer each answer this thread writes goes into (cache hits, stale
 * and error answers: patch.ts, build.ts). By default a new one from Node's
 * pool, which the caller may keep as long as it likes.
 *
 * A batched worker (server/batched/worker.ts) switches its thread to one
 * scratch block instead: every answer it makes is copied into a send vector
 * (or sent) before the next is made, so a fresh Buffer per answer (about
 * 100 bytes of heap: the Buffer object, its pool slice) was only garbage,
 * and under a miss flood the worker answers 9 in 10 of the flood's queries
 * itself (SERVFAIL or stale: shed-gate.ts); its scavenges came that much
 * sooner, and hits waited behind them. After the switch an answer is valid
 * only until the next answer made on this thread.
 *
 * The query a miss sends upstream (build.ts upstreamQuery) likewise, from a
 * scratch block of its own: the worker copies it into its report to the
 * main thread (protocol.ts Packer) before it makes the next.
 */

/** Longest answer written into the scratch; a longer one gets a Buffer of its own. */
export const SCRATCH_ANSWER_BYTES = 4096;

/** Views of the scratch, one per length, made once each (the answer must be a Buffer exactly as long). */
class ScratchAnswers {
  readonly #block = new ArrayBuffer(SCRATCH_ANSWER_BYTES);
  readonly #views: (Buffer | undefined)[] = [];

  get(n: number): Buffer {
    if (n > SCRATCH_ANSWER_BYTES) return Buffer.allocUnsafe(n);
    let v = this.#views[n];
    if (v === undefined) {
      v = Buffer.from(this.#block, 0, n);
      this.#views[n] = v;
    }
    return v;
  }
}

let answers: ScratchAnswers | null = null;
let queries: ScratchAnswers | null = null;

/** `n` bytes for an answer, every one of which the caller writes. */
export function answerBuffer(n: number): Buffer {
  return answers === null ? Buffer.allocUnsafe(n) : answers.get(n);
}

/** `n` bytes for a query to an upstream, every one of which the caller writes. */
export function upstreamQueryBuffer(n: number): Buffer {
  return queries === null ? Buffer.allocUnsafe(n) : queries.get(n);
}

/** From now on, answers made on this thread share one scratch block, and upstream queries another: each valid until the next of its kind (see above). */
export function useScratchAnswers(): void {
  answers ??= new ScratchAnswers();
  queries ??= new ScratchAnswers();
}
