/**
 * What making room in the cache's slab costs an insert: ENTRIES names per
 * list (default 100,000) churned by unique names, so every insert evicts
 * one and the slab's free space must be won back from dead records. Prints
 * the insert time's p50 / p99 / p99.99 and the longest inserts that no
 * garbage collection overlapped (this process's own keys and timers make
 * some garbage; a GC pause is not the store's). One JSON line.
 *
 *   node dist/bench/micro/store-churn.js [--entries 100000] [--root DIST]
 *
 * `--root` takes the store from another build's dist/ (e.g. the one before
 * a change), so before and after run alike.
 */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import type { AnswerStore, StoreOptions } from '../../src/cache/store.js';

const here = path.dirname(fileURLToPath(import.meta.url));

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

async function main(): Promise<void> {
  const entries = Number(arg('entries', '100000'));
  const root = path.resolve(arg('root', path.join(here, '../..')));
  const mod = (await import(pathToFileURL(path.join(root, 'src/cache/store.js')).href)) as { AnswerStore: new (o: StoreOptions) => AnswerStore };
  const gcs: Array<[number, number]> = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push([e.startTime, e.startTime + e.duration]);
  }).observe({ entryTypes: ['gc'] });
  // Room for both lists at ~400 bytes a record: the entry counts, not the bytes, bound the lists (as --cache-size does).
  const cap = Math.max(64 << 20, entries * 400);
  const store = new mod.AnswerStore({ capacity: [entries, entries], budget: [cap * 0.4, cap * 0.4], slabCap: cap, shared: true });
  const wire = Buffer.alloc(120, 1);
  const input = { wire, questionEnd: 40, ttlOffsets: new Uint16Array([40]), storedAt: 0, expiresAt: 1e12, prefetchAt: 1e12, hits: 0 };
  const total = entries * 6;
  // Made up front: the loop allocates nothing of its own but the slow inserts' records.
  const keys = Array.from({ length: total }, (_, i) => `churn-${i}.ns-${i % 100}.svc.cluster.local`);
  const times = new Float64Array(total - 2 * entries);
  const slow: Array<[number, number]> = [];
  for (let i = 0; i < total; i++) {
    const t0 = performance.now();
    store.insert(i % 3 === 0 ? 1 : 0, keys[i]!, input);
    const t1 = performance.now();
    // The first 2 x entries fill the lists; from there every insert evicts.
    if (i >= 2 * entries) {
      times[i - 2 * entries] = t1 - t0;
      if (t1 - t0 > 0.2) slow.push([t0, t1]);
    }
  }
  await new Promise((r) => setTimeout(r, 50));
  times.sort();
  const at = (f: number): number => Math.round(times[Math.min(times.length - 1, Math.floor(f * times.length))]! * 1000 * 10) / 10;
  const notGc = slow.filter(([a, b]) => !gcs.some(([g0, g1]) => g0 < b && g1 > a)).map(([a, b]) => Math.round((b - a) * 100) / 100).sort((x, y) => y - x);
  process.stdout.write(JSON.stringify({
    root, entries, inserts: times.length, p50Us: at(0.5), p99Us: at(0.99), p9999Us: at(0.9999),
    longestNotGcMs: notGc.slice(0, 5), slowNotGc: notGc.length, slabMiB: Math.round(store.slabBytes / 2 ** 20 * 10) / 10,
  }) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`store-churn: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
