/**
 * The portable UDP backend: one dgram socket per address, one 'message'
 * handler bound once, answers sent back on the same socket.
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { formatHostPort } from '../addr.js';
import type { Logger } from '../log.js';
import type { ServerAddress } from '../upstream/types.js';
import { Transport, type ClientChannel, type ClientPeer, type Listener, type QueryHandler } from './listener.js';

/** Absorbs bursts while the event loop is busy; the kernel caps it at net.core.rmem_max unless privileged. */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export class UdpListener implements Listener, ClientChannel {
  readonly transport = Transport.UDP;
  readonly name: string;
  readonly #addr: ServerAddress;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  #socket: dgram.Socket | null;
  #paused: boolean;
  #sendErrors: number;

  constructor(addr: ServerAddress, handler: QueryHandler, logger: Logger) {
    this.#addr = addr;
    this.#handler = handler;
    this.#logger = logger;
    this.name = `udp://${formatHostPort(addr)}`;
    this.#socket = null;
    this.#paused = false;
    this.#sendErrors = 0;
  }

  /** The bound port (useful with port 0 in tests). */
  get port(): number {
    return this.#socket?.address().port ?? this.#addr.port;
  }

  start(): Promise<void> {
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
      socket.bind({ address: this.#addr.host, port: this.#addr.port, exclusive: true }, () => {
        socket.off('error', onBindError);
        socket.on('error', this.#onError);
        resolve();
      });
    });
  }

  pause(): void {
    this.#paused = true;
  }

  close(): Promise<void> {
    const s = this.#socket;
    this.#socket = null;
    if (s === null) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }

  send(answer: Buffer, peer: ClientPeer): void {
    // Errors (EAGAIN on a full buffer, EPERM from a firewall) arrive on 'error'; a lost UDP answer is the client's retry.
    this.#socket?.send(answer, peer.port, peer.address);
  }

  discard(): void {}

  readonly #onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    if (this.#paused) return;
    try {
      this.#handler.handle(msg, this, rinfo);
    } catch (err) {
      // handle() promises not to throw; if it ever does, one query is lost, never the listener.
      this.#logger.error('query handler threw', { listener: this.name, error: String(err) });
    }
  };

  readonly #onError = (err: Error): void => {
    // Count everything, log the first and then every 1000th: a flood of send errors must not become a flood of logs.
    if (this.#sendErrors++ % 1000 === 0) this.#logger.warn('udp socket error', { listener: this.name, error: err.message, count: this.#sendErrors });
  };
}
