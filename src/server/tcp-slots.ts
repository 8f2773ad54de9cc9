/**
 * The client TCP budget of the agent: every open connection of every client
 * TCP listener (tcp-listener.ts), under one --max-tcp-connections, one
 * --max-tcp-per-client per address, and one room for unsent answers
 * (tcp-unsent.ts). Memory is per process, and a connection that does not
 * read costs it the same whichever address it came in on: with caps per
 * listener the DaemonSet's two addresses (169.254.20.10 and the kube-dns
 * ClusterIP) doubled the worst case, past its memory limit.
 *
 * Each connection is held with the way to close it through its own listener
 * (so that listener's set, gauge and sweep let go of it at once): at a cap a
 * newcomer on one address may close the idlest connection on another. What
 * is the listener's own stays there: its open gauge, counters, sweep, drain
 * and stop. A listener built without slots (tests, benches) makes its own.
 * All of this runs at accept and close, never per query.
 */
import type { TcpClientConnection } from './tcp-client-conn.js';
import { ConnectionsPerClient, idlest } from './tcp-per-client.js';
import { UnsentRoom } from './tcp-unsent.js';

/** Closes a connection at a cap ('evicted') through the listener that accepted it. */
export type EvictThroughOwner = (c: TcpClientConnection) => void;

export interface TcpSlotsOptions {
  /** --max-tcp-connections: connections open across the listeners sharing these slots. */
  readonly maxConnections: number;
  /** --max-tcp-per-client: connections one client address may hold across them; 0: no cap. */
  readonly maxConnectionsPerClient: number;
  /** Room past each connection's unsent cap, for all of them together (tcp-unsent.ts). */
  readonly unsentRoomBytes: number;
}

/** Why a newcomer was turned away: its address at --max-tcp-per-client, or every slot taken and busy. */
export type SlotRefusal = 'client' | 'connections';

export class TcpSlots implements Iterable<TcpClientConnection> {
  readonly #maxConnections: number;
  /** Every connection held, with how to close it through its own listener. */
  readonly #owners: Map<TcpClientConnection, EvictThroughOwner>;
  readonly #perClient: ConnectionsPerClient;
  readonly room: UnsentRoom;

  constructor(opts: TcpSlotsOptions) {
    this.#maxConnections = opts.maxConnections;
    this.#owners = new Map();
    this.#perClient = new ConnectionsPerClient(opts.maxConnectionsPerClient);
    this.room = new UnsentRoom(opts.unsentRoomBytes, this);
  }

  [Symbol.iterator](): IterableIterator<TcpClientConnection> {
    return this.#owners.keys();
  }

  /** Connections held across the listeners. */
  get size(): number {
    return this.#owners.size;
  }

  /** Client addresses the per-client cap tracks (those with a connection open on any listener). */
  get clientAddresses(): number {
    return this.#perClient.size;
  }

  /**
   * Makes room for a newcomer from `address` at either cap by closing the
   * idlest connection (its address's own at the per-client cap), on whichever
   * listener it is; null when there is room, else why there is none.
   */
  admit(address: string, now: number): SlotRefusal | null {
    if (this.#perClient.full(address) && !this.#evict(this.#perClient.idlestOf(address, now))) return 'client';
    if (this.#owners.size >= this.#maxConnections && !this.#evict(idlest(this.#owners.keys(), now))) return 'connections';
    return null;
  }

  /** Once per admitted connection, with how its listener closes it. */
  add(c: TcpClientConnection, evict: EvictThroughOwner): void {
    this.#owners.set(c, evict);
    this.#perClient.add(c);
  }

  /** Once per connection its listener forgets (closed by either side, or the listener closed). */
  remove(c: TcpClientConnection): void {
    if (!this.#owners.delete(c)) return;
    this.#perClient.remove(c);
  }

  /** Closes `victim` (the idlest at a cap) through its listener; false when there is none (every one busy). */
  #evict(victim: TcpClientConnection | null): boolean {
    if (victim === null) return false;
    const evict = this.#owners.get(victim);
    if (evict === undefined) return false;
    evict(victim);
    return true;
  }
}
