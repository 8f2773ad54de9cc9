/**
 * Warm restart: the cache is written to a file at shutdown and read back at
 * start, so a restarted agent answers hits in its first second instead of
 * sending every pod's names upstream again.
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
 * A missing file is a cold start. A file that is truncated, corrupt, foreign,
 * of a later version, too big, or writable by anyone but us is ignored as a
 * whole with one warning: never a crash, never part of a file. Writing goes
 * to a temporary file in the same directory, fsynced, then renamed over the
 * old snapshot, so a reader sees the old file or the new one, never half of
 * one.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { DnsCache, RestoreCounts } from './cache.js';
import type { CacheRecord } from './entry.js';

export const SNAPSHOT_MAGIC = Buffer.from('NLDCACHE', 'latin1');
export const SNAPSHOT_VERSION = 1;
export const SNAPSHOT_HEADER_LEN = 32;
const TRAILER_LEN = 4;
/** Fixed part of a record, before its key and wire bytes. */
const RECORD_FIXED_LEN = 17;
const FLAG_NEGATIVE = 1;
const U32_MAX = 0xffffffff;

/**
 * Room past the cache's byte budget for the header and trailer. A record
 * costs 17 bytes plus its key and answer on disk, and the cache charges the
 * same entry its key and answer plus at least 72 bytes (store.ts: record
 * header, TTL offsets, index overhead), so a snapshot of a full cache stays
 * inside the budget; anything bigger is not ours to read.
 */
export const SNAPSHOT_SLACK_BYTES = 1 << 20;
/**
 * How far in the future a snapshot's write time may be. More means the wall
 * clock stepped back while the agent was down: the downtime is unknown, so
 * nothing is loaded rather than serving answers for longer than their TTLs.
 */
export const SNAPSHOT_FUTURE_TOLERANCE_MS = 1000;
/** A temporary file this old was left by a writer that died; younger ones may belong to a writer at work. */
export const STALE_TEMP_MS = 10 * 60_000;

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

export type SnapshotWrite =
  | { readonly ok: true; readonly entries: number; readonly bytes: number }
  | { readonly ok: false; readonly error: string };

export interface SnapshotLoad {
  /** Entries put in the cache. */
  readonly loaded: number;
  /** Records read but not put back (expired, invalid, no room, already cached). */
  readonly dropped: number;
  /** Set when nothing was read: why. */
  readonly reason?: SnapshotRejection;
  /** What became of the records, when the file was read. */
  readonly counts?: RestoreCounts;
}

/** The file's bytes for `records`, written at wall-clock `writtenAt`. Records that cannot be framed are left out. */
export function encodeSnapshot(records: Iterable<CacheRecord>, writtenAt: number): Buffer {
  const kept: CacheRecord[] = [];
  let body = 0;
  for (const r of records) {
    // Cannot happen for real entries (a key is at most 260 bytes, a DNS message 65,535); kept honest anyway.
    if (r.key.length > 0xffff || r.wire.length > 0xffff) continue;
    kept.push(r);
    body += RECORD_FIXED_LEN + r.key.length + r.wire.length;
  }
  const buf = Buffer.allocUnsafe(SNAPSHOT_HEADER_LEN + body + TRAILER_LEN);
  SNAPSHOT_MAGIC.copy(buf, 0);
  buf.writeUInt16BE(SNAPSHOT_VERSION, 8);
  buf.writeUInt16BE(0, 10);
  buf.writeUInt32BE(kept.length, 12);
  buf.writeDoubleBE(writtenAt, 16);
  buf.writeUInt32BE(body, 24);
  buf.writeUInt32BE(0, 28);
  let off = SNAPSHOT_HEADER_LEN;
  for (const r of kept) {
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
    off += r.wire.length;
  }
  buf.writeUInt32BE(crc32(buf.subarray(0, off)), off);
  return buf;
}

