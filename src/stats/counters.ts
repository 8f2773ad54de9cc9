/**
 * The one counter model: every counter is a slot of a Float64Array, declared
 * once (metric name, labels, help) next to the code that bumps it, and read by
 * the metrics code only at scrape time (a labelled prom-client inc() costs
 * about 1 us here; a typed-array add a few ns, design section 7).
 *
 * A block is passed into the constructor that bumps it, never created inside,
 * so a worker thread can place it in a SharedArrayBuffer that the main thread
 * publishes from.
 */

export interface CounterDef {
  /** Prometheus name, the CoreDNS one where the meaning is the same. */
  readonly name: string;
  readonly help: string;
  /** Constant labels that tell this slot apart from others of the same name. */
  readonly labels?: Readonly<Record<string, string>>;
  /** 'counter' (default) only goes up; 'gauge' is set. */
  readonly type?: 'counter' | 'gauge';
}

export interface CounterSchema<K extends string> {
  /** Slot index of each counter: `values[schema.slot.sent]++`. */
  readonly slot: { readonly [P in K]: number };
  readonly defs: readonly CounterDef[];
  readonly size: number;
}

export function defineCounters<K extends string>(defs: Readonly<Record<K, CounterDef>>): CounterSchema<K> {
  const keys = Object.keys(defs) as K[];
  const slot = {} as { [P in K]: number };
  keys.forEach((k, i) => {
    slot[k] = i;
  });
  return { slot, defs: keys.map((k) => defs[k]), size: keys.length };
}

export class Counters<K extends string> {
  readonly schema: CounterSchema<K>;
  readonly values: Float64Array;

  /** `buffer` lets the slots live in shared memory (a worker bumps, the main thread reads). */
  constructor(schema: CounterSchema<K>, buffer?: ArrayBufferLike, byteOffset = 0) {
    this.schema = schema;
    this.values = buffer === undefined ? new Float64Array(schema.size) : new Float64Array(buffer, byteOffset, schema.size);
  }

  get(k: K): number {
    return this.values[this.schema.slot[k]] ?? 0;
  }

  /** Name -> value, for tests and logs. */
  snapshot(): Record<K, number> {
    const out = {} as Record<K, number>;
    for (const k of Object.keys(this.schema.slot) as K[]) out[k] = this.get(k);
    return out;
  }
}

/**
 * Sets `out` to the element-wise sum of `parts` (all at least as long): how
 * the blocks of several threads (counters, histogram buckets) become the one
 * series a scrape publishes.
 */
export function sumArraysInto(out: Float64Array, parts: readonly Float64Array[]): void {
  out.fill(0);
  for (const v of parts) {
    for (let i = 0; i < out.length; i++) out[i]! += v[i]!;
  }
}
