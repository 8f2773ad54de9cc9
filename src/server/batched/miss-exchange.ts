/**
 * The main thread's side of the workers' miss boundary: misses from every
 * worker go to one MissSink (the Resolver), identical questions in flight
 * from several workers share one upstream query, and each outcome is handed
 * back to every worker that asked, under that worker's own token.
 *
 *   worker A ─ (a7, key, query) ─┐                     ┌─► A: complete(a7, ...)
 *   worker B ─ (b3, key, query) ─┴► Shared{t42} ─ forward(t42) ─► Resolver
 *                                   Resolver ─ complete(t42, answer) ─┘ └─► B: complete(b3, ...)
 *
 * Each worker keeps its own cache (listener.ts says why), so without this a
 * popular name expiring in N caches at once would cost N upstream queries.
 */
import type { MissOutcome, MissSink } from '../hit-path.js';
import type { MissCompleter } from '../resolver.js';

/** A worker as the exchange sees it: somewhere to hand outcomes. */
export interface MissReturn {
  /** False once the worker is gone: its waiters are dropped. */
  readonly alive: boolean;
  deliver(token: number, answer: Buffer | null, outcome: MissOutcome): void;
}

interface Waiter {
  readonly to: MissReturn;
  readonly token: number;
}

class Shared {
  readonly token: number;
  readonly key: string;
  readonly waiters: Waiter[];
  constructor(token: number, key: string, first: Waiter) {
    this.token = token;
    this.key = key;
    this.waiters = [first];
  }
}

export class MissExchange implements MissCompleter {
  #sink: MissSink | null;
  readonly #byKey: Map<string, Shared>;
  readonly #byToken: Map<number, Shared>;
  #nextToken: number;
  /** Misses that joined another worker's question (a counter slot owned by the caller). */
  readonly #coalesced: Float64Array;
  readonly #coalescedSlot: number;

  constructor(coalesced: Float64Array, slot: number) {
    this.#sink = null;
    this.#byKey = new Map();
    this.#byToken = new Map();
    this.#nextToken = 1;
    this.#coalesced = coalesced;
    this.#coalescedSlot = slot;
  }

  /** Wires the upstream side (the Resolver); set once before the first miss. */
  connect(sink: MissSink): void {
    this.#sink = sink;
  }

  /** Questions in flight on the upstream side. */
  get inflight(): number {
    return this.#byToken.size;
  }

  /** A worker's miss. */
  forward(from: MissReturn, token: number, key: string, query: Buffer): void {
    const waiter: Waiter = { to: from, token };
    const shared = this.#byKey.get(key);
    if (shared !== undefined) {
      this.#coalesced[this.#coalescedSlot]!++;
      shared.waiters.push(waiter);
      return;
    }
    if (this.#sink === null) {
      from.deliver(token, null, 'closed');
      return;
    }
    // Tokens wrap long before a double could lose precision; a live token is never reused (2^31 misses apart).
    const t = this.#nextToken;
    this.#nextToken = t >= 0x7fffffff ? 1 : t + 1;
    const s = new Shared(t, key, waiter);
    this.#byKey.set(key, s);
    this.#byToken.set(t, s);
    // May complete synchronously: registered first so complete() finds it.
    this.#sink.forward(t, key, query);
  }

  /** MissCompleter: the upstream side's outcome, fanned out to every worker that asked. Unknown tokens are ignored. */
  complete(token: number, answer: Buffer | null, outcome: MissOutcome): void {
    const s = this.#byToken.get(token);
    if (s === undefined) return;
    this.#byToken.delete(token);
    if (this.#byKey.get(s.key) === s) this.#byKey.delete(s.key);
    for (const w of s.waiters) if (w.to.alive) w.to.deliver(w.token, answer, outcome);
  }
}
