/**
 * The write side of a TcpPool (tcp-pool.ts): a query is framed straight into
 * its connection's staging buffer (no copy of its own; tcp-conn.ts), and
 * every connection written to in this event-loop turn is flushed once, by
 * one setImmediate for the whole pool: the misses that one poll phase read
 * (libuv reads many datagrams per wake-up) leave in one write() per
 * connection, not one each. Nagle is off, so each flush goes out at once.
 */
import { MISS_TRACE, traceMarks, traceNow, traceRecord } from '../miss-trace.js';
import type { Conn, Job } from './tcp-conn.js';

export class WriteBatch {
  /** Connections with frames staged since the last flush; the flush is scheduled while this is non-empty. */
  readonly #dirty: Conn[];
  /** Under NODELOCAL_MISS_TRACE only: the jobs staged since the last flush. */
  readonly #traced: Job[];
  /** Queries written by a flush (coredns_forward_requests_total counts writes, not stagings a closed connection dropped). */
  readonly #onWritten: (queries: number) => void;

  constructor(onWritten: (queries: number) => void) {
    this.#dirty = [];
    this.#traced = [];
    this.#onWritten = onWritten;
  }

  /** `c` has its first frame staged since the last flush: it is written at the end of this turn. */
  add(c: Conn): void {
    if (this.#dirty.length === 0) setImmediate(this.#flush);
    this.#dirty.push(c);
  }

  /** Under NODELOCAL_MISS_TRACE only: `job` was staged now. */
  traceStaged(job: Job): void {
    job.tracedAt = traceNow();
    this.#traced.push(job);
  }

  /** Bound once: one write per connection for everything staged this turn. */
  readonly #flush = (): void => {
    const dirty = this.#dirty;
    let written = 0;
    // Index loop: a write error surfaces later as an event, never re-entrantly, so the list only shrinks here.
    for (let i = 0; i < dirty.length; i++) {
      const c = dirty[i]!;
      // A connection closed meanwhile dropped its staging; its jobs were re-queued or failed by the pool's #setClosed.
      if (c.state !== 'open' && c.state !== 'draining') continue;
      if (!MISS_TRACE) written += c.flush();
      else {
        const at = traceNow();
        written += c.flush();
        traceRecord('write.call', traceNow() - at);
      }
    }
    dirty.length = 0;
    if (written > 0) this.#onWritten(written);
    if (MISS_TRACE) this.#traceFlush();
  };

  #traceFlush(): void {
    const now = traceNow();
    for (const job of this.#traced) {
      traceRecord('stage.write', now - job.tracedAt);
      job.tracedAt = now;
    }
    this.#traced.length = 0;
    if (traceMarks.reportAt > 0) traceRecord('report.write', now - traceMarks.reportAt);
    traceMarks.reportAt = 0;
  }
}
