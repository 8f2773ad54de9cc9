/**
 * Reading a snapshot file in bounded memory (snapshot-file.ts loadSnapshot
 * drives it). The file is read twice, a chunk at a time: first checked whole
 * (its checksum and every record's framing), so a file that is not whole and
 * ours is refused before anything reaches the cache; then its records are
 * handed over a chunk at a time. So a snapshot written by a cache with a
 * larger --cache-memory is read like any other without holding it in
 * memory: its records go back least recent first, and the cache's own
 * evictions keep the most recent that fit.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { CacheRecord } from './entry.js';
import {
  RecordParser, SNAPSHOT_HEADER_LEN, SNAPSHOT_MAX_BYTES, SNAPSHOT_MAX_RECORD, bodyEnd, headerValues, readHeader, snapshotError,
  type SnapshotError, type SnapshotHeader,
} from './snapshot-format.js';

/** Body bytes read per step: what the reader holds besides one record cut by a chunk's end. */
const CHUNK_BYTES = 1 << 20;

export class SnapshotReader {
  readonly header: SnapshotHeader;
  /** The file's size in bytes. */
  readonly size: number;
  readonly #fh: FileHandle;
  /** One chunk, after the start of a record the previous chunk cut. */
  readonly #buf: Buffer;

  private constructor(fh: FileHandle, header: SnapshotHeader, size: number) {
    this.#fh = fh;
    this.header = header;
    this.size = size;
    this.#buf = Buffer.allocUnsafe(Math.min(SNAPSHOT_MAX_RECORD + CHUNK_BYTES, size));
  }

  /**
   * The file at `path`, when it is a regular file only we can write, of a
   * size a snapshot can have, with a header that frames it. Never throws.
   */
  static async open(path: string): Promise<SnapshotReader | SnapshotError> {
    let fh: FileHandle | undefined;
    try {
      // O_NONBLOCK: a FIFO left at the path would block a plain open until a writer came, and the agent
      // loads before it serves; so it opens at once and is refused below. No effect on a regular file.
      fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const st = await fh.stat();
      if (!st.isFile()) return snapshotError('foreign', 'not a regular file');
      // Whoever can write the file chooses the answers pods get: only we may (we write it 0600).
      if ((st.mode & 0o022) !== 0) return snapshotError('unsafe', `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
      const uid = process.getuid?.();
      if (uid !== undefined && st.uid !== uid) return snapshotError('unsafe', `owned by uid ${st.uid}, not ${uid}`);
      if (st.size > SNAPSHOT_MAX_BYTES) return snapshotError('too-large', `${st.size} bytes, more than a snapshot can frame (${SNAPSHOT_MAX_BYTES})`);
      const head = Buffer.alloc(Math.min(st.size, SNAPSHOT_HEADER_LEN));
      const got = await readAt(fh, head, 0, head.length, 0);
      const header = readHeader(head.subarray(0, got), got < head.length ? got : st.size);
      if ('reason' in header) return header;
      const reader = new SnapshotReader(fh, header, st.size);
      fh = undefined;
      return reader;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return snapshotError('missing', 'no file');
      return snapshotError('unreadable', errorText(err));
    } finally {
      if (fh !== undefined) await fh.close().catch(() => {});
    }
  }

  /** The first read: the checksum and every record's framing, keeping no record. */
  check(): Promise<SnapshotError | undefined> {
    return this.#walk(null);
  }

  /**
   * The second read: the records in file order (least recent first), to
   * `each` a chunk of them at a time. They are views into a buffer the next
   * chunk overwrites, so `each` must be done with them when it returns.
   * An error here means the file changed since check(), after some records
   * were handed over.
   */
  records(each: (records: CacheRecord[]) => void): Promise<SnapshotError | undefined> {
    return this.#walk(each);
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
  }

  async #walk(each: ((records: CacheRecord[]) => void) | null): Promise<SnapshotError | undefined> {
    const h = this.header;
    const fh = this.#fh;
    const buf = this.#buf;
    try {
      if ((await readAt(fh, buf, 0, SNAPSHOT_HEADER_LEN, 0)) < SNAPSHOT_HEADER_LEN) return shrank();
      let crc = crc32(buf.subarray(0, SNAPSHOT_HEADER_LEN));
      const end = bodyEnd(h);
      const parser = new RecordParser(h);
      const records: CacheRecord[] = [];
      // The checksum is reported first, so after a framing error the file is still read to the end for it.
      let framing = headerValues(h);
      let kept = 0;
      for (let pos = SNAPSHOT_HEADER_LEN; pos < end; ) {
        const n = Math.min(CHUNK_BYTES, end - pos);
        if ((await readAt(fh, buf, kept, n, pos)) < n) return shrank();
        crc = crc32(buf.subarray(kept, kept + n), crc);
        pos += n;
        const filled = kept + n;
        kept = 0;
        if (framing !== undefined) continue;
        records.length = 0;
        const used = parser.parse(buf, 0, filled, each === null ? null : records);
        if (typeof used !== 'number') {
          framing = used;
          continue;
        }
        if (each !== null && records.length > 0) each(records);
        kept = filled - used;
        buf.copyWithin(0, used, filled);
      }
      // The trailer and one byte more, to notice a file that grew since it was opened.
      const tail = Buffer.alloc(5);
      const got = await readAt(fh, tail, 0, tail.length, end);
      if (got < 4) return shrank();
      if (got > 4) return snapshotError('corrupt', 'the file grew while being read');
      if (crc !== tail.readUInt32BE(0)) return snapshotError('corrupt', 'checksum mismatch');
      return framing ?? parser.finish();
    } catch (err) {
      return snapshotError('unreadable', errorText(err));
    }
  }
}

function shrank(): SnapshotError {
  return snapshotError('truncated', 'the file shrank while being read');
}

/** Reads `len` bytes at file position `pos` into buf[off...]; fewer only at the end of the file. Returns how many. */
async function readAt(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, off + got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
