/**
 * Turning stored answer bytes into the answer for one client: copy, then
 * patch the id, the flags, the question's spelling and every TTL. This is the
 * whole cost of a cache hit besides the lookup, so it decodes no record and
 * allocates one buffer (answer-buffer.ts: none in a batched worker): an
 * answer too big for the client is cut at a record boundary found from the
 * TTL offsets (an RRset boundary, compared by the owner names they follow,
 * when it goes without TC). It never throws.
 */
import {
  FLAG_AA, FLAG_AD, FLAG_CD, FLAG_RA, FLAG_RD, FLAG_TC, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT,
} from './constants.js';
import { OPT_LEN, writeOpt } from './build.js';
import { answerBuffer } from './answer-buffer.js';
import { sameNameAt, skipName } from './name.js';
import type { Query } from './query.js';

/**
 * `wire` is an answer stored without OPT, with the id 0 and TTLs already
 * capped to the entry's lifetime; `questionEnd` is where its question ends;
 * `ttlOffsets` holds the TTL offset of every record, in order. TTLs are
 * counted down by `ageSec`, or all set to `fixedTtl` when that is >= 0 (stale
 * answers). When the answer (with our OPT) would not fit `limit`, it is cut
 * at a record boundary (see keptRecords).
 */
export function writeAnswer(
  wire: Buffer, questionEnd: number, ttlOffsets: Uint16Array, q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number,
): Buffer {
  return writeAnswerFrom(wire, 0, wire.length, questionEnd, ttlOffsets, 0, ttlOffsets.length, q, ageSec, fixedTtl, limit, ednsSize);
}

/**
 * writeAnswer for an answer stored inside a larger buffer (the cache's slab):
 * its bytes are src[base, base + wireLen), its TTL offsets (relative to
 * `base`) are ttl[ttlAt, ttlAt + ttlCount). Reading in place is what lets a
 * hit allocate nothing but the outgoing buffer.
 */
/** Below this, a byte loop beats Buffer.copy (which builds a view of the source range per call). */
const SMALL_COPY = 256;

export function writeAnswerFrom(
  src: Buffer, base: number, wireLen: number, questionEnd: number, ttl: Uint16Array, ttlAt: number, ttlCount: number,
  q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number,
): Buffer {
  const optLen = q.edns ? OPT_LEN : 0;
  const full = wireLen + optLen <= limit;
  // The cut is the rare path: it is worked out here, before the copy, so the common path only pays this branch.
  const kept = full ? ttlCount : keptRecordsFrom(src, base, questionEnd, ttl, ttlAt, ttlCount, limit - optLen, q.dnssecOk);
  const tc = kept < 0;
  const n = tc ? ~kept : kept;
  const len = full ? wireLen : n === 0 ? questionEnd : recordEnd(src, base, ttl[ttlAt + n - 1]!);
  const out = answerBuffer(len + optLen);
  // TypedArray.set and byte stores instead of Buffer.copy/readUInt*: for a few hundred
  // bytes the native copy binding and the bounds-checked accessors cost more than the work.
  // From inside a larger buffer (or cut) it copies with Buffer.copy: a subarray view would be a second allocation.
  if (full && base === 0 && wireLen === src.length) out.set(src);
  else if (len <= SMALL_COPY) for (let i = 0; i < len; i++) out[i] = src[base + i]!;
  else src.copy(out, 0, base, base + len);
  out[0] = q.id >>> 8;
  out[1] = q.id & 0xff;
  // AA=1 as node-cache (CoreDNS's cache, plugin/cache/item.go) sets it on every cached answer: some clients
  // discard non-authoritative answers, and pods moving from node-cache must see the same bits. RD and CD
  // echo the client; we offer recursion. The upstream's AD (every upstream query asks for it: build.ts
  // upstreamQuery) goes only to a client that asked with AD or DO (RFC 6840 5.8).
  const hide = (q.flags & FLAG_AD) !== 0 || q.dnssecOk ? FLAG_RD | FLAG_CD : FLAG_RD | FLAG_CD | FLAG_AD;
  let flags = (((src[base + OFF_FLAGS]! << 8) | src[base + OFF_FLAGS + 1]!) & ~hide) | FLAG_AA | (q.flags & (FLAG_RD | FLAG_CD)) | FLAG_RA;
  if (tc) flags |= FLAG_TC;
  out[OFF_FLAGS] = flags >>> 8;
  out[OFF_FLAGS + 1] = flags & 0xff;
  // Echo the client's spelling of the name (0x20 case randomisation); same length by construction of the key.
  const msg = q.msg;
  for (let i = HEADER_LEN; i < q.qnameEnd; i++) out[i] = msg[i]!;
  if (ageSec > 0 || fixedTtl >= 0) {
    for (let i = 0; i < n; i++) {
      const off = ttl[ttlAt + i]!;
      const at = base + off;
      const stored = ((src[at]! << 24) | (src[at + 1]! << 16) | (src[at + 2]! << 8) | src[at + 3]!) >>> 0;
      const t = fixedTtl >= 0 ? fixedTtl : stored > ageSec ? stored - ageSec : 0;
      out[off] = t >>> 24;
      out[off + 1] = (t >>> 16) & 0xff;
      out[off + 2] = (t >>> 8) & 0xff;
      out[off + 3] = t & 0xff;
    }
  }
  if (!full || optLen !== 0) {
    let arcount = full ? (src[base + OFF_ARCOUNT]! << 8) | src[base + OFF_ARCOUNT + 1]! : writeCutCounts(src, base, out, n);
    if (optLen !== 0) {
      writeOpt(out, len, ednsSize, 0, q.dnssecOk);
      arcount++;
    }
    out[OFF_ARCOUNT] = arcount >>> 8;
    out[OFF_ARCOUNT + 1] = arcount & 0xff;
  }
  return out;
}

