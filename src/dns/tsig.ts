/**
 * TSIG (RFC 8945) for a cache that holds no keys. A signed query cannot be
 * answered as if it were unsigned: the client would reject the unsigned answer
 * or, worse, trust it. RFC 8945 5.2 says what a server that does not know the
 * key answers: NOTAUTH with an unsigned TSIG (MAC size 0) whose error is
 * BADKEY, so the client learns why at once instead of timing out.
 */
import { FLAG_CD, FLAG_QR, FLAG_RA, FLAG_RD, HEADER_LEN, OFF_ARCOUNT, OFF_QDCOUNT, OPCODE_MASK, QClass, QType, Rcode } from './constants.js';
import { DEFAULT_EDNS_SIZE, OPT_LEN, writeOpt } from './build.js';
import { expandName, skipName } from './name.js';
import type { Query } from './query.js';

/** TSIG error: key not recognized (RFC 8945 4.3, IANA TSIG/TKEY RCODE 17). */
export const TSIG_BADKEY = 17;

/** TYPE, CLASS, TTL, RDLENGTH after the owner name. */
const RR_FIXED = 10;
/** Time Signed (48 bits), Fudge, MAC Size: between the algorithm name and the MAC. */
const RD_BEFORE_MAC = 10;
/** Original ID, Error, Other Len: after the MAC. */
const RD_AFTER_MAC = 6;

/**
 * True when the record owned by the name at `nameStart`, whose TYPE sits at
 * `typeOff` and whose RDATA ends at `rdEnd`, is a TSIG of the form RFC 8945
 * 4.2 fixes: CLASS ANY, TTL 0, an RDATA whose fields add up to RDLENGTH
 * exactly, and key and algorithm names that can be written out whole (skipName
 * checks only a name's first pointer; tsigErrorResponse follows them all).
 */
export function tsigWellFormed(msg: Buffer, nameStart: number, typeOff: number, rdEnd: number): boolean {
  if (msg.readUInt16BE(typeOff + 2) !== QClass.ANY || msg.readUInt32BE(typeOff + 4) !== 0) return false;
  if (expandName(msg, nameStart, null, 0) < 0 || expandName(msg, typeOff + RR_FIXED, null, 0) < 0) return false;
  let off = skipName(msg, typeOff + RR_FIXED);
  if (off < 0 || off + RD_BEFORE_MAC > rdEnd) return false;
  off += RD_BEFORE_MAC + msg.readUInt16BE(off + 8);
  if (off + RD_AFTER_MAC > rdEnd) return false;
  return off + RD_AFTER_MAC + msg.readUInt16BE(off + 4) === rdEnd;
}

/**
 * The answer to a query of status TSIG: the question echoed, NOTAUTH, our
 * OPT if the query had one (RFC 6891 7), then an unsigned TSIG echoing the
 * key name, the algorithm, the fudge and the Original ID, with Time Signed
 * `nowSec` (a clock value passed in: this module reads no clock) and Error BADKEY (RFC 8945 5.2, 5.3.2: an error about the key is never signed).
 */
export function tsigErrorResponse(q: Query, nowSec: number, ednsSize = DEFAULT_EDNS_SIZE): Buffer {
  const msg = q.msg;
  const qEnd = q.qnameEnd + 4;
  // The TSIG is the last additional record (parseQuery checked its place and form): skip the others.
  let off = qEnd;
  for (let i = msg.readUInt16BE(OFF_ARCOUNT) - 1; i > 0; i--) {
    off = skipName(msg, off);
    off += RR_FIXED + msg.readUInt16BE(off + 8);
  }
  const keyStart = off;
  const typeOff = skipName(msg, keyStart);
  const algStart = typeOff + RR_FIXED;
  const fudgeOff = skipName(msg, algStart) + 6;
  const origIdOff = fudgeOff + 4 + msg.readUInt16BE(fudgeOff + 2);
  // Names are written out whole: their pointers were relative to the client's layout (and RFC 8945 4.2 wants them uncompressed).
  const keyLen = expandName(msg, keyStart, null, 0);
  const algLen = expandName(msg, algStart, null, 0);
  const optLen = q.edns ? OPT_LEN : 0;
  const rdLen = algLen + RD_BEFORE_MAC + RD_AFTER_MAC;
  const out = Buffer.alloc(qEnd + optLen + keyLen + RR_FIXED + rdLen);
  out.writeUInt16BE(q.id, 0);
  out.writeUInt16BE(FLAG_QR | (q.flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | FLAG_RA | Rcode.NOTAUTH, 2);
  out.writeUInt16BE(1, OFF_QDCOUNT);
  msg.copy(out, HEADER_LEN, HEADER_LEN, qEnd);
  out.writeUInt16BE(optLen !== 0 ? 2 : 1, OFF_ARCOUNT);
  let w = qEnd;
  if (optLen !== 0) w = writeOpt(out, w, ednsSize, 0, q.dnssecOk);
  w += expandName(msg, keyStart, out, w);
  out.writeUInt16BE(QType.TSIG, w);
  out.writeUInt16BE(QClass.ANY, w + 2);
  out.writeUInt32BE(0, w + 4);
  out.writeUInt16BE(rdLen, w + 8);
  w += RR_FIXED;
  w += expandName(msg, algStart, out, w);
  const secs = Math.max(0, Math.floor(nowSec));
  out.writeUInt16BE(Math.floor(secs / 0x100000000) & 0xffff, w);
  out.writeUInt32BE(secs % 0x100000000, w + 2);
  out.writeUInt16BE(msg.readUInt16BE(fudgeOff), w + 6);
  out.writeUInt16BE(0, w + 8); // MAC size: unsigned
  out.writeUInt16BE(msg.readUInt16BE(origIdOff), w + 10); // Original ID, as the client sent it
  out.writeUInt16BE(TSIG_BADKEY, w + 12);
  out.writeUInt16BE(0, w + 14); // Other Len
  return out;
}