/** The snapshot in `buf`, or why it is not one we can trust. All or nothing; never throws. */
export function decodeSnapshot(buf: Buffer): DecodedSnapshot | SnapshotError {
  const magicLen = Math.min(buf.length, SNAPSHOT_MAGIC.length);
  if (!buf.subarray(0, magicLen).equals(SNAPSHOT_MAGIC.subarray(0, magicLen))) return fail('foreign', 'not a cache snapshot (magic)');
  if (buf.length < SNAPSHOT_HEADER_LEN + TRAILER_LEN) return fail('truncated', `${buf.length} bytes, shorter than a header`);
  const version = buf.readUInt16BE(8);
  if (version > SNAPSHOT_VERSION) return fail('future-version', `format version ${version}, this agent reads ${SNAPSHOT_VERSION}`);
  if (version !== SNAPSHOT_VERSION) return fail('foreign', `format version ${version}`);
  const count = buf.readUInt32BE(12);
  const writtenAt = buf.readDoubleBE(16);
  const bodyLen = buf.readUInt32BE(24);
  const want = SNAPSHOT_HEADER_LEN + bodyLen + TRAILER_LEN;
  if (buf.length < want) return fail('truncated', `${buf.length} of ${want} bytes`);
  if (buf.length > want) return fail('corrupt', `${buf.length - want} bytes past the end`);
  const end = want - TRAILER_LEN;
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) return fail('corrupt', 'checksum mismatch');
  // Past the checksum only a writer's bug or a forged file gets here; still check every length.
  if (!Number.isFinite(writtenAt) || writtenAt <= 0) return fail('corrupt', 'write time');
  if (count * RECORD_FIXED_LEN > bodyLen) return fail('corrupt', 'record count');
  const records: CacheRecord[] = [];
  let off = SNAPSHOT_HEADER_LEN;
  for (let i = 0; i < count; i++) {
    if (off + RECORD_FIXED_LEN > end) return fail('corrupt', `record ${i} runs past the end`);
    const keyLen = buf.readUInt16BE(off);
    const wireLen = buf.readUInt16BE(off + 2);
    const ttlSec = buf.readUInt32BE(off + 4);
    const ageMs = buf.readUInt32BE(off + 8);
    const hits = buf.readUInt32BE(off + 12);
    const flags = buf[off + 16]!;
    const keyStart = off + RECORD_FIXED_LEN;
    const wireStart = keyStart + keyLen;
    off = wireStart + wireLen;
    if (off > end) return fail('corrupt', `record ${i} runs past the end`);
    if ((flags & ~FLAG_NEGATIVE) !== 0) return fail('corrupt', `record ${i} flags`);
    records.push({
      key: buf.toString('latin1', keyStart, wireStart),
      wire: buf.subarray(wireStart, off),
      ttlSec, ageMs, hits,
      negative: (flags & FLAG_NEGATIVE) !== 0,
    });
  }
  if (off !== end) return fail('corrupt', `${end - off} bytes after the last record`);
  return { writtenAt, records };
}

/**
 * Writes the cache's live and stale-window entries to `path` atomically (temp
 * file, fsync, rename, fsync of the directory). Never throws: a failure is
 * logged once and returned, and the previous snapshot stays as it was.
 */
