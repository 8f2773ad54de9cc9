/**
 * The cache snapshot file on disk: writing one atomically and reading one
 * back into the cache (the bytes are snapshot-format.ts's; when to write is
 * snapshot.ts's).
 *
 * A missing file is a cold start. A file that is truncated, corrupt, foreign,
 * of a later version, bigger than the format can frame, or writable by
 * anyone but us is ignored as a whole with one warning: never a crash, never
 * part of a file; it is read in chunks, whatever its size (snapshot-read.ts).
 * Writing goes to a temporary file in the same directory, fsynced, then
 * renamed over the old snapshot, so a reader sees the old file or the new
 * one, never half of one. Several writers (an old and a new agent during an upgrade) may share
 * the path: each rename installs one whole file, the last one wins.
 *
 * A write holds about 1 MiB beyond the cache, whatever the cache's size:
 * records are encoded into one buffer and written to the temporary file each
 * time it fills; the header and the checksum are written last
 * (snapshot-format.ts SnapshotEncoder).
 *
 * A periodic write must not stall hits: the export is copied out of the
 * cache in slices of `sliceEntries` records (snapshot.ts:
 * SNAPSHOT_SLICE_ENTRIES), one slice per event-loop turn (setImmediate:
 * pending queries are read in between), and the file written with async fs.
 * Between slices the cache goes on changing, so a periodic snapshot is a
 * fuzzy copy: the walk follows the entries' order taken when it began (not
 * the LRU links, which a hit or an eviction rewires under it), an entry is
 * written as it is when the walk reaches it, one removed by then is missed,
 * the entries stored meanwhile come last, and a key refreshed after the walk
 * passed it comes twice (the load keeps the newer). Each record is aged from
 * the export's start, so a record replaced meanwhile is written as older
 * than it is: it expires early after a restart, never late. The shutdown
 * write runs after the listeners closed, without pauses.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { DnsCache } from './cache.js';
import type { RestoreCounts } from './revive.js';
import type { CacheRecord } from './entry.js';
import { SNAPSHOT_HEADER_LEN, SnapshotEncoder, type SnapshotError, type SnapshotRejection } from './snapshot-format.js';
import { SnapshotReader, errorText } from './snapshot-read.js';

export { errorText };

/**
 * Room past the cache's byte budget for the header and trailer. A record
 * costs 17 bytes plus its key and answer on disk, and the cache charges the
 * same entry its key and answer plus at least 72 bytes (store.ts: record
 * header, TTL offsets, index overhead), so a snapshot of a full cache stays
 * inside the budget; a bigger one was written by a cache with a larger
 * --cache-memory (a rollout lowering it), and only its most recent entries
 * fit this one. Said in the log; the file is read all the same.
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
  const slice = opts.sliceEntries !== undefined && opts.sliceEntries > 0 ? opts.sliceEntries : 0;
  // A name no other writer picks, even one in another container that is pid 1 too.
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  let fh: FileHandle | undefined;
  let entries: number;
  let bytes = 0;
  try {
    const writtenAt = clock.wall();
    // Owner-only: the names a node's pods look up are nobody else's business.
    fh = await open(tmp, 'wx', 0o600);
    // Inside the try: an export that fails (a body past the format's u32 length) is a failed write, not a crash.
    const enc = new SnapshotEncoder();
    bytes = await writeBody(fh, cache.export(t0), enc, slice);
    const header = enc.header(writtenAt);
    await writeAll(fh, header, 0);
    await writeAll(fh, enc.trailer(header), bytes);
    bytes += 4;
    entries = enc.count;
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
 * Encodes `records` and writes them to `fh` after the header's room as the
 * encoder's buffer fills (memory: that buffer, not the file). With `slice`
 * > 0 (a periodic write while serving), lets the event loop run every
 * `slice` records. The cache changes between turns; its export follows the
 * order it took up front, so it ends after the entries there were (and those
 * stored meanwhile), never early (DnsCache.export). Returns where the body
 * ends.
 */
