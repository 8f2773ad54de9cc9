/**
 * External names over DNS over TLS (RFC 7858): one TcpPool per server
 * (persistent connections, queries pipelined, ids per connection, deadlines,
 * backoff, health), each opening its connections through a TlsConnector, and
 * failover between the servers in the order given, as glibc (and the host
 * resolvers) do with resolv.conf:
 *
 *   start = first healthy server (else the first)
 *   try k: server (start + k) % n, sent with the exchange's whole deadline
 *     answer (from any try still open) ─► done; the other tries are cancelled
 *     SERVFAIL / REFUSED ───────────────► kept; next server (passed on if no server does better)
 *     no answer within tryTimeout ──────► next server; this try stays open (as the host resolvers do)
 *     connection lost ──────────────────► next server
 *     pool closed (shutdown, reload) ───► no next server; the tries still open finish by the deadline
 *
 * A failing server is probed (". NS", as CoreDNS forward's health check) once
 * a second until it answers, so the first server takes the traffic back as
 * soon as it works again.
 */
import { systemClock, type Clock } from '../clock.js';
import { padQuery } from '../dns/build.js';
import { OFF_FLAGS, QType, RCODE_MASK } from '../dns/constants.js';
import { silentLogger, type Logger } from '../log.js';
import type { Counters } from '../stats/counters.js';
import type { ForwardDurations } from './forward-durations.js';
import { UpstreamHealth, serverFailed } from './health.js';
import { HealthProbe, probeQuery, type ProbeCounter } from './probe.js';
import { settle } from './settle.js';
import { TcpPool } from './tcp-pool.js';
import type { Job as PoolJob } from './tcp-conn.js';
import type { TcpPoolCounter } from './tcp-pool-counters.js';
import { formatTlsServer, type TlsServer } from './tls-address.js';
import { TlsConnector } from './tls-connect.js';
import type { Upstream, UpstreamExchange, UpstreamFailure } from './types.js';

export interface TlsResolversOptions {
  servers: readonly TlsServer[];
  /** PEM CA certificates replacing the default trust store; undefined = Node's bundled Mozilla roots. */
  ca?: readonly (string | Buffer)[];
  /** One try's deadline when another server is left to try. */
  attemptTimeoutMs: number;
  /** Persistent connections per server. */
  connections?: number;
  maxInFlightPerConnection?: number;
  rotateAfterQueries?: number;
  rotateAfterMs?: number;
  /** A TCP connect plus the TLS handshake (two round trips with TLS 1.3, three with 1.2). */
  connectTimeoutMs?: number;
  /** The counter block of each server's pool, by its name (the same block across reloads). */
  counters?: (name: string) => Counters<TcpPoolCounter>;
  /** Each server's coredns_forward_request_duration_seconds (none when omitted). */
  durations?: (server: TlsServer) => ForwardDurations;
  /** Each server's coredns_forward_healthcheck_failures_total (not counted when omitted). */
  probeCounters?: (server: TlsServer) => Counters<ProbeCounter>;
  clock?: Clock;
  logger?: Logger;
}

/** One server: its pool, its connector and the probe that notices its recovery. */
export interface TlsServerUpstream {
  readonly server: TlsServer;
  readonly pool: TcpPool;
  readonly connector: TlsConnector;
  readonly probe: HealthProbe;
}

/** One exchange across its tries. */
class Job {
  readonly ex: UpstreamExchange;
  /** ex.query padded (RFC 8467), once for every try. */
  readonly query: Buffer;
  readonly start: number;
  tries: number;
  /** The newest try: its expiry starts the next. Null once no server is left to move to. */
  current: Try | null;
  /** Every try still waiting for its server, `current` included. */
  readonly live: Try[];
  badAnswer: Buffer | null;
  /** How the last try that failed did; null while none has. */
  lastFailure: UpstreamFailure | null;
  done: boolean;
  constructor(ex: UpstreamExchange, start: number) {
    this.ex = ex;
    this.query = padQuery(ex.query);
    this.start = start;
    this.tries = 0;
    this.current = null;
    this.live = [];
    this.badAnswer = null;
    this.lastFailure = null;
    this.done = false;
  }
}

