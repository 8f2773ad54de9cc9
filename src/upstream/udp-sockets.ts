/**
 * The UDP sockets of the host resolvers' tries: a few connected sockets per
 * server, each carrying several tries under distinct random ids and replaced
 * by a fresh one (a fresh random source port) after a number of tries or an
 * age, instead of one socket per try.
 *
 *   try ─► socketFor(server): round-robin over K slots
 *            slot empty, or its socket used N times / older than T ─► retire it, open a new one in the slot
 *          ─► attach: an id drawn at random, unique among the tries on that socket
 *          ─► send now, or on 'connect' for a socket still opening
 *   datagram ─► tries.get(id) ─► the try checks the question
 *            id handed out here, its try over ─► late; an id never handed out ─► stray (counted as spoofed)
 *   socket error (ICMP unreachable: ECONNREFUSED) ─► every try on it fails over, the socket is retired
 *   retired socket ─► closes when its last try lets go
 *
 * Why this keeps RFC 5452's protection: the kernel picks each socket's port
 * at random from the ephemeral range, connect() makes it drop datagrams from
 * any other address or port, the id is random per try, and the question must
 * match. A blind spoofer must hit one of the K open ports of that server
 * (K / ~28,000 instead of 1 / ~28,000 with a socket per try: 2 bits of 30
 * with K = 4) and then the one id of the try it targets; a port it may have
 * learnt (a side channel such as SADDNS takes far longer than T) is gone
 * after N tries or T ms. What is saved: socket, bind, connect, two epoll_ctl,
 * close and the Node socket object per try.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { canonicalIp } from '../addr.js';
import { HEADER_LEN } from '../dns/constants.js';
import { readId } from '../dns/question.js';
import type { ServerAddress } from './types.js';
import { IntTable } from '../int-table.js';

// Random ids drawn in bulk: one getrandom() per 512 queries instead of one per query.
const idPool = new Uint16Array(512);
let idNext = idPool.length;

export function randomId(): number {
  if (idNext === idPool.length) {
    randomFillSync(idPool);
    idNext = 0;
  }
  return idPool[idNext++]!;
}

/** What a socket needs of a try; QueryAttempt implements it. */
export interface SharedTry {
  /** A datagram from the server under this try's id (the try still checks the question). */
  deliver(msg: Buffer): void;
  /** The socket has connected since the try attached: send now. */
  socketReady(socket: SharedSocket): void;
  /** The socket failed (ICMP error, send error): the try is over. */
  socketFailed(code: string): void;
}

export interface UdpSocketsOptions {
  /** Sockets in use per server at once, taken round-robin (default 4). */
  perServer?: number;
  /** Tries a socket carries before it is replaced (default 64). */
  rotateAfterTries?: number;
  /** Age after which a socket takes no new try (default 1000 ms). */
  rotateAfterMs?: number;
  /** A datagram under an id this socket never handed out, or too short to carry one. */
  onStray: () => void;
  /** A datagram under an id this socket handed out to a try that is over (answered elsewhere, or given up). */
  onLate: () => void;
  /** A socket opened (1) or closed (-1), for the gauge. */
  onCount: (delta: 1 | -1) => void;
}

export const UDP_SOCKETS_DEFAULTS = { perServer: 4, rotateAfterTries: 64, rotateAfterMs: 1000 } as const;

/**
 * Ids a socket's table takes at open without growing: the default
 * rotateAfterTries. A socket opened for one try at low traffic (its age
 * retires it) must not allocate for thousands when rotateAfterTries is set high.
 */
const PRESIZED_TRIES = UDP_SOCKETS_DEFAULTS.rotateAfterTries;

export class SharedSocket {
  readonly server: ServerAddress;
  readonly #owner: UdpSockets;
  readonly #sock: dgram.Socket;
  /**
   * Every id handed out since open, with its try while that listens (null
   * once it is over: a reply under it is a slow server's, not a forgery). At
   * most rotateAfterTries ids, so sized for them at open (up to
   * PRESIZED_TRIES; past that it grows) and never rebuilt (int-table.ts
   * says why a Map and a Set were not).
   */
  readonly #ids: IntTable<SharedTry | null>;
  /** Tries attached and listening. */
  #live: number;
  /** Tries attached before 'connect', sent when it comes. */
  #waiting: SharedTry[] | null;
  readonly openedAt: number;
  /** Tries attached since open. */
  used: number;
  /** Takes no new try; closes once empty. */
  retired: boolean;
  #closed: boolean;