async function writeBody(fh: FileHandle, records: Iterable<CacheRecord>, enc: SnapshotEncoder, slice: number): Promise<number> {
  let pos = SNAPSHOT_HEADER_LEN;
  let n = 0;
  for (const r of records) {
    if (!enc.add(r)) {
      pos = await writeAll(fh, enc.drain(), pos);
      enc.add(r);
    }
    if (slice > 0 && ++n % slice === 0) await nextTurn();
  }
  return writeAll(fh, enc.drain(), pos);
}

/** Writes `buf` at `pos`; FileHandle.write may write less than asked (a file size limit reached midway): go on until all is written or it throws. Returns where it ended. */
async function writeAll(fh: FileHandle, buf: Buffer, pos: number): Promise<number> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, pos + off);
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
    off += bytesWritten;
  }
  return pos + off;
}

/**
 * Loads the snapshot at `path` into `cache`, each entry aged by the wall-clock
 * time since it was written. Call it before the listeners start. Never
 * throws; a file that cannot be trusted is ignored whole, with one warning.
 * The file is read in chunks (snapshot-read.ts), so one written by a cache
 * with a larger --cache-memory costs no more memory than any other: the
 * cache keeps its most recent entries that fit.
 */
export async function loadSnapshot(cache: DnsCache, path: string, clock: Clock, logger: Logger): Promise<SnapshotLoad> {
  const t0 = clock.now();
  const file = await SnapshotReader.open(path);
  if (!(file instanceof SnapshotReader)) return rejected(file, path, logger);
  try {
    const bad = await file.check();
    if (bad !== undefined) return rejected(bad, path, logger);
    const elapsed = clock.wall() - file.header.writtenAt;
    if (elapsed < -SNAPSHOT_FUTURE_TOLERANCE_MS) {
      return rejected({ reason: 'clock', detail: `written ${Math.round(-elapsed)} ms in the future; the wall clock stepped back` }, path, logger);
    }
    if (file.size > cache.maxBytes + SNAPSHOT_SLACK_BYTES) {
      logger.info('cache snapshot of a cache with a larger --cache-memory: the most recent entries that fit are loaded', {
        path, bytes: file.size, maxBytes: cache.maxBytes,
      });
    }
    const downMs = elapsed > 0 ? elapsed : 0;
    const now = clock.now();
    const counts: RestoreCounts = { restored: 0, expired: 0, invalid: 0, present: 0, noRoom: 0 };
    const changed = await file.records((records) => addCounts(counts, cache.restore(aged(records, downMs), now)));
    if (changed !== undefined) {
      // Checked whole, then different when read again (rewritten in place): what went in may not be one file's.
      cache.clear();
      return rejected(changed, path, logger);
    }
    logger.info('cache snapshot loaded', {
      path, loaded: counts.restored, expired: counts.expired, invalid: counts.invalid, noRoom: counts.noRoom, present: counts.present,
      snapshotAgeMs: Math.round(downMs), ms: Math.round(clock.now() - t0),
    });
    return { loaded: counts.restored, dropped: file.header.count - counts.restored, counts };
  } finally {
    await file.close();
  }
}

/** Sums restores of one file's chunks: an eviction in a later chunk takes back an earlier chunk's restored entry. */
function addCounts(into: RestoreCounts, c: RestoreCounts): void {
  into.restored += c.restored;
  into.expired += c.expired;
  into.invalid += c.invalid;
  into.present += c.present;
  into.noRoom += c.noRoom;
}

function* aged(records: readonly CacheRecord[], downMs: number): Generator<CacheRecord> {
  for (const r of records) yield { ...r, ageMs: r.ageMs + downMs };
}

function rejected(e: SnapshotError, path: string, logger: Logger): SnapshotLoad {
  if (e.reason === 'missing') logger.info('no cache snapshot; starting cold', { path });
  else logger.warn('cache snapshot ignored; starting cold', { path, reason: e.reason, detail: e.detail });
  return { loaded: 0, dropped: 0, reason: e.reason };
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
