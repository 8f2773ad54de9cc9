/**
 * Gives freed heap memory back to the kernel: every interval, when the
 * malloc heaps hold more than `minFreeBytes` free below their tops (holes a
 * fill, a relist or the cache's own growth left), malloc_trim runs on the
 * thread pool (sys/malloc-trim.ts). Nothing on the query path waits for it:
 * the check is one mallinfo2 call, the walk happens off this thread, and at
 * most one trim runs at a time.
 */
import type { Clock } from '../clock.js';
import { IntervalJob } from './interval-job.js';
import type { Logger } from '../log.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import type { MallocTrim } from '../sys/malloc-trim.js';

export const HEAP_TRIM_COUNTERS = defineCounters({
  trims: { name: 'nodelocal_malloc_trims_total', help: 'Times free malloc memory was handed back to the kernel (malloc_trim).' },
  freeBytes: { name: 'nodelocal_malloc_free_bytes', type: 'gauge', help: 'Free bytes the malloc heaps held at the last check, below their tops.' },
});
export type HeapTrimCounters = Counters<keyof typeof HEAP_TRIM_COUNTERS.slot>;

/** Below this much free memory in the heaps a trim is not worth a thread-pool job. */
export const MIN_FREE_BYTES = 4 * 1024 * 1024;

export interface HeapTrimOptions {
  readonly sys: MallocTrim;
  readonly clock: Clock;
  readonly intervalMs: number;
  readonly counters: HeapTrimCounters;
  readonly logger: Logger;
  readonly minFreeBytes?: number;
}

export class HeapTrimmer extends IntervalJob {
  readonly #o: HeapTrimOptions;
  readonly #min: number;

  constructor(o: HeapTrimOptions) {
    super(o.clock, o.intervalMs);
    this.#o = o;
    this.#min = o.minFreeBytes ?? MIN_FREE_BYTES;
  }

  /** One check now: trims when worth it. Returns whether a trim was started. */
  override check(): boolean {
    if (this.busy || this.failed) return false;
    const s = this.#o.sys.stats();
    const holes = Math.max(0, s.free - s.top);
    const v = this.#o.counters.values;
    v[HEAP_TRIM_COUNTERS.slot.freeBytes] = holes;
    if (holes < this.#min) return false;
    this.busy = true;
    this.#o.sys.trimAsync((err) => {
      this.busy = false;
      if (err !== null) {
        // Not worth retrying every interval: the call itself is broken here.
        this.failed = true;
        this.#o.logger.warn('malloc_trim failed; freed memory stays with the process', { error: err.message });
        return;
      }
      v[HEAP_TRIM_COUNTERS.slot.trims]!++;
    });
    return true;
  }
}
