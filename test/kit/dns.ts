/**
 * DNS messages for tests, built with dns-packet (never on the agent's hot
 * path): queries as clients send them, answers as upstreams send them.
 */
import * as dnsPacket from 'dns-packet';
import { nameToWire } from '../../src/dns/name.js';

export type QueryOpts = { name: string; type?: string; id?: number; flags?: number; edns?: boolean; udpSize?: number; do?: boolean };

export function query(o: QueryOpts): Buffer {
  const p: dnsPacket.Packet = {
    type: 'query',
    id: o.id ?? 4242,
    flags: o.flags ?? dnsPacket.RECURSION_DESIRED,
    questions: [{ name: o.name, type: (o.type ?? 'A') as 'A', class: 'IN' }],
  };
  if (o.edns) {
    p.additionals = [{ type: 'OPT', name: '.', udpPayloadSize: o.udpSize ?? 1232, flags: o.do ? dnsPacket.DNSSEC_OK : 0, options: [] } as unknown as dnsPacket.Answer];
  }
  return dnsPacket.encode(p);
}

export type AnswerOpts = { rcode?: string; authorities?: dnsPacket.Answer[]; additionals?: dnsPacket.Answer[]; type?: string; tc?: boolean; aa?: boolean; id?: number };

export function answer(name: string, answers: dnsPacket.Answer[], opts: AnswerOpts = {}): Buffer {
  // dns-packet encodes the rcode only from the low bits of `flags`.
  const rcode = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'].indexOf(opts.rcode ?? 'NOERROR');
  return dnsPacket.encode({
    type: 'response',
    id: opts.id ?? 0,
    flags:
      (opts.tc ? dnsPacket.TRUNCATED_RESPONSE : 0) | (opts.aa ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
      dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: [{ name, type: (opts.type ?? 'A') as 'A', class: 'IN' }],
    answers,
    authorities: opts.authorities ?? [],
    additionals: opts.additionals ?? [],
  } as dnsPacket.Packet);
}

export const ttlOf = (a: dnsPacket.Answer): number | undefined => (a as { ttl?: number }).ttl;

export const soa = (zone: string, ttl: number, minimum: number): dnsPacket.Answer => ({
  type: 'SOA', name: zone, ttl,
  data: { mname: 'ns.dns.' + zone, rname: 'hostmaster.' + zone, serial: 1, refresh: 7200, retry: 1800, expire: 86400, minimum },
} as dnsPacket.Answer);

export const rcodeOf = (msg: Buffer): number => msg[3]! & 0x0f;

export function a(name: string, data: string, ttl = 30): dnsPacket.Answer {
  return { type: 'A', name, ttl, data };
}

/** A query with extra raw additional records appended (ARCOUNT bumped). */
export function withAdditional(msg: Buffer, ...records: Buffer[]): Buffer {
  const out = Buffer.concat([msg, ...records]);
  out.writeUInt16BE(msg.readUInt16BE(10) + records.length, 10);
  return out;
}

export function tsigRr(opts: { key?: string; cls?: number; macLen?: number; origId?: number; fudge?: number } = {}): Buffer {
  const alg = nameToWire('hmac-sha256');
  const macLen = opts.macLen ?? 32;
  const rd = Buffer.alloc(alg.length + 10 + macLen + 6);
  alg.copy(rd, 0);
  let o = alg.length;
  rd.writeUInt16BE(0, o); rd.writeUInt32BE(1_700_000_000, o + 2); // time signed
  rd.writeUInt16BE(opts.fudge ?? 300, o + 6);
  rd.writeUInt16BE(macLen, o + 8);
  rd.fill(0xab, o + 10, o + 10 + macLen);
  o += 10 + macLen;
  rd.writeUInt16BE(opts.origId ?? 4242, o);
  rd.writeUInt16BE(0, o + 2); // error
  rd.writeUInt16BE(0, o + 4); // other len
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(250, 0);
  fixed.writeUInt16BE(opts.cls ?? 255, 2);
  fixed.writeUInt32BE(0, 4);
  fixed.writeUInt16BE(rd.length, 8);
  return Buffer.concat([nameToWire(opts.key ?? 'transfer-key'), fixed, rd]);
}

