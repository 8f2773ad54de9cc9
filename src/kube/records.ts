/**
 * Cluster records from our own view: (view, question) -> answer, following
 * the Kubernetes DNS-Based Service Discovery specification 1.1.0
 * (kubernetes/dns docs/specification.md) and, where it is silent, CoreDNS's
 * kubernetes plugin (the server whose answers ours stand in for). Pure: no
 * I/O, no clock; everything time-dependent (sync, API silence) arrives as
 * `negativesAllowed`.
 *
 * Names, below the zone (labels right to left):
 *
 *   <zone>                                  SOA, NS; NODATA otherwise
 *   dns-version.<zone>                      TXT "1.1.0"                          (spec 2.2)
 *   ns.dns.<zone>                           A/AAAA of the cluster DNS service    (CoreDNS ns.go)
 *   svc.<zone>, pod.<zone>, dns.<zone>      exist, empty: NODATA
 *   <ns>.svc.<zone>, <ns>.pod.<zone>        NODATA if the namespace exists, else NXDOMAIN
 *   <svc>.<ns>.svc.<zone>                   ClusterIP: A/AAAA of clusterIPs      (spec 2.3.1)
 *                                           headless: A/AAAA of ready endpoints  (spec 2.4.1)
 *                                           ExternalName: CNAME                  (spec 2.5)
 *                                           SRV: one per port                    (CoreDNS)
 *   <host>.<svc>.<ns>.svc.<zone>            A/AAAA/SRV of the endpoints called <host>  (spec 2.4.1)
 *   _<port>._<proto>.<svc>.<ns>.svc.<zone>  SRV per named port (x ready endpoint)      (spec 2.3.2, 2.4.2)
 *   _<proto>.<svc>.<ns>.svc.<zone>          empty non-terminal when such a port exists: NODATA
 *   <a-b-c-d>.<ns>.pod.<zone>               A (or AAAA from the dashed IPv6 form), CoreDNS `pods insecure`
 *   anything else under <zone>              NXDOMAIN
 *   <reversed ip>.in-addr.arpa / ip6.arpa   PTR                                  (spec 2.3.3, 2.4.3)
 *
 * A name that exists answers NODATA (NOERROR, no records, SOA) for the other
 * types, and only a name that does not exist gets NXDOMAIN (RFC 8020: an
 * NXDOMAIN denies every name below it too, so existing parents must never
 * get one). Negative answers carry the zone's SOA with CoreDNS's fields.
 *
 * This file is the lookup and the answers built for each kind of name; what
 * a name is (labels, classification, endpoints) is record-names.ts, and the
 * option, record and answer types are record-types.ts.
 */
import { MAX_MESSAGE, QType, Rcode } from '../dns/constants.js';
import { dashedName, inAddrKey, ip6ArpaKey, ipKey, isV4 } from './ip.js';
import { IN_ADDR, IP6_ARPA, backends, classify, endsWith, srvTargets, trimDot, wireLabels, type SrvTarget } from './record-names.js';
import {
  DNS_SCHEMA_VERSION,
  RECORD_DEFAULTS,
  type ClusterAnswer,
  type ClusterResult,
  type ClusterRR,
  type NameRR,
  type RecordOptions,
  type SoaRR,
} from './record-types.js';
import type { SlimService } from './types.js';
import type { ClusterViewReader } from './view.js';

export { wireLabels } from './record-names.js';
export * from './record-types.js';

const UNKNOWN: ClusterResult = { kind: 'unknown' };
const NOT_OURS: ClusterResult = { kind: 'notOurs' };

/**
 * Answers `qname` (uncompressed wire format, as in the question; case does
 * not matter) for `qtype` from the view.
 */
export function answerCluster(view: ClusterViewReader, qname: Uint8Array, qtype: number, opts: RecordOptions): ClusterResult {
  const labels = wireLabels(qname);
  if (labels === undefined) return NOT_OURS;
  const zone = opts.zone.split('.');
  let ans: Answer | undefined;
  if (endsWith(labels, zone)) {
    ans = forward(view, labels, zone.length, qtype, opts, []);
  } else {
    const v4 = endsWith(labels, IN_ADDR);
    if (!v4 && !endsWith(labels, IP6_ARPA)) return NOT_OURS;
    const rel = labels.slice(0, -2);
    const key = v4 ? inAddrKey(rel) : ip6ArpaKey(rel);
    // A partial or malformed reverse name is no address of ours: forward it.
    if (key === '') return NOT_OURS;
    ans = reverse(view, key, labels.join('.'), v4 ? 'in-addr.arpa' : 'ip6.arpa', qtype, opts);
    // An address the view does not hold: not ours once synced, unknown before.
    if (ans === undefined) return opts.negativesAllowed ? NOT_OURS : UNKNOWN;
  }
  // Only negative answers carry authority records. While the view may not deny, NODATA for a name it holds
  // stays (the other address family of a served name: musl fails the whole lookup on a SERVFAIL for either),
  // once every kind has been listed whole: before that a dual-stack service's second slice may not be in yet.
  if (ans.authority.length > 0 && !opts.negativesAllowed && !(ans.rcode === Rcode.NOERROR && view.synced && holdsName(view, labels, zone))) {
    return UNKNOWN;
  }
  return ans;
}