/** One try: the exchange a pool sees, with the whole exchange's deadline. A class rather than closures: its callbacks are methods. */
class Try implements UpstreamExchange {
  readonly query: Buffer;
  readonly deadline: number;
  readonly job: Job;
  readonly server: TlsServerUpstream;
  /** When the next server is asked if this one has not answered (the exchange's deadline for the last try). */
  readonly expiresAt: number;
  /** The pool's record of it, for cancel(). */
  pending: PoolJob | null;
  readonly #owner: TlsResolvers;
  constructor(job: Job, server: TlsServerUpstream, expiresAt: number, owner: TlsResolvers) {
    this.query = job.query;
    this.deadline = job.ex.deadline;
    this.job = job;
    this.server = server;
    this.expiresAt = expiresAt;
    this.pending = null;
    this.#owner = owner;
  }
  resolve(answer: Buffer): void {
    this.#owner.onAnswer(this, answer);
  }
  reject(reason: UpstreamFailure): void {
    this.#owner.onFailure(this, reason);
  }
}

export class TlsResolvers implements Upstream {
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly servers: readonly TlsServerUpstream[];
  /** Brings the aggregate health back once any server answers again, client traffic or not. */
  readonly #probe: HealthProbe;
  readonly #attemptTimeoutMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  /** Jobs whose current try has another server to move to when it expires. */
  readonly #waiting: Set<Job>;
  /** Unregisters our sweep from the clock's shared timer; null while no job is waiting. */
  #sweep: (() => void) | null;
  #failovers: number;