/**
 * Writes ANCOUNT and NSCOUNT for an answer cut to its first `n` records and
 * returns its ARCOUNT: records run answer, authority, additional, so the
 * first n of them keep their sections.
 */
function writeCutCounts(wire: Buffer, base: number, out: Buffer, n: number): number {
  const an = (wire[base + OFF_ANCOUNT]! << 8) | wire[base + OFF_ANCOUNT + 1]!;
  const ns = (wire[base + OFF_NSCOUNT]! << 8) | wire[base + OFF_NSCOUNT + 1]!;
  const keptAn = n < an ? n : an;
  const keptNs = n - keptAn < ns ? n - keptAn : ns;
  out[OFF_ANCOUNT] = keptAn >>> 8;
  out[OFF_ANCOUNT + 1] = keptAn & 0xff;
  out[OFF_NSCOUNT] = keptNs >>> 8;
  out[OFF_NSCOUNT + 1] = keptNs & 0xff;
  return n - keptAn - keptNs;
}

/** Offset (relative to `base`) past the record whose TTL sits at `ttlOff`: RDLENGTH follows the TTL, then RDATA. */
function recordEnd(wire: Buffer, base: number, ttlOff: number): number {
  return ttlOff + 6 + ((wire[base + ttlOff + 4]! << 8) | wire[base + ttlOff + 5]!);
}

/**
 * How many leading records to keep when the whole answer does not fit in
 * `budget` bytes (the client's limit less our OPT): n when the answer may go
 * out without TC, ~n (negative) when it must carry TC=1.
 *
 * CoreDNS does the same and musl before 1.2.4 depends on it: that resolver
 * never retries over TCP, so an empty TC answer fails the lookup where a
 * partial one succeeds. RFC 2181 section 9: TC only when what the client
 * needs is missing. So if the whole answer section fits, authority and
 * additional records that do not fit are dropped without TC; but a negative
 * answer (no answer records) needs its authority section (the SOA for RFC
 * 2308 negative caching, and any RFC 4035 denial proofs beside it), so a
 * negative answer that loses an authority record is TC; and so is any answer
 * to a DNSSEC client (`dnssecOk`) that does, since the RRSIGs of what is there
 * and a wildcard answer's NSEC proof sit there (RFC 4035 3.1.1, 3.1.3: TC when
 * they do not fit; dropped, a validator finds the answer bogus). What goes without TC
 * goes by whole RRsets: a partial RRset is allowed only with TC (RFC 2181
 * 5.1, 9), and a client that keeps what it is given would take the part for
 * the set. Cutting a suffix is safe on the wire because compression pointers
 * only point backwards (answer.ts scanAnswer refuses anything else at insert).
 */
