/**
 * The small parts a batched worker's loop (loop.ts) hands its hit path: the
 * client a datagram came from (its sockaddr in the receive vector, copied
 * out only when the query must wait), the datagram itself (a view of its
 * receive slot, kept per slot and length), the clock stamped once per turn,
 * the wall clock datagrams are aged by, and the logger whose lines ride
 * with the turn's report.
 */
import type { Clock } from '../../clock.js';
import type { LogFields, Logger } from '../../log.js';
import { keyHashSeed } from '../../dns/query.js';
import type { ClientPeer } from '../listener.js';
import { ClientMissLimiter } from '../client-limit.js';
import { AF_INET6, type UdpBatchSys } from '../../sys/udp-batch.js';
import { SOCKADDR_SLOT_BYTES, type Arena, type Timespec } from './msgvec.js';
import type { LogRecord } from './protocol.js';

/**
 * Where an answer goes: the sockaddr of a received datagram. A live peer
 * reads it from the receive vector; a peer whose query became a waiter is
 * detached (its sockaddr copied out) because the slot is refilled next turn.
 */
export class Peer implements ClientPeer {
  sock: number;
  answered: boolean;
  words: Uint32Array;
  wordOff: number;
  nameLen: number;

  constructor(words: Uint32Array, wordOff: number) {
    this.sock = 0;
    this.answered = false;
    this.words = words;
    this.wordOff = wordOff;
    this.nameLen = SOCKADDR_SLOT_BYTES;
  }

  /** Keeps the sockaddr past this turn (the slot is refilled next turn): copied into `into`'s current chunk. */
  detach(into: SockaddrChunks): void {
    const n = SOCKADDR_SLOT_BYTES >> 2;
    const at = into.carve();
    const words = into.chunk;
    for (let w = 0; w < n; w++) words[at + w] = this.words[this.wordOff + w]!;
    this.words = words;
    this.wordOff = at;
  }

  /** Decoded only when someone reads it (the query log). */
  get address(): string {
    const b = new Uint8Array(this.words.buffer, this.words.byteOffset + this.wordOff * 4, this.nameLen);
    const family = b[0]! | (b[1]! << 8);
    if (family === AF_INET6) return ipv6Text(b.subarray(8, 24));
    return `${b[4]}.${b[5]}.${b[6]}.${b[7]}`;
  }

  /** For coredns_dns_requests_total{family} without decoding the address: an IPv4-mapped IPv6 source counts as IPv4 (as CoreDNS's Go does). */
  get family(): string {
    // Read as words (little-endian host, as sa_family above), no view allocated: sockaddr_in6's address is
    // bytes 8-23, and ::ffff:a.b.c.d is ten zero bytes then 0xffff, i.e. words 2 and 3 zero, word 4 0xffff0000.
    const w = this.words;
    const o = this.wordOff;
    if ((w[o]! & 0xffff) !== AF_INET6) return 'IPv4';
    return w[o + 2] === 0 && w[o + 3] === 0 && w[o + 4] === 0xffff0000 ? 'IPv4' : 'IPv6';
  }

  /** ClientPeer.addressHash from the sockaddr's address words (seeded as cache keys are), no string decoded. */
  get addressHash(): number {
    const w = this.words;
    const o = this.wordOff;
    let h = keyHashSeed();
    // sockaddr_in's address is word 1; sockaddr_in6's words 2-5.
    if ((w[o]! & 0xffff) !== AF_INET6) h = Math.imul(h ^ w[o + 1]!, 0x9e3779b1);
    else for (let k = 2; k < 6; k++) h = Math.imul((h ^ w[o + k]!) ^ (h >>> 15), 0x9e3779b1);
    return (h ^ (h >>> 16)) | 0;
  }

  get port(): number {
    const b = new Uint8Array(this.words.buffer, this.words.byteOffset + this.wordOff * 4, 4);
    return (b[2]! << 8) | b[3]!;
  }
}

/**
 * Where detached peers keep their sockaddrs: runs of SOCKADDR_SLOT_BYTES
 * carved in order from chunks of DETACH_CHUNK_PEERS, as Buffer's pool
 * carves small buffers. A run is never handed out twice (no free list, so
 * no peer can see another's address); a chunk goes to the collector with
 * the last peer in it. A typed array of its own per waiting client (an
 * object and an ArrayBuffer, about 180 bytes) was the largest thing a
 * crossed miss kept alive in the worker, and under a miss flood what the
 * worker keeps alive is what each young-generation collection copies,
 * with the worker's hits waiting.
 * Held beyond what is live: at most one chunk per DETACH_CHUNK_PEERS misses
 * taken in the last deadline (a chunk outlives its last waiter by nothing).
 */
export const DETACH_CHUNK_PEERS = 64;

export class SockaddrChunks {
  chunk: Uint32Array;
  #next: number;

  constructor() {
    this.chunk = new Uint32Array(DETACH_CHUNK_PEERS * (SOCKADDR_SLOT_BYTES >> 2));
    this.#next = 0;
  }

