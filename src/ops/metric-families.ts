/**
 * The metric families the registry (metrics.ts) publishes: prom-client
 * Counter, Gauge and Histogram subclasses whose get() builds the series at
 * scrape time from their sources (slots of typed-array counter blocks,
 * callbacks, typed histograms), summing series of identical labels. Kept
 * apart from the registry, which decides names, labels and which source
 * feeds which family; this file only turns sources into prom-client values.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { TypedHistogram } from './histogram.js';

export type Labels = Readonly<Record<string, string>>;
/** One series of a callback family: its labels and its value now. */
export type LabelledValue = readonly [labels: Labels, value: number];

/**
 * Label set -> map key. Sorted so {a,b} and {b,a} are one series; \u0000
 * cannot appear in a label name and separates fields unambiguously.
 */
export function labelKey(labels: Labels): string {
  const names = Object.keys(labels).sort();
  let k = '';
  for (const n of names) k += `${n}\u0000${labels[n]}\u0000`;
  return k;
}

/** `labels` plus each constant label it does not set itself (given labels first, so `server` reads before `zone`). */
export function withConstLabels(labels: Labels, constLabels: Labels | null): Labels {
  if (constLabels === null) return labels;
  const out: Record<string, string> = { ...labels };
  for (const k of Object.keys(constLabels)) if (!(k in out)) out[k] = constLabels[k]!;
  return out;
}

/** One series of a counter or gauge family, as published. */
interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** A source of samples: slots of a block, or a callback. Pushes into `out`, summing on `key`. */
export interface ScalarSource {
  /** The values of the counter block it reads (null: a callback), so the block's series can be taken out again. */
  readonly block: Float64Array | null;
  collect(out: Map<string, Sample>): void;
}

function addSample(out: Map<string, Sample>, key: string, labels: Labels, value: number): void {
  const s = out.get(key);
  if (s === undefined) out.set(key, { labels: { ...labels }, value });
  else s.value += value;
}

/** The slots of one block that belong to one family, with their labels worked out once, at add time. */
export class BlockSlots implements ScalarSource {
  readonly block: Float64Array;
  readonly #values: Float64Array;
  readonly #slots: number[];
  readonly #labels: Labels[];
  readonly #keys: string[];

  constructor(values: Float64Array) {
    this.block = values;
    this.#values = values;
    this.#slots = [];
    this.#labels = [];
    this.#keys = [];
  }

  add(slot: number, labels: Labels): void {
    this.#slots.push(slot);
    this.#labels.push(labels);
    this.#keys.push(labelKey(labels));
  }

  collect(out: Map<string, Sample>): void {
    for (let i = 0; i < this.#slots.length; i++) {
      addSample(out, this.#keys[i]!, this.#labels[i]!, this.#values[this.#slots[i]!] ?? 0);
    }
  }
}

/** Several slots of one block published as one series, their sum: a family derived from others at scrape time. */
export class SummedSlots implements ScalarSource {
  readonly block: Float64Array;
  readonly #values: Float64Array;
  readonly #slots: readonly number[];
  readonly #labels: Labels;
  readonly #key: string;

  constructor(values: Float64Array, slots: readonly number[], labels: Labels) {
    this.block = values;
    this.#values = values;
    this.#slots = slots;
    this.#labels = labels;
    this.#key = labelKey(labels);
  }

  collect(out: Map<string, Sample>): void {
    let v = 0;
    for (const s of this.#slots) v += this.#values[s] ?? 0;
    addSample(out, this.#key, this.#labels, v);
  }
}

export class CallbackSource implements ScalarSource {
  readonly block = null;
  readonly #fn: () => Iterable<LabelledValue>;
  readonly #constLabels: Labels | null;
  constructor(fn: () => Iterable<LabelledValue>, constLabels: Labels | null) {
    this.#fn = fn;
    this.#constLabels = constLabels;
  }
  collect(out: Map<string, Sample>): void {
    const c = this.#constLabels;
    for (const [given, value] of this.#fn()) {
      const labels = withConstLabels(given, c);
      addSample(out, labelKey(labels), labels, value);
    }
  }
}

function collectScalars(sources: readonly ScalarSource[]): Sample[] {
  const out = new Map<string, Sample>();
  for (const s of sources) s.collect(out);
  return [...out.values()];
}

export class CounterFamily extends Counter<string> {
  readonly sources: ScalarSource[] = [];
  override async get(): Promise<Awaited<ReturnType<Counter<string>['get']>>> {
    const base = await super.get();
    return { ...base, values: collectScalars(this.sources) };
  }
}

export class GaugeFamily extends Gauge<string> {
  readonly sources: ScalarSource[] = [];
  override async get(): Promise<Awaited<ReturnType<Gauge<string>['get']>>> {
    const base = await super.get();
    return { ...base, values: collectScalars(this.sources) };
  }
}

/** The shape prom-client's Registry reads from a histogram (registry.js: getForPromString, then histogram.js get() splays). */
interface HistogramSample {
  metricName: string;
  labels: Record<string, string | number>;
  sharedLabels: Labels;
  value: number;
}

const NO_SHARED_LABELS: Labels = Object.freeze({});

interface HistogramSeries {
  readonly labels: Labels;
  readonly key: string;
  readonly hists: TypedHistogram[];
}

export class HistogramFamily extends Histogram<string> {
  readonly series: HistogramSeries[] = [];
  bounds: readonly number[] = [];
  // prom-client's typings do not declare these on Histogram; ours, set from the same config.
  readonly familyName: string;
  readonly familyHelp: string;

  constructor(config: { name: string; help: string; registers: Registry[] }) {
    super(config);
    this.familyName = config.name;
    this.familyHelp = config.help;
  }

  /**
   * Replaces prom-client's own (Histogram.get() calls it, and so does the
   * Registry's text output): cumulative buckets, +Inf, sum and count per series,
   * read from the typed arrays. Series of identical labels are summed.
   */
  async getForPromString(): Promise<{ name: string; help: string; type: 'histogram'; values: HistogramSample[]; aggregator: string }> {
    const values: HistogramSample[] = [];
    const n = this.bounds.length;
    const les = this.bounds.map((b) => String(b));
    for (const s of this.series) {
      const cum = new Array<number>(n + 1).fill(0);
      let sum = 0;
      for (const h of s.hists) {
        let acc = 0;
        for (let i = 0; i <= n; i++) {
          acc += h.values[i]!;
          cum[i]! += acc;
        }
        sum += h.values[n + 1]!;
      }
      const bucket = `${this.familyName}_bucket`;
      for (let i = 0; i < n; i++) values.push({ metricName: bucket, labels: { ...s.labels, le: les[i]! }, sharedLabels: NO_SHARED_LABELS, value: cum[i]! });
      values.push({ metricName: bucket, labels: { ...s.labels, le: '+Inf' }, sharedLabels: NO_SHARED_LABELS, value: cum[n]! });
      values.push({ metricName: `${this.familyName}_sum`, labels: { ...s.labels }, sharedLabels: NO_SHARED_LABELS, value: sum });
      values.push({ metricName: `${this.familyName}_count`, labels: { ...s.labels }, sharedLabels: NO_SHARED_LABELS, value: cum[n]! });
    }
    return { name: this.familyName, help: this.familyHelp, type: 'histogram', values, aggregator: 'sum' };
  }
}
