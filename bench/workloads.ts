/**
 * Query generators. A workload hands the load generator "lookups": what one
 * application call (getaddrinfo) sends. A lookup is a list of steps; the
 * queries of a step go out together and the next step only starts once every
 * answer of the current one is in, as in glibc's search loop. Plans and their
 * query templates are built once and reused, so `next()` is a few random
 * numbers and an array read.
 *
 * To add a workload: write a builder returning a `Workload`, add its name to
 * WORKLOAD_NAMES and an entry to WORKLOADS. The generator, checker, reports
 * and plot need no change as long as the expected answers follow the zone
 * rules in sim/zones.ts.
 */
import { QTYPE_A, QTYPE_AAAA, RCODE_NOERROR, fallbackServiceFqdn, namespaceName, serviceFqdn, serviceName, type ZoneConfig } from './sim/zones.js';
import { UNIQUE_MARK, makeTemplate, type QueryTemplate } from './wire.js';

export const WORKLOAD_NAMES = ['hit', 'miss', 'negative', 'podmix', 'fallback'] as const;
export type WorkloadName = (typeof WORKLOAD_NAMES)[number];

export interface LookupPlan {
  /** Queries of one step are sent at once; the next step waits for all their answers. */
  readonly steps: ReadonlyArray<ReadonlyArray<QueryTemplate>>;
  /** Index into `Workload.classes` (the result breakdown). */
  readonly cls: number;
  /** Queries sent when every step answers as the zone says. */
  readonly queries: number;
  /** Its templates carry a counter label: every lookup takes a fresh value. */
  readonly unique: boolean;
}

export interface Workload {
  readonly name: WorkloadName;
  readonly classes: readonly string[];
  /** To turn an offered query rate into a lookup rate. */
  readonly meanQueriesPerLookup: number;
  /** Sent once, closed loop, right before each measured run (e.g. so that "already cached" holds). */
  warmup(): readonly LookupPlan[];
  next(): LookupPlan;
}

export interface WorkloadParams {
  readonly zones: ZoneConfig;
  readonly seed: number;
  /** Zipf exponent s: popularity of rank k is proportional to 1/k^s. */
  readonly zipfExponent: number;
  readonly hitNames: number;
  readonly externalNames: number;
  readonly negativeNames: number;
  readonly negativeUniqueShare: number;
  readonly missExternalShare: number;
  readonly podmixExternalShare: number;
  readonly podmixSameNamespace: number;
  readonly podmixWarmupLookups: number;
  /** Unique misses sent before a miss run: the target's start-up is not what the run measures. */
  readonly missWarmupLookups: number;
  readonly ndots: number;
  /** Share of fallback lookups that ask a never-asked name (a cache miss). */
  readonly fallbackColdShare: number;
  /** Per invocation, so unique names never repeat across runs of one agent. */
  readonly uniqueTag: string;
}

// ---- randomness -------------------------------------------------------------------------------

