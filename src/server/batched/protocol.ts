/**
 * What crosses between the main thread and a batched UDP worker. Both ways
 * are batched: a worker writes at most one record per loop turn (its misses
 * and the clients waiting on them), the main thread at most one record of
 * completions per event-loop turn (bookkeeping for the worker's own waiting
 * clients when the main thread answered them itself: direct.ts). Items are
 * packed into one byte buffer plus an index (Packer), and the records go
 * through a SharedArrayBuffer ring each way (packed-ring.ts), so a turn with
 * 500 misses costs one copy in and one out, not 500 messages; a turn that
 * does not fit goes as a message (the buffers transferred). Everything else
 * (start, logs, drained, reload, pause, abort, close) is a message.
 *
 * A worker spends its life in a blocking loop and never sees a 'message'
 * event: it reads its ring and takes messages with receiveMessageOnPort()
 * when the shared `pending` word says there are some, and the main thread
 * writes to the worker's eventfd when the worker sleeps in poll (see
 * worker.ts).
 */
import type { TtlCaps } from '../../cache/policy.js';
import type { PrefetchOptions } from '../../cache/prefetch.js';
import type { StoreLayout } from '../../cache/store.js';
import type { LogFields } from '../../log.js';
import type { NativeBlock } from '../../sys/udp-batch.js';
import type { MissOutcome } from '../hit-path.js';

/** Outcomes by index, as they travel. */
export const OUTCOMES: readonly MissOutcome[] = ['upstream', 'local', 'timeout', 'network', 'overloaded', 'closed', 'servfail', 'malformed', 'capped'];
export const OUTCOME_INDEX: Readonly<Record<MissOutcome, number>> = Object.fromEntries(OUTCOMES.map((o, i) => [o, i])) as Record<MissOutcome, number>;

/** Int32 words shared by the main thread and one worker (Atomics). */
export const Ctl = {
  /** Non-zero: messages wait on the worker's port (PENDING_PORT), records in its completions ring (PENDING_RING), or both. */
  PENDING: 0,
  /** 1 while the worker sleeps in poll: whoever posts must write to its eventfd. */
  SLEEPING: 1,
  /** When the main thread last refused one of this worker's misses for load: wall ms, a BigInt64 over this word and the next (shed-gate.ts). */
  REFUSED_AT: 2,
  /** Turns of the worker's loop, wrapping (worker-watch.ts: one that stands still is stuck). */
  TURNS: 4,
  /** The worker's native block: 0 none yet, BLOCK_HELD (its address in the next two words, low then high), BLOCK_FREED. */
  BLOCK: 5,
  BLOCK_LOW: 6,
  BLOCK_HIGH: 7,
  /** 1 while a ring wake-up (packed-ring.ts RING_WAKE) is posted and not yet read: the worker posts no other. */
  WAKE: 8,
  /** Reports posted with their misses (the ring was full) and not yet read: while any is, the worker posts, not rings (packed-ring.ts). */
  OVERFLOW: 9,
  /** The same the other way: 'done' messages posted (the completions ring was full) and not yet taken by the worker. */
  DONE_OVERFLOW: 10,
  WORDS: 11,
} as const;

/** Bits of Ctl.PENDING. */
export const PENDING_PORT = 1;
export const PENDING_RING = 2;

const BLOCK_HELD = 1;
const BLOCK_FREED = 2;

/**
 * The worker's native block (loop.ts), published as soon as it is allocated:
 * a thread ended by terminate() (stuck, silent at shutdown or at start) or
 * out of heap runs no finally and never frees it itself, so the main thread
 * frees it once the thread is gone ('exit': worker-link.ts freeBlock()). One
 * still in a native call that never returns has no 'exit': nothing is freed.
 * Returns the worker's own free, which takes the block first (takeBlock).
 */
export function holdBlock(ctl: Int32Array, block: NativeBlock): () => void {
  Atomics.store(ctl, Ctl.BLOCK_LOW, (block.address % 2 ** 32) | 0);
  Atomics.store(ctl, Ctl.BLOCK_HIGH, Math.floor(block.address / 2 ** 32));
  Atomics.store(ctl, Ctl.BLOCK, BLOCK_HELD);
  return () => {
    // Terminated between the two, it leaks the block; the other order could free it twice.
    if (takeBlock(ctl) !== null) block.free();
  };
}

