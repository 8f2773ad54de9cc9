/**
 * The agent's own picture of the cluster: the slim Services, EndpointSlices
 * and Namespaces the watch feeds (kube/watch.ts), indexed the way
 * kube/records.ts asks. Objects are kept by reference, never copied: the
 * slim objects are the memory, the indexes only point at them.
 *
 * Layout:
 *
 *   #byNs:    namespace -> { services: name -> ServiceEntry,
 *                            slices:   slice name -> slice }      (the delete event names the slice, not its service)
 *   ServiceEntry = { service | undefined, slices[] }             (slices of one service merged; a slice may arrive first)
 *   #svcIPs:  ip key (kube/ip.ts) -> Service | Service[]                 (cluster IPs)
 *   #epIPs:   ip key -> EndpointSlice | EndpointSlice[]                  (endpoint addresses)
 *   #namespaces: the Namespace objects' names
 *
 * Two reverse maps, one per kind, so a relist of one kind rebuilds only its
 * own. The endpoint map holds every address, ready or not: readiness
 * and publishNotReadyAddresses are applied when a PTR question is answered,
 * so a Service flipping publishNotReadyAddresses needs no re-indexing.
 *
 * Every event changes only what it touches; `replace` (after a relist) resets
 * one kind and rebuilds the reverse index once. JS runs one task at a time,
 * so no lookup ever sees a half-applied event.
 */
import { ipKey } from './ip.js';
import type {
  ClusterViewWriter, KindName, KindObjects, SlimEndpointSlice, SlimNamespace, SlimService,
} from './types.js';


/** What kube/records.ts reads. Everything returned is shared and read-only. */
export interface ClusterViewReader {
  /** All three kinds have had their initial list applied. */
  readonly synced: boolean;
  /** Clock ms of the last time the view was known current that came with a change (the SOA serial). 0 before any. */
  readonly modifiedMs: number;
  /** A Namespace object exists, or a Service lives in it (an event may beat its Namespace). */
  namespaceExists(namespace: string): boolean;
  service(namespace: string, name: string): SlimService | undefined;
  /** The service's slices (any address family), merged; empty when none. */
  slices(namespace: string, service: string): readonly SlimEndpointSlice[];
  /** Services whose cluster IPs include the address with this key (kube/ip.ts ipKey). */
  servicesByIP(key: string): readonly SlimService[];
  /** Slices with an endpoint (ready or not) at the address with this key. */
  slicesByIP(key: string): readonly SlimEndpointSlice[];
}

interface ServiceEntry {
  service: SlimService | undefined;
  slices: SlimEndpointSlice[];
}

interface NamespaceEntry {
  readonly services: Map<string, ServiceEntry>;
  readonly slices: Map<string, SlimEndpointSlice>;
}

const NO_SLICES: readonly SlimEndpointSlice[] = [];
const ALL_KINDS: readonly KindName[] = ['services', 'endpointslices', 'namespaces'];

export class ClusterView implements ClusterViewWriter, ClusterViewReader {
  readonly #byNs: Map<string, NamespaceEntry>;
  #namespaces: Set<string>;
  #svcIPs: Map<string, SlimService | SlimService[]>;
  #epIPs: Map<string, SlimEndpointSlice | SlimEndpointSlice[]>;
  readonly #syncedKinds: Set<KindName>;
  /** Per kind: when it was last known current (a whole list, a watch event or bookmark applied, a watch taken with no ERROR in its grace; -1: never). One kind's silence is not covered by another's bookmarks. */
  readonly #contactMs: Map<KindName, number>;
  /** The latest contact about any kind: when the view last changed, for #changed. */
  #latestContactMs: number;
  #modifiedMs: number;

  constructor() {
    this.#byNs = new Map();
    this.#namespaces = new Set();
    this.#svcIPs = new Map();
    this.#epIPs = new Map();
    this.#syncedKinds = new Set();
    this.#contactMs = new Map(ALL_KINDS.map((k) => [k, -1]));
    this.#latestContactMs = -1;
    this.#modifiedMs = 0;
  }

  // ---- ClusterViewWriter ----

  upsert<K extends KindName>(kind: K, obj: KindObjects[K]): void {
    if (kind === 'services') this.#putService(obj as SlimService, true);
    else if (kind === 'endpointslices') this.#putSlice(obj as SlimEndpointSlice, true);
    else this.#namespaces.add((obj as SlimNamespace).name);
    this.#changed();
  }

  remove<K extends KindName>(kind: K, namespace: string, name: string): void {
    if (kind === 'services') this.#dropService(namespace, name);
    else if (kind === 'endpointslices') this.#dropSlice(namespace, name);
    // Namespaces are cluster-scoped: `name` is the namespace, `namespace` is ''.
    else this.#namespaces.delete(name);
    this.#changed();
  }

