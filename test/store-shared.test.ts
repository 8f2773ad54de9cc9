// One store for all threads (cache/store.ts, store-layout.ts, reader.ts): a
// reader in a real worker thread reading while this thread inserts, replaces,
// evicts, sweeps, rebuilds the table and clears at a high rate gets its
// key's own answer or a miss, never another key's bytes, never an exception;
// a writer stopped inside one slot's change blocks the readers of that key
// only; the table's tombstones keep every chain findable and its rebuilds
// stay amortised; readers' marks give entries a second chance at eviction; a
// reader reports refreshes and never claims them; garbage never makes a read
// throw or loop; and a big budget with few entries costs little memory
// (untouched pages).
import t, { type Test } from 'tap';
import { randomFillSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { DnsCache, type CacheOptions } from '../src/cache/cache.js';
import { CacheReader } from '../src/cache/reader.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { SECOND_CHANCES } from '../src/cache/store-lru.js';
import { AnswerStore, POSITIVE, type StoreInput, type StoreLayout } from '../src/cache/store.js';
import { NONE, NO_RECORD, REBUILDS, SEQ, StoreView, TOMB, allocLayout } from '../src/cache/store-layout.js';
import { MOVE_CHUNK } from '../src/cache/store-slab.js';
import { REBUILD_AT } from '../src/cache/store-table.js';
import { ManualClock, systemClock } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { QueryScratch, hashKey, keyHashSeed, parseQuery, parseQueryInto } from '../src/dns/query.js';
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

/** A reader thread (helpers/store-reader.ts) asking keys 0..names-1 until finish(); started and running when this resolves. */
async function startReader(t: Test, layout: StoreLayout, names: number): Promise<{ finish: () => Promise<ReaderResult> }> {
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(new URL('./helpers/store-reader.ts', import.meta.url), {
    workerData: { layout, names, stop, maxReads: 20_000_000 },
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
  return {
    finish: async (): Promise<ReaderResult> => {
      Atomics.store(new Int32Array(stop), 0, 1);
      return done;
    },
  };
}

/** Sum of the slots' versions: every slot change adds 2. */
function versionSum(view: StoreView): number {
  let sum = 0;
  for (const x of view.ver) sum += x;
  return sum;
}

t.test('a reader thread reading while this thread inserts, replaces, evicts, sweeps, rebuilds the table and clears: its own key\'s answer or a miss, nothing else', async (t) => {
  const NAMES = 900;
  // Small on purpose: 510 entries at most and a 160 KiB slab, so the churn evicts, sweeps and reuses slots all the time;
  // 511 slots, so a 1024-cell table up to half full; 10 bits of hash, so many keys share a hash (compared under change);
  // the names the reader never asks, each stored once, leave tombstones all over the table, so it is rebuilt under the reader too.
  const cache = new DnsCache(
    { ...OPTS, positiveCapacity: 450, negativeCapacity: 60, maxBytes: 160 * 1024 }, new Counters(CACHE_COUNTERS), { shared: true, hashMask: 0x3ff },
  );
  let unasked = NAMES;
  const reader = await startReader(t, cache.layout, NAMES);
  // Warm so that the reader finds hits from its first reads.
  for (let i = 0; i < 450; i++) put(cache, i, 1 + (i % 4), systemClock.now());
  let seed = 7;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const view = new StoreView(cache.layout);
  const seqBefore = Atomics.load(view.header, SEQ);
  const rebuildsBefore = view.header[REBUILDS]!;
  const versBefore = versionSum(view);
  let ops = 0;
  let clears = 0;
  // Rounds with a yield between them, so the reader is sure to be running while we write.
  for (let round = 0; round < 40; round++) {
    for (let k = 0; k < 5_000; k++, ops++) {
      const i = rand(NAMES);
      const op = rand(100);
      const now = systemClock.now();
      if (op < 65) put(cache, i, 1 + rand(12), now);
      else if (op < 85) put(cache, unasked++, 1 + rand(4), now);
      else if (op < 97) {
        // A negative answer for the key: it leaves the positive list (a removal) and lands in the small negative one.
        const up = answer(`k${i}.example`, [], { rcode: 'NXDOMAIN', authorities: [soa('example', 5, 5)] });
        cache.insert(keyOf(`k${i}.example`), up, scanAnswer(up)!, now);
      } else if (op < 99) put(cache, i, 1, now, 1); // short-lived: expires under the reader
      else if (rand(80) === 0) {
        cache.clear();
        clears++;
      }
      else ops--; // nothing written
    }
    await new Promise((r) => setImmediate(r));
  }
  const r = await reader.finish();
  const seqAfter = Atomics.load(view.header, SEQ);
  const rebuilds = view.header[REBUILDS]! - rebuildsBefore;
  t.equal(seqAfter % 2, 0, 'the global sequence word is even at rest');
  t.ok(rebuilds > 0, `the table was rebuilt under the reader (${rebuilds} times)`);
  t.ok(clears > 0, `and cleared (${clears} times)`);
  t.equal(seqAfter - seqBefore, 2 * (clears + rebuilds), 'the global word moved for clears and rebuilds only');
  t.ok(view.ver.every((x) => x % 2 === 0), 'every slot version is even at rest');
  t.ok(versionSum(view) - versBefore >= 2 * ops, 'every write went through a slot version');
  t.ok(cache.counters.get('evictPositive') > 0, 'entries were evicted');
  t.ok(r.reads > 10_000, `the reader read throughout (${r.reads} reads, ${r.hits} hits, ${r.misses} misses, ${r.gaveUp} given up)`);
  t.ok(r.hits > 0, 'and found answers');
  t.equal(r.threw, 0, `no read threw ${r.firstWrong}`);
  t.equal(r.wrong, 0, `no answer belonged to another key ${r.firstWrong}`);
});

t.test('a hot key refreshed in a tight loop beside churn: a reader holding its old slot (freed, reused, its bytes swept over) never serves torn bytes', async (t) => {
  // Every refresh takes the slot the previous one freed (the free list is LIFO), so a reader that found the key in the old
  // slot meets that slot being rewritten with the same key: only the slot's version tells the two entries apart. The other
  // keys' churn on a small slab sweeps over freed records all the time.
  const cache = shared({ positiveCapacity: 40, negativeCapacity: 4, maxBytes: 16 * 1024 });
  const reader = await startReader(t, cache.layout, 1);
  let seed = 3;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  // Prepared answers, so the loop writes as fast as the store does.
  const hot = Array.from({ length: 12 }, (_, r) => upstream(0, r + 1));
  const hotScans = hot.map((up) => scanAnswer(up)!);
  const hotKey = keyOf('k0.example');
  const others = Array.from({ length: 200 }, (_, i) => ({ key: keyOf(`k${i + 1}.example`), up: upstream(i + 1, 1 + (i % 6)) }));
  const otherScans = others.map((o) => scanAnswer(o.up)!);
  for (let round = 0; round < 40; round++) {
    for (let k = 0; k < 5_000; k++) {
      const now = systemClock.now();
      const r = rand(12);
      cache.insert(hotKey, hot[r]!, hotScans[r]!, now);
      if (rand(4) === 0) {
        const o = rand(others.length);
        cache.insert(others[o]!.key, others[o]!.up, otherScans[o]!, now);
      }
    }
    await new Promise((r) => setImmediate(r));
  }
  const r = await reader.finish();
  t.ok(r.hits > 1_000, `the reader hit the hot key throughout (${r.reads} reads, ${r.hits} hits, ${r.misses} misses, ${r.gaveUp} given up)`);
  t.equal(r.threw, 0, `no read threw ${r.firstWrong}`);
  t.equal(r.wrong, 0, `no torn answer ${r.firstWrong}`);
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
  const big = shared({ positiveCapacity: SECOND_CHANCES + 10, maxBytes: 1 << 24 });
  const r2 = new CacheReader(big.layout, POLICY, new Counters(CACHE_COUNTERS));
  const n = SECOND_CHANCES + 10;
  for (let i = 0; i < n; i++) put(big, i, 1, clock.now());
  for (let i = 0; i < n; i++) ask(r2, `k${i}.example`, clock.now());
  put(big, n, 1, clock.now());
  t.equal(big.positiveSize, n, 'one entry went');
  t.equal(big.lookup(keyOf(`k${SECOND_CHANCES}.example`), clock.now()), undefined, 'the least recent after the bounded run of second chances');
});

t.test('second chance: a hot set warmed together survives a flood of one-shot names five times the capacity', async (t) => {
  const clock = new ManualClock();
  const hot = 1000;
  const cache = shared({ positiveCapacity: 2000 });
  const reader = new CacheReader(cache.layout, POLICY, new Counters(CACHE_COUNTERS));
  for (let i = 0; i < hot; i++) put(cache, i, 1, clock.now());
  let lost = 0;
  for (let n = 0; n < 10_000; n++) {
    // Every hot name is asked between any two of its trips to the end of the list.
    if (n % 500 === 0) for (let i = 0; i < hot; i++) if (!ask(reader, `k${i}.example`, clock.now())) lost++;
    put(cache, 100_000 + n, 1, clock.now());
  }
  t.equal(lost, 0, 'no hot name was evicted');
  t.equal(cache.counters.get('evictPositive'), 9000, 'the one-shot names went instead');
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

/**
 * A fresh thread on the built modules (no TypeScript loader: its own module loads would count): imports the worker's
 * loop and what it calls as it starts, attaches a reader to `layout`, looks `msg` up, and reports.
 */
const SEED_PROBE = `
const { parentPort, workerData: w } = require('node:worker_threads');
(async () => {
  const before = new Set(process.moduleLoadList);
  const q = await import(w.dist + 'dns/query.js');
  const own = q.keyHashSeed();
  await import(w.dist + 'server/batched/loop.js');
  // koffi as the worker loads it (sys/udp-batch.ts): the native addon, not the package entry with its installer's modules.
  const koffi = (await import(w.dist + 'sys/koffi.js')).koffi();
  const pid = koffi.load('libc.so.6').func('int getpid()')();
  const gc = (await import(w.dist + 'ops/idle-gc.js')).exposeGc();
  gc?.();
  const trace = (await import(w.dist + 'server/batched/heap-trace.js')).HeapTrace.fromEnv(0);
  const { CacheReader } = await import(w.dist + 'cache/reader.js');
  const { CACHE_COUNTERS } = await import(w.dist + 'cache/stats.js');
  const { Counters } = await import(w.dist + 'stats/counters.js');
  const reader = new CacheReader(w.layout, w.policy, new Counters(CACHE_COUNTERS));
  const scratch = new q.QueryScratch();
  q.parseQueryInto(Buffer.from(w.msg), scratch);
  const hit = reader.answer(scratch, w.now, 65535, 1232) !== null;
  const loaded = process.moduleLoadList.filter((m) => !before.has(m));
  parentPort.postMessage({ own, adopted: q.keyHashSeed(), hash: q.hashKey(w.key), hit, gc: typeof gc, trace: trace === null, pid, loaded });
})().catch((err) => parentPort.postMessage({ error: String(err && err.stack) }));
`;

t.test('the key hash seed: each thread draws its own at load (not a constant), a reader thread hashes with the writer\'s; the worker (koffi too) loads none of node:crypto, https, tls, zlib, inspector', async (t) => {
  const cache = shared();
  const now = systemClock.now();
  put(cache, 1, 1, now);
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'NODELOCAL_HEAP_TRACE') env[k] = v;
  const worker = new Worker(SEED_PROBE, {
    eval: true,
    execArgv: [],
    env,
    workerData: { dist: new URL('../dist/src/', import.meta.url).href, layout: cache.layout, policy: POLICY, msg: query({ name: 'k1.example' }), key: keyOf('k1.example'), now },
  });
  t.teardown(() => void worker.terminate());
  const r = await new Promise<Record<string, unknown>>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`probe exited (${code}) before reporting`)));
  });
  t.equal(r['error'], undefined, 'the probe ran');
  t.equal(cache.layout.hashSeed, keyHashSeed(), 'the store carries the writer\'s seed');
  t.type(r['own'], 'number');
  t.not(r['own'], keyHashSeed(), 'the new thread drew a seed of its own (not a constant, not unset)');
  t.equal(r['adopted'], keyHashSeed(), 'its reader made it hash with the writer\'s seed');
  t.equal(r['hash'], hashKey(keyOf('k1.example')), 'the two threads hash a key alike');
  t.equal(r['hit'], true, 'so the reader finds what the writer stored, by the hash of the bytes it parsed');
  t.equal(r['gc'], 'function', 'exposeGc handed over a collection, and it ran');
  t.equal(r['trace'], true, 'no heap trace without NODELOCAL_HEAP_TRACE');
  // node:vm stays: exposeGc takes gc from a context of its own (the alternative, natives syntax on for the whole process, was not worth 0.1-0.3 MiB).
  t.equal(r['pid'], process.pid, 'koffi, loaded as the worker loads it, calls into libc');
  const heavy = (r['loaded'] as string[]).filter((m) => /^NativeModule (crypto|https|tls|zlib|inspector)$/.test(m));
  t.same(heavy, [], 'none of node:crypto, https, tls, zlib, inspector loaded for it');
});

