/**
 * Small messages we write ourselves: error answers, the query we send
 * upstream, the OPT record. Hand-written (a few dozen bytes each) because
 * they sit on per-query paths where dns-packet's encoder would cost more than
 * the rest of the work.
 */
import {
  EDNS_DO, FLAG_AD, FLAG_CD, FLAG_QR, FLAG_RA, FLAG_RD, FLAG_TC, HEADER_LEN, OFF_ARCOUNT, OFF_FLAGS, OFF_QDCOUNT, OPCODE_MASK, QType,
} from './constants.js';
import type { Query } from './query.js';
import { copyBytes, copyLowerName } from './name.js';
import { answerBuffer, upstreamQueryBuffer } from './answer-buffer.js';

export const OPT_LEN = 11;
/**
 * The UDP payload size we advertise upstream and to clients: the DNS Flag
 * Day 2020 value, small enough never to fragment on common paths.
 */
export const DEFAULT_EDNS_SIZE = 1232;
/** Extended RCODE BADVERS (16) = upper 8 bits 1 in the OPT TTL, lower 4 bits 0 in the header. */
export const RCODE_BADVERS = 16;

/** Writes a root-owned OPT RR with no options at `off`; returns the offset past it. */
export function writeOpt(buf: Buffer, off: number, udpSize: number, extendedRcode: number, dnssecOk: boolean): number {
  // Byte stores: Node's bounds-checked writers allocate an argument list per call where they are not inlined.
  buf[off] = 0;
  buf[off + 1] = QType.OPT >>> 8;
  buf[off + 2] = QType.OPT & 0xff;
  buf[off + 3] = (udpSize >>> 8) & 0xff;
  buf[off + 4] = udpSize & 0xff;
  buf[off + 5] = (extendedRcode >>> 4) & 0xff;
  buf[off + 6] = 0; // version
  buf[off + 7] = dnssecOk ? EDNS_DO >>> 8 : 0;
  buf[off + 8] = dnssecOk ? EDNS_DO & 0xff : 0;
  buf[off + 9] = 0;
  buf[off + 10] = 0;
  return off + OPT_LEN;
}

/** A header with no answer or authority records, in byte stores (see writeOpt). */
function writeHeader(out: Buffer, id: number, flags: number, qdcount: number, arcount: number): void {
  out[0] = id >>> 8;
  out[1] = id & 0xff;
  out[2] = flags >>> 8;
  out[3] = flags & 0xff;
  out.fill(0, OFF_QDCOUNT, HEADER_LEN);
  out[OFF_QDCOUNT + 1] = qdcount;
  out[OFF_ARCOUNT + 1] = arcount;
}

/**
 * An answer with no records: FORMERR, NOTIMP, SERVFAIL, REFUSED, BADVERS.
 * Echoes the question when it was readable, and an OPT when the query had one
 * (RFC 6891 7: a responder that understands EDNS answers an EDNS query with OPT).
 */
