/**
 * One client connection of the TCP listener (tcp-listener.ts): the length
 * framing across partial reads, the in-flight cap and its backlog (reading
 * pauses at the cap), the answers written back with the unsent-bytes limit,
 * and the timeouts the listener's sweep asks about (read timeout, idle,
 * handover finish). Kept apart so the listener reads as accept, limits and
 * drain, and this file as what happens on one socket.
 */
import type net from 'node:net';
import { FrameDecoder, frame } from '../dns/framing.js';
import type { Logger } from '../log.js';
import { fdOf, loadSocketOptions, type SocketOptions } from '../sys/socket-options.js';
import { Transport, type ClientChannel, type ClientPeer, type QueryHandler } from './listener.js';
import type { TcpListenerCounter, TcpListenerCounters } from './tcp-stats.js';
import { takeLimit, type UnsentRoom, type UnsentRoomHolder } from './tcp-unsent.js';

/**
 * While draining, how long an accepted connection may stay silent before it
 * is closed: long enough for the first query of a client that connected just
 * before the steering (it follows the handshake at once), short against the
 * shutdown grace.
 */
export const DRAIN_IDLE_MS = 500;

export type TcpCloseReason = 'read_timeout' | 'idle' | 'evicted' | 'unsent_limit';

const CLOSE_SLOT: Readonly<Record<TcpCloseReason, TcpListenerCounter>> = {
  read_timeout: 'closedReadTimeout',
  idle: 'closedIdle',
  evicted: 'closedEvicted',
  unsent_limit: 'closedUnsentLimit',
};

/**
 * SIOCOUTQ for close(), once the binding has loaded: the listener loads it at
 * start (SO_SNDBUF), so it is here before any connection closes. Null without
 * koffi: then only Node's own unsent bytes are seen.
 */
let sockopts: SocketOptions | null = null;
let sockoptsAsked = false;

function askSocketOptions(): void {
  if (sockoptsAsked) return;
  sockoptsAsked = true;
  void loadSocketOptions().then((so) => {
    if (typeof so !== 'string') sockopts = so;
  });
}

/** Shared by a listener and its connections: the sweep's last stamp of the clock. */
export interface CoarseTime {
  now: number;
}

/** Settings with every default applied. */
export interface Limits {
  readonly idleTimeoutMs: number;
  readonly readTimeoutMs: number;
  readonly maxQueriesPerConnection: number;
  readonly maxUnsentBytes: number;
}

/**
 * Shutdown of a plain listener: stops every connection, and calls `done`
 * once each has settled (what it read answered and written out) or closed.
 * A client that does not read is reset after the read timeout (expired()).
 */
export function stopAll(conns: ReadonlySet<TcpClientConnection>, done: () => void): void {
  const check = (): void => {
    for (const c of conns) if (!c.settled) return;
    done();
  };
  for (const c of conns) c.stop(check);
  check();
}

