// IntTable (src/server/int-table.ts) against a Map: random sets and deletes over keys that crowd a few slots
// (multiples of the table's size, negative hashes, neighbours), through growth, with every key checked each round.
import t from 'tap';
import { IntTable } from '../src/server/int-table.js';

/** A deterministic PRNG (replay a failure by its seed). */
function prng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % n;
  };
}

t.test('IntTable agrees with a Map through sets, deletes and growth, with keys crowded into few slots', async (t) => {
  for (const seed of [1, 2, 3]) {
    const rnd = prng(seed);
    const pool = Array.from({ length: 300 }, (_, i) => (i % 3 === 0 ? i * 64 : i % 3 === 1 ? -(i * 128) - 1 : 0x7ffffe00 + i));
    const table = new IntTable<string>();
    const map = new Map<number, string>();
    let wrong = 0;
    for (let step = 0; step < 20_000; step++) {
      const k = pool[rnd(step < 10_000 ? 300 : 40)]!;
      if (rnd(3) === 0) {
        if (table.delete(k) !== map.delete(k)) wrong++;
      } else {
        table.set(k, `v${step}`);
        map.set(k, `v${step}`);
      }
      if (step % 500 === 0) for (const key of pool) if (table.get(key) !== map.get(key)) wrong++;
      if (table.size !== map.size) wrong++;
    }
    t.equal(wrong, 0, `seed ${seed}: every get, delete and size as a Map's`);
    t.same(table.values().sort(), [...map.values()].sort(), `seed ${seed}: the same values`);
  }
});