export function errorResponse(q: Query, rcode: number, ednsSize = DEFAULT_EDNS_SIZE): Buffer {
  const qEnd = q.qnameEnd > 0 ? q.qnameEnd + 4 : HEADER_LEN;
  // A flood of refused misses is answered with these: every byte is written below, no bounds-checked writers.
  const out = answerBuffer(qEnd + (q.edns ? OPT_LEN : 0));
  writeHeader(out, q.id, FLAG_QR | (q.flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | FLAG_RA | (rcode & 0xf), q.qnameEnd > 0 ? 1 : 0, q.edns ? 1 : 0);
  if (q.qnameEnd > 0) copyBytes(q.msg, HEADER_LEN, out, HEADER_LEN, qEnd - HEADER_LEN);
  if (q.edns) writeOpt(out, qEnd, ednsSize, rcode, q.dnssecOk);
  return out;
}

/** errorResponse with TC set: the answer did not fit the client's UDP limit, and it should ask again over TCP. */
export function truncatedResponse(q: Query, rcode: number): Buffer {
  const out = errorResponse(q, rcode);
  out[OFF_FLAGS] = out[OFF_FLAGS]! | (FLAG_TC >>> 8);
  return out;
}

/**
 * The query we forward: our canonical form, not the client's bytes. The name
 * is lower-cased (the cache key's spelling), RD is set, CD and DO follow the
 * client (both are in the key), and EDNS is always on so upstream answers are
 * not cut at 512 bytes. AD is always set (RFC 6840 5.7: we understand it), so
 * a validating upstream says whether the data is authentic even without DO,
 * and one entry serves every client: patch.ts gives the AD bit only to those
 * that asked with AD or DO. Keying on the client's AD instead (CoreDNS keys
 * on DO alone and keeps whatever AD the first asker got) would split the cache
 * between glibc's trust-ad and every other client, or serve AD=0 to an AD
 * client from an entry a plain client fetched. The id is left 0: the
 * transport writes its own.
 */
export function upstreamQuery(q: Query, ednsSize = DEFAULT_EDNS_SIZE): Buffer {
  const qEnd = q.qnameEnd + 4;
  const out = upstreamQueryBuffer(qEnd + OPT_LEN);
  writeHeader(out, 0, FLAG_RD | FLAG_AD | (q.flags & FLAG_CD), 1, 1);
  copyLowerName(q.msg, HEADER_LEN, out, HEADER_LEN, q.qnameEnd - HEADER_LEN);
  copyBytes(q.msg, q.qnameEnd, out, q.qnameEnd, 4);
  writeOpt(out, qEnd, ednsSize, 0, q.dnssecOk);
  return out;
}

/**
 * A plain query (RD, one question, no EDNS) for a name in uncompressed wire
 * form: what the resolver asks for itself (the target of an ExternalName,
 * a health probe), parsed by parseQuery like any client's.
 */
export function questionMessage(nameWire: Uint8Array, qtype: number, id = 0): Buffer {
  const out = Buffer.alloc(HEADER_LEN + nameWire.length + 4);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(FLAG_RD, 2);
  out.writeUInt16BE(1, OFF_QDCOUNT);
  out.set(nameWire, HEADER_LEN);
  out.writeUInt16BE(qtype, HEADER_LEN + nameWire.length);
  out.writeUInt16BE(1, HEADER_LEN + nameWire.length + 2);
  return out;
}

/** RFC 8467 4.1: a client pads each query over an encrypted transport to a multiple of 128 bytes. */
export const QUERY_PADDING_BLOCK = 128;
/** EDNS option code of Padding (RFC 7830). */
const OPTION_PADDING = 12;

/**
 * `query` with an RFC 7830 Padding option in its OPT, to a multiple of
 * `block` bytes, so an observer of a DoT stream cannot tell names apart by
 * their length. Takes the form upstreamQuery writes (the OPT last, with no
 * options); any other message (a retry without EDNS) is returned as it is.
 * The answer's OPT, padded or not, is dropped before anything is stored.
 */
export function padQuery(query: Buffer, block = QUERY_PADDING_BLOCK): Buffer {
  const opt = query.length - OPT_LEN;
  const arcount = opt >= HEADER_LEN ? (query[OFF_ARCOUNT]! << 8) | query[OFF_ARCOUNT + 1]! : 0;
  if (arcount === 0 || query[opt] !== 0 || query.readUInt16BE(opt + 1) !== QType.OPT || query.readUInt16BE(opt + 9) !== 0) return query;
  const padded = Math.ceil((query.length + 4) / block) * block;
  const out = Buffer.alloc(padded);
  query.copy(out, 0);
  out.writeUInt16BE(padded - query.length, opt + 9);
  out.writeUInt16BE(OPTION_PADDING, query.length);
  out.writeUInt16BE(padded - query.length - 4, query.length + 2);
  return out;
}
