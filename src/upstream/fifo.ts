/**
 * A ring-buffer deque: O(1) at both ends without the O(n) shift of an array
 * used as a queue (undici's fixed-queue does the same). Grows by doubling;
 * callers bound its length themselves.
 *
 *   buf: [ . . h x x x x t . . ]   h = #head, t = (#head + #length) % capacity
 */
export class Fifo<T> {
  #buf: Array<T | undefined>;
  #head: number;
  #length: number;

  constructor(initialCapacity = 16) {
    this.#buf = new Array<T | undefined>(Math.max(2, initialCapacity));
    this.#head = 0;
    this.#length = 0;
  }

  get length(): number {
    return this.#length;
  }

  push(item: T): void {
    if (this.#length === this.#buf.length) this.#grow();
    this.#buf[(this.#head + this.#length) % this.#buf.length] = item;
    this.#length++;
  }

  /** Puts an item at the head: for work that was already waiting longer than everything queued. */
  unshift(item: T): void {
    if (this.#length === this.#buf.length) this.#grow();
    this.#head = (this.#head - 1 + this.#buf.length) % this.#buf.length;
    this.#buf[this.#head] = item;
    this.#length++;
  }

  peek(): T | undefined {
    return this.#length === 0 ? undefined : this.#buf[this.#head];
  }

  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const item = this.#buf[this.#head];
    this.#buf[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#buf.length;
    this.#length--;
    return item;
  }

  /** Keeps the items for which `keep` is true, in order; returns how many were removed. */
  retain(keep: (item: T) => boolean): number {
    const n = this.#length;
    let kept = 0;
    for (let i = 0; i < n; i++) {
      const item = this.shift() as T;
      if (keep(item)) {
        this.push(item);
        kept++;
      }
    }
    return n - kept;
  }

  /** Empties the queue, returning the items in order. */
  drain(): T[] {
    const out: T[] = [];
    for (let item = this.shift(); item !== undefined; item = this.shift()) out.push(item);
    return out;
  }

  #grow(): void {
    const old = this.#buf;
    const next = new Array<T | undefined>(old.length * 2);
    for (let i = 0; i < this.#length; i++) next[i] = old[(this.#head + i) % old.length];
    this.#buf = next;
    this.#head = 0;
  }
}
