/**
 * One cached answer as the rest of the agent sees it: its bytes (id 0, no
 * OPT, TTLs capped to the entry's lifetime), the offsets a hit patches, and
 * its clock. Stored entries live in store.ts's slab; this file holds the
 * shapes around them.
 */
import type { AnswerScan } from '../dns/answer.js';
import { stripOpt, writeAnswer } from '../dns/patch.js';
import type { Query } from '../dns/query.js';

/**
 * An entry on its way out of the process or back in (cache snapshots). It
 * carries its age instead of clock times: the monotonic clock means nothing
 * in another process.
 */
export interface CacheRecord {
  readonly key: string;
  /** The stored answer: id 0, no OPT, every TTL capped to `ttlSec`. */
  readonly wire: Buffer;
  /** The entry's life when it was stored, seconds. */
  readonly ttlSec: number;
  /** Milliseconds since it was stored: what a hit ages its TTLs by. */
  readonly ageMs: number;
  readonly hits: number;
  readonly negative: boolean;
}

/**
 * What the hit path serves from: a stored entry (stored-entry.ts StoredEntry, the
 * handle a lookup returns) or a copy (AnswerCopy, what insert and stale
 * return). Serving is a copy plus patches (dns/patch.ts).
 */
export interface CacheEntry {
  /** Clock ms from which a hit on a popular entry starts a background refresh (Infinity: never). */
  readonly prefetchAt: number;
  readonly negative: boolean;
  /** The client's answer, aged to `now`. `limit` is the most bytes the client takes. */
  serve(q: Query, now: number, limit: number, ednsSize: number): Buffer;
  /** The expired answer with every TTL set to `ttl` (RFC 8767 stale serving). */
  serveStale(q: Query, ttl: number, limit: number, ednsSize: number): Buffer;
}

/**
 * An answer with its own bytes: how an upstream answer is prepared before the
 * store copies it into its slab, and what outlives the store's handle (the
 * waiters of a miss, a stale answer).
 */
export class AnswerCopy implements CacheEntry {
  readonly wire: Buffer;
  readonly questionEnd: number;
  readonly ttlOffsets: Uint16Array;
  /** Clock ms when stored. */
  readonly storedAt: number;
  /** Clock ms when it stops being served. */
  readonly expiresAt: number;
  readonly prefetchAt: number;
  readonly negative: boolean;
  /** Hits before it was stored (a restored entry keeps its count). */
  hits: number;

  constructor(
    wire: Buffer, questionEnd: number, ttlOffsets: Uint16Array, storedAt: number, expiresAt: number, prefetchAt: number,
    negative: boolean,
  ) {
    this.wire = wire;
    this.questionEnd = questionEnd;
    this.ttlOffsets = ttlOffsets;
    this.storedAt = storedAt;
    this.expiresAt = expiresAt;
    this.prefetchAt = prefetchAt;
    this.negative = negative;
    this.hits = 0;
  }

  /**
   * Builds an entry from a validated upstream answer. `ttlSec` 0 makes a
   * transient entry: never stored, used once to answer the clients waiting on it.
   */
  static fromAnswer(answer: Buffer, scan: AnswerScan, now: number, ttlSec: number, prefetchAt: number, negative: boolean): AnswerCopy {
    const { wire, ttlOffsets: offsets } = stripOpt(answer, scan.end, scan.optStart, scan.optEnd, scan.ttlOffsets.slice());
    wire.writeUInt16BE(0, 0);
    // Clients must not keep a record longer than we do: cap every TTL to the entry's life. A transient entry (ttlSec 0)
    // keeps the upstream's TTLs but those over 2^31 - 1, which mean zero (RFC 2181 8) and are often why it is transient.
    const cap = ttlSec > 0 ? ttlSec : 0x7fffffff;
    for (let i = 0; i < offsets.length; i++) {
      const off = offsets[i]!;
      const ttl = wire.readUInt32BE(off);
      if (ttl > cap) wire.writeUInt32BE(ttl > 0x7fffffff ? 0 : cap, off);
    }
    return new AnswerCopy(wire, scan.questionEnd, offsets, now, now + ttlSec * 1000, prefetchAt, negative);
  }

  serve(q: Query, now: number, limit: number, ednsSize: number): Buffer {
    const age = now > this.storedAt ? Math.floor((now - this.storedAt) / 1000) : 0;
    return writeAnswer(this.wire, this.questionEnd, this.ttlOffsets, q, age, -1, limit, ednsSize);
  }

  serveStale(q: Query, ttl: number, limit: number, ednsSize: number): Buffer {
    return writeAnswer(this.wire, this.questionEnd, this.ttlOffsets, q, 0, ttl, limit, ednsSize);
  }
}

/** The life an entry was stored with, seconds. */
export function lifeSec(storedAt: number, expiresAt: number): number {
  return Math.round((expiresAt - storedAt) / 1000);
}