/** True when the name under the zone is one the view has records for (not missing, not an empty non-terminal). */
function holdsName(view: ClusterViewReader, labels: readonly string[], zone: readonly string[]): boolean {
  if (!endsWith(labels, zone)) return false;
  const t = classify(view, labels.slice(0, labels.length - zone.length)).t;
  return t !== 'nx' && t !== 'empty';
}

/**
 * True when the view would answer NXDOMAIN for `qname` with certainty:
 * negatives are allowed and the name, under the cluster zone, cannot exist
 * (unknown namespace or service, a name outside svc/pod, ...). What
 * `--local-negative` asks before answering search-path junk itself.
 */
export function isCertainNxdomain(view: ClusterViewReader, qname: Uint8Array, opts: RecordOptions): boolean {
  if (!opts.negativesAllowed) return false;
  const labels = wireLabels(qname);
  if (labels === undefined) return false;
  const zone = opts.zone.split('.');
  if (!endsWith(labels, zone)) return false;
  return classify(view, labels.slice(0, labels.length - zone.length)).t === 'nx';
}

// ---------------------------------------------------------------------------
// Answers

interface Answer extends ClusterAnswer {
  readonly answer: ClusterRR[];
  readonly additional: ClusterRR[];
}

function positive(answer: ClusterRR[], additional: ClusterRR[] = [], chase = ''): Answer {
  return { kind: 'answer', rcode: Rcode.NOERROR, answer, authority: [], additional, chase };
}

function negative(view: ClusterViewReader, rcode: ClusterAnswer['rcode'], zone: string, opts: RecordOptions): Answer {
  return { kind: 'answer', rcode, answer: [], authority: [soa(view, zone, opts)], additional: [], chase: '' };
}

/**
 * CoreDNS's SOA (plugin/backend_lookup.go SOA): ns.dns.<zone>,
 * hostmaster.<zone>, serial = time of the last change (seconds), refresh
 * 7200, retry 1800, expire 86400, minimum = the record TTL, own TTL at most
 * 300.
 */
function soa(view: ClusterViewReader, zone: string, opts: RecordOptions): SoaRR {
  return {
    name: zone,
    type: 'SOA',
    ttl: Math.min(opts.ttl, 300),
    data: {
      mname: `ns.dns.${zone}`,
      rname: `hostmaster.${zone}`,
      serial: Math.floor(view.modifiedMs / 1000) >>> 0,
      refresh: 7200,
      retry: 1800,
      expire: 86400,
      minimum: opts.ttl,
    },
  };
}

function addr(name: string, ip: string, ttl: number): NameRR {
  return { name, type: isV4(ip) ? 'A' : 'AAAA', ttl, data: ip };
}

/**
 * A headless service's addresses in an order of this node's own. The view builds
 * them in the slices' order, which is the same on every node; kube-dns (CoreDNS's
 * loadbalance) shuffles each answer, so each node caches its own order and clients
 * that take the first address spread over the pods. During an outage the view must
 * not send every node's clients to the same pod.
 */
function shuffle(recs: ClusterRR[]): void {
  for (let i = recs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    const r = recs[i]!;
    recs[i] = recs[j]!;
    recs[j] = r;
  }
}

/** A or AAAA records at `name` for the addresses of the asked family, each address once. */
function addresses(name: string, ips: Iterable<string>, qtype: number, ttl: number): ClusterRR[] {
  const want = qtype === QType.A;
  const seen = new Set<string>();
  const out: ClusterRR[] = [];
  for (const ip of ips) {
    if (isV4(ip) !== want || seen.has(ip)) continue;
    seen.add(ip);
    out.push({ name, type: want ? 'A' : 'AAAA', ttl, data: ip });
  }
  return out;
}

