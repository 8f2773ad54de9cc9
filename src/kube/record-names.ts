/**
 * What a cluster name is (records.ts answers from it): the question's
 * labels, which node of the Kubernetes DNS tree they name (classify), and
 * the endpoints and SRV targets of a service that the classification and
 * the answers both need. Pure: reads the view, no I/O, no clock.
 */
import { dashedName, ipKey, isDashedName, podLabelAddress } from './ip.js';
import type { ServicePort, SlimEndpoint, SlimEndpointSlice, SlimService } from './types.js';
import type { ClusterViewReader } from './view.js';

// ---------------------------------------------------------------------------
// Names

export const IN_ADDR = ['in-addr', 'arpa'];
export const IP6_ARPA = ['ip6', 'arpa'];

/** Lower-cased labels of an uncompressed wire name, or undefined when malformed. */
export function wireLabels(name: Uint8Array): string[] | undefined {
  const labels: string[] = [];
  let off = 0;
  while (off < name.length) {
    const len = name[off]!;
    if (len === 0) return labels;
    if (len > 63 || off + 1 + len > name.length) return undefined;
    let l = '';
    for (let i = off + 1; i <= off + len; i++) {
      const c = name[i]!;
      l += String.fromCharCode(c >= 0x41 && c <= 0x5a ? c | 0x20 : c);
    }
    labels.push(l);
    off += len + 1;
  }
  return undefined;
}

export function endsWith(labels: readonly string[], suffix: readonly string[]): boolean {
  if (labels.length < suffix.length) return false;
  const d = labels.length - suffix.length;
  for (let i = 0; i < suffix.length; i++) if (labels[d + i] !== suffix[i]) return false;
  return true;
}

export function trimDot(s: string): string {
  return s.endsWith('.') ? s.slice(0, -1) : s;
}

/** Leading underscore stripped, as CoreDNS parse.go stripUnderscore does (it accepts both spellings). */
function strip(label: string): string {
  return label.startsWith('_') ? label.slice(1) : label;
}

// ---------------------------------------------------------------------------
// What a name is

export type Node =
  | { readonly t: 'nx' }
  | { readonly t: 'empty' }
  | { readonly t: 'apex' }
  | { readonly t: 'version' }
  | { readonly t: 'nsHost' }
  | { readonly t: 'service'; readonly svc: SlimService }
  /** `backends`: the endpoint's addresses (backends(view, svc, host)), found while classifying. */
  | { readonly t: 'endpoint'; readonly svc: SlimService; readonly host: string; readonly backends: readonly Backend[] }
  /** `targets`: srvTargets(view, svc, port, proto), found while classifying. */
  | { readonly t: 'srv'; readonly svc: SlimService; readonly port: string; readonly proto: string; readonly targets: readonly SrvTarget[] }
  | { readonly t: 'pod'; readonly ip: string };

const NX: Node = { t: 'nx' };
const EMPTY: Node = { t: 'empty' };

/** `rel`: the labels left of the zone, left to right. */
export function classify(view: ClusterViewReader, rel: readonly string[]): Node {
  const n = rel.length;
  if (n === 0) return { t: 'apex' };
  const top = rel[n - 1]!;
  if (top === 'svc') return classifyService(view, rel);
  if (top === 'pod') {
    if (n === 1) return EMPTY;
    if (!view.namespaceExists(rel[n - 2]!)) return NX;
    if (n === 2) return EMPTY;
    if (n > 3) return NX;
    const ip = podLabelAddress(rel[0]!);
    return ip === '' ? NX : { t: 'pod', ip };
  }
  if (top === 'dns-version' && n === 1) return { t: 'version' };
  if (top === 'dns') {
    if (n === 1) return EMPTY;
    if (n === 2 && rel[0] === 'ns') return { t: 'nsHost' };
  }
  return NX;
}

function classifyService(view: ClusterViewReader, rel: readonly string[]): Node {
  const n = rel.length;
  if (n === 1) return EMPTY;
  const ns = rel[n - 2]!;
  if (n === 2) return view.namespaceExists(ns) ? EMPTY : NX;
  const svc = view.service(ns, rel[n - 3]!);
  if (svc === undefined || n > 5) return NX;
  if (n === 3) {
    // Spec 2.4.1: a headless service with no ready endpoints is NXDOMAIN
    // (CoreDNS agrees: findServices finds nothing and keeps errNoItems).
    if (svc.kind === 'Headless' && !hasBackend(view, svc)) return NX;
    // An IP address as externalName is no name to point a CNAME at: CoreDNS keeps only ExternalNames whose
    // host is a name (findServices, HostType), so the service's name does not exist (coredns/coredns#2324).
    if (svc.kind === 'ExternalName' && ipKey(trimDot(svc.externalName)) !== '') return NX;
    return { t: 'service', svc };
  }
  // CoreDNS: an ExternalName service has no endpoints and no port names below it.
  if (svc.kind === 'ExternalName') return NX;
  if (n === 4) {
    const host = rel[0]!;
    const named = backends(view, svc, host);
    if (named.length > 0) return { t: 'endpoint', svc, host, backends: named };
    // "_tcp.<svc>..." is the empty non-terminal above "_http._tcp.<svc>...", and "tcp.<svc>..." the one above
    // "http.tcp.<svc>..." (the SRV name is answered without its underscores too): its NXDOMAIN would deny the SRV name.
    const proto = strip(host);
    if (proto !== '' && hasNamedPort(view, svc, proto)) return EMPTY;
    return NX;
  }
  const port = strip(rel[0]!);
  const proto = strip(rel[1]!);
  // An unnamed port has no SRV name (spec 2.3.2): '' must not match it; nor is '' a protocol ('_' alone: CoreDNS
  // strips it to '', which matches none), though the filter reads '' as any.
  if (port === '' || proto === '') return NX;
  const targets = srvTargets(view, svc, port, proto);
  return targets.length > 0 ? { t: 'srv', svc, port, proto, targets } : NX;
}

