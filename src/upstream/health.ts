/**
 * Health of one upstream as an explicit state, fed by the transport's own
 * events (connected, connect failed, answered, timed out, SERVFAIL) through
 * one transition function. The resolver reads it to choose between
 * forwarding and answering from the local view (when the route has one).
 *
 *   healthy ──(FAIL_STREAK failures in a row, or unreachable)──► failing
 *   failing ──(an answer)──────────────────────────────────────► healthy
 *
 * Only an answer proves health: a black-hole server accepts TCP and never
 * answers, so `connected` alone changes nothing. A streak rather than one
 * failure, because one lost query is normal; unreachable (a connect refused
 * or timed out with nothing open) is certain at once.
 */
import { Rcode } from '../dns/constants.js';
import type { Logger } from '../log.js';

export type HealthState = 'healthy' | 'failing';
/** 'no_fds': as 'unreachable', but the agent had no file descriptor for the connect (EMFILE, ENFILE): so its log line says. */
export type HealthEvent = 'connected' | 'unreachable' | 'no_fds' | 'answered' | 'timeout' | 'servfail' | 'network';

/** Failures in a row before a reachable upstream is called failing (CoreDNS's forward uses max_fails 2 with active checks). */
export const FAIL_STREAK = 3;

/**
 * An answer in which the server failed us rather than answered the question:
 * glibc's res_send (send_dg) moves on to the next server on exactly these,
 * since another server may well answer.
 */
export function serverFailed(rcode: number): boolean {
  return rcode === Rcode.SERVFAIL || rcode === Rcode.NOTIMP || rcode === Rcode.REFUSED;
}

export class UpstreamHealth {
  readonly name: string;
  #state: HealthState;
  /** Clock ms of the last transition. */
  #since: number;
  #streak: number;
  #lastCause: HealthEvent;
  readonly #log: Logger;
  readonly #listeners: Array<(state: HealthState) => void>;

  constructor(name: string, log: Logger, now: number) {
    this.name = name;
    this.#state = 'healthy';
    this.#since = now;
    this.#streak = 0;
    this.#lastCause = 'answered';
    this.#log = log;
    this.#listeners = [];
  }

  get state(): HealthState {
    return this.#state;
  }

  get healthy(): boolean {
    return this.#state === 'healthy';
  }

  get since(): number {
    return this.#since;
  }

  get lastCause(): HealthEvent {
    return this.#lastCause;
  }

  /** Called on every transition (after it is logged). */
  onChange(fn: (state: HealthState) => void): void {
    this.#listeners.push(fn);
  }

  /** The one transition function. */
  record(event: HealthEvent, now: number): void {
    switch (event) {
      case 'connected':
        return;
      case 'answered':
        this.#streak = 0;
        if (this.#state === 'failing') this.#move('healthy', event, now);
        return;
      case 'unreachable':
      case 'no_fds':
        this.#streak = FAIL_STREAK;
        if (this.#state === 'healthy') this.#move('failing', event, now);
        return;
      case 'timeout':
      case 'servfail':
      case 'network':
        this.#lastCause = event;
        if (++this.#streak >= FAIL_STREAK && this.#state === 'healthy') this.#move('failing', event, now);
        return;
    }
  }

  #move(to: HealthState, cause: HealthEvent, now: number): void {
    const from = this.#state;
    this.#state = to;
    this.#lastCause = cause;
    const forMs = Math.round(now - this.#since);
    this.#since = now;
    // Logged once per transition, never per query: an outage is two lines.
    if (to === 'failing') this.#log.warn('upstream failing', { upstream: this.name, cause, healthyForMs: forMs });
    else this.#log.info('upstream healthy again', { upstream: this.name, failingForMs: forMs, was: from });
    for (const fn of this.#listeners) fn(to);
  }
}
