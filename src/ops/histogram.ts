/**
 * Histograms for the hot path: bucket counts and the sum in one Float64Array,
 * observed with a short loop over the bounds and no allocation, published
 * only at scrape time (metrics.ts). A prom-client Histogram observe() with
 * labels costs about 1 us (design section 7); this costs a few ns.
 *
 * Layout of `values` (n = bounds.length), counts NOT cumulative (the
 * publisher adds them up at scrape):
 *
 *   [0 .. n-1]  observations v with bounds[i-1] < v <= bounds[i]
 *   [n]         observations above the last bound (the +Inf bucket's own share)
 *   [n + 1]     sum of all observed values
 *
 * Like a Counters block it may live in a SharedArrayBuffer (`buffer`,
 * `byteOffset`), so a worker observes and the main thread publishes.
 */
import type { HitPathHistograms } from '../server/hit-path.js';
import { sumArraysInto } from '../stats/counters.js';

export interface HistogramDef {
  /** Prometheus name, without _bucket/_sum/_count. */
  readonly name: string;
  readonly help: string;
  /** Upper bounds (le), strictly ascending, +Inf not included. */
  readonly bounds: readonly number[];
  /** Constant labels that tell this histogram apart from others of the same name. */
  readonly labels?: Readonly<Record<string, string>>;
}

/**
 * CoreDNS's plugin.TimeBuckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
 * 0.25 ms to 8.192 s. Doubling is exact in binary, so these print as CoreDNS's
 * do (0.0005, 0.001, ... 8.192).
 */
export const TIME_BUCKETS: readonly number[] = Object.freeze(Array.from({ length: 16 }, (_, i) => 0.00025 * 2 ** i));

/** CoreDNS's request/response size buckets (plugin/metrics/vars/vars.go), bytes. */
export const SIZE_BUCKETS: readonly number[] = Object.freeze([0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3]);

/**
 * coredns_dns_request_duration_seconds{server,zone,view}. CoreDNS dropped its
 * `type` label in 1.8.4 (commit ed3f287f, "metrics: remove RR type", label
 * cardinality) although its README still lists it; we follow the code.
 */
export const REQUEST_DURATION: HistogramDef = {
  name: 'coredns_dns_request_duration_seconds',
  help: 'Histogram of the time (in seconds) each request took per zone.',
  bounds: TIME_BUCKETS,
};

/** coredns_dns_request_size_bytes{server,zone,view,proto}: CoreDNS observes the query's length. */
export function requestSizeDef(proto: 'udp' | 'tcp'): HistogramDef {
  return {
    name: 'coredns_dns_request_size_bytes',
    help: 'Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.',
    bounds: SIZE_BUCKETS,
    labels: { proto },
  };
}

/** coredns_dns_response_size_bytes{server,zone,view,proto}. */
export function responseSizeDef(proto: 'udp' | 'tcp'): HistogramDef {
  return { name: 'coredns_dns_response_size_bytes', help: 'Size of the returned response in bytes.', bounds: SIZE_BUCKETS, labels: { proto } };
}

export class TypedHistogram {
  readonly def: HistogramDef;
  readonly bounds: Float64Array;
  readonly values: Float64Array;
  readonly #n: number;

  /** Bytes one histogram of `boundCount` bounds takes in a shared buffer. */
  static byteLength(boundCount: number): number {
    return (boundCount + 2) * Float64Array.BYTES_PER_ELEMENT;
  }

  constructor(def: HistogramDef, buffer?: ArrayBufferLike, byteOffset = 0) {
    const b = def.bounds;
    for (let i = 0; i < b.length; i++) {
      const v = b[i]!;
      if (!Number.isFinite(v) || (i > 0 && v <= b[i - 1]!)) throw new Error(`histogram ${def.name}: bounds must be finite and strictly ascending`);
    }
    this.def = def;
    this.bounds = Float64Array.from(b);
    this.#n = b.length;
    this.values = buffer === undefined ? new Float64Array(b.length + 2) : new Float64Array(buffer, byteOffset, b.length + 2);
  }

