/**
 * A TcpPool's queue (tcp-pool.ts): jobs waiting for room on a connection, in
 * order (a ring-buffer deque, fifo.ts). A job cancelled while it waits stays
 * in place and is skipped where it comes to the head, or dropped by the
 * sweep's retain(): cancel() is O(1) where taking it out would walk the
 * queue (DNS over TLS cancels the other servers' tries on every answer).
 * `length` counts only jobs not cancelled: what the pool's limit and
 * nodelocal_upstream_queued see.
 */
import { Fifo } from './fifo.js';
import type { Job } from './tcp-conn.js';

export class JobQueue {
  readonly #fifo = new Fifo<Job>(64);
  /** Cancelled jobs still in #fifo. */
  #cancelled = 0;

  get length(): number {
    return this.#fifo.length - this.#cancelled;
  }

  push(job: Job): void {
    job.queued = true;
    this.#fifo.push(job);
  }

  /** Puts a job at the head: for work that was already waiting longer than everything queued. */
  unshift(job: Job): void {
    job.queued = true;
    this.#fifo.unshift(job);
  }

  /** The first job not cancelled. */
  peek(): Job | undefined {
    this.#skip();
    return this.#fifo.peek();
  }

  shift(): Job | undefined {
    this.#skip();
    const job = this.#take();
    this.#dropIfOnlyCancelled();
    return job;
  }

  /** `job` was just marked done by a cancel: true when it waits here (it no longer counts, and is skipped). */
  cancel(job: Job): boolean {
    if (!job.queued) return false;
    this.#cancelled++;
    this.#dropIfOnlyCancelled();
    return true;
  }

  /** Keeps the jobs not cancelled for which `keep` is true, in order. */
  retain(keep: (job: Job) => boolean): void {
    this.#fifo.retain((job) => {
      if (!job.done && keep(job)) return true;
      job.queued = false;
      return false;
    });
    this.#cancelled = 0;
  }

  /** Empties the queue, returning the jobs not cancelled, in order. */
  drain(): Job[] {
    const out: Job[] = [];
    for (let job = this.#take(); job !== undefined; job = this.#take()) if (!job.done) out.push(job);
    this.#cancelled = 0;
    return out;
  }

  #take(): Job | undefined {
    const job = this.#fifo.shift();
    if (job !== undefined) job.queued = false;
    return job;
  }

  /** None left but cancelled ones: they go now, not on the queue's next use (they hold their exchanges). */
  #dropIfOnlyCancelled(): void {
    if (this.#cancelled > 0 && this.length === 0) this.drain();
  }

  /** Drops cancelled jobs at the head (only a cancel makes a waiting job done). */
  #skip(): void {
    while (this.#cancelled > 0 && this.#fifo.peek()?.done === true) {
      this.#take();
      this.#cancelled--;
    }
  }
}
