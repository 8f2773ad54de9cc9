/**
 * External names over DNS over TLS (RFC 7858): one TcpPool per server
 * (persistent connections, queries pipelined, ids per connection, deadlines,
 * backoff, health), each opening its connections through a TlsConnector, and
 * failover between the servers in the order given, as glibc (and the host
 * resolvers) do with resolv.conf:
 *
 *   start = first healthy server (else the first)
 *   try k: server (start + k) % n, deadline min(now + tryTimeout, exchange deadline); the last try gets all that is left
 *     answer ─────────────────────► done
 *     SERVFAIL / REFUSED ─────────► kept; next server (passed on if no server does better)
 *     timeout / connection lost ──► next server
 *
 * A failing server is probed (". NS", as CoreDNS forward's health check) once
 * a second until it answers, so the first server takes the traffic back as
 * soon as it works again.
 */
import { systemClock, type Clock } from '../clock.js';
import { questionMessage, upstreamQuery } from '../dns/build.js';
import { OFF_FLAGS, QType, RCODE_MASK, Rcode } from '../dns/constants.js';
import { nameToWire } from '../dns/name.js';
import { parseQuery } from '../dns/query.js';
import { silentLogger, type Logger } from '../log.js';
import type { Counters } from '../stats/counters.js';
import { UpstreamHealth } from './health.js';
import { HealthProbe } from './probe.js';
import { settle } from './settle.js';
import { TcpPool } from './tcp-pool.js';
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
  readonly start: number;
  tries: number;
  badAnswer: Buffer | null;
  lastFailure: UpstreamFailure;
  done: boolean;
  constructor(ex: UpstreamExchange, start: number) {
    this.ex = ex;
    this.start = start;
    this.tries = 0;
    this.badAnswer = null;
    this.lastFailure = 'timeout';
    this.done = false;
  }
}

/** One try: the exchange a pool sees. A class rather than closures: its callbacks are methods. */
class Try implements UpstreamExchange {
  readonly query: Buffer;
  readonly deadline: number;
  readonly #job: Job;
  readonly #owner: TlsResolvers;
  constructor(job: Job, deadline: number, owner: TlsResolvers) {
    this.query = job.ex.query;
    this.deadline = deadline;
    this.#job = job;
    this.#owner = owner;
  }
  resolve(answer: Buffer): void {
    this.#owner.onAnswer(this.#job, answer);
  }
  reject(reason: UpstreamFailure): void {
    this.#owner.onFailure(this.#job, reason);
  }
}

export class TlsResolvers implements Upstream {
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly servers: readonly TlsServerUpstream[];
  readonly #attemptTimeoutMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  #failovers: number;

  constructor(opts: TlsResolversOptions) {
    if (opts.servers.length === 0) throw new Error('TlsResolvers: no servers');
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger;
    this.#attemptTimeoutMs = Math.max(1, opts.attemptTimeoutMs);
    this.name = 'tls-resolvers';
    this.health = new UpstreamHealth(this.name, this.#log, this.#clock.now());
    this.#failovers = 0;
    const probeQuery = rootNsQuery();
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
        clock: this.#clock,
        logger: this.#log,
      });
      return { server, pool, connector, probe: new HealthProbe(pool, this.#clock, probeQuery) };
    });
  }

  /** Moves to another server after a try failed (since start). */
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
    for (const s of this.servers) s.probe.stop();
    return Promise.all(this.servers.map((s) => s.pool.close())).then(() => undefined);
  }

  abort(): void {
    for (const s of this.servers) {
      s.probe.stop();
      s.pool.abort();
    }
  }

  /** @internal Try's callback. */
  onAnswer(job: Job, answer: Buffer): void {
    if (job.done) return;
    const rcode = answer[OFF_FLAGS + 1]! & RCODE_MASK;
    if (rcode === Rcode.SERVFAIL || rcode === Rcode.REFUSED) {
      // Another server may do better; this answer is passed on if none does.
      job.badAnswer = answer;
      this.#next(job, this.#clock.now());
      return;
    }
    this.#finish(job, answer, 'network');
  }

  /** @internal Try's callback. */
  onFailure(job: Job, reason: UpstreamFailure): void {
    if (job.done) return;
    // Shutting down: no other server changes that. ('overloaded', one pool's queue full, does move on: another may have room.)
    if (reason === 'closed') {
      this.#finish(job, null, reason);
      return;
    }
    job.lastFailure = reason;
    this.#next(job, this.#clock.now());
  }

  #next(job: Job, now: number): void {
    const n = this.servers.length;
    if (job.tries < n && now < job.ex.deadline) {
      const idx = (job.start + job.tries) % n;
      if (job.tries > 0) this.#failovers++;
      job.tries++;
      const deadline = job.tries === n ? job.ex.deadline : Math.min(now + this.#attemptTimeoutMs, job.ex.deadline);
      // May complete synchronously (a pool that knows its server is unreachable fails at once): then the next try starts here.
      this.servers[idx]!.pool.send(new Try(job, deadline, this));
      return;
    }
    if (job.badAnswer !== null) this.#finish(job, job.badAnswer, 'network');
    else this.#finish(job, null, now >= job.ex.deadline ? 'timeout' : job.lastFailure);
  }

  #finish(job: Job, answer: Buffer | null, reason: UpstreamFailure): void {
    job.done = true;
    const now = this.#clock.now();
    if (answer !== null) this.health.record(answer === job.badAnswer ? 'servfail' : 'answered', now);
    else if (reason === 'timeout' || reason === 'network') this.health.record(reason, now);
    settle(job.ex, answer, reason, this.#log);
  }
}

/** CoreDNS forward's health check: ". IN NS", which every recursive resolver answers from its cache. */
function rootNsQuery(): Buffer {
  return upstreamQuery(parseQuery(questionMessage(nameToWire('.'), QType.NS)));
}