/** One client connection; the ClientChannel its answers go back through. */
export class TcpClientConnection implements ClientChannel, UnsentRoomHolder {
  readonly transport = Transport.TCP;
  readonly #socket: net.Socket;
  readonly #handler: QueryHandler;
  readonly #logger: Logger;
  readonly #limits: Limits;
  readonly #peer: ClientPeer;
  readonly #decoder: FrameDecoder;
  readonly #listenerName: string;
  readonly #time: CoarseTime;
  readonly #counters: TcpListenerCounters;
  readonly #room: UnsentRoom;
  /** Queries handed to the resolver and not yet answered. */
  #inflight = 0;
  /** Frames that arrived (in the same read) after the in-flight cap was reached. */
  readonly #backlog: Buffer[] = [];
  #reading = true;
  #closed = false;
  /** Guards #drainBacklog against re-entry: a cache hit answers inside handle(), which calls back into send(). */
  #draining = false;
  /** Last complete query or answer (coarse ms): what idleness and eviction order are measured from. */
  #lastActiveMs: number;
  /** When the first byte of the incomplete message now buffered arrived; -1 when none is. */
  #partialSinceMs = -1;
  /** Set by #onFrame: the current chunk completed at least one message. */
  #framed = false;
  /** Handover: close as soon as nothing is owed (see finish()). */
  #finishing = false;
  /** We sent our FIN with nothing owed (finish(), or after the client's FIN); unsent answers are the unsent timer's, never an idle close. */
  #ended = false;
  /** Queries answered or discarded on this connection. */
  #served = 0;
  /** Inside decoder.resume() from #drainBacklog: the frames it hands out were read before any stop, so they are taken. */
  #takingHeld = false;
  /** Inside decoder.push(): frames later in the chunk are not counted as buffered yet, so finishing must wait. */
  #pushing = false;
  /** No query is taken while Node holds more unsent bytes than this (takeLimit). */
  readonly #takeLimit: number;
  /** Since when (coarse ms) queries wait for the client to read its answers ('drain'); -1 when they do not. */
  #unreadSinceMs = -1;
  /** The listener is shutting down (stop()): answers left unsent in Node wait on the client for the read timeout at most. */
  #stopping = false;

