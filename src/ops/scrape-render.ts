/**
 * The text GET /metrics answers with (http.ts), rendered a few times a
 * second at most: scrapes that arrive while a render runs get its text, and
 * past `maxPerSecond` renders in one second of the clock a scrape waits for
 * the next second's render (one, shared by every scrape waiting). Any pod on
 * the node reaches the metrics port (the node-local IP), and a render costs
 * the main thread, which also serves TCP and every miss, milliseconds: a
 * client asking back-to-back must not have it render without end. A scrape
 * is never answered with text rendered before it arrived: what happened
 * before a scrape (a query, a reload) is in its answer. Prometheus scrapes
 * every 10 to 60 s, so a few scrapers together stay well under the bound and
 * never wait. Waiting scrapes are bounded by the connection caps (http-connections.ts).
 */
import type { Clock } from '../clock.js';
import type { MetricsSource } from './http.js';

export class ScrapeRenders {
  readonly #source: MetricsSource;
  readonly #clock: Clock;
  readonly #maxPerSecond: number;
  /** The render in progress: scrapes that arrive meanwhile get its text rather than starting their own. */
  #inFlight: Promise<string> | null;
  /** Scrapes past the bound: they share the render of the next second. */
  #deferred: Promise<string> | null;
  /** Settles when that render starts: from then on those scrapes are being answered. */
  #waitOver: Promise<void> | null;
  #secondStart: number;
  #rendersThisSecond: number;

  constructor(source: MetricsSource, clock: Clock, maxPerSecond: number) {
    this.#source = source;
    this.#clock = clock;
    this.#maxPerSecond = maxPerSecond;
    this.#inFlight = null;
    this.#deferred = null;
    this.#waitOver = null;
    this.#secondStart = -Infinity;
    this.#rendersThisSecond = 0;
  }

  /** Scrapes waiting for the next second's render. */
  get waiting(): boolean {
    return this.#deferred !== null;
  }

  /** While scrapes wait: settles when the render they wait for starts (a connection waiting may make room until then). */
  get waitOver(): Promise<void> | null {
    return this.#waitOver;
  }

  /** The text to answer with; rejects when the render fails (never throws). */
  text(): Promise<string> {
    if (this.#inFlight !== null) return this.#inFlight;
    if (this.#deferred !== null) return this.#deferred;
    if (this.#roomAt(this.#clock.now())) return this.#render();
    // On the clock's sweep (every 50 ms on the system clock; a ManualClock's advance runs it too).
    let over: () => void = () => {};
    this.#waitOver = new Promise<void>((resolve) => (over = resolve));
    this.#deferred = new Promise<string>((resolve) => {
      const stop = this.#clock.sweep((now) => {
        if (!this.#roomAt(now)) return;
        stop();
        this.#deferred = null;
        this.#waitOver = null;
        over();
        resolve(this.#render());
      });
    });
    return this.#deferred;
  }

  /** True (and counts it) when a render may start at `now`. */
  #roomAt(now: number): boolean {
    if (now - this.#secondStart >= 1000) {
      this.#secondStart = now;
      this.#rendersThisSecond = 0;
    }
    if (this.#rendersThisSecond >= this.#maxPerSecond) return false;
    this.#rendersThisSecond++;
    return true;
  }

  #render(): Promise<string> {
    let render: Promise<string>;
    try {
      render = this.#source.metrics();
    } catch (err) {
      // A throw from the request handler would be uncaught: the process would die over a scrape.
      render = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.#inFlight = render;
    const done = (): void => {
      if (this.#inFlight === render) this.#inFlight = null;
    };
    render.then(done, done);
    return render;
  }
}
