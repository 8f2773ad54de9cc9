/**
 * nodelocal_dns_requests_by_namespace_total{server,namespace}: requests
 * counted by the namespace of the pod that sent them (--metrics-by-namespace).
 *
 * Why a family of our own and not a `namespace` label on
 * coredns_dns_requests_total: that family's series carry no such label, and
 * a family whose series differ in label names double-counts under sum();
 * CoreDNS has no per-client label either. The `server` label is the one
 * coredns_dns_requests_total carries, so the two join.
 *
 * Hot path: HitPath calls tag(peer.address) once per query: one Map lookup
 * (address string -> slot) and one Float64Array add. The map is rebuilt
 * whole on each pod event (a node has about 110 pods at most) and swapped in
 * with one assignment.
 *
 * Slots, bounded by --metrics-namespaces-max:
 *
 *   counts: [ _unknown | _other | ns slot 0 | ns slot 1 | ... | ns slot max-1 ]
 *
 *   _unknown  the source address is no pod of this node: the node itself,
 *             hostNetwork pods (they share the node's address), pods of other
 *             nodes, anything before the first list of pods
 *   _other    a pod of a namespace that found every slot taken
 *
 * Neither can be a namespace name (namespaces are DNS labels: no "_"). A
 * namespace takes a slot when its first pod with an address appears on the
 * node, and keeps it while it has one; IDLE_MS after its last pod left, its
 * series is removed and the slot freed (zeroed) for another namespace. So the
 * series are bounded by max + 2, and a namespace's last counts are still
 * scraped after its pods are gone. A namespace that found no slot counts
 * under _other until one frees, then moves to its own series.
 *
 * With the batched UDP backend (worker threads, src/server/batched), the
 * workers' own hit paths have no tagger: their UDP queries are not counted
 * here (TCP and dgram listeners on the main thread are).
 */
import { isIPv4 } from 'node:net';
import type { Clock } from '../clock.js';
import { NodePods, type SlimPod } from '../kube/pods.js';
import type { ClientTagger } from '../server/hit-path.js';
import type { LabelledValue, MetricsRegistry } from './metrics.js';

export const METRIC_NAME = 'nodelocal_dns_requests_by_namespace_total';
export const NS_UNKNOWN = '_unknown';
export const NS_OTHER = '_other';

const UNKNOWN = 0;
const OTHER = 1;
const FIRST = 2;

/**
 * A namespace with no pods left on the node keeps its series this long: past
 * any sane scrape interval (Prometheus's default is 1 min, slow setups 5), so
 * the counts of its last queries are scraped before the series goes.
 */
export const IDLE_MS = 10 * 60_000;

export interface NamespaceRequestsOptions {
  /** --metrics-namespaces-max: namespaces with a series of their own. */
  readonly maxNamespaces: number;
  readonly clock: Clock;
}

export class NamespaceRequests implements ClientTagger {
  /** What the pod watch feeds; every change rebuilds the address map. */
  readonly pods: NodePods;
  readonly #clock: Clock;
  readonly #counts: Float64Array;
  /** Namespace of each slot ('' = free), indexed from FIRST. */
  readonly #slotNs: string[];
  /** Clock ms since which a slot's namespace has had no pod with an address; -1 while it has one. */
  readonly #idleSince: Float64Array;
  readonly #nsSlot: Map<string, number>;
  /** Client address (as a socket reports it) -> slot. Replaced whole, never edited in place. */
  #byAddr: Map<string, number>;
  /** Clock ms of the next idle expiry or of a retry for namespaces in _other; Infinity when none. */
  #nextRebuild: number;
  #unsweep: (() => void) | null;

  constructor(opts: NamespaceRequestsOptions) {
    this.#clock = opts.clock;
    this.pods = new NodePods(() => this.#rebuild());
    this.#counts = new Float64Array(FIRST + opts.maxNamespaces);
    this.#slotNs = new Array<string>(opts.maxNamespaces).fill('');
    this.#idleSince = new Float64Array(opts.maxNamespaces).fill(-1);
    this.#nsSlot = new Map();
    this.#byAddr = new Map();
    this.#nextRebuild = Infinity;
    this.#unsweep = null;
  }

  tag(address: string): void {
    this.#counts[this.#byAddr.get(address) ?? UNKNOWN]!++;
  }

  /** Frees idle slots on time, between pod events (the clock's shared sweep; a comparison per tick). */
  start(): void {
    this.#unsweep ??= this.#clock.sweep((now) => {
      if (now >= this.#nextRebuild) this.#rebuild();
    });
  }

