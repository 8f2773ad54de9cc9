/**
 * The cache snapshot's file format: the bytes of a snapshot file and back
 * (snapshot-file.ts writes and reads the file; snapshot.ts runs the
 * snapshots of an agent).
 *
 * File layout, version 1 (integers big-endian):
 *
 *     0  magic "NLDCACHE"                       8 bytes
 *     8  format version                         u16
 *    10  reserved, 0                            u16
 *    12  record count                           u32
 *    16  written at, wall-clock epoch ms        f64
 *    24  body length (the records)              u32
 *    28  reserved, 0                            u32
 *    32  records, each:
 *          key length u16, wire length u16, life s u32, age ms u32,
 *          hits u32, flags u8 (1 = negative), key (latin1), wire
 *   end-4 crc32 of every byte before it        u32
 *
 * Entries leave with their age, not clock values (the monotonic clock means
 * nothing in another process), and come back aged by the wall-clock time the
 * agent was down. Offsets are not stored: the restore scans each answer
 * again, which both finds them and validates the bytes (cache.ts restore).
 *
 * The decoder trusts nothing: every length is checked, and a file that is
 * not whole and ours is rejected as a whole, with the reason.
 */
import { crc32 } from 'node:zlib';
import { crc32Combine } from './crc32-combine.js';
import type { CacheRecord } from './entry.js';

export const SNAPSHOT_MAGIC = Buffer.from('NLDCACHE', 'latin1');
export const SNAPSHOT_VERSION = 1;
export const SNAPSHOT_HEADER_LEN = 32;
const TRAILER_LEN = 4;
/** Fixed part of a record, before its key and wire bytes. */
const RECORD_FIXED_LEN = 17;
const FLAG_NEGATIVE = 1;
const U32_MAX = 0xffffffff;
/** Bytes the encoder buffers before they are written out. */
const CHUNK_BYTES = 1 << 20;

/** Why a snapshot was not loaded. Only 'missing' is normal. */
export type SnapshotRejection =
  | 'missing' | 'unreadable' | 'unsafe' | 'too-large' | 'foreign' | 'future-version' | 'truncated' | 'corrupt' | 'clock';

export interface DecodedSnapshot {
  /** Wall-clock epoch ms when it was written. */
  readonly writtenAt: number;
  /** Records as they were at writing (ages not yet moved on). Their `wire` are views into the file's buffer. */
  readonly records: CacheRecord[];
}

export interface SnapshotError {
  readonly reason: SnapshotRejection;
  readonly detail: string;
}

/**
 * Encodes a snapshot record by record into one reused 1 MiB buffer, to be
 * written out each time it fills (drain), so a write holds about that much
 * whatever the cache's size: the body is streamed to the file after room
 * for the header, and the header (count and length, known only at the end)
 * and the checksum come last, the body's checksum taken as it drains and
 * combined with the header's (crc32-combine.ts). Each record's key and
 * answer are copied at add (the cache may reuse those bytes once control
 * returns to the event loop).
 */
export class SnapshotEncoder {
  readonly #buf: Buffer;
  #off: number;
  #count: number;
  #body: number;
  /** CRC-32 of the body drained so far. */
  #crc: number;

  constructor() {
    this.#buf = Buffer.allocUnsafe(CHUNK_BYTES);
    this.#off = 0;
    this.#count = 0;
    this.#body = 0;
    this.#crc = 0;
  }

  get count(): number {
    return this.#count;
  }