  constructor(
    socket: net.Socket,
    handler: QueryHandler,
    logger: Logger,
    limits: Limits,
    listenerName: string,
    time: CoarseTime,
    counters: TcpListenerCounters,
    room: UnsentRoom,
  ) {
    this.#socket = socket;
    this.#handler = handler;
    this.#logger = logger;
    this.#limits = limits;
    this.#listenerName = listenerName;
    this.#time = time;
    this.#counters = counters;
    this.#room = room;
    this.#peer = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    this.#decoder = new FrameDecoder((f) => this.#onFrame(f));
    this.#lastActiveMs = time.now;
    this.#takeLimit = takeLimit(limits.maxUnsentBytes, socket);
    askSocketOptions();
    socket.setKeepAlive(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => {
      this.#unreadSinceMs = -1;
      this.#drainBacklog();
    });
    socket.on('end', () => this.stopReading());
    socket.on('error', (err) => this.#logger.debug('tcp client error', { listener: this.#listenerName, error: err.message }));
  }

  /** The client's address (its per-client cap's key, tcp-per-client.ts). */
  get address(): string {
    return this.#peer.address;
  }

  get lastActiveMs(): number {
    return this.#lastActiveMs;
  }

  /** Queries answered (or dropped) on this connection so far; 0: it has not sent one yet. */
  get served(): number {
    return this.#served;
  }

  /** Unsent bytes in Node past maxUnsentBytes (what it holds of the listener's UnsentRoom); 0 once closed. */
  get overUnsentCap(): number {
    return this.#closed || this.#socket.destroyed ? 0 : Math.max(0, this.#socket.writableLength - this.#limits.maxUnsentBytes);
  }

  get unreadSinceMs(): number {
    return this.#unreadSinceMs;
  }

  /** Nothing owed to the client: no query in flight or waiting. Such a connection may be evicted. */
  get idle(): boolean {
    return this.#inflight === 0 && this.#backlog.length === 0 && !this.#closed;
  }

  /** Nothing more is owed: closed, or our FIN sent with nothing owed and every answer handed to the kernel. */
  get finished(): boolean {
    return this.#closed || this.#socket.destroyed || (this.#ended && this.#socket.writableFinished);
  }

  /** Shutdown (stop()): every answer and our FIN are with the kernel, or the connection is closed. */
  get settled(): boolean {
    return this.#closed || this.#socket.destroyed || this.#socket.writableFinished;
  }

  /** Shutdown of a plain listener: no more queries; those read are answered. `onSettled` is called as it may have settled. */
  stop(onSettled: () => void): void {
    this.#stopping = true;
    this.#socket.once('finish', onSettled);
    this.#socket.once('close', onSettled);
    this.stopReading();
  }

  /**
   * Handover (the listener is draining): keep answering, and end the
   * connection the moment it owes nothing after at least one answer. A client
   * that sends nothing is closed by the sweep after DRAIN_IDLE_MS. A query
   * sent after our FIN goes unanswered; RFC 7766 6.2.3 clients retry it.
   */
  finish(): void {
    this.#finishing = true;
    this.#finishIfDone();
  }

  /** Why the sweep should close this connection now, if it should. */
  expired(now: number): TcpCloseReason | null {
    // Not while reading is paused at the in-flight cap: the rest of the message waits on us, not on the client.
    if (this.#partialSinceMs >= 0 && !this.#socket.isPaused() && now - this.#partialSinceMs >= this.#limits.readTimeoutMs) {
      return 'read_timeout';
    }
    // At shutdown or once ended (handover), answers left in Node's buffer wait on the client's reading as held queries do ('drain' clears it).
    if ((this.#stopping || this.#ended) && this.#unreadSinceMs < 0 && this.#socket.writableLength > 0) this.#unreadSinceMs = now;
    // Queries held back for a client that does not read what it asked for: as a client that stops mid-message.
    if (this.#unreadSinceMs >= 0 && now - this.#unreadSinceMs >= this.#limits.readTimeoutMs) return 'unsent_limit';
    const idleLimit = this.#finishing ? Math.min(DRAIN_IDLE_MS, this.#limits.idleTimeoutMs) : this.#limits.idleTimeoutMs;
    // Ended (our FIN sent): not idle but done; what it still has to write is the unsent timer's (above).
    if (this.idle && !this.#ended && now - this.#lastActiveMs >= idleLimit) return 'idle';
    return null;
  }

  send(answer: Buffer, _peer: ClientPeer): void {
    this.#inflight--;
    this.#served++;
    this.#lastActiveMs = this.#time.now;
    if (this.#closed || this.#socket.destroyed) return;
    this.#socket.write(frame(answer));
    // writableLength is what the kernel would not take; the kernel's own share is capped by SO_SNDBUF. Past the cap only
    // answers to queries taken before the take limit stopped taking (misses landing together): they wait in the listener's
    // room, for the read timeout at most, and the room resets whoever has left its answers unread longest when it is full.
    if (this.#socket.writableLength > this.#limits.maxUnsentBytes) {
      if (this.#unreadSinceMs < 0) this.#unreadSinceMs = this.#time.now;
      this.#room.fit();
      if (this.#closed) return;
    }
    this.#drainBacklog();
  }

  discard(_peer: ClientPeer): void {
    this.#inflight--;
    this.#served++;
    this.#lastActiveMs = this.#time.now;
    this.#drainBacklog();
  }

  /** No more queries from this client (it sent FIN, or we are shutting down); answer what was taken, then close. */
  stopReading(): void {
    this.#reading = false;
    this.#partialSinceMs = -1;
    this.#socket.pause();
    this.#drainBacklog();
  }

  /**
   * Closes for a counted reason: with a reset (RST) where the peer misbehaves,
   * or where anything is still unsent. Closed gracefully, such a socket would
   * become an orphan in FIN_WAIT1 that keeps its send queue while the kernel
   * probes a window the client keeps shut (minutes); a reset frees it at once.
   */
  close(reason: TcpCloseReason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reading = false;
    this.#backlog.length = 0;
    this.#counters.values[this.#counters.schema.slot[CLOSE_SLOT[reason]]]!++;
    if (reason === 'unsent_limit') this.#logger.debug('tcp client not reading its answers: reset', { listener: this.#listenerName, peer: this.#peer.address });
    if (reason === 'unsent_limit' || reason === 'read_timeout' || this.#unsent()) this.#socket.resetAndDestroy();
    else this.#socket.destroy();
  }

  /** Answers not yet taken by the client: in Node's buffer, or in the kernel's send queue (sent but not acknowledged included). */
  #unsent(): boolean {
    if (this.#socket.writableLength > 0) return true;
    const so = sockopts;
    const fd = so === null ? -1 : fdOf(this.#socket);
    return so !== null && fd >= 0 && so.unsentBytes(fd) > 0;
  }

  destroy(): void {
    this.#closed = true;
    this.#reading = false;
    this.#backlog.length = 0;
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    this.#framed = false;
    this.#pushing = true;
    this.#decoder.push(chunk);
    this.#pushing = false;
    this.#finishIfDone();
    const now = this.#time.now;
    if (this.#framed) this.#lastActiveMs = now;
    // Partial bytes start (or restart, after a completed message) the read timeout and touch nothing else.
    if (this.#decoder.buffered === 0) this.#partialSinceMs = -1;
    else if (this.#framed || this.#partialSinceMs < 0) this.#partialSinceMs = now;
  }

  #onFrame(msg: Buffer): void {
    if (!this.#reading && !this.#takingHeld) return;
    this.#framed = true;
    if (this.#inflight >= this.#limits.maxQueriesPerConnection || this.#unread()) {
      // At the cap, or its answers unread: this frame waits, and the decoder keeps the rest as raw bytes (a view per frame held would cost
      // ~110 B of heap for each 2-byte frame a client packs in) until answers make room.
      this.#backlog.push(msg);
      this.#decoder.pause();
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
    while (this.#backlog.length > 0 && this.#inflight < this.#limits.maxQueriesPerConnection && !this.#unread()) this.#dispatch(this.#backlog.shift()!);
    if (!this.#closed && this.#backlog.length === 0 && this.#inflight < this.#limits.maxQueriesPerConnection && this.#decoder.paused && !this.#unread()) {
      // What came while at the cap, taken before any FIN or shutdown, so answered like the backlog (answers it gets at
      // once do not re-enter here); it may fill the cap again, and pause the decoder and the socket again.
      this.#pushing = true;
      this.#takingHeld = true;
      this.#decoder.resume();
      this.#takingHeld = false;
      this.#pushing = false;
    }
    this.#draining = false;
    if (this.#closed) return;
    if (!this.#reading) {
      if (this.#inflight === 0 && this.#backlog.length === 0 && !this.#decoder.paused && !this.#socket.destroyed) {
        this.#ended = true;
        this.#socket.end();
      }
      return;
    }
    if (this.#decoder.paused) return;
    if (this.#backlog.length === 0 && this.#inflight < this.#limits.maxQueriesPerConnection && this.#socket.isPaused()) {
      // The client could not send the rest of a split message while we were paused: its read timeout starts again.
      this.#partialSinceMs = this.#decoder.buffered === 0 ? -1 : this.#time.now;
      this.#socket.resume();
    }
    this.#finishIfDone();
  }

  /**
   * Too many answers unread to take another query now; stamps when that
   * began. Cleared whenever the client has read enough (here, or on 'drain'):
   * a client that reads through a long stream of answers is never held back
   * for long, only one that stops.
   */
  #unread(): boolean {
    if (this.#socket.writableLength <= this.#takeLimit) {
      this.#unreadSinceMs = -1;
      return false;
    }
    if (this.#unreadSinceMs < 0) this.#unreadSinceMs = this.#time.now;
    return true;
  }

  #finishIfDone(): void {
    if (!this.#finishing || this.#pushing || this.#ended || this.#closed || !this.#reading) return;
    if (this.#served === 0 || this.#inflight > 0 || this.#backlog.length > 0 || this.#decoder.buffered > 0) return;
    this.#reading = false;
    this.#ended = true;
    this.#socket.end();
    // Keep reading: the client's FIN closes the socket, and bytes it sent after ours are dropped, not left to turn our close into a reset.
    this.#socket.resume();
  }
}