  /** The word offset of a fresh run in `chunk` (which may be a new chunk: read it after this). */
  carve(): number {
    const n = SOCKADDR_SLOT_BYTES >> 2;
    if (this.#next + n > this.chunk.length) {
      this.chunk = new Uint32Array(this.chunk.length);
      this.#next = 0;
    }
    const at = this.#next;
    this.#next = at + n;
    return at;
  }
}

/**
 * Views of the receive slots, one per (slot, length) seen, made once: the
 * hit path needs a Buffer exactly as long as the datagram, and making one
 * per datagram was the loop's only allocation per hit (about 95 bytes).
 * Reusing one is safe because handle() may keep nothing of its `msg` past
 * the call (HitPath's buffer contract: the slot's bytes change with the
 * next receive anyway). Queries are short and come in few lengths: a few
 * hundred views in practice; lengths from VIEW_LENGTHS up get a fresh view
 * each time, so the cache holds at most slots x VIEW_LENGTHS views (about
 * 3 MB for 64 slots, only if every length is seen in every slot).
 */
export const VIEW_LENGTHS = 512;

export class SlotViews {
  readonly #buffer: ArrayBuffer;
  readonly #views: (Buffer | undefined)[][];

  constructor(buffer: ArrayBuffer, slots: number) {
    this.#buffer = buffer;
    this.#views = Array.from({ length: slots }, () => []);
  }

  /** The datagram in slot `slot`: `length` bytes at `offset` of the buffer. */
  get(slot: number, offset: number, length: number): Buffer {
    if (length >= VIEW_LENGTHS) return Buffer.from(this.#buffer, offset, length);
    const bySlot = this.#views[slot]!;
    let v = bySlot[length];
    if (v === undefined) {
      v = Buffer.from(this.#buffer, offset, length);
      bySlot[length] = v;
    }
    return v;
  }
}

/** The hit path's clock in a worker: stamped once per turn (TTLs count in seconds), no timers (the loop never yields). */
/** CLOCK_REALTIME (what the kernel stamps datagrams with), read into a struct timespec in the worker's native block. */
export class Realtime {
  readonly now: Timespec;
  readonly #sys: UdpBatchSys;
  readonly #arena: Arena;
  readonly #off: number;

  /** `off`: 16 bytes of the arena for the timespec. */
  constructor(sys: UdpBatchSys, arena: Arena, off: number) {
    this.now = { sec: 0, nsec: 0 };
    this.#sys = sys;
    this.#arena = arena;
    this.#off = off;
  }

  /** Now, into `now`. */
  read(): void {
    this.#sys.realtime(this.#arena.address + this.#off);
    const u32 = this.#arena.u32;
    const w = this.#off >> 2;
    this.now.sec = u32[w]! + u32[w + 1]! * 0x100000000;
    this.now.nsec = u32[w + 2]!;
  }

  /** Now in microseconds since the epoch (the trace's clock). */
  us(): number {
    this.read();
    return this.now.sec * 1e6 + this.now.nsec / 1000;
  }
}

export class TurnClock implements Clock {
  stamp: number;
  /** performance.timeOrigin, read once: its getter makes a new number on every read (a turn's garbage, as the main thread's clock.ts keeps it). */
  readonly #origin: number;
  constructor() {
    this.#origin = performance.timeOrigin;
    this.stamp = this.#origin + performance.now();
  }
  tick(): number {
    this.stamp = this.#origin + performance.now();
    return this.stamp;
  }
  now(): number {
    return this.stamp;
  }
  wall(): number {
    return Date.now();
  }
  sweep(): () => void {
    // Nothing in the worker's hit path sweeps; a timer would never fire inside the blocking loop anyway.
    return () => {};
  }
}

/** Log lines ride along with the turn's report; the main thread's logger filters and writes them. */
export class ReportLogger implements Logger {
  records: LogRecord[] = [];
  debug(msg: string, fields?: LogFields): void {
    this.records.push(['debug', msg, fields]);
  }
  info(msg: string, fields?: LogFields): void {
    this.records.push(['info', msg, fields]);
  }
  warn(msg: string, fields?: LogFields): void {
    this.records.push(['warn', msg, fields]);
  }
  error(msg: string, fields?: LogFields): void {
    this.records.push(['error', msg, fields]);
  }
}

/** RFC 5952 text of 16 address bytes: lower-case hex, the longest run of two or more zero groups as "::". */
export function ipv6Text(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i]! << 8) | b[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/**
 * The worker's own per-client miss limiter: the check happens in the worker,
 * before a miss crosses to the main thread, because only the worker knows
 * the client's address (the boundary carries a token, a key and the query).
 */
export function missLimiter(rate: number, burst: number, inflight: number): ClientMissLimiter | null {
  return rate > 0 ? new ClientMissLimiter(rate, burst, inflight) : null;
}
