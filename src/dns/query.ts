/**
 * The hot-path query parser: reads only what routing and caching need
 * (header, the one question, the OPT record) and builds the cache key. It
 * never throws: a bad packet becomes a status the resolver answers or drops.
 */
import {
  EDNS_DO, FLAG_CD, FLAG_QR, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT,
  OPCODE_MASK, QClass, QType,
} from './constants.js';
import { skipName, skipUncompressedName } from './name.js';
import { tsigWellFormed } from './tsig.js';

export const QueryStatus = {
  OK: 0,
  /** Not even a header, or a response (QR=1): answering would only feed loops and reflection. */
  DROP: 1,
  FORMERR: 2,
  NOTIMP: 3,
  /** EDNS version we do not speak (RFC 6891 6.1.3). */
  BADVERS: 4,
  /**
   * Signed with TSIG (the last additional record). We hold no keys, so the
   * answer is NOTAUTH with an unsigned TSIG saying BADKEY (RFC 8945 5.2):
   * build it with tsig.ts tsigErrorResponse.
   */
  TSIG: 5,
} as const;
export type QueryStatus = (typeof QueryStatus)[keyof typeof QueryStatus];

export interface Query {
  readonly status: QueryStatus;
  /** The client's message; the question's bytes are echoed from it (0x20 case). */
  readonly msg: Buffer;
  readonly id: number;
  readonly flags: number;
  /** Offset just past the question's name; the name is msg[12, qnameEnd). 0 when unreadable. */
  readonly qnameEnd: number;
  readonly qtype: number;
  readonly qclass: number;
  readonly edns: boolean;
  /** The client's advertised UDP payload size (RFC 6891), at least 512. */
  readonly udpSize: number;
  readonly dnssecOk: boolean;
  /**
   * Cache key: lower-cased wire name + type + class + one byte of flags
   * (DO, CD), as a latin1 string. Built from bytes so names with non-ASCII
   * bytes never fold together. Empty unless status is OK.
   */
  readonly key: string;
}

/** Scratch space for building keys: a name is at most 255 bytes, plus type, class and flags. */
const keyScratch = Buffer.allocUnsafe(256 + 5);
/** Flags byte in the key. */
export const KEY_DO = 1;
export const KEY_CD = 2;

/**
 * An error status for a query with a readable header. The answer still owes
 * the client an OPT if its query had one (RFC 6891 7), so the OPT is looked
 * for here, off the OK path, however far the error was found from it.
 */
function failed(status: QueryStatus, msg: Buffer, id: number, flags: number, qnameEnd: number, qtype: number, qclass: number): Query {
  const opt = findOpt(msg);
  if (opt < 0) return result(status, msg, id, flags, qnameEnd, qtype, qclass, false, 512, false, '');
  const size = opt & 0xffff;
  return result(status, msg, id, flags, qnameEnd, qtype, qclass, true, size < 512 ? 512 : size, (opt & OPT_FOUND_DO) !== 0, '');
}

/** findOpt's packed result: the UDP size in the low 16 bits, this bit for DO. */
const OPT_FOUND_DO = 0x10000;

/**
 * Best effort, for error answers: walks every section as the header counts
 * them (questions as names plus type and class, records as names plus fixed
 * fields plus RDATA) and returns the additional section's OPT as
 * udpSize | (DO ? OPT_FOUND_DO : 0), or -1 when the walk breaks before one is
 * found or the OPT is itself invalid (a second OPT, or an owner other than the
 * root: RFC 6891 6.1.1 calls both FORMERR, and such an OPT vouches for nothing).
 * Packed into a number so the error path allocates nothing more than before.
 */
function findOpt(msg: Buffer): number {
  const qdcount = u16(msg, OFF_QDCOUNT);
  const anns = u16(msg, OFF_ANCOUNT) + u16(msg, OFF_NSCOUNT);
  const arcount = u16(msg, OFF_ARCOUNT);
  if (arcount === 0) return -1;
  let off = HEADER_LEN;
  for (let i = 0; i < qdcount; i++) {
    off = skipName(msg, off);
    if (off < 0 || off + 4 > msg.length) return -1;
    off += 4;
  }
  let found = -1;
  for (let i = 0; i < anns + arcount; i++) {
    const nameStart = off;
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return found;
    const rdEnd = off + 10 + u16(msg, off + 8);
    if (rdEnd > msg.length) return found;
    if (i >= anns && u16(msg, off) === QType.OPT) {
      if (found >= 0 || off !== nameStart + 1 || msg[nameStart] !== 0) return -1;
      found = u16(msg, off + 2) | ((u16(msg, off + 6) & EDNS_DO) !== 0 ? OPT_FOUND_DO : 0);
    }
    off = rdEnd;
  }
  return found;
}