export async function writeSnapshot(cache: DnsCache, path: string, clock: Clock, logger: Logger): Promise<SnapshotWrite> {
  const t0 = clock.now();
  // A name no other writer picks, even one in another container that is pid 1 too.
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  let fh: FileHandle | undefined;
  let buf: Buffer;
  try {
    // Inside the try: a cache too big for one Buffer (over 4 GiB) must not throw out of a shutdown.
    buf = encodeSnapshot(cache.export(t0), clock.wall());
    // Owner-only: the names a node's pods look up are nobody else's business.
    fh = await open(tmp, 'wx', 0o600);
    await fh.writeFile(buf);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (err) {
    if (fh !== undefined) await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    const error = errorText(err);
    logger.warn('cache snapshot not written; the previous one, if any, is unchanged', { path, error });
    return { ok: false, error };
  }
  // The rename is only durable once the directory is; the file itself is complete either way.
  await syncDir(dirname(path)).catch((err: unknown) => logger.warn('cache snapshot: directory fsync failed', { path, error: errorText(err) }));
  await removeStaleTemps(path, clock.wall());
  const entries = buf.readUInt32BE(12);
  logger.info('cache snapshot written', { path, entries, bytes: buf.length, ms: Math.round(clock.now() - t0) });
  return { ok: true, entries, bytes: buf.length };
}

/**
 * Loads the snapshot at `path` into `cache`, each entry aged by the wall-clock
 * time since it was written. Call it before the listeners start. Never
 * throws; a file that cannot be trusted is ignored whole, with one warning.
 */
export async function loadSnapshot(cache: DnsCache, path: string, clock: Clock, logger: Logger): Promise<SnapshotLoad> {
  const t0 = clock.now();
  const read = await readBounded(path, cache.maxBytes + SNAPSHOT_SLACK_BYTES);
  if (!Buffer.isBuffer(read)) return rejected(read, path, logger);
  const decoded = decodeSnapshot(read);
  if ('reason' in decoded) return rejected(decoded, path, logger);
  const elapsed = clock.wall() - decoded.writtenAt;
  if (elapsed < -SNAPSHOT_FUTURE_TOLERANCE_MS) {
    return rejected({ reason: 'clock', detail: `written ${Math.round(-elapsed)} ms in the future; the wall clock stepped back` }, path, logger);
  }
  const downMs = elapsed > 0 ? elapsed : 0;
  const counts = cache.restore(aged(decoded.records, downMs), clock.now());
  const dropped = decoded.records.length - counts.restored;
  logger.info('cache snapshot loaded', {
    path, loaded: counts.restored, expired: counts.expired, invalid: counts.invalid, noRoom: counts.noRoom, present: counts.present,
    snapshotAgeMs: Math.round(downMs), ms: Math.round(clock.now() - t0),
  });
  return { loaded: counts.restored, dropped, counts };
}

function* aged(records: readonly CacheRecord[], downMs: number): Generator<CacheRecord> {
  for (const r of records) yield { ...r, ageMs: r.ageMs + downMs };
}

function rejected(e: SnapshotError, path: string, logger: Logger): SnapshotLoad {
  if (e.reason === 'missing') logger.info('no cache snapshot; starting cold', { path });
  else logger.warn('cache snapshot ignored; starting cold', { path, reason: e.reason, detail: e.detail });
  return { loaded: 0, dropped: 0, reason: e.reason };
}

/** The whole file, if it is a regular file of at most `limit` bytes. */
async function readBounded(path: string, limit: number): Promise<Buffer | SnapshotError> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    const st = await fh.stat();
    if (!st.isFile()) return fail('foreign', 'not a regular file');
    // Whoever can write the file chooses the answers pods get: only we may (we write it 0600).
    if ((st.mode & 0o022) !== 0) return fail('unsafe', `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) return fail('unsafe', `owned by uid ${st.uid}, not ${uid}`);
    if (st.size > limit) return fail('too-large', `${st.size} bytes, over the cache budget plus slack (${limit})`);
    // One byte more than expected, to notice a file that grew since the stat.
    const buf = Buffer.allocUnsafe(st.size + 1);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    if (got > st.size) return fail('corrupt', 'the file grew while being read');
    return buf.subarray(0, got);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return fail('missing', 'no file');
    return fail('unreadable', errorText(err));
  } finally {
    if (fh !== undefined) await fh.close().catch(() => {});
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Best effort: temporary files of writers that died mid-write would otherwise pile up in the host path. */
async function removeStaleTemps(path: string, wallNow: number): Promise<void> {
  const dir = dirname(path);
  const prefix = `${basename(path)}.tmp-`;
  try {
    for (const name of await readdir(dir)) {
      if (!name.startsWith(prefix)) continue;
      const p = join(dir, name);
      const st = await stat(p).catch(() => undefined);
      if (st !== undefined && st.isFile() && wallNow - st.mtimeMs > STALE_TEMP_MS) await unlink(p).catch(() => {});
    }
  } catch {
    // A directory we cannot list is not worth failing a written snapshot for.
  }
}

function fail(reason: SnapshotRejection, detail: string): SnapshotError {
  return { reason, detail };
}

function clampU32(n: number): number {
  return n <= 0 ? 0 : n >= U32_MAX ? U32_MAX : Math.round(n);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
