/**
 * The slim cluster objects the DNS view keeps: only what records need
 * (CoreDNS keeps the same subset in plugin/kubernetes/object). API objects
 * are converted once, at the edge (kube/convert.ts), and nothing else in the
 * agent ever sees a raw API object. Everything here is read-only.
 */

export interface ServicePort {
  /** Empty when the port is unnamed (no SRV record then). */
  readonly name: string;
  readonly port: number;
  /** 'TCP' | 'UDP' | 'SCTP', as the API spells it. */
  readonly protocol: string;
}

export type ServiceKind = 'ClusterIP' | 'Headless' | 'ExternalName';

export interface SlimService {
  readonly namespace: string;
  readonly name: string;
  readonly kind: ServiceKind;
  /** spec.clusterIPs (IPv4 and/or IPv6), empty for headless and ExternalName. */
  readonly clusterIPs: readonly string[];
  /** spec.externalName, lower-cased without a trailing dot; '' unless kind is ExternalName. */
  readonly externalName: string;
  readonly ports: readonly ServicePort[];
  readonly publishNotReadyAddresses: boolean;
}

export interface SlimEndpoint {
  /** IP literals of one address family (the slice's addressType). */
  readonly addresses: readonly string[];
  /** conditions.ready; an unset condition counts as ready (discovery.k8s.io/v1 semantics). */
  readonly ready: boolean;
  /** Endpoint hostname ('' when unset). */
  readonly hostname: string;
}

export interface SlimEndpointSlice {
  readonly namespace: string;
  /** The slice's own name (one service may have several slices). */
  readonly name: string;
  /** The kubernetes.io/service-name label; '' when absent (the slice is then ignored). */
  readonly serviceName: string;
  readonly addressType: 'IPv4' | 'IPv6' | 'FQDN';
  readonly ports: readonly ServicePort[];
  readonly endpoints: readonly SlimEndpoint[];
}

export interface SlimNamespace {
  readonly name: string;
}

export type KindName = 'services' | 'endpointslices' | 'namespaces';

export interface KindObjects {
  readonly services: SlimService;
  readonly endpointslices: SlimEndpointSlice;
  readonly namespaces: SlimNamespace;
}

/**
 * What the watch feeds (kube/watch.ts -> kube/view.ts). Updates are
 * incremental; `replace` swaps a kind's whole set after a (re)list, so
 * readers see the old set until the new one is whole. Until then a relist
 * holds the kind's new slim objects beside the old ones (never raw objects
 * beyond one page): slim copies, about twice the kind's view at the peak.
 */
export interface ClusterViewWriter {
  upsert<K extends KindName>(kind: K, obj: KindObjects[K]): void;
  remove<K extends KindName>(kind: K, namespace: string, name: string): void;
  replace<K extends KindName>(kind: K, objs: Iterable<KindObjects[K]>): void;
  /** The initial list of `kind` has been applied. */
  markSynced(kind: KindName): void;
  /** A sign of life from the API server about `kind` (a whole list, a watch, an event, a bookmark), in Clock ms; every kind when omitted. */
  touch(nowMs: number, kind?: KindName): void;
}
