/**
 * One cached answer: its bytes (id 0, no OPT, TTLs capped to the entry's
 * lifetime), the offsets a hit patches, and its clock. Serving it is a copy
 * plus patches (dns/patch.ts).
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

export class CacheEntry {
  readonly wire: Buffer;
  readonly questionEnd: number;
  readonly ttlOffsets: Uint16Array;
  /** Clock ms when stored. */
  readonly storedAt: number;
  /** Clock ms when it stops being served. */
  readonly expiresAt: number;
  /** Clock ms from which a hit on a popular entry starts a background refresh. */
  readonly prefetchAt: number;
  readonly negative: boolean;
  /** Hits since stored; prefetch asks for a minimum. */
  hits: number;
  /** A background refresh is under way; start no other. */
  refreshing: boolean;

  constructor(
    wire: Buffer, questionEnd: number, ttlOffsets: Uint16Array, storedAt: number, ttlSec: number, prefetchAt: number,
    negative: boolean,
  ) {
    this.wire = wire;
    this.questionEnd = questionEnd;
    this.ttlOffsets = ttlOffsets;
    this.storedAt = storedAt;
    this.expiresAt = storedAt + ttlSec * 1000;
    this.prefetchAt = prefetchAt;
    this.negative = negative;
    this.hits = 0;
    this.refreshing = false;
  }

  /**
   * Builds an entry from a validated upstream answer. `ttlSec` 0 makes a
   * transient entry: never stored, used once to answer the clients waiting on it.
   */
  static fromAnswer(answer: Buffer, scan: AnswerScan, now: number, ttlSec: number, prefetchAt: number, negative: boolean): CacheEntry {
    const offsets = scan.ttlOffsets.slice();
    const wire = stripOpt(answer, scan.end, scan.optStart, scan.optEnd, offsets);
    wire.writeUInt16BE(0, 0);
    if (ttlSec > 0) {
      // Clients must not keep a record longer than we do: cap every TTL to the entry's life.
      for (let i = 0; i < offsets.length; i++) {
        const off = offsets[i]!;
        if (wire.readUInt32BE(off) > ttlSec) wire.writeUInt32BE(ttlSec, off);
      }
    }
    return new CacheEntry(wire, scan.questionEnd, offsets, now, ttlSec, prefetchAt, negative);
  }

  /** The life it was stored with, seconds (derived, so an entry carries no extra field). */
  get ttlSec(): number {
    return Math.round((this.expiresAt - this.storedAt) / 1000);
  }

  /** This entry as a record for a snapshot; shares `wire`, which the caller must not change. */
  toRecord(key: string, now: number): CacheRecord {
    return { key, wire: this.wire, ttlSec: this.ttlSec, ageMs: now > this.storedAt ? now - this.storedAt : 0, hits: this.hits, negative: this.negative };
  }

  /** The client's answer, aged to `now`. `limit` is the most bytes the client takes. */
  serve(q: Query, now: number, limit: number, ednsSize: number): Buffer {
    const age = now > this.storedAt ? Math.floor((now - this.storedAt) / 1000) : 0;
    return writeAnswer(this.wire, this.questionEnd, this.ttlOffsets, q, age, -1, limit, ednsSize);
  }

  /** The expired answer with every TTL set to `ttl` (RFC 8767 stale serving). */
  serveStale(q: Query, ttl: number, limit: number, ednsSize: number): Buffer {
    return writeAnswer(this.wire, this.questionEnd, this.ttlOffsets, q, 0, ttl, limit, ednsSize);
  }
}
