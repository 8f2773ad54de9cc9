// IntTable (src/int-table.ts) against a Map: random sets and deletes over keys that crowd a few slots
// (multiples of the table's size, negative hashes, neighbours), through growth, with every key checked each round.
import t from 'tap';
import { IntTable } from '../src/int-table.js';

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

t.test('IntTable.clear empties it, and it takes keys again after', async (t) => {
  const table = new IntTable<number>();
  for (let k = 0; k < 200; k++) table.set(k * 64, k);
  table.clear();
  t.equal(table.size, 0, 'nothing left');
  t.same(table.values(), [], 'no value left');
  t.equal(table.get(64), undefined, 'a key it held is gone');
  table.set(64, 7);
  t.equal(table.get(64), 7, 'set again after clear');
  t.equal(table.size, 1);
});