  replace<K extends KindName>(kind: K, objs: Iterable<KindObjects[K]>): void {
    if (kind === 'namespaces') {
      const next = new Set<string>();
      for (const o of objs as Iterable<SlimNamespace>) next.add(o.name);
      this.#namespaces = next;
    } else {
      if (kind === 'services') {
        this.#forEachEntry((e) => {
          e.service = undefined;
        });
        for (const s of objs as Iterable<SlimService>) this.#putService(s, false);
        this.#svcIPs = new Map();
        this.#forEachEntry((e) => {
          if (e.service !== undefined) this.#indexService(e.service);
        });
      } else {
        for (const ns of this.#byNs.values()) ns.slices.clear();
        this.#forEachEntry((e) => {
          e.slices = [];
        });
        for (const s of objs as Iterable<SlimEndpointSlice>) this.#putSlice(s, false);
        this.#epIPs = new Map();
        for (const ns of this.#byNs.values()) for (const sl of ns.slices.values()) this.#indexSlice(sl);
      }
      this.#prune();
    }
    this.#changed();
  }

  markSynced(kind: KindName): void {
    this.#syncedKinds.add(kind);
  }

  touch(nowMs: number, kind?: KindName): void {
    if (kind === undefined) for (const k of ALL_KINDS) this.#contactMs.set(k, nowMs);
    else this.#contactMs.set(kind, nowMs);
    if (nowMs > this.#latestContactMs) this.#latestContactMs = nowMs;
  }

  // ---- state ----

  get synced(): boolean {
    return ALL_KINDS.every((k) => this.#syncedKinds.has(k));
  }

  /**
   * Clock ms since which every kind has been known current
   * (the kind known current longest ago); -1 while one kind never was.
   */
  get lastContactMs(): number {
    let oldest = Number.POSITIVE_INFINITY;
    for (const ms of this.#contactMs.values()) {
      if (ms < 0) return -1;
      if (ms < oldest) oldest = ms;
    }
    return oldest;
  }

  /** Clock ms when `kind` was last known current; -1 before any. */
  contactOf(kind: KindName): number {
    return this.#contactMs.get(kind) ?? -1;
  }

  get modifiedMs(): number {
    return this.#modifiedMs;
  }

  /**
   * May the view deny a name (NXDOMAIN/NODATA)? Only once synced and while the
   * view has been known current within `maxSilenceMs`: a view that may be
   * stale must answer SERVFAIL rather than invent a negative (design 4).
   */
  negativesAllowed(nowMs: number, maxSilenceMs: number): boolean {
    const since = this.lastContactMs;
    return this.synced && since >= 0 && nowMs - since <= maxSilenceMs;
  }

  /** Object counts, for metrics and the memory bench. */
  get counts(): { services: number; endpointslices: number; namespaces: number; reverseKeys: number } {
    let services = 0;
    let endpointslices = 0;
    for (const ns of this.#byNs.values()) {
      endpointslices += ns.slices.size;
      for (const e of ns.services.values()) if (e.service !== undefined) services++;
    }
    return { services, endpointslices, namespaces: this.#namespaces.size, reverseKeys: this.#svcIPs.size + this.#epIPs.size };
  }

  // ---- ClusterViewReader ----

  namespaceExists(namespace: string): boolean {
    if (this.#namespaces.has(namespace)) return true;
    const ns = this.#byNs.get(namespace);
    if (ns === undefined) return false;
    for (const e of ns.services.values()) if (e.service !== undefined) return true;
    return false;
  }

  service(namespace: string, name: string): SlimService | undefined {
    return this.#byNs.get(namespace)?.services.get(name)?.service;
  }

  slices(namespace: string, service: string): readonly SlimEndpointSlice[] {
    return this.#byNs.get(namespace)?.services.get(service)?.slices ?? NO_SLICES;
  }

  servicesByIP(key: string): readonly SlimService[] {
    return refs(this.#svcIPs, key);
  }

  slicesByIP(key: string): readonly SlimEndpointSlice[] {
    return refs(this.#epIPs, key);
  }

  // ---- internals ----

  #changed(): void {
    // The watch touches on every event, so the last contact is this change's time.
    this.#modifiedMs = this.#latestContactMs < 0 ? 0 : this.#latestContactMs;
  }

  #nsEntry(namespace: string): NamespaceEntry {
    let ns = this.#byNs.get(namespace);
    if (ns === undefined) {
      ns = { services: new Map(), slices: new Map() };
      this.#byNs.set(namespace, ns);
    }
    return ns;
  }

  #serviceEntry(ns: NamespaceEntry, name: string): ServiceEntry {
    let e = ns.services.get(name);
    if (e === undefined) {
      e = { service: undefined, slices: [] };
      ns.services.set(name, e);
    }
    return e;
  }

  #putService(svc: SlimService, index: boolean): void {
    const e = this.#serviceEntry(this.#nsEntry(svc.namespace), svc.name);
    if (index && e.service !== undefined) this.#unindexService(e.service);
    e.service = svc;
    if (index) this.#indexService(svc);
  }

  #dropService(namespace: string, name: string): void {
    const ns = this.#byNs.get(namespace);
    const e = ns?.services.get(name);
    if (ns === undefined || e === undefined || e.service === undefined) return;
    this.#unindexService(e.service);
    e.service = undefined;
    if (e.slices.length === 0) ns.services.delete(name);
    this.#pruneNs(namespace, ns);
  }

  #putSlice(slice: SlimEndpointSlice, index: boolean): void {
    // In a relist too: a list that names a slice twice (a broken server) must not leave the first copy merged.
    this.#dropSlice(slice.namespace, slice.name);
    // No service-name label: no service to merge it into. FQDN slices carry
    // names, not addresses: no record of the spec comes from them.
    if (slice.serviceName === '' || slice.addressType === 'FQDN') return;
    const ns = this.#nsEntry(slice.namespace);
    ns.slices.set(slice.name, slice);
    this.#serviceEntry(ns, slice.serviceName).slices.push(slice);
    if (index) this.#indexSlice(slice);
  }

  #dropSlice(namespace: string, name: string): void {
    const ns = this.#byNs.get(namespace);
    const old = ns?.slices.get(name);
    if (ns === undefined || old === undefined) return;
    ns.slices.delete(name);
    const e = ns.services.get(old.serviceName);
    if (e !== undefined) {
      const i = e.slices.indexOf(old);
      if (i >= 0) e.slices.splice(i, 1);
      if (e.slices.length === 0 && e.service === undefined) ns.services.delete(old.serviceName);
    }
    this.#unindexSlice(old);
    this.#pruneNs(namespace, ns);
  }

  #forEachEntry(fn: (e: ServiceEntry) => void): void {
    for (const ns of this.#byNs.values()) for (const e of ns.services.values()) fn(e);
  }

  #pruneNs(namespace: string, ns: NamespaceEntry): void {
    if (ns.services.size === 0 && ns.slices.size === 0) this.#byNs.delete(namespace);
  }

  #prune(): void {
    for (const [name, ns] of this.#byNs) {
      for (const [svc, e] of ns.services) if (e.service === undefined && e.slices.length === 0) ns.services.delete(svc);
      this.#pruneNs(name, ns);
    }
  }

  #indexService(svc: SlimService): void {
    for (const ip of svc.clusterIPs) addRef(this.#svcIPs, ipKey(ip), svc);
  }

  #unindexService(svc: SlimService): void {
    for (const ip of svc.clusterIPs) delRef(this.#svcIPs, ipKey(ip), svc);
  }

  #indexSlice(slice: SlimEndpointSlice): void {
    for (const ep of slice.endpoints) for (const ip of ep.addresses) addRef(this.#epIPs, ipKey(ip), slice);
  }

  #unindexSlice(slice: SlimEndpointSlice): void {
    for (const ep of slice.endpoints) for (const ip of ep.addresses) delRef(this.#epIPs, ipKey(ip), slice);
  }
}

// A reverse map stores one object bare (the common case: an address belongs
// to one service or one slice) and an array only when an address is shared,
// which saves an array per address.

function refs<T extends object>(map: Map<string, T | T[]>, key: string): readonly T[] {
  const r = map.get(key);
  if (r === undefined) return [];
  return Array.isArray(r) ? r : [r];
}

function addRef<T extends object>(map: Map<string, T | T[]>, key: string, ref: T): void {
  if (key === '') return;
  const cur = map.get(key);
  if (cur === undefined) map.set(key, ref);
  else if (Array.isArray(cur)) {
    if (!cur.includes(ref)) cur.push(ref);
  } else if (cur !== ref) map.set(key, [cur, ref]);
}

function delRef<T extends object>(map: Map<string, T | T[]>, key: string, ref: T): void {
  const cur = map.get(key);
  if (cur === undefined) return;
  if (!Array.isArray(cur)) {
    if (cur === ref) map.delete(key);
    return;
  }
  const i = cur.indexOf(ref);
  if (i < 0) return;
  cur.splice(i, 1);
  if (cur.length === 1) map.set(key, cur[0]!);
}
