/**
 * Who holds the client TCP slots (tcp-slots.ts, one set for all the agent's
 * listeners): the connections open per client address, for the per-client
 * cap (--max-tcp-per-client), and who makes room at a cap.
 *
 * The agent's cap (--max-tcp-connections) is shared by every pod on the
 * node: without a cap per address one pod holding busy connections takes
 * every slot, and the others' TCP fallback is refused. As dnsdist's
 * setMaxTCPConnectionsPerClient, the key is the client's address (all its
 * ports together) as the socket gives it; IPv4 and IPv6 are kept apart
 * (an IPv6 listener is v6-only, so an IPv4 client never shows up as
 * ::ffff:a.b.c.d under another key). Unlike dnsdist, a client at its cap
 * first makes room among its own connections, as a newcomer does at the
 * agent's cap: a pod that leaves connections idle is not locked out by
 * them. An address is forgotten with its last connection, so there are
 * never more entries than open connections.
 */
import type { TcpClientConnection } from './tcp-client-conn.js';

/**
 * How long a connection that has not yet sent a query is spared at a cap.
 * Resolvers (glibc, Go) open a connection per TCP query and send at once, but
 * the bytes may sit unread behind a busy event loop: closing such a
 * connection loses a query. A client that connects and stays silent is
 * evictable after this, and cut by the read/idle timeouts anyway.
 */
export const FRESH_GRACE_MS = 1000;

/**
 * The connection idle longest with nothing in flight, null when every one is
 * busy (or fresh: FRESH_GRACE_MS). On a tie the older connection (earlier in
 * insertion order) goes. A scan (about 10 us over 1,024 connections), run only
 * when a client arrives at a cap.
 */
export function idlest(conns: Iterable<TcpClientConnection>, now: number): TcpClientConnection | null {
  let victim: TcpClientConnection | null = null;
  for (const c of conns) {
    if (!c.idle || (c.served === 0 && now - c.lastActiveMs < FRESH_GRACE_MS)) continue;
    if (victim === null || c.lastActiveMs < victim.lastActiveMs) victim = c;
  }
  return victim;
}

export class ConnectionsPerClient {
  /** Connections one address may hold; 0: no cap, and nothing is tracked. */
  readonly #max: number;
  readonly #byAddress: Map<string, Set<TcpClientConnection>>;

  constructor(max: number) {
    this.#max = max;
    this.#byAddress = new Map();
  }

  /** Addresses with a connection open (0 without a cap). */
  get size(): number {
    return this.#byAddress.size;
  }

  /** Whether `address` already holds its cap (never without a cap). */
  full(address: string): boolean {
    return this.#max > 0 && (this.#byAddress.get(address)?.size ?? 0) >= this.#max;
  }

  /** The idlest of `address`'s own connections, the one to close for its newcomer; null when all are busy. */
  idlestOf(address: string, now: number): TcpClientConnection | null {
    const own = this.#byAddress.get(address);
    return own === undefined ? null : idlest(own, now);
  }

  /** Once per admitted connection. */
  add(c: TcpClientConnection): void {
    if (this.#max === 0) return;
    const own = this.#byAddress.get(c.address);
    if (own !== undefined) own.add(c);
    else this.#byAddress.set(c.address, new Set([c]));
  }

  /** Once per connection the listener forgets (closed by either side). */
  remove(c: TcpClientConnection): void {
    const own = this.#byAddress.get(c.address);
    if (own === undefined || !own.delete(c)) return;
    if (own.size === 0) this.#byAddress.delete(c.address);
  }
}
