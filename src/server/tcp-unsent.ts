/**
 * The bounds on unsent answers of client TCP connections (tcp-client-conn.ts):
 * the kernel's share (a small SO_SNDBUF), the cap per connection in Node, the
 * take limit that stops taking queries short of it, and the room past the cap
 * that the agent's connections share (tcp-slots.ts).
 *
 * The take limit bounds what answers given at once (cache hits) can queue.
 * Answers to queries taken before, misses in flight together, may still all
 * land in one turn: up to the in-flight cap of 64 KiB answers, owed by our
 * pipelining and not by a client that stopped reading, so resetting for them
 * would cut clients that read. They wait in the room instead, and the client
 * must read them within the read timeout as any unread answers ('drain').
 * The room is one sum for the agent (every client TCP listener: tcp-slots.ts),
 * not a share per connection: the worst case across its connections is the
 * per-connection figure times the connections plus the room, while one client
 * that pipelines large answers may use all of it. When it is full the connection whose answers have waited
 * unread longest goes first: a client that stalled, not the reader whose
 * answer just landed. The sum is a scan of the agent's connections (about
 * 10 us over 1,024), run only when an answer lands past a connection's cap,
 * never on a hit.
 */
import type net from 'node:net';
import { MAX_MESSAGE } from '../dns/constants.js';
import type { Logger } from '../log.js';
import { fdOf, loadSocketOptions, type SocketOptions } from '../sys/socket-options.js';

/**
 * The kernel doubles it to a 64 KiB sk_sndbuf, which one large segment may
 * overshoot: SIOCOUTQ peaks near 110 KB measured with 60 KB answers, against
 * 3.5 MB under autotuning (net.ipv4.tcp_wmem max 4 MiB) for a client that
 * never reads. 64 KiB in flight is far more than a node-local RTT (tens of
 * us) needs for DNS.
 */
export const TCP_SEND_BUFFER_BYTES = 32 * 1024;

/** Warned once per process, not per listener or connection. */
let warnedNoSendBuffer = false;

/** The kernel's share: SO_SNDBUF on each accepted socket, through koffi (0 bytes: kernel autotuning). */
export class SendBufferLimit {
  readonly #bytes: number;
  readonly #logger: Logger;
  readonly #listenerName: string;
  #sockopts: SocketOptions | null;

  constructor(bytes: number, logger: Logger, listenerName: string) {
    this.#bytes = bytes;
    this.#logger = logger;
    this.#listenerName = listenerName;
    this.#sockopts = null;
  }

  /** At the listener's start: the binding, or one warning saying why there is none. */
  async load(): Promise<void> {
    if (this.#bytes <= 0) return;
    const so = await loadSocketOptions();
    if (typeof so === 'string') this.#warn(so);
    else this.#sockopts = so;
  }

  /** Once per accepted socket (0.3 us), never per query; bounds what the kernel holds for a client that does not read. */
  apply(socket: net.Socket): void {
    const so = this.#sockopts;
    if (so === null) return;
    const fd = fdOf(socket);
    const errno = fd < 0 ? -1 : so.setSendBuffer(fd, this.#bytes);
    if (errno === 0) return;
    this.#sockopts = null;
    this.#warn(fd < 0 ? 'no file descriptor on the accepted socket' : `setsockopt(SO_SNDBUF) failed, errno ${errno}`);
  }

  #warn(reason: string): void {
    if (warnedNoSendBuffer) return;
    warnedNoSendBuffer = true;
    this.#logger.warn('cannot limit the kernel send buffer of client TCP sockets: unsent answers are bounded in Node only', {
      listener: this.#listenerName,
      reason,
    });
  }
}

/**
 * Two maximum-size answers (64 KiB each), so one large answer queued behind
 * another does not cut a client that reads. With a reading client Node's
 * buffer stays near empty: the kernel hands data straight to the client's
 * receive buffer (128 KiB initially) and our send buffer. For a client that
 * never reads the total unsent on our side is then at most ~110 KB kernel +
 * this, ~240 KiB (~240 MiB at 1,024 connections), plus what it holds of the
 * agent's room (TCP_UNSENT_ROOM_BYTES) for the read timeout, where kernel
 * autotuning plus the old 1 MiB cut-off allowed ~4.5 MiB each (3.5 MB of it
 * in the kernel, measured).
 */
export const TCP_MAX_UNSENT_BYTES = 128 * 1024;

/**
 * Unsent bytes in Node's buffer above which no new query is taken: one more
 * answer, of any size, given at once (a cache hit) still fits under
 * maxUnsentBytes. A client that pipelines queries for large answers is then
 * held back by its own reading, as the in-flight cap holds it back by our
 * upstream, instead of being reset at the cap while it reads. Never below the
 * socket's high-water mark: past that mark a write asks for 'drain', which is
 * what takes the queries again.
 */
export function takeLimit(maxUnsentBytes: number, socket: net.Socket): number {
  return Math.max(socket.writableHighWaterMark, maxUnsentBytes - (MAX_MESSAGE + 2));
}

/**
 * Two connections' worth of the default in-flight cap (128) of maximum-size
 * answers landing at once; 16 MiB per agent (one room for all its client TCP
 * listeners: tcp-slots.ts) on top of the per-connection bound, held at most
 * for the read timeout by a client that does not read.
 */
export const TCP_UNSENT_ROOM_BYTES = 16 * 1024 * 1024;

/** What the room needs of a connection. */
export interface UnsentRoomHolder {
  /** Unsent bytes Node holds for it past its cap; 0 once closed. */
  readonly overUnsentCap: number;
  /** Since when (coarse ms) its answers wait unread; -1 when they do not. */
  readonly unreadSinceMs: number;
  close(reason: 'unsent_limit'): void;
}

export class UnsentRoom {
  readonly #maxBytes: number;
  /** Walked afresh at each fit(): a Set, or the slots (tcp-slots.ts). */
  readonly #holders: Iterable<UnsentRoomHolder>;

  constructor(maxBytes: number, holders: Iterable<UnsentRoomHolder>) {
    this.#maxBytes = maxBytes;
    this.#holders = holders;
  }

  /** After an answer landed past a connection's cap: resets connections, those unread longest first, until what is past the caps fits. */
  fit(): void {
    let total = 0;
    for (const h of this.#holders) total += h.overUnsentCap;
    while (total > this.#maxBytes) {
      let victim: UnsentRoomHolder | null = null;
      let victimBytes = 0;
      let victimSince = Infinity;
      for (const h of this.#holders) {
        const bytes = h.overUnsentCap;
        if (bytes === 0) continue;
        // Oldest stamp first, one not waiting on its reading (-1: past a cap set below the socket's high-water mark)
        // last; on a tie the one holding more, so fewer clients are cut.
        const since = h.unreadSinceMs < 0 ? Infinity : h.unreadSinceMs;
        if (victim === null || since < victimSince || (since === victimSince && bytes > victimBytes)) {
          victim = h;
          victimBytes = bytes;
          victimSince = since;
        }
      }
      if (victim === null) return;
      victim.close('unsent_limit');
      total -= victimBytes;
    }
  }
}
