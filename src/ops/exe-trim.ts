/**
 * Lets go of the `node` binary's pages the agent touched once and no longer
 * uses (sys/exe-pages.ts says which are safe, and what dropping costs).
 * Every interval: how much of the binary is resident (smaps, read off this
 * thread). The first check drops what start-up touched, whatever the load
 * (25-30 MiB stay dropped: 100,000 names and one worker at rest, 74 MiB
 * instead of 99). After that only at rest (the main thread quiet over the interval)
 * and when the binary grew at least `minGrowthBytes` over what the last
 * trim left: what a burst, a reload or a relist ran once goes, while an
 * agent under steady load is not made to fault its hot code back in every
 * interval. Should that happen anyway (workers busy with hits while the
 * main thread rests), a trim costs a few hundred minor faults as the hot
 * pages come back: well under a millisecond per interval.
 */
import type { Clock } from '../clock.js';
import { IntervalJob } from './interval-job.js';
import type { Logger } from '../log.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import type { ExePages, ExeRange } from '../sys/exe-pages.js';

export const EXE_TRIM_COUNTERS = defineCounters({
  trims: { name: 'nodelocal_exe_trims_total', help: 'Times the node binary\'s pages touched once (start-up, a reload) were dropped from memory (sys/exe-pages.ts).' },
  residentBytes: { name: 'nodelocal_exe_resident_bytes', type: 'gauge', help: 'Bytes of the node binary resident in the agent at the last reading (read-only, file-backed: what a trim may drop).' },
});
export type ExeTrimCounters = Counters<keyof typeof EXE_TRIM_COUNTERS.slot>;

/** Growth over what the last trim left that makes another worth faulting the hot pages back in. */
export const MIN_GROWTH_BYTES = 4 * 1024 * 1024;

export interface ExeTrimOptions {
  readonly sys: ExePages;
  readonly clock: Clock;
  readonly intervalMs: number;
  readonly counters: ExeTrimCounters;
  readonly logger: Logger;
  /** Whether the agent was at rest since the last check (the main thread's event loop nearly idle). */
  readonly quiet: () => boolean;
  readonly minGrowthBytes?: number;
}

export class ExeTrimmer extends IntervalJob {
  readonly #o: ExeTrimOptions;
  readonly #min: number;
  /** The binary's resident bytes right after the last trim (0 before the first). */
  #left: number;
  /** Whether a trim ever finished (the first one does not wait for rest). */
  #trimmed: boolean;

  constructor(o: ExeTrimOptions) {
    super(o.clock, o.intervalMs);
    this.#o = o;
    this.#min = o.minGrowthBytes ?? MIN_GROWTH_BYTES;
    this.#left = 0;
    this.#trimmed = false;
  }

  /** One check now (its reading and any trim finish later, off this thread). Returns whether one was started. */
  override check(): boolean {
    if (this.busy || this.failed) return false;
    // Read now, for the whole interval: the reading itself comes back later.
    if (!this.#o.quiet() && this.#trimmed) return false;
    this.busy = true;
    this.#read((ranges, resident) => {
      if (resident < this.#left + this.#min) {
        this.busy = false;
        return;
      }
      this.#o.sys.drop(ranges, (failed) => {
        if (failed === ranges.length) return this.#fail('madvise failed', `${failed} of ${ranges.length} mappings`);
        this.#o.counters.values[EXE_TRIM_COUNTERS.slot.trims]!++;
        this.#trimmed = true;
        // What the trim left (the pages touched meanwhile among them): the mark the next one must grow past.
        this.#read((_, after) => {
          this.#left = after;
          this.busy = false;
        });
      });
    });
    return true;
  }

  /** The droppable mappings and their resident bytes (also the gauge); a failure ends trimming. */
  #read(then: (ranges: readonly ExeRange[], resident: number) => void): void {
    this.#o.sys.read((err, ranges) => {
      if (err !== null) return this.#fail('could not read /proc/self/smaps', err.message);
      let resident = 0;
      for (const r of ranges) resident += r.resident;
      this.#o.counters.values[EXE_TRIM_COUNTERS.slot.residentBytes] = resident;
      then(ranges, resident);
    });
  }

  /** Not retried every interval: the call itself is broken here. */
  #fail(what: string, detail: string): void {
    this.busy = false;
    this.failed = true;
    this.#o.logger.warn(`${what}: the node binary's start-up pages stay resident`, { error: detail });
  }
}