  constructor(owner: UdpSockets, server: ServerAddress, now: number, maxTries: number) {
    this.server = server;
    this.#owner = owner;
    this.#ids = new IntTable(Math.min(maxTries, PRESIZED_TRIES));
    this.#live = 0;
    this.#waiting = [];
    this.openedAt = now;
    this.used = 0;
    this.retired = false;
    this.#closed = false;
    const sock = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
    this.#sock = sock;
    sock.on('error', this.#onError);
    sock.on('message', this.#onMessage);
    sock.once('connect', this.#onConnect);
    // connect() binds port 0 first: the kernel picks a random ephemeral port, and then accepts datagrams from this server only.
    sock.connect(server.port, server.host);
  }

  get size(): number {
    return this.#live;
  }

  /** Connected: a try attached now may send at once; before, it is told by socketReady(). */
  get ready(): boolean {
    return this.#waiting === null;
  }

  /** Registers a try under a fresh random id never used before on this socket (a late reply cannot reach a newer try). */
  attach(t: SharedTry): number {
    let id = randomId();
    // Terminates: a socket carries at most rotateAfterTries (far below 65536) tries.
    while (this.#ids.get(id) !== undefined) id = randomId();
    this.#ids.set(id, t);
    this.#live++;
    this.used++;
    if (this.#waiting !== null) this.#waiting.push(t);
    return id;
  }

  /**
   * Sends a query already carrying its id. A refused send (EPERM from a firewall rule, a route gone) comes back
   * through `done` only: dgram drops it silently without a callback. ICMP errors come as the socket's 'error', or
   * as ECONNREFUSED through `done` when this send is the first syscall after one (see fail()).
   */
  send(wire: Buffer, done: (err: Error | null) => void): void {
    this.#sock.send(wire, done);
  }

  detach(id: number, t: SharedTry): void {
    if (this.#ids.get(id) !== t) return;
    this.#ids.set(id, null);
    this.#live--;
    if (this.#waiting !== null) {
      const i = this.#waiting.indexOf(t);
      if (i >= 0) this.#waiting.splice(i, 1);
    }
    if (this.retired && this.#live === 0) this.close();
  }

  retire(): void {
    this.retired = true;
    if (this.#live === 0) this.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.retired = true;
    try {
      this.#sock.close();
    } catch {
      // Already closed by an error path.
    }
    this.#owner.closed(this);
  }

  readonly #onConnect = (): void => {
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting === null || this.#closed) return;
    for (const t of waiting) t.socketReady(this);
  };

  readonly #onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    // connect() already filters by source; a check that costs nothing keeps that true whatever the platform.
    if (msg.length < HEADER_LEN || rinfo.port !== this.server.port || !sameHost(rinfo.address, this.server.host)) {
      this.#owner.stray();
      return;
    }
    const id = readId(msg);
    const t = this.#ids.get(id);
    if (t !== undefined && t !== null) t.deliver(msg);
    else if (t === null) this.#owner.late();
    else this.#owner.stray();
  };

  readonly #onError = (err: NodeJS.ErrnoException): void => this.fail(err.code ?? 'EUDP');

  /**
   * An ICMP error (the socket's 'error', or ECONNREFUSED handed to a send, which the kernel reports it to when
   * that send comes before recvmsg): it cannot be pinned on one try, the server or its port is gone for all of them.
   */
  fail(code: string): void {
    const tries = this.#ids.values().filter((t): t is SharedTry => t !== null);
    this.#ids.clear();
    this.#live = 0;
    this.#waiting = null;
    this.close();
    for (const t of tries) t.socketFailed(code);
  }
}

/**
 * Address equality whatever the IPv6 spelling (case, zone, zeros written out).
 * Configured addresses are canonical already (addr.ts), so the comparison of
 * spellings runs only for a reply from somewhere else.
 */
export function sameHost(a: string, b: string): boolean {
  if (a === b) return true;
  const strip = (h: string): string => {
    const pct = h.indexOf('%');
    const base = pct >= 0 ? h.slice(0, pct) : h;
    return canonicalIp(base) ?? base.toLowerCase();
  };
  return strip(a) === strip(b);
}

export class UdpSockets {
  readonly #perServer: number;
  readonly #rotateAfterTries: number;
  readonly #rotateAfterMs: number;
  readonly #onStray: () => void;
  readonly #onLate: () => void;
  readonly #onCount: (delta: 1 | -1) => void;
  /** Per server index, K slots of sockets taking new tries. */
  readonly #slots: Array<Array<SharedSocket | null>>;
  readonly #cursor: number[];
  #open: number;

  constructor(opts: UdpSocketsOptions) {
    this.#perServer = Math.max(1, opts.perServer ?? UDP_SOCKETS_DEFAULTS.perServer);
    this.#rotateAfterTries = Math.min(4096, Math.max(1, opts.rotateAfterTries ?? UDP_SOCKETS_DEFAULTS.rotateAfterTries));
    this.#rotateAfterMs = Math.max(1, opts.rotateAfterMs ?? UDP_SOCKETS_DEFAULTS.rotateAfterMs);
    this.#onStray = opts.onStray;
    this.#onLate = opts.onLate;
    this.#onCount = opts.onCount;
    this.#slots = [];
    this.#cursor = [];
    this.#open = 0;
  }

  /** Sockets open, in use or retired with tries still listening. */
  get open(): number {
    return this.#open;
  }

  /** The socket for a new try to server `idx`: the next slot's, replaced first when it is used up or too old. */
  socketFor(idx: number, server: ServerAddress, now: number): SharedSocket {
    let slots = this.#slots[idx];
    if (slots === undefined) {
      slots = new Array<SharedSocket | null>(this.#perServer).fill(null);
      this.#slots[idx] = slots;
      this.#cursor[idx] = 0;
    }
    const k = this.#cursor[idx]!;
    this.#cursor[idx] = (k + 1) % slots.length;
    let s: SharedSocket | null = slots[k] ?? null;
    if (s !== null && (s.retired || s.used >= this.#rotateAfterTries || now - s.openedAt >= this.#rotateAfterMs)) {
      s.retire();
      s = null;
    }
    if (s === null) {
      s = new SharedSocket(this, server, now, this.#rotateAfterTries);
      slots[k] = s;
      this.#open++;
      this.#onCount(1);
    }
    return s;
  }

  /** Retires sockets past their age (idle ones close now, busy ones when their last try lets go). */
  sweep(now: number): void {
    for (const slots of this.#slots) {
      if (slots === undefined) continue;
      for (let k = 0; k < slots.length; k++) {
        const s = slots[k] ?? null;
        if (s !== null && now - s.openedAt >= this.#rotateAfterMs) {
          slots[k] = null;
          s.retire();
        }
      }
    }
  }

  /** Closes the sockets in the slots; tries still attached to retired ones close those when they finish. */
  closeAll(): void {
    for (const slots of this.#slots) {
      if (slots === undefined) continue;
      for (let k = 0; k < slots.length; k++) {
        const s = slots[k] ?? null;
        slots[k] = null;
        if (s !== null) s.retire();
      }
    }
  }

  stray(): void {
    this.#onStray();
  }

  late(): void {
    this.#onLate();
  }

  closed(s: SharedSocket): void {
    const slots = this.#slots[this.#indexOf(s)];
    if (slots !== undefined) {
      const k = slots.indexOf(s);
      if (k >= 0) slots[k] = null;
    }
    this.#open--;
    this.#onCount(-1);
  }

  #indexOf(s: SharedSocket): number {
    for (let i = 0; i < this.#slots.length; i++) if (this.#slots[i]?.includes(s)) return i;
    return -1;
  }
}
