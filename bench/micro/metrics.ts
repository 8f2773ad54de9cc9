/**
 * Micro-benchmark of what the metrics cost the hot path, and what a scrape
 * costs: a typed-histogram observe() (the duration histogram a hit would
 * feed) against prom-client's labelled observe(), a counter-slot bump against
 * a labelled inc(), the clock read a duration needs, and one whole scrape of a
 * registry shaped like the agent's (every counter block it declares, three
 * histograms, prom-client's default metrics).
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/x && node /tmp/x/bench/micro/metrics.js
 *   N=5000000 node /tmp/x/bench/micro/metrics.js
 *
 * Figures are ns per operation, the fastest of REPS runs, with the loop's own
 * cost (an array read and an add, measured the same way) subtracted; compare
 * them within one run only.
 */
import { performance } from 'node:perf_hooks';
import { Counter, Histogram, Registry } from 'prom-client';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { setupCounterSchema } from '../../src/iface/setup-counters.js';
import { watchCounterSchema } from '../../src/kube/watch.js';
import { DurationHistogram, TIME_BUCKETS, TypedHistogram, requestSizeDef, responseSizeDef } from '../../src/ops/histogram.js';
import { MetricsRegistry } from '../../src/ops/metrics.js';
import { RESOLVER_COUNTERS } from '../../src/server/resolver.js';
import { REQUEST_SLOT_BASE, REQUEST_TYPE_COUNT, SERVER_COUNTERS, peerFamilyIndex, requestTypeIndex } from '../../src/server/stats.js';
import { tcpListenerCounters } from '../../src/server/tcp-stats.js';
import { Counters } from '../../src/stats/counters.js';
import { hostResolversCounters } from '../../src/upstream/host-resolvers.js';
import { tcpPoolCounters } from '../../src/upstream/tcp-pool-counters.js';

const N = Number(process.env.N ?? 2_000_000);
const SCRAPES = Number(process.env.SCRAPES ?? 200);
const REPS = Number(process.env.REPS ?? 7);
const SERVER = 'dns://169.254.20.10:53';

/** Deterministic pseudo-random in [0, 1) (xorshift), so runs are comparable. */
let seed = 0x9e3779b9;
function rand(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32;
}

// Durations in seconds. Hits: 2-60 us (all in the first bucket, 0.25 ms). Misses: 0.3-50 ms, spread over buckets 1-8.
const MASK = 4095;
const hits = Float64Array.from({ length: MASK + 1 }, () => 2e-6 + rand() * 58e-6);
const misses = Float64Array.from({ length: MASK + 1 }, () => 0.0003 * Math.exp(rand() * Math.log(50 / 0.3)));
const sizes = Float64Array.from({ length: MASK + 1 }, () => 40 + Math.floor(rand() * 200));

/**
 * Each case is one function that runs its own loop, so the call under test is
 * inlined into that loop as it would be into the hit path (a closure called
 * per iteration would measure the call instead). Returns ns per iteration.
 */
type Loop = (n: number) => number;
function measure(loop: Loop, n: number): number {
  loop(Math.min(n, 200_000)); // warm up the JIT
  // The fastest of REPS runs: on a shared machine the slower ones measure the neighbours.
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t0 = process.hrtime.bigint();
    const sink = loop(n);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
    if (sink === 0.5) console.log('');
  }
  return best;
}
let baseline = 0;
function time(label: string, loop: Loop, n = N): void {
  const ns = measure(loop, n) - baseline;
  console.log(`${label.padEnd(52)} ${ns.toFixed(1).padStart(7)} ns/op`);
}

console.log(`node ${process.version}, ${N} operations each (prom-client: ${Math.floor(N / 10)}), fastest of ${REPS}`);
baseline = measure((n) => {
  let s = 0;
  for (let i = 0; i < n; i++) s += hits[i & MASK]!;
  return s;
}, N);
console.log(`${'(loop and array read alone, subtracted below)'.padEnd(52)} ${baseline.toFixed(1).padStart(7)} ns/op`);