// ---------------------------------------------------------------------------
// Endpoints

export interface Backend {
  /** The endpoint's hostname, or CoreDNS's dashed-address name when it has none. */
  readonly host: string;
  readonly addr: string;
  readonly ports: readonly ServicePort[];
}

/**
 * Serving addresses of a service's endpoints (all slices merged), optionally
 * only those whose host name is `host`. Ready means conditions.ready
 * (unset counts as ready, converted upstream); publishNotReadyAddresses
 * publishes them all. One pass, and for a `host` no name built for the
 * endpoints it does not match: a question's label is compared with every
 * endpoint of the service (a big headless one has thousands). `want`: only
 * the slices it accepts.
 */
export function backends(view: ClusterViewReader, svc: SlimService, host: string, want?: (slice: SlimEndpointSlice) => boolean): Backend[] {
  const out: Backend[] = [];
  for (const slice of view.slices(svc.namespace, svc.name)) {
    if (want !== undefined && !want(slice)) continue;
    for (const ep of slice.endpoints) {
      if (!serving(svc, ep)) continue;
      for (const addr of ep.addresses) {
        if (host === '') out.push({ host: ep.hostname !== '' ? ep.hostname.toLowerCase() : dashedName(addr), addr, ports: slice.ports });
        else if (named(ep, addr, host)) out.push({ host, addr, ports: slice.ports });
      }
    }
  }
  return out;
}

/** The endpoint's address `addr` is called `host` (lower case): its hostname, or the dashed address when it has none. */
function named(ep: SlimEndpoint, addr: string, host: string): boolean {
  if (ep.hostname === '') return isDashedName(host, addr);
  return ep.hostname === host || ep.hostname.toLowerCase() === host;
}

function serving(svc: SlimService, ep: SlimEndpoint): boolean {
  return ep.ready || svc.publishNotReadyAddresses;
}

/** The service has a serving endpoint (in `slices`, by default all of its slices): the first one found answers. */
function hasBackend(view: ClusterViewReader, svc: SlimService, slices: readonly SlimEndpointSlice[] = view.slices(svc.namespace, svc.name)): boolean {
  return slices.some((slice) => slice.endpoints.some((ep) => serving(svc, ep) && ep.addresses.length > 0));
}

function portMatches(p: ServicePort, port: string, proto: string): boolean {
  return (port === '' || p.name.toLowerCase() === port) && (proto === '' || p.protocol.toLowerCase() === proto);
}

/** Some named port (only those have SRV names, spec 2.3.2) speaks `proto`: a slice's port, for a slice with a serving endpoint. */
function hasNamedPort(view: ClusterViewReader, svc: SlimService, proto: string): boolean {
  const isNamed = (p: ServicePort): boolean => p.name !== '' && portMatches(p, '', proto);
  if (svc.kind === 'ClusterIP') return svc.ports.some(isNamed);
  return hasBackend(view, svc, view.slices(svc.namespace, svc.name).filter((slice) => slice.ports.some(isNamed)));
}

export interface SrvTarget {
  readonly target: string;
  readonly port: number;
  /** The address of the target (additional section). */
  readonly addr: string;
}

/**
 * (target, port, address) of every SRV the service has for the port filter
 * ('' matches any), before naming the target's zone. ClusterIP: the service
 * itself per service port; headless and endpoint names: each serving
 * endpoint per port of its slice (spec 2.4.2: N endpoints x M ports), or
 * each of `found` (the endpoints of one name) when given.
 */
export function srvTargets(view: ClusterViewReader, svc: SlimService, port: string, proto: string, found?: readonly Backend[]): SrvTarget[] {
  const out: SrvTarget[] = [];
  if (svc.kind === 'ClusterIP' && found === undefined) {
    for (const p of svc.ports) {
      if (!portMatches(p, port, proto)) continue;
      for (const ip of svc.clusterIPs) out.push({ target: '', port: p.port, addr: ip });
    }
    return out;
  }
  // Slices without such a port are not walked: a port name no slice has costs no pass over the endpoints.
  for (const b of found ?? backends(view, svc, '', (slice) => slice.ports.some((p) => portMatches(p, port, proto)))) {
    for (const p of b.ports) if (portMatches(p, port, proto)) out.push({ target: b.host, port: p.port, addr: b.addr });
  }
  return out;
}