export function keptRecords(wire: Buffer, ttlOffsets: Uint16Array, budget: number, dnssecOk = false): number {
  return keptRecordsFrom(wire, 0, skipName(wire, HEADER_LEN) + 4, ttlOffsets, 0, ttlOffsets.length, budget, dnssecOk);
}

function keptRecordsFrom(
  wire: Buffer, base: number, questionEnd: number, ttl: Uint16Array, ttlAt: number, ttlCount: number, budget: number, dnssecOk: boolean,
): number {
  let n = 0;
  while (n < ttlCount && recordEnd(wire, base, ttl[ttlAt + n]!) <= budget) n++;
  const an = (wire[base + OFF_ANCOUNT]! << 8) | wire[base + OFF_ANCOUNT + 1]!;
  if (n < an) return ~n;
  const ns = (wire[base + OFF_NSCOUNT]! << 8) | wire[base + OFF_NSCOUNT + 1]!;
  if ((an === 0 || dnssecOk) && n < an + ns) return ~n;
  // Back to the start of the RRset the cut went through, within its section.
  const sectionStart = n < an + ns ? an : an + ns;
  while (n > sectionStart && n < ttlCount && sameRRset(wire, base, questionEnd, ttl, ttlAt, n - 1)) n--;
  return n;
}

/** Whether records i and i + 1 (by their TTL offsets) share owner, type and class. */
function sameRRset(wire: Buffer, base: number, questionEnd: number, ttl: Uint16Array, ttlAt: number, i: number): boolean {
  const ttlA = ttl[ttlAt + i]!;
  const ttlB = ttl[ttlAt + i + 1]!;
  // TYPE and CLASS are the 4 bytes before the TTL.
  for (let k = 4; k > 0; k--) if (wire[base + ttlA - k] !== wire[base + ttlB - k]) return false;
  const startA = i === 0 ? questionEnd : recordEnd(wire, base, ttl[ttlAt + i - 1]!);
  return sameNameAt(wire, base, startA, recordEnd(wire, base, ttlA));
}

/**
 * A copy of `msg` without the OPT record at [optStart, optEnd), with ARCOUNT
 * decremented, and its TTL offsets (`ttlOffsets`, in message order, shifted
 * back past the cut). Used once at insert: the OPT we send to a client is
 * always our own.
 */
export function stripOpt(msg: Buffer, end: number, optStart: number, optEnd: number, ttlOffsets: Uint16Array): { wire: Buffer; ttlOffsets: Uint16Array } {
  if (optStart < 0) {
    const copy = Buffer.allocUnsafe(end);
    msg.copy(copy, 0, 0, end);
    return { wire: copy, ttlOffsets };
  }
  if (optEnd < end) {
    // An OPT before other additional records (RFC 6891 does not fix its place; rare): cut out of the middle, the
    // compression pointers past it would aim at the wrong bytes. The additional records after it go with it
    // instead (glue, optional by nature); nothing before it points past it (pointers point back).
    let kept = 0;
    while (kept < ttlOffsets.length && ttlOffsets[kept]! < optStart) kept++;
    const out = Buffer.allocUnsafe(optStart);
    msg.copy(out, 0, 0, optStart);
    out.writeUInt16BE(msg.readUInt16BE(OFF_ARCOUNT) - 1 - (ttlOffsets.length - kept), OFF_ARCOUNT);
    return { wire: out, ttlOffsets: ttlOffsets.subarray(0, kept) };
  }
  const out = Buffer.allocUnsafe(optStart);
  msg.copy(out, 0, 0, optStart);
  out.writeUInt16BE(msg.readUInt16BE(OFF_ARCOUNT) - 1, OFF_ARCOUNT);
  return { wire: out, ttlOffsets };
}
