/**
 * The connections of one ops HTTP server (http.ts), bounded because any pod
 * on the node reaches the probe and metrics ports:
 *
 * - a cap per client address below the total, and at either cap the
 *   connection quiet longest makes room: one owing no answer, whether idle
 *   after its answers or not yet through its first request (silent, or half a
 *   request). Failing that, one whose answer sits unsent in its socket (the
 *   kernel would take no more: a client that asked and does not read, which
 *   would otherwise hold its slot until the 30 s socket timeout). Failing
 *   that, one whose scrape waits for the next second's render
 *   (scrape-render.ts; once that render starts it is being answered, and
 *   stays), of the address holding the most connections, the one
 *   of those that began waiting last: pods scraping back-to-back on every
 *   slot spend each second's renders, so their scrapes wait almost all the
 *   time, owed and read, never quiet; Prometheus's one scrape, coming between
 *   their turns, is most often the last to begin waiting, and must not be
 *   the one cut. Only when every one is being answered and read, and
 *   none waits on the render bound, is the newcomer closed.
 *   The kubelet probes from the node's own address, which every hostNetwork
 *   process shares: connections that hold a slot without asking must not lock
 *   the probe out. The newcomer gets its turn; a client reopening them only
 *   churns its own (the oldest go first), and the probe asks at once.
 * - a connection that sends no byte at all is closed at the header deadline:
 *   Node's own header timer starts only with a request's first byte.
 * - a few answers owed per connection: Node parses every request of a chunk
 *   before its backpressure stops reading, so a client pipelining scrapes it
 *   never reads would have each one rendered and held. Past the bound the
 *   connection is closed (Prometheus and kubelet never pipeline).
 * - on stop, answers owed are finished (each closing its connection) before
 *   the rest are closed, so a rollout does not cut a scrape in flight.
 */
import type http from 'node:http';
import type { Socket } from 'node:net';

export interface ConnectionBounds {
  readonly maxConnections: number;
  readonly maxConnectionsPerPeer: number;
  /** Requests taken and not yet answered, per connection; one more closes it. */
  readonly maxAnswersOwed: number;
  /** A connection that has sent nothing this long after accept is closed. */
  readonly firstByteMs: number;
}

interface Connection {
  readonly socket: Socket;
  readonly peer: string;
  /** Requests taken whose answers are not yet handed to the socket. */
  owed: number;
  firstByte: NodeJS.Timeout | null;
}

export class OpsConnections {
  readonly #bounds: ConnectionBounds;
  readonly #open: Map<Socket, Connection>;
  /** Connections owing no answer (idle, or no whole request yet), the one quiet longest first: who makes room at a cap. */
  readonly #quiet: Set<Connection>;
  /** Connections with a scrape waiting for the next second's render, in the order they began waiting. */
  readonly #waiting: Set<Connection>;
  readonly #perPeer: Map<string, number>;
  #draining: boolean;
  #onSettled: (() => void) | null;

  constructor(bounds: ConnectionBounds) {
    this.#bounds = bounds;
    this.#open = new Map();
    this.#quiet = new Set();
    this.#waiting = new Set();
    this.#perPeer = new Map();
    this.#draining = false;
    this.#onSettled = null;
  }

