/**
 * Packed items (protocol.ts Packer) between the main thread and a worker
 * through a SharedArrayBuffer ring with one writer and one reader, instead
 * of a structured clone and a transfer of their buffers per message. The
 * clone and transfer were most of a crossing's cost: on one pinned core at
 * 5,000 turns/s of two misses (bench/micro/thread-crossing.ts), a report
 * posted with its buffers took 102 us of CPU per turn (both threads, the
 * worker's pacing included) and arrived 50-52 us later at p50; a ring
 * record plus a post of the number 0 as the wake-up, 76-83 us and 31-35 us.
 *
 * Two rings per worker:
 *   reports (worker ─► main): a turn's misses and waiting clients; then a
 *     post of RING_WAKE, unless one is still unread (Ctl.WAKE). Every
 *     message the main thread takes from the worker reads this ring first.
 *   completions (main ─► worker): a turn's completions; then the pending
 *     word (and the eventfd when the worker sleeps), as a post did. The
 *     worker reads this ring before each message it takes.
 * So a record is always read before anything its writer posted after it
 * (drained, aborted, closed; 'again', 'abort'). A turn's items that do not
 * fit go in a message as before (a transfer), and so do the writer's next
 * turns until the reader has taken that message (Ctl.OVERFLOW,
 * Ctl.DONE_OVERFLOW): the ring never overtakes a posted turn.
 *
 * Layout: two Int32 words (head: bytes read, tail: bytes written; both
 * counting up and wrapping at 2^32), then the data, a power of two long.
 * A record holds two Packed parts: its length in bytes, per part its count,
 * stride, byte length and key bytes (-1: no keys), both parts' index words,
 * their bytes, then each key as a 16-bit length and its latin1 characters
 * (cache keys are built from wire bytes, one character a byte). A record
 * never wraps: one that would is preceded by a pad word (-1) that sends
 * the reader to the start.
 */
import { Ctl, type Packed } from './protocol.js';

/** Bytes of a ring: a turn of 500 misses is about 75 KB. */
export const RING_BYTES = 256 * 1024;
const HEADER_BYTES = 64;
const HEAD = 0;
const TAIL = 1;
const PAD = -1;
const PART_WORDS = 4;
const RECORD_WORDS = 1 + 2 * PART_WORDS;
const NO_KEYS = -1;

/** What a worker posts to say "read the ring" (a number: it clones for next to nothing). */
export const RING_WAKE = 0;
export type RingWake = typeof RING_WAKE;

export function ringBuffer(dataBytes = RING_BYTES): SharedArrayBuffer {
  if (dataBytes < 64 || (dataBytes & (dataBytes - 1)) !== 0) throw new Error(`ring size ${dataBytes} is not a power of two of 64 or more`);
  return new SharedArrayBuffer(HEADER_BYTES + dataBytes);
}

const NONE: Packed = { count: 0, stride: 1, index: new Int32Array(0), bytes: new Uint8Array(0), keys: null };

export class PackedRing {
  readonly #ctl: Int32Array;
  readonly #words: Int32Array;
  readonly #bytes: Buffer;
  readonly #mask: number;
  readonly #size: number;

  constructor(sab: SharedArrayBuffer) {
    this.#ctl = new Int32Array(sab, 0, 2);
    this.#size = sab.byteLength - HEADER_BYTES;
    this.#mask = this.#size - 1;
    this.#words = new Int32Array(sab, HEADER_BYTES, this.#size >> 2);
    this.#bytes = Buffer.from(sab, HEADER_BYTES, this.#size);
  }

