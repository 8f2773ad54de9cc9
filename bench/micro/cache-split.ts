/**
 * What one cache per worker costs in hit rate, against one shared cache, on
 * the podmix workload (bench/workloads.ts: glibc's ndots:5 expansion, A and
 * AAAA per candidate, Zipf-popular services, 30% external names); and what
 * the shared cache behind the workers (server/batched/miss-exchange.ts)
 * gives back.
 *
 * A simulation, no sockets: lookups arrive at a steady rate; each search
 * candidate is one resolver call from a fresh socket (glibc and musl open
 * one per res_send), so the kernel's SO_REUSEPORT hash sends it to a
 * uniformly random worker. Answers live as long as the agent keeps them:
 * positive min(TTL, 30 s), negative 5 s (--success-ttl / --denial-ttl).
 * Capacity, prefetch and coalescing are left out (they act the same on
 * every layout); so is the shared cache's refusal inside the prefetch window.
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
  missExternalShare: 0.3, podmixExternalShare: 0.3, podmixSameNamespace: 0.7, podmixWarmupLookups: 0, missWarmupLookups: 0, ndots: 5, uniqueTag: 'sim0', fallbackColdShare: 0,
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

interface SplitResult {
  /** Queries answered from the worker's own cache. */
  readonly workerHitRate: number;
  /** Queries answered without an upstream query: the worker's cache, else the shared one behind it. */
  readonly localRate: number;
  /** Upstream queries per second with the shared cache (before coalescing). */
  readonly upstreamPerSecond: number;
  /** Upstream queries per second with per-worker caches alone. */
  readonly upstreamAlonePerSecond: number;
  /** Live entries at the end, all worker caches together (memory). */
  readonly workerEntries: number;
}

/**
 * One run of the same lookups through N worker caches, twice in lockstep:
 * alone, and with a shared cache behind them (a worker's miss that the
 * shared cache holds is answered from it, and the worker keeps a copy that
 * expires with the original).
 */
function simulate(workers: number, lookupsPerSecond: number, seconds: number): SplitResult {
  const wl = buildWorkload('podmix', params);
  const rng = new Rng(7);
  const alone = Array.from({ length: workers }, () => new Map<string, number>());
  const fronts = Array.from({ length: workers }, () => new Map<string, number>());
  const shared = new Map<string, number>();
  let queries = 0;
  let workerHits = 0;
  let local = 0;
  let aloneHits = 0;
  const warmup = Math.min(120, seconds / 4);
  const total = Math.round((seconds + warmup) * lookupsPerSecond);
  let now = 0;
  for (let i = 0; i < total; i++) {
    now = i / lookupsPerSecond;
    const counting = now >= warmup;
    const plan = wl.next();
    for (const step of plan.steps) {
      const w = rng.int(workers);
      for (const q of step) {
        const key = `${q.name}/${q.qtype}`;
        const life = lifetime(q.name, q.qtype);
        const a = alone[w]!;
        const aHit = (a.get(key) ?? -1) > now;
        if (!aHit) a.set(key, now + life);
        const f = fronts[w]!;
        const fHit = (f.get(key) ?? -1) > now;
        let sHit = false;
        if (!fHit) {
          const exp = shared.get(key) ?? -1;
          sHit = exp > now;
          if (!sHit) shared.set(key, now + life);
          f.set(key, sHit ? exp : now + life);
        }
        if (counting) {
          queries++;
          if (aHit) aloneHits++;
          if (fHit) workerHits++;
          if (fHit || sHit) local++;
        }
      }
    }
  }
  let live = 0;
  for (const f of fronts) for (const exp of f.values()) if (exp > now) live++;
  return {
    workerHitRate: workerHits / queries,
    localRate: local / queries,
    upstreamPerSecond: (queries - local) / seconds,
    upstreamAlonePerSecond: (queries - aloneHits) / seconds,
    workerEntries: live,
  };
}

const seconds = Number(arg('minutes', '10')) * 60;
const rates = arg('rates', '20,200,2000').split(',').map(Number);
const workerCounts = arg('workers', '1,2,4').split(',').map(Number);
console.log(`podmix, ${seconds / 60} min simulated after warm-up; positive answers kept min(TTL, ${SUCCESS_CAP_S} s), negative ${DENIAL_CAP_S} s`);
console.log(
  '| lookups/s | workers | answered by the worker\'s cache | answered without upstream (worker + shared) | upstream q/s with shared | upstream q/s, per-worker caches alone | live entries, all workers |\n' +
    '|---|---|---|---|---|---|---|',
);
for (const rate of rates) {
  for (const w of workerCounts) {
    const r = simulate(w, rate, seconds);
    console.log(
      `| ${rate} | ${w} | ${(r.workerHitRate * 100).toFixed(1)}% | ${(r.localRate * 100).toFixed(1)}% | ${r.upstreamPerSecond.toFixed(1)} | ` +
        `${r.upstreamAlonePerSecond.toFixed(1)} | ${r.workerEntries} |`,
    );
  }
}
