/**
 * The bench's upstream zones, and the single source of truth for what every
 * name must resolve to. The simulator answers from these rules, and the load
 * generator's checker (bench/check.ts) and the tests compute the expected
 * answer from the same functions, so "wrong answer" means the target returned
 * something the upstream never served.
 *
 * Cluster zone (the fake kube-dns), under `clusterDomain`:
 *   <svc>.<ns>.svc.<domain>   exists when <ns> is ns-0..ns-(N-1) and <svc> is
 *                             svc-0..svc-(M-1), fb-0..fb-(F-1) (the never-asked
 *                             names of the fallback workload) or any label
 *                             starting `u-` (the unique names of the miss
 *                             workload); one A (10.96.0.0/12) and one AAAA
 *                             (fd00:10:96::/96).
 *   anything else in the domain, and in-addr.arpa / ip6.arpa: NXDOMAIN + SOA.
 * External zone (the fake host resolver): every other name exists unless one
 *   of its labels starts with `nx-`; 1 to 3 A (198.18.0.0/15, the benchmarking
 *   range of RFC 2544) and as many AAAA (2001:db8::/32, documentation).
 * Existing names asked about other types get NODATA (NOERROR + SOA).
 *
 * Addresses are derived from a 32-bit FNV-1a hash of the lower-cased wire
 * name, so they are deterministic and can be recomputed from a response's
 * question section without keeping per-name state.
 */
import type { Answer, Packet, SoaAnswer } from 'dns-packet';
import type { SimHandler } from '../../testkit/sim-types.js';

export interface ZoneConfig {
  /** Cluster domain, without trailing dot (default cluster.local). */
  readonly clusterDomain: string;
  /** Namespaces ns-0..ns-(namespaces-1). */
  readonly namespaces: number;
  /** Services svc-0..svc-(servicesPerNamespace-1) in every namespace. */
  readonly servicesPerNamespace: number;
  /** Services fb-0..fb-(fallbackServices-1) in every namespace: asked by the fallback workload only, each once. */
  readonly fallbackServices: number;
  /** TTL of cluster answers (node-local-dns caps cluster.local success at 30 s). */
  readonly clusterTtl: number;
  /** TTL of external answers. */
  readonly externalTtl: number;
  /** SOA TTL and MINIMUM of negative answers, i.e. the negative-caching TTL (RFC 2308). */
  readonly negativeTtl: number;
}

export const DEFAULT_ZONES: ZoneConfig = {
  clusterDomain: 'cluster.local',
  namespaces: 20,
  servicesPerNamespace: 50,
  fallbackServices: 50,
  clusterTtl: 30,
  externalTtl: 300,
  negativeTtl: 30,
};

/** Which upstream a name belongs to: the agent sends cluster names to kube-dns and the rest to the host resolvers. */
export const Zone = { CLUSTER: 0, EXTERNAL: 1 } as const;
export type Zone = (typeof Zone)[keyof typeof Zone];

export const QTYPE_A = 1;
export const QTYPE_AAAA = 28;
export const RCODE_NOERROR = 0;
export const RCODE_NXDOMAIN = 3;
export const RCODE_REFUSED = 5;

const REVERSE_ZONES = ['in-addr.arpa', 'ip6.arpa'];
/** Label prefix that makes an external name (or a cluster service) not exist. */
export const NX_PREFIX = 'nx-';
/** Label prefix of cluster services that exist without being listed (unique miss names). */
export const UNIQUE_SERVICE_PREFIX = 'u-';
/** Label prefix of the fallback workload's own services (never asked by another workload). */
export const FALLBACK_SERVICE_PREFIX = 'fb-';

export function namespaceName(i: number): string {
  return `ns-${i}`;
}
export function serviceName(i: number): string {
  return `svc-${i}`;
}
export function serviceFqdn(svc: number, ns: number, cfg: ZoneConfig): string {
  return `${serviceName(svc)}.${namespaceName(ns)}.svc.${cfg.clusterDomain}`;
}
export function fallbackServiceName(i: number): string {
  return `${FALLBACK_SERVICE_PREFIX}${i}`;
}
export function fallbackServiceFqdn(svc: number, ns: number, cfg: ZoneConfig): string {
  return `${fallbackServiceName(svc)}.${namespaceName(ns)}.svc.${cfg.clusterDomain}`;
}

/**
 * Every listed cluster service (namespace, service name), in a fixed order:
 * what a Kubernetes API for this zone holds (bench/sim/api.ts). The unique
 * `u-` names are not listed: they exist in the DNS only, like custom records.
 */
export function listedServices(cfg: ZoneConfig): Array<{ readonly namespace: string; readonly name: string }> {
  const out: Array<{ namespace: string; name: string }> = [];
  for (let ns = 0; ns < cfg.namespaces; ns++) {
    const namespace = namespaceName(ns);
    for (let s = 0; s < cfg.servicesPerNamespace; s++) out.push({ namespace, name: serviceName(s) });
    for (let s = 0; s < cfg.fallbackServices; s++) out.push({ namespace, name: fallbackServiceName(s) });
  }
  return out;
}

