/**
 * A map from int32 keys (tokens, message ids, key hashes: nothing outside
 * int32) to values that makes no garbage while its size stays under the
 * most it has held: open addressing, linear probing, and deletion by
 * shifting the run back (no tombstones). It grows by doubling and never
 * shrinks.
 *
 * Why not a Map: V8's Map keeps deleted entries as holes until it rebuilds
 * its table, so a Map whose entries come and go (misses in flight: one set
 * and one delete each) allocates a new table every few dozen insertions,
 * and shrinks and grows again as the count swings. In a batched worker
 * beside a miss flood that was about a fifth of the garbage each crossing
 * miss left (bench/worker-garbage.ts). Worse on a long-lived Map: V8
 * allocates the rebuilt table in the generation the old one was in, so
 * once a Map's table has been promoted every rebuild is old-generation
 * garbage, and a steady miss load on the main thread drove a mark-compact
 * every 1.8 s (README "Miss path").
 */

/** Slots to begin with: a few dozen misses in flight without growing. */
const INITIAL_SLOTS = 64;

export class IntTable<V> {
  #keys: Int32Array;
  #vals: (V | undefined)[];
  #mask: number;
  #size: number;

  /** `holds`: how many entries it takes before it first grows (at least a few dozen). */
  constructor(holds = INITIAL_SLOTS / 2 - 1) {
    let slots = INITIAL_SLOTS;
    while ((holds + 1) * 2 > slots) slots *= 2;
    this.#keys = new Int32Array(slots);
    this.#vals = new Array<V | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
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

  /** Empties it (keeping its size: it never shrinks). */
  clear(): void {
    this.#vals.fill(undefined);
    this.#size = 0;
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

/** What HashChains files: its hash, and a link to the next of the same hash. */
export interface Chained<T> {
  readonly hash: number;
  sameHash: T | undefined;
}

/**
 * Items filed by an int32 hash, those that share one chained through their
 * own `sameHash` link: a table by key with no key string in it and no
 * garbage per item (the item is the chain node). The caller walks the
 * chain from first() to find its key.
 */
export class HashChains<T extends Chained<T>> {
  readonly #byHash = new IntTable<T>();

  /** The newest item filed under `hash` (follow sameHash for the others). */
  first(hash: number): T | undefined {
    return this.#byHash.get(hash);
  }

  add(item: T): void {
    item.sameHash = this.#byHash.get(item.hash);
    this.#byHash.set(item.hash, item);
  }

  /** Takes `item` out, if it is in. */
  remove(item: T): void {
    const first = this.#byHash.get(item.hash);
    if (first === item) {
      if (item.sameHash === undefined) this.#byHash.delete(item.hash);
      else this.#byHash.set(item.hash, item.sameHash);
      return;
    }
    for (let o = first; o !== undefined; o = o.sameHash) {
      if (o.sameHash === item) {
        o.sameHash = item.sameHash;
        return;
      }
    }
  }
}

/** What a KeyedSet holds: a key it gives the item when added. */
export interface Keyed {
  tableKey: number;
}

/**
 * A set of objects that makes no garbage per add and delete (a Set does,
 * int-table.ts's header says how): each added item gets a fresh int key,
 * kept on the item, and the set is an IntTable by that key. A key is
 * never reused while its item is in (2^31 adds apart).
 */
export class KeyedSet<T extends Keyed> {
  readonly #byKey = new IntTable<T>();
  #nextKey = 1;

  get size(): number {
    return this.#byKey.size;
  }

  add(item: T): void {
    const k = this.#nextKey;
    this.#nextKey = k >= 0x7fffffff ? 1 : k + 1;
    item.tableKey = k;
    this.#byKey.set(k, item);
  }

  delete(item: T): void {
    if (this.#byKey.get(item.tableKey) === item) this.#byKey.delete(item.tableKey);
  }

  /** Every item, in no particular order (a copy: the caller may add and delete meanwhile). */
  values(): T[] {
    return this.#byKey.values();
  }
}