  /**
   * Counts one value. Prometheus buckets are "less than or equal", so v lands
   * in the first bucket whose bound is >= v. Values small enough for the first
   * bucket (every cache hit in seconds) cost one comparison. NaN and negative
   * values are dropped: they would poison the sum for the life of the process.
   */
  observe(v: number): void {
    if (!(v >= 0)) return;
    const b = this.bounds;
    const n = this.#n;
    let i = 0;
    while (i < n && v > b[i]!) i++;
    const values = this.values;
    values[i]!++;
    values[n + 1]! += v;
  }

  get count(): number {
    let c = 0;
    for (let i = 0; i <= this.#n; i++) c += this.values[i]!;
    return c;
  }

  get sum(): number {
    return this.values[this.#n + 1]!;
  }

  /** Counts per bound, cumulative as Prometheus publishes them; the last entry is +Inf (= count). */
  cumulative(): number[] {
    const out: number[] = [];
    let acc = 0;
    for (let i = 0; i <= this.#n; i++) {
      acc += this.values[i]!;
      out.push(acc);
    }
    return out;
  }
}

/** coredns_dns_request_duration_seconds, observed in seconds or, from Clock.now() differences, in ms. */
export class DurationHistogram extends TypedHistogram {
  constructor(def: HistogramDef = REQUEST_DURATION, buffer?: ArrayBufferLike, byteOffset = 0) {
    super(def, buffer, byteOffset);
  }

  /** Milliseconds (Clock.now() differences) in, seconds counted. */
  observeMs(ms: number): void {
    this.observe(ms / 1000);
  }
}

/** The hit path's histograms in their order in a shared buffer: duration, request size udp/tcp, response size udp/tcp. */
const HIT_PATH_DEFS: readonly HistogramDef[] = [REQUEST_DURATION, requestSizeDef('udp'), requestSizeDef('tcp'), responseSizeDef('udp'), responseSizeDef('tcp')];

/** Bytes the hit path's histograms take in a shared buffer. */
export const HIT_PATH_HISTOGRAM_BYTES = HIT_PATH_DEFS.reduce((n, d) => n + TypedHistogram.byteLength(d.bounds.length), 0);

/**
 * The hit path's histograms (coredns_dns_request_duration_seconds, request
 * and response sizes by transport): in their own memory, or over `buffer`
 * from `byteOffset` (a batched worker's, which the main thread adds up).
 */
export function hitPathHistograms(buffer?: ArrayBufferLike, byteOffset = 0): HitPathHistograms {
  let at = byteOffset;
  const next = (def: HistogramDef): TypedHistogram => {
    const h = buffer === undefined ? new TypedHistogram(def) : new TypedHistogram(def, buffer, at);
    at += TypedHistogram.byteLength(def.bounds.length);
    return h;
  };
  const duration = buffer === undefined ? new DurationHistogram(REQUEST_DURATION) : new DurationHistogram(REQUEST_DURATION, buffer, at);
  at += TypedHistogram.byteLength(REQUEST_DURATION.bounds.length);
  return {
    duration,
    requestSize: [next(HIT_PATH_DEFS[1]!), next(HIT_PATH_DEFS[2]!)],
    responseSize: [next(HIT_PATH_DEFS[3]!), next(HIT_PATH_DEFS[4]!)],
  };
}

/** Adds `hists` (of the same bounds) into `into` (zeroed first), bucket by bucket: what a scrape publishes. */
export function sumHistogram(into: TypedHistogram, hists: readonly TypedHistogram[]): TypedHistogram {
  sumArraysInto(into.values, hists.map((h) => h.values));
  return into;
}

/** sumHistogram for each of the hit path's histograms. */
export function sumHistogramsInto(into: HitPathHistograms, blocks: readonly HitPathHistograms[]): HitPathHistograms {
  sumHistogram(into.duration, blocks.map((b) => b.duration));
  for (const t of [0, 1] as const) {
    sumHistogram(into.requestSize[t], blocks.map((b) => b.requestSize[t]));
    sumHistogram(into.responseSize[t], blocks.map((b) => b.responseSize[t]));
  }
  return into;
}
