/**
 * List-then-watch of Services, EndpointSlices and Namespaces into a
 * ClusterViewWriter (and of this node's pods, kube/pods.ts, through the same
 * ListWatch): a lean reflector of our own, one per kind, following
 * client-go's (tools/cache/reflector.go) protocol, because client-node's
 * informer caches whole API objects and stops for good after an error.
 *
 * One reflector's loop:
 *
 *        ┌──────────── 410 Gone / continue expired ◄──────────────┐
 *        ▼                                                        │
 *     LIST (pages of 500) ── replace + markSynced ──► WATCH from RV ── events: upsert/remove/RV
 *        ▲  │ failure                                   │  ▲   │ stream ended normally: WATCH again from RV
 *        │  ▼                                           │  └───┘
 *     backoff ◄───────── connection lost / HTTP error ──┘  (then WATCH again from the kept RV)
 *
 * The writer keeps serving the last view through every failure; only a list
 * replaces it, in one swap. Raw objects live for one page or one event: each
 * is converted (kube/convert.ts) and dropped.
 */
import type { Readable } from 'node:stream';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { Counters, defineCounters, type CounterDef } from '../stats/counters.js';
import { Backoff, backoffDefaults, type BackoffPolicy } from './backoff.js';
import type { ApiGetter } from './client.js';
import { converters, objectKey, resourceVersionOf } from './convert.js';
import type { ClusterViewWriter, KindName, KindObjects } from './types.js';

export const WATCH_KINDS: readonly KindName[] = ['namespaces', 'services', 'endpointslices'];

const resourcePath: { readonly [K in KindName]: string } = {
  services: '/api/v1/services',
  endpointslices: '/apis/discovery.k8s.io/v1/endpointslices',
  namespaces: '/api/v1/namespaces',
};

// ---------------------------------------------------------------- counters

type Metric = 'lists' | 'relists' | 'watchRestarts' | 'events' | 'errors' | 'decodeFailures';
/** The counters of one watched kind: `${kind}.lists` and so on. */
export type ReflectorCounter<P extends string> = `${P}.${Metric}`;
export type WatchCounter = ReflectorCounter<KindName>;

const metricDefs: { readonly [M in Metric]: Omit<CounterDef, 'labels'> } = {
  lists: { name: 'nodelocal_kube_lists_total', help: 'Complete lists (all pages) applied to the cluster view.' },
  relists: { name: 'nodelocal_kube_relists_total', help: 'Lists after the first one (watch history expired: 410 Gone).' },
  watchRestarts: { name: 'nodelocal_kube_watch_restarts_total', help: 'Watches resumed from the last resourceVersion without a list.' },
  events: { name: 'nodelocal_kube_watch_events_total', help: 'Watch events received (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).' },
  errors: { name: 'nodelocal_kube_errors_total', help: 'Failed API requests and broken watch streams (each followed by a backoff).' },
  decodeFailures: { name: 'nodelocal_kube_decode_failures_total', help: 'Objects or watch lines that could not be decoded and were skipped.' },
};

/** The counter defs of one watched kind (label `kind`), for a schema of its own or a shared one. */
export function reflectorCounterDefs<P extends string>(kind: P): Record<ReflectorCounter<P>, CounterDef> {
  const defs: Partial<Record<ReflectorCounter<P>, CounterDef>> = {};
  for (const m of Object.keys(metricDefs) as Metric[]) defs[`${kind}.${m}`] = { ...metricDefs[m], labels: { kind } };
  return defs as Record<ReflectorCounter<P>, CounterDef>;
}

function watchCounterDefs(): Record<WatchCounter, CounterDef> {
  let defs: Partial<Record<WatchCounter, CounterDef>> = {};
  for (const kind of WATCH_KINDS) defs = { ...defs, ...reflectorCounterDefs(kind) };
  return defs as Record<WatchCounter, CounterDef>;
}

export const watchCounterSchema = defineCounters<WatchCounter>(watchCounterDefs());

// ---------------------------------------------------------------- tuning

export interface WatchTuning {
  /** Items per list page (client-go's pager uses 500): bounds the raw JSON held at once. */
  readonly pageSize: number;
  /** Watches ask for a random timeout in [min, 2*min) s, as client-go does (5-10 min), so nodes do not re-watch in step. */
  readonly minWatchTimeoutS: number;
  /** A watch silent for its timeout plus this long is dead (the server should have ended it): drop it. */
  readonly idleGraceMs: number;
  /** A watch that ends with no event sooner than this counts as a failure (client-go's "very short watch"). */
  readonly shortWatchMs: number;
  /** Longest watch line (one object) and list page accepted; beyond that the stream is broken, not big. */
  readonly maxLineBytes: number;
  readonly maxPageBytes: number;
  readonly backoff: BackoffPolicy;
}

export const watchDefaults: WatchTuning = {
  pageSize: 500,
  minWatchTimeoutS: 300,
  idleGraceMs: 30_000,
  shortWatchMs: 1_000,
  maxLineBytes: 16 << 20,
  maxPageBytes: 256 << 20,
  backoff: backoffDefaults,
};

