/**
 * Warm restart: the cache is written to a file at shutdown, and every
 * --cache-snapshot-interval while serving, and read back at start, so a
 * restarted agent answers hits in its first second instead of sending every
 * pod's names upstream again. The periodic writes are what let an upgrade's
 * new agent, started beside a running one (SO_REUSEPORT), start warm: the old
 * one has not written its shutdown snapshot yet when the new one loads.
 *
 * This module is that policy: load at start, write periodically and at
 * shutdown, count and log the writes. The file format is in
 * snapshot-format.ts, the atomic write and the checked read in
 * snapshot-file.ts.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { defineCounters, type Counters } from '../stats/counters.js';
import type { DnsCache } from './cache.js';
import { errorText, loadSnapshot, writeSnapshot, type SnapshotLoad, type SnapshotWrite } from './snapshot-file.js';

/**
 * Records copied per event-loop turn by a periodic write: about 0.5-1.5 ms
 * of copying here (bench/micro/snapshot.ts: 20,000 entries in 20-50 ms on a
 * loaded 2-core machine), short against a hit's latency budget.
 */
export const SNAPSHOT_SLICE_ENTRIES = 512;
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

  /** Loads the newest snapshot, then starts the periodic writes. */
  async start(): Promise<SnapshotLoad> {
    const r = await this.load();
    this.startPeriodic();
    return r;
  }

  /** Loads the newest snapshot (a running agent's periodic one during an upgrade). */
  async load(): Promise<SnapshotLoad> {
    const o = this.#o;
    const r = await loadSnapshot(o.cache, o.path, o.clock, o.logger);
    this.counters.values[SNAPSHOT_COUNTERS.slot.loaded] = r.loaded;
    return r;
  }

  /**
   * Starts the periodic writes. An agent starts them once its whole start
   * has succeeded: a start that fails must leave the file as it found it,
   * and a write due while the rest of a long start ran (a worker, a
   * firewall command) would have replaced it (see cancel()).
   */
  startPeriodic(): void {
    const o = this.#o;
    if (o.intervalMs > 0 && this.#unsweep === null) {
      this.#nextAt = o.clock.now() + o.intervalMs;
      this.#unsweep = o.clock.sweep(this.#tick);
    }
  }

  /** Stops the periodic writes; one under way goes on (stop() and cancel() wait for it). */
  stopPeriodic(): void {
    this.#unsweep?.();
    this.#unsweep = null;
  }

  /** Stops the periodic writes, waits for one under way, and writes the final snapshot. */
  async stop(): Promise<SnapshotWrite> {
    await this.cancel();
    return this.#run(false);
  }

  /**
   * The rollback of a failed start: stops the periodic writes and waits for
   * one under way, but writes nothing. That start only read the file; a
   * final write would replace it with what the failed agent holds, an empty
   * cache when its load refused the file (a clock not yet synced after a
   * reboot), and the next start would have nothing to load.
   */
  async cancel(): Promise<void> {
    this.stopPeriodic();
    if (this.#running !== null) await this.#running;
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
