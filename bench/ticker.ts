/**
 * A sub-millisecond wake-up for the open-loop scheduler. Node's timers have
 * 1 ms resolution, so a generator driven by setTimeout sends every lookup up
 * to ~1 ms late, and at low rates that lag would dominate the latency of a
 * cache hit (~0.1 ms). Busy-polling would burn the core the target needs.
 *
 * Instead a worker thread sleeps in Atomics.wait (a futex with a nanosecond
 * timeout) until the next due time and then posts one message, which wakes
 * the main event loop. The main thread arms it with the next intended send
 * time; wakes are at least MIN_GAP_MS apart, so at high rates they become
 * bursts (and answers arriving in between also drive the scheduler). What is
 * left (~30 µs, the main loop's wake-up) is measured as "send lag".
 *
 * Shared layout: Int32 [0] generation (bumped on every arm, so a sleeping
 * worker re-reads), [1] stop flag; BigInt64 [1] due time in hrtime ns (0 = not armed).
 */
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';

/** Minimum spacing of wakes: bounds the main thread's wake-up cost (≈ 10 µs each) to a few % of a core. */
export const MIN_GAP_MS = 0.2;
/**
 * A futex timeout fires up to the kernel's timer slack (50 µs) late, so the
 * worker wakes this much early and spins to the due time: measured here, the
 * wake lag (due → main thread running) drops from ~95 µs to ~30 µs at p50.
 */
const SPIN_NS = 60_000;
/** Spin only before wakes at least this far apart (≤ 1000 spins/s, ≤ 6% of a core). */
const SPIN_MIN_GAP_NS = 1_000_000;

const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const ctl = new Int32Array(workerData.sab, 0, 2);
const due = new BigInt64Array(workerData.sab, 8, 1);
const spinNs = BigInt(workerData.spinNs);
const spinMinGapNs = BigInt(workerData.spinMinGapNs);
let last = 0n;
for (;;) {
  if (Atomics.load(ctl, 1) === 1) break;
  const gen = Atomics.load(ctl, 0);
  const d = Atomics.load(due, 0);
  if (d === 0n) { Atomics.wait(ctl, 0, gen, 200); continue; }
  const spin = d - last >= spinMinGapNs ? spinNs : 0n;
  const waitMs = Number(d - spin - process.hrtime.bigint()) / 1e6;
  if (waitMs > 0.01) { Atomics.wait(ctl, 0, gen, waitMs); continue; }
  while (process.hrtime.bigint() < d) {}
  if (Atomics.compareExchange(due, 0, d, 0n) === d) { last = d; parentPort.postMessage(0); }
}
`;
export class Ticker {
  readonly #worker: Worker;
  readonly #ctl: Int32Array;
  readonly #due: BigInt64Array;
  /** hrtime(ns) at performance.now() = 0, so due times convert without a clock read per arm. */
  readonly #originNs: bigint;
  #armedAt = 0;

  constructor(onTick: () => void) {
    const sab = new SharedArrayBuffer(16);
    this.#ctl = new Int32Array(sab, 0, 2);
    this.#due = new BigInt64Array(sab, 8, 1);
    const p = performance.now();
    this.#originNs = process.hrtime.bigint() - BigInt(Math.round(p * 1e6));
    this.#worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { sab, spinNs: SPIN_NS, spinMinGapNs: SPIN_MIN_GAP_NS }, execArgv: [], stdout: false, stderr: false });
    this.#worker.unref();
    this.#worker.on('message', () => {
      this.#armedAt = 0;
      onTick();
    });
    this.#worker.on('error', () => {
      // Without the ticker the 1 ms interval timer still drives the schedule, only less precisely.
    });
  }

  /** Wake at `atMs` (performance.now() time), or MIN_GAP_MS after `nowMs` if that is later. */
  arm(atMs: number, nowMs: number): void {
    const at = Math.max(atMs, nowMs + MIN_GAP_MS);
    // A wake already armed no later than needed serves (an early one just re-arms): no syscall per answer.
    if (this.#armedAt !== 0 && this.#armedAt <= at) return;
    this.#armedAt = at;
    Atomics.store(this.#due, 0, this.#originNs + BigInt(Math.round(at * 1e6)));
    Atomics.add(this.#ctl, 0, 1);
    Atomics.notify(this.#ctl, 0);
  }

  disarm(): void {
    this.#armedAt = 0;
    Atomics.store(this.#due, 0, 0n);
    Atomics.add(this.#ctl, 0, 1);
    Atomics.notify(this.#ctl, 0);
  }

  async close(): Promise<void> {
    Atomics.store(this.#ctl, 1, 1);
    Atomics.add(this.#ctl, 0, 1);
    Atomics.notify(this.#ctl, 0);
    await this.#worker.terminate();
  }
}
