/**
 * The pods of this node, for one question only: which namespace does a
 * client address belong to (--metrics-by-namespace). The node hides the pod
 * from the cluster DNS (coredns/coredns#3868: behind node-cache every query
 * comes from the node), so only a node-local agent can say who asked.
 *
 * One ListWatch (kube/list-watch.ts) of `/api/v1/pods?fieldSelector=spec.nodeName=NODE`:
 * the API server filters, so the agent holds and hears about the pods of its
 * own node only (about 110 at most by kubelet's default), never the
 * cluster's. Each pod is cut down at the edge to its namespace and its
 * addresses; nothing else of the object (env, specs) is kept.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { defineCounters } from '../stats/counters.js';
import type { ApiGetter } from './client.js';
import { objectKey } from './convert.js';
import { ipKey, ipv6Nibbles, nibblesToIPv6 } from './ip.js';
import { ListWatch, reflectorCounterDefs, type ReflectorCounters, type Timers, type WatchSink, type WatchSource, type WatchTuning } from './watch.js';

export interface SlimPod {
  readonly namespace: string;
  readonly name: string;
  /**
   * The addresses its traffic comes from, as Node prints a peer address
   * (dotted IPv4, RFC 5952 IPv6). Empty for hostNetwork pods (they share the
   * node's address: counting them by namespace would give the node's own
   * queries to whichever such pod came last), for pods not yet given an IP,
   * and for pods that have finished (their IP is free for a new pod).
   */
  readonly ips: readonly string[];
}

type Json = Readonly<Record<string, unknown>>;

function obj(v: unknown): Json | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : null;
}

/** The spelling a socket reports for `ip`, or '' when it is no address. */
export function peerSpelling(ip: string): string {
  if (isIPv4(ip)) return ip;
  if (!isIPv6(ip) || ip.includes('%')) return '';
  return nibblesToIPv6(ipv6Nibbles(ip));
}

/** API Pod JSON -> SlimPod; null when it has no name or namespace. Never throws. */
export function toSlimPod(raw: unknown): SlimPod | null {
  const key = objectKey(raw);
  if (key === null || key.namespace === '') return null;
  const o = obj(raw);
  const spec = obj(o?.['spec']);
  const status = obj(o?.['status']);
  const phase = status?.['phase'];
  if (spec?.['hostNetwork'] === true || phase === 'Succeeded' || phase === 'Failed') return { namespace: key.namespace, name: key.name, ips: [] };
  const seen = new Set<string>();
  const ips: string[] = [];
  const add = (v: unknown): void => {
    if (typeof v !== 'string') return;
    const ip = peerSpelling(v);
    if (ip === '' || seen.has(ipKey(ip))) return;
    seen.add(ipKey(ip));
    ips.push(ip);
  };
  // podIPs (dual-stack) lists podIP first; older objects have podIP only.
  const list = status?.['podIPs'];
  if (Array.isArray(list)) for (const item of list) add(obj(item)?.['ip']);
  add(status?.['podIP']);
  return { namespace: key.namespace, name: key.name, ips };
}

export function podsSource(nodeName: string): WatchSource<SlimPod> {
  return {
    kind: 'pods',
    path: '/api/v1/pods',
    selector: `fieldSelector=${encodeURIComponent(`spec.nodeName=${nodeName}`)}`,
    convert: toSlimPod,
  };
}

/** nodelocal_kube_*{kind="pods"}: the same counters as the cluster view's reflectors. */
export const podWatchCounterSchema = defineCounters(reflectorCounterDefs('pods'));

/**
 * The node's pods by key (namespace/name), with a change callback: the
 * namespace table (ops/namespace-metrics.ts) rebuilds its address map from
 * `pods()` after each change. Events are rare (pods start and stop), so a
 * rebuild per event costs nothing that matters.
 */
export class NodePods implements WatchSink<SlimPod> {
  readonly #pods: Map<string, SlimPod>;
  #synced: boolean;
  #lastContactMs: number;
  readonly #onChange: () => void;

  constructor(onChange: () => void) {
    this.#pods = new Map();
    this.#synced = false;
    this.#lastContactMs = -1;
    this.#onChange = onChange;
  }

  get synced(): boolean {
    return this.#synced;
  }

  get lastContactMs(): number {
    return this.#lastContactMs;
  }

  get size(): number {
    return this.#pods.size;
  }

  pods(): IterableIterator<SlimPod> {
    return this.#pods.values();
  }

  upsert(pod: SlimPod): void {
    this.#pods.set(`${pod.namespace}/${pod.name}`, pod);
    this.#onChange();
  }

  remove(namespace: string, name: string): void {
    if (this.#pods.delete(`${namespace}/${name}`)) this.#onChange();
  }

  replace(pods: Iterable<SlimPod>): void {
    this.#pods.clear();
    for (const p of pods) this.#pods.set(`${p.namespace}/${p.name}`, p);
    this.#onChange();
  }

  markSynced(): void {
    this.#synced = true;
  }

  touch(nowMs: number): void {
    this.#lastContactMs = nowMs;
  }
}

export interface PodWatchOptions {
  readonly nodeName: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** A block of podWatchCounterSchema. */
  readonly counters: ReflectorCounters;
  readonly random?: () => number;
  readonly timers?: Timers;
  readonly tuning?: Partial<WatchTuning>;
}

/** The list-then-watch of this node's pods into a NodePods. */
export class PodWatch {
  readonly #lw: ListWatch<SlimPod>;

  constructor(api: ApiGetter, pods: NodePods, opts: PodWatchOptions) {
    if (opts.nodeName === '') throw new Error('pod watch: no node name');
    this.#lw = new ListWatch(podsSource(opts.nodeName), api, pods, opts);
  }

  get synced(): boolean {
    return this.#lw.synced;
  }

  start(): void {
    this.#lw.start();
  }

  stop(): Promise<void> {
    return this.#lw.stop();
  }
}
