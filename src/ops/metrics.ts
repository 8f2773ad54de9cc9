/**
 * The Prometheus registry of the agent. Everything the agent counts lives in
 * typed arrays (stats/counters.ts blocks, histogram.ts histograms) that the
 * hot path bumps; this module reads them only when /metrics is scraped, so a
 * query never pays for prom-client (a labelled inc() costs about 1 us, a
 * typed-array add a few ns; design section 7).
 *
 * One metric family per name, whatever the number of blocks that feed it:
 * every block of the same schema (one per upstream, one per listener) adds its
 * slots to the families they name, with the block's own extra labels, and
 * series with identical labels are summed. A family is registered with
 * prom-client once, on first use; later blocks only add sources to it.
 *
 * Families are prom-client Counter/Gauge/Histogram subclasses
 * (metric-families.ts) whose get() builds the values from the sources at
 * scrape time, so the registry's text and JSON output, default labels and
 * content type all stay prom-client's. This file is the registry: which
 * name, help, labels and sources each family gets.
 */
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { Counters } from '../stats/counters.js';
import type { TypedHistogram } from './histogram.js';
import {
  BlockSlots,
  CallbackSource,
  CounterFamily,
  GaugeFamily,
  HistogramFamily,
  SummedSlots,
  labelKey,
  withConstLabels,
  type Labels,
  type LabelledValue,
} from './metric-families.js';

export type { Labels, LabelledValue } from './metric-families.js';

export type FamilyType = 'counter' | 'gauge' | 'histogram';

/** What a family is, for introspection (the lead's "every dashboard metric exists" test, start-up logs). */
export interface FamilyInfo {
  readonly name: string;
  readonly type: FamilyType;
  readonly help: string;
  /** Every label name any of its series carries (histograms: without `le`). */
  readonly labelNames: readonly string[];
}

export interface BuildInfo {
  /** The agent's version (package.json). */
  readonly version: string;
  /** Source revision (git commit) when known, else ''. */
  readonly revision: string;
}

/**
 * Labels CoreDNS sets that we fill with a constant, because the agent does
 * not split its counts by them. `zone`/`zones` is the zone of the CoreDNS
 * server block (cache plugin) that took the query; the agent is one block for
 * every name, i.e. the root zone ".", which is what node-cache's catch-all
 * `.:53` block reports. Left out rather than faked: `view` (CoreDNS exports ""
 * without the view plugin, which Prometheus stores as absent: the same thing)
 * and `plugin` of coredns_dns_responses_total (we keep no slot per answering
 * plugin). `family` and `type` of coredns_dns_requests_total are real slots
 * (server/stats.ts).
 */
export const COREDNS_CONSTANT_LABELS: Readonly<Record<string, Labels>> = Object.freeze({
  coredns_dns_requests_total: { zone: '.' },
  coredns_dns_responses_total: { zone: '.' },
  coredns_dns_request_duration_seconds: { zone: '.' },
  coredns_dns_request_size_bytes: { zone: '.' },
  coredns_dns_response_size_bytes: { zone: '.' },
  coredns_cache_entries: { zones: '.' },
  coredns_cache_requests_total: { zones: '.' },
  coredns_cache_hits_total: { zones: '.' },
  coredns_cache_misses_total: { zones: '.' },
  coredns_cache_prefetch_total: { zones: '.' },
  coredns_cache_evictions_total: { zones: '.' },
  coredns_cache_served_stale_total: { zones: '.' },
});

/**
 * CoreDNS families the agent keeps no slot of its own for, published as the
 * sum of slots it does keep, per block (with the block's extra labels, e.g.
 * `server`). coredns_cache_requests_total is every lookup of the cache: hits
 * plus misses (CoreDNS 1.9 deprecated misses in favour of it).
 */
export const COREDNS_DERIVED_COUNTERS: Readonly<Record<string, { readonly help: string; readonly sumOf: readonly string[] }>> = Object.freeze({
  coredns_cache_requests_total: { help: 'The count of cache requests.', sumOf: ['coredns_cache_hits_total', 'coredns_cache_misses_total'] },
});

export interface MetricsOptions {
  /**
   * Constant labels per family, added to each of its series that lacks them
   * (default COREDNS_CONSTANT_LABELS; {} for none).
   */
  readonly familyLabels?: Readonly<Record<string, Labels>>;
  /** prom-client's process_* and nodejs_* metrics (default true). */
  readonly defaultMetrics?: boolean;
  /** Resolution of nodejs_eventloop_lag_* in ms (prom-client's default 10). */
  readonly eventLoopMonitoringPrecision?: number;
  /** Publishes coredns_build_info{version,revision,goversion} = 1 when given. */
  readonly buildInfo?: BuildInfo;
}

