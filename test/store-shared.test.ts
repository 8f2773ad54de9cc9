// One store for all threads (cache/store.ts, store-layout.ts, reader.ts): a
// reader in a real worker thread reading while this thread inserts, replaces,
// evicts, compacts and clears at a high rate gets its key's own answer or a
// miss, never another key's bytes, never an exception; readers' marks give
// entries a second chance at eviction; a reader reports refreshes and never
// claims them; garbage never makes a read throw or loop; and a big budget
// with few entries costs little memory (untouched pages).
import t from 'tap';
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { DnsCache, type CacheOptions } from '../src/cache/cache.js';
import { CacheReader } from '../src/cache/reader.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { SECOND_CHANCES } from '../src/cache/store-lru.js';
import { SEQ, allocLayout } from '../src/cache/store-layout.js';
import { ManualClock, systemClock } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { QueryScratch, keyHashSeed, parseQuery, parseQueryInto } from '../src/dns/query.js';
import { Counters } from '../src/stats/counters.js';
import { a, answer, query, soa } from './kit/dns.js';
import { expectedData } from './helpers/store-keys.js';

const OPTS: CacheOptions = {
  positiveCapacity: 1000, negativeCapacity: 1000, maxBytes: 1 << 20, successTtl: 3600, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0,
};
const POLICY = { successTtl: 3600, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0 };

function shared(o: Partial<CacheOptions> = {}): DnsCache {
  return new DnsCache({ ...OPTS, ...o }, new Counters(CACHE_COUNTERS), { shared: true });
}

const keyOf = (name: string): string => parseQuery(query({ name })).key;

/** Key i's answer with `records` A records, each naming key i. */
function upstream(i: number, records: number, ttl = 3600): Buffer {
  const name = `k${i}.example`;
  return answer(name, Array.from({ length: records }, (_, r) => a(name, expectedData(i, r), ttl)));
}

function put(cache: DnsCache, i: number, records: number, now: number, ttl = 3600): void {
  const up = upstream(i, records, ttl);
  cache.insert(keyOf(`k${i}.example`), up, scanAnswer(up)!, now);
}

function ask(reader: CacheReader, name: string, now: number): Buffer | null {
  const q = new QueryScratch();
  parseQueryInto(query({ name }), q);
  return reader.answer(q, now, 65535, 1232);
}

interface ReaderResult {
  reads: number;
  hits: number;
  misses: number;
  wrong: number;
  threw: number;
  firstWrong: string;
  gaveUp: number;
}

t.test('a reader thread reading while this thread inserts, replaces, evicts, compacts and clears: its own key\'s answer or a miss, nothing else', async (t) => {
  const NAMES = 600;
  // Small on purpose: 300 entries at most and a 48 KiB slab, so the churn evicts, compacts and reuses slots all the time.
  const cache = shared({ positiveCapacity: 300, negativeCapacity: 50, maxBytes: 48 * 1024 });
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(new URL('./helpers/store-reader.ts', import.meta.url), {
    workerData: { layout: cache.layout, names: NAMES, stop, maxReads: 20_000_000 },
  });
  const messages: Record<string, unknown>[] = [];
  const done = new Promise<ReaderResult>((resolve, reject) => {
    worker.on('message', (m: Record<string, unknown>) => {
      messages.push(m);
      if (m['done'] === true) resolve(m as unknown as ReaderResult);
    });
    worker.on('error', reject);
    worker.on('exit', (code) => reject(new Error(`reader exited (${code}) before reporting`)));
  });
  t.teardown(() => void worker.terminate());
  // Bounded wait for the thread to start (seconds under the TypeScript loader).
  for (let k = 0; k < 600 && !messages.some((m) => m['ready'] === true); k++) await new Promise((r) => setTimeout(r, 50));
  t.ok(messages.some((m) => m['ready'] === true), 'the reader started');
  // Warm so that the reader finds hits from its first reads.
  for (let i = 0; i < 300; i++) put(cache, i, 1 + (i % 4), systemClock.now());
  let seed = 7;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const seqBefore = Atomics.load(new Int32Array(cache.layout.index, 0, 4), SEQ);
  let ops = 0;
  // Rounds with a yield between them, so the reader is sure to be running while we write.
  for (let round = 0; round < 40; round++) {
    for (let k = 0; k < 5_000; k++, ops++) {
      const i = rand(NAMES);
      const op = rand(100);
      const now = systemClock.now();
      if (op < 85) put(cache, i, 1 + rand(12), now);
      else if (op < 97) {
        // A negative answer for the key: it leaves the positive list (a removal) and lands in the small negative one.
        const up = answer(`k${i}.example`, [], { rcode: 'NXDOMAIN', authorities: [soa('example', 5, 5)] });
        cache.insert(keyOf(`k${i}.example`), up, scanAnswer(up)!, now);
      } else if (op < 99) put(cache, i, 1, now, 1); // short-lived: expires under the reader
      else if (rand(50) === 0) cache.clear();
      else ops--; // nothing written
    }
    await new Promise((r) => setImmediate(r));
  }
  Atomics.store(new Int32Array(stop), 0, 1);
  const r = await done;
  const seqAfter = Atomics.load(new Int32Array(cache.layout.index, 0, 4), SEQ);
  t.equal(seqAfter % 2, 0, 'the sequence word is even at rest');
  t.ok(seqAfter - seqBefore >= 2 * ops, 'every change went through the sequence word');
  t.ok(cache.counters.get('evictPositive') > 0, 'entries were evicted');
  t.ok(r.reads > 10_000, `the reader read throughout (${r.reads} reads, ${r.hits} hits, ${r.misses} misses, ${r.gaveUp} given up)`);
  t.ok(r.hits > 0, 'and found answers');
  t.equal(r.threw, 0, `no read threw ${r.firstWrong}`);
  t.equal(r.wrong, 0, `no answer belonged to another key ${r.firstWrong}`);
});