type TimerHandle = ReturnType<typeof setTimeout>;

/** Real timers by default; tests pass their own to see (and shorten) the delays asked for. */
export interface Timers {
  set(fn: () => void, ms: number): TimerHandle;
  clear(h: TimerHandle): void;
}

export const realTimers: Timers = { set: (fn, ms) => setTimeout(fn, ms), clear: (h) => clearTimeout(h) };

export interface WatchOptions {
  readonly clock: Clock;
  readonly log: Logger;
  readonly counters: Counters<WatchCounter>;
  /** In [0, 1): jitter of backoffs and watch timeouts. */
  readonly random?: () => number;
  readonly timers?: Timers;
  readonly tuning?: Partial<WatchTuning>;
}

// ---------------------------------------------------------------- one kind

/** What one ListWatch lists and watches, and how a raw object becomes the slim one kept. */
export interface WatchSource<T> {
  /** For logs and the `kind` label of its counters. */
  readonly kind: string;
  /** The collection's path ('/api/v1/pods'). */
  readonly path: string;
  /**
   * Extra query parameters sent with every list and watch, already encoded
   * ('fieldSelector=spec.nodeName%3Dnode-a'), '' for none. The server applies
   * them to both, so the watch only ever carries the selected objects.
   */
  readonly selector: string;
  readonly convert: (raw: unknown) => T | null;
}

/** Where a ListWatch puts what it converted: one kind of a ClusterViewWriter (kindSink), or a table of its own. */
export interface WatchSink<T> {
  upsert(obj: T): void;
  remove(namespace: string, name: string): void;
  /** After a (re)list: the whole set, replacing what was there. */
  replace(objs: Iterable<T>): void;
  /** The initial list has been applied. */
  markSynced(): void;
  /** Any sign of life from the API server, in Clock ms. */
  touch(nowMs: number): void;
}

/** The counter slots a ListWatch bumps: any block whose schema has `${kind}.lists` and the rest. */
export interface ReflectorCounters {
  readonly values: Float64Array;
  readonly schema: { readonly slot: Readonly<Record<string, number>> };
}

export interface ListWatchOptions extends Omit<WatchOptions, 'counters'> {
  readonly counters: ReflectorCounters;
}

function kindSink<K extends KindName>(kind: K, writer: ClusterViewWriter): WatchSink<KindObjects[K]> {
  return {
    upsert: (obj) => writer.upsert(kind, obj),
    remove: (namespace, name) => writer.remove(kind, namespace, name),
    replace: (objs) => writer.replace(kind, objs),
    markSynced: () => writer.markSynced(kind),
    touch: (nowMs) => writer.touch(nowMs),
  };
}

type Outcome =
  | { readonly kind: 'listed' }
  /** The server ended the watch (timeoutSeconds): watch again from the kept RV. */
  | { readonly kind: 'ended' }
  /** 410 Gone: the RV (or continue token) is older than the server's history; list again. */
  | { readonly kind: 'expired'; readonly reason: string }
  | { readonly kind: 'failed'; readonly error: string };

const LISTED: Outcome = { kind: 'listed' };
const ENDED: Outcome = { kind: 'ended' };

function failed(error: string): Outcome {
  return { kind: 'failed', error };
}

type Json = Readonly<Record<string, unknown>>;

function asObject(v: unknown): Json | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : null;
}

