/**
 * Name compression for a message being written (RFC 1035 4.1.4): every name
 * written or noted leaves its suffixes, by label, as pointer targets, and a
 * later name is written up to its longest suffix already in the message, then
 * a pointer to it. Suffixes compare case-insensitively (RFC 4343), so a name
 * that points at the question comes out in the question's spelling, as it
 * does from any server that compresses. Slow path (answers built once, then
 * cached): a map keyed by each suffix's lower-cased wire bytes.
 */
import { POINTER_MASK } from './constants.js';

/** A pointer holds 14 bits of offset. */
const MAX_POINTER_TARGET = 0x3fff;

export class NameTable {
  /** Lower-cased wire bytes of a suffix (latin1) -> the offset of its first occurrence. */
  readonly #at = new Map<string, number>();
  /** Keys in the order they were added, so a record that did not fit can be taken back. */
  readonly #added: string[] = [];

  /** Where the table stands: undo(mark()) forgets everything added after. */
  mark(): number {
    return this.#added.length;
  }

  undo(mark: number): void {
    while (this.#added.length > mark) this.#at.delete(this.#added.pop()!);
  }

  /**
   * Remembers the suffixes of `wire` (an uncompressed name, lower-cased) that
   * start before `upTo`, as written at `off` in the message: the question (in
   * whatever case it was written), or the labels a name wrote out before its
   * pointer.
   */
  note(wire: Buffer, off: number, upTo = wire.length - 1): void {
    for (let i = 0; i < upTo && off + i <= MAX_POINTER_TARGET; i += wire[i]! + 1) {
      const key = wire.toString('latin1', i);
      if (!this.#at.has(key)) {
        this.#at.set(key, off + i);
        this.#added.push(key);
      }
    }
  }

  /**
   * Writes the uncompressed, lower-cased name `wire` into `msg` at `off`, and returns the
   * offset past it, or -1 when it does not fit before `limit`. `compress`:
   * end it in a pointer to the longest suffix already written (never for
   * names in the rdata of types other than NS, CNAME, SOA, PTR, MX: RFC
   * 3597 4, and RFC 2782 for SRV targets). Either way the labels it writes
   * out become targets for later names.
   */
  write(msg: Buffer, off: number, limit: number, wire: Buffer, compress: boolean): number {
    let cut = wire.length - 1;
    let target = -1;
    if (compress) {
      for (let i = 0; i < wire.length - 1; i += wire[i]! + 1) {
        const at = this.#at.get(wire.toString('latin1', i));
        if (at !== undefined) {
          cut = i;
          target = at;
          break;
        }
      }
    }
    const end = off + cut + (target < 0 ? 1 : 2);
    if (end > limit) return -1;
    msg.set(wire.subarray(0, cut), off);
    if (target < 0) msg[off + cut] = 0;
    else msg.writeUInt16BE((POINTER_MASK << 8) | target, off + cut);
    this.note(wire, off, cut);
    return end;
  }
}
