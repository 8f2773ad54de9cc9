/**
 * The reflector loop for one source (client-go's tools/cache/reflector.go
 * protocol; watch.ts draws it): list in pages and replace, watch from the
 * resourceVersion and apply events, relist on 410 Gone, back off after a
 * failure while the sink keeps serving the last view. Generic over what it
 * keeps: watch.ts runs one per kind of the cluster view, pods.ts one for
 * this node's pods.
 */
import type { Readable } from 'node:stream';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { asObject, readBody, statusMessage, type Json } from './api-body.js';
import { Backoff } from './backoff.js';
import { TIMED_OUT, within } from './deadline.js';
import type { ApiGetter } from './client.js';
import {
  realTimers,
  watchDefaults,
  type ListWatchOptions,
  type TimerHandle,
  type Timers,
  type WatchSink,
  type WatchSource,
  type WatchTuning,
} from './list-watch-options.js';
import { ENDED, LISTED, NO_EVENT, failed, httpFailure, type Outcome } from './reflector-outcome.js';
import type { Metric } from './reflector-stats.js';
import { decodeWatchLine } from './watch-event.js';

/** The reflector loop for one source, generic over what it keeps. */
export class ListWatch<T> {
  readonly #kind: string;
  readonly #path: string;
  readonly #selector: string;
  readonly #api: ApiGetter;
  readonly #writer: WatchSink<T>;
  readonly #convert: (raw: unknown) => T | null;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #values: Float64Array;
  readonly #slot: { readonly [M in Metric]: number };
  readonly #random: () => number;
  readonly #timers: Timers;
  readonly #tuning: WatchTuning;
  readonly #backoff: Backoff;

  /** Last resourceVersion seen; '' = must list. */
  #rv = '';
  #synced = false;
  #listedBefore = false;
  /** A watch follows a list directly (otherwise it is a restart from a kept RV). */
  #afterList = false;
  /** When the view of this kind was last told it is current (#touch). */
  #lastTouchMs = -Infinity;
  /** In a failure streak (logged once on entry, once on recovery). */
  #failing = false;
  #failingSinceMs = 0;
  #stopped = false;
  #abort: AbortController | null = null;
  #sleepTimer: TimerHandle | null = null;
  #wake: (() => void) | null = null;
  #running: Promise<void> | null = null;

