/**
 * Micro-benchmark of the cache-hit path without sockets: parse the query,
 * build the key, look it up, copy and patch the answer. This is the work the
 * agent adds on top of one recvmsg and one sendmsg per query; a slower hit
 * path shows up here as a number (style.md: a benchmark beside the code).
 * The last line runs the agent's own HitPath.handle() with a channel that
 * only takes the answer: the real function, counters included.
 *
 *   npm run bench:micro            # 1e6 hits over 10,000 cached names
 *   node --cpu-prof dist/bench/micro/hit-path.js   # then open the .cpuprofile
 *   node --trace-gc dist/bench/micro/hit-path.js --gc   # HitPath.handle only
 *
 * Each line also counts the garbage collections its timed loop caused (V8's
 * own 'gc' performance entries: scavenges of the young generation, mark-
 * compacts of the old), the way to see what a hit allocates: a loop that
 * allocates nothing per operation shows 0 scavenges over 1e6 operations.
 * `node --trace-gc` prints the same collections one per line. Each line
 * also gives the young-generation bytes one operation allocates, read from
 * V8's new-space size over a window of operations no scavenge interrupted.
 * A hit's own is its answer Buffer (a Uint8Array object on the shared
 * 8 KB pool, and a new pool every 8 KB of answers).
 *
 * --gc runs only the HitPath.handle line and marks where its timed loop
 * starts and ends, so the `--trace-gc` lines between the markers are its own:
 *
 *   stdbuf -oL node --trace-gc dist/bench/micro/hit-path.js --gc | \
 *     awk '/timed loop start/{on=1} /timed loop end/{on=0} on && /Scavenge/{n++} END{print n+0}'
 */
import * as dnsPacket from 'dns-packet';
import { PerformanceObserver, constants as perf, type PerformanceEntry } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import { scanAnswer } from '../../src/dns/answer.js';
import { QueryScratch, parseQuery, parseQueryInto } from '../../src/dns/query.js';
import { DnsCache } from '../../src/cache/cache.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import type { Clock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import { HitPath } from '../../src/server/hit-path.js';
import { Transport, type ClientChannel } from '../../src/server/listener.js';
import { SERVER_COUNTERS } from '../../src/server/stats.js';
import { Counters } from '../../src/stats/counters.js';

const NAMES = Number(process.env.NAMES ?? 10_000);
const HITS = Number(process.env.HITS ?? 1_000_000);
const GC_ONLY = process.argv.includes('--gc');

function query(name: string, id: number): Buffer {
  return dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
}

function answer(name: string): Buffer {
  return dnsPacket.encode({
    type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name, type: 'A', class: 'IN' }],
    answers: [
      { type: 'A', name, ttl: 30, data: '10.96.0.1' },
      { type: 'A', name, ttl: 30, data: '10.96.0.2' },
    ],
  });
}

const now0 = 1_000_000;
const cache = new DnsCache(
  { positiveCapacity: NAMES * 2, negativeCapacity: 16, maxBytes: 1 << 30, successTtl: 30, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0 },
  new Counters(CACHE_COUNTERS),
);
const queries: Buffer[] = [];
for (let i = 0; i < NAMES; i++) {
  // Mixed case on purpose: every hit then patches the question's spelling too.
  const name = `Svc-${i}.NS-${i % 50}.svc.cluster.local`;
  const q = parseQuery(query(name, i & 0xffff));
  const a = answer(name.toLowerCase());
  cache.insert(q.key, a, scanAnswer(a)!, now0);
  queries.push(query(name, i & 0xffff));
}

const gcs: PerformanceEntry[] = [];
const gcObserver = new PerformanceObserver((list) => {
  gcs.push(...list.getEntries());
});
gcObserver.observe({ entryTypes: ['gc'] });

/** Lets the observer deliver what V8 queued (its callback runs on a later turn). */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

function newSpaceUsed(): number {
  for (const s of getHeapSpaceStatistics()) if (s.space_name === 'new_space') return s.space_used_size;
  return 0;
}

/**
 * Young-generation bytes per call of `fn`: new space only grows between
 * scavenges, so a window in which it shrank had one and is tried again.
 * The median of a few clean windows; -1 if none was clean.
 */
function bytesPerOp(fn: (i: number) => number): number {
  const WINDOW = 2_000;
  const clean: number[] = [];
  for (let attempt = 0; attempt < 50 && clean.length < 5; attempt++) {
    const before = newSpaceUsed();
    for (let i = 0; i < WINDOW; i++) fn(i);
    const after = newSpaceUsed();
    if (after >= before) clean.push((after - before) / WINDOW);
  }
  clean.sort((a, b) => a - b);
  return clean.length === 0 ? -1 : clean[clean.length >>> 1]!;
}

