/**
 * One Resolver for two sources of misses: the main thread's hit path (TCP,
 * and UDP under --io dgram) and the batched UDP workers' exchange. Each
 * numbers its own misses from 1, so their tokens would collide at the
 * Resolver; the mux interleaves them (source i's token t travels as
 * 2t + i) and sends each outcome back to its source. No map, no
 * allocation per miss; tokens stay below 2^32, exact in a double.
 *
 *   HitPath ─ t ─► sink(0) ─ 2t ────┐
 *                                    ├─► Resolver ─ complete(u) ─► u odd? exchange : hit path, with u >> 1
 *   exchange ─ t ─► sink(1) ─ 2t+1 ─┘
 */
import type { MissOutcome, MissSink } from '../hit-path.js';
import type { MissCompleter } from '../resolver.js';

export class MissMux implements MissCompleter {
  readonly #sources: [MissCompleter, MissCompleter];
  #sink: MissSink | null;

  constructor(main: MissCompleter, workers: MissCompleter) {
    this.#sources = [main, workers];
    this.#sink = null;
  }

  /** The upstream side (the Resolver, whose `hits` is this mux); before the first miss. */
  connect(sink: MissSink): void {
    this.#sink = sink;
  }

  /** What source `i` (0: main hit path, 1: workers' exchange) forwards its misses to. */
  sink(i: 0 | 1): MissSink {
    return {
      forward: (token, key, query) => {
        const sink = this.#sink;
        if (sink === null) {
          this.#sources[i].complete(token, null, 'closed');
          return;
        }
        sink.forward(token * 2 + i, key, query);
      },
    };
  }

  complete(token: number, answer: Buffer | null, outcome: MissOutcome): void {
    // Not `token >> 1`: tokens reach 2^32, past int32 bit operations.
    const i = token % 2;
    this.#sources[i]!.complete((token - i) / 2, answer, outcome);
  }
}
