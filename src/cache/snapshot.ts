/**
 * Warm restart: the cache is written to a file at shutdown, and every
 * --cache-snapshot-interval while serving, and read back at start, so a
 * restarted agent answers hits in its first second instead of sending every
 * pod's names upstream again. The periodic writes are what let an upgrade's
 * new agent, started beside a running one (SO_REUSEPORT), start warm: the old
 * one has not written its shutdown snapshot yet when the new one loads.
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
 * one. Several writers (an old and a new agent during an upgrade) may share
 * the path: each rename installs one whole file, the last one wins.
 *
 * A periodic write must not stall hits: the export is copied out of the
 * cache in slices of SNAPSHOT_SLICE_ENTRIES records, one slice per
 * event-loop turn (setImmediate: pending queries are read in between), the
 * checksum one chunk per turn, and the file written with async fs. Between
 * slices the cache goes on changing, so a periodic snapshot is a fuzzy copy:
 * an entry changed meanwhile may be written as it was or as it became, an
 * entry may be missed, and a repeated record is dropped by key. Each record
 * is aged from the export's start, so a record replaced meanwhile is written
 * as older than it is: it expires early after a restart, never late. The
 * shutdown write runs after the listeners closed, in one go.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { defineCounters, type Counters } from '../stats/counters.js';
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
/**
 * Records copied per event-loop turn by a periodic write: about 0.5-1.5 ms
 * of copying here (bench/micro/snapshot.ts: 20,000 entries in 20-50 ms on a
 * loaded 2-core machine), short against a hit's latency budget.
 */
export const SNAPSHOT_SLICE_ENTRIES = 512;
/** Bytes per buffer the encoder fills; the checksum takes one per turn. */
const CHUNK_BYTES = 1 << 20;
/** Periodic write failures are logged at most once per this long (the counter has each one). */
export const SNAPSHOT_FAILURE_LOG_MS = 10 * 60_000;

export const SNAPSHOT_COUNTERS = defineCounters({
  written: { name: 'nodelocal_cache_snapshot_writes_total', labels: { result: 'written' }, help: 'Cache snapshot writes, by result (skipped: the previous periodic write was still running).' },
  failed: { name: 'nodelocal_cache_snapshot_writes_total', labels: { result: 'failed' }, help: 'Cache snapshot writes, by result (skipped: the previous periodic write was still running).' },
  skipped: { name: 'nodelocal_cache_snapshot_writes_total', labels: { result: 'skipped' }, help: 'Cache snapshot writes, by result (skipped: the previous periodic write was still running).' },
  lastWrittenAt: {
    name: 'nodelocal_cache_snapshot_last_write_timestamp_seconds', type: 'gauge',
    help: 'Wall-clock time of the last cache snapshot written, seconds since the epoch (0: none yet).',
  },
  lastEntries: { name: 'nodelocal_cache_snapshot_entries', type: 'gauge', help: 'Entries in the last cache snapshot written.' },
  loaded: { name: 'nodelocal_cache_snapshot_loaded_entries', type: 'gauge', help: 'Entries loaded from the cache snapshot at start.' },
});
export type SnapshotCounter = keyof typeof SNAPSHOT_COUNTERS.slot;

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

/**
 * Builds a snapshot record by record into 1 MiB buffers, copying each
 * record's key and answer at once (the cache may reuse those bytes once
 * control returns to the event loop). The header and the checksum come last.
 */
class SnapshotEncoder {
  readonly #chunks: Buffer[];
  #cur: Buffer;
  #off: number;
  #count: number;
  #body: number;
  /** Keys written, when the same record may come twice (an export walked across event-loop turns). */
  readonly #seen: Set<string> | null;

  constructor(dedupe: boolean) {
    this.#chunks = [];
    this.#cur = Buffer.allocUnsafe(CHUNK_BYTES);
    this.#off = 0;
    this.#count = 0;
    this.#body = 0;
    this.#seen = dedupe ? new Set() : null;
  }

  get count(): number {
    return this.#count;
  }

