/**
 * What a ListWatch (list-watch.ts) is given: where it reads (WatchSource),
 * where it writes (WatchSink), its tuning and their defaults, the timers it
 * waits on and the counter block it bumps. Kept apart from the loop so the
 * contract its users (watch.ts, pods.ts) build against reads on its own.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { Counters } from '../stats/counters.js';
import { backoffDefaults, type BackoffPolicy } from './backoff.js';
import type { WatchCounter } from './reflector-stats.js';

export interface WatchTuning {
  /** Items per list page (client-go's pager uses 500): bounds the raw JSON held at once. */
  readonly pageSize: number;
  /** Watches ask for a random timeout in [min, 2*min) s, as client-go does (5-10 min), so nodes do not re-watch in step. */
  readonly minWatchTimeoutS: number;
  /** A watch silent for its timeout plus this long is dead (the server should have ended it): drop it. */
  readonly idleGraceMs: number;
  /**
   * A watch that carried no byte for this long is made again, however long its timeout: nothing else ends a
   * watch on a wedged server or proxy, or a half-open connection whose peer still answers keepalives. A quiet
   * kind's watch gets a bookmark a minute only where etcd sends progress notifications often (kubeadm: 5 s;
   * etcd's default is 10 min, kine's none), so silence alone is no failure: the new watch says (list-watch.ts).
   */
  readonly maxWatchSilenceMs: number;
  /**
   * A list page (headers and body) and a watch's response headers must come within this long. A silent peer on a
   * live connection (a proxy, a wedged API server) answers TCP keepalive, so nothing else would ever end the wait.
   */
  readonly requestTimeoutMs: number;
  /** A watch that ends with no event sooner than this counts as a failure (client-go's "very short watch"). */
  readonly shortWatchMs: number;
  /**
   * A watch the server took (200) and that brought no ERROR within this long vouches for the kind's view as of
   * the 200: kube-apiserver replays every event after our resourceVersion at once, or sends ERROR 410 at once.
   */
  readonly acceptGraceMs: number;
  /** Longest watch line (one object) and list page accepted; beyond that the stream is broken, not big. */
  readonly maxLineBytes: number;
  readonly maxPageBytes: number;
  /**
   * Most pages, and objects, one list may take: a server or proxy whose continue tokens move on for ever would
   * otherwise have us page without end, holding every page's objects and never syncing. Far above a real
   * cluster's (150k pods, 10k services: a few hundred pages of 500).
   */
  readonly maxListPages: number;
  readonly maxListObjects: number;
  readonly backoff: BackoffPolicy;
}

export const watchDefaults: WatchTuning = {
  pageSize: 500,
  minWatchTimeoutS: 300,
  idleGraceMs: 30_000,
  // Two and a half bookmark periods: one late bookmark is no reason to drop a watch.
  maxWatchSilenceMs: 150_000,
  requestTimeoutMs: 60_000,
  shortWatchMs: 1_000,
  // Above kube-apiserver's 3 s wait for a cache behind a watch's RV (waitUntilFreshAndBlock), whose error then comes in time.
  acceptGraceMs: 5_000,
  maxLineBytes: 16 << 20,
  maxPageBytes: 256 << 20,
  maxListPages: 10_000,
  maxListObjects: 1_000_000,
  backoff: backoffDefaults,
};

export type TimerHandle = ReturnType<typeof setTimeout>;

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
  /**
   * The kind is current as of `nowMs` (Clock ms): a whole list, or a watch event or bookmark, told just
   * before it is written, or a watch's 200 once its grace passed with no ERROR (dated at the 200). Not an ERROR
   * event: after a 410 the view is known to miss changes.
   */
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
