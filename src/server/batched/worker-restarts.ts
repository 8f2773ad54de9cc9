/**
 * Keeping every batched worker slot filled while the listener runs: a
 * worker that died is started again, and a start that fails (its thread
 * died before it was ready, its socket could not be bound) is tried again,
 * each try waiting twice as long as the last (1 s up to 30 s): with one
 * worker, a slot left empty is UDP down for the life of the process. A
 * slot's waits start over once its worker has served for the longest wait;
 * one that dies soon after each start keeps backing off, so a bug that
 * kills workers costs a start every 30 s, never a spin. Only a successor
 * that became ready counts as a restart.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../log.js';

export const RESTART_FIRST_DELAY_MS = 1000;
export const RESTART_MAX_DELAY_MS = 30_000;
/**
 * Every slot empty this long (four restarts failed, or one still not ready), or a worker stuck in its loop this long
 * (worker-watch.ts), and /health says 503: restarting the pod is what may bring UDP back (and while it is down the
 * kubelet's restart takes the rules away: pods fall back to kube-dns). The kubelet acts after its own
 * failureThreshold x periodSeconds (3 x 10 s in daemonset.yaml).
 */
export const EMPTY_LIVENESS_MS = 30_000;

export interface RestartDeps {
  /** Starts worker `index`; resolves once it is in its loop, rejects when it did not get there. */
  readonly spawn: (index: number) => Promise<void>;
  /** Whether the listener still serves (no restart once it pauses or closes). */
  readonly running: () => boolean;
  /** A successor became ready. */
  readonly restarted: () => void;
  readonly logger: Logger;
}

export class WorkerRestarts {
  readonly #deps: RestartDeps;
  readonly #timers: Set<NodeJS.Timeout>;
  /** Per slot: tries since its worker last served RESTART_MAX_DELAY_MS (the exponent of the next wait). */
  readonly #tries: number[];
  /** Per slot: when its worker became ready (performance.now()). */
  readonly #readyAt: number[];
  /** Per slot: its worker is in its loop (ready, and has not died since). */
  readonly #live: boolean[];
  /** When the last live worker died (performance.now()), every slot empty since; null while one is live. */
  #emptySince: number | null = null;

  constructor(slots: number, deps: RestartDeps) {
    this.#deps = deps;
    this.#timers = new Set();
    this.#tries = new Array<number>(slots).fill(0);
    this.#readyAt = new Array<number>(slots).fill(0);
    this.#live = new Array<boolean>(slots).fill(false);
  }

  /** How long every slot has been empty (each restart since failed, or still starting): UDP down that long; 0 while a worker is live. */
  get emptyForMs(): number {
    return this.#emptySince === null ? 0 : performance.now() - this.#emptySince;
  }

  /** Worker `index` is in its loop (at start, or a restart). */
  ready(index: number): void {
    this.#readyAt[index] = performance.now();
    this.#live[index] = true;
    this.#emptySince = null;
  }

  /** Worker `index` died after it started: its sockets are closed (the kernel spreads its traffic over the others). */
  died(index: number, code: number): void {
    this.#live[index] = false;
    if (!this.#live.includes(true)) this.#emptySince ??= performance.now();
    const running = this.#deps.running();
    if (running && performance.now() - this.#readyAt[index]! >= RESTART_MAX_DELAY_MS) this.#tries[index] = 0;
    const delay = running ? this.#schedule(index) : 0;
    this.#deps.logger.error('udp worker died; its sockets are closed', { worker: index, code, ...(running ? { restartInMs: delay } : {}) });
  }

  /** No more restarts (pause, close). */
  cancel(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  /** Starts slot `index` again after its next wait; returns the wait. */
  #schedule(index: number): number {
    const delay = Math.min(RESTART_FIRST_DELAY_MS * 2 ** this.#tries[index]!, RESTART_MAX_DELAY_MS);
    this.#tries[index]!++;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      if (!this.#deps.running()) return;
      this.#deps.spawn(index).then(
        () => {
          this.ready(index);
          this.#deps.restarted();
          this.#deps.logger.info('udp worker restarted', { worker: index });
        },
        (err: Error) => {
          const running = this.#deps.running();
          const next = running ? this.#schedule(index) : 0;
          this.#deps.logger.error('udp worker could not be restarted', { worker: index, error: err.message, ...(running ? { retryInMs: next } : {}) });
        },
      );
    }, delay);
    timer.unref();
    this.#timers.add(timer);
    return delay;
  }
}
