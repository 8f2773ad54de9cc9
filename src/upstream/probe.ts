/**
 * Active health checking of a failing upstream: while its health says
 * failing, one probe query every PROBE_INTERVAL_MS, never two in flight
 * (CoreDNS's up.go keeps one probe at a time too); a probe may run longer
 * than that where the upstream fails over between servers (its deadline
 * allows a try at each). The probe goes through
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
import { questionMessage, upstreamQuery } from '../dns/build.js';
import { OFF_FLAGS, RCODE_MASK, Rcode } from '../dns/constants.js';
import { serverFailed } from './health.js';
import { nameToWire } from '../dns/name.js';
import { parseQuery } from '../dns/query.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import type { Upstream, UpstreamExchange, UpstreamFailure } from './types.js';

/**
 * CoreDNS forward's name (pre-1.11; later versions call it
 * coredns_proxy_healthcheck_failures_total{proxy_name="forward"}). A failed
 * check is one our health state counts as a failure: no answer by the
 * deadline, a network error, or a SERVFAIL/NOTIMP/REFUSED answer. A probe cut
 * short by shutdown, or refused unsent by a local cap, is not one.
 */
export const PROBE_COUNTERS = defineCounters({
  failures: { name: 'coredns_forward_healthcheck_failures_total', help: 'Counter of the number of failed healthchecks.' },
});
export type ProbeCounter = keyof typeof PROBE_COUNTERS.slot;
const FAILURES = PROBE_COUNTERS.slot.failures;

/** Between one probe's start and the next; also a probe's deadline unless the upstream needs longer. */
export const PROBE_INTERVAL_MS = 1000;

export class HealthProbe {
  readonly #upstream: Upstream;
  readonly #clock: Clock;
  readonly #query: Buffer;
  readonly #deadlineMs: number;
  #sweep: (() => void) | null;
  #inFlight: boolean;
  #lastSentAt: number;
  #sent: number;
  #stopped: boolean;
  readonly #failures: Float64Array | null;
  readonly #onAnswer: (answer: Buffer) => void;
  readonly #onFailure: (reason: UpstreamFailure) => void;

  /**
   * `query`: an upstream-form query whose answer proves the upstream works
   * (kubernetes.default.svc.<zone> A for the cluster DNS, ". NS" for
   * recursive resolvers, the zone's SOA for a stub domain). `counters`:
   * where failed checks are
   * counted (labelled with the upstream's `to` by whoever publishes it).
   * `deadlineMs`: how long one probe may take, at least PROBE_INTERVAL_MS; an
   * upstream that fails over must get to its other servers within it.
   */
  constructor(upstream: Upstream, clock: Clock, query: Buffer, counters: Counters<ProbeCounter> | null = null, deadlineMs = PROBE_INTERVAL_MS) {
    this.#upstream = upstream;
    this.#failures = counters === null ? null : counters.values;
    this.#onAnswer = (answer: Buffer): void => {
      this.#inFlight = false;
      const rcode = answer.length > OFF_FLAGS + 1 ? answer[OFF_FLAGS + 1]! & RCODE_MASK : Rcode.SERVFAIL;
      if (serverFailed(rcode)) this.#failed();
    };
    this.#onFailure = (reason: UpstreamFailure): void => {
      this.#inFlight = false;
      // 'overloaded': a local cap refused it unsent; no check was made, so none failed (the health state does not count it either).
      if (reason !== 'closed' && reason !== 'overloaded') this.#failed();
    };
    this.#clock = clock;
    this.#query = query;
    this.#deadlineMs = Math.max(PROBE_INTERVAL_MS, deadlineMs);
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

  #failed(): void {
    if (this.#failures !== null) this.#failures[FAILURES]!++;
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
    const probe: UpstreamExchange = { query: this.#query, deadline: now + this.#deadlineMs, resolve: this.#onAnswer, reject: this.#onFailure };
    this.#upstream.send(probe);
  };
}

/** A probe's question in upstream form: `name` `qtype` IN. */
export function probeQuery(name: string, qtype: number): Buffer {
  return upstreamQuery(parseQuery(questionMessage(nameToWire(name), qtype)));
}