/** The message of a Status body, for logs (kube-apiserver explains 403s there: missing RBAC). */
function statusMessage(text: string): string {
  try {
    const m = asObject(JSON.parse(text))?.['message'];
    if (typeof m === 'string') return m;
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.slice(0, 200);
}

/** Reads a whole body; null when it breaks off or exceeds `max` bytes. */
function readBody(body: Readable, max: number): Promise<string | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        body.destroy();
        resolve(null);
        return;
      }
      chunks.push(c);
    });
    body.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    body.on('error', () => resolve(null));
    body.on('close', () => resolve(null));
  });
}

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
      const delay = this.#backoff.next(this.#clock.now(), this.#random());
      if (o.kind === 'failed') this.#onFailure(o.error, delay);
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

  /** A 200 from the API server: sign of life, and the end of a failure streak. */
  #onAlive(): void {
    const now = this.#clock.now();
    this.#writer.touch(now);
    if (!this.#failing) return;
    this.#failing = false;
    this.#log.info('kube API reachable again', { kind: this.#kind, downMs: now - this.#failingSinceMs });
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
    do {
      let query = `?limit=${this.#tuning.pageSize}${this.#selector}`;
      if (cont !== '') query += `&continue=${encodeURIComponent(cont)}`;
      const r = await this.#api.get(this.#path + query, this.#newAbort());
      if (!r.ok) return failed(`list: ${r.error}`);
      const text = await readBody(r.body, this.#tuning.maxPageBytes);
      if (text === null) return failed(`list: response broken off`);
      if (r.status === 410 && cont !== '') return { kind: 'expired', reason: `list continue: ${statusMessage(text)}` };
      if (r.status !== 200) return failed(`list: HTTP ${r.status}: ${statusMessage(text)}`);
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
      this.#onAlive();
      for (const raw of rawItems ?? []) {
        const slim = this.#convert(raw);
        if (slim === null) this.#count('decodeFailures');
        else items.push(slim);
      }
      const meta = asObject(page['metadata']);
      rv = typeof meta?.['resourceVersion'] === 'string' ? meta['resourceVersion'] : '';
      cont = typeof meta?.['continue'] === 'string' ? meta['continue'] : '';
    } while (cont !== '');
    if (rv === '') return failed('list: no resourceVersion');
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
    if (!this.#afterList) this.#count('watchRestarts');
    this.#afterList = false;
    const timeoutS = Math.floor(this.#tuning.minWatchTimeoutS * (1 + this.#random()));
    const query =
      `?watch=1&resourceVersion=${encodeURIComponent(this.#rv)}` + `&allowWatchBookmarks=true&timeoutSeconds=${timeoutS}${this.#selector}`;
    const r = await this.#api.get(this.#path + query, this.#newAbort());
    if (!r.ok) return failed(`watch: ${r.error}`);
    if (r.status !== 200) {
      const text = (await readBody(r.body, 1 << 20)) ?? '';
      if (r.status === 410) return { kind: 'expired', reason: `watch: ${statusMessage(text)}` };
      return failed(`watch: HTTP ${r.status}: ${statusMessage(text)}`);
    }
    this.#onAlive();
    return this.#stream(r.body, timeoutS * 1000 + this.#tuning.idleGraceMs);
  }

  /** Applies the events of one watch response until it ends. */
  #stream(body: Readable, idleMs: number): Promise<Outcome> {
    const startedMs = this.#clock.now();
    let events = 0;
    let pending = '';
    let done = false;
    return new Promise<Outcome>((resolve) => {
      const finish = (o: Outcome): void => {
        if (done) return;
        done = true;
        this.#timers.clear(idle);
        body.destroy();
        resolve(o);
      };
      const onIdle = (): void => finish(failed(`watch: no data for ${idleMs} ms`));
      let idle = this.#timers.set(onIdle, idleMs);
      body.setEncoding('utf8');
      body.on('data', (chunk: string) => {
        this.#timers.clear(idle);
        idle = this.#timers.set(onIdle, idleMs);
        let start = 0;
        for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', start)) {
          const line = pending + chunk.slice(start, nl);
          pending = '';
          start = nl + 1;
          events++;
          let o: Outcome | null;
          try {
            o = this.#onEvent(line);
          } catch (e) {
            o = this.#internalError(e);
          }
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

  /** One watch line; returns an outcome when the watch must end. */
  #onEvent(line: string): Outcome | null {
    if (line.trim() === '') return null;
    let ev: Json | null;
    try {
      ev = asObject(JSON.parse(line));
    } catch {
      ev = null;
    }
    this.#count('events');
    const now = this.#clock.now();
    this.#writer.touch(now);
    const type = ev?.['type'];
    const object = ev?.['object'];
    switch (type) {
      case 'ADDED':
      case 'MODIFIED': {
        const slim = this.#convert(object);
        if (slim !== null) {
          this.#writer.upsert(slim);
        } else {
          // The object exists but we cannot read it: better no records than the stale ones.
          this.#count('decodeFailures');
          const key = objectKey(object);
          if (key !== null) this.#writer.remove(key.namespace, key.name);
        }
        break;
      }
      case 'DELETED': {
        const key = objectKey(object);
        if (key !== null) this.#writer.remove(key.namespace, key.name);
        else this.#count('decodeFailures');
        break;
      }
      case 'BOOKMARK':
        break;
      case 'ERROR': {
        const status = asObject(object);
        const text = `${String(status?.['code'])} ${String(status?.['message'])}`;
        if (status?.['code'] === 410) return { kind: 'expired', reason: `watch event: ${text}` };
        return failed(`watch event: ${text}`);
      }
      default:
        this.#count('decodeFailures');
        return null;
    }
    const rv = resourceVersionOf(object);
    if (rv !== '') this.#rv = rv;
    return null;
  }
}

/** One kind of the cluster view, listed and watched into a ClusterViewWriter. */
export class Reflector<K extends KindName> extends ListWatch<KindObjects[K]> {
  constructor(kind: K, api: ApiGetter, writer: ClusterViewWriter, opts: WatchOptions) {
    super({ kind, path: resourcePath[kind], selector: '', convert: converters[kind] }, api, kindSink(kind, writer), opts);
  }
}

// ---------------------------------------------------------------- all kinds

/** The three reflectors the cluster view needs, started and stopped together. */
export class KubeWatch {
  readonly #reflectors: readonly Reflector<KindName>[];

  constructor(api: ApiGetter, writer: ClusterViewWriter, opts: WatchOptions) {
    this.#reflectors = WATCH_KINDS.map((kind) => new Reflector(kind, api, writer, opts));
  }

  start(): void {
    for (const r of this.#reflectors) r.start();
  }

  /** Every kind has applied its first list. */
  get synced(): boolean {
    return this.#reflectors.every((r) => r.synced);
  }

  async stop(): Promise<void> {
    await Promise.all(this.#reflectors.map((r) => r.stop()));
  }
}