t.test('no reallocation: the slab is allocated at its cap; the soft end moves up by half with no copy, sweeps below it', async (t) => {
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
  t.equal(wrong, 0, 'every record intact after the sweeps');
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

/** A store of `capacity` positive entries (a few negative), on shared buffers, keys of our own (no DNS needed). */
function rawStore(capacity: number, hashMask?: number, slabCap = 1 << 25): AnswerStore {
  return new AnswerStore({
    capacity: [capacity, 4], budget: [Math.floor(slabCap * 0.7), Math.floor(slabCap * 0.1)], slabCap, shared: true, ...(hashMask !== undefined ? { hashMask } : {}),
  });
}

function rawInput(i: number): StoreInput {
  const wire = Buffer.alloc(16 + (i % 5));
  wire.writeUInt32BE(i >>> 0, 12);
  return { wire, questionEnd: 12, ttlOffsets: new Uint16Array(0), storedAt: 0, expiresAt: 1e15, prefetchAt: 1e15, hits: 0 };
}

const rawKey = (i: number): string => `key-${i}`;

function cells(view: StoreView): { live: number; tombs: number } {
  let live = 0;
  let tombs = 0;
  for (const c of view.table) {
    if (c === TOMB) tombs++;
    else if (c !== 0) live++;
  }
  return { live, tombs };
}

t.test('a writer stopped inside one slot\'s change blocks the readers of that key only', async (t) => {
  const cache = shared();
  const counters = new Counters(CACHE_COUNTERS);
  const reader = new CacheReader(cache.layout, POLICY, counters);
  const now = systemClock.now();
  const N = 200;
  for (let i = 0; i < N; i++) put(cache, i, 1 + (i % 3), now);
  const view = new StoreView(cache.layout);
  const hashOf = (i: number): number => (hashKey(keyOf(`k${i}.example`)) & 0xffffffff) >>> 0;
  const slotOf = (i: number): number => view.find(keyOf(`k${i}.example`), hashOf(i));
  const victim = 17;
  const s = slotOf(victim);
  t.ok(s >= 0, 'the victim key has a slot');

  // "Preempted" inside the slot's change: its version odd, as store-versions.ts openSlot leaves it.
  Atomics.add(view.ver, s, 1);
  let others = 0;
  for (let i = 0; i < N; i++) {
    if (i === victim) continue;
    if (ask(reader, `k${i}.example`, now) !== null && !reader.lastGaveUp) others++;
  }
  t.equal(others, N - 1, 'every other key is a hit');
  t.equal(reader.gaveUp, 0, 'no read of another key gave up');
  t.equal(ask(reader, `k${victim}.example`, now), null, 'the key in change: no answer');
  t.ok(reader.lastGaveUp, 'given up (its miss is not a miss of the store)');
  t.equal(reader.gaveUp, 1);
  t.equal(counters.get('readGaveUp'), 1, 'counted');
  t.equal(reader.stale(keyOf(`k${victim}.example`), now), undefined, 'stale() returns, empty-handed');
  Atomics.add(view.ver, s, 1);
  t.ok(ask(reader, `k${victim}.example`, now), 'the change over: a hit again');
  t.notOk(reader.lastGaveUp);

  // A version that changed between the lookup and the check: a retry, not a wrong answer (the slot was reused for another key).
  // The global word (rebuild, clear) still stops every read while it is odd.
  Atomics.add(view.header, SEQ, 1);
  let blocked = 0;
  for (let i = 0; i < 10; i++) if (ask(reader, `k${i}.example`, now) === null && reader.lastGaveUp) blocked++;
  Atomics.add(view.header, SEQ, 1);
  t.equal(blocked, 10, 'the global word odd: every key gives up (the rare everything-changes window)');
  t.ok(ask(reader, 'k0.example', now), 'and reads again once it is even');
});

t.test('tombstones: a deletion leaves the chain findable, an insert reuses the first tombstone, the end of a chain empties', async (t) => {
  // hashMask 0: every key hashes alike, so all of them share one chain.
  const store = rawStore(64, 0);
  const view = new StoreView(store.layout);
  for (let i = 0; i < 10; i++) store.insert(POSITIVE, rawKey(i), rawInput(i));
  const home = 0;
  t.same(cells(view), { live: 10, tombs: 0 });
  const cell3 = view.table.indexOf(store.find(rawKey(3)) + 1);
  t.equal(cell3, home + 3, 'one chain from the home cell');
  store.remove(store.find(rawKey(3)));
  t.equal(view.table[cell3], TOMB, 'a deletion inside a chain leaves a tombstone');
  t.equal(store.find(rawKey(3)), NONE, 'the deleted key is gone');
  for (let i = 0; i < 10; i++) if (i !== 3 && store.find(rawKey(i)) < 0) t.fail(`key ${i} lost past the tombstone`);
  store.remove(store.find(rawKey(5)));
  const slot = store.insert(POSITIVE, rawKey(100), rawInput(100));
  t.equal(view.table[cell3], slot + 1, 'a new key takes the first tombstone of its chain');
  t.equal(view.table[home + 5], TOMB, 'the later one stays');
  t.equal(store.find(rawKey(100)), slot);
  // The chain's end: the last cell and the tombstones just before it become empty.
  store.remove(store.find(rawKey(8)));
  t.equal(view.table[home + 8], TOMB);
  store.remove(store.find(rawKey(9)));
  t.equal(view.table[home + 9], 0, 'the last cell empties');
  t.equal(view.table[home + 8], 0, 'and the tombstone before it');
  t.equal(view.table[home + 7], store.find(rawKey(7)) + 1, 'up to the first live cell');
  for (const i of [0, 1, 2, 4, 6, 7, 100]) t.ok(store.find(rawKey(i)) >= 0, `key ${i} still found`);
  // A replacement points the key's cell at the new slot: no tombstone, the same cell.
  const before = view.table.indexOf(store.find(rawKey(4)) + 1);
  const s4 = store.insert(POSITIVE, rawKey(4), rawInput(4));
  t.equal(view.table[before], s4 + 1, 'a refresh replaces the entry in its own cell');
  t.same(cells(view), { live: 7, tombs: 1 });
});

t.test('the table rebuild: keeps every live key, leaves no tombstone, and stays amortised under churn', async (t) => {
  const capacity = 1000;
  const store = rawStore(capacity);
  const view = new StoreView(store.layout);
  const tableSize = view.tableMask + 1;
  const rebuildAt = Math.floor(tableSize * REBUILD_AT);
  const CYCLES = 100_000;
  let lastRebuilds = 0;
  let checked = 0;
  for (let i = 0; i < CYCLES; i++) {
    store.insert(POSITIVE, rawKey(i), rawInput(i));
    const rebuilds = view.header[REBUILDS]!;
    if (rebuilds !== lastRebuilds && checked < 3) {
      // Just rebuilt: no tombstones, and every live key (the last `capacity` inserted) findable.
      checked++;
      const c = cells(view);
      t.same(c, { live: store.size(POSITIVE), tombs: 0 }, `rebuild ${rebuilds}: only live cells`);
      let lost = 0;
      for (let k = Math.max(0, i - capacity + 1); k <= i; k++) if (store.find(rawKey(k)) < 0) lost++;
      t.equal(lost, 0, 'every live key found');
    }
    lastRebuilds = rebuilds;
  }
  t.equal(store.size(POSITIVE), capacity, 'at capacity throughout: every insert evicted one');
  const rebuilds = view.header[REBUILDS]!;
  // Each rebuild needs (rebuildAt - live) new cells in use since the last, each from an insert.
  const bound = Math.ceil(CYCLES / (rebuildAt - capacity)) + 1;
  t.ok(rebuilds > 0, 'the churn rebuilt the table');
  t.ok(rebuilds <= bound, `amortised: ${rebuilds} rebuilds for ${CYCLES} insert/evict cycles (table ${tableSize}, at most ${bound})`);
  t.equal(Atomics.load(view.header, SEQ), 2 * rebuilds, 'each rebuild one window of the global word, nothing else on it');
  let lost = 0;
  for (let k = CYCLES - capacity; k < CYCLES; k++) if (store.find(rawKey(k)) < 0) lost++;
  t.equal(lost, 0, 'every live key found at the end');
  const c = cells(view);
  t.ok(c.live + c.tombs <= rebuildAt, 'cells in use under the bound');
  t.equal(c.live, capacity);
});

t.test('every change to a slot moves its version by two (what a reader holding the slot checks): a new entry, a refresh, a removal, a sweep\'s move', async (t) => {
  // 64 KiB: the slab's first soft end is its cap, so making room sweeps.
  const store = rawStore(2000, undefined, 64 * 1024);
  const view = new StoreView(store.layout);
  const s0 = store.insert(POSITIVE, rawKey(0), rawInput(0));
  t.equal(view.ver[s0], 2, 'a new entry: odd while written, even after');
  // A reader found key 0 in s0 under this version.
  t.equal(view.find(rawKey(0), view.keyHash[s0]!), s0);
  const found = view.foundVer;
  const s0b = store.insert(POSITIVE, rawKey(0), rawInput(1));
  t.not(s0b, s0, 'a refresh writes another slot');
  t.equal(view.ver[s0b], 2);
  t.equal(view.ver[s0], found + 2, 'and frees the old one: its version moved');
  t.equal(view.serve(s0, parseQuery(query({ name: 'x.example' })), 0, -1, 512, 1232), null, 'a freed slot describes no record (a sweep may reuse its bytes)');
  const s1 = store.insert(POSITIVE, rawKey(1), rawInput(1));
  t.equal(s1, s0, 'a new key reuses the freed slot');
  t.equal(view.ver[s0], found + 4, 'and moves its version again: a reader still holding the slot from before retries');
  store.remove(s1);
  t.equal(view.ver[s1], found + 6, 'a removal moves it');

  // A sweep: remove every other entry, then insert until the sweep has slid every kept record down; each moved by two, no other.
  let i = 10;
  const live: number[] = [];
  while (live.length < 300) live.push(store.insert(POSITIVE, rawKey(i), rawInput(i++)));
  for (let k = 0; k < live.length; k += 2) store.remove(live[k]!);
  const kept = live.filter((_, k) => k % 2 === 1);
  const offs = kept.map((s) => view.off[s]!);
  const vers = kept.map((s) => view.ver[s]!);
  const allMoved = (): boolean => kept.every((s, k) => view.off[s] !== offs[k]);
  // Entries inserted and removed at once: dead space piles up with no eviction, until a lap sweeps the records before it.
  for (let k = 0; k < 5000 && !allMoved(); k++) store.remove(store.insert(POSITIVE, rawKey(i), rawInput(i++)));
  t.ok(allMoved(), 'a sweep slid every kept record down (each had a removed one below it)');
  t.equal(kept.length, 150);
  let wrong = 0;
  kept.forEach((s, k) => {
    if (view.ver[s]! - vers[k]! !== 2) wrong++;
  });
  t.equal(wrong, 0, 'each moved record\'s slot version moved by two: once, in one lap');
  t.ok(view.ver.every((x) => x % 2 === 0), 'every version even at rest');
  // clear frees every slot alike (new records then start at the slab's first byte, over the old ones).
  const k0 = kept[0]!;
  const before = view.ver[k0]!;
  store.clear();
  t.equal(view.ver[k0], before + 2, 'clear moves every used slot\'s version');
  t.equal(view.serve(k0, parseQuery(query({ name: 'x.example' })), 0, -1, 512, 1232), null, 'and leaves it describing no record');
});

t.test('the sweep moves a few records per insert, never the slab: each insert\'s moves stay under MOVE_CHUNK while the live bytes are many times that', async (t) => {
  // 2 MiB of budget: about 800 KiB of live records (each also charged 64 bytes of index), which a whole-slab compaction moved in one insert.
  const slabCap = 2 << 20;
  const store = new AnswerStore({ capacity: [50_000, 4], budget: [Math.floor(slabCap * 0.7), Math.floor(slabCap * 0.1)], slabCap, shared: true });
  const view = new StoreView(store.layout);
  const at = new Map<number, { off: number; ver: number; hash: number }>();
  const movedPerInsert: number[] = [];
  let i = 0;
  const insert = (): number => {
    const s = store.insert(POSITIVE, `churn-${i}.ns-${i % 7}.svc.cluster.local`, rawInput(i * 7919));
    i++;
    return s;
  };
  // Filled past the cap first: evictions free the oldest records, and laps begin.
  while (i < 40_000) insert();
  const note = (s: number): void => void at.set(s, { off: view.off[s]!, ver: view.ver[s]!, hash: view.keyHash[s]! });
  for (let s = 0; s < view.off.length; s++) if (view.off[s] !== NO_RECORD && view.ver[s]! > 0) note(s);
  for (let n = 0; n < 20_000; n++) {
    const mine = insert();
    let moved = 0;
    for (const [s, was] of at) {
      if (s === mine) continue;
      if (view.off[s] === NO_RECORD) at.delete(s);
      else if (view.keyHash[s] !== was.hash || view.ver[s] !== was.ver) {
        // Same key, version up by two, new offset: the sweep moved it.
        if (view.keyHash[s] === was.hash && view.ver[s] === was.ver + 2 && view.off[s] !== was.off) moved += view.slabU32[(view.off[s]! >>> 2) + 1]!;
        note(s);
      }
    }
    note(mine);
    movedPerInsert.push(moved);
  }
  const liveBytes = store.slabBytes - store.deadBytes;
  const total = movedPerInsert.reduce((a, b) => a + b, 0);
  const most = Math.max(...movedPerInsert);
  t.ok(liveBytes > 8 * MOVE_CHUNK, `live bytes (${liveBytes}) many times a chunk`);
  t.ok(total > liveBytes, `the sweeps moved records (${total} bytes over 20,000 inserts)`);
  t.ok(most <= MOVE_CHUNK, `no insert moved more than a chunk (most: ${most} bytes)`);
  const sorted = [...movedPerInsert].sort((a, b) => a - b);
  t.ok(sorted[Math.floor(sorted.length * 0.99)]! <= 1024, `99% of inserts moved at most 1 KiB (${sorted[Math.floor(sorted.length * 0.99)]})`);
  let wrong = 0;
  for (const [s] of at) if (view.off[s] !== NO_RECORD && view.slabU32[view.off[s]! >>> 2] !== s) wrong++;
  t.equal(wrong, 0, 'every live slot points at its own record');
});

t.test('the cache counts each table rebuild once (nodelocal_cache_table_rebuilds_total), whichever of its views inserted', async (t) => {
  const clock = new ManualClock();
  // A table of 2,048 cells (1,005 slots): deleted cells pile up to the rebuild within a few thousand inserts.
  const cache = shared({ positiveCapacity: 1000, negativeCapacity: 4 });
  const exchange = cache.exchangeView(new Counters(CACHE_COUNTERS));
  for (let i = 0; i < 20_000; i++) put(i % 2 === 0 ? cache : exchange, i, 1, clock.now());
  const header = new StoreView(cache.layout).header;
  t.ok(header[REBUILDS]! > 0, `the churn rebuilt the table (${header[REBUILDS]} times)`);
  t.equal(cache.counters.get('tableRebuilds'), header[REBUILDS], 'counted once each');
});

t.test('a stale read the writer preempts right after find (the slot freed and reused for a record at the end of the slab) is a retry or nothing, never a throw', async (t) => {
  // The reader's stale() copies the record out with plain reads between find() and its version check (reader.ts). The
  // writer reusing that slot writes the new offset before the new key length and TTL count (store.ts #insert): a read
  // in between pairs the new offset, near the slab's end, with the old entry's longer key. wireCopy then starts past
  // the slab. In a batched worker stale() runs inside HitPath.complete() (a failed miss) with nothing to catch there:
  // the exception would end the worker thread, and every client waiting in it.
  const clock = new ManualClock();
  const cache = shared({ staleMs: 3_600_000, maxBytes: 64 * 1024 });
  const long = `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.example`;
  const up = answer(long, [a(long, '192.0.2.1', 1)]);
  cache.insert(keyOf(long), up, scanAnswer(up)!, clock.now());
  const reader = new CacheReader(cache.layout, { ...POLICY, staleMs: 3_600_000 }, new Counters(CACHE_COUNTERS));
  clock.advance(5_000);
  t.ok(reader.stale(keyOf(long), clock.now()), 'expired, inside the stale window: served stale');

  const view = new StoreView(cache.layout);
  const original = StoreView.prototype.find;
  let preempted = false;
  StoreView.prototype.find = function (this: StoreView, key: string, h: number): number {
    const slot = original.call(this, key, h);
    if (slot >= 0 && !preempted) {
      preempted = true;
      // The writer, meanwhile: the slot freed (offset nowhere, version +2), then reused for a short key's record at
      // the slab's tail, its version odd and its offset written; the key length and TTL count not yet.
      view.off[slot] = 1;
      Atomics.add(view.ver, slot, 2);
      Atomics.add(view.ver, slot, 1);
      view.off[slot] = view.slab.length - 64;
    }
    return slot;
  };
  t.teardown(() => {
    StoreView.prototype.find = original;
  });
  let threw: unknown = null;
  let got: unknown = 'not read';
  try {
    got = reader.stale(keyOf(long), clock.now());
  } catch (err) {
    threw = err;
  }
  StoreView.prototype.find = original;
  t.ok(preempted, 'the read was preempted after find');
  t.equal(threw, null, `stale() did not throw (${String(threw)})`);
  t.equal(got, undefined, 'nothing served from a slot that changed under the read');
});

t.test('the soft end grows past 2 GiB (--cache-memory past 2Gi): growth returns, at most the cap', async (t) => {
  // grownSoftEnd rounds with align8, (n + 7) & ~7: 32-bit arithmetic, so every size it computes is below 2^31 (or
  // negative). Past ~2 GiB x1.5 wraps: the soft end creeps up by a few KB per growth, thousands of loop turns each
  // (from 64 KiB: 2,142,731,488, 2,145,409,960, 2,145,999,808, 2,147,163,520...), and once `need` (tail + record)
  // is past 2^31 - 8 no size can reach it: the main thread spins for good inside an insert, the node's DNS gone.
  // A cache with --cache-memory 4Gi gets there once it holds ~1.6 GB of answers.
  const end = 2 ** 31 - 65_536;
  const need = end + 65_544; // a 64 KiB record at a tail at the soft end
  const cap = 2 ** 32 - 8;
  // Run in a process of its own (bounded) so that the hang is a failed assertion, not a hung test.
  const code = `import { grownSoftEnd } from ${JSON.stringify(new URL('../src/cache/store-slab.ts', import.meta.url).href)};
    process.stdout.write(String(grownSoftEnd(${end}, ${need}, ${cap})));`;
  const r = spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 15_000, killSignal: 'SIGKILL' });
  t.equal(r.signal, null, `grownSoftEnd returned (${r.signal ?? 'exit ' + String(r.status)}${r.stderr ? ': ' + r.stderr.slice(0, 200) : ''})`);
  const got = Number(r.stdout);
  t.ok(got >= need && got <= cap, `the soft end covers the record, within the cap (${r.stdout})`);
});
