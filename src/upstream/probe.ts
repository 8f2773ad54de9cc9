/**
 * Active health checking of a failing upstream: while its health says
 * failing, one probe query every PROBE_INTERVAL_MS, never two in flight
 * (CoreDNS's up.go keeps one probe at a time too). The probe goes through
 * the transport like any query, so its answer (or its timeout) reaches the
 * health state through the transport's own events; the first answer makes
 * the upstream healthy and forwarding resumes.
 *
 * Why 1 s: pods already get their cluster answers from the view while the
 * upstream fails, so the probe only decides how soon forwarding resumes; one
 * small query a second per node is nothing to a recovering CoreDNS, and a
 * second of extra fallback is invisible to pods.
 */
import type { Clock } from '../clock.js';
import type { Upstream, UpstreamExchange } from './types.js';

export const PROBE_INTERVAL_MS = 1000;

export class HealthProbe {
  readonly #upstream: Upstream;
  readonly #clock: Clock;
  readonly #query: Buffer;
  #sweep: (() => void) | null;
  #inFlight: boolean;
  #lastSentAt: number;
  #sent: number;
  #stopped: boolean;

  /** `query`: an upstream-form query whose answer proves the upstream works (kubernetes.default.svc.<zone> A). */
  constructor(upstream: Upstream, clock: Clock, query: Buffer) {
    this.#upstream = upstream;
    this.#clock = clock;
    this.#query = query;
    this.#sweep = null;
    this.#inFlight = false;
    this.#lastSentAt = -Infinity;
    this.#sent = 0;
    this.#stopped = false;
    upstream.health.onChange((state) => {
      if (state === 'failing') this.#arm();
    });
    if (!upstream.health.healthy) this.#arm();
  }

  /** Probes sent so far. */
  get sent(): number {
    return this.#sent;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#sweep !== null) this.#sweep();
    this.#sweep = null;
  }

  #arm(): void {
    if (this.#sweep === null && !this.#stopped) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => {
    if (this.#upstream.health.healthy) {
      if (this.#sweep !== null) this.#sweep();
      this.#sweep = null;
      return;
    }
    if (this.#inFlight || now - this.#lastSentAt < PROBE_INTERVAL_MS) return;
    this.#inFlight = true;
    this.#lastSentAt = now;
    this.#sent++;
    const done = (): void => {
      this.#inFlight = false;
    };
    const probe: UpstreamExchange = { query: this.#query, deadline: now + PROBE_INTERVAL_MS, resolve: done, reject: done };
    this.#upstream.send(probe);
  };
}
