/**
 * The text GET /metrics answers with (http.ts), rendered a few times a
 * second at most: scrapes that arrive while a render runs get its text, and
 * past `maxPerSecond` renders in one second of the clock the last text
 * rendered is answered again. Any pod on the node reaches the metrics port
 * (the node-local IP), and a render costs the main thread, which also serves
 * TCP and every miss, milliseconds: a client asking back-to-back must not
 * have it render without end. Prometheus scrapes every 10 to 60 s, so a few
 * scrapers together stay well under the bound and always get a fresh render.
 */
import type { Clock } from '../clock.js';
import type { MetricsSource } from './http.js';

export class ScrapeRenders {
  readonly #source: MetricsSource;
  readonly #clock: Clock;
  readonly #maxPerSecond: number;
  /** The render in progress: scrapes that arrive meanwhile get its text rather than starting their own. */
  #inFlight: Promise<string> | null;
  /** The last text rendered; null before the first or while every render has failed. */
  #last: string | null;
  #secondStart: number;
  #rendersThisSecond: number;

  constructor(source: MetricsSource, clock: Clock, maxPerSecond: number) {
    this.#source = source;
    this.#clock = clock;
    this.#maxPerSecond = maxPerSecond;
    this.#inFlight = null;
    this.#last = null;
    this.#secondStart = -Infinity;
    this.#rendersThisSecond = 0;
  }

  /** The text to answer with; rejects when the render fails (never throws). */
  text(): Promise<string> {
    if (this.#inFlight !== null) return this.#inFlight;
    const now = this.#clock.now();
    if (now - this.#secondStart >= 1000) {
      this.#secondStart = now;
      this.#rendersThisSecond = 0;
    }
    if (this.#rendersThisSecond >= this.#maxPerSecond && this.#last !== null) return Promise.resolve(this.#last);
    this.#rendersThisSecond++;
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
    render.then((text) => {
      this.#last = text;
      done();
    }, done);
    return render;
  }
}
