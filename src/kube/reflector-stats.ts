/**
 * The counters of one reflector (a ListWatch, list-watch.ts): lists,
 * relists, watch restarts, events, errors and decode failures, labelled by
 * the kind it watches. Declared apart from the loop so the cluster view's
 * three kinds (watch.ts) and the node's pods (pods.ts) build their counter
 * blocks from one definition.
 */
import type { CounterDef } from '../stats/counters.js';
import type { KindName } from './types.js';

export type Metric = 'lists' | 'relists' | 'watchRestarts' | 'events' | 'errors' | 'decodeFailures';
/** The counters of one watched kind: `${kind}.lists` and so on. */
export type ReflectorCounter<P extends string> = `${P}.${Metric}`;
export type WatchCounter = ReflectorCounter<KindName>;

const metricDefs: { readonly [M in Metric]: Omit<CounterDef, 'labels'> } = {
  lists: { name: 'nodelocal_kube_lists_total', help: 'Complete lists (all pages) applied to the cluster view.' },
  relists: { name: 'nodelocal_kube_relists_total', help: 'Lists after the first one (watch history expired: 410 Gone).' },
  watchRestarts: { name: 'nodelocal_kube_watch_restarts_total', help: 'Watches resumed from the last resourceVersion without a list (the API server answered 200; failed attempts count as errors).' },
  events: { name: 'nodelocal_kube_watch_events_total', help: 'Watch events received (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).' },
  errors: { name: 'nodelocal_kube_errors_total', help: 'Failed API requests and broken watch streams (each followed by a backoff).' },
  decodeFailures: { name: 'nodelocal_kube_decode_failures_total', help: 'Objects that could not be decoded (skipped), watch lines of an unknown type (skipped), and watch lines that could not be read (the watch ends, resumed from the last resourceVersion).' },
};

/** The counter defs of one watched kind (label `kind`), for a schema of its own or a shared one. */
export function reflectorCounterDefs<P extends string>(kind: P): Record<ReflectorCounter<P>, CounterDef> {
  const defs: Partial<Record<ReflectorCounter<P>, CounterDef>> = {};
  for (const m of Object.keys(metricDefs) as Metric[]) defs[`${kind}.${m}`] = { ...metricDefs[m], labels: { kind } };
  return defs as Record<ReflectorCounter<P>, CounterDef>;
}
