/**
 * DNS over TCP for clients (RFC 7766): many queries per connection, answered
 * as each completes (out of order), length framing across partial reads, an
 * idle timeout, and caps on connections and on queries in flight per
 * connection (reading pauses at the cap: backpressure, not drops).
 */
import net from 'node:net';
import { formatHostPort } from '../addr.js';
import { FrameDecoder, frame } from '../dns/framing.js';
import type { Logger } from '../log.js';
import type { ServerAddress } from '../upstream/types.js';
import { Transport, type ClientChannel, type ClientPeer, type Listener, type QueryHandler } from './listener.js';

export interface TcpListenerOptions {
  readonly idleTimeoutMs: number;
  readonly maxConnections: number;
  readonly maxQueriesPerConnection: number;
}

/** A client that stops reading its answers is cut off past this much unsent data. */
const MAX_UNSENT_BYTES = 1024 * 1024;

export class TcpListener implements Listener {
  readonly name: string;
  readonly #addr: ServerAddress;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  readonly #opts: TcpListenerOptions;
  readonly #conns: Set<TcpClientConnection>;
  #server: net.Server | null;

  constructor(addr: ServerAddress, handler: QueryHandler, logger: Logger, opts: TcpListenerOptions) {
    this.#addr = addr;
    this.#handler = handler;
    this.#logger = logger;
    this.#opts = opts;
    this.name = `tcp://${formatHostPort(addr)}`;
    this.#conns = new Set();
    this.#server = null;
  }

  get port(): number {
    const a = this.#server?.address();
    return a !== null && typeof a === 'object' ? a.port : this.#addr.port;
  }

  get connections(): number {
    return this.#conns.size;
  }

  start(): Promise<void> {
    // allowHalfOpen: a client may send its queries and then FIN (nc -N, scripts); it still gets its answers,
    // and we close our side once they are written.
    const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.#accept(socket));
    server.maxConnections = this.#opts.maxConnections;
    this.#server = server;
    return new Promise((resolve, reject) => {
      const onListenError = (err: Error): void => reject(new Error(`cannot listen on ${this.name}: ${err.message}`));
      server.once('error', onListenError);
      server.listen({ host: this.#addr.host, port: this.#addr.port, exclusive: true, ipv6Only: net.isIP(this.#addr.host) === 6 }, () => {
        server.off('error', onListenError);
        server.on('error', (err) => this.#logger.warn('tcp listener error', { listener: this.name, error: err.message }));
        resolve();
      });
    });
  }

  pause(): void {
    this.#server?.close();
    for (const c of this.#conns) c.stopReading();
  }

  close(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    if (server === null || !server.listening) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  #accept(socket: net.Socket): void {
    const conn = new TcpClientConnection(socket, this.#handler, this.#logger, this.#opts, this.name);
    this.#conns.add(conn);
    socket.once('close', () => this.#conns.delete(conn));
  }
}

/** One client connection; the ClientChannel its answers go back through. */
class TcpClientConnection implements ClientChannel {
  readonly transport = Transport.TCP;
  readonly #socket: net.Socket;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  readonly #maxInFlight: number;
  readonly #peer: ClientPeer;
  readonly #decoder: FrameDecoder;
  readonly #listenerName: string;
  /** Queries handed to the resolver and not yet answered. */
  #inflight: number;
  /** Frames that arrived (in the same read) after the in-flight cap was reached. */
  readonly #backlog: Buffer[];
  #reading: boolean;
  /** Guards #drainBacklog against re-entry: a cache hit answers inside handle(), which calls back into send(). */
  #draining: boolean;

  constructor(socket: net.Socket, handler: QueryHandler, logger: Logger, opts: TcpListenerOptions, listenerName: string) {
    this.#socket = socket;
    this.#handler = handler;
    this.#logger = logger;
    this.#maxInFlight = opts.maxQueriesPerConnection;
    this.#listenerName = listenerName;
    this.#peer = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    this.#decoder = new FrameDecoder((f) => this.#onFrame(f));
    this.#inflight = 0;
    this.#backlog = [];
    this.#reading = true;
    this.#draining = false;
    socket.setKeepAlive(true);
    socket.setTimeout(opts.idleTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.#decoder.push(chunk));
    socket.on('end', () => this.stopReading());
    socket.on('timeout', () => {
      // Idle means nothing owed either way; a slow upstream answer keeps the connection.
      if (this.#inflight === 0) socket.destroy();
    });
    socket.on('error', (err) => this.#logger.debug('tcp client error', { listener: this.#listenerName, error: err.message }));
  }

  send(answer: Buffer, _peer: ClientPeer): void {
    this.#inflight--;
    if (this.#socket.destroyed) return;
    this.#socket.write(frame(answer));
    if (this.#socket.writableLength > MAX_UNSENT_BYTES) {
      this.#logger.warn('tcp client not reading its answers: closing', { listener: this.#listenerName, peer: this.#peer.address });
      this.#socket.destroy();
      return;
    }
    this.#drainBacklog();
  }

  discard(_peer: ClientPeer): void {
    this.#inflight--;
    this.#drainBacklog();
  }

  /** No more queries from this client (it sent FIN, or we are shutting down); answer what was taken, then close. */
  stopReading(): void {
    this.#reading = false;
    this.#socket.pause();
    this.#drainBacklog();
  }

  destroy(): void {
    this.#socket.destroy();
  }

  #onFrame(msg: Buffer): void {
    if (!this.#reading) return;
    if (this.#inflight >= this.#maxInFlight) {
      this.#backlog.push(msg);
      this.#socket.pause();
      return;
    }
    this.#dispatch(msg);
  }

  #dispatch(msg: Buffer): void {
    this.#inflight++;
    try {
      this.#handler.handle(msg, this, this.#peer);
    } catch (err) {
      this.#inflight--;
      this.#logger.error('query handler threw', { listener: this.#listenerName, error: String(err) });
    }
  }

  #drainBacklog(): void {
    if (this.#draining) return;
    this.#draining = true;
    while (this.#backlog.length > 0 && this.#inflight < this.#maxInFlight) this.#dispatch(this.#backlog.shift()!);
    this.#draining = false;
    if (!this.#reading) {
      if (this.#inflight === 0 && this.#backlog.length === 0 && !this.#socket.destroyed) this.#socket.end();
      return;
    }
    if (this.#backlog.length === 0 && this.#inflight < this.#maxInFlight && this.#socket.isPaused()) this.#socket.resume();
  }
}
