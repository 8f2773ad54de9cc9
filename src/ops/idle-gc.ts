/**
 * A full garbage collection for a thread once it has gone quiet: a batched
 * worker (quiet: few datagrams) or the main thread (quiet: its event loop
 * mostly idle).
 *
 * V8 collects what a burst left (a cache fill, a miss flood) by itself only
 * when more allocation pushes the heap to its next limit, or through its
 * memory reducer, which runs as a task on the thread's event loop. A worker
 * sits in its own poll loop and never runs that event loop, so after a burst
 * the garbage (and the ArrayBuffers it holds outside the heap) stays
 * resident for good: measured after a 100,000-name fill, 164 MiB RSS at
 * rest with one worker, 93 MiB once collected.
 *
 * So the worker checks once a second: quiet (few datagrams since the last
 * check), and the heap grown well past what the last collection left?
 * Then one full collection, and one more at the next quiet check: the
 * first frees the objects, the second the pages and the ArrayBuffer memory
 * they held (one alone took the example to 124 MiB, two to 95). Each pauses
 * this thread for 10-50 ms: at the quiet rate that delays a handful of
 * queries, never a busy one.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

/** How often the worker looks. */
export const CHECK_EVERY_MS = 1000;
/** Datagrams a second at or under which the worker counts as quiet. */
export const QUIET_RATE = 100;
/** Growth of heap plus external memory since the last collection that makes one worth its pause. */
export const MIN_GROWTH_BYTES = 8 * 1024 * 1024;
/** At most one collection this often. */
export const MIN_GAP_MS = 10_000;

export class IdleCollector {
  readonly #gc: (() => void) | null;
  readonly #heapBytes: () => number;
  #checkedAt: number;
  #collectedAt: number;
  #datagrams: number;
  #baseline: number;
  /** The second collection of a pair is due at the next quiet check. */
  #followUp: boolean;

  /** `gc` null: never collects (the call could not be had). */
  constructor(gc: (() => void) | null, now: number, heapBytes: () => number = heapAndExternalBytes) {
    this.#gc = gc;
    this.#heapBytes = heapBytes;
    this.#checkedAt = now;
    this.#collectedAt = now;
    this.#datagrams = 0;
    this.#baseline = gc === null ? 0 : heapBytes();
    this.#followUp = false;
  }

  /** Called every turn with the clock and the worker's datagram count so far; true when it collected. */
  maybeCollect(now: number, datagrams: number): boolean {
    const elapsed = now - this.#checkedAt;
    if (elapsed < CHECK_EVERY_MS) return false;
    const rate = ((datagrams - this.#datagrams) * 1000) / elapsed;
    this.#datagrams = datagrams;
    return this.check(now, rate <= QUIET_RATE);
  }

  /** One check, about every CHECK_EVERY_MS, given whether the thread was quiet since the last; true when it collected. */
  check(now: number, quiet: boolean): boolean {
    this.#checkedAt = now;
    if (this.#gc === null || !quiet) return false;
    if (this.#followUp) {
      this.#followUp = false;
    } else {
      if (now - this.#collectedAt < MIN_GAP_MS || this.#heapBytes() - this.#baseline < MIN_GROWTH_BYTES) return false;
      this.#followUp = true;
    }
    this.#gc();
    this.#collectedAt = now;
    this.#baseline = this.#heapBytes();
    return true;
  }
}

/** Bytes the isolate holds: its heap in use, and ArrayBuffer memory outside it. */
export function heapAndExternalBytes(): number {
  const s = v8.getHeapStatistics();
  return s.used_heap_size + s.external_memory;
}

/**
 * V8's gc() for this thread, or null. The flag is process-wide and only
 * contexts made after it see `gc`, so a fresh one hands it over; no global
 * of this thread changes.
 */
export function exposeGc(): (() => void) | null {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    return typeof gc === 'function' ? () => void (gc as () => unknown)() : null;
  } catch {
    return null;
  }
}
