/**
 * What one cache per worker costs in hit rate, against one shared cache, on
 * the podmix workload (bench/workloads.ts: glibc's ndots:5 expansion, A and
 * AAAA per candidate, Zipf-popular services, 30% external names).
 *
 * A simulation, no sockets: lookups arrive at a steady rate; each search
 * candidate is one resolver call from a fresh socket (glibc and musl open
 * one per res_send), so the kernel's SO_REUSEPORT hash sends it to a
 * uniformly random worker. Answers live as long as the agent keeps them:
 * positive min(TTL, 30 s), negative 5 s (--success-ttl / --denial-ttl).
 * Capacity, prefetch and coalescing are left out (they act the same on
 * both layouts).
 *
 *   node dist/bench/micro/cache-split.js [--minutes 10] [--rates 20,200,2000] [--workers 1,2,4]
 */
import { DEFAULT_ZONES, expectedAnswer, RCODE_NOERROR } from '../sim/zones.js';
import { buildWorkload, Rng, type WorkloadParams } from '../workloads.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

const SUCCESS_CAP_S = 30;
const DENIAL_CAP_S = 5;

const params: WorkloadParams = {
  zones: DEFAULT_ZONES, seed: 42, zipfExponent: 1.0, hitNames: 1000, externalNames: 500, negativeNames: 1000, negativeUniqueShare: 0.5,
  missExternalShare: 0.3, podmixExternalShare: 0.3, podmixSameNamespace: 0.7, podmixWarmupLookups: 0, ndots: 5, uniqueTag: 'sim0',
};

/** Seconds an answer stays cached, by (name, qtype), worked out once. */
const lifetimes = new Map<string, number>();
function lifetime(name: string, qtype: number): number {
  const k = `${name}/${qtype}`;
  let s = lifetimes.get(k);
  if (s === undefined) {
    const e = expectedAnswer(name, qtype, DEFAULT_ZONES);
    s = e.rcode === RCODE_NOERROR && e.addresses.length > 0 ? Math.min(e.ttl, SUCCESS_CAP_S) : Math.min(e.ttl, DENIAL_CAP_S);
    lifetimes.set(k, s);
  }
  return s;
}

function simulate(workers: number, lookupsPerSecond: number, seconds: number): { hitRate: number; upstreamPerSecond: number; entries: number } {
  const wl = buildWorkload('podmix', params);
  const rng = new Rng(7);
  const caches = Array.from({ length: workers }, () => new Map<string, number>());
  let queries = 0;
  let hits = 0;
  const warmup = Math.min(120, seconds / 4);
  const total = Math.round((seconds + warmup) * lookupsPerSecond);
  for (let i = 0; i < total; i++) {
    const now = i / lookupsPerSecond;
    const counting = now >= warmup;
    const plan = wl.next();
    for (const step of plan.steps) {
      const cache = caches[rng.int(workers)]!;
      for (const q of step) {
        const key = `${q.name}/${q.qtype}`;
        const exp = cache.get(key);
        const hit = exp !== undefined && exp > now;
        if (!hit) cache.set(key, now + lifetime(q.name, q.qtype));
        if (counting) {
          queries++;
          if (hit) hits++;
        }
      }
    }
  }
  return { hitRate: hits / queries, upstreamPerSecond: (queries - hits) / seconds, entries: caches.reduce((n, c) => n + c.size, 0) };
}

const seconds = Number(arg('minutes', '10')) * 60;
const rates = arg('rates', '20,200,2000').split(',').map(Number);
const workerCounts = arg('workers', '1,2,4').split(',').map(Number);
console.log(`podmix, ${seconds / 60} min simulated after warm-up; positive answers kept min(TTL, ${SUCCESS_CAP_S} s), negative ${DENIAL_CAP_S} s`);
console.log('| lookups/s | workers | cache hit rate | misses/s (upstream, before coalescing) | entries held (all caches) |\n|---|---|---|---|---|');
for (const rate of rates) {
  for (const w of workerCounts) {
    const r = simulate(w, rate, seconds);
    console.log(`| ${rate} | ${w === 1 ? '1 (= one shared cache)' : w} | ${(r.hitRate * 100).toFixed(1)}% | ${r.upstreamPerSecond.toFixed(1)} | ${r.entries} |`);
  }
}