  /** False when the record does not fit what is buffered: drain, then add it again (any record fits an empty buffer). */
  add(r: CacheRecord): boolean {
    // Cannot happen for real entries (a key is at most 260 bytes, a DNS message 65,535); kept honest anyway.
    if (r.key.length > 0xffff || r.wire.length > 0xffff) return true;
    const len = RECORD_FIXED_LEN + r.key.length + r.wire.length;
    if (this.#off + len > this.#buf.length) return false;
    const buf = this.#buf;
    let off = this.#off;
    buf.writeUInt16BE(r.key.length, off);
    buf.writeUInt16BE(r.wire.length, off + 2);
    buf.writeUInt32BE(clampU32(r.ttlSec), off + 4);
    buf.writeUInt32BE(clampU32(r.ageMs), off + 8);
    buf.writeUInt32BE(clampU32(r.hits), off + 12);
    buf.writeUInt8(r.negative ? FLAG_NEGATIVE : 0, off + 16);
    off += RECORD_FIXED_LEN;
    // By hand and with set(): Buffer.write and copy cross into C++ per call, which costs more than these few bytes.
    const key = r.key;
    for (let i = 0; i < key.length; i++) buf[off + i] = key.charCodeAt(i);
    off += key.length;
    buf.set(r.wire, off);
    this.#off = off + r.wire.length;
    this.#count++;
    this.#body += len;
    return true;
  }

  /** The body bytes added since the last drain, next in the file: a view of the buffer, to be written before the next add. */
  drain(): Buffer {
    const out = this.#buf.subarray(0, this.#off);
    this.#crc = crc32(out, this.#crc);
    this.#off = 0;
    return out;
  }

  /** The file's header for the records drained: call after the last drain. */
  header(writtenAt: number): Buffer {
    const header = Buffer.alloc(SNAPSHOT_HEADER_LEN);
    SNAPSHOT_MAGIC.copy(header, 0);
    header.writeUInt16BE(SNAPSHOT_VERSION, 8);
    header.writeUInt32BE(this.#count, 12);
    header.writeDoubleBE(writtenAt, 16);
    header.writeUInt32BE(this.#body, 24);
    return header;
  }

  /** The file's last bytes: the checksum of `header` followed by the body. */
  trailer(header: Buffer): Buffer {
    const trailer = Buffer.allocUnsafe(TRAILER_LEN);
    trailer.writeUInt32BE(crc32Combine(crc32(header), this.#crc, this.#body), 0);
    return trailer;
  }
}

/** The file's bytes for `records`, written at wall-clock `writtenAt`, in memory. Records that cannot be framed are left out. */
export function encodeSnapshot(records: Iterable<CacheRecord>, writtenAt: number): Buffer {
  const enc = new SnapshotEncoder();
  const body: Buffer[] = [];
  for (const r of records) {
    if (enc.add(r)) continue;
    body.push(Buffer.from(enc.drain()));
    enc.add(r);
  }
  body.push(Buffer.from(enc.drain()));
  const header = enc.header(writtenAt);
  return Buffer.concat([header, ...body, enc.trailer(header)]);
}

/**
 * The largest file the format can frame (its body length is a u32): past it a
 * file cannot be a snapshot. It bounds the read instead of this cache's
 * budget, since a cache with any --cache-memory may have written the file (one
 * whose export passes it fails to write).
 */
export const SNAPSHOT_MAX_BYTES = SNAPSHOT_HEADER_LEN + U32_MAX + TRAILER_LEN;
/** The longest record: its fixed part, the longest key and the longest DNS message. */
export const SNAPSHOT_MAX_RECORD = RECORD_FIXED_LEN + 0xffff + 0xffff;

export interface SnapshotHeader {
  readonly count: number;
  /** Wall-clock epoch ms when it was written. */
  readonly writtenAt: number;
  readonly bodyLen: number;
}

/**
 * The header of a file `fileLen` bytes long, from `head`: its first
 * SNAPSHOT_HEADER_LEN bytes, or all of it when shorter. Checks what the
 * header says about the file's framing; its values are checked by
 * headerValues once the checksum matched.
 */
export function readHeader(head: Buffer, fileLen: number): SnapshotHeader | SnapshotError {
  const magicLen = Math.min(head.length, SNAPSHOT_MAGIC.length);
  if (!head.subarray(0, magicLen).equals(SNAPSHOT_MAGIC.subarray(0, magicLen))) return snapshotError('foreign', 'not a cache snapshot (magic)');
  if (fileLen < SNAPSHOT_HEADER_LEN + TRAILER_LEN) return snapshotError('truncated', `${fileLen} bytes, shorter than a header`);
  const version = head.readUInt16BE(8);
  if (version > SNAPSHOT_VERSION) return snapshotError('future-version', `format version ${version}, this agent reads ${SNAPSHOT_VERSION}`);
  if (version !== SNAPSHOT_VERSION) return snapshotError('foreign', `format version ${version}`);
  const h: SnapshotHeader = { count: head.readUInt32BE(12), writtenAt: head.readDoubleBE(16), bodyLen: head.readUInt32BE(24) };
  const want = SNAPSHOT_HEADER_LEN + h.bodyLen + TRAILER_LEN;
  if (fileLen < want) return snapshotError('truncated', `${fileLen} of ${want} bytes`);
  if (fileLen > want) return snapshotError('corrupt', `${fileLen - want} bytes past the end`);
  return h;
}

/** Past the checksum only a writer's bug or a forged file gets here; still check every value. */
export function headerValues(h: SnapshotHeader): SnapshotError | undefined {
  if (!Number.isFinite(h.writtenAt) || h.writtenAt <= 0) return snapshotError('corrupt', 'write time');
  if (h.count * RECORD_FIXED_LEN > h.bodyLen) return snapshotError('corrupt', 'record count');
  return undefined;
}

/** Where the records end and the checksum starts. */
export function bodyEnd(h: SnapshotHeader): number {
  return SNAPSHOT_HEADER_LEN + h.bodyLen;
}

/**
 * Reads a snapshot's records from its body handed over in pieces, in order:
 * each call takes the bytes not consumed by the previous one followed by the
 * next ones, and consumes the whole records among them, so a file is decoded
 * in bounded memory. Every length is checked against the header's.
 */
export class RecordParser {
  readonly #count: number;
  readonly #bodyLen: number;
  #index: number;
  #consumed: number;

  constructor(h: SnapshotHeader) {
    this.#count = h.count;
    this.#bodyLen = h.bodyLen;
    this.#index = 0;
    this.#consumed = 0;
  }

  /**
   * The whole records in buf[off, end), pushed onto `out` (null: only
   * checked); returns the offset past the last one. Their `wire` are views
   * into `buf`.
   */
  parse(buf: Buffer, off: number, end: number, out: CacheRecord[] | null): number | SnapshotError {
    for (; this.#index < this.#count; this.#index++) {
      if (off + RECORD_FIXED_LEN > end) return off;
      const keyLen = buf.readUInt16BE(off);
      const wireLen = buf.readUInt16BE(off + 2);
      const keyStart = off + RECORD_FIXED_LEN;
      const wireStart = keyStart + keyLen;
      const next = wireStart + wireLen;
      if (next > end) return off;
      const flags = buf[off + 16]!;
      if ((flags & ~FLAG_NEGATIVE) !== 0) return snapshotError('corrupt', `record ${this.#index} flags`);
      out?.push({
        key: buf.toString('latin1', keyStart, wireStart),
        wire: buf.subarray(wireStart, next),
        ttlSec: buf.readUInt32BE(off + 4),
        ageMs: buf.readUInt32BE(off + 8),
        hits: buf.readUInt32BE(off + 12),
        negative: (flags & FLAG_NEGATIVE) !== 0,
      });
      this.#consumed += next - off;
      off = next;
    }
    return off < end ? snapshotError('corrupt', `${this.#bodyLen - this.#consumed} bytes after the last record`) : off;
  }

  /** After the whole body went through parse: whether it held exactly the records the header counts. */
  finish(): SnapshotError | undefined {
    if (this.#index < this.#count) return snapshotError('corrupt', `record ${this.#index} runs past the end`);
    if (this.#consumed !== this.#bodyLen) return snapshotError('corrupt', `${this.#bodyLen - this.#consumed} bytes after the last record`);
    return undefined;
  }
}

/** The snapshot in `buf`, or why it is not one we can trust. All or nothing; never throws. */
export function decodeSnapshot(buf: Buffer): DecodedSnapshot | SnapshotError {
  const h = readHeader(buf, buf.length);
  if ('reason' in h) return h;
  const end = bodyEnd(h);
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) return snapshotError('corrupt', 'checksum mismatch');
  const bad = headerValues(h);
  if (bad !== undefined) return bad;
  const records: CacheRecord[] = [];
  const parser = new RecordParser(h);
  const used = parser.parse(buf, SNAPSHOT_HEADER_LEN, end, records);
  if (typeof used !== 'number') return used;
  return parser.finish() ?? { writtenAt: h.writtenAt, records };
}

/** Why a file was not taken (the decoder's, and the reader's in snapshot-file.ts). */
export function snapshotError(reason: SnapshotRejection, detail: string): SnapshotError {
  return { reason, detail };
}

function clampU32(n: number): number {
  return n <= 0 ? 0 : n >= U32_MAX ? U32_MAX : Math.round(n);
}