/**
 * The block's address for the one caller that is to free it, taken before
 * the free (by the worker at its end, by the main thread after 'exit'),
 * so it is never freed twice; null: none, or already taken.
 */
export function takeBlock(ctl: Int32Array): number | null {
  if (Atomics.compareExchange(ctl, Ctl.BLOCK, BLOCK_HELD, BLOCK_FREED) !== BLOCK_HELD) return null;
  return Atomics.load(ctl, Ctl.BLOCK_HIGH) * 2 ** 32 + (Atomics.load(ctl, Ctl.BLOCK_LOW) >>> 0);
}

/** Everything a worker needs to start; sockets are made and bound by the main thread (errors surface at start()). */
export interface WorkerInit {
  readonly index: number;
  /** One bound, non-blocking UDP socket per listen address. */
  readonly fds: readonly number[];
  readonly names: readonly string[];
  /** Per socket: bound to 0.0.0.0 or :: (its datagrams carry the address they were sent to: IP_PKTINFO); absent: every one read as if. */
  readonly wildcards?: readonly boolean[];
  readonly wakeFd: number;
  readonly ctl: SharedArrayBuffer;
  /** The ring that carries its misses and waiting clients to the main thread (packed-ring.ts). */
  readonly reports: SharedArrayBuffer;
  /** The ring that carries the main thread's completions to it. */
  readonly completions: SharedArrayBuffer;
  /** Counter blocks (server, cache, io), one after the other. */
  readonly stats: SharedArrayBuffer;
  /** The policy the worker's cache reads with (TTL caps for the answers it prepares, prefetch, stale window). */
  readonly cache: CachePolicy;
  /**
   * The main thread's cache store (SharedArrayBuffers): the worker reads it
   * and never writes it (cache/reader.ts). A restarted worker attaches to
   * the same one.
   */
  readonly store: StoreLayout;
  /** The main thread's upstream questions in flight and its cap (upstream-load.ts), for the shed gate. */
  readonly load: SharedArrayBuffer;
  readonly maxUdpSize: number;
  readonly queryLogEvery: number;
  /** This worker's part of --client-miss-rate (0: off), its burst and its cap on a client's questions in flight (listener-options.ts workerMissLimit). */
  readonly clientMissRate: number;
  readonly clientMissBurst: number;
  readonly clientMissInflight: number;
  readonly batch: number;
  readonly maxInflight: number;
  /** Queries older than this (kernel receive timestamp to recvmmsg) are dropped unanswered; 0: never. */
  readonly maxQueryAgeMs: number;
  /** See WorkerSettings.localZones. */
  readonly localZones: readonly string[];
  /** How long an idle worker sleeps in poll before it looks around anyway; default loop.ts IDLE_POLL_MS. */
  readonly idlePollMs?: number;
  /** The main thread holds and answers the clients waiting on this worker's misses (direct.ts): the worker only counts them. */
  readonly remoteWaiters?: boolean;
}

export type CachePolicy = TtlCaps & PrefetchOptions & { readonly staleMs: number };

/** What a reload changes in a worker (and what a restarted worker starts with). */
export interface WorkerSettings {
  readonly cache: CachePolicy;
  readonly maxUdpSize: number;
  readonly queryLogEvery: number;
  /** This worker's part of the per-client miss limit: 0 = off. */
  readonly clientMissRate: number;
  readonly clientMissBurst: number;
  readonly clientMissInflight: number;
  /** Zones the main thread answers from its cluster view when at its limit: never shed by the worker (shed-gate.ts). */
  readonly localZones: readonly string[];
}

/**
 * Items packed for transfer: per item [token, tag, start, length, ...extra]
 * (`stride` words); length -1 means null. The extra words: whether the main
 * thread answered a completion's clients, a waiter's sockaddr (see below).
 */
export interface Packed {
  readonly count: number;
  readonly stride: number;
  readonly index: Int32Array;
  readonly bytes: Uint8Array;
  /** Cache keys of misses (strings clone cheaply); null for completions. */
  readonly keys: string[] | null;
}

export type LogRecord = readonly [level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields: LogFields | undefined];

/**
 * A client waiting on a miss, as the worker reports it so the main thread
 * can answer it itself (listener.ts DirectAnswers): (token, tag, the
 * client's datagram), the sockaddr as extra words, then when the client's
 * query first reached the worker (stamp16 of that turn; 0: not known). The
 * main thread hands a late record back with every word, so a client run
 * again keeps its first arrival (its duration is measured from then).
 */
