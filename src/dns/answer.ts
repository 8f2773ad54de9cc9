/**
 * Scanning an upstream answer once, at insert time: validate its structure and
 * record everything a cache hit will need (where the TTLs are, the smallest
 * TTL, the RFC 2308 negative TTL, where the OPT record sits) so a hit never
 * walks the packet again.
 */
import {
  FLAG_TC, HEADER_LEN, MAX_MESSAGE, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT, QType, RCODE_MASK,
} from './constants.js';
import { skipExpandableName } from './name.js';

export interface AnswerScan {
  readonly rcode: number;
  readonly truncated: boolean;
  readonly ancount: number;
  /** Offset past the question. */
  readonly questionEnd: number;
  /** Offset past the last record: bytes beyond it (padding, junk) are not kept. */
  readonly end: number;
  /** Offsets of the 32-bit TTL of every record except OPT. */
  readonly ttlOffsets: Uint16Array;
  /** Smallest TTL over those records; -1 when there are none. */
  readonly minTtl: number;
  /** min(SOA TTL, SOA MINIMUM) of an SOA in the authority section (RFC 2308 5); -1 when there is none. */
  readonly negativeTtl: number;
  /** The OPT record's bytes [optStart, optEnd); -1 when absent. */
  readonly optStart: number;
  readonly optEnd: number;
}

/** Returns undefined when the message is malformed anywhere. Never throws. */
export function scanAnswer(msg: Buffer): AnswerScan | undefined {
  if (msg.length < HEADER_LEN) return undefined;
  const flags = msg.readUInt16BE(OFF_FLAGS);
  // Past the largest DNS message no transport carries it, and the TTL offsets (u16) could not address it.
  if (msg.length > MAX_MESSAGE) return undefined;
  const qdcount = msg.readUInt16BE(OFF_QDCOUNT);
  const ancount = msg.readUInt16BE(OFF_ANCOUNT);
  const nscount = msg.readUInt16BE(OFF_NSCOUNT);
  const arcount = msg.readUInt16BE(OFF_ARCOUNT);
  if (qdcount !== 1) return undefined;
  let off = skipExpandableName(msg, HEADER_LEN);
  if (off < 0 || off + 4 > msg.length) return undefined;
  off += 4;
  const questionEnd = off;
  const total = ancount + nscount + arcount;
  // Every record takes at least 11 bytes: reject absurd counts before allocating.
  if (total * 11 > msg.length - off) return undefined;
  const ttlOffsets = new Uint16Array(total);
  let nTtl = 0;
  let minTtl = -1;
  let negativeTtl = -1;
  let optStart = -1;
  let optEnd = -1;
  for (let i = 0; i < total; i++) {
    const rrStart = off;
    off = skipExpandableName(msg, off);
    if (off < 0 || off + 10 > msg.length) return undefined;
    const type = msg.readUInt16BE(off);
    const ttl = msg.readUInt32BE(off + 4);
    const rdlen = msg.readUInt16BE(off + 8);
    const rdStart = off + 10;
    const rdEnd = rdStart + rdlen;
    if (rdEnd > msg.length) return undefined;
    if (!rdataNamesExpand(msg, type, rdStart, rdEnd)) return undefined;
    if (type === QType.OPT) {
      // One OPT, in the additional section only (RFC 6891 6.1.1). Its TTL's top byte extends the RCODE (6.1.3); the OPT
      // is stripped and ours sent, so an RCODE that needs it (BADVERS, BADCOOKIE: never owed to our version 0 query
      // without a cookie) cannot be relayed, and read by the header's bits alone it would be NOERROR or YXDOMAIN.
      if (optStart >= 0 || i < ancount + nscount || (ttl >>> 24) !== 0) return undefined;
      optStart = rrStart;
      optEnd = rdEnd;
    } else {
      // RFC 2181 8: a TTL with the top bit set is treated as zero.
      const t = ttl > 0x7fffffff ? 0 : ttl;
      ttlOffsets[nTtl++] = off + 4;
      if (minTtl < 0 || t < minTtl) minTtl = t;
      if (type === QType.SOA && i >= ancount && i < ancount + nscount) {
        const minimum = soaMinimum(msg, rdStart, rdEnd);
        if (minimum < 0) return undefined;
        const neg = Math.min(t, minimum);
        negativeTtl = negativeTtl < 0 ? neg : Math.min(negativeTtl, neg);
      }
    }
    off = rdEnd;
  }
  return {
    rcode: flags & RCODE_MASK,
    truncated: (flags & FLAG_TC) !== 0,
    ancount,
    questionEnd,
    end: off,
    ttlOffsets: nTtl === total ? ttlOffsets : ttlOffsets.slice(0, nTtl),
    minTtl,
    negativeTtl,
    optStart,
    optEnd,
  };
}

