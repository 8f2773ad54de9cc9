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
 *
 * This file is the cluster view's three reflectors; the loop itself is
 * list-watch.ts (its options list-watch-options.ts, its counters
 * reflector-stats.ts, its response reading api-body.ts, its watch lines
 * watch-event.ts, what each request came to reflector-outcome.ts).
 */
import { defineCounters, type CounterDef } from '../stats/counters.js';
import type { ApiGetter } from './client.js';
import { converters } from './convert.js';
import { ListWatch } from './list-watch.js';
import type { WatchOptions, WatchSink } from './list-watch-options.js';
import { reflectorCounterDefs, type WatchCounter } from './reflector-stats.js';
import type { ClusterViewWriter, KindName, KindObjects } from './types.js';

export { ListWatch } from './list-watch.js';
export * from './list-watch-options.js';
export { reflectorCounterDefs, type ReflectorCounter, type WatchCounter } from './reflector-stats.js';

export const WATCH_KINDS: readonly KindName[] = ['namespaces', 'services', 'endpointslices'];

const resourcePath: { readonly [K in KindName]: string } = {
  services: '/api/v1/services',
  endpointslices: '/apis/discovery.k8s.io/v1/endpointslices',
  namespaces: '/api/v1/namespaces',
};

// ---------------------------------------------------------------- counters

function watchCounterDefs(): Record<WatchCounter, CounterDef> {
  let defs: Partial<Record<WatchCounter, CounterDef>> = {};
  for (const kind of WATCH_KINDS) defs = { ...defs, ...reflectorCounterDefs(kind) };
  return defs as Record<WatchCounter, CounterDef>;
}

export const watchCounterSchema = defineCounters<WatchCounter>(watchCounterDefs());

function kindSink<K extends KindName>(kind: K, writer: ClusterViewWriter): WatchSink<KindObjects[K]> {
  return {
    upsert: (obj) => writer.upsert(kind, obj),
    remove: (namespace, name) => writer.remove(kind, namespace, name),
    replace: (objs) => writer.replace(kind, objs),
    markSynced: () => writer.markSynced(kind),
    touch: (nowMs) => writer.touch(nowMs, kind),
  };
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
