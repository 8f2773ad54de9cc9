/**
 * Time as a dependency. Every module that needs "now" or a periodic sweep
 * takes a Clock, so tests drive TTL countdown, deadlines and backoff without
 * sleeping.
 *
 * Monotonic on purpose: an NTP step of the wall clock must not age every
 * cached answer at once or fire every deadline. Only differences between
 * now() values mean anything; a snapshot written to disk (later) converts
 * to wall time at its edge.
 */
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** Milliseconds on a monotonic scale (only differences matter). */
  now(): number;
  /** Wall-clock milliseconds since the epoch, for what leaves the process (TSIG time, snapshots, logs). */
  wall(): number;
  /**
   * Registers a sweep: `fn(now)` runs about every SWEEP_MS while registered.
   * One shared timer serves every sweeper (deadlines of both upstream
   * transports, per-connection timeouts), in the spirit of undici's coarse
   * fast timers. Returns the function that unregisters it.
   */
  sweep(fn: (now: number) => void): () => void;
}

/** Coarse on purpose: a deadline of 2 s fires within 50 ms, and the cost is one timer for the whole process. */
export const SWEEP_MS = 50;

/** `fn` about every `intervalMs` (the first one interval from now), on the clock's sweep. Returns the function that stops it. */
export function everyInterval(clock: Clock, intervalMs: number, fn: () => void): () => void {
  let next = clock.now() + intervalMs;
  return clock.sweep((now) => {
    if (now < next) return;
    next = now + intervalMs;
    fn();
  });
}

/** The shared sweep list of one clock: run them all, tolerate removal while iterating. */
class Sweepers {
  readonly #fns: Set<(now: number) => void>;
  constructor() {
    this.#fns = new Set();
  }
  get size(): number {
    return this.#fns.size;
  }
  add(fn: (now: number) => void): void {
    this.#fns.add(fn);
  }
  delete(fn: (now: number) => void): void {
    this.#fns.delete(fn);
  }
  run(now: number): void {
    for (const fn of [...this.#fns]) {
      if (this.#fns.has(fn)) fn(now);
    }
  }
}

class SystemClock implements Clock {
  readonly #sweepers: Sweepers;
  #timer: NodeJS.Timeout | null;
  /** Offset so values look like epoch ms in logs, while moving only with the monotonic clock. */
  readonly #origin: number;

  constructor() {
    this.#sweepers = new Sweepers();
    this.#timer = null;
    this.#origin = performance.timeOrigin;
  }

  now(): number {
    return this.#origin + performance.now();
  }

  wall(): number {
    return Date.now();
  }

  sweep(fn: (now: number) => void): () => void {
    this.#sweepers.add(fn);
    if (this.#timer === null) {
      this.#timer = setInterval(() => this.#sweepers.run(this.now()), SWEEP_MS);
      // Sweeps never keep the process alive: sockets and servers do.
      this.#timer.unref();
    }
    return () => {
      this.#sweepers.delete(fn);
      if (this.#sweepers.size === 0 && this.#timer !== null) {
        clearInterval(this.#timer);
        this.#timer = null;
      }
    };
  }
}

export const systemClock: Clock = new SystemClock();

/** A clock that moves only when told to; advancing it runs the sweeps. For tests and simulations. */
export class ManualClock implements Clock {
  #ms: number;
  readonly #sweepers: Sweepers;

  constructor(startMs = 1_700_000_000_000) {
    this.#ms = startMs;
    this.#sweepers = new Sweepers();
  }

  now(): number {
    return this.#ms;
  }

  wall(): number {
    return this.#ms;
  }

  sweep(fn: (now: number) => void): () => void {
    this.#sweepers.add(fn);
    return () => this.#sweepers.delete(fn);
  }

  /** Moves time forward in steps of at most SWEEP_MS, running the sweeps at each step as the real timer would. */
  advance(ms: number): void {
    const end = this.#ms + ms;
    if (this.#sweepers.size === 0) {
      this.#ms = end;
      return;
    }
    while (this.#ms < end) {
      this.#ms = Math.min(end, this.#ms + SWEEP_MS);
      this.#sweepers.run(this.#ms);
    }
  }
}
