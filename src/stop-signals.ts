/**
 * SIGTERM, SIGINT and SIGHUP from the first moment (main.ts makes this before
 * it loads the agent's modules). Without a handler Node's
 * default action kills the process at once (and for PID 1, as in a
 * container of its own, the kernel drops the signal instead), so a signal that came
 * while the agent was still starting (a snapshot load, the listeners, the
 * link, the rules) left what start() had put on the node there: a link
 * holding the kube-dns ClusterIP blackholes the node's DNS once the pod is
 * gone. A stop signal during start goes to `whileStarting` (main cuts the
 * start short there: Agent.cutStart) and is held for handle(); a second one
 * while starting says the operator wants out now. A SIGHUP during start is remembered and reloads
 * once the agent serves (the files may have changed since they were read).
 */
export type StopSignal = 'SIGTERM' | 'SIGINT';
export type HeldSignal = StopSignal | 'SIGHUP';

export interface SignalSource {
  on(event: HeldSignal, listener: (signal: HeldSignal) => void): unknown;
}

export class StopSignals {
  #held: StopSignal | null;
  #reloadHeld: boolean;
  #handler: ((signal: StopSignal) => void) | null;
  #reload: (() => void) | null;

  /** `whileStarting` hears each signal that comes before handle(); `repeated`: one of its kind was already held. */
  constructor(source: SignalSource, whileStarting: (signal: HeldSignal, repeated: boolean) => void) {
    this.#held = null;
    this.#reloadHeld = false;
    this.#handler = null;
    this.#reload = null;
    const on = (signal: StopSignal): void => {
      if (this.#handler !== null) {
        this.#handler(signal);
        return;
      }
      const repeated = this.#held !== null;
      this.#held ??= signal;
      whileStarting(signal, repeated);
    };
    source.on('SIGTERM', () => on('SIGTERM'));
    source.on('SIGINT', () => on('SIGINT'));
    source.on('SIGHUP', () => {
      if (this.#reload !== null) {
        this.#reload();
        return;
      }
      const repeated = this.#reloadHeld;
      this.#reloadHeld = true;
      whileStarting('SIGHUP', repeated);
    });
  }

  /** The stop signal held while starting, if one came. */
  get stopHeld(): StopSignal | null {
    return this.#held;
  }

  /**
   * From here each stop signal goes to `handler` and each SIGHUP to `reload`.
   * A stop held while starting goes to it now; else a held SIGHUP reloads now
   * (one reload for any number of them: it reads every file afresh).
   */
  handle(handler: (signal: StopSignal) => void, reload: () => void = () => {}): void {
    this.#handler = handler;
    this.#reload = reload;
    if (this.#held !== null) handler(this.#held);
    else if (this.#reloadHeld) reload();
  }
}
