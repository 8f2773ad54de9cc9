/**
 * The portable UDP backend: one dgram socket per address, one 'message'
 * handler bound once, answers sent back on the same socket.
 *
 * With reusePort the socket is made through koffi with SO_REUSEPORT and
 * handed to dgram, so a new agent can bind beside this one; pause() then
 * takes it out of the group (connect to itself, src/sys/reuseport.ts) and
 * keeps answering what the kernel had already queued for it, and drained()
 * says when that queue is empty.
 *
 * A query from source port 0 (spoofed: no socket sends from it, and no
 * answer can go back to it) is dropped as it arrives and counted, never
 * handled, as BIND drops it. send() never throws (the ClientChannel
 * contract): an answer to port 0 is dropped too, and one the kernel refuses
 * (EMSGSIZE, EAGAIN, EPERM) is counted and logged, through one callback
 * bound once; without a callback dgram drops such errors without a word.
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { dialableHost, formatHostPort } from '../addr.js';
import { systemClock, type Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { Counters } from '../stats/counters.js';
import { loadReusePort, openShared, type ReusePort } from '../sys/reuseport.js';
import type { ServerAddress } from '../upstream/types.js';
import { Transport, type ClientChannel, type ClientPeer, type Listener, type QueryHandler } from './listener.js';
import { SERVER_COUNTERS, type ServerCounters } from './stats.js';

/** Absorbs bursts while the event loop is busy; the kernel caps it at net.core.rmem_max unless privileged. */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Sweeps (SWEEP_MS apart) that must find the receive queue empty before a
 * detached socket counts as drained: at least one full sweep after connect(),
 * so a datagram the kernel routed to us just before it (an RCU read side on
 * another CPU, microseconds) has been queued and read too.
 */
const DRAIN_EMPTY_SWEEPS = 2;

export interface UdpListenerOptions {
  /** Bind through SO_REUSEPORT so a new agent can bind beside this one; an exclusive bind (logged) when koffi is unavailable. */
  readonly reusePort?: boolean;
  /** With reusePort: pause() steers new datagrams to the group's other sockets and answers those queued here (default). false: drop from pause() on, as a plain socket does. */
  readonly handoverDrain?: boolean;
  readonly clock?: Clock;
  /** For tests: where the SO_REUSEPORT binding comes from. */
  readonly loadReusePort?: () => Promise<ReusePort | string>;
}

/** Logged the first time and every LOG_EVERY-th after: a flood of failures must not become a flood of logs. */
const LOG_EVERY = 1000;

const S = SERVER_COUNTERS.slot;

/**
 * A handler that counts what it answers (HitPath): failed sends are counted
 * in its block, beside the answers it counted as sent and under the same
 * `server` label; a handler without one gets a block of the listener's own.
 */
export type CountingQueryHandler = QueryHandler & { readonly counters?: ServerCounters };

export class UdpListener implements Listener, ClientChannel {
  readonly transport = Transport.UDP;
  readonly name: string;
  readonly #addr: ServerAddress;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  #socket: dgram.Socket | null;
  #paused: boolean;
  /** Where dropped answers (port 0) and failed sends (nodelocal_udp_errors_total{op="send"}) are counted. */
  readonly counters: ServerCounters;
  /** Socket errors and failed sends, for the log's throttle. */
  #socketErrors: number;
  #handlerThrew: number;
  readonly #reusePort: boolean;
  readonly #handoverDrain: boolean;
  readonly #clock: Clock;
  readonly #loadReusePort: () => Promise<ReusePort | string>;
  /** The binding and the fd we made with it; null and -1 for a plain socket. */
  #sys: ReusePort | null;
  #fd: number;
  /** While draining after pause(): unregisters the sweep, and what drained() waits for. */
  #drainSweep: (() => void) | null;
  #drained: Promise<void> | null;
  #drainDone: (() => void) | null;
  #emptySweeps: number;

  constructor(addr: ServerAddress, handler: CountingQueryHandler, logger: Logger, opts: UdpListenerOptions = {}) {
    this.#addr = addr;
    this.#handler = handler;
    this.#logger = logger;
    this.name = `udp://${formatHostPort(addr)}`;
    this.#socket = null;
    this.#paused = false;
    this.counters = handler.counters ?? new Counters(SERVER_COUNTERS);
    this.#socketErrors = 0;
    this.#handlerThrew = 0;
    this.#reusePort = opts.reusePort ?? false;
    this.#handoverDrain = opts.handoverDrain ?? true;
    this.#clock = opts.clock ?? systemClock;
    this.#loadReusePort = opts.loadReusePort ?? loadReusePort;
    this.#sys = null;
    this.#fd = -1;
    this.#drainSweep = null;
    this.#drained = null;
    this.#drainDone = null;
    this.#emptySweeps = 0;
  }

  /** Whether the socket was bound through SO_REUSEPORT (false before start, or after the fallback). */
  get reusePort(): boolean {
    return this.#fd >= 0;
  }

  /** The bound port (useful with port 0 in tests). */
  get port(): number {
    return this.#socket?.address().port ?? this.#addr.port;
  }

