/**
 * The hot-path query parser: reads only what routing and caching need
 * (header, the one question, the OPT record) and builds the cache key. It
 * never throws: a bad packet becomes a status the resolver answers or drops.
 *
 * Two ways in: parseQueryInto fills a caller's QueryScratch and allocates
 * nothing (the hit path: the key stays bytes plus its hash, looked up as
 * such), parseQuery returns a new immutable Query with its key as a string
 * (everything off the hit path, and whatever must outlive a call).
 *
 * The Query, its statuses and its scratch form are query-result.ts.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import {
  EDNS_DO, FLAG_CD, FLAG_QR, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT,
  OPCODE_MASK, QClass, QType,
} from './constants.js';
import { skipName, skipUncompressedName } from './name.js';
import { EMPTY, KEY_CD, KEY_DO, KEY_TAIL, QueryScratch, QueryStatus, queryCopy, type Query } from './query-result.js';
import { tsigWellFormed } from './tsig.js';

export { KEY_CD, KEY_DO, KEY_MAX, QueryScratch, QuerySnapshot, QueryStatus, queryCopy, type Query } from './query-result.js';

/**
 * The seed of the key hash, one per process (a batched worker takes the
 * main thread's, as it reads the main thread's cache: useKeyHashSeed). Names are chosen by whoever sends queries, and a fixed hash would
 * let them build long probe chains in the cache's table (cache/store.ts).
 * It lives here because the parser hashes the key while it builds it; the
 * store hashes string keys (restored, inserted) with the same function.
 * Drawn when this module loads, so no thread ever hashes with a seed unset.
 */
let KEY_HASH_SEED = randomSeed();

/**
 * 32 bits from the kernel's CSPRNG (/dev/urandom, through node:fs, which
 * every thread has loaded already), else from WebCrypto's getRandomValues.
 * Not node:crypto: a batched worker would load it (~0.5 MiB a thread) only
 * to replace the seed with the main thread's.
 */
function randomSeed(): number {
  const b = new Uint32Array(1);
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      if (readSync(fd, b, 0, 4, null) === 4) return b[0]!;
    } finally {
      closeSync(fd);
    }
  } catch {
    // No /dev/urandom (not Linux, or a root without /dev): WebCrypto below.
  }
  return globalThis.crypto.getRandomValues(b)[0]!;
}

/** This thread's key hash seed. */
export function keyHashSeed(): number {
  return KEY_HASH_SEED;
}

/**
 * Hash keys with `seed` from now on: a thread that reads a cache another
 * thread writes (a batched worker, cache/reader.ts) must hash as the writer
 * does. Call it before any key is hashed on this thread.
 */
export function useKeyHashSeed(seed: number): void {
  KEY_HASH_SEED = seed >>> 0;
}

/**
 * The key's bytes four at a time (little-endian words), each word mixed in
 * with a multiply and a shift from a seeded basis, the last 0-3 bytes one at
 * a time, then murmur3's finaliser to spread the bits the table uses. Four
 * bytes a step: the hash was a third of a lookup's cost. Seeded, not keyed:
 * it keeps a flood of chosen names from being cheap, a SipHash would make it
 * impossible at twice the cost. parseQueryInto computes the same function
 * inline while it lower-cases the name, and keyHashOfBytes over bytes: all
 * three must agree, or a byte lookup misses what a string insert stored.
 */
export function hashKey(key: string): number {
  const n = key.length;
  let h = KEY_HASH_SEED ^ n;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    h = Math.imul(h ^ (key.charCodeAt(i) | (key.charCodeAt(i + 1) << 8) | (key.charCodeAt(i + 2) << 16) | (key.charCodeAt(i + 3) << 24)), 0x9e3779b1);
    h ^= h >>> 15;
  }
  for (; i < n; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return finish(h);
}

/** hashKey of the latin1 string of b[0, n). */
export function keyHashOfBytes(b: Uint8Array, n: number): number {
  return hashTail(b, 0, n, KEY_HASH_SEED ^ n);
}

/** The words and bytes of b[i, n) mixed into `h`, then finished. */
function hashTail(b: Uint8Array, i: number, n: number, h: number): number {
  for (; i + 4 <= n; i += 4) {
    h = Math.imul(h ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)), 0x9e3779b1);
    h ^= h >>> 15;
  }
  for (; i < n; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return finish(h);
}

/**
 * murmur3's 32-bit finaliser. Signed: an int32 stays a small integer when
 * stored in QueryScratch.keyHash, where a uint32 above 2^31 would be boxed in
 * a new heap number on every other parse (16 bytes); the store reads it
 * back as unsigned.
 */
function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}


function set(
  q: QueryScratch, status: QueryStatus, msg: Buffer, id: number, flags: number, qnameEnd: number, qtype: number, qclass: number,
  edns: boolean, udpSize: number, dnssecOk: boolean,
): QueryStatus {
  q.status = status;
  q.msg = msg;
  q.id = id;
  q.flags = flags;
  q.qnameEnd = qnameEnd;
  q.qtype = qtype;
  q.qclass = qclass;
  q.edns = edns;
  q.udpSize = udpSize;
  q.dnssecOk = dnssecOk;
  q.keyLen = 0;
  q.keyHash = 0;
  return status;
}

