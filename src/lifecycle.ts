/**
 * The agent's parts as an ordered list: started in order, stopped in
 * reverse, and a failed start rolls back what already started, keeping the
 * cause. Node integration slots in here (interface before the listeners,
 * interception only once we answer, the HTTP server, the API watch), each
 * one a named Component.
 */
import type { Logger } from './log.js';

export interface Component {
  readonly name: string;
  start(): Promise<void>;
  /**
   * Undo start(). `deadline` (Clock ms) is when the whole shutdown must be
   * over: a part that waits for something (queries in flight) stops waiting
   * then. `why` is 'rollback' when a later part failed to start: a part that
   * found things in place (another agent's link) then undoes only what its
   * own start made. Must not throw for ordinary failures: log them and go on.
   */
  stop(deadline: number, why?: StopReason): Promise<void>;
}

export type StopReason = 'stop' | 'rollback';

/**
 * Past a stop's deadline, what taking the node's set-up down (the rules, then
 * the link) may still take: commands that wait for the xtables lock. Then
 * they are cut short, so that every part still gets its turn before main's
 * hard stop, HARD_STOP_EXTRA_MS past the deadline (a snapshot's last second
 * and the link's removal come after the rules).
 */
export const TEARDOWN_EXTRA_MS = 7_000;
export const HARD_STOP_EXTRA_MS = 10_000;

export class StartupError extends Error {
  override readonly name = 'StartupError';
}

export class ComponentStack {
  readonly #parts: Component[];
  readonly #started: Component[];
  readonly #logger: Logger;

  constructor(logger: Logger) {
    this.#parts = [];
    this.#started = [];
    this.#logger = logger;
  }

  add(part: Component): void {
    this.#parts.push(part);
  }

  get names(): string[] {
    return this.#parts.map((p) => p.name);
  }

  /** Starts every part in order; on a failure stops those already started (reverse) and throws a StartupError naming the part. */
  async start(deadlineForRollback: () => number): Promise<void> {
    for (const part of this.#parts) {
      try {
        await part.start();
      } catch (err) {
        await this.stop(deadlineForRollback(), 'rollback');
        const msg = err instanceof Error ? err.message : String(err);
        throw new StartupError(`${part.name}: ${msg}`, { cause: err });
      }
      this.#started.push(part);
    }
  }

  /** Stops the started parts in reverse order; one part's error does not keep the others up. */
  async stop(deadline: number, why: StopReason = 'stop'): Promise<void> {
    while (this.#started.length > 0) {
      const part = this.#started.pop()!;
      try {
        await part.stop(deadline, why);
      } catch (err) {
        this.#logger.error('error while stopping', { part: part.name, error: err instanceof Error ? err.message : String(err) });
      }
    }
  }
}