const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function checkLabelNames(family: string, names: Iterable<string>, histogram: boolean): void {
  for (const n of names) {
    if (!LABEL_NAME.test(n) || n.startsWith('__')) throw new Error(`metric ${family}: invalid label name "${n}"`);
    if (histogram && n === 'le') throw new Error(`metric ${family}: "le" is reserved in a histogram`);
  }
}

interface FamilyEntry {
  readonly type: FamilyType;
  readonly help: string;
  readonly labelNames: Set<string>;
  /** Sorted label names of each distinct kind of series: more than one is worth a warning. */
  readonly labelSets: Set<string>;
  /** From MetricsOptions.familyLabels; null when none. */
  readonly constLabels: Labels | null;
  readonly metric: CounterFamily | GaugeFamily | HistogramFamily;
}

export class MetricsRegistry {
  readonly registry: Registry;
  /**
   * What looks wrong in what was added, for a start-up log: a family given two
   * help texts (the first is kept; two schemas disagree on what the name
   * means), or series of one family with different label names (a sum() by a
   * label some series lack mixes totals with parts).
   */
  readonly warnings: string[];
  readonly #families: Map<string, FamilyEntry>;
  readonly #familyLabels: Readonly<Record<string, Labels>>;

  constructor(opts: MetricsOptions = {}) {
    this.registry = new Registry();
    this.warnings = [];
    this.#families = new Map();
    this.#familyLabels = opts.familyLabels ?? COREDNS_CONSTANT_LABELS;
    if (opts.defaultMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: opts.eventLoopMonitoringPrecision ?? 10 });
    }
    if (opts.buildInfo !== undefined) this.addBuildInfo(opts.buildInfo);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text (what GET /metrics returns). Never changes a counter. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Publishes every slot of a counter block. `extraLabels` tell this block
   * apart from others of the same schema ({server: 'dns://169.254.20.10:53'},
   * {to: 'tcp://10.96.0.10:53'}); they must not repeat a label the schema
   * itself sets. Blocks whose series end up with identical labels are summed.
   */
  addCounters<K extends string>(block: Counters<K>, extraLabels: Labels = {}): void {
    checkLabelNames('(extra labels)', Object.keys(extraLabels), false);
    const byFamily = new Map<string, BlockSlots>();
    block.schema.defs.forEach((def, slot) => {
      const labels = this.#seriesLabels(def.name, extraLabels, def.labels);
      const entry = this.#family(def.name, def.help, def.type ?? 'counter', labels);
      let slots = byFamily.get(def.name);
      if (slots === undefined) {
        slots = new BlockSlots(block.values);
        byFamily.set(def.name, slots);
        (entry.metric as CounterFamily | GaugeFamily).sources.push(slots);
      }
      slots.add(slot, this.#withConst(entry, labels));
    });
    for (const [name, derived] of Object.entries(COREDNS_DERIVED_COUNTERS)) {
      const defs = block.schema.defs;
      if (!derived.sumOf.every((part) => defs.some((d) => d.name === part))) continue;
      const slots = defs.flatMap((d, slot) => (derived.sumOf.includes(d.name) ? [slot] : []));
      const entry = this.#family(name, derived.help, 'counter', extraLabels);
      (entry.metric as CounterFamily).sources.push(new SummedSlots(block.values, slots, this.#withConst(entry, extraLabels)));
    }
  }

  /**
   * Takes out again every series a block added with addCounters feeds (an
   * upstream no longer configured): Prometheus marks them stale at the next
   * scrape. A family left with no series stays registered (HELP and TYPE only).
   */
  removeCounters<K extends string>(block: Counters<K>): void {
    for (const entry of this.#families.values()) {
      if (entry.type === 'histogram') continue;
      const sources = (entry.metric as CounterFamily | GaugeFamily).sources;
      for (let i = sources.length - 1; i >= 0; i--) if (sources[i]!.block === block.values) sources.splice(i, 1);
    }
  }

  /** Takes out a histogram added with addHistogram; a series no other histogram feeds goes with it. */
  removeHistogram(hist: TypedHistogram): void {
    const entry = this.#families.get(hist.def.name);
    if (entry === undefined || entry.type !== 'histogram') return;
    const series = (entry.metric as HistogramFamily).series;
    for (let i = series.length - 1; i >= 0; i--) {
      const hists = series[i]!.hists;
      const at = hists.indexOf(hist);
      if (at >= 0) hists.splice(at, 1);
      if (hists.length === 0) series.splice(i, 1);
    }
  }

  /** A gauge read by a callback at scrape time: e.g. cache entries, upstream health, view sync state. */
  addGauge(name: string, help: string, labelNames: readonly string[], collect: () => Iterable<LabelledValue>): void {
    this.#callback(name, help, 'gauge', labelNames, collect);
  }

  /** A counter read by a callback at scrape time (a total some object keeps itself). The callback must never go down. */
  addCounter(name: string, help: string, labelNames: readonly string[], collect: () => Iterable<LabelledValue>): void {
    this.#callback(name, help, 'counter', labelNames, collect);
  }

  /**
   * Publishes a typed histogram as a Prometheus histogram named by its def,
   * with its def's labels plus `extraLabels`. Histograms of one name must
   * share their bounds; those with identical labels are summed.
   */
  addHistogram(hist: TypedHistogram, extraLabels: Labels = {}): void {
    const def = hist.def;
    const given = this.#seriesLabels(def.name, extraLabels, def.labels);
    const entry = this.#family(def.name, def.help, 'histogram', given);
    const labels = this.#withConst(entry, given);
    const fam = entry.metric as HistogramFamily;
    if (fam.series.length === 0) fam.bounds = [...def.bounds];
    else if (fam.bounds.length !== def.bounds.length || fam.bounds.some((b, i) => b !== def.bounds[i])) {
      throw new Error(`metric ${def.name}: every histogram of one name must have the same bounds`);
    }
    const key = labelKey(labels);
    const same = fam.series.find((s) => s.key === key);
    if (same !== undefined) same.hists.push(hist);
    else fam.series.push({ labels, key, hists: [hist] });
  }

  /** coredns_build_info: CoreDNS reports the Go version it was built with; we report the Node.js runtime ("node20.20.0") there. */
  addBuildInfo(info: BuildInfo): void {
    const labels: Labels = { version: info.version, revision: info.revision, goversion: `node${process.versions.node}` };
    this.addGauge(
      'coredns_build_info',
      "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
      ['version', 'revision', 'goversion'],
      () => [[labels, 1]],
    );
  }

  /** Every family published by this module (prom-client's default metrics not included). */
  families(): FamilyInfo[] {
    return [...this.#families].map(([name, f]) => ({ name, type: f.type, help: f.help, labelNames: [...f.labelNames] }));
  }

  /** A series' labels: the instance's extra ones, then the def's own (which must not collide). */
  #seriesLabels(name: string, extra: Labels, own: Labels | undefined): Labels {
    if (own === undefined) return extra;
    for (const k of Object.keys(own)) {
      if (k in extra) throw new Error(`metric ${name}: extra label "${k}" collides with the definition's own`);
    }
    return { ...extra, ...own };
  }

  #withConst(entry: FamilyEntry, labels: Labels): Labels {
    return withConstLabels(labels, entry.constLabels);
  }

  #callback(name: string, help: string, type: 'counter' | 'gauge', labelNames: readonly string[], collect: () => Iterable<LabelledValue>): void {
    const names: Record<string, string> = {};
    for (const n of labelNames) names[n] = '';
    const entry = this.#family(name, help, type, names);
    (entry.metric as CounterFamily | GaugeFamily).sources.push(new CallbackSource(collect, entry.constLabels));
  }

  /**
   * The family of that name, made and registered on first use. `labels` are
   * one series' own (values unused): their names join the family's, and a
   * second distinct set of names is a warning (sum() by a label some series
   * lack mixes totals with parts).
   */
  #family(name: string, help: string, type: FamilyType, labels: Labels): FamilyEntry {
    const labelNames = Object.keys(labels);
    checkLabelNames(name, labelNames, type === 'histogram');
    let entry = this.#families.get(name);
    if (entry !== undefined) {
      if (entry.type !== type) throw new Error(`metric ${name}: declared as ${entry.type} and as ${type}`);
      if (entry.help !== help) this.#warn(name, `help "${help}" differs from "${entry.help}" (first kept)`);
    } else {
      // No labelNames given to prom-client: our get() builds the values, so its label validation never runs.
      const config = { name, help, registers: [this.registry] };
      const metric = type === 'counter' ? new CounterFamily(config) : type === 'gauge' ? new GaugeFamily(config) : new HistogramFamily(config);
      const constLabels = this.#familyLabels[name] ?? null;
      entry = { type, help, labelNames: new Set(), labelSets: new Set(), constLabels, metric };
      this.#families.set(name, entry);
    }
    const all = entry.constLabels === null ? labelNames : [...new Set([...Object.keys(entry.constLabels), ...labelNames])];
    for (const l of all) entry.labelNames.add(l);
    const set = [...all].sort().join(',');
    if (!entry.labelSets.has(set)) {
      entry.labelSets.add(set);
      if (entry.labelSets.size === 2) this.#warn(name, `series carry different label names: {${[...entry.labelSets].join('} and {')}}`);
    }
    return entry;
  }

  #warn(name: string, what: string): void {
    const w = `${name}: ${what}`;
    if (!this.warnings.includes(w)) this.warnings.push(w);
  }
}