  constructor(opts: TlsResolversOptions) {
    if (opts.servers.length === 0) throw new Error('TlsResolvers: no servers');
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger;
    this.#attemptTimeoutMs = Math.max(1, opts.attemptTimeoutMs);
    this.name = 'tls-resolvers';
    this.health = new UpstreamHealth(this.name, this.#log, this.#clock.now());
    this.#waiting = new Set();
    this.#sweep = null;
    this.#failovers = 0;
    // CoreDNS forward's health check: ". IN NS", which every recursive resolver answers from its cache.
    const rootNs = probeQuery('.', QType.NS);
    this.servers = opts.servers.map((server) => {
      const name = formatTlsServer(server);
      const connector = new TlsConnector(server, opts.ca, this.#log);
      const pool = new TcpPool({
        server,
        name,
        kind: 'dns-over-tls server',
        connect: connector.connect,
        ...(opts.connections !== undefined ? { connections: opts.connections } : {}),
        ...(opts.maxInFlightPerConnection !== undefined ? { maxInFlightPerConnection: opts.maxInFlightPerConnection } : {}),
        ...(opts.rotateAfterQueries !== undefined ? { rotateAfterQueries: opts.rotateAfterQueries } : {}),
        ...(opts.rotateAfterMs !== undefined ? { rotateAfterMs: opts.rotateAfterMs } : {}),
        ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
        ...(opts.counters !== undefined ? { counters: opts.counters(name) } : {}),
        durations: opts.durations?.(server) ?? null,
        // As with the host resolvers: a SERVFAIL moves the exchange on but says nothing of the server's health (one
        // lame domain asked three times would otherwise send every name to the next server).
        servfailCounts: () => false,
        // A resolver answers out of order (RFC 7766), cold names in hundreds of ms: nothing waits behind a slow one.
        stallMs: null,
        clock: this.#clock,
        logger: this.#log,
      });
      return { server, pool, connector, probe: new HealthProbe(pool, this.#clock, rootNs, opts.probeCounters?.(server) ?? null) };
    });
    this.#probe = new HealthProbe(this, this.#clock, rootNs);
  }

  /** Moves to another server after a try failed or expired (since start). */
  get failovers(): number {
    return this.#failovers;
  }

  send(ex: UpstreamExchange): void {
    const n = this.servers.length;
    let start = 0;
    while (start < n && !this.servers[start]!.pool.health.healthy) start++;
    if (start === n) start = 0;
    this.#next(new Job(ex, start), this.#clock.now());
  }

  close(): Promise<void> {
    this.#probe.stop();
    for (const s of this.servers) s.probe.stop();
    return Promise.all(this.servers.map((s) => s.pool.close())).then(() => undefined);
  }

  abort(): void {
    this.#probe.stop();
    for (const s of this.servers) {
      s.probe.stop();
      s.pool.abort();
    }
  }

  /** @internal Try's callback. */
  onAnswer(t: Try, answer: Buffer): void {
    const job = t.job;
    if (job.done) return;
    const rcode = answer[OFF_FLAGS + 1]! & RCODE_MASK;
    if (!serverFailed(rcode)) {
      this.#finish(job, answer, 'network', t);
      return;
    }
    // Another server may do better; this answer is passed on if none does.
    job.badAnswer = answer;
    this.#ended(t);
  }

  /** @internal Try's callback. */
  onFailure(t: Try, reason: UpstreamFailure): void {
    const job = t.job;
    if (job.done) return;
    // A full queue says nothing of a server: it must not hide how an earlier try failed (a network error, a timeout).
    if (reason !== 'overloaded' || job.lastFailure === null) job.lastFailure = reason;
    // Shutting down: no other server changes that, but tries still open finish by their deadline (close()'s contract).
    // ('overloaded', one pool's queue full, does move on: another may have room.)
    if (reason === 'closed') {
      job.current = null;
      this.#waiting.delete(job);
    }
    this.#ended(t);
  }

  /** `t` ended without a good answer: the next server now if it was the newest try, else wait on the others. */
  #ended(t: Try): void {
    const job = t.job;
    const i = job.live.indexOf(t);
    if (i >= 0) job.live.splice(i, 1);
    if (job.current === t) this.#next(job, this.#clock.now());
    else if (job.current === null && job.live.length === 0) this.#giveUp(job, this.#clock.now());
  }

  /**
   * Asks the next server, keeping the tries before it open: over TCP a query
   * is not lost the way a datagram is, and a server past the try timeout may
   * still be working on it (a cold recursive lookup), so its answer is taken
   * whenever it comes before the exchange's deadline.
   */
  #next(job: Job, now: number): void {
    const n = this.servers.length;
    if (job.tries < n && now < job.ex.deadline) {
      const server = this.servers[(job.start + job.tries) % n]!;
      if (job.tries > 0) this.#failovers++;
      job.tries++;
      const last = job.tries === n;
      const t = new Try(job, server, last ? job.ex.deadline : Math.min(now + this.#attemptTimeoutMs, job.ex.deadline), this);
      job.current = last ? null : t;
      job.live.push(t);
      if (last) this.#waiting.delete(job);
      else this.#wait(job);
      // May complete synchronously (a pool that knows its server is unreachable fails at once): then the next try starts there.
      const pending = server.pool.send(t);
      if (job.live.includes(t)) t.pending = pending;
      return;
    }
    job.current = null;
    this.#waiting.delete(job);
    if (job.live.length === 0) this.#giveUp(job, now);
  }

  #giveUp(job: Job, now: number): void {
    if (job.badAnswer !== null) this.#finish(job, job.badAnswer, 'network');
    else this.#finish(job, null, now >= job.ex.deadline ? 'timeout' : job.lastFailure ?? 'timeout');
  }

  /** `by`: the try that answered, if one did (its own pool recorded how). */
  #finish(job: Job, answer: Buffer | null, reason: UpstreamFailure, by: Try | null = null): void {
    job.done = true;
    this.#waiting.delete(job);
    const now = this.#clock.now();
    for (const t of job.live) {
      if (t === by) continue;
      if (t.pending !== null) t.server.pool.cancel(t.pending);
      // Cancelled, a try that outlived its timeout is never failed by its pool: it is that server's timeout, counted here.
      if (reason !== 'closed' && now >= t.expiresAt) t.server.pool.health.record('timeout', now);
    }
    job.live.length = 0;
    job.current = null;
    if (answer !== null) this.health.record(answer === job.badAnswer ? 'servfail' : 'answered', now);
    else if (reason === 'timeout' || reason === 'network') this.health.record(reason, now);
    settle(job.ex, answer, reason, this.#log);
  }

  #wait(job: Job): void {
    this.#waiting.add(job);
    if (this.#sweep === null) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => {
    for (const job of this.#waiting) {
      if (job.current !== null && now >= job.current.expiresAt) this.#next(job, now);
    }
    if (this.#waiting.size === 0 && this.#sweep !== null) {
      this.#sweep();
      this.#sweep = null;
    }
  };
}