function forward(
  view: ClusterViewReader, labels: readonly string[], zoneLen: number, qtype: number, opts: RecordOptions, chain: readonly string[],
): Answer {
  const zone = opts.zone;
  const name = labels.join('.');
  const node = classify(view, labels.slice(0, labels.length - zoneLen));
  const ttl = opts.ttl;
  const isAddr = qtype === QType.A || qtype === QType.AAAA;
  let recs: ClusterRR[] = [];
  let extra: ClusterRR[] = [];

  switch (node.t) {
    case 'nx':
      return negative(view, Rcode.NXDOMAIN, zone, opts);
    case 'empty':
      break;
    case 'apex':
      if (qtype === QType.SOA) recs = [soa(view, zone, opts)];
      else if (qtype === QType.NS) [recs, extra] = nameservers(view, zone, opts);
      break;
    case 'version':
      if (qtype === QType.TXT) recs = [{ name, type: 'TXT', ttl: RECORD_DEFAULTS.dnsVersionTtl, data: DNS_SCHEMA_VERSION }];
      break;
    case 'nsHost':
      if (isAddr) recs = addresses(name, dnsServiceIPs(view, opts), qtype, ttl);
      break;
    case 'pod':
      if (isAddr) recs = addresses(name, [node.ip], qtype, ttl);
      break;
    case 'service': {
      const svc = node.svc;
      if (svc.kind === 'ExternalName') return externalName(view, svc, name, qtype, opts, chain);
      if (isAddr) {
        recs = addresses(name, svc.kind === 'ClusterIP' ? svc.clusterIPs : backends(view, svc, '').map((b) => b.addr), qtype, ttl);
        if (svc.kind === 'Headless') shuffle(recs);
      } else if (qtype === QType.SRV) {
        [recs, extra] = srvRecords(name, srvTargets(view, svc, '', ''), svc, opts);
      }
      break;
    }
    case 'endpoint':
      if (isAddr) recs = addresses(name, node.backends.map((b) => b.addr), qtype, ttl);
      else if (qtype === QType.SRV) [recs, extra] = srvRecords(name, srvTargets(view, node.svc, '', '', node.backends), node.svc, opts);
      break;
    case 'srv':
      if (qtype === QType.SRV) [recs, extra] = srvRecords(name, node.targets, node.svc, opts);
      break;
  }
  return recs.length > 0 ? positive(recs, extra) : negative(view, Rcode.NOERROR, zone, opts);
}

/**
 * Spec 2.5: CNAME to the external name, for every type (RFC 1034 3.6.2: a
 * CNAME owner has no other data; CoreDNS answers only A/AAAA/TXT this way
 * and NODATA otherwise). A target inside the zone is chased here, at most
 * maxCnameChain links and never through the same name twice; a target
 * outside is left to the caller (`chase`). An IP literal as external name
 * makes no record at all (record-names.ts classifies the name NX), as CoreDNS.
 */
function externalName(
  view: ClusterViewReader, svc: SlimService, name: string, qtype: number, opts: RecordOptions, chain: readonly string[],
): Answer {
  const target = trimDot(svc.externalName.toLowerCase());
  const cname: NameRR = { name, type: 'CNAME', ttl: opts.ttl, data: target };
  if (qtype === QType.CNAME) return positive([cname]);
  const zone = opts.zone.split('.');
  const tl = target.split('.');
  if (!endsWith(tl, zone)) return positive([cname], [], target);
  const next = [...chain, name];
  // A loop or an over-long chain: stop with what we have; the client's resolver reports the loop.
  if (next.includes(target) || next.length > RECORD_DEFAULTS.maxCnameChain) return positive([cname]);
  const rest = forward(view, tl, zone.length, qtype, opts, next);
  return { ...rest, answer: [cname, ...rest.answer] };
}

/**
 * SRV records named `name` and their targets' addresses. Priority 0 and
 * weights that share 100 between the records, as CoreDNS (plugin.SRV)
 * weighs them (it counts one per address; we count one per record, so
 * dual-stack services are not halved). Each (target, port) once.
 */
/** An SRV record's bytes besides its two names (uncompressed): two name ends, type, class, TTL, length, priority, weight, port. */
const SRV_RR_FIXED = 2 + 2 + 10 + 6;

