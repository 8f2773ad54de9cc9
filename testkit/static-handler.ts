/**
 * A canned zone for the simulator: fixed A/AAAA records, NXDOMAIN (with an
 * SOA, RFC 2308) for unknown names and NODATA for a known name asked about a
 * type it has no data for. Enough to stand in for kube-dns or a recursive
 * resolver in tests and benchmarks.
 */
import dnsPacket from 'dns-packet';
import type { Answer, Packet, SoaAnswer } from 'dns-packet';
import type { SimHandler } from './sim-types.js';

export interface StaticRecord {
  A?: string[];
  AAAA?: string[];
  ttl?: number;
}

export interface StaticHandlerOptions {
  /** Owner of the SOA put in negative answers (default '.'). */
  soaZone?: string;
  /** SOA TTL and MINIMUM, i.e. the negative-caching TTL (default 30). */
  negativeTtl?: number;
}

const RCODE_FORMERR = 1;
const RCODE_NXDOMAIN = 3;
const DEFAULT_TTL = 30;

function canonical(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Response flags a real recursive resolver would set: RD echoed, RA, the rcode. */
export function responseFlags(query: Packet, rcode: number): number {
  return ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) | dnsPacket.RECURSION_AVAILABLE | (rcode & 0xf);
}

export function staticHandler(records: Record<string, StaticRecord>, opts: StaticHandlerOptions = {}): SimHandler {
  const table = new Map<string, StaticRecord>();
  for (const [name, rec] of Object.entries(records)) table.set(canonical(name), rec);
  const negativeTtl = opts.negativeTtl ?? 30;
  const soa: SoaAnswer = {
    type: 'SOA',
    name: opts.soaZone ?? '.',
    ttl: negativeTtl,
    class: 'IN',
    data: {
      mname: 'ns.sim.invalid',
      rname: 'hostmaster.sim.invalid',
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: negativeTtl,
    },
  };

  return (query: Packet): Packet => {
    const q = query.questions?.[0];
    if (q === undefined) return { flags: responseFlags(query, RCODE_FORMERR) };
    const rec = table.get(canonical(q.name));
    if (rec === undefined) return { flags: responseFlags(query, RCODE_NXDOMAIN), authorities: [soa] };
    const ttl = rec.ttl ?? DEFAULT_TTL;
    const data = q.type === 'A' ? rec.A : q.type === 'AAAA' ? rec.AAAA : undefined;
    if (data === undefined || data.length === 0) return { flags: responseFlags(query, 0), authorities: [soa] };
    const answers: Answer[] = data.map((ip) => ({ type: q.type as 'A' | 'AAAA', name: q.name, ttl, class: 'IN', data: ip }));
    return { flags: responseFlags(query, 0), answers };
  };
}