/**
 * An error status for a query with a readable header. The answer still owes
 * the client an OPT if its query had one (RFC 6891 7), so the OPT is looked
 * for here, off the OK path, however far the error was found from it.
 */
function failed(q: QueryScratch, status: QueryStatus, msg: Buffer, id: number, flags: number, qnameEnd: number, qtype: number, qclass: number): QueryStatus {
  const opt = findOpt(msg);
  if (opt < 0) return set(q, status, msg, id, flags, qnameEnd, qtype, qclass, false, 512, false);
  const size = opt & 0xffff;
  // A request we would not serve at any version (an opcode, class or type) is still answered BADVERS at a later one
  // (RFC 6891 6.1.3), as BIND and unbound do: the client asks again at version 0 and learns the real answer then.
  if (status === QueryStatus.NOTIMP && (opt & OPT_FOUND_LATER) !== 0) status = QueryStatus.BADVERS;
  return set(q, status, msg, id, flags, qnameEnd, qtype, qclass, true, size < 512 ? 512 : size, (opt & OPT_FOUND_DO) !== 0);
}

/** findOpt's packed result: the UDP size in the low 16 bits, this bit for DO, this one for a version other than 0. */
const OPT_FOUND_DO = 0x10000;
const OPT_FOUND_LATER = 0x20000;

/**
 * Best effort, for error answers: walks every section as the header counts
 * them (questions as names plus type and class, records as names plus fixed
 * fields plus RDATA) and returns the additional section's first OPT as
 * udpSize | (DO ? OPT_FOUND_DO : 0) | (version > 0 ? OPT_FOUND_LATER : 0), or
 * -1 when the walk breaks before one is found. An OPT that is itself invalid (a second OPT, or an owner other than
 * the root: FORMERR, RFC 6891 6.1.1) still counts: RFC 6891 7 wants the
 * FORMERR for a problem with the OPT to carry one, so the client does not take
 * us for a server without EDNS and fall back to plain DNS.
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
  for (let i = 0; i < anns + arcount; i++) {
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return -1;
    const rdEnd = off + 10 + u16(msg, off + 8);
    if (rdEnd > msg.length) return -1;
    if (i >= anns && u16(msg, off) === QType.OPT) {
      return u16(msg, off + 2) | ((u16(msg, off + 6) & EDNS_DO) !== 0 ? OPT_FOUND_DO : 0) | (msg[off + 5] !== 0 ? OPT_FOUND_LATER : 0);
    }
    off = rdEnd;
  }
  return -1;
}

/**
 * Whether the EDNS options in [off, end) (code, length, that many bytes, one
 * after another) end exactly at `end`. One that runs past it, or a partial
 * code and length, is a badly formatted OPT: FORMERR (RFC 6891 7), as BIND
 * and CoreDNS answer (unbound ignores the rest). Most queries carry none or
 * a cookie: a step or two on the hit path.
 */
function optionsFill(msg: Buffer, off: number, end: number): boolean {
  while (off < end) {
    if (off + 4 > end) return false;
    off += 4 + u16(msg, off + 2);
  }
  return off === end;
}

