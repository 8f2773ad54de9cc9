/**
 * DNS over TCP framing (RFC 1035 4.2.2, RFC 7766 8): each message is preceded
 * by a 2-byte big-endian length. Used by the TCP listener and by every TCP
 * upstream. Frames are handed out as views of the chunk they arrived in; bytes
 * are copied only when a frame spans two reads.
 */

export class FrameDecoder {
  /**
   * Bytes not yet handed out, in arrival order: an incomplete frame (or
   * length prefix), or, while paused, whatever came. Chunks are kept as they
   * came and joined once, when the frame they make up is complete: a frame
   * trickled in a byte per read costs its own size in copies, not its square.
   */
  #parts: Buffer[] = [];
  #held = 0;
  #paused = false;
  readonly #onFrame: (frame: Buffer) => void;

  /** `onFrame` is bound once here rather than passed per chunk (no closure per read). */
  constructor(onFrame: (frame: Buffer) => void) {
    this.#onFrame = onFrame;
  }

  /** Bytes held back: an incomplete frame, or (paused) everything not yet handed out. */
  get buffered(): number {
    return this.#held;
  }

  get paused(): boolean {
    return this.#paused;
  }

  /**
   * No more frames until resume(): the rest of the current chunk and every
   * later one are kept as raw bytes. Called from `onFrame` by a reader at its
   * limit, so that what waits costs its bytes and not one view per frame.
   */
  pause(): void {
    this.#paused = true;
  }

  /** Hands out what was kept while paused (and may be paused again by `onFrame`). */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (this.#held >= this.#needed()) this.#parse(this.#take());
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.#held === 0 && !this.#paused) {
      this.#parse(chunk);
      return;
    }
    this.#parts.push(chunk);
    this.#held += chunk.length;
    if (!this.#paused && this.#held >= this.#needed()) this.#parse(this.#take());
  }

  /** Bytes the first frame held needs, prefix included (2 while the prefix itself is incomplete). */
  #needed(): number {
    if (this.#held < 2) return 2;
    const first = this.#parts[0]!;
    const hi = first[0]!;
    const lo = first.length > 1 ? first[1]! : this.#parts[1]![0]!;
    return 2 + ((hi << 8) | lo);
  }

  #take(): Buffer {
    const buf = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#held);
    this.#parts = [];
    this.#held = 0;
    return buf;
  }

  #parse(buf: Buffer): void {
    let off = 0;
    while (buf.length - off >= 2 && !this.#paused) {
      const len = buf.readUInt16BE(off);
      if (buf.length - off - 2 < len) break;
      this.#onFrame(buf.subarray(off + 2, off + 2 + len));
      off += 2 + len;
    }
    if (off < buf.length) {
      // Copied once, so the retained tail does not pin a large chunk for long.
      this.#parts.push(Buffer.from(buf.subarray(off)));
      this.#held += buf.length - off;
    }
  }
}

/** One buffer with the length prefix and the message, for a single write(). */
export function frame(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 2);
  out.writeUInt16BE(msg.length, 0);
  out.set(msg, 2);
  return out;
}
