/**
 * What cluster records (records.ts) take and give: the options and their
 * CoreDNS defaults, the record shapes (dns-packet's, so the encoder hands
 * them over as they are) and the answer a lookup returns. Kept apart from
 * the lookup so the contract reads on one page; records.ts re-exports all
 * of it, so callers import from there.
 */
import type { Rcode } from '../dns/constants.js';
import { trimDot } from './record-names.js';

/** The defaults of cluster records, each where CoreDNS has it. */
export const RECORD_DEFAULTS = {
  /** CoreDNS kubernetes plugin `defaultTTL`. */
  ttl: 5,
  /** CoreDNS answers dns-version with this fixed TTL (kubernetes.go), as does the spec's example. */
  dnsVersionTtl: 28800,
  /**
   * The Service whose cluster IPs name the zone's nameserver: CoreDNS finds
   * the Service its own pods back (ns.go nsAddrs); in a standard cluster that
   * is kube-dns in kube-system. Where the view has no such Service (RKE2's is
   * rke2-coredns-rke2-coredns), the one holding `dnsServiceIP` stands in.
   */
  dnsService: { namespace: 'kube-system', name: 'kube-dns' },
  /** CoreDNS backend_lookup.go maxCnameChainLength. */
  maxCnameChain: 10,
} as const;

export const DNS_SCHEMA_VERSION = '1.1.0';

export interface RecordOptions {
  /** The cluster domain, lower-case, no trailing dot ("cluster.local"). */
  readonly zone: string;
  /** TTL of every record (and the SOA minimum), seconds. */
  readonly ttl: number;
  /**
   * False before the view has synced or once the API server has been silent
   * too long: then every answer that would be negative is 'unknown'
   * (SERVFAIL), never an invented NXDOMAIN/NODATA.
   */
  readonly negativesAllowed: boolean;
  readonly dnsService: { readonly namespace: string; readonly name: string };
  /** The cluster DNS address the agent forwards to ('' for none): its Service is the DNS service when `dnsService` is missing. */
  readonly dnsServiceIP: string;
}

export function recordOptions(o: {
  zone: string;
  negativesAllowed: boolean;
  ttl?: number;
  dnsService?: { readonly namespace: string; readonly name: string };
  dnsServiceIP?: string;
}): RecordOptions {
  return {
    zone: trimDot(o.zone.toLowerCase()),
    ttl: o.ttl ?? RECORD_DEFAULTS.ttl,
    negativesAllowed: o.negativesAllowed,
    dnsService: o.dnsService ?? RECORD_DEFAULTS.dnsService,
    dnsServiceIP: o.dnsServiceIP ?? '',
  };
}

// Records are shaped like dns-packet's answers (names without trailing
// dots), so the encoder hands them over as they are and a decoded answer
// compares field by field.
export interface NameRR {
  readonly name: string;
  readonly type: 'A' | 'AAAA' | 'CNAME' | 'PTR' | 'NS';
  readonly ttl: number;
  readonly data: string;
}
export interface SrvRR {
  readonly name: string;
  readonly type: 'SRV';
  readonly ttl: number;
  readonly data: { readonly priority: number; readonly weight: number; readonly port: number; readonly target: string };
}
export interface TxtRR {
  readonly name: string;
  readonly type: 'TXT';
  readonly ttl: number;
  readonly data: string;
}
export interface SoaRR {
  readonly name: string;
  readonly type: 'SOA';
  readonly ttl: number;
  readonly data: {
    readonly mname: string;
    readonly rname: string;
    readonly serial: number;
    readonly refresh: number;
    readonly retry: number;
    readonly expire: number;
    readonly minimum: number;
  };
}
export type ClusterRR = NameRR | SrvRR | TxtRR | SoaRR;

export interface ClusterAnswer {
  readonly kind: 'answer';
  readonly rcode: typeof Rcode.NOERROR | typeof Rcode.NXDOMAIN;
  readonly answer: readonly ClusterRR[];
  /** The zone's SOA for negative answers (NXDOMAIN and NODATA); empty otherwise. */
  readonly authority: readonly ClusterRR[];
  /** A/AAAA of SRV targets and NS hosts, as CoreDNS adds them. */
  readonly additional: readonly ClusterRR[];
  /**
   * '' unless the answer ends in a CNAME to a name outside the zone (an
   * ExternalName service): the caller resolves this name for the same qtype
   * elsewhere and appends what it gets, as CoreDNS's upstream lookup does.
   */
  readonly chase: string;
}

/**
 * 'unknown': the answer would be negative but the view may not deny it
 * (SERVFAIL). 'notOurs': outside the zone and the reverse zones, or a reverse
 * name the view holds nothing for (CoreDNS's stock Corefile falls through
 * in-addr.arpa/ip6.arpa to forward): the caller forwards.
 */
export type ClusterResult = ClusterAnswer | { readonly kind: 'unknown' } | { readonly kind: 'notOurs' };