/** msgvec.ts SOCKADDR_SLOT_BYTES in words: the sockaddr and the address its query was sent to (a wildcard socket's answer leaves from it). */
export const WAITER_SOCKADDR_WORDS = 12;
export const WAITER_ARRIVED_WORD = WAITER_SOCKADDR_WORDS;
export const WAITER_STRIDE = 4 + WAITER_SOCKADDR_WORDS + 1;
/** A waiter's tag: the socket index in the low byte, the sockaddr's length above. */
export function waiterTag(sock: number, nameLen: number): number {
  return sock | (nameLen << 8);
}

/**
 * A completion's extra words. 0: 1 when the main thread answered this
 * token's clients itself (direct.ts: every one it holds, and each record
 * that comes later is answered or handed back there), 0 when the worker
 * answers them. 1: when those answers went out (stamp16), so the worker
 * logs the queries it kept for the log with that time, not its own later
 * one.
 */
export const DONE_STRIDE = 6;

/** Now in 1/16 ms, modulo 2^32 (a 74-hour wrap): comparable between threads (epoch-based, see loop-parts.ts TurnClock). */
export function stamp16(): number {
  return stamp16Of(performance.timeOrigin + performance.now());
}

/** The epoch-ms time `ms` as a stamp16(). */
export function stamp16Of(ms: number): number {
  return Math.floor(ms * 16) >>> 0;
}

/** Milliseconds from a stamp16() to the epoch-ms time `now` (never negative). */
export function msSince16(then: number, now: number): number {
  const d = ((Math.floor(now * 16) >>> 0) - then) >>> 0;
  return d >= 0x80000000 ? 0 : d / 16;
}

/** A miss's tag: a background refresh of an entry a worker hit (the main thread claims it: DnsCache.claimRefresh); 0 otherwise. */
export const MISS_REFRESH = 1;

/** Worker to main: one per loop turn at most. */
export interface WorkerReport {
  /** (token, tag 0 or MISS_REFRESH, query bytes) with keys. */
  readonly misses: Packed | null;
  /** Clients waiting on this turn's misses and on misses already in flight (WAITER_STRIDE). */
  readonly waiters?: Packed | null;
  readonly logs: LogRecord[] | null;
  /** Started (sockets and vectors ready), or why not. */
  readonly ready?: true;
  readonly failed?: string;
  /** true: paused and nothing in flight any more; false: in flight again since (a miss taken on a socket kept in its group). Only when it changes. */
  readonly drained?: boolean;
  /** Answer to 'configure': applied from this turn on. */
  readonly configured?: true;
  /** Answer to 'abort': waiters answered stale or SERVFAIL. */
  readonly aborted?: number;
  /** Left its loop; it posts nothing after this. */
  readonly closed?: true;
  /** Its misses and waiters came in this report, not the ring (packed-ring.ts): the main thread says when it has read them (Ctl.OVERFLOW). */
  readonly overflow?: true;
  /** Only under NODELOCAL_MISS_TRACE (src/miss-trace.ts): [turn start, post, slept in poll before the turn (0/1), messages and completions done], us. */
  readonly trace?: readonly number[];
}

/** Main to worker. */
export type ToWorker =
  /** `overflow`: they came in this message, not the ring (packed-ring.ts): the worker says when it has taken them (Ctl.DONE_OVERFLOW). */
  | { readonly t: 'done'; readonly items: Packed; readonly overflow?: true }
  /** Waiter records (WAITER_STRIDE) that reached the main thread after it had answered their question: handled again by the worker. */
  | { readonly t: 'again'; readonly items: Packed }
  | { readonly t: 'configure' } & WorkerSettings
  /** `keep`, per socket: left in its group (a wildcard: listener.ts pause()), so read and answered until close. */
  | { readonly t: 'pause'; readonly keep?: readonly boolean[] }
  | { readonly t: 'abort' }
  | { readonly t: 'close' };

/** Packs items into growable buffers; take() hands them over (for transfer) and starts afresh. */
export class Packer {
  #index: Int32Array;
  #bytes: Uint8Array;
  #keys: string[] | null;
  #count: number;
  #used: number;
  readonly #withKeys: boolean;
  readonly #stride: number;

  constructor(withKeys: boolean, stride = 4) {
    this.#withKeys = withKeys;
    this.#stride = stride;
    this.#index = new Int32Array(stride * 64);
    this.#bytes = new Uint8Array(8192);
    this.#keys = withKeys ? [] : null;
    this.#count = 0;
    this.#used = 0;
  }

