/**
 * Whether a TcpPool (tcp-pool.ts) may connect now, and whether its server
 * counts as unreachable: connects that fail, and connections that close
 * before answering anything, back off; a failed connect while nothing is
 * open or connecting makes the server unreachable until a connect succeeds, and the pool
 * fails queries at once meanwhile. Moved out of the pool with the counters,
 * health records and log lines of those events.
 */
import type { Logger } from '../log.js';
import type { UpstreamHealth } from './health.js';
import type { Conn } from './tcp-conn.js';
import { tcpPoolCounters } from './tcp-pool-counters.js';

const SLOT = tcpPoolCounters.slot;

// Backoff after connect failures: fast enough to catch a restarting CoreDNS, capped so a dead one is not hammered.
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;

export class TcpReachability {
  readonly #name: string;
  readonly #kind: string;
  readonly #values: Float64Array;
  readonly #health: UpstreamHealth;
  readonly #log: Logger;
  #backoffMs: number;
  /** Clock ms before which no connect starts. */
  #nextConnectAt: number;
  #lostSinceConnect: boolean;
  /** Connections lost since the last answer that had staged queries, written none, and answered none (lost()). */
  #unwrittenLosses: number;
  /**
   * The last connect failed and nothing is open or connecting: queries fail at once
   * ('network' -> SERVFAIL now) instead of each waiting out its deadline,
   * until a connect succeeds. A pod behind us would otherwise wait the whole
   * --timeout for every search-list candidate while kube-dns is down.
   */
  #unreachable: boolean;

  constructor(name: string, kind: string, values: Float64Array, health: UpstreamHealth, log: Logger) {
    this.#name = name;
    this.#kind = kind;
    this.#values = values;
    this.#health = health;
    this.#log = log;
    this.#backoffMs = BACKOFF_MIN_MS;
    this.#nextConnectAt = 0;
    this.#lostSinceConnect = false;
    this.#unwrittenLosses = 0;
    this.#unreachable = false;
  }

  get unreachable(): boolean {
    return this.#unreachable;
  }

  /** No connect may start before the backoff has passed. */
  mayConnect(now: number): boolean {
    return now >= this.#nextConnectAt;
  }

  /** A query finding no connection fails at once: unreachable, and no connect may start yet. */
  failsFast(now: number): boolean {
    return this.#unreachable && now < this.#nextConnectAt;
  }

  /** A connect starts. */
  connecting(): void {
    if (this.#lostSinceConnect) this.#values[SLOT.reconnects]!++;
  }

  /** A connection opened. */
  connected(now: number): void {
    this.#values[SLOT.connects]!++;
    this.#health.record('connected', now);
    this.#lostSinceConnect = false;
    if (this.#unreachable) {
      this.#unreachable = false;
      this.#log.info(`${this.#kind} reachable again`, { upstream: this.#name });
    }
  }

  /**
   * A connection's first answer: success is an answer, not a connect, so a server that accepts and then drops us must
   * keep backing off. It clears the wait too: a refused connect beside it (a stale endpoint) must not hold back the next.
   */
  answered(): void {
    this.#backoffMs = BACKOFF_MIN_MS;
    this.#nextConnectAt = 0;
    this.#unwrittenLosses = 0;
  }

  /**
   * A connection was lost (the server closed it, or its connect failed or
   * timed out) and has left `open`, the pool's connections: a connection
   * that never answered what it was sent (refused at connect, or accepted
   * and dropped) gets backoff, so a sick server is not hammered in a tight loop.
   */
  lost(now: number, c: Conn, wasConnecting: boolean, open: readonly Conn[], error: string): void {
    this.#lostSinceConnect = true;
    // No descriptor for the socket: the agent's open-file limit, not the server, and said so (host-resolvers.ts too).
    const noFds = error === 'EMFILE' || error === 'ENFILE';
    if (wasConnecting) this.#values[noFds ? SLOT.connectNoFds : SLOT.connectFailures]!++;
    // A connection that carried nothing says nothing of the server (CoreDNS closes one whose first read times out):
    // only one that was written queries (not only staged them) and answered none, or whose connect failed, is a sign of a sick server.
    // One that only staged them once may have crossed the server's FIN; again with no answer between, the server closes
    // each connection at once (its queries, never written, use up no try: without a backoff, a tight reconnect loop).
    const unwritten = c.sent > 0 && c.written === 0 && c.answered === 0 && this.#unwrittenLosses++ > 0;
    if (wasConnecting || (c.written > 0 && c.answered === 0) || unwritten) this.#backOff(now);
    // Another connect still under way may land on a live pod behind the same address (this one a stale endpoint):
    // the server is unreachable only once no connection is open or on its way.
    if (wasConnecting && !this.#unreachable && !open.some((o) => o.state === 'open' || o.state === 'connecting')) {
      this.#unreachable = true;
      this.#health.record(noFds ? 'no_fds' : 'unreachable', now);
      const why = noFds ? 'not connected: the agent is out of file descriptors (raise its open-file limit, ulimit -n)' : 'unreachable';
      this.#log.warn(`${this.#kind} ${why}: queries to it fail at once until a connect succeeds (then answered from the view, stale, or SERVFAIL)`, {
        upstream: this.#name,
        error,
      });
    }
  }

  #backOff(now: number): void {
    // Jitter in [delay/2, delay] keeps the agents of a whole cluster from reconnecting in step after a CoreDNS restart.
    const delay = this.#backoffMs * (0.5 + Math.random() * 0.5);
    this.#nextConnectAt = Math.max(this.#nextConnectAt, now + delay);
    this.#backoffMs = Math.min(this.#backoffMs * 2, BACKOFF_MAX_MS);
    this.#log.debug(`${this.#kind} connect backoff`, { upstream: this.#name, delayMs: Math.round(delay) });
  }
}
