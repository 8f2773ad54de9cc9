/**
 * The connections of one ops HTTP server (http.ts), bounded because any pod
 * on the node reaches the probe and metrics ports:
 *
 * - a few answers owed per connection: Node parses every request of a chunk
 *   before its backpressure stops reading, so a client pipelining scrapes it
 *   never reads would have each one rendered and held. Past the bound the
 *   connection is closed (Prometheus and kubelet never pipeline).
 */
import type http from 'node:http';
import type { Socket } from 'node:net';

export interface ConnectionBounds {
  /** Requests taken and not yet answered, per connection; one more closes it. */
  readonly maxAnswersOwed: number;
}

interface Connection {
  readonly socket: Socket;
  /** Requests taken whose answers are not yet handed to the socket. */
  owed: number;
}

export class OpsConnections {
  readonly #bounds: ConnectionBounds;
  readonly #open: Map<Socket, Connection>;

  constructor(bounds: ConnectionBounds) {
    this.#bounds = bounds;
    this.#open = new Map();
  }

  /** For the server's 'connection' event. */
  accept(socket: Socket): void {
    const conn: Connection = { socket, owed: 0 };
    this.#open.set(socket, conn);
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
    conn.owed++;
    res.once('close', () => {
      conn.owed--;
    });
    return true;
  }

  /** Closes at once and forgets now: the socket's 'close' comes a tick later. */
  #close(conn: Connection): void {
    this.#forget(conn);
    conn.socket.destroy();
  }

  #forget(conn: Connection): void {
    if (this.#open.get(conn.socket) !== conn) return;
    this.#open.delete(conn.socket);
  }
}
