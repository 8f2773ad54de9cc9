/**
 * SIGTERM and SIGINT from the first moment. Without a handler Node's default
 * action kills the process at once, so a signal that came while the agent was
 * still starting (a snapshot load, the listeners, the link, the rules) left
 * what start() had put on the node there: a link holding the kube-dns
 * ClusterIP blackholes the node's DNS once the pod is gone. A signal during
 * start is held until start settles and then stops the agent the normal way;
 * a second one while starting says the operator wants out now.
 */
export type StopSignal = 'SIGTERM' | 'SIGINT';

export interface SignalSource {
  on(event: StopSignal, listener: (signal: StopSignal) => void): unknown;
}

export class StopSignals {
  #held: StopSignal | null;
  #handler: ((signal: StopSignal) => void) | null;

  /** `whileStarting` hears each signal that comes before handle(); `repeated`: one was already held. */
  constructor(source: SignalSource, whileStarting: (signal: StopSignal, repeated: boolean) => void) {
    this.#held = null;
    this.#handler = null;
    const on = (signal: StopSignal): void => {
      if (this.#handler !== null) {
        this.#handler(signal);
        return;
      }
      const repeated = this.#held !== null;
      this.#held ??= signal;
      whileStarting(signal, repeated);
    };
    source.on('SIGTERM', on);
    source.on('SIGINT', on);
  }

  /** From here each signal goes to `handler`; one held while starting goes to it now. */
  handle(handler: (signal: StopSignal) => void): void {
    this.#handler = handler;
    if (this.#held !== null) handler(this.#held);
  }
}
