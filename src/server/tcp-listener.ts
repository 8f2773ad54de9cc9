/**
 * DNS over TCP for clients (RFC 7766): many queries per connection, answered
 * as each completes (out of order), length framing across partial reads, and
 * caps on connections and on queries in flight per connection (reading pauses
 * at the cap: backpressure, not drops).
 *
 * Client slots are defended the way production servers do it:
 * - a message must be complete within the read timeout of its first byte, so a
 *   slow-loris trickle cannot hold a slot;
 * - idle means no complete message and nothing in flight; partial bytes are not
 *   activity, so they never push the idle timeout back;
 * - at the connection cap a newcomer evicts the connection that has been idle
 *   longest with nothing in flight, and is refused only when every one is busy;
 *   one client address holds at most maxConnectionsPerClient of them, making
 *   room the same way among its own (tcp-per-client.ts); both caps are the
 *   agent's, across all its listeners (tcp-slots.ts);
 * - unsent answers are bounded in the kernel (a small SO_SNDBUF set at accept)
 *   and in Node (maxUnsentBytes, and past it a room the agent's connections
 *   share for answers to queries in flight landing together: tcp-unsent.ts);
 *   past the room, or with answers left unread for the read timeout, the
 *   client is reset (tcp-client-conn.ts).
 * The clock's shared sweep (every 50 ms) runs the timeouts while connections
 * are open, and stamps a coarse "now" so the per-answer path reads no clock.
 *
 * With reusePort the listening socket is made through koffi with SO_REUSEPORT
 * so a new agent can listen beside this one. pause() then steers new
 * connections to the newest listener of the group (src/sys/reuseport.ts),
 * keeps accepting until its accept queue has stayed empty, closes each
 * connection once it owes nothing, and drained() says when all that is done.
 *
 * This file is the listener (accept, the sweep, the handover drain); the
 * caps and eviction, shared by the agent's listeners, are tcp-slots.ts; what
 * happens on one client socket (framing, in-flight cap, answers, timeouts) is
 * tcp-client-conn.ts.
 */
