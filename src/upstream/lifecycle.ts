/**
 * running -> closing -> closed, and the promise close() hands out: the same
 * small state machine in every upstream transport, kept in one place.
 */
export class Lifecycle {
  #state: 'running' | 'closing' | 'closed';
  #done: Promise<void> | null;
  #resolve: (() => void) | null;

  constructor() {
    this.#state = 'running';
    this.#done = null;
    this.#resolve = null;
  }

  get running(): boolean {
    return this.#state === 'running';
  }

  get closing(): boolean {
    return this.#state === 'closing';
  }

  /** Moves to closing; the first call returns true (the caller then starts its own shutdown). */
  beginClose(): boolean {
    if (this.#done !== null) return false;
    this.#state = 'closing';
    this.#done = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    return true;
  }

  /** Resolves when finish() runs; call after beginClose(). */
  get done(): Promise<void> {
    return this.#done ?? Promise.resolve();
  }

  /** closing -> closed; resolves done. A no-op in any other state. */
  finish(): boolean {
    if (this.#state !== 'closing') return false;
    this.#state = 'closed';
    const resolve = this.#resolve;
    this.#resolve = null;
    if (resolve !== null) resolve();
    return true;
  }
}