/** mulberry32: small, fast, seedable; plenty for choosing names. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Samples ranks 0..n-1 with P(k) ∝ 1/(k+1)^s, by binary search in a precomputed CDF. */
export class Zipf {
  readonly #cdf: Float64Array;
  constructor(n: number, s: number) {
    if (n < 1) throw new Error('Zipf: need at least one item');
    this.#cdf = new Float64Array(n);
    let sum = 0;
    for (let k = 0; k < n; k++) this.#cdf[k] = sum += 1 / Math.pow(k + 1, s);
    for (let k = 0; k < n; k++) this.#cdf[k] = (this.#cdf[k] ?? 0) / sum;
  }
  get size(): number {
    return this.#cdf.length;
  }
  sample(rng: Rng): number {
    const u = rng.next();
    const cdf = this.#cdf;
    let lo = 0;
    let hi = cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((cdf[mid] ?? 1) < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function shuffle<T>(items: T[], rng: Rng): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const a = items[i] as T;
    items[i] = items[j] as T;
    items[j] = a;
  }
  return items;
}

// ---- names ------------------------------------------------------------------------------------

const EXTERNAL_PREFIXES = ['www', 'api', 'cdn', 'auth', 'img.static', 'login'];
/** Distinct second-level domains for unique and negative external names. */
const EXTERNAL_SITES = 50;

export function externalName(k: number): string {
  return `${EXTERNAL_PREFIXES[k % EXTERNAL_PREFIXES.length]}.site-${k}.example`;
}

/**
 * The names glibc tries for `name` (res_nsearch): an absolute name (trailing
 * dot) only as is; a name with at least `ndots` dots as is first, then with
 * each search suffix; otherwise with each suffix first and as is last.
 */
export function searchCandidates(name: string, search: readonly string[], ndots: number): string[] {
  if (name.endsWith('.')) return [name.slice(0, -1)];
  const dots = name.split('.').length - 1;
  const suffixed = search.map((s) => `${name}.${s}`);
  return dots >= ndots ? [name, ...suffixed] : [...suffixed, name];
}

/** A pod's search list in namespace `ns` (what the kubelet writes into resolv.conf). */
export function podSearchList(ns: string, clusterDomain: string): string[] {
  return [`${ns}.svc.${clusterDomain}`, `svc.${clusterDomain}`, clusterDomain];
}

class TemplateCache {
  readonly #map = new Map<string, QueryTemplate>();
  constructor(readonly zones: ZoneConfig) {}
  get(name: string, qtype: number): QueryTemplate {
    const key = `${qtype} ${name}`;
    let t = this.#map.get(key);
    if (t === undefined) {
      t = makeTemplate(name, qtype, this.zones);
      this.#map.set(key, t);
    }
    return t;
  }
}

function single(t: QueryTemplate, cls: number, unique: boolean): LookupPlan {
  return { steps: [[t]], cls, queries: 1, unique };
}

/** A and AAAA plans for each name, indexed [2*i] = A, [2*i+1] = AAAA. */
function pairPlans(names: readonly string[], cache: TemplateCache, clsOf: (name: string) => number, unique: boolean): LookupPlan[] {
  const out: LookupPlan[] = [];
  for (const n of names) {
    const cls = clsOf(n);
    out.push(single(cache.get(n, QTYPE_A), cls, unique), single(cache.get(n, QTYPE_AAAA), cls, unique));
  }
  return out;
}

function zoneClass(zones: ZoneConfig): (name: string) => number {
  return (n) => (n.endsWith('.' + zones.clusterDomain) ? 0 : 1);
}

// ---- hit ----------------------------------------------------------------------------------------

/** Names already cached (warmed before each run), A or AAAA at random, Zipf-popular over cluster services and external names. */
function hitWorkload(p: WorkloadParams): Workload {
  const rng = new Rng(p.seed ^ 0x4849);
  const cache = new TemplateCache(p.zones);
  const universe: string[] = [];
  for (let ns = 0; ns < p.zones.namespaces; ns++) {
    for (let s = 0; s < p.zones.servicesPerNamespace; s++) universe.push(serviceFqdn(s, ns, p.zones));
  }
  for (let e = 0; e < p.externalNames; e++) universe.push(externalName(e));
  const names = shuffle(universe, rng).slice(0, Math.max(1, p.hitNames));
  const plans = pairPlans(names, cache, zoneClass(p.zones), false);
  const zipf = new Zipf(names.length, p.zipfExponent);
  return {
    name: 'hit',
    classes: ['cluster', 'external'],
    meanQueriesPerLookup: 1,
    warmup: () => plans,
    next: () => plans[2 * zipf.sample(rng) + (rng.next() < 0.5 ? 0 : 1)] as LookupPlan,
  };
}

// ---- miss ---------------------------------------------------------------------------------------

/** Every query a new name: existing cluster services `u-…` and external names, so each one goes upstream. */
function missWorkload(p: WorkloadParams): Workload {
  const rng = new Rng(p.seed ^ 0x4d49);
  const cache = new TemplateCache(p.zones);
  const cluster: string[] = [];
  for (let ns = 0; ns < p.zones.namespaces; ns++) cluster.push(`u-${p.uniqueTag}-${UNIQUE_MARK}.${namespaceName(ns)}.svc.${p.zones.clusterDomain}`);
  const external: string[] = [];
  for (let k = 0; k < EXTERNAL_SITES; k++) external.push(`u-${p.uniqueTag}-${UNIQUE_MARK}.site-${k}.example`);
  const clusterPlans = pairPlans(cluster, cache, () => 0, true);
  const externalPlans = pairPlans(external, cache, () => 1, true);
  const pick = (r: Rng): LookupPlan => {
    const set = r.next() < p.missExternalShare ? externalPlans : clusterPlans;
    return set[r.int(set.length)] as LookupPlan;
  };
  // The plans are templates: each send takes the next unique counter, so the
  // warm-up's names are never the run's.
  const warm = new Rng(p.seed ^ 0x5741);
  const warmPlans = Array.from({ length: p.missWarmupLookups }, () => pick(warm));
  return {
    name: 'miss',
    classes: ['cluster', 'external'],
    meanQueriesPerLookup: 1,
    warmup: () => warmPlans,
    next: () => pick(rng),
  };
}

// ---- negative -----------------------------------------------------------------------------------

/** NXDOMAIN names: a Zipf-popular repeated set (negative-cache hits after warm-up) and unique ones (negative misses). */
function negativeWorkload(p: WorkloadParams): Workload {
  const rng = new Rng(p.seed ^ 0x4e45);
  const cache = new TemplateCache(p.zones);
  const repeatedNames: string[] = [];
  for (let i = 0; i < Math.max(1, p.negativeNames); i++) {
    repeatedNames.push(i % 2 === 0
      ? `nx-${i}.${namespaceName(i % p.zones.namespaces)}.svc.${p.zones.clusterDomain}`
      : `nx-${i}.site-${i % EXTERNAL_SITES}.example`);
  }
  const repeated = pairPlans(repeatedNames, cache, () => 0, false);
  const uniqueNames: string[] = [];
  for (let ns = 0; ns < p.zones.namespaces; ns++) uniqueNames.push(`nx-${p.uniqueTag}-${UNIQUE_MARK}.${namespaceName(ns)}.svc.${p.zones.clusterDomain}`);
  for (let k = 0; k < EXTERNAL_SITES; k++) uniqueNames.push(`nx-${p.uniqueTag}-${UNIQUE_MARK}.site-${k}.example`);
  const unique = pairPlans(uniqueNames, cache, () => 1, true);
  const zipf = new Zipf(repeatedNames.length, p.zipfExponent);
  return {
    name: 'negative',
    classes: ['repeated', 'unique'],
    meanQueriesPerLookup: 1,
    warmup: () => repeated,
    next: () => {
      if (rng.next() < p.negativeUniqueShare) return unique[rng.int(unique.length)] as LookupPlan;
      return repeated[2 * zipf.sample(rng) + (rng.next() < 0.5 ? 0 : 1)] as LookupPlan;
    },
  };
}

// ---- podmix -------------------------------------------------------------------------------------

/** How a pod names a service: `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<domain>` (all below ndots:5, so all are expanded). */
const Form = { SHORT: 0, NS: 1, NS_SVC: 2, FQDN: 3 } as const;
const FORMS = 4;

/**
 * What pods send under the kubelet's resolv.conf (ndots:5, search
 * `<ns>.svc.<domain> svc.<domain> <domain>`): for each lookup the whole glibc
 * expansion, A and AAAA in parallel for each candidate, until the first
 * candidate that exists. Pods sit in random namespaces; services are
 * Zipf-popular (mostly in the pod's own namespace), external names too.
 */
function podmixWorkload(p: WorkloadParams): Workload {
  const z = p.zones;
  const rng = new Rng(p.seed ^ 0x504d);
  const cache = new TemplateCache(z);
  const services = z.namespaces * z.servicesPerNamespace;
  const externals = Math.max(1, p.externalNames);
  // Global popularity order of (ns, svc) pairs, and of services within a namespace.
  const globalOrder = shuffle(Array.from({ length: services }, (_, i) => i), new Rng(p.seed ^ 0x6f72));
  const globalZipf = new Zipf(services, p.zipfExponent);
  const localZipf = new Zipf(z.servicesPerNamespace, p.zipfExponent);
  const externalZipf = new Zipf(externals, p.zipfExponent);
  const perPod = externals + services * FORMS;
  const plans = new Map<number, LookupPlan>();

  const buildPlan = (pod: number, key: number): LookupPlan => {
    let name: string;
    let cls = 0;
    if (key < externals) {
      name = externalName(key);
      cls = 1;
    } else {
      const k = key - externals;
      const form = k % FORMS;
      const svcIdx = Math.floor(k / FORMS);
      const ns = Math.floor(svcIdx / z.servicesPerNamespace);
      const svc = serviceName(svcIdx % z.servicesPerNamespace);
      const nsName = namespaceName(ns);
      name = form === Form.SHORT ? svc
        : form === Form.NS ? `${svc}.${nsName}`
          : form === Form.NS_SVC ? `${svc}.${nsName}.svc`
            : `${svc}.${nsName}.svc.${z.clusterDomain}`;
    }
    const candidates = searchCandidates(name, podSearchList(namespaceName(pod), z.clusterDomain), p.ndots);
    const steps: QueryTemplate[][] = [];
    for (const c of candidates) {
      const a = cache.get(c, QTYPE_A);
      steps.push([a, cache.get(c, QTYPE_AAAA)]);
      if (a.rcode === RCODE_NOERROR) break;
    }
    return { steps, cls, queries: steps.length * 2, unique: false };
  };

  const sample = (r: Rng): LookupPlan => {
    const pod = r.int(z.namespaces);
    let key: number;
    if (r.next() < p.podmixExternalShare) {
      key = externalZipf.sample(r);
    } else {
      let ns: number;
      let svc: number;
      if (r.next() < p.podmixSameNamespace) {
        ns = pod;
        svc = localZipf.sample(r);
      } else {
        const g = globalOrder[globalZipf.sample(r)] ?? 0;
        ns = Math.floor(g / z.servicesPerNamespace);
        svc = g % z.servicesPerNamespace;
      }
      const f = r.next();
      const form = ns === pod
        ? (f < 0.7 ? Form.SHORT : f < 0.9 ? Form.NS : Form.FQDN)
        : (f < 0.8 ? Form.NS : f < 0.9 ? Form.NS_SVC : Form.FQDN);
      key = externals + (ns * z.servicesPerNamespace + svc) * FORMS + form;
    }
    const id = pod * perPod + key;
    let plan = plans.get(id);
    if (plan === undefined) {
      plan = buildPlan(pod, key);
      plans.set(id, plan);
    }
    return plan;
  };

  // Estimate queries per lookup from the same distribution (separate stream, so runs stay reproducible).
  const est = new Rng(p.seed ^ 0x4553);
  let total = 0;
  const samples = 20000;
  for (let i = 0; i < samples; i++) total += sample(est).queries;
  const warm = new Rng(p.seed ^ 0x5741);
  const warmPlans = Array.from({ length: p.podmixWarmupLookups }, () => sample(warm));
  return {
    name: 'podmix',
    classes: ['cluster', 'external'],
    meanQueriesPerLookup: total / samples,
    warmup: () => warmPlans,
    next: () => sample(rng),
  };
}

// ---- fallback -----------------------------------------------------------------------------------

export interface FallbackWorkload extends Workload {
  /** Distinct never-asked (cold) names: the fb-<i> services of every namespace. */
  readonly coldPool: number;
  /** Cold lookups handed out so far; past coldPool the names repeat (and may then be cache hits). */
  coldLookups(): number;
}

/**
 * Cluster-zone load for the fallback runs: getaddrinfo-style lookups (A and
 * AAAA together) of Zipf-popular services svc-<i>.ns-<j>, all warmed before
 * the run (class "hot": cache hits), and a share of lookups of names no
 * workload asks before, fb-<i>.ns-<j>, each taken once in a shuffled order
 * (class "cold": cache misses, which the agent must forward or, when kube-dns
 * is down, answer from its view). Build one per target run: each starts its
 * cold names afresh.
 */
export function fallbackWorkload(p: WorkloadParams): FallbackWorkload {
  const z = p.zones;
  const rng = new Rng(p.seed ^ 0x4642);
  const cache = new TemplateCache(z);
  const pair = (name: string, cls: number): LookupPlan => ({ steps: [[cache.get(name, QTYPE_A), cache.get(name, QTYPE_AAAA)]], cls, queries: 2, unique: false });
  const hotNames: string[] = [];
  for (let ns = 0; ns < z.namespaces; ns++) {
    for (let s = 0; s < z.servicesPerNamespace; s++) hotNames.push(serviceFqdn(s, ns, z));
  }
  const hot = shuffle(hotNames, new Rng(p.seed ^ 0x484f)).map((n) => pair(n, 0));
  const coldNames: string[] = [];
  for (let ns = 0; ns < z.namespaces; ns++) {
    for (let s = 0; s < z.fallbackServices; s++) coldNames.push(fallbackServiceFqdn(s, ns, z));
  }
  const cold = shuffle(coldNames, new Rng(p.seed ^ 0x434f)).map((n) => pair(n, 1));
  if (hot.length === 0) throw new Error('fallback: the cluster zone has no services (--namespaces/--services)');
  const zipf = new Zipf(hot.length, p.zipfExponent);
  let coldNext = 0;
  return {
    name: 'fallback',
    classes: ['hot', 'cold'],
    meanQueriesPerLookup: 2,
    coldPool: cold.length,
    coldLookups: () => coldNext,
    warmup: () => hot,
    next: () => {
      if (cold.length > 0 && rng.next() < p.fallbackColdShare) return cold[coldNext++ % cold.length] as LookupPlan;
      return hot[zipf.sample(rng)] as LookupPlan;
    },
  };
}

// ---- registry -----------------------------------------------------------------------------------

export interface WorkloadSpec {
  readonly description: string;
  /** null: not available yet; `unavailable` says why and what it needs. */
  readonly build: ((p: WorkloadParams) => Workload) | null;
  readonly unavailable?: string;
}

export const WORKLOADS: Record<WorkloadName, WorkloadSpec> = {
  hit: { description: 'cached names (A and AAAA), Zipf-popular, warmed before each run', build: hitWorkload },
  miss: { description: 'unique existing names, every query a cache miss (cluster zone and external)', build: missWorkload },
  negative: { description: 'NXDOMAIN names: a repeated Zipf set (negative-cache hits) and unique ones', build: negativeWorkload },
  podmix: { description: 'what pods send: ndots:5 search expansion as glibc does it, A+AAAA per candidate', build: podmixWorkload },
  // Run by the suite as a scenario, not a rate sweep: one open-loop run per
  // target at --fallback-rate, with the simulated kube-dns stopped and
  // restarted on the schedule of --fallback-phases (suite.ts runFallback).
  fallback: { description: 'cluster-zone load while the simulated kube-dns goes down and comes back (hits and never-asked names, per phase)', build: fallbackWorkload },
};

export function buildWorkload(name: WorkloadName, p: WorkloadParams): Workload {
  const spec = WORKLOADS[name];
  if (spec.build === null) throw new Error(spec.unavailable ?? `workload ${name} is not available`);
  return spec.build(p);
}
