/**
 * Phases of the fallback workload: a run split in time into stretches during
 * which the simulated kube-dns is up or down (the agent's fallback to its
 * cluster view, design §6), and the per-phase (and per-class) tally of what
 * the generator saw: lookups, answers right, SERVFAIL, wrong, timed out,
 * late, answered from the view, latency.
 *
 * A lookup belongs to the phase its INTENDED start falls in (open loop), so a
 * lookup started just before kube-dns stops counts in the phase before, even
 * if its answer comes during the outage. Time is measured from the run's
 * first intended start.
 */
import { build, type Histogram } from 'hdr-histogram-js';
import { Verdict } from './check.js';
import { percentiles, type PhaseClassRecord, type PhaseQueries, type PhaseRecord } from './results.js';

export type PhaseState = 'up' | 'down';

export interface Phase {
  readonly index: number;
  readonly state: PhaseState;
  readonly startMs: number;
  readonly durationMs: number;
}

/**
 * `3,4,3`: seconds of alternating states, starting up (up 3 s, down 4 s, up
 * 3 s). An odd count starts and ends up; every length must be > 0.
 */
export function parsePhases(spec: string): Phase[] {
  const parts = spec.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.some((p) => p === '')) throw new Error(`expected seconds separated by commas (up,down,up,...), got ${JSON.stringify(spec)}`);
  const out: Phase[] = [];
  let startMs = 0;
  parts.forEach((p, index) => {
    const s = Number(p);
    if (!Number.isFinite(s) || s <= 0) throw new Error(`phase ${index + 1}: expected seconds > 0, got ${JSON.stringify(p)}`);
    const durationMs = Math.round(s * 1000);
    out.push({ index, state: index % 2 === 0 ? 'up' : 'down', startMs, durationMs });
    startMs += durationMs;
  });
  return out;
}

export function totalMs(phases: readonly Phase[]): number {
  const last = phases[phases.length - 1];
  return last === undefined ? 0 : last.startMs + last.durationMs;
}

/** Start times of phases 1..n-1 (ms from the run's start): where the state changes. */
export function boundaries(phases: readonly Phase[]): number[] {
  return phases.slice(1).map((p) => p.startMs);
}

/** The phase `offsetMs` falls in; a boundary belongs to the phase it starts. Before 0: phase 0; past the end: the last. */
export function phaseAt(bounds: readonly number[], offsetMs: number): number {
  let i = 0;
  while (i < bounds.length && offsetMs >= (bounds[i] as number)) i++;
  return i;
}

/** As the load generator's histograms (µs, 3 significant digits). */
function newHistogram(): Histogram {
  return build({ bitBucketSize: 32, numberOfSignificantValueDigits: 3, lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, autoResize: true });
}

// Counter slots of one cell.
const STARTED = 0;
const COMPLETED = 1;
const FAILED = 2;
const SENT = 3;
const ANSWERED = 4;
const OK = 5;
const SERVFAIL = 6;
const WRONG = 7;
const TIMEOUTS = 8;
const LATE = 9;
const FROM_VIEW = 10;
const SLOTS = 11;

/**
 * Counters per (phase, class) cell; the load generator calls the event
 * methods with the cell it stored for the lookup. `viewTtlMax`: a right
 * answer whose records have a TTL at most this was answered from the agent's
 * view (--local-ttl), since kube-dns's answers carry the zone's longer TTL;
 * null to not count.
 */
export class PhaseTally {
  readonly phases: number;
  readonly classes: number;
  readonly viewTtlMax: number | null;
  readonly #counts: Float64Array;
  readonly #latency: Histogram[];

  constructor(phases: number, classes: number, viewTtlMax: number | null) {
    if (phases < 1 || classes < 1) throw new Error('PhaseTally: need at least one phase and one class');
    this.phases = phases;
    this.classes = classes;
    this.viewTtlMax = viewTtlMax;
    this.#counts = new Float64Array(phases * classes * SLOTS);
    this.#latency = Array.from({ length: phases * classes }, () => newHistogram());
  }

  /** The cell of a lookup; an out-of-range class goes to class 0. */
  cell(phase: number, cls: number): number {
    const p = Math.min(Math.max(phase, 0), this.phases - 1);
    const c = cls >= 0 && cls < this.classes ? cls : 0;
    return p * this.classes + c;
  }

  #inc(cell: number, slot: number): void {
    if (cell < 0 || cell >= this.phases * this.classes) return;
    const i = cell * SLOTS + slot;
    this.#counts[i] = (this.#counts[i] as number) + 1;
  }

  get wantsTtl(): boolean {
    return this.viewTtlMax !== null;
  }

  started(cell: number): void {
    this.#inc(cell, STARTED);
  }
  sent(cell: number): void {
    this.#inc(cell, SENT);
  }
  /** An answer with the checker's verdict; `ttl` from answerTtl() (-1: none or not looked at). */
  answered(cell: number, verdict: number, ttl: number): void {
    this.#inc(cell, ANSWERED);
    if (verdict === Verdict.OK) {
      this.#inc(cell, OK);
      if (this.viewTtlMax !== null && ttl >= 0 && ttl <= this.viewTtlMax) this.#inc(cell, FROM_VIEW);
    } else if (verdict === Verdict.SERVFAIL) this.#inc(cell, SERVFAIL);
    else this.#inc(cell, WRONG);
  }
  timeout(cell: number): void {
    this.#inc(cell, TIMEOUTS);
  }
  /** An answer that came after the client's timeout. */
  late(cell: number): void {
    this.#inc(cell, LATE);
  }
  completed(cell: number, latencyUs: number): void {
    this.#inc(cell, COMPLETED);
    this.#latency[cell]?.recordValue(latencyUs);
  }
  failed(cell: number): void {
    this.#inc(cell, FAILED);
  }

  #get(cells: readonly number[], slot: number): number {
    let n = 0;
    for (const c of cells) n += this.#counts[c * SLOTS + slot] as number;
    return n;
  }

  #part(cells: readonly number[]): PhaseClassRecord {
    const h = newHistogram();
    for (const c of cells) {
      const x = this.#latency[c];
      if (x !== undefined && x.totalCount > 0) h.add(x);
    }
    const q: PhaseQueries = {
      sent: this.#get(cells, SENT),
      answered: this.#get(cells, ANSWERED),
      ok: this.#get(cells, OK),
      servfail: this.#get(cells, SERVFAIL),
      wrong: this.#get(cells, WRONG),
      timeouts: this.#get(cells, TIMEOUTS),
      late: this.#get(cells, LATE),
    };
    return {
      lookups: { started: this.#get(cells, STARTED), completed: this.#get(cells, COMPLETED), failed: this.#get(cells, FAILED) },
      queries: q,
      fromView: this.viewTtlMax === null ? null : this.#get(cells, FROM_VIEW),
      latencyUs: percentiles(h),
    };
  }

  /** One record per phase, with a breakdown by class (upstream counts and state-change lag are the caller's to fill). */
  summary(phases: readonly Phase[], classNames: readonly string[]): PhaseRecord[] {
    return phases.slice(0, this.phases).map((ph, p) => {
      const cells = Array.from({ length: this.classes }, (_, c) => p * this.classes + c);
      const classes: Record<string, PhaseClassRecord> = {};
      cells.forEach((cell, c) => {
        classes[classNames[c] ?? `class-${c}`] = this.#part([cell]);
      });
      return { index: p, state: ph.state, startS: ph.startMs / 1000, durationS: ph.durationMs / 1000, ...this.#part(cells), classes, upstream: null, changeLagMs: null };
    });
  }
}