async function time(label: string, n: number, fn: (i: number) => number): Promise<void> {
  for (let i = 0; i < Math.min(n, 100_000); i++) fn(i); // warm up the JIT
  await settle();
  gcs.length = 0;
  // Markers for --trace-gc output (run under `stdbuf -oL` so V8's lines and these keep their order in a pipe).
  if (GC_ONLY) console.log(`timed loop start: ${label}`);
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  let sink = 0;
  for (let i = 0; i < n; i++) sink += fn(i);
  const c1 = process.cpuUsage(c0);
  const ns = Number(process.hrtime.bigint() - t0) / n;
  if (GC_ONLY) console.log(`timed loop end: ${label}`);
  // CPU time as well as wall time: on a shared machine the wall clock counts the time other processes ran.
  const cpuNs = ((c1.user + c1.system) * 1000) / n;
  await settle();
  const kinds = (k: number): number => gcs.filter((e) => (e as unknown as { detail?: { kind?: number } }).detail?.kind === k).length;
  const scavenges = kinds(perf.NODE_PERFORMANCE_GC_MINOR);
  const markCompacts = kinds(perf.NODE_PERFORMANCE_GC_MAJOR);
  const bytes = bytesPerOp(fn);
  console.log(
    `${label.padEnd(38)} ${(ns / 1000).toFixed(3)} us/op  cpu ${(cpuNs / 1000).toFixed(3)} us/op  ` +
      `gc: ${scavenges} scavenges, ${markCompacts} mark-compacts, ${bytes.toFixed(0)} B/op young  (sink ${sink % 7})`,
  );
}

console.log(`node ${process.version}, ${NAMES} cached names, ${HITS} operations each`);
const clock: Clock = { now: () => now0 + 5_000, wall: () => now0 + 5_000, sweep: () => () => {} };
const hitPath = new HitPath({ cache, clock, logger: silentLogger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232 });
let answered = 0;
const channel: ClientChannel = {
  transport: Transport.UDP,
  send: (answer) => {
    answered += answer.length;
  },
  discard: () => {},
};
const peer = { address: '127.0.0.1', port: 40000 };
const handleOne = (i: number): number => {
  hitPath.handle(queries[i % NAMES]!, channel, peer);
  return answered;
};

if (!GC_ONLY) {
  const parsed = queries.map((b) => parseQuery(b));
  const scratch = new QueryScratch();
  await time('parseQuery (a new Query + key string)', HITS, (i) => parseQuery(queries[i % NAMES]!).qtype);
  await time('parseQueryInto (scratch: key bytes+hash)', HITS, (i) => parseQueryInto(queries[i % NAMES]!, scratch) + (scratch.keyHash & 1));
  await time('cache.lookup (string key)', HITS, (i) => (cache.lookup(parsed[i % NAMES]!.key, now0 + 5_000) !== undefined ? 1 : 0));
  await time('parseQueryInto + cache.lookupBytes', HITS, (i) => {
    parseQueryInto(queries[i % NAMES]!, scratch);
    return cache.lookupBytes(scratch.keyBytes, scratch.keyLen, scratch.keyHash, now0 + 5_000) !== undefined ? 1 : 0;
  });
  // A lookup's entry is valid until the next call into the cache: serve it at once, as the hit path does.
  await time('lookup + serve (copy + patch)', HITS, (i) => {
    const q = parsed[i % NAMES]!;
    return cache.lookup(q.key, now0 + 5_000)!.serve(q, now0 + 5_000, 512, 1232).length;
  });
  await time('whole hit path (parseQuery, string key)', HITS, (i) => {
    const q = parseQuery(queries[i % NAMES]!);
    const e = cache.lookup(q.key, now0 + 5_000);
    return e === undefined ? 0 : e.serve(q, now0 + 5_000, 512, 1232).length;
  });
  await time('whole hit path (scratch, byte key)', HITS, (i) => {
    parseQueryInto(queries[i % NAMES]!, scratch);
    const e = cache.lookupBytes(scratch.keyBytes, scratch.keyLen, scratch.keyHash, now0 + 5_000);
    return e === undefined ? 0 : e.serve(scratch, now0 + 5_000, 512, 1232).length;
  });
}
await time('HitPath.handle (the agent\'s own)', HITS, handleOne);
gcObserver.disconnect();
const mem = process.memoryUsage();
console.log(`rss ${(mem.rss / 1048576).toFixed(1)} MiB, heap used ${(mem.heapUsed / 1048576).toFixed(1)} MiB`);