const dur = new DurationHistogram();
time('DurationHistogram.observe, hit (first bucket)', (n) => {
  for (let i = 0; i < n; i++) dur.observe(hits[i & MASK]!);
  return dur.sum;
});
time('DurationHistogram.observe, miss (0.3-50 ms)', (n) => {
  for (let i = 0; i < n; i++) dur.observe(misses[i & MASK]!);
  return dur.sum;
});
time('DurationHistogram.observeMs, miss', (n) => {
  for (let i = 0; i < n; i++) dur.observeMs(misses[i & MASK]! * 1000);
  return dur.sum;
});
const size = new TypedHistogram(requestSizeDef('udp'));
time('TypedHistogram.observe, size bytes (40-240)', (n) => {
  for (let i = 0; i < n; i++) size.observe(sizes[i & MASK]!);
  return size.sum;
});
const server = new Counters(SERVER_COUNTERS);
const slot = SERVER_COUNTERS.slot.requestsUdp;
time('counter slot bump values[slot]++', (n) => {
  const v = server.values;
  for (let i = 0; i < n; i++) v[slot]! += hits[i & MASK]! > 0 ? 1 : 0;
  return v[slot]!;
});
// coredns_dns_requests_total{proto,family,type} as the hit path bumps it: family from the peer, type from a table.
const peers = [
  { address: '10.244.1.7', port: 40000, family: 'IPv4' },
  { address: 'fd00::7', port: 40000, family: 'IPv6' },
  { address: '10.244.1.8', port: 40000 },
];
const qtypes = Uint16Array.from({ length: MASK + 1 }, () => [1, 28, 1, 28, 33, 12, 65, 99][Math.floor(rand() * 8)]!);
time('requests slot: family + qtype lookup + bump (UDP)', (n) => {
  const v = server.values;
  for (let i = 0; i < n; i++) {
    const peer = peers[i % 3]!;
    v[REQUEST_SLOT_BASE + (0 * 2 + peerFamilyIndex(peer)) * REQUEST_TYPE_COUNT + requestTypeIndex(qtypes[i & MASK]!)]!++;
  }
  return v[REQUEST_SLOT_BASE]!;
});
time('performance.now() (the Clock.now() behind a duration)', (n) => {
  let s = 0;
  for (let i = 0; i < n; i++) s += performance.now() + hits[i & MASK]!;
  return s;
});
time('Date.now() (not monotonic; for comparison)', (n) => {
  let s = 0;
  for (let i = 0; i < n; i++) s += Date.now() + hits[i & MASK]!;
  return s;
});

const promReg = new Registry();
const promHist = new Histogram({ name: 'p_seconds', help: 'p', labelNames: ['server', 'zone'], buckets: [...TIME_BUCKETS], registers: [promReg] });
const promCounter = new Counter({ name: 'p_total', help: 'p', labelNames: ['server', 'proto'], registers: [promReg] });
const PN = Math.max(1, Math.floor(N / 10));
const lbl = { server: SERVER, zone: '.' };
time('prom-client Histogram.observe(labels, v), hit', (n) => {
  for (let i = 0; i < n; i++) promHist.observe(lbl, hits[i & MASK]!);
  return n;
}, PN);
const child = promHist.labels(SERVER, '.');
time('prom-client histogram child .observe(v), hit', (n) => {
  for (let i = 0; i < n; i++) child.observe(hits[i & MASK]!);
  return n;
}, PN);
const clbl = { server: SERVER, proto: 'udp' };
time('prom-client Counter.inc(labels)', (n) => {
  for (let i = 0; i < n; i++) promCounter.inc(clbl, hits[i & MASK]! > 0 ? 1 : 0);
  return n;
}, PN);

// A registry shaped like the agent's.
const reg = new MetricsRegistry({ buildInfo: { version: '0.1.0', revision: 'bench' } });
const blocks: Array<Counters<string>> = [];
function add<K extends string>(c: Counters<K>, labels: Record<string, string>): void {
  for (let i = 0; i < c.values.length; i++) c.values[i] = Math.floor(rand() * 1e6);
  reg.addCounters(c, labels);
  blocks.push(c);
}
add(new Counters(SERVER_COUNTERS), { server: SERVER });
add(new Counters(CACHE_COUNTERS), { server: SERVER });
add(new Counters(RESOLVER_COUNTERS), {});
add(new Counters(tcpListenerCounters), { server: SERVER });
add(new Counters(tcpPoolCounters), { to: 'tcp://10.96.0.10:53' });
for (const to of ['host-resolvers', 'stub:corp.example', 'stub:acme.local']) add(new Counters(hostResolversCounters), { to });
add(new Counters(setupCounterSchema), {});
add(new Counters(watchCounterSchema), {});
for (let i = 0; i < 10_000; i++) dur.observe(misses[i & MASK]!);
reg.addHistogram(dur, { server: SERVER });
for (const proto of ['udp', 'tcp'] as const) {
  const q = new TypedHistogram(requestSizeDef(proto));
  const r = new TypedHistogram(responseSizeDef(proto));
  for (let i = 0; i < 1000; i++) {
    q.observe(sizes[i & MASK]!);
    r.observe(sizes[i & MASK]! * 2);
  }
  reg.addHistogram(q, { server: SERVER });
  reg.addHistogram(r, { server: SERVER });
}
reg.addGauge('nodelocal_upstream_healthy', 'h', ['upstream'], () => [[{ upstream: 'tcp://10.96.0.10:53' }, 1]]);

let text = await reg.metrics();
for (let i = 0; i < 20; i++) text = await reg.metrics();
let scrapeMs = Infinity;
for (let r = 0; r < REPS; r++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < SCRAPES / REPS; i++) text = await reg.metrics();
  scrapeMs = Math.min(scrapeMs, Number(process.hrtime.bigint() - t0) / 1e6 / (SCRAPES / REPS));
}
const series = text.split('\n').filter((l) => l !== '' && !l.startsWith('#')).length;
console.log(
  `${'one scrape, agent-shaped registry'.padEnd(52)} ${scrapeMs.toFixed(3).padStart(7)} ms  (${series} series, ${(text.length / 1024).toFixed(1)} KiB, ${reg.families().length} agent families)`,
);
