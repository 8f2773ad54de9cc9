/**
 * What the memory trimmers share (heap-trim.ts, exe-trim.ts): a check on
 * the clock's sweep every interval, whose work runs off the main thread,
 * one at a time, and stops for good once the call behind it proved broken.
 */
import { everyInterval, type Clock } from '../clock.js';

export abstract class IntervalJob {
  /** A check's work is out on the thread pool: the next check waits for it. */
  protected busy = false;
  /** The call itself failed here: not retried every interval. */
  protected failed = false;
  #stopSweep: (() => void) | null = null;
  readonly #clock: Clock;
  readonly #intervalMs: number;

  constructor(clock: Clock, intervalMs: number) {
    this.#clock = clock;
    this.#intervalMs = intervalMs;
  }

  start(): void {
    this.#stopSweep ??= everyInterval(this.#clock, this.#intervalMs, () => this.check());
  }

  stop(): void {
    this.#stopSweep?.();
    this.#stopSweep = null;
  }

  /** True while a check's work runs off this thread (tests). */
  get running(): boolean {
    return this.busy;
  }

  /** One check now. Returns whether it started work. */
  abstract check(): boolean;
}