interface RdataNames {
  /** Bytes before the first name. */
  readonly skip: number;
  /** Character-strings (a length byte, then that many bytes) after those bytes, before the first name. */
  readonly strings?: number;
  /** Names one after another. */
  readonly names: number;
  /** Bytes after the last; -1: any number (the signature of an RRSIG, the type bitmap of an NSEC). */
  readonly tail: number;
}

/** Where the names sit in the RDATA of the types whose names may be compressed (RFC 3597 4), and of RRSIG, NSEC and NAPTR. */
const RDATA_NAMES = new Map<number, RdataNames>([
  [QType.NS, { skip: 0, names: 1, tail: 0 }],
  [QType.CNAME, { skip: 0, names: 1, tail: 0 }],
  [QType.SOA, { skip: 0, names: 2, tail: 20 }],
  [QType.PTR, { skip: 0, names: 1, tail: 0 }],
  [14, { skip: 0, names: 2, tail: 0 }], // MINFO
  [QType.MX, { skip: 2, names: 1, tail: 0 }],
  [17, { skip: 0, names: 2, tail: 0 }], // RP
  [18, { skip: 2, names: 1, tail: 0 }], // AFSDB
  [21, { skip: 2, names: 1, tail: 0 }], // RT
  [QType.SRV, { skip: 6, names: 1, tail: 0 }],
  [36, { skip: 2, names: 1, tail: 0 }], // KX
  [39, { skip: 0, names: 1, tail: 0 }], // DNAME
  // Never compressed (RFC 4034 3.1.7, 4.1.1; RFC 3403 4.1), but read as names by dns-packet (the scrub), which
  // follows any pointer: checked here so none of its walks is unbounded.
  [46, { skip: 18, names: 1, tail: -1 }], // RRSIG: the signer
  [47, { skip: 0, names: 1, tail: -1 }], // NSEC: the next name
  [35, { skip: 4, strings: 3, names: 1, tail: 0 }], // NAPTR (RFC 3403 4.1): the replacement, after flags, services, regexp
]);

/**
 * The names in a record's RDATA expand and fill it exactly: a client reads
 * them as names (a CNAME's target, an NS, an MX exchange), and a hit serves
 * them as stored.
 */
function rdataNamesExpand(msg: Buffer, type: number, rdStart: number, rdEnd: number): boolean {
  const layout = RDATA_NAMES.get(type);
  if (layout === undefined) return true;
  let off = rdStart + layout.skip;
  for (let n = 0; n < (layout.strings ?? 0); n++) {
    if (off >= rdEnd) return false;
    off += 1 + msg[off]!;
  }
  for (let n = 0; n < layout.names; n++) {
    off = skipExpandableName(msg, off, rdEnd);
    if (off < 0) return false;
  }
  return layout.tail < 0 || off + layout.tail === rdEnd;
}

/** The SOA MINIMUM field (last 4 bytes after MNAME, RNAME and four counters), or -1. */
function soaMinimum(msg: Buffer, rdStart: number, rdEnd: number): number {
  let off = skipExpandableName(msg, rdStart, rdEnd);
  if (off < 0) return -1;
  off = skipExpandableName(msg, off, rdEnd);
  if (off < 0 || off + 20 !== rdEnd) return -1;
  const m = msg.readUInt32BE(off + 16);
  return m > 0x7fffffff ? 0 : m;
}