  get count(): number {
    return this.#count;
  }

  /** Pushes an item; its extra words (stride > 4) are set with extra() before the next push. */
  push(token: number, tag: number, data: Uint8Array | null, key: string | null): void {
    if ((this.#count + 1) * this.#stride > this.#index.length) {
      const index = new Int32Array(this.#index.length * 2);
      index.set(this.#index);
      this.#index = index;
    }
    const len = data === null ? -1 : data.length;
    if (len > 0 && this.#used + len > this.#bytes.length) {
      const bytes = new Uint8Array(Math.max(this.#bytes.length * 2, this.#used + len));
      bytes.set(this.#bytes.subarray(0, this.#used));
      this.#bytes = bytes;
    }
    const at = this.#count * this.#stride;
    this.#index[at] = token;
    this.#index[at + 1] = tag;
    this.#index[at + 2] = this.#used;
    this.#index[at + 3] = len;
    if (len > 0) {
      this.#bytes.set(data!, this.#used);
      this.#used += len;
    }
    if (this.#keys !== null) this.#keys.push(key ?? '');
    this.#count++;
  }

  /** Extra word k of the last item pushed. */
  extra(k: number, value: number): void {
    this.#index[(this.#count - 1) * this.#stride + 4 + k] = value;
  }

  /** Copies `n` words from `words` (at `from`) into the last item's extra words. */
  extraWords(words: Uint32Array, from: number, n: number): void {
    const at = (this.#count - 1) * this.#stride + 4;
    const index = this.#index;
    for (let w = 0; w < n; w++) index[at + w] = words[from + w]! | 0;
  }

  /** The items in place, valid until the next push() or clear(): to be copied elsewhere (packed-ring.ts). */
  view(): Packed {
    return { count: this.#count, stride: this.#stride, index: this.#index.subarray(0, this.#count * this.#stride), bytes: this.#bytes.subarray(0, this.#used), keys: this.#keys };
  }

  /** Starts afresh, keeping the buffers (their items were copied: view()). */
  clear(): void {
    if (this.#keys !== null) this.#keys.length = 0;
    this.#count = 0;
    this.#used = 0;
  }

  /**
   * The packed items, in buffers of their own (the caller's, to transfer):
   * exact-size copies, so the packer keeps its buffers. A turn usually packs
   * a few hundred bytes; handing over fresh 8 KB buffers each time cost more
   * than the copy (measured under a miss load, about one report per miss:
   * take() was a fifth of a worker's JavaScript time).
   */
  take(): Packed {
    const p: Packed = {
      count: this.#count, stride: this.#stride, index: this.#index.slice(0, this.#count * this.#stride), bytes: this.#bytes.slice(0, this.#used), keys: this.#keys,
    };
    // A burst grew them: back to the usual size rather than holding the peak for good.
    if (this.#index.length > this.#stride * 4096) this.#index = new Int32Array(this.#stride * 64);
    if (this.#bytes.length > 1 << 20) this.#bytes = new Uint8Array(8192);
    this.#keys = this.#withKeys ? [] : null;
    this.#count = 0;
    this.#used = 0;
    return p;
  }
}

/** The transfer list of a packed batch. */
export function transferOf(p: Packed): ArrayBuffer[] {
  return [p.index.buffer as ArrayBuffer, p.bytes.buffer as ArrayBuffer];
}

/** Item i's bytes as a Buffer view (no copy), or null. */
export function itemBytes(p: Packed, i: number): Buffer | null {
  const len = p.index[i * p.stride + 3]!;
  if (len < 0) return null;
  return Buffer.from(p.bytes.buffer, p.bytes.byteOffset + p.index[i * p.stride + 2]!, len);
}

export function itemToken(p: Packed, i: number): number {
  return p.index[i * p.stride]!;
}

export function itemTag(p: Packed, i: number): number {
  return p.index[i * p.stride + 1]!;
}

/** Extra word k of item i (as uint32); 0 when items have no such word. */
export function itemExtra(p: Packed, i: number, k: number): number {
  return 4 + k < p.stride ? p.index[i * p.stride + 4 + k]! >>> 0 : 0;
}

/** Word offset of item i's extra words in `index` (a Uint32Array over the same buffer reads them unsigned). */
export function itemExtraOffset(p: Packed, i: number): number {
  return i * p.stride + 4;
}
