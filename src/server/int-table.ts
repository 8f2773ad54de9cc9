/**
 * A map from int32 keys (tokens, key hashes: nothing outside int32) to
 * values that makes no garbage while its size stays under the most it has
 * held: open addressing, linear probing, and deletion by shifting the run
 * back (no tombstones). It grows by doubling and never shrinks.
 *
 * Why not a Map: V8's Map keeps deleted entries as holes until it rebuilds
 * its table, so a Map whose entries come and go (misses in flight: one set
 * and one delete each) allocates a new table every few dozen insertions,
 * and shrinks and grows again as the count swings. In a batched worker
 * beside a miss flood that was about a fifth of the garbage each crossing
 * miss left (bench/worker-garbage.ts).
 */

/** Slots to begin with: a few dozen misses in flight without growing. */
const INITIAL_SLOTS = 64;

export class IntTable<V> {
  #keys: Int32Array;
  #vals: (V | undefined)[];
  #mask: number;
  #size: number;

  constructor() {
    this.#keys = new Int32Array(INITIAL_SLOTS);
    this.#vals = new Array<V | undefined>(INITIAL_SLOTS).fill(undefined);
    this.#mask = INITIAL_SLOTS - 1;
    this.#size = 0;
  }

  get size(): number {
    return this.#size;
  }

  get(key: number): V | undefined {
    const mask = this.#mask;
    for (let i = key & mask; ; i = (i + 1) & mask) {
      const v = this.#vals[i];
      if (v === undefined || this.#keys[i] === key) return v;
    }
  }

  set(key: number, value: V): void {
    if ((this.#size + 1) * 2 > this.#vals.length) this.#grow();
    const mask = this.#mask;
    for (let i = key & mask; ; i = (i + 1) & mask) {
      if (this.#vals[i] === undefined) {
        this.#keys[i] = key;
        this.#vals[i] = value;
        this.#size++;
        return;
      }
      if (this.#keys[i] === key) {
        this.#vals[i] = value;
        return;
      }
    }
  }

  delete(key: number): boolean {
    const mask = this.#mask;
    const keys = this.#keys;
    const vals = this.#vals;
    let i = key & mask;
    for (; ; i = (i + 1) & mask) {
      if (vals[i] === undefined) return false;
      if (keys[i] === key) break;
    }
    vals[i] = undefined;
    this.#size--;
    // Shift back the rest of the run: an entry moves into the hole unless its home slot lies after the hole, up to where it sits.
    for (let j = (i + 1) & mask; vals[j] !== undefined; j = (j + 1) & mask) {
      const home = keys[j]! & mask;
      const stays = i <= j ? i < home && home <= j : i < home || home <= j;
      if (stays) continue;
      keys[i] = keys[j]!;
      vals[i] = vals[j];
      vals[j] = undefined;
      i = j;
    }
    return true;
  }

  /** Every value, in no particular order (a copy: the caller may change the table meanwhile). */
  values(): V[] {
    const out: V[] = [];
    for (const v of this.#vals) if (v !== undefined) out.push(v);
    return out;
  }

  #grow(): void {
    const keys = this.#keys;
    const vals = this.#vals;
    const slots = vals.length * 2;
    this.#keys = new Int32Array(slots);
    this.#vals = new Array<V | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
    this.#size = 0;
    for (let i = 0; i < vals.length; i++) if (vals[i] !== undefined) this.set(keys[i]!, vals[i]!);
  }
}