export function canonicalName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

function isUnder(name: string, zone: string): boolean {
  return name === zone || name.endsWith('.' + zone);
}

export function zoneOf(name: string, cfg: ZoneConfig): Zone {
  const n = canonicalName(name);
  if (isUnder(n, cfg.clusterDomain)) return Zone.CLUSTER;
  for (const z of REVERSE_ZONES) if (isUnder(n, z)) return Zone.CLUSTER;
  return Zone.EXTERNAL;
}

/** `prefix` followed by a decimal index below `limit`, written without leading zeros. */
function indexedLabel(label: string, prefix: string, limit: number): boolean {
  if (!label.startsWith(prefix)) return false;
  const digits = label.slice(prefix.length);
  if (!/^(0|[1-9][0-9]*)$/.test(digits)) return false;
  return Number(digits) < limit;
}

/** Whether the name exists (has A and AAAA data). Names of the other zone never exist here. */
export function nameExists(name: string, cfg: ZoneConfig): boolean {
  const n = canonicalName(name);
  if (zoneOf(n, cfg) === Zone.CLUSTER) {
    if (!isUnder(n, cfg.clusterDomain) || n === cfg.clusterDomain) return false;
    const labels = n.slice(0, n.length - cfg.clusterDomain.length - 1).split('.');
    if (labels.length !== 3 || labels[2] !== 'svc') return false;
    const [svc = '', ns = ''] = labels;
    if (!indexedLabel(ns, 'ns-', cfg.namespaces)) return false;
    return indexedLabel(svc, 'svc-', cfg.servicesPerNamespace)
      || indexedLabel(svc, FALLBACK_SERVICE_PREFIX, cfg.fallbackServices)
      || (svc.startsWith(UNIQUE_SERVICE_PREFIX) && svc.length > UNIQUE_SERVICE_PREFIX.length);
  }
  if (n === '') return false;
  return !n.split('.').some((l) => l.startsWith(NX_PREFIX));
}

// ---- hashing and address derivation -------------------------------------------------------

/** Lower-cased wire-format name (labels + terminating zero). Throws on a name that cannot be encoded. */
export function encodeName(name: string): Buffer {
  const n = canonicalName(name);
  const labels = n === '' ? [] : n.split('.');
  const parts: Buffer[] = [];
  for (const l of labels) {
    const b = Buffer.from(l, 'ascii');
    if (b.length === 0 || b.length > 63) throw new Error(`bad label in ${JSON.stringify(name)}`);
    parts.push(Buffer.from([b.length]), b);
  }
  parts.push(Buffer.from([0]));
  const out = Buffer.concat(parts);
  if (out.length > 255) throw new Error(`name too long: ${name}`);
  return out;
}

/**
 * FNV-1a over an uncompressed wire name starting at `off`, ASCII-lower-cased
 * (so the answer's question, whatever its case, hashes like the query).
 * Returns -1 if the name is malformed or compressed.
 */
export function hashWireName(buf: Uint8Array, off: number): number {
  let h = 0x811c9dc5;
  let i = off;
  for (let guard = 0; guard < 128; guard++) {
    if (i >= buf.length) return -1;
    const len = buf[i] ?? 0;
    if (len > 63) return -1;
    h = Math.imul(h ^ len, 0x01000193);
    i++;
    if (len === 0) return h >>> 0;
    const end = i + len;
    if (end > buf.length) return -1;
    for (; i < end; i++) {
      let c = buf[i] ?? 0;
      if (c >= 0x41 && c <= 0x5a) c |= 0x20;
      h = Math.imul(h ^ c, 0x01000193);
    }
  }
  return -1;
}

export function hashName(name: string): number {
  return hashWireName(encodeName(name), 0);
}

/** How many A (and as many AAAA) records an existing name has. */
export function addressCount(zone: Zone, hash: number): number {
  return zone === Zone.CLUSTER ? 1 : 1 + ((hash >>> 29) % 3);
}

/** Writes the rdata of address `index` (0-based) into `out` at `off`; returns its length (4 or 16). */
export function writeAddress(zone: Zone, qtype: number, hash: number, index: number, out: Uint8Array, off: number): number {
  if (qtype === QTYPE_A) {
    if (zone === Zone.CLUSTER) {
      out[off] = 10;
      out[off + 1] = 96 + ((hash >>> 16) & 15);
      out[off + 2] = (hash >>> 8) & 255;
      out[off + 3] = hash & 255;
    } else {
      out[off] = 198;
      out[off + 1] = 18 + ((hash >>> 24) & 1);
      out[off + 2] = (hash >>> 16) & 255;
      out[off + 3] = ((hash >>> 8) & 0xfc) | index;
    }
    return 4;
  }
  out.fill(0, off, off + 16);
  if (zone === Zone.CLUSTER) {
    out[off] = 0xfd;
    out[off + 3] = 0x10;
    out[off + 5] = 0x96;
  } else {
    out[off] = 0x20;
    out[off + 1] = 0x01;
    out[off + 2] = 0x0d;
    out[off + 3] = 0xb8;
    out[off + 15] = index + 1;
  }
  const h = zone === Zone.CLUSTER ? 12 : 4;
  out[off + h] = hash >>> 24;
  out[off + h + 1] = (hash >>> 16) & 255;
  out[off + h + 2] = (hash >>> 8) & 255;
  out[off + h + 3] = hash & 255;
  return 16;
}