  stop(): void {
    this.#unsweep?.();
    this.#unsweep = null;
  }

  /** Every series now: _unknown, _other, then one per namespace holding a slot. */
  series(server: string): LabelledValue[] {
    const out: LabelledValue[] = [
      [{ server, namespace: NS_UNKNOWN }, this.#counts[UNKNOWN]!],
      [{ server, namespace: NS_OTHER }, this.#counts[OTHER]!],
    ];
    for (const [ns, slot] of this.#nsSlot) out.push([{ server, namespace: ns }, this.#counts[slot]!]);
    return out;
  }

  /** Namespaces holding a slot, for tests and logs. */
  namespaces(): string[] {
    return [...this.#nsSlot.keys()];
  }

  /**
   * After any pod change (or an idle expiry): which namespaces are on the
   * node, which slots go idle, expire or get taken, and the new address map.
   */
  #rebuild(): void {
    const now = this.#clock.now();
    const present = new Map<string, SlimPod[]>();
    for (const p of this.pods.pods()) {
      if (p.ips.length === 0) continue;
      const list = present.get(p.namespace);
      if (list === undefined) present.set(p.namespace, [p]);
      else list.push(p);
    }
    let next = Infinity;
    for (const [ns, slot] of this.#nsSlot) {
      const i = slot - FIRST;
      if (present.has(ns)) {
        this.#idleSince[i] = -1;
        continue;
      }
      if (this.#idleSince[i]! < 0) this.#idleSince[i] = now;
      const expires = this.#idleSince[i]! + IDLE_MS;
      if (now >= expires) {
        this.#nsSlot.delete(ns);
        this.#slotNs[i] = '';
        this.#idleSince[i] = -1;
        this.#counts[slot] = 0;
      } else if (expires < next) next = expires;
    }
    // New namespaces in name order: when slots run short, which one waits does not depend on event order.
    for (const ns of [...present.keys()].sort()) {
      if (this.#nsSlot.has(ns)) continue;
      const i = this.#slotNs.indexOf('');
      // None free: it counts under _other until one frees, i.e. until the next idle expiry (already in `next`).
      if (i < 0) continue;
      this.#slotNs[i] = ns;
      this.#idleSince[i] = -1;
      this.#counts[FIRST + i] = 0;
      this.#nsSlot.set(ns, FIRST + i);
    }
    const byAddr = new Map<string, number>();
    for (const [ns, list] of present) {
      const slot = this.#nsSlot.get(ns) ?? OTHER;
      for (const p of list) {
        for (const ip of p.ips) {
          byAddr.set(ip, slot);
          // A dual-stack socket ("::" or a TCP server on an IPv6 wildcard) reports IPv4 peers IPv4-mapped.
          if (isIPv4(ip)) byAddr.set(`::ffff:${ip}`, slot);
        }
      }
    }
    this.#byAddr = byAddr;
    this.#nextRebuild = next;
  }
}

/** Publishes the table on `registry` (read at scrape time only). */
export function addNamespaceMetrics(registry: MetricsRegistry, server: string, table: NamespaceRequests): void {
  registry.addCounter(
    METRIC_NAME,
    `DNS requests by the namespace of the client pod on this node (--metrics-by-namespace); "${NS_UNKNOWN}": not a pod of this node (the node, hostNetwork pods), "${NS_OTHER}": past --metrics-namespaces-max.`,
    ['server', 'namespace'],
    () => table.series(server),
  );
  registry.addGauge('nodelocal_node_pods', 'Pods of this node the agent knows (the --metrics-by-namespace pod watch), hostNetwork ones included.', [], () => [
    [{}, table.pods.size],
  ]);
}