import net from 'node:net';
import { DEFAULTS } from '../config.js';
import { dialableHost, formatHostPort } from '../addr.js';
import { systemClock, type Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { Counters } from '../stats/counters.js';
import { FD_RESERVE, FdCeiling } from '../sys/fd-limit.js';
import { listenersOn, loadReusePort, openShared, type ReusePort } from '../sys/reuseport.js';
import { fdOf } from '../sys/socket-options.js';
import type { ServerAddress } from '../upstream/types.js';
import type { Listener, QueryHandler } from './listener.js';
import { tcpListenerCounters, type TcpListenerCounters } from './tcp-stats.js';
import { TcpClientConnection, stopAll, type CoarseTime, type Limits, type TcpCloseReason } from './tcp-client-conn.js';
import { TcpSlots } from './tcp-slots.js';
import { SendBufferLimit, TCP_MAX_UNSENT_BYTES, TCP_SEND_BUFFER_BYTES, TCP_UNSENT_ROOM_BYTES } from './tcp-unsent.js';

export { DRAIN_IDLE_MS, type TcpCloseReason } from './tcp-client-conn.js';
export { TCP_MAX_UNSENT_BYTES, TCP_SEND_BUFFER_BYTES, TCP_UNSENT_ROOM_BYTES } from './tcp-unsent.js';

export interface TcpListenerOptions {
  /** Close a connection with no complete message and nothing in flight for this long (RFC 7766 6.2.3). */
  readonly idleTimeoutMs: number;
  /** The caps and the room shared with the agent's other client TCP listeners (tcp-slots.ts); maxConnections, maxConnectionsPerClient and unsentRoomBytes are then ignored. Without it the listener makes its own from them. */
  readonly slots?: TcpSlots;
  /** Connections open at once. Default: --max-tcp-connections's (config.ts). */
  readonly maxConnections?: number;
  /** Connections one client address may hold; 0: no cap. Default: --max-tcp-per-client's (config.ts). */
  readonly maxConnectionsPerClient?: number;
  readonly maxQueriesPerConnection: number;
  /** A message must be complete this long after its first byte arrives. Default: --tcp-read-timeout's (config.ts). */
  readonly readTimeoutMs?: number;
  /** Answers a client may leave unsent in Node's buffer (beyond the kernel's), but for answers to queries in flight landing together. Default TCP_MAX_UNSENT_BYTES. */
  readonly maxUnsentBytes?: number;
  /** Room past maxUnsentBytes, for all the connections of the slots, for those answers (tcp-unsent.ts); past it clients are reset. Default TCP_UNSENT_ROOM_BYTES. */
  readonly unsentRoomBytes?: number;
  /** SO_SNDBUF asked for on each client socket (the kernel doubles it); 0 keeps kernel autotuning. Default TCP_SEND_BUFFER_BYTES. */
  readonly sendBufferBytes?: number;
  readonly clock?: Clock;
  /** Where close reasons are counted; the agent passes the block its metrics publish. */
  readonly counters?: TcpListenerCounters;
  /** Listen through SO_REUSEPORT so a new agent can listen beside this one; an exclusive listen (logged) when koffi is unavailable. */
  readonly reusePort?: boolean;
  /** With reusePort: pause() steers new connections to the newest listener and serves those already queued here (default). false: close the listener at pause(), resetting its accept queue. */
  readonly handoverDrain?: boolean;
  /** For tests: where the SO_REUSEPORT binding comes from. */
  readonly loadReusePort?: () => Promise<ReusePort | string>;
  /** For tests: how many listeners the group has (default: counted in /proc/net/tcp{,6}). */
  readonly listenersOn?: (addr: ServerAddress) => number;
}

/**
 * Sweeps (SWEEP_MS apart) with an empty accept queue and no accept before a
 * draining listener closes: by then no handshake begun before the steering
 * (microseconds on a node) can still land in its queue.
 */
const DRAIN_QUIET_SWEEPS = 2;

export class TcpListener implements Listener {
  readonly name: string;
  readonly counters: TcpListenerCounters;
  readonly #addr: ServerAddress;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  readonly #sendBuffer: SendBufferLimit;
  readonly #limits: Limits;
  readonly #clock: Clock;
  readonly #time: CoarseTime;
  /** This listener's connections (its gauge, sweep, drain and stop); each is held in #slots too. */
  readonly #conns: Set<TcpClientConnection>;
  readonly #slots: TcpSlots;
  #server: net.Server | null;
  /** Unregisters our sweep from the clock's shared timer; null while no connection is open. */
  #sweep: (() => void) | null;
  readonly #reusePort: boolean;
  readonly #handoverDrain: boolean;
  readonly #loadReusePort: () => Promise<ReusePort | string>;
  readonly #listenersOn: (addr: ServerAddress) => number;
  /** The binding and the listening fd we made with it; null and -1 for a plain listener. */
  #sys: ReusePort | null;
  #fd: number;
  /** Draining after pause(): new connections are steered away, ours finish. */
  #draining: boolean;
  #drainSweep: (() => void) | null;
  #drained: Promise<void> | null;
  #drainDone: (() => void) | null;
  #quietSweeps: number;
  #acceptedSinceSweep: number;
  #handedOver: boolean;
  /** Accepted sockets whose descriptor is within FD_RESERVE of the open-file limit are refused (fd-limit.ts). */
  readonly #fdCeiling = new FdCeiling();
  #warnedFdLimit = false;

  constructor(addr: ServerAddress, handler: QueryHandler, logger: Logger, opts: TcpListenerOptions) {
    this.#addr = addr;
    this.#handler = handler;
    this.#logger = logger;
    this.#limits = {
      idleTimeoutMs: opts.idleTimeoutMs,
      readTimeoutMs: opts.readTimeoutMs ?? DEFAULTS.tcpReadTimeoutMs,
      maxQueriesPerConnection: opts.maxQueriesPerConnection,
      maxUnsentBytes: opts.maxUnsentBytes ?? TCP_MAX_UNSENT_BYTES,
    };
    this.#clock = opts.clock ?? systemClock;
    this.counters = opts.counters ?? new Counters(tcpListenerCounters);
    this.name = `tcp://${formatHostPort(addr)}`;
    this.#sendBuffer = new SendBufferLimit(opts.sendBufferBytes ?? TCP_SEND_BUFFER_BYTES, logger, this.name);
    this.#time = { now: this.#clock.now() };
    this.#conns = new Set();
    this.#slots = opts.slots ?? new TcpSlots({
      maxConnections: opts.maxConnections ?? DEFAULTS.maxTcpConnections,
      maxConnectionsPerClient: opts.maxConnectionsPerClient ?? DEFAULTS.maxTcpPerClient,
      unsentRoomBytes: opts.unsentRoomBytes ?? TCP_UNSENT_ROOM_BYTES,
    });
    this.#server = null;
    this.#sweep = null;
    this.#reusePort = opts.reusePort ?? false;
    this.#handoverDrain = opts.handoverDrain ?? true;
    this.#loadReusePort = opts.loadReusePort ?? loadReusePort;
    this.#listenersOn = opts.listenersOn ?? ((a) => listenersOn(a));
    this.#sys = null;
    this.#fd = -1;
    this.#draining = false;
    this.#drainSweep = null;
    this.#drained = null;
    this.#drainDone = null;
    this.#quietSweeps = 0;
    this.#acceptedSinceSweep = 0;
    this.#handedOver = false;
  }

  /** Whether the listener was made through SO_REUSEPORT (false before start, or after the fallback). */
  get reusePort(): boolean {
    return this.#fd >= 0;
  }

  /**
   * pause() found another listener on our address and handed new connections
   * to it: a new agent serves here now, so what we set up for the address
   * (interface address, firewall rules) must stay when we exit.
   */
  get handedOver(): boolean {
    return this.#handedOver;
  }

  get port(): number {
    const a = this.#server?.address();
    return a !== null && typeof a === 'object' ? a.port : this.#addr.port;
  }

  get connections(): number {
    return this.#conns.size;
  }

  /** Client addresses the per-client cap tracks (those with a connection open on any listener sharing the slots). */
  get clientAddresses(): number {
    return this.#slots.clientAddresses;
  }

  async start(): Promise<void> {
    await this.#sendBuffer.load();
    this.#fdCeiling.load(this.#clock.now());
    const fd = this.#reusePort ? await this.#openShared() : -1;
    // allowHalfOpen: a client may send its queries and then FIN (nc -N, scripts); it still gets its answers,
    // and we close our side once they are written. No server.maxConnections: the cap is ours (#accept), so a
    // newcomer can evict an idle connection instead of being reset.
    const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.#accept(socket));
    this.#server = server;
    return new Promise((resolve, reject) => {
      const onListenError = (err: Error): void => reject(new Error(`cannot listen on ${this.name}: ${err.message}`));
      server.once('error', onListenError);
      const onListening = (): void => {
        server.off('error', onListenError);
        server.on('error', (err: NodeJS.ErrnoException) => {
          // After listen only accept() fails here; EMFILE shows up when libuv has no spare descriptor left to close them with.
          if (err.code === 'EMFILE' || err.code === 'ENFILE') this.#refuseForFds(null);
          else this.#logger.warn('tcp listener error', { listener: this.name, error: err.message });
        });
        if (fd >= 0) this.#sayIfShared();
        resolve();
      };
      // A %zone given as an interface index becomes its name (addr.ts says why); the SO_REUSEPORT bind reads either.
      if (fd >= 0) server.listen({ fd }, onListening);
      else server.listen({ host: dialableHost(this.#addr.host), port: this.#addr.port, exclusive: true, ipv6Only: net.isIP(this.#addr.host) === 6 }, onListening);
    });
  }

  /** A listening socket made with SO_REUSEPORT, or -1 to listen the plain way (no koffi: logged once). Throws when bind or listen fails. */
  async #openShared(): Promise<number> {
    const shared = await openShared('tcp', this.#addr, this.name, this.#logger, this.#loadReusePort);
    if (shared === null) return -1;
    this.#sys = shared.sys;
    this.#fd = shared.fd;
    return shared.fd;
  }

  /** SO_REUSEPORT lets a second agent start here by mistake as well as by design: say so, once, at start. */
  #sayIfShared(): void {
    const listeners = this.#listenersOn(this.#addr);
    if (listeners > 1) {
      this.#logger.info('another process listens on this address too (SO_REUSEPORT): sharing it, as in an upgrade, until it stops', { listener: this.name, listeners });
    }
  }

  pause(): void {
    if (this.#draining) return;
    if (this.#sys !== null && this.#handoverDrain && this.#server?.listening === true && this.#steerAway(this.#sys)) {
      this.#draining = true;
      this.#drained = new Promise((resolve) => {
        this.#drainDone = resolve;
      });
      for (const c of this.#conns) c.finish();
      this.#drainSweep = this.#clock.sweep(this.#onDrainSweep);
      return;
    }
    this.#server?.close();
    // Queries already read (held at the in-flight cap or behind unread answers) are owed too: drained() waits for them.
    this.#drained ??= new Promise((resolve) => {
      this.#drainDone = resolve;
      stopAll(this.#conns, resolve);
    });
  }

  /**
   * Points the group at its newest listener, the last to join (index
   * count-1): we are the oldest (index 0) when a new agent started beside us.
   * Alone there is nobody to hand over to: false, and pause() closes as a
   * plain listener does (clients are refused at once and retry elsewhere
   * rather than wait out the grace). An unreadable count (0) steers to 1.
   */
  #steerAway(sys: ReusePort): boolean {
    const listeners = this.#listenersOn(this.#addr);
    if (listeners === 1) return false;
    const err = sys.steer(this.#fd, Math.max(listeners, 2) - 1);
    this.#handedOver = err === null && listeners > 1;
    if (err === null) return true;
    this.#logger.warn('cannot steer new connections to the new listener: connections still queued for this one will be reset', { listener: this.name, error: err.message });
    return false;
  }

  /**
   * Resolves once a paused listener has closed with an empty accept queue
   * and every connection has been answered and closed (at once when there is
   * nothing to drain). Wait for it before waiting for the queries in flight.
   */
  drained(): Promise<void> {
    return this.#drained ?? Promise.resolve();
  }

  readonly #onDrainSweep = (): void => {
    const server = this.#server;
    if (server !== null && server.listening && this.#sys !== null) {
      const queued = this.#sys.acceptQueue(this.#fd);
      this.#quietSweeps = queued === 0 && this.#acceptedSinceSweep === 0 ? this.#quietSweeps + 1 : 0;
      this.#acceptedSinceSweep = 0;
      if (queued < 0 || this.#quietSweeps >= DRAIN_QUIET_SWEEPS) server.close();
      return;
    }
    // Connections close through their own sweep (#tick); a client that keeps our FIN unanswered owes us nothing.
    for (const c of this.#conns) if (!c.finished) return;
    this.#endDrain();
  };

  #endDrain(): void {
    if (this.#drainSweep !== null) this.#drainSweep();
    this.#drainSweep = null;
    const done = this.#drainDone;
    this.#drainDone = null;
    done?.();
  }

  close(): Promise<void> {
    this.#endDrain();
    const server = this.#server;
    this.#server = null;
    if (this.#sweep !== null) this.#sweep();
    this.#sweep = null;
    for (const c of this.#conns) {
      c.destroy();
      this.#slots.remove(c);
    }
    this.#conns.clear();
    this.#setOpenGauge();
    if (server === null || !server.listening) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  #accept(socket: net.Socket): void {
    const address = socket.remoteAddress ?? '';
    const slot = this.counters.schema.slot;
    const now = (this.#time.now = this.#clock.now());
    if (this.#fdCeiling.refuses(fdOf(socket), now)) {
      this.#refuseForFds(socket);
      return;
    }
    const refused = this.#slots.admit(address, now);
    if (refused !== null) {
      this.counters.values[refused === 'client' ? slot.refusedClient : slot.refused]!++;
      socket.destroy();
      return;
    }
    this.#sendBuffer.apply(socket);
    const conn = new TcpClientConnection(socket, this.#handler, this.#logger, this.#limits, this.name, this.#time, this.counters, this.#slots.room);
    this.#conns.add(conn);
    this.#slots.add(conn, this.#evict);
    if (this.#draining) {
      this.#acceptedSinceSweep++;
      conn.finish();
    }
    this.#setOpenGauge();
    socket.once('close', () => this.#forget(conn));
    if (this.#sweep === null) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  /** Near the open-file limit (or past it: EMFILE, `socket` null): counted, warned once per listener. */
  #refuseForFds(socket: net.Socket | null): void {
    this.counters.values[this.counters.schema.slot.refusedFdLimit]!++;
    socket?.destroy();
    if (this.#warnedFdLimit) return;
    this.#warnedFdLimit = true;
    this.#logger.warn('open-file limit nearly reached: new TCP clients are refused', { listener: this.name, limit: this.#fdCeiling.limit, reserve: FD_RESERVE });
  }

  /** How the slots close one of ours at a cap, for a newcomer on this listener or another. */
  readonly #evict = (victim: TcpClientConnection): void => this.#closeConn(victim, 'evicted');

  readonly #onSweep = (now: number): void => this.#tick(now);

  #tick(now: number): void {
    this.#time.now = now;
    // Deleting the current element while iterating a Set is safe.
    for (const c of this.#conns) {
      const reason = c.expired(now);
      if (reason !== null) this.#closeConn(c, reason);
    }
    if (this.#conns.size === 0 && this.#sweep !== null) {
      this.#sweep();
      this.#sweep = null;
    }
  }

  #closeConn(c: TcpClientConnection, reason: TcpCloseReason): void {
    c.close(reason);
    // Now, not on 'close' (a tick later): the slot is free for the client being admitted.
    this.#forget(c);
  }

  /** Once per connection, whichever of #closeConn and its socket's 'close' comes first. */
  #forget(c: TcpClientConnection): void {
    if (!this.#conns.delete(c)) return;
    this.#slots.remove(c);
    this.#setOpenGauge();
  }

  #setOpenGauge(): void {
    this.counters.values[this.counters.schema.slot.open] = this.#conns.size;
  }
}