  async start(): Promise<void> {
    const fd = this.#reusePort ? await this.#openShared() : -1;
    const family = isIP(this.#addr.host) === 6 ? 6 : 4;
    const socket = dgram.createSocket({
      type: family === 6 ? 'udp6' : 'udp4',
      // Answers always go to the literal address a query came from; dgram's default
      // dns.lookup() runs a regex and defers every send by a tick (~3% of the agent's CPU under load).
      lookup: (address, _options, callback) => callback(null, address, family),
      recvBufferSize: SOCKET_BUFFER_BYTES,
      sendBufferSize: SOCKET_BUFFER_BYTES,
      ipv6Only: isIP(this.#addr.host) === 6,
    });
    this.#socket = socket;
    socket.on('message', this.#onMessage);
    return new Promise((resolve, reject) => {
      const onBindError = (err: Error): void => reject(new Error(`cannot listen on ${this.name}: ${err.message}`));
      socket.once('error', onBindError);
      const onBound = (): void => {
        socket.off('error', onBindError);
        socket.on('error', this.#onError);
        resolve();
      };
      // A %zone given as an interface index becomes its name (addr.ts says why); the SO_REUSEPORT bind reads either.
      if (fd >= 0) socket.bind({ fd }, onBound);
      else socket.bind({ address: dialableHost(this.#addr.host), port: this.#addr.port, exclusive: true }, onBound);
    });
  }

  /** A socket bound with SO_REUSEPORT, or -1 to bind the plain way (no koffi: logged once). Throws when the bind itself fails. */
  async #openShared(): Promise<number> {
    const shared = await openShared('udp', this.#addr, this.name, this.#logger, this.#loadReusePort);
    if (shared === null) return -1;
    this.#sys = shared.sys;
    this.#fd = shared.fd;
    return shared.fd;
  }

  pause(): void {
    if (this.#paused || this.#drained !== null) return;
    const sys = this.#sys;
    if (sys !== null && this.#handoverDrain) {
      const err = sys.detachUdp(this.#fd, this.#addr);
      // Left in its group (connect() would fix its source to loopback): it keeps reading and answering until close.
      if (err === 'wildcard') return;
      if (err === null) {
        this.#drained = new Promise((resolve) => {
          this.#drainDone = resolve;
        });
        this.#drainSweep = this.#clock.sweep(this.#onDrainSweep);
        return;
      }
      this.#logger.warn('cannot take the socket out of its SO_REUSEPORT group: queries still queued for it will be lost', { listener: this.name, error: err.message });
    }
    this.#paused = true;
  }

  /**
   * Resolves once a paused socket has answered everything the kernel queued
   * for it (at once when there is nothing to drain). Wait for it before
   * waiting for the queries in flight: it is what puts the last ones in flight.
   */
  drained(): Promise<void> {
    return this.#drained ?? Promise.resolve();
  }

  readonly #onDrainSweep = (): void => {
    const queued = this.#sys !== null && this.#socket !== null ? this.#sys.queuedBytes(this.#fd) : -1;
    // Any error (the socket is gone) ends the drain: there is nothing left to read.
    this.#emptySweeps = queued > 0 ? 0 : this.#emptySweeps + 1;
    if (queued < 0 || this.#emptySweeps >= DRAIN_EMPTY_SWEEPS) this.#endDrain();
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
    const s = this.#socket;
    this.#socket = null;
    if (s === null) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }

  send(answer: Buffer, peer: ClientPeer): void {
    const socket = this.#socket;
    if (socket === null) return;
    // A source port of 0 is spoofed (no socket sends from it): nowhere to answer, and dgram throws for it.
    if (peer.port === 0) {
      this.counters.values[S.dropped]!++;
      return;
    }
    try {
      socket.send(answer, peer.port, peer.address, this.#onSent);
    } catch (err) {
      // A bad address or a socket closing under us: one answer lost, never the caller's loop over its other clients.
      this.#onSendError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  discard(): void {}

  readonly #onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    if (this.#paused) return;
    // Nowhere to answer: not a request, no miss asked upstream for it, no answer counted as sent.
    if (rinfo.port === 0) {
      this.counters.values[S.dropped]!++;
      return;
    }
    try {
      this.#handler.handle(msg, this, rinfo);
    } catch (err) {
      // handle() promises not to throw; if it ever does, one query is lost, never the listener.
      if (this.#handlerThrew++ % LOG_EVERY === 0) this.#logger.error('query handler threw', { listener: this.name, error: String(err), count: this.#handlerThrew });
    }
  };

  /** dgram's send callback: called for every answer (on the next tick when sent at once), with an error only when it was not sent. */
  readonly #onSent = (err: Error | null): void => {
    if (err !== null) this.#onSendError(err);
  };

  #onSendError(err: Error): void {
    this.counters.values[S.udpSendErrors]!++;
    this.#onError(err);
  }

  readonly #onError = (err: Error): void => {
    if (this.#socketErrors++ % LOG_EVERY === 0) this.#logger.warn('udp socket error', { listener: this.name, error: err.message, count: this.#socketErrors });
  };
}