/** Big-endian u16 without Buffer's bounds checks: callers have checked the length (readUInt16BE was 10% of a hit). */
function u16(b: Buffer, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

/** ASCII upper case to lower; every other byte (label lengths are < 64, non-ASCII >= 0x80) as it is. */
function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

/**
 * Parses `msg` into `q` (every field overwritten) and returns its status.
 * Allocates nothing on the OK path: the key goes into q.keyBytes and its
 * hash into q.keyHash. `q.msg` is `msg` itself, so q is as short-lived as
 * the caller's buffer.
 */
export function parseQueryInto(msg: Buffer, q: QueryScratch): QueryStatus {
  if (msg.length < HEADER_LEN) return set(q, QueryStatus.DROP, msg, 0, 0, 0, 0, 0, false, 512, false);
  const id = u16(msg, 0);
  const flags = u16(msg, OFF_FLAGS);
  if ((flags & FLAG_QR) !== 0) return set(q, QueryStatus.DROP, msg, id, flags, 0, 0, 0, false, 512, false);
  if ((flags & OPCODE_MASK) !== 0) return failed(q, QueryStatus.NOTIMP, msg, id, flags, 0, 0, 0);
  if (u16(msg, OFF_QDCOUNT) !== 1) return failed(q, QueryStatus.FORMERR, msg, id, flags, 0, 0, 0);

  const qnameEnd = skipUncompressedName(msg, HEADER_LEN);
  if (qnameEnd < 0 || qnameEnd + 4 > msg.length) return failed(q, QueryStatus.FORMERR, msg, id, flags, 0, 0, 0);
  const qtype = u16(msg, qnameEnd);
  const qclass = u16(msg, qnameEnd + 2);
  // A query carries no answers or authority (unbound and CoreDNS agree).
  if (u16(msg, OFF_ANCOUNT) !== 0 || u16(msg, OFF_NSCOUNT) !== 0) {
    return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
  }
  if (qtype === QType.OPT) return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
  // A cache has no zones to transfer; other classes (CH probes, HS) are not served. NOTIMP once the additional
  // section is read: a signed one (a zone transfer is what TSIG signs most) gets BADKEY, as every signed query does.
  const notImp = qtype === QType.AXFR || qtype === QType.IXFR || qclass !== QClass.IN;

  // Additional section: find the OPT record (at most one, owner must be the root).
  let edns = false;
  let udpSize = 512;
  let dnssecOk = false;
  // A later EDNS version is BADVERS only once the rest of the section reads well: a second OPT is FORMERR (RFC 6891 6.1.1).
  let badVersion = false;
  let off = qnameEnd + 4;
  const arcount = u16(msg, OFF_ARCOUNT);
  for (let i = 0; i < arcount; i++) {
    const nameStart = off;
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
    const type = u16(msg, off);
    const rdlen = u16(msg, off + 8);
    if (off + 10 + rdlen > msg.length) return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
    if (type === QType.TSIG) {
      // RFC 8945 5.1: a TSIG must be the last record (so there is one at most) and well formed.
      if (i !== arcount - 1 || !tsigWellFormed(msg, nameStart, off, off + 10 + rdlen)) {
        return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
      }
      return set(q, badVersion ? QueryStatus.BADVERS : QueryStatus.TSIG, msg, id, flags, qnameEnd, qtype, qclass, edns, udpSize, dnssecOk);
    }
    if (type === QType.OPT) {
      if (edns || msg[nameStart] !== 0 || off !== nameStart + 1) return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
      edns = true;
      const size = u16(msg, off + 2);
      udpSize = size < 512 ? 512 : size;
      const version = msg[off + 5]!;
      dnssecOk = (u16(msg, off + 6) & EDNS_DO) !== 0;
      badVersion = version !== 0;
      // Version 0's options must fill the RDATA exactly (RFC 6891 6.1.2); a later version's are not ours to read.
      if (!badVersion && !optionsFill(msg, off + 10, off + 10 + rdlen)) return failed(q, QueryStatus.FORMERR, msg, id, flags, qnameEnd, qtype, qclass);
    }
    off += 10 + rdlen;
  }
  // BADVERS first (RFC 6891 6.1.3): what we do not serve at version 0 is for the client's retry at version 0 to learn.
  if (badVersion) return set(q, QueryStatus.BADVERS, msg, id, flags, qnameEnd, qtype, qclass, true, udpSize, dnssecOk);
  if (notImp) return failed(q, QueryStatus.NOTIMP, msg, id, flags, qnameEnd, qtype, qclass);

  set(q, QueryStatus.OK, msg, id, flags, qnameEnd, qtype, qclass, edns, udpSize, dnssecOk);
  // Key: lower-cased name + type + class + flags byte, hashed (hashKey) in the same pass, whole words first.
  const k = q.keyBytes;
  const nameLen = qnameEnd - HEADER_LEN;
  const keyLen = nameLen + KEY_TAIL;
  let h = KEY_HASH_SEED ^ keyLen;
  let i = 0;
  for (let at = HEADER_LEN; i + 4 <= nameLen; i += 4, at += 4) {
    const c0 = lower(msg[at]!);
    const c1 = lower(msg[at + 1]!);
    const c2 = lower(msg[at + 2]!);
    const c3 = lower(msg[at + 3]!);
    k[i] = c0;
    k[i + 1] = c1;
    k[i + 2] = c2;
    k[i + 3] = c3;
    h = Math.imul(h ^ (c0 | (c1 << 8) | (c2 << 16) | (c3 << 24)), 0x9e3779b1);
    h ^= h >>> 15;
  }
  for (let j = i; j < nameLen; j++) k[j] = lower(msg[HEADER_LEN + j]!);
  k[nameLen] = msg[qnameEnd]!;
  k[nameLen + 1] = msg[qnameEnd + 1]!;
  k[nameLen + 2] = msg[qnameEnd + 2]!;
  k[nameLen + 3] = msg[qnameEnd + 3]!;
  k[nameLen + 4] = (dnssecOk ? KEY_DO : 0) | ((flags & FLAG_CD) !== 0 ? KEY_CD : 0);
  // The words that straddle the name's end and the type, class and flags: from the bytes just written.
  q.keyHash = hashTail(k, i, keyLen, h);
  q.keyLen = keyLen;
  return QueryStatus.OK;
}

/** parseQuery's scratch: it parses here and returns a copy. */
const shared = new QueryScratch();

/**
 * Parses `msg` into a new immutable Query (which keeps `msg` by reference).
 * For callers off the hit path; the hit path parses into its own scratch.
 */
export function parseQuery(msg: Buffer): Query {
  parseQueryInto(msg, shared);
  const q = queryCopy(shared, msg, shared.key);
  shared.msg = EMPTY;
  return q;
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