/** Big-endian u16 without Buffer's bounds checks: callers have checked the length (readUInt16BE was 10% of a hit). */
function u16(b: Buffer, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

type Latin1Slicer = Buffer & { latin1Slice?: (start: number, end: number) => string };

function result(
  status: QueryStatus, msg: Buffer, id: number, flags: number, qnameEnd: number, qtype: number, qclass: number,
  edns: boolean, udpSize: number, dnssecOk: boolean, key: string,
): Query {
  return { status, msg, id, flags, qnameEnd, qtype, qclass, edns, udpSize, dnssecOk, key };
}

export function parseQuery(msg: Buffer): Query {
  if (msg.length < HEADER_LEN) return result(QueryStatus.DROP, msg, 0, 0, 0, 0, 0, false, 512, false, '');
  const id = u16(msg, 0);
  const flags = u16(msg, OFF_FLAGS);
  if ((flags & FLAG_QR) !== 0) return result(QueryStatus.DROP, msg, id, flags, 0, 0, 0, false, 512, false, '');
  if ((flags & OPCODE_MASK) !== 0) return failed(QueryStatus.NOTIMP, msg, id, flags, 0, 0, 0);
  if (u16(msg, OFF_QDCOUNT) !== 1) return failed(QueryStatus.FORMERR, msg, id, flags, 0, 0, 0);

  const qnameEnd = skipUncompressedName(msg, HEADER_LEN);
  if (qnameEnd < 0 || qnameEnd + 4 > msg.length) return failed(QueryStatus.FORMERR, msg, id, flags, 0, 0, 0);
  const qtype = u16(msg, qnameEnd);
  const qclass = u16(msg, qnameEnd + 2);
  // A query carries no answers or authority (unbound and CoreDNS agree).
  if (u16(msg, OFF_ANCOUNT) !== 0 || u16(msg, OFF_NSCOUNT) !== 0) {
    return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
  }
  if (qtype === QType.OPT) return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
  // A cache has no zones to transfer; other classes (CH probes, HS) are not served.
  if (qtype === QType.AXFR || qtype === QType.IXFR || qclass !== QClass.IN) {
    return failed(QueryStatus.NOTIMP, msg, id, flags, qnameEnd, qtype, qclass);
  }

  // Additional section: find the OPT record (at most one, owner must be the root).
  let edns = false;
  let udpSize = 512;
  let dnssecOk = false;
  let off = qnameEnd + 4;
  const arcount = u16(msg, OFF_ARCOUNT);
  for (let i = 0; i < arcount; i++) {
    const nameStart = off;
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
    const type = u16(msg, off);
    const rdlen = u16(msg, off + 8);
    if (off + 10 + rdlen > msg.length) return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
    if (type === QType.TSIG) {
      // RFC 8945 5.1: a TSIG must be the last record (so there is one at most) and well formed.
      if (i !== arcount - 1 || !tsigWellFormed(msg, nameStart, off, off + 10 + rdlen)) {
        return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
      }
      return result(QueryStatus.TSIG, msg, id, flags, qnameEnd, qtype, qclass, edns, udpSize, dnssecOk, '');
    }
    if (type === QType.OPT) {
      if (edns || msg[nameStart] !== 0 || off !== nameStart + 1) return failed(QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
      edns = true;
      const size = u16(msg, off + 2);
      udpSize = size < 512 ? 512 : size;
      const version = msg[off + 5]!;
      dnssecOk = (u16(msg, off + 6) & EDNS_DO) !== 0;
      if (version !== 0) {
        return result(QueryStatus.BADVERS, msg, id, flags, qnameEnd, qtype, qclass, true, udpSize, dnssecOk, '');
      }
    }
    off += 10 + rdlen;
  }

  // Key: lower-cased name + type + class + flags byte, one string allocation.
  const nameLen = qnameEnd - HEADER_LEN;
  for (let i = 0; i < nameLen; i++) {
    const c = msg[HEADER_LEN + i]!;
    keyScratch[i] = c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
  }
  keyScratch[nameLen] = msg[qnameEnd]!;
  keyScratch[nameLen + 1] = msg[qnameEnd + 1]!;
  keyScratch[nameLen + 2] = msg[qnameEnd + 2]!;
  keyScratch[nameLen + 3] = msg[qnameEnd + 3]!;
  keyScratch[nameLen + 4] = (dnssecOk ? KEY_DO : 0) | ((flags & FLAG_CD) !== 0 ? KEY_CD : 0);
  // latin1Slice skips toString's encoding dispatch (about 8% of a hit); it has been on Buffer since Node 0.x.
  const slicer = keyScratch as Latin1Slicer;
  const key = slicer.latin1Slice !== undefined ? slicer.latin1Slice(0, nameLen + 5) : keyScratch.toString('latin1', 0, nameLen + 5);
  return result(QueryStatus.OK, msg, id, flags, qnameEnd, qtype, qclass, edns, udpSize, dnssecOk, key);
}

/** The lower-cased wire name inside a key (for building the upstream query and routing). */
export function keyName(key: string): Buffer {
  return Buffer.from(key.slice(0, key.length - 5), 'latin1');
}

/** Decodes a key for logs and tests: { name bytes, qtype, qclass, do, cd }. */
export function keyParts(key: string): { name: Buffer; qtype: number; qclass: number; dnssecOk: boolean; cd: boolean } {
  const b = Buffer.from(key, 'latin1');
  const n = b.length - 5;
  const f = b[n + 4]!;
  return { name: b.subarray(0, n), qtype: b.readUInt16BE(n), qclass: b.readUInt16BE(n + 2), dnssecOk: (f & KEY_DO) !== 0, cd: (f & KEY_CD) !== 0 };
}