  /** Records written and not yet read. */
  get waiting(): boolean {
    return Atomics.load(this.#ctl, HEAD) !== Atomics.load(this.#ctl, TAIL);
  }

  /** Writer: one record of two parts (b may be absent); false when it does not fit (the caller posts them instead). */
  write(a: Packed, b: Packed = NONE): boolean {
    const aKeys = keyBytes(a);
    const bKeys = keyBytes(b);
    const indexWords = a.count * a.stride + b.count * b.stride;
    const need = (RECORD_WORDS + indexWords) * 4 + ((a.bytes.length + b.bytes.length + Math.max(aKeys, 0) + Math.max(bKeys, 0) + 3) & ~3);
    const head = Atomics.load(this.#ctl, HEAD) >>> 0;
    let tail = Atomics.load(this.#ctl, TAIL) >>> 0;
    const used = (tail - head) >>> 0;
    let at = tail & this.#mask;
    const room = this.#size - at;
    const skip = room < need ? room : 0;
    if (need > this.#size >> 1 || used + skip + need > this.#size) return false;
    if (skip > 0) {
      this.#words[at >> 2] = PAD;
      tail = (tail + skip) >>> 0;
      at = 0;
    }
    const w = this.#words;
    let word = at >> 2;
    w[word] = need;
    part(w, word + 1, a, aKeys);
    part(w, word + 1 + PART_WORDS, b, bKeys);
    word += RECORD_WORDS;
    w.set(a.index.subarray(0, a.count * a.stride), word);
    word += a.count * a.stride;
    w.set(b.index.subarray(0, b.count * b.stride), word);
    word += b.count * b.stride;
    let off = word << 2;
    const out = this.#bytes;
    out.set(a.bytes, off);
    off += a.bytes.length;
    out.set(b.bytes, off);
    off += b.bytes.length;
    off = writeKeys(out, off, a);
    writeKeys(out, off, b);
    // The record's words and bytes before the tail that makes it visible (Atomics.store orders them for the reader).
    Atomics.store(this.#ctl, TAIL, (tail + need) | 0);
    return true;
  }

  /**
   * Reader: every record written so far, each part handed over as items of
   * its own (views of one copy of the record: they outlive the ring's bytes,
   * see direct.ts add()); a part with no items as null. Returns the records read.
   */
  drain(each: (a: Packed | null, b: Packed | null) => void): number {
    let head = Atomics.load(this.#ctl, HEAD) >>> 0;
    const tail = Atomics.load(this.#ctl, TAIL) >>> 0;
    let n = 0;
    while (head !== tail) {
      const at = head & this.#mask;
      const word = at >> 2;
      const len = this.#words[word]!;
      if (len === PAD) {
        head = (head + this.#size - at) >>> 0;
        continue;
      }
      const w = this.#words;
      const aIndexWords = w[word + 1]! * w[word + 2]!;
      const bIndexWords = w[word + 1 + PART_WORDS]! * w[word + 2 + PART_WORDS]!;
      const aByteLength = w[word + 3]!;
      const bodyAt = (word + RECORD_WORDS) << 2;
      const keysAt = bodyAt + (aIndexWords + bIndexWords) * 4 + aByteLength + w[word + 3 + PART_WORDS]!;
      // One copy of the record's index words and bytes (both parts), which the parts are views of: its waiters' datagrams
      // outlive the ring's bytes (direct.ts add()). Into Buffer's pool: a typed array of its own past 64 bytes takes a
      // backing store of its own (measured here: 0.6-0.9 us for 90 bytes, against about 0.1 us from the pool).
      const body = Buffer.allocUnsafe(keysAt - bodyAt);
      this.#bytes.copy(body, 0, bodyAt, keysAt);
      const bytesAt = (aIndexWords + bIndexWords) * 4;
      const a = this.#part(word + 1, body, 0, bytesAt, keysAt);
      const b = this.#part(word + 1 + PART_WORDS, body, aIndexWords * 4, bytesAt + aByteLength, keysAt + Math.max(w[word + 4]!, 0));
      head = (head + len) >>> 0;
      // Room for the writer as soon as the record is copied out, before it is handled.
      Atomics.store(this.#ctl, HEAD, head | 0);
      n++;
      each(a, b);
    }
    Atomics.store(this.#ctl, HEAD, head | 0);
    return n;
  }

  /** A part's items as views of `body` (the record's copy): index words from `indexAt`, bytes from `bytesAt`; keys read from the ring at `keysAt`. */
  #part(at: number, body: Buffer, indexAt: number, bytesAt: number, keysAt: number): Packed | null {
    const w = this.#words;
    const count = w[at]!;
    if (count === 0) return null;
    const stride = w[at + 1]!;
    const bytes = body.subarray(bytesAt, bytesAt + w[at + 2]!);
    let keys: string[] | null = null;
    if (w[at + 3] !== NO_KEYS) {
      const src = this.#bytes;
      keys = new Array<string>(count);
      let off = keysAt;
      for (let k = 0; k < count; k++) {
        const len = src.readUInt16LE(off);
        keys[k] = src.toString('latin1', off + 2, off + 2 + len);
        off += 2 + len;
      }
    }
    // The pool keeps its slices 8-byte aligned, and the index words start the body at a multiple of 4: an Int32Array over them is valid.
    return { count, stride, index: new Int32Array(body.buffer, body.byteOffset + indexAt, count * stride), bytes, keys };
  }
}

function keyBytes(p: Packed): number {
  if (p.keys === null) return NO_KEYS;
  let n = 0;
  for (let k = 0; k < p.count; k++) n += 2 + p.keys[k]!.length;
  return n;
}

function part(w: Int32Array, at: number, p: Packed, keys: number): void {
  w[at] = p.count;
  w[at + 1] = p.stride;
  w[at + 2] = p.bytes.length;
  w[at + 3] = keys;
}

function writeKeys(out: Buffer, off: number, p: Packed): number {
  if (p.keys === null) return off;
  for (let k = 0; k < p.count; k++) {
    const key = p.keys[k]!;
    const n = key.length;
    out[off] = n & 0xff;
    out[off + 1] = n >>> 8;
    // One character a byte (latin1): a short loop beats write()'s encoding dispatch for keys this size.
    for (let c = 0; c < n; c++) out[off + 2 + c] = key.charCodeAt(c);
    off += 2 + n;
  }
  return off;
}

/** Worker: whether to post a wake-up (none is waiting unread); the main thread clears the word before it reads the ring. */
export function wakeDue(ctl: Int32Array): boolean {
  return Atomics.compareExchange(ctl, Ctl.WAKE, 0, 1) === 0;
}

/** Main thread: about to read the ring; a record written after this posts a wake-up of its own. */
export function wakeTaken(ctl: Int32Array): void {
  Atomics.store(ctl, Ctl.WAKE, 0);
}