  add(r: CacheRecord): void {
    // Cannot happen for real entries (a key is at most 260 bytes, a DNS message 65,535); kept honest anyway.
    if (r.key.length > 0xffff || r.wire.length > 0xffff) return;
    if (this.#seen !== null) {
      if (this.#seen.has(r.key)) return;
      this.#seen.add(r.key);
    }
    const len = RECORD_FIXED_LEN + r.key.length + r.wire.length;
    if (this.#off + len > this.#cur.length) {
      this.#seal();
      this.#cur = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, len));
    }
    const buf = this.#cur;
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
  }

  /**
   * The file as parts in order: header, records, trailer. The checksum runs
   * over one part per call of `pause` (when given), so a big file does not
   * take one long turn.
   */
  async finish(writtenAt: number, pause?: () => Promise<void>): Promise<Buffer[]> {
    const header = this.#header(writtenAt);
    let crc = crc32(header);
    for (const c of this.#chunks) {
      if (pause !== undefined) await pause();
      crc = crc32(c, crc);
    }
    const trailer = Buffer.allocUnsafe(TRAILER_LEN);
    trailer.writeUInt32BE(crc, 0);
    return [header, ...this.#chunks, trailer];
  }

  /** The same, in one go. */
  finishNow(writtenAt: number): Buffer {
    const buf = Buffer.concat([this.#header(writtenAt), ...this.#chunks, Buffer.alloc(TRAILER_LEN)]);
    buf.writeUInt32BE(crc32(buf.subarray(0, buf.length - TRAILER_LEN)), buf.length - TRAILER_LEN);
    return buf;
  }

  /** Seals the records and returns the file's header for them. */
  #header(writtenAt: number): Buffer {
    this.#seal();
    const header = Buffer.alloc(SNAPSHOT_HEADER_LEN);
    SNAPSHOT_MAGIC.copy(header, 0);
    header.writeUInt16BE(SNAPSHOT_VERSION, 8);
    header.writeUInt32BE(this.#count, 12);
    header.writeDoubleBE(writtenAt, 16);
    header.writeUInt32BE(this.#body, 24);
    return header;
  }

  #seal(): void {
    if (this.#off > 0) this.#chunks.push(this.#cur.subarray(0, this.#off));
    this.#cur = this.#cur.subarray(this.#off);
    this.#off = 0;
  }
}

/** The file's bytes for `records`, written at wall-clock `writtenAt`. Records that cannot be framed are left out. */
export function encodeSnapshot(records: Iterable<CacheRecord>, writtenAt: number): Buffer {
  const enc = new SnapshotEncoder(false);
  for (const r of records) enc.add(r);
  return enc.finishNow(writtenAt);
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

export interface WriteOptions {
  /**
   * Copy the export this many records per event-loop turn (a periodic write
   * while serving). Unset: in one go (at shutdown, when nothing else runs).
   */
  readonly sliceEntries?: number;
  /** Log success at debug and failure not at all: the caller counts and logs (periodic writes). */
  readonly quiet?: boolean;
}

/** Lets the event loop run (pending I/O first): one slice of a periodic write per turn. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Writes the cache's live and stale-window entries to `path` atomically (temp
 * file, fsync, rename, fsync of the directory). Never throws: a failure is
 * logged once (unless quiet) and returned, and the previous snapshot stays as
 * it was.
 */
export async function writeSnapshot(cache: DnsCache, path: string, clock: Clock, logger: Logger, opts: WriteOptions = {}): Promise<SnapshotWrite> {
  const t0 = clock.now();
  const sliced = opts.sliceEntries !== undefined && opts.sliceEntries > 0;
  // A name no other writer picks, even one in another container that is pid 1 too.
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  let fh: FileHandle | undefined;
  let parts: Buffer[];
  let entries: number;
  let bytes = 0;
  try {
    // Inside the try: an export that fails (a store that changed under a sliced walk, a cache over 4 GiB) is a failed write, not a crash.
    const enc = new SnapshotEncoder(sliced);
    const writtenAt = clock.wall();
    if (sliced) {
      await exportSliced(cache, t0, enc, opts.sliceEntries!);
      parts = await enc.finish(writtenAt, nextTurn);
    } else {
      for (const r of cache.export(t0)) enc.add(r);
      parts = await enc.finish(writtenAt);
    }
    entries = enc.count;
    // Owner-only: the names a node's pods look up are nobody else's business.
    fh = await open(tmp, 'wx', 0o600);
    for (const part of parts) {
      await writeAll(fh, part);
      bytes += part.length;
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (err) {
    if (fh !== undefined) await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    const error = errorText(err);
    if (opts.quiet !== true) logger.warn('cache snapshot not written; the previous one, if any, is unchanged', { path, error });
    return { ok: false, error };
  }
  // The rename is only durable once the directory is; the file itself is complete either way.
  await syncDir(dirname(path)).catch((err: unknown) => logger.warn('cache snapshot: directory fsync failed', { path, error: errorText(err) }));
  await removeStaleTemps(path, clock.wall());
  const fields = { path, entries, bytes, ms: Math.round(clock.now() - t0) };
  if (opts.quiet === true) logger.debug('cache snapshot written', fields);
  else logger.info('cache snapshot written', fields);
  return { ok: true, entries, bytes };
}

/**
 * Copies the export `slice` records per event-loop turn. The walk crosses
 * turns while the cache changes: a record may come twice (the encoder keeps
 * the first) or the walk may end early; it is also cut off past twice the
 * entries the cache held, so a walk that keeps meeting entries moved behind
 * it still ends.
 */
async function exportSliced(cache: DnsCache, now: number, enc: SnapshotEncoder, slice: number): Promise<void> {
  const limit = 2 * (cache.positiveSize + cache.negativeSize) + slice;
  const it = cache.export(now);
  try {
    let n = 0;
    for (let r = it.next(); r.done !== true; r = it.next()) {
      enc.add(r.value);
      if (++n >= limit) break;
      if (n % slice === 0) await nextTurn();
    }
  } finally {
    it.return(undefined);
  }
}

/** FileHandle.write may write less than asked (a file size limit reached midway): go on until all is written or it throws. */
async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
    off += bytesWritten;
  }
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

export interface CacheSnapshotsOptions {
  readonly cache: DnsCache;
  readonly path: string;
  /** How often to write while serving; 0: only at shutdown. */
  readonly intervalMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly counters: Counters<SnapshotCounter>;
  /** Records per event-loop turn of a periodic write. Default SNAPSHOT_SLICE_ENTRIES. */
  readonly sliceEntries?: number;
  /** For tests: the write itself (`periodic`: while serving, quiet and sliced). Default writeSnapshot. */
  readonly write?: (periodic: boolean) => Promise<SnapshotWrite>;
}

/**
 * The snapshot's life in an agent: load at start, write every `intervalMs`
 * on the clock's shared sweep while serving (a turn is skipped while the
 * previous write still runs), and once more at shutdown. Every write is
 * counted; failures of periodic writes are logged at most once per
 * SNAPSHOT_FAILURE_LOG_MS, and the first success after them says so.
 */
export class CacheSnapshots {
  readonly counters: Counters<SnapshotCounter>;
  readonly #o: CacheSnapshotsOptions;
  readonly #write: (periodic: boolean) => Promise<SnapshotWrite>;
  #unsweep: (() => void) | null;
  #nextAt: number;
  #running: Promise<SnapshotWrite> | null;
  /** Periodic failures since the last one logged, and when that was (Clock ms; -Infinity: never). */
  #unlogged: number;
  #loggedAt: number;
  #failing: number;

  constructor(o: CacheSnapshotsOptions) {
    this.#o = o;
    this.counters = o.counters;
    const slice = o.sliceEntries ?? SNAPSHOT_SLICE_ENTRIES;
    this.#write = o.write ?? ((periodic) => writeSnapshot(o.cache, o.path, o.clock, o.logger, periodic ? { sliceEntries: slice, quiet: true } : {}));
    this.#unsweep = null;
    this.#nextAt = 0;
    this.#running = null;
    this.#unlogged = 0;
    this.#loggedAt = -Infinity;
    this.#failing = 0;
  }

  /** A periodic write is under way. */
  get writing(): boolean {
    return this.#running !== null;
  }

  /** Loads the newest snapshot (a running agent's periodic one during an upgrade), then starts the periodic writes. */
  async start(): Promise<SnapshotLoad> {
    const o = this.#o;
    const r = await loadSnapshot(o.cache, o.path, o.clock, o.logger);
    this.counters.values[SNAPSHOT_COUNTERS.slot.loaded] = r.loaded;
    if (o.intervalMs > 0 && this.#unsweep === null) {
      this.#nextAt = o.clock.now() + o.intervalMs;
      this.#unsweep = o.clock.sweep(this.#tick);
    }
    return r;
  }

  /** Stops the periodic writes, waits for one under way, and writes the final snapshot. */
  async stop(): Promise<SnapshotWrite> {
    this.#unsweep?.();
    this.#unsweep = null;
    if (this.#running !== null) await this.#running;
    return this.#run(false);
  }

  readonly #tick = (now: number): void => {
    if (now < this.#nextAt) return;
    this.#nextAt = now + this.#o.intervalMs;
    if (this.#running !== null) {
      this.counters.values[SNAPSHOT_COUNTERS.slot.skipped]!++;
      this.#o.logger.debug('cache snapshot: the previous write still runs; skipping this one', { path: this.#o.path });
      return;
    }
    void this.#run(true);
  };

  async #run(periodic: boolean): Promise<SnapshotWrite> {
    const p = this.#write(periodic).catch((err: unknown): SnapshotWrite => ({ ok: false, error: errorText(err) }));
    if (periodic) this.#running = p;
    const r = await p;
    if (periodic) this.#running = null;
    const v = this.counters.values;
    const S = SNAPSHOT_COUNTERS.slot;
    if (r.ok) {
      v[S.written]!++;
      v[S.lastEntries] = r.entries;
      v[S.lastWrittenAt] = this.#o.clock.wall() / 1000;
      if (this.#failing > 0) this.#o.logger.info('cache snapshot written again', { path: this.#o.path, failedBefore: this.#failing });
      this.#failing = 0;
      this.#unlogged = 0;
      this.#loggedAt = -Infinity;
      return r;
    }
    v[S.failed]!++;
    this.#failing++;
    if (!periodic) return r; // writeSnapshot has logged it
    const now = this.#o.clock.now();
    if (now - this.#loggedAt >= SNAPSHOT_FAILURE_LOG_MS) {
      this.#o.logger.warn('periodic cache snapshot not written; the previous one, if any, is unchanged', {
        path: this.#o.path, error: r.error, failuresSinceLastLog: this.#unlogged + 1, nextLogInS: SNAPSHOT_FAILURE_LOG_MS / 1000,
      });
      this.#loggedAt = now;
      this.#unlogged = 0;
    } else {
      this.#unlogged++;
    }
    return r;
  }
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
