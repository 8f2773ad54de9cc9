/**
 * The agent's parts as an ordered list: started in order, stopped in
 * reverse, and a failed start rolls back what already started, keeping the
 * cause; a stop during the start cuts it short (cutStart). Node integration slots in here (interface before the listeners,
 * interception only once we answer, the HTTP server, the API watch), each
 * one a named Component.
 */
import type { Logger } from './log.js';

export interface Component {
  readonly name: string;
  /**
   * `cut` is aborted when a stop comes during the start (ComponentStack.cutStart): a part that waits on
   * something (a firewall command) stops waiting, undoes its own half, bounded as its stop is, and throws.
   */
  start(cut?: AbortSignal): Promise<void>;
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

/** What start() throws when a stop cut it short (cutStart): by then everything it had started is stopped. */
export class StartCut extends Error {
  override readonly name = 'StartCut';
}

export class ComponentStack {
  readonly #parts: Component[];
  readonly #started: Component[];
  readonly #logger: Logger;
  readonly #cut: AbortController;
  #cutDeadline: number;

  constructor(logger: Logger) {
    this.#parts = [];
    this.#started = [];
    this.#logger = logger;
    this.#cut = new AbortController();
    this.#cutDeadline = 0;
  }

  add(part: Component): void {
    this.#parts.push(part);
  }

  get names(): string[] {
    return this.#parts.map((p) => p.name);
  }

  /**
   * A stop while start() runs (a SIGTERM during start-up): the part starting is cut short, the parts after it
   * never start, those before it are stopped as by stop(deadline), and start() then throws StartCut. Without
   * it a stop waited for the whole start: each firewall command is bounded, but a start runs several.
   */
  cutStart(deadline: number): void {
    if (this.#cut.signal.aborted) return;
    this.#cutDeadline = deadline;
    this.#cut.abort();
  }

  /**
   * Starts every part in order; on a failure stops those already started (reverse) and throws a StartupError
   * naming the part. Cut short (cutStart): stops them the way a stop does and throws StartCut.
   */
  async start(deadlineForRollback: () => number): Promise<void> {
    const cut = this.#cut.signal;
    for (const part of this.#parts) {
      if (cut.aborted) break;
      try {
        await part.start(cut);
      } catch (err) {
        // Failed because it was cut short (or failed meanwhile): the stop asked for takes down what started. The
        // cut wins (exit 0), but the failure is said: it may have nothing to do with the stop.
        if (cut.aborted) {
          this.#logger.info('start cut short by a stop; the part starting ended with an error', { part: part.name, error: err instanceof Error ? err.message : String(err) });
          break;
        }
        await this.stop(deadlineForRollback(), 'rollback');
        const msg = err instanceof Error ? err.message : String(err);
        throw new StartupError(`${part.name}: ${msg}`, { cause: err });
      }
      this.#started.push(part);
    }
    if (!cut.aborted) return;
    await this.stop(this.#cutDeadline);
    throw new StartCut('stopped during start-up');
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