t.test('second chance: an entry a reader hit survives the eviction that takes the least recent unmarked one', async (t) => {
  const clock = new ManualClock();
  const cache = shared({ positiveCapacity: 3 });
  const reader = new CacheReader(cache.layout, POLICY, new Counters(CACHE_COUNTERS));
  for (let i = 0; i < 3; i++) put(cache, i, 1, clock.now());
  t.ok(ask(reader, 'k0.example', clock.now()), 'a reader hit on the least recent entry');
  // LRU order, least recent first, without touching it (export does not).
  const order = (): string[] => [...cache.export(clock.now())].map((r) => r.key);
  const k = (i: number): string => keyOf(`k${i}.example`);
  put(cache, 3, 1, clock.now());
  t.same(order(), [k(2), k(0), k(3)], 'k0, marked, got its second chance (moved to the front); k1, the least recent unmarked, went');
  t.equal(cache.counters.get('evictPositive'), 1);
  put(cache, 4, 1, clock.now());
  put(cache, 5, 1, clock.now());
  t.same(order(), [k(3), k(4), k(5)], 'the chance spent, k0 went in its turn');

  // Bounded: when every entry is marked, one insert moves at most SECOND_CHANCES of them, then evicts the least recent.
  const big = shared({ positiveCapacity: SECOND_CHANCES + 10 });
  const r2 = new CacheReader(big.layout, POLICY, new Counters(CACHE_COUNTERS));
  const n = SECOND_CHANCES + 10;
  for (let i = 0; i < n; i++) put(big, i, 1, clock.now());
  for (let i = 0; i < n; i++) ask(r2, `k${i}.example`, clock.now());
  put(big, n, 1, clock.now());
  t.equal(big.positiveSize, n, 'one entry went');
  t.equal(big.lookup(keyOf(`k${SECOND_CHANCES}.example`), clock.now()), undefined, 'the least recent after the bounded run of second chances');
});

t.test('a reader: hits and misses counted, expired is a miss, a due refresh reported but claimed only by the writer, once', async (t) => {
  const clock = new ManualClock();
  const cache = new DnsCache({ ...OPTS, minHits: 2, percent: 10 }, new Counters(CACHE_COUNTERS), { shared: true });
  const counters = new Counters(CACHE_COUNTERS);
  const reader = new CacheReader(cache.layout, { ...POLICY, minHits: 2, percent: 10 }, counters);
  t.equal(reader.answer(new QueryScratch(), clock.now(), 512, 1232), null, 'an unparsed scratch is just a miss');
  put(cache, 1, 2, clock.now(), 20);
  t.ok(ask(reader, 'K1.example', clock.now()), 'a hit, whatever the spelling');
  t.notOk(reader.refreshDue);
  clock.advance(18_500);
  t.ok(ask(reader, 'k1.example', clock.now()), 'a hit in the prefetch window');
  t.ok(reader.refreshDue, 'due: reported to the hit path');
  t.ok(ask(reader, 'k1.example', clock.now()));
  t.ok(reader.refreshDue, 'still due: the reader sets no flag');
  t.equal(cache.counters.get('prefetch'), 0);
  t.ok(cache.claimRefresh(keyOf('k1.example'), clock.now()), 'the writer claims it');
  t.notOk(cache.claimRefresh(keyOf('k1.example'), clock.now()), 'once');
  t.ok(ask(reader, 'k1.example', clock.now()));
  t.notOk(reader.refreshDue, 'being refreshed: not reported again');
  t.equal(cache.counters.get('prefetch'), 1);
  t.notOk(cache.claimRefresh(keyOf('k2.example'), clock.now()), 'nothing to refresh for an absent key');
  clock.advance(2_000);
  t.equal(ask(reader, 'k1.example', clock.now()), null, 'expired: a miss for the reader');
  t.equal(counters.get('hitPositive'), 4);
  t.equal(counters.get('miss'), 2);
  t.equal(cache.positiveSize, 1, 'the reader removes nothing');
  // The stale window is the writer's to serve, and a reader's stale() copies it under the same check.
  const staleCache = shared({ staleMs: 60_000 });
  const staleReader = new CacheReader(staleCache.layout, { ...POLICY, staleMs: 60_000 }, new Counters(CACHE_COUNTERS));
  put(staleCache, 5, 1, clock.now(), 5);
  t.equal(staleReader.stale(keyOf('k5.example'), clock.now()), undefined, 'fresh: not stale');
  clock.advance(6_000);
  const s = staleReader.stale(keyOf('k5.example'), clock.now());
  t.ok(s, 'expired inside the window: a stale copy');
  t.equal(s?.negative, false);
});