function srvRecords(name: string, targets: readonly SrvTarget[], svc: SlimService, opts: RecordOptions): [ClusterRR[], ClusterRR[]] {
  const base = `${svc.name}.${svc.namespace}.svc.${opts.zone}`;
  const seen = new Set<string>();
  const picked: { target: string; port: number }[] = [];
  const extra: ClusterRR[] = [];
  // Once the SRV records alone pass one message, encode.ts drops every additional and keeps a prefix of these:
  // building the rest (a headless service with thousands of endpoints and ports) would only make garbage.
  let bytes = 0;
  for (const t of targets) {
    if (bytes > MAX_MESSAGE) break;
    const target = t.target === '' ? base : `${t.target}.${base}`;
    const k = `${target}|${t.port}`;
    if (!seen.has(k)) {
      seen.add(k);
      picked.push({ target, port: t.port });
      bytes += name.length + target.length + SRV_RR_FIXED;
    }
    const a = `${target}|${t.addr}`;
    if (!seen.has(a)) {
      seen.add(a);
      extra.push(addr(target, t.addr, opts.ttl));
    }
  }
  const weight = Math.max(1, Math.floor(100 / picked.length));
  const recs: ClusterRR[] = picked.map((p) => ({ name, type: 'SRV', ttl: opts.ttl, data: { priority: 0, weight, port: p.port, target: p.target } }));
  return [recs, extra];
}

/**
 * The cluster DNS service: kube-system/kube-dns (or the one named in the
 * options), else the Service whose cluster IP is the address the agent
 * forwards cluster names to. The name first: the shipped DaemonSet forwards
 * to kube-dns-upstream, a second Service in front of the same pods, and
 * kube-dns is the one pods know.
 */
function dnsService(view: ClusterViewReader, opts: RecordOptions): SlimService | undefined {
  const named = view.service(opts.dnsService.namespace, opts.dnsService.name);
  if (named !== undefined && named.kind === 'ClusterIP' && named.clusterIPs.length > 0) return named;
  if (opts.dnsServiceIP === '') return undefined;
  return view.servicesByIP(ipKey(opts.dnsServiceIP)).find((s) => s.kind === 'ClusterIP');
}

function dnsServiceIPs(view: ClusterViewReader, opts: RecordOptions): readonly string[] {
  return dnsService(view, opts)?.clusterIPs ?? [];
}

/**
 * NS at the apex, CoreDNS style (ns.go): the cluster DNS service's name with
 * its cluster IPs as glue when the view has it, else ns.dns.<zone>.
 */
function nameservers(view: ClusterViewReader, zone: string, opts: RecordOptions): [ClusterRR[], ClusterRR[]] {
  const svc = dnsService(view, opts);
  if (svc === undefined || svc.clusterIPs.length === 0) return [[{ name: zone, type: 'NS', ttl: opts.ttl, data: `ns.dns.${zone}` }], []];
  const host = `${svc.name}.${svc.namespace}.svc.${zone}`;
  return [[{ name: zone, type: 'NS', ttl: opts.ttl, data: host }], svc.clusterIPs.map((ip) => addr(host, ip, opts.ttl))];
}

/**
 * PTR for an address (spec 2.3.3, 2.4.3; CoreDNS reverse.go): a service's
 * cluster IP names the service (the first service found, as CoreDNS);
 * otherwise every serving endpoint with that address names
 * <hostname>.<svc>.<ns>.svc.<zone>, where an endpoint without a hostname
 * gets CoreDNS's dashed-address name, so every endpoint IP has a PTR that
 * resolves back. Unlike CoreDNS, only while the slice's Service exists: the
 * slices of a deleted Service linger until garbage-collected, and a PTR to a
 * name that answers NXDOMAIN is worse than none.
 */
function reverse(
  view: ClusterViewReader, key: string, name: string, zone: string, qtype: number, opts: RecordOptions,
): Answer | undefined {
  const targets = ptrTargets(view, key, opts.zone);
  if (targets.length === 0) return undefined;
  if (qtype !== QType.PTR) return negative(view, Rcode.NOERROR, zone, opts);
  return positive(targets.map((t) => ({ name, type: 'PTR', ttl: opts.ttl, data: t })));
}

function ptrTargets(view: ClusterViewReader, key: string, zone: string): string[] {
  const svc = view.servicesByIP(key)[0];
  if (svc !== undefined) return [`${svc.name}.${svc.namespace}.svc.${zone}`];
  const out: string[] = [];
  for (const slice of view.slicesByIP(key)) {
    // Without its Service the name would not resolve back (a slice outlives its deleted Service until garbage-collected).
    const svc = view.service(slice.namespace, slice.serviceName);
    if (svc === undefined) continue;
    const all = svc.publishNotReadyAddresses;
    for (const ep of slice.endpoints) {
      if (!ep.ready && !all) continue;
      for (const a of ep.addresses) {
        if (ipKey(a) !== key) continue;
        const host = ep.hostname !== '' ? ep.hostname.toLowerCase() : dashedName(a);
        const t = `${host}.${slice.serviceName}.${slice.namespace}.svc.${zone}`;
        if (!out.includes(t)) out.push(t);
      }
    }
  }
  return out;
}
