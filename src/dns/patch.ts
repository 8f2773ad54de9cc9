/**
 * Turning stored answer bytes into the answer for one client: copy, then
 * patch the id, the flags, the question's spelling and every TTL. This is the
 * whole cost of a cache hit besides the lookup, so it reads no record and
 * allocates one (pooled) buffer. It never throws.
 */
import { FLAG_AA, FLAG_CD, FLAG_RA, FLAG_RD, FLAG_TC, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS } from './constants.js';
import { OPT_LEN, writeOpt } from './build.js';
import type { Query } from './query.js';

/**
 * `wire` is an answer stored without OPT, with the id 0 and TTLs already
 * capped to the entry's lifetime; `questionEnd` is where its question ends.
 * TTLs are counted down by `ageSec`, or all set to `fixedTtl` when that is
 * >= 0 (stale answers). Returns the client's answer, or a truncated one
 * (TC=1, question only) when it would not fit `limit`.
 */
export function writeAnswer(
  wire: Buffer, questionEnd: number, ttlOffsets: Uint16Array, q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number,
): Buffer {
  const optLen = q.edns ? OPT_LEN : 0;
  const full = wire.length + optLen <= limit;
  const len = full ? wire.length : questionEnd;
  const out = Buffer.allocUnsafe(len + optLen);
  // TypedArray.set and byte stores instead of Buffer.copy/readUInt*: for a few hundred
  // bytes the native copy binding and the bounds-checked accessors cost more than the work.
  out.set(full ? wire : wire.subarray(0, len));
  out[0] = q.id >>> 8;
  out[1] = q.id & 0xff;
  // Not authoritative (we are a cache); RD and CD echo the client; we offer recursion.
  let flags = (((wire[OFF_FLAGS]! << 8) | wire[OFF_FLAGS + 1]!) & ~(FLAG_AA | FLAG_RD | FLAG_CD)) | (q.flags & (FLAG_RD | FLAG_CD)) | FLAG_RA;
  if (!full) flags |= FLAG_TC;
  out[OFF_FLAGS] = flags >>> 8;
  out[OFF_FLAGS + 1] = flags & 0xff;
  // Echo the client's spelling of the name (0x20 case randomisation); same length by construction of the key.
  const msg = q.msg;
  for (let i = HEADER_LEN; i < q.qnameEnd; i++) out[i] = msg[i]!;
  if (full) {
    if (ageSec > 0 || fixedTtl >= 0) {
      for (let i = 0; i < ttlOffsets.length; i++) {
        const off = ttlOffsets[i]!;
        const stored = ((wire[off]! << 24) | (wire[off + 1]! << 16) | (wire[off + 2]! << 8) | wire[off + 3]!) >>> 0;
        const ttl = fixedTtl >= 0 ? fixedTtl : stored > ageSec ? stored - ageSec : 0;
        out[off] = ttl >>> 24;
        out[off + 1] = (ttl >>> 16) & 0xff;
        out[off + 2] = (ttl >>> 8) & 0xff;
        out[off + 3] = ttl & 0xff;
      }
    }
    if (optLen !== 0) {
      writeOpt(out, len, ednsSize, 0, q.dnssecOk);
      const arcount = ((wire[OFF_ARCOUNT]! << 8) | wire[OFF_ARCOUNT + 1]!) + 1;
      out[OFF_ARCOUNT] = arcount >>> 8;
      out[OFF_ARCOUNT + 1] = arcount & 0xff;
    }
  } else {
    out.writeUInt32BE(0, OFF_ANCOUNT); // ANCOUNT, NSCOUNT
    out.writeUInt16BE(optLen !== 0 ? 1 : 0, OFF_ARCOUNT);
    if (optLen !== 0) writeOpt(out, len, ednsSize, 0, q.dnssecOk);
  }
  return out;
}

/**
 * A copy of `msg` without the OPT record at [optStart, optEnd), with ARCOUNT
 * decremented, and the TTL offsets past it shifted back. Used once at insert:
 * the OPT we send to a client is always our own.
 */
export function stripOpt(msg: Buffer, end: number, optStart: number, optEnd: number, ttlOffsets: Uint16Array): Buffer {
  if (optStart < 0) {
    const copy = Buffer.allocUnsafe(end);
    msg.copy(copy, 0, 0, end);
    return copy;
  }
  const optLen = optEnd - optStart;
  const out = Buffer.allocUnsafe(end - optLen);
  msg.copy(out, 0, 0, optStart);
  msg.copy(out, optStart, optEnd, end);
  out.writeUInt16BE(msg.readUInt16BE(OFF_ARCOUNT) - 1, OFF_ARCOUNT);
  for (let i = 0; i < ttlOffsets.length; i++) {
    if (ttlOffsets[i]! > optStart) ttlOffsets[i] = ttlOffsets[i]! - optLen;
  }
  return out;
}