t.test('a reader on garbage: no read throws or loops, whatever the index and slab hold', async (t) => {
  const layout = allocLayout(64, 4096, 0xffffffff, true);
  const q = new QueryScratch();
  let threw = 0;
  let hits = 0;
  for (let round = 0; round < 200; round++) {
    randomFillSync(new Uint8Array(layout.index));
    randomFillSync(new Uint8Array(layout.slab));
    const header = new Int32Array(layout.index, 0, 4);
    header[SEQ] = 0;
    // A table full of (mostly out-of-range) slot numbers: every probe run is as long as the table.
    const reader = new CacheReader(layout, POLICY, new Counters(CACHE_COUNTERS));
    for (let k = 0; k < 50; k++) {
      try {
        parseQueryInto(query({ name: `g${k}.example` }), q);
        if (reader.answer(q, 1e15, 512, 1232) !== null) hits++;
        reader.stale(q.key, 1e15);
      } catch {
        threw++;
      }
    }
  }
  t.equal(threw, 0, 'never threw');
  t.pass(`and always returned (${hits} garbage "hits", thrown away by the sequence check in real use)`);
  t.equal(layout.hashSeed, keyHashSeed(), 'the layout carries this thread\'s key hash seed');
});

t.test('no reallocation: the slab is allocated at its cap; the soft end moves up by half with no copy, compaction below it', async (t) => {
  const cache = shared({ maxBytes: 1 << 20, positiveCapacity: 50_000, negativeCapacity: 10 });
  const slab = cache.layout.slab;
  t.equal(slab.byteLength, 1 << 20, 'the whole budget, up front');
  t.equal(cache.slabBytes, 64 * 1024, 'used up to the first soft end');
  const ends = new Set<number>();
  for (let i = 0; i < 20_000; i++) {
    put(cache, i % 4000, 1 + (i % 6), 0);
    ends.add(cache.slabBytes);
    if (cache.slabBytes > 1 << 20) t.fail('past the cap');
  }
  t.equal(cache.layout.slab, slab, 'the same buffer throughout');
  const sorted = [...ends].sort((x, y) => x - y);
  t.ok(sorted.length >= 3, `moved up in steps (${sorted.join(', ')})`);
  for (let k = 1; k < sorted.length; k++) if (sorted[k]! > Math.ceil(sorted[k - 1]! * 1.5 / 8) * 8 && sorted[k] !== 1 << 20) t.fail(`a step past x1.5: ${sorted[k - 1]} -> ${sorted[k]}`);
  let wrong = 0;
  for (const r of cache.export(0)) if (scanAnswer(r.wire) === undefined) wrong++;
  t.equal(wrong, 0, 'every record intact after the compactions');
});

function rssAnonKiB(): number {
  const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m === null ? -1 : Number(m[1]);
}

t.test('a 256 MiB budget with few entries stays small: untouched pages of the shared buffers cost no memory', async (t) => {
  const before = rssAnonKiB();
  t.ok(before > 0, 'RssAnon readable');
  const cache = new DnsCache({ ...OPTS, positiveCapacity: 100_000, negativeCapacity: 10_000, maxBytes: 256 * 1024 * 1024 }, new Counters(CACHE_COUNTERS), { shared: true });
  for (let i = 0; i < 2000; i++) put(cache, i, 1 + (i % 3), 0);
  t.equal(cache.layout.slab.byteLength, 256 * 1024 * 1024, 'the slab is allocated at the budget');
  const grown = rssAnonKiB() - before;
  t.ok(grown < 32 * 1024, `RssAnon grew by ${Math.round(grown / 1024)} MiB, not by the 256 MiB allocated (plus ~7 MiB of index)`);
  t.equal(cache.positiveSize, 2000);
});
