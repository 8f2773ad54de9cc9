/**
 * DNS over TCP framing (RFC 1035 4.2.2, RFC 7766 8): each message is preceded
 * by a 2-byte big-endian length. Used by the TCP listener and by every TCP
 * upstream. Frames are handed out as views of the chunk they arrived in; bytes
 * are copied only when a frame spans two reads.
 */

export class FrameDecoder {
  /** Bytes of an incomplete frame (or length prefix) carried over from earlier chunks. */
  #pending: Buffer | null = null;
  readonly #onFrame: (frame: Buffer) => void;

  /** `onFrame` is bound once here rather than passed per chunk (no closure per read). */
  constructor(onFrame: (frame: Buffer) => void) {
    this.#onFrame = onFrame;
  }

  /** Bytes held back waiting for the rest of a frame. */
  get buffered(): number {
    return this.#pending === null ? 0 : this.#pending.length;
  }

  push(chunk: Buffer): void {
    let buf = chunk;
    if (this.#pending !== null) {
      buf = Buffer.concat([this.#pending, chunk]);
      this.#pending = null;
    }
    let off = 0;
    while (buf.length - off >= 2) {
      const len = buf.readUInt16BE(off);
      if (buf.length - off - 2 < len) break;
      this.#onFrame(buf.subarray(off + 2, off + 2 + len));
      off += 2 + len;
    }
    if (off < buf.length) {
      // Copy so the retained tail does not pin a large chunk for long.
      this.#pending = Buffer.from(buf.subarray(off));
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