  constructor(source: WatchSource<T>, api: ApiGetter, sink: WatchSink<T>, opts: ListWatchOptions) {
    const kind = source.kind;
    this.#kind = kind;
    this.#path = source.path;
    this.#selector = source.selector === '' ? '' : `&${source.selector}`;
    this.#api = api;
    this.#writer = sink;
    this.#convert = source.convert;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.#values = opts.counters.values;
    const slot = (m: Metric): number => {
      const i = opts.counters.schema.slot[`${kind}.${m}`];
      if (i === undefined) throw new Error(`watch ${kind}: the counter block has no slot ${kind}.${m}`);
      return i;
    };
    this.#slot = {
      lists: slot('lists'),
      relists: slot('relists'),
      watchRestarts: slot('watchRestarts'),
      events: slot('events'),
      errors: slot('errors'),
      decodeFailures: slot('decodeFailures'),
    };
    this.#random = opts.random ?? Math.random;
    this.#timers = opts.timers ?? realTimers;
    this.#tuning = { ...watchDefaults, ...opts.tuning };
    this.#backoff = new Backoff(this.#tuning.backoff);
  }

  get synced(): boolean {
    return this.#synced;
  }

  /** The last resourceVersion applied ('' before the first list or after a 410). */
  get resourceVersion(): string {
    return this.#rv;
  }

  start(): void {
    if (this.#running === null && !this.#stopped) this.#running = this.#run();
  }

  /** Aborts the request in flight and any backoff wait; resolves once the loop has exited. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort?.abort();
    if (this.#sleepTimer !== null) this.#timers.clear(this.#sleepTimer);
    this.#wake?.();
    await this.#running;
  }

  #count(m: Metric): void {
    this.#values[this.#slot[m]]!++;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      let o: Outcome;
      try {
        o = this.#rv === '' ? await this.#list() : await this.#watch();
      } catch (e) {
        o = this.#internalError(e);
      }
      if (this.#stopped) break;
      if (o.kind === 'listed' || o.kind === 'ended') continue;
      if (o.kind === 'expired') {
        this.#rv = '';
        this.#log.info('kube watch history expired; relisting', { kind: this.#kind, reason: o.reason });
      } else {
        this.#count('errors');
      }
      let delay = this.#backoff.next(this.#clock.now(), this.#random());
      if (o.kind === 'failed') {
        delay = Math.max(delay, o.retryAfterMs ?? 0);
        this.#onFailure(o.error, delay);
      }
      await this.#sleep(delay);
    }
  }

  /** A bug below us (the writer threw): the view may be half-updated, so start over from a list. */
  #internalError(e: unknown): Outcome {
    const error = e instanceof Error ? e.message : String(e);
    this.#log.error('kube reflector failed; relisting', { kind: this.#kind, error });
    this.#rv = '';
    return failed(`internal: ${error}`);
  }

  #onFailure(error: string, retryMs: number): void {
    if (this.#failing) {
      this.#log.debug('kube API still failing', { kind: this.#kind, error, retryMs });
      return;
    }
    this.#failing = true;
    this.#failingSinceMs = this.#clock.now();
    this.#log.warn('kube API request failed; serving the last view, retrying with backoff', { kind: this.#kind, error, retryMs });
  }

  /** A 200 from the API server: the end of a failure streak, for the logs. It says nothing of the view (a 410 may follow). */
  #onAnswered(): void {
    if (!this.#failing) return;
    this.#failing = false;
    this.#log.info('kube API reachable again', { kind: this.#kind, downMs: this.#clock.now() - this.#failingSinceMs });
  }

  /**
   * The view of this kind is current as of now: a whole list, or a watch
   * event or bookmark applied in order. Told before the change is written,
   * so the sink dates the change by it.
   */
  #touch(): void {
    this.#touchAt(this.#clock.now());
  }

  #touchAt(ms: number): void {
    this.#lastTouchMs = ms;
    this.#writer.touch(ms);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
      this.#sleepTimer = this.#timers.set(() => {
        this.#sleepTimer = null;
        this.#wake = null;
        resolve();
      }, ms);
    });
  }

  #newAbort(): AbortSignal {
    this.#abort = new AbortController();
    return this.#abort.signal;
  }

  /** `p`, or TIMED_OUT once --requestTimeoutMs pass (deadline.ts). */
  #within<R>(p: Promise<R>): Promise<R | typeof TIMED_OUT> {
    return within(p, this.#timers, this.#tuning.requestTimeoutMs, this.#abort);
  }

  // ---------------------------------------------------------------- list

  /**
   * All pages, converted as they arrive; the view is replaced once, after the
   * last page, so a reader never sees half a list and a relist neither loses
   * nor duplicates objects. A continue token that expires (410) mid-way
   * throws the partial list away: the pages must come from one snapshot.
   */
  async #list(): Promise<Outcome> {
    const items: T[] = [];
    let cont = '';
    let rv = '';
    const tokens = new Set<string>();
    do {
      let query = `?limit=${this.#tuning.pageSize}${this.#selector}`;
      if (cont !== '') query += `&continue=${encodeURIComponent(cont)}`;
      const r = await this.#within(this.#api.get(this.#path + query, this.#newAbort()));
      if (r === TIMED_OUT) return failed(`list: no response in ${this.#tuning.requestTimeoutMs} ms`);
      if (!r.ok) return failed(`list: ${r.error}`);
      const text = await this.#within(readBody(r.body, this.#tuning.maxPageBytes));
      if (text === TIMED_OUT) return failed(`list: page not complete in ${this.#tuning.requestTimeoutMs} ms`);
      if (text === null) return failed(`list: response broken off`);
      if (r.status === 410 && cont !== '') return { kind: 'expired', reason: `list continue: ${statusMessage(text)}` };
      if (r.status !== 200) return httpFailure('list', r, text);
      let page: Json | null;
      try {
        page = asObject(JSON.parse(text));
      } catch {
        page = null;
      }
      const rawItems = page?.['items'];
      if (page === null || !(Array.isArray(rawItems) || rawItems === null)) {
        this.#count('decodeFailures');
        return failed('list: response is not a list');
      }
      for (const raw of rawItems ?? []) {
        const slim = this.#convert(raw);
        if (slim === null) this.#count('decodeFailures');
        else items.push(slim);
      }
      const meta = asObject(page['metadata']);
      rv = typeof meta?.['resourceVersion'] === 'string' ? meta['resourceVersion'] : '';
      cont = typeof meta?.['continue'] === 'string' ? meta['continue'] : '';
      // A real token names the last key served, so it moves on: one seen before, or pages past the caps, would have us page
      // for ever (a server or proxy handing a token back, in a cycle, or counting up), holding each page, never synced.
      if (tokens.has(cont)) return failed('list: a continue token came back');
      const { maxListPages: pages, maxListObjects: objects } = this.#tuning;
      if (cont !== '' && (tokens.add(cont).size >= pages || items.length > objects)) return failed(`list: not done after ${pages} pages or ${objects} objects`);
    } while (cont !== '');
    if (rv === '') return failed('list: no resourceVersion');
    // A whole list makes the view current, not its first page: a relist failing on a later page has not.
    this.#onAnswered();
    this.#touch();
    this.#writer.replace(items);
    this.#rv = rv;
    this.#afterList = true;
    this.#count('lists');
    if (this.#listedBefore) this.#count('relists');
    this.#listedBefore = true;
    if (!this.#synced) {
      this.#synced = true;
      this.#writer.markSynced();
      this.#log.info('kube initial list applied', { kind: this.#kind, objects: items.length, resourceVersion: rv });
    }
    return LISTED;
  }

  // ---------------------------------------------------------------- watch

  async #watch(): Promise<Outcome> {
    const resuming = !this.#afterList;
    this.#afterList = false;
    const timeoutS = Math.floor(this.#tuning.minWatchTimeoutS * (1 + this.#random()));
    const query = `?watch=1&resourceVersion=${encodeURIComponent(this.#rv)}&allowWatchBookmarks=true&timeoutSeconds=${timeoutS}${this.#selector}`;
    const r = await this.#within(this.#api.get(this.#path + query, this.#newAbort()));
    if (r === TIMED_OUT) return failed(`watch: no response in ${this.#tuning.requestTimeoutMs} ms`);
    if (!r.ok) return failed(`watch: ${r.error}`);
    if (r.status !== 200) {
      const body = await this.#within(readBody(r.body, 1 << 20));
      const text = body === TIMED_OUT ? 'error body not complete in time' : (body ?? '');
      if (r.status === 410) return { kind: 'expired', reason: `watch: ${statusMessage(text)}` };
      return httpFailure('watch', r, text);
    }
    // Counted once the server took the watch: attempts that fail (an outage's retries) are errors, not resumptions.
    if (resuming) this.#count('watchRestarts');
    this.#onAnswered();
    return this.#stream(r.body, Math.min(timeoutS * 1000 + this.#tuning.idleGraceMs, this.#tuning.maxWatchSilenceMs));
  }

  /**
   * A watch taken from our resourceVersion with no ERROR in the grace: the
   * server replayed what we missed (or had nothing), so the kind is current as
   * of the 200. A quiet kind gets no bookmark where etcd's progress
   * notifications are rare, and without this its view would stop denying
   * names past --max-api-silence while nothing was wrong.
   */
  #vouch(acceptedMs: number): void {
    if (acceptedMs > this.#lastTouchMs) this.#touchAt(acceptedMs);
  }

  /** Applies the events of one watch response until it ends. */
  #stream(body: Readable, idleMs: number): Promise<Outcome> {
    const startedMs = this.#clock.now();
    let events = 0;
    let pending = '';
    let done = false;
    let vouched = false;
    return new Promise<Outcome>((resolve) => {
      const finish = (o: Outcome): void => {
        if (done) return;
        done = true;
        this.#timers.clear(idle);
        this.#timers.clear(grace);
        body.destroy();
        resolve(o);
      };
      const grace = this.#timers.set(() => {
        vouched = true;
        this.#vouch(startedMs);
      }, this.#tuning.acceptGraceMs);
      // Silence after a vouched start is a quiet kind, or a connection gone dead: the next watch tells which.
      const onIdle = (): void => {
        if (!vouched) return finish(failed(`watch: no data for ${idleMs} ms`));
        this.#log.debug('kube watch silent; watching again', { kind: this.#kind, silentMs: idleMs });
        finish(ENDED);
      };
      let idle = this.#timers.set(onIdle, idleMs);
      body.setEncoding('utf8');
      body.on('data', (chunk: string) => {
        // Lines after the one that ended the watch are the next watch's to replay.
        if (done) return;
        this.#timers.clear(idle);
        idle = this.#timers.set(onIdle, idleMs);
        let start = 0;
        for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', start)) {
          const line = pending + chunk.slice(start, nl);
          pending = '';
          start = nl + 1;
          let o: Outcome | null | typeof NO_EVENT;
          try {
            o = this.#onEvent(line);
          } catch (e) {
            o = this.#internalError(e);
          }
          // client-go's very-short-watch rule counts decoded events: a blank line, or one of a type it cannot decode, is none.
          if (o === NO_EVENT) continue;
          events++;
          if (o !== null) return finish(o);
        }
        pending += chunk.slice(start);
        if (pending.length > this.#tuning.maxLineBytes) finish(failed(`watch: event over ${this.#tuning.maxLineBytes} bytes`));
      });
      body.on('end', () => {
        if (events === 0 && this.#clock.now() - startedMs < this.#tuning.shortWatchMs) finish(failed('watch: very short watch, no events'));
        else finish(ENDED);
      });
      body.on('error', (e: Error) => finish(failed(`watch: ${e.message}`)));
      body.on('close', () => finish(failed('watch: connection closed')));
    });
  }

  /**
   * One watch line; returns an outcome when the watch must end (NO_EVENT: a blank line or an unknown type, no event
   * for the metric either). A line we cannot decode ends the watch where it is, as client-go's StreamWatcher does: the
   * RV stays at the last event applied, so the next watch gets that event again from the server's history.
   */
  #onEvent(line: string): Outcome | null | typeof NO_EVENT {
    if (line.trim() === '') return NO_EVENT;
    const ev = decodeWatchLine(line, this.#convert);
    if (ev.kind !== 'unknown') this.#count('events');
    // An ERROR (410 Gone above all) or a line we cannot apply leaves the view as stale as it was.
    if (ev.kind === 'upsert' || ev.kind === 'remove' || ev.kind === 'bookmark') this.#touch();
    switch (ev.kind) {
      case 'upsert':
        this.#writer.upsert(ev.obj);
        break;
      case 'remove':
        if (ev.unreadable) this.#count('decodeFailures');
        this.#writer.remove(ev.namespace, ev.name);
        break;
      case 'bookmark':
        break;
      case 'error':
        if (ev.code === 410) return { kind: 'expired', reason: `watch event: ${ev.text}` };
        return failed(`watch event: ${ev.text}`);
      case 'undecodable':
        this.#count('decodeFailures');
        return failed(`watch: undecodable event (${ev.what}); watching again from resourceVersion ${this.#rv}`);
      case 'unknown':
        this.#count('decodeFailures');
        return NO_EVENT;
    }
    if (ev.rv !== '') this.#rv = ev.rv;
    return null;
  }
}