function formatAddress(bytes: Uint8Array, len: number): string {
  if (len === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  // Full form (no :: compression) is valid input for dns-packet and unambiguous for tests.
  return groups.join(':');
}

export interface ExpectedAnswer {
  readonly rcode: number;
  /** Addresses in presentation form, in the order the simulator serves them. Empty for NODATA/NXDOMAIN. */
  readonly addresses: readonly string[];
  readonly ttl: number;
}

/** What the upstream serves for (name, qtype): the truth the checker and the tests compare against. */
export function expectedAnswer(name: string, qtype: number, cfg: ZoneConfig): ExpectedAnswer {
  const zone = zoneOf(name, cfg);
  if (!nameExists(name, cfg)) return { rcode: RCODE_NXDOMAIN, addresses: [], ttl: cfg.negativeTtl };
  const ttl = zone === Zone.CLUSTER ? cfg.clusterTtl : cfg.externalTtl;
  if (qtype !== QTYPE_A && qtype !== QTYPE_AAAA) return { rcode: RCODE_NOERROR, addresses: [], ttl: cfg.negativeTtl };
  const hash = hashName(name);
  const scratch = new Uint8Array(16);
  const addresses: string[] = [];
  for (let i = 0; i < addressCount(zone, hash); i++) addresses.push(formatAddress(scratch, writeAddress(zone, qtype, hash, i, scratch, 0)));
  return { rcode: RCODE_NOERROR, addresses, ttl };
}

// ---- simulator handlers --------------------------------------------------------------------

const FLAG_AA = 0x0400;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;

function soaFor(zone: Zone, name: string, cfg: ZoneConfig): SoaAnswer {
  const n = canonicalName(name);
  const apex = zone === Zone.CLUSTER ? (REVERSE_ZONES.find((z) => isUnder(n, z)) ?? cfg.clusterDomain) : (n.split('.').pop() ?? '');
  return {
    type: 'SOA',
    name: apex === '' ? '.' : apex,
    ttl: cfg.negativeTtl,
    class: 'IN',
    data: {
      mname: zone === Zone.CLUSTER ? `ns.dns.${cfg.clusterDomain}` : 'ns.sim.invalid',
      rname: zone === Zone.CLUSTER ? `hostmaster.${cfg.clusterDomain}` : 'hostmaster.sim.invalid',
      serial: 1,
      refresh: 7200,
      retry: 1800,
      expire: 86400,
      minimum: cfg.negativeTtl,
    },
  };
}

/** The packet the simulator serves for one question. Exported for tests. */
export function answerPacket(query: Packet, cfg: ZoneConfig, serves: ReadonlySet<Zone>): Packet {
  const flags = ((query.flags ?? 0) & FLAG_RD) | FLAG_RA;
  const q = query.questions?.[0];
  if (q === undefined) return { flags: flags | 1 };
  const zone = zoneOf(q.name, cfg);
  // A name of the other zone reaching this server is a routing bug in the target: refuse it so it counts as wrong.
  if (!serves.has(zone)) return { flags: flags | RCODE_REFUSED };
  const qtype = q.type === 'A' ? QTYPE_A : q.type === 'AAAA' ? QTYPE_AAAA : 0;
  const exp = expectedAnswer(q.name, qtype, cfg);
  if (exp.rcode !== RCODE_NOERROR) return { flags: flags | FLAG_AA | exp.rcode, authorities: [soaFor(zone, q.name, cfg)] };
  if (exp.addresses.length === 0) return { flags: flags | FLAG_AA, authorities: [soaFor(zone, q.name, cfg)] };
  const type = qtype === QTYPE_A ? 'A' : 'AAAA';
  const answers: Answer[] = exp.addresses.map((data) => ({ type, name: q.name, ttl: exp.ttl, class: 'IN', data }));
  return { flags: flags | FLAG_AA, answers };
}

function handlerFor(cfg: ZoneConfig, zones: readonly Zone[]): SimHandler {
  const serves = new Set(zones);
  return (query) => answerPacket(query, cfg, serves);
}

/** The fake kube-dns: cluster domain and reverse zones; REFUSED for everything else. */
export function clusterZoneHandler(cfg: ZoneConfig): SimHandler {
  return handlerFor(cfg, [Zone.CLUSTER]);
}

/** The fake host resolver: every name outside the cluster domain; REFUSED for cluster names. */
export function externalZoneHandler(cfg: ZoneConfig): SimHandler {
  return handlerFor(cfg, [Zone.EXTERNAL]);
}

/** Both zones on one server: for tests and peers that take a single upstream. */
export function combinedZoneHandler(cfg: ZoneConfig): SimHandler {
  return handlerFor(cfg, [Zone.CLUSTER, Zone.EXTERNAL]);
}
