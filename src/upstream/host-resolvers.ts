/**
 * The external-name transport: the node's resolvers (from resolv.conf) or a
 * stub domain's servers, queried the way glibc's res_send does it:
 *
 *   for try in 0 .. attempts*servers-1:  server = (start + try) % servers
 *     UDP (fresh socket, random id and port) ── TC=1 ──► same server over TCP
 *     timeout / ICMP error / SERVFAIL / REFUSED ──► next server
 *
 * `start` is 0, or round-robin per query with `options rotate`. Everything is
 * bounded by the exchange's deadline. One sweep timer expires attempts.
 *
 * Differences from glibc, on purpose: the per-try timeout is fixed rather than
 * doubling per round (our caller's deadline is the real bound), and when every
 * server said SERVFAIL/REFUSED we pass that answer on instead of failing, so
 * the client sees the upstream's own rcode.
 */
import net from 'node:net';
import { systemClock, type Clock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import { FLAG_TC, OFF_FLAGS, RCODE_MASK, Rcode } from '../dns/constants.js';
import { UpstreamHealth } from './health.js';
import { Lifecycle } from './lifecycle.js';
import { settle } from './settle.js';
import { QueryAttempt, type AttemptEvents } from './udp-client.js';
import type { ServerAddress, Upstream, UpstreamExchange, UpstreamFailure } from './types.js';

export interface HostResolversOptions {
  servers: readonly ServerAddress[];
  /** Per try (glibc `options timeout:`, default 2 s here; glibc's own default is 5 s). */
  attemptTimeoutMs?: number;
  /** Rounds over the server list (glibc `options attempts:`, default 2). */
  attempts?: number;
  /** glibc `options rotate`. */
  rotate?: boolean;
  clock?: Clock;
  logger?: Logger;
  name?: string;
}

export interface HostResolversStats {
  /** Queries written (UDP datagrams and TCP retries). */
  sent: number;
  answered: number;
  /** Exchanges rejected with 'timeout'. */
  timeouts: number;
  /** Exchanges rejected with 'network'. */
  networkErrors: number;
  /** Datagrams or frames ignored for a wrong source, id or question. */
  spoofed: number;
  tcpFallbacks: number;
  /** Moves to another server after a timeout, an error or SERVFAIL/REFUSED. */
  failovers: number;
  attemptTimeouts: number;
  attemptErrors: number;
  /** SERVFAIL/REFUSED answers seen (passed on only when no other server was left). */
  badRcodes: number;
}

const SWEEP_MS = 50;

class Job {
  readonly ex: UpstreamExchange;
  readonly start: number;
  readonly total: number;
  tries: number;
  lastServer: number;
  attempt: QueryAttempt<Job> | null;
  lastFailure: UpstreamFailure;
  /** A SERVFAIL/REFUSED answer kept in case no other server does better. */
  badAnswer: Buffer | null;
  /** Servers that answered SERVFAIL/REFUSED; not asked again for this query. */
  badServers: Set<number> | null;
  done: boolean;
  constructor(ex: UpstreamExchange, start: number, total: number) {
    this.ex = ex;
    this.start = start;
    this.total = total;
    this.tries = 0;
    this.lastServer = -1;
    this.attempt = null;
    this.lastFailure = 'timeout';
    this.badAnswer = null;
    this.badServers = null;
    this.done = false;
  }
}

export class HostResolvers implements Upstream {
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly stats: HostResolversStats;
  readonly #servers: readonly ServerAddress[];
  readonly #attemptTimeoutMs: number;
  readonly #attempts: number;
  readonly #rotate: boolean;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #active: Set<Job>;
  /** Bound once: every attempt reports through the same object. */
  readonly #events: AttemptEvents<Job>;
  #rr: number;
  readonly #life: Lifecycle;
  #sweep: NodeJS.Timeout | null;

  constructor(opts: HostResolversOptions) {
    // A host name would be resolved by the system resolver on every try: maybe through us.
    for (const s of opts.servers) {
      if (net.isIP(s.host) === 0) throw new Error(`HostResolvers: server must be an IP address, got "${s.host}"`);
    }
    this.#servers = [...opts.servers];
    this.name = opts.name ?? 'host-resolvers';
    this.#attemptTimeoutMs = Math.max(1, opts.attemptTimeoutMs ?? 2000);
    this.#attempts = Math.max(1, opts.attempts ?? 2);
    this.#rotate = opts.rotate ?? false;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger;
    this.health = new UpstreamHealth(this.name, this.#log, this.#clock.now());
    this.stats = {
      sent: 0, answered: 0, timeouts: 0, networkErrors: 0, spoofed: 0, tcpFallbacks: 0,
      failovers: 0, attemptTimeouts: 0, attemptErrors: 0, badRcodes: 0,
    };
    this.#active = new Set();
    this.#events = {
      onSent: () => {
        this.stats.sent++;
      },
      onSpoofed: () => {
        this.stats.spoofed++;
      },
      onAnswer: (attempt, answer) => this.#onAnswer(attempt, answer),
      onError: (attempt, code) => this.#onError(attempt, code),
    };
    this.#rr = 0;
    this.#life = new Lifecycle();
    this.#sweep = null;
  }

  /** Exchanges not yet completed. */
  get inFlight(): number {
    return this.#active.size;
  }

  send(ex: UpstreamExchange): void {
    if (!this.#life.running) {
      settle(ex, null, 'closed', this.#log);
      return;
    }
    const n = this.#servers.length;
    if (n === 0) {
      this.stats.networkErrors++;
      settle(ex, null, 'network', this.#log);
      return;
    }
    const start = this.#rotate ? this.#rr++ % n : 0;
    if (this.#rr >= n) this.#rr = 0;
    const job = new Job(ex, start, this.#attempts * n);
    this.#active.add(job);
    this.#next(job, this.#clock.now());
  }

  /** In-flight exchanges run on until answered or past their deadline; new ones are rejected with 'closed'. */
  close(): Promise<void> {
    if (!this.#life.beginClose()) return this.#life.done;
    this.#maybeFinishClose();
    return this.#life.done;
  }

  #onAnswer(attempt: QueryAttempt<Job>, answer: Buffer): void {
    const job = attempt.owner;
    if (job.done || job.attempt !== attempt) return;
    job.attempt = null;
    const flags = (answer[OFF_FLAGS]! << 8) | answer[OFF_FLAGS + 1]!;
    if ((flags & FLAG_TC) !== 0 && attempt.transport === 'udp') {
      // RFC 7766 5: a truncated UDP answer is retried over TCP at the same server.
      this.stats.tcpFallbacks++;
      this.#start(job, 'tcp', attempt.serverIndex, this.#clock.now());
      return;
    }
    const rcode = flags & RCODE_MASK;
    if (rcode === Rcode.SERVFAIL || rcode === Rcode.REFUSED) {
      // glibc moves on to the next server: this one may be lame or refusing us while another is fine.
      this.stats.badRcodes++;
      job.badAnswer = answer;
      (job.badServers ??= new Set()).add(attempt.serverIndex);
      this.#next(job, this.#clock.now());
      return;
    }
    this.stats.answered++;
    this.#finish(job, answer, 'network');
  }

  #onError(attempt: QueryAttempt<Job>, code: string): void {
    const job = attempt.owner;
    if (job.done || job.attempt !== attempt) return;
    this.stats.attemptErrors++;
    this.#log.debug('upstream attempt failed', { upstream: this.name, server: attempt.server.host, code });
    job.attempt = null;
    job.lastFailure = 'network';
    this.#next(job, this.#clock.now());
  }

  /** Starts the next try, or completes the job when tries or time have run out. */
  #next(job: Job, now: number): void {
    const n = this.#servers.length;
    while (job.tries < job.total && now < job.ex.deadline) {
      const idx = (job.start + job.tries) % n;
      job.tries++;
      if (job.badServers !== null && job.badServers.has(idx)) continue;
      if (job.lastServer >= 0 && job.lastServer !== idx) this.stats.failovers++;
      this.#start(job, 'udp', idx, now);
      return;
    }
    if (job.badAnswer !== null) {
      this.stats.answered++;
      this.#finish(job, job.badAnswer, 'network');
      return;
    }
    this.#finish(job, null, now >= job.ex.deadline ? 'timeout' : job.lastFailure);
  }

  #start(job: Job, transport: 'udp' | 'tcp', idx: number, now: number): void {
    job.lastServer = idx;
    const deadline = Math.min(now + this.#attemptTimeoutMs, job.ex.deadline);
    job.attempt = new QueryAttempt(job, transport, this.#servers[idx]!, idx, job.ex.query, deadline, this.#events);
    this.#armSweep();
  }

  #finish(job: Job, answer: Buffer | null, reason: UpstreamFailure): void {
    if (job.done) return;
    job.done = true;
    if (job.attempt !== null) job.attempt.finish();
    job.attempt = null;
    this.#active.delete(job);
    if (answer === null) {
      if (reason === 'timeout') this.stats.timeouts++;
      else if (reason === 'network') this.stats.networkErrors++;
      if (reason === 'timeout' || reason === 'network') this.health.record(reason, this.#clock.now());
    } else {
      this.health.record(answer === job.badAnswer ? 'servfail' : 'answered', this.#clock.now());
    }
    settle(job.ex, answer, reason, this.#log);
    this.#maybeFinishClose();
  }

  #armSweep(): void {
    if (this.#sweep !== null) return;
    this.#sweep = setInterval(() => this.#tick(), SWEEP_MS);
    this.#sweep.unref();
  }

  #tick(): void {
    const now = this.#clock.now();
    for (const job of this.#active) {
      const a = job.attempt;
      if (a === null || now < a.deadline) continue;
      this.stats.attemptTimeouts++;
      a.finish();
      job.attempt = null;
      job.lastFailure = 'timeout';
      this.#next(job, now);
    }
    if (this.#active.size === 0 && this.#sweep !== null) {
      clearInterval(this.#sweep);
      this.#sweep = null;
    }
  }

  #maybeFinishClose(): void {
    if (!this.#life.closing || this.#active.size > 0) return;
    if (this.#sweep !== null) clearInterval(this.#sweep);
    this.#sweep = null;
    this.#life.finish();
  }
}