  /** For the server's 'connection' event: admits the socket, making room if it must, or closes it. */
  accept(socket: Socket): void {
    const peer = socket.remoteAddress ?? '';
    const fromPeer = this.#perPeer.get(peer) ?? 0;
    if ((fromPeer >= this.#bounds.maxConnectionsPerPeer && !this.#makeRoom(peer)) || (this.#open.size >= this.#bounds.maxConnections && !this.#makeRoom(null))) {
      socket.destroy();
      return;
    }
    const conn: Connection = { socket, peer, owed: 0, firstByte: null };
    conn.firstByte = setTimeout(() => {
      // bytesRead counts at the handle, which the HTTP parser consumes directly (no 'data' events to watch).
      if (socket.bytesRead === 0) socket.destroy();
    }, this.#bounds.firstByteMs);
    conn.firstByte.unref();
    this.#open.set(socket, conn);
    this.#perPeer.set(peer, (this.#perPeer.get(peer) ?? 0) + 1);
    this.#quiet.add(conn);
    socket.once('close', () => this.#forget(conn));
  }

  /** For each request: whether to answer it. False when its connection is gone or owes too many answers (then closed). */
  take(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    const socket = req.socket;
    const conn = this.#open.get(socket);
    // The parser goes on through the rest of a chunk after its socket is closed.
    if (conn === undefined || socket.destroyed) return false;
    if (conn.owed >= this.#bounds.maxAnswersOwed) {
      this.#close(conn);
      return false;
    }
    if (conn.firstByte !== null) {
      clearTimeout(conn.firstByte);
      conn.firstByte = null;
    }
    conn.owed++;
    this.#quiet.delete(conn);
    if (this.#draining) res.setHeader('Connection', 'close');
    res.once('close', () => {
      conn.owed--;
      if (conn.owed === 0) this.#waiting.delete(conn);
      if (conn.owed === 0 && this.#open.get(socket) === conn) {
        if (this.#draining) this.#close(conn);
        else this.#quiet.add(conn);
      }
      this.#settled();
    });
    return true;
  }

  /** The request taken on `socket` waits for the next second's render: its connection may make room until `over` (that render starts). */
  awaitingRender(socket: Socket, over: Promise<void>): void {
    const conn = this.#open.get(socket);
    if (conn === undefined) return;
    this.#waiting.add(conn);
    void over.then(() => this.#waiting.delete(conn));
  }

  /**
   * From now on every answer closes its connection, and quiet ones close now.
   * Resolves once no answer is owed, or after `ms`.
   */
  drain(ms: number): Promise<void> {
    this.#draining = true;
    for (const conn of [...this.#quiet]) this.#close(conn);
    if (this.#owed() === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#onSettled = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#onSettled = done;
    });
  }

  /** Requests taken and not yet answered, over every connection. */
  get owed(): number {
    return this.#owed();
  }

  #owed(): number {
    let n = 0;
    for (const c of this.#open.values()) n += c.owed;
    return n;
  }

  #settled(): void {
    if (this.#onSettled !== null && this.#owed() === 0) this.#onSettled();
  }

  /**
   * Closes the connection quiet longest, else one whose client is not reading its answer, else one waiting for the
   * next second's render (#evictWaiting); false when none exists.
   */
  #makeRoom(peer: string | null): boolean {
    return (
      this.#evictFirst(this.#quiet, peer, () => true) ||
      this.#evictFirst(this.#open.values(), peer, (c) => c.socket.writableLength > 0) ||
      this.#evictWaiting(peer)
    );
  }

  /** Of the connections waiting on the render bound (of `peer`, if given): one of the address holding the most, the last of those to begin waiting. */
  #evictWaiting(peer: string | null): boolean {
    let pick: Connection | null = null;
    let most = 0;
    for (const conn of this.#waiting) {
      if (peer !== null && conn.peer !== peer) continue;
      const n = this.#perPeer.get(conn.peer) ?? 0;
      if (n >= most) {
        pick = conn;
        most = n;
      }
    }
    if (pick === null) return false;
    this.#close(pick);
    return true;
  }

  #evictFirst(conns: Iterable<Connection>, peer: string | null, may: (conn: Connection) => boolean): boolean {
    for (const conn of conns) {
      if ((peer !== null && conn.peer !== peer) || !may(conn)) continue;
      this.#close(conn);
      return true;
    }
    return false;
  }

  /** Closes at once and forgets now: the socket's 'close' comes a tick later, and the caller counts on the room. */
  #close(conn: Connection): void {
    this.#forget(conn);
    conn.socket.destroy();
  }

  #forget(conn: Connection): void {
    if (this.#open.get(conn.socket) !== conn) return;
    this.#open.delete(conn.socket);
    this.#quiet.delete(conn);
    this.#waiting.delete(conn);
    if (conn.firstByte !== null) clearTimeout(conn.firstByte);
    const n = (this.#perPeer.get(conn.peer) ?? 1) - 1;
    if (n > 0) this.#perPeer.set(conn.peer, n);
    else this.#perPeer.delete(conn.peer);
    this.#settled();
  }
}
