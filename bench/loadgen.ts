/**
 * The UDP load generator.
 *
 * Open loop: lookups start on a fixed schedule (lookup i is due at
 * t0 + i/rate) whether or not earlier ones were answered. A precise ticker
 * (ticker.ts: due time, at least 0.2 ms apart), every arriving answer and a
 * 1 ms interval timer send whatever is due, in one burst. Latency
 * is measured from the INTENDED start, so a target that stalls (or a generator
 * that falls behind) shows up as latency instead of silently lowering the
 * load (no coordinated omission). The lag between intended and actual send is
 * recorded on its own, so the generator's share is visible.
 *
 * Closed loop: `concurrency` lookups outstanding; each completion starts the
 * next one at once. This measures maximum throughput; its latencies are from
 * the actual send and understate queuing by construction.
 *
 * Wire and bookkeeping, chosen so the send path allocates nothing per query:
 *   - a small pool of connected UDP sockets per route (cluster/external);
 *     each lookup uses one socket for all its queries (glibc sends A and AAAA
 *     together on one socket);
 *   - per socket, `table[id]` maps the 16-bit id to an in-flight query slot;
 *     a timed-out id is tombstoned for a while so a late answer is counted as
 *     late instead of being matched to the id's next query;
 *   - lookups live in preallocated slot arrays (query slot = 2*lookup + k);
 *   - deadlines go into a FIFO in send order (the timeout is constant, so
 *     deadlines are sorted) swept by the same timer;
 *   - sends copy the template into a per-socket ring of buffers and patch the
 *     id (and the unique-name counter).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { build, type Histogram } from 'hdr-histogram-js';
import { VERDICT_NAMES, Verdict, answerTtl, checkResponse, type WrongReason } from './check.js';
import { phaseAt, type PhaseTally } from './phases.js';
import { Ticker } from './ticker.js';
import { writeUnique, type QueryTemplate } from './wire.js';
import type { LookupPlan, Workload } from './workloads.js';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

export interface GeneratorOptions {
  /** Where names of each zone go: [cluster, external]. Equal endpoints for single-address targets. */
  readonly routes: readonly [Endpoint, Endpoint];
  /** Sockets per distinct endpoint. */
  readonly sockets: number;
  /** Per-query deadline. */
  readonly timeoutMs: number;
  /** Source of unique-name counters, shared by every generator of one invocation. */
  readonly counter: UniqueCounter;
}

export class UniqueCounter {
  #n = 1;
  next(): number {
    return this.#n++;
  }
}

/**
 * Open loop only: the run split in phases (fallback workload). Each lookup is
 * tallied in the cell of (its intended start's phase, its class), and
 * `onPhase(i)` is called when the schedule reaches phase i's start (i >= 1),
 * before any lookup of phase i is sent. If it returns a promise (the
 * simulator changing state), no lookup is sent until it settles: every lookup
 * of a phase meets the phase's state. The hold is part of their latency (from
 * the intended start), like any send lag, and shows in `sendLag`.
 */
export interface PhasePlan {
  /** Start of phases 1..n-1, ms from the first intended start. */
  readonly boundariesMs: readonly number[];
  readonly tally: PhaseTally;
  /** `lateMs`: how long after the phase's scheduled start the call comes (the generator's timer granularity). */
  readonly onPhase: (index: number, lateMs: number) => void | Promise<unknown>;
}

export type LoadSpec =
  | { readonly kind: 'open'; readonly rateQps: number; readonly durationMs: number; readonly timeoutMs?: number; readonly phases?: PhasePlan }
  | { readonly kind: 'closed'; readonly concurrency: number; readonly durationMs: number }
  | { readonly kind: 'list'; readonly plans: readonly LookupPlan[]; readonly concurrency: number };

export interface RunOutcome {
  readonly spec: { readonly kind: LoadSpec['kind']; readonly rateQps: number | null; readonly concurrency: number | null; readonly durationMs: number | null };
  readonly lookupRate: number | null;
  readonly lookups: { started: number; completed: number; failed: number };
  readonly queries: { sent: number; answered: number; timeouts: number; wrong: number; late: number; sendErrors: number; overflow: number };
  readonly wrongByReason: Record<WrongReason, number>;
  /** First few wrong answers, for diagnosis. */
  readonly wrongSamples: string[];
  /** Lookup latency (µs): from intended start (open loop) or actual start (closed loop) to the last answer. */
  readonly latency: Histogram;
  /** Per query (µs): from the actual send to the answer. */
  readonly serviceLatency: Histogram;
  /** Per lookup (µs): actual first send minus intended start (open loop only). */
  readonly sendLag: Histogram;
  readonly classLatency: Histogram[];
  /** Wall time from the first intended start to the last answer or deadline (ms). */
  readonly wallMs: number;
  /** Window in which lookups were started (ms), for the achieved rate. */
  readonly sendWindowMs: number;
  readonly achievedLookupRate: number;
  readonly generatorCpuMs: number;
  readonly aborted: boolean;
}

const FREE = -1;
const TOMB = -2;
const RING_SLOTS = 1024;
const SLOT_BYTES = 512;
const TICK_MS = 1;
/** At most this many lookups per pump call, so answers keep being read under overload. */
const MAX_BURST = 2048;
/** After the schedule ends, in-flight queries get their deadline plus this before the run is cut. */
const DRAIN_GRACE_MS = 2000;
const MAX_WRONG_SAMPLES = 5;

export function newHistogram(): Histogram {
  return build({ bitBucketSize: 32, numberOfSignificantValueDigits: 3, lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, autoResize: true });
}

interface SockState {
  readonly idx: number;
  readonly sock: dgram.Socket;
  readonly table: Int32Array;
  readonly tombUntil: Float64Array;
  /** Phase-tally cell of a tombstoned id, so a late answer is tallied where its query was. */
  readonly tombCell: Int32Array;
  nextId: number;
  readonly ring: Buffer;
  ringPos: number;
}

interface RunState {
  readonly spec: LoadSpec;
  readonly workload: Workload | null;
  readonly list: readonly LookupPlan[];
  listPos: number;
  readonly classes: number;
  readonly t0: number;
  readonly endAt: number;
  readonly intervalMs: number;
  readonly total: number;
  readonly phases: PhasePlan | null;
  /** Next phase whose start has not been announced yet. */
  nextPhase: number;
  /** A phase change is under way: hold the sends. */
  held: boolean;
  scheduled: number;
  lastStart: number;
  inflight: number;
  stopped: boolean;
  aborted: boolean;
  readonly cpu0: NodeJS.CpuUsage;
  readonly out: Mutable<RunOutcome>;
  readonly done: (o: RunOutcome) => void;
  timer: NodeJS.Timeout | null;
  /** Removed when the run ends, so a long-lived signal does not collect listeners. */
  detach: () => void;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export class LoadGenerator {
  readonly #opts: GeneratorOptions;
  readonly #socks: SockState[] = [];
  /** For each route, the sockets connected to its endpoint. */
  readonly #routeSocks: [SockState[], SockState[]] = [[], []];
  #capacity = 0;
  // Lookup slots.
  #lPlan: Array<LookupPlan | null> = [];
  #lStep = new Int32Array(0);
  #lPending = new Int32Array(0);
  #lIntended = new Float64Array(0);
  #lUnique = new Float64Array(0);
  #lFailed = new Uint8Array(0);
  #lSock = new Int32Array(0);
  /** Phase-tally cell of each lookup (phased runs). */
  #lCell = new Int32Array(0);
  #free = new Int32Array(0);
  #freeTop = 0;
  // Query slots (2 per lookup).
  #qTmpl: Array<QueryTemplate | null> = [];
  #qSock = new Int32Array(0);
  #qId = new Int32Array(0);
  #qSent = new Float64Array(0);
  #qGen = new Int32Array(0);
  // Deadline FIFO.
  #dlSlot = new Int32Array(0);
  #dlGen = new Int32Array(0);
  #dlTime = new Float64Array(0);
  #dlHead = 0;
  #dlLen = 0;
  #run: RunState | null = null;
  #rr = 0;
  /** The current run's per-query deadline. */
  #timeoutMs: number;
  readonly #ticker: Ticker;

  private constructor(opts: GeneratorOptions) {
    this.#opts = opts;
    this.#timeoutMs = opts.timeoutMs;
    this.#ticker = new Ticker(() => {
      const r = this.#run;
      if (r !== null && r.spec.kind === 'open') this.#pump(performance.now());
    });
  }

  static async open(opts: GeneratorOptions): Promise<LoadGenerator> {
    const g = new LoadGenerator(opts);
    const [c, e] = opts.routes;
    const same = c.host === e.host && c.port === e.port;
    try {
      g.#routeSocks[0] = await g.#connectPool(c);
      g.#routeSocks[1] = same ? g.#routeSocks[0] : await g.#connectPool(e);
    } catch (err) {
      g.close();
      throw err;
    }
    g.#ensureCapacity(1024);
    return g;
  }

  async #connectPool(ep: Endpoint): Promise<SockState[]> {
    const out: SockState[] = [];
    for (let i = 0; i < Math.max(1, this.#opts.sockets); i++) {
      const sock = dgram.createSocket(net.isIPv6(ep.host) ? 'udp6' : 'udp4');
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject);
        sock.connect(ep.port, ep.host, () => {
          sock.off('error', reject);
          resolve();
        });
      });
      try {
        sock.setRecvBufferSize(4 << 20);
        sock.setSendBufferSize(1 << 20);
      } catch {
        /* capped by net.core.rmem_max; the default still works */
      }
      const idx = this.#socks.length;
      const st: SockState = {
        idx,
        sock,
        table: new Int32Array(65536).fill(FREE),
        tombUntil: new Float64Array(65536),
        tombCell: new Int32Array(65536).fill(-1),
        nextId: Math.floor(Math.random() * 65536),
        ring: Buffer.alloc(RING_SLOTS * SLOT_BYTES),
        ringPos: 0,
      };
      this.#socks.push(st);
      out.push(st);
      sock.on('message', (msg: Buffer) => this.#onMessage(idx, msg));
      sock.on('error', () => {
        const r = this.#run;
        if (r !== null) r.out.queries.sendErrors++;
      });
    }
    return out;
  }

  close(): void {
    void this.#ticker.close();
    for (const s of this.#socks) {
      try {
        s.sock.close();
      } catch {
        /* already closed */
      }
    }
    this.#socks.length = 0;
  }

  /** Runs one load pattern to completion (or until `signal` aborts it). One run at a time. */
  run(workload: Workload | null, spec: LoadSpec, signal?: AbortSignal): Promise<RunOutcome> {
    if (this.#run !== null) throw new Error('LoadGenerator: a run is already in progress');
    const mean = workload?.meanQueriesPerLookup ?? 1;
    let lookupRate = 0;
    let intervalMs = 0;
    let total = 0;
    let capacity = 0;
    this.#timeoutMs = spec.kind === 'open' && spec.timeoutMs !== undefined ? spec.timeoutMs : this.#opts.timeoutMs;
    const phases = spec.kind === 'open' ? (spec.phases ?? null) : null;
    if (phases !== null) for (const s of this.#socks) s.tombCell.fill(-1);
    const timeoutS = this.#timeoutMs / 1000;
    if (spec.kind === 'open') {
      lookupRate = spec.rateQps / mean;
      intervalMs = 1000 / lookupRate;
      total = Math.max(1, Math.round((spec.durationMs / 1000) * lookupRate));
      capacity = Math.min(1 << 20, Math.ceil(lookupRate * (timeoutS + 0.5)) + 1024);
    } else {
      capacity = spec.concurrency + 16;
      total = spec.kind === 'list' ? spec.plans.length : Number.MAX_SAFE_INTEGER;
    }
    this.#ensureCapacity(capacity);
    const classes = workload?.classes.length ?? 1;
    const now = performance.now();
    const t0 = now + 2;
    const out: Mutable<RunOutcome> = {
      spec: {
        kind: spec.kind,
        rateQps: spec.kind === 'open' ? spec.rateQps : null,
        concurrency: spec.kind === 'open' ? null : spec.concurrency,
        durationMs: spec.kind === 'list' ? null : spec.durationMs,
      },
      lookupRate: spec.kind === 'open' ? lookupRate : null,
      lookups: { started: 0, completed: 0, failed: 0 },
      queries: { sent: 0, answered: 0, timeouts: 0, wrong: 0, late: 0, sendErrors: 0, overflow: 0 },
      wrongByReason: { malformed: 0, truncated: 0, question: 0, servfail: 0, rcode: 0, data: 0 },
      wrongSamples: [],
      latency: newHistogram(),
      serviceLatency: newHistogram(),
      sendLag: newHistogram(),
      classLatency: Array.from({ length: classes }, () => newHistogram()),
      wallMs: 0,
      sendWindowMs: 0,
      achievedLookupRate: 0,
      generatorCpuMs: 0,
      aborted: false,
    };
    return new Promise<RunOutcome>((resolve) => {
      const r: RunState = {
        spec,
        workload,
        list: spec.kind === 'list' ? spec.plans : [],
        listPos: 0,
        classes,
        t0,
        endAt: spec.kind === 'list' ? Number.POSITIVE_INFINITY : t0 + spec.durationMs,
        intervalMs,
        total,
        phases,
        nextPhase: 1,
        held: false,
        scheduled: 0,
        lastStart: t0,
        inflight: 0,
        stopped: false,
        aborted: false,
        cpu0: process.cpuUsage(),
        out,
        done: resolve,
        timer: null,
        detach: () => {},
      };
      this.#run = r;
      const onAbort = (): void => {
        r.aborted = true;
        r.stopped = true;
      };
      if (signal !== undefined) {
        if (signal.aborted) onAbort();
        else {
          signal.addEventListener('abort', onAbort, { once: true });
          r.detach = () => signal.removeEventListener('abort', onAbort);
        }
      }
      r.timer = setInterval(() => this.#tick(), TICK_MS);
      if (spec.kind === 'open') this.#ticker.arm(t0, performance.now());
      else {
        // Closed loop: fill the window now; completions keep it full.
        setTimeout(() => {
          const c = spec.concurrency;
          for (let i = 0; i < c && !r.stopped; i++) if (!this.#startNext(performance.now())) break;
        }, Math.max(0, t0 - performance.now()));
      }
    });
  }

  // ---- scheduling ------------------------------------------------------------------------------

  #tick(): void {
    const r = this.#run;
    if (r === null) return;
    const now = performance.now();
    if (r.phases !== null && !r.held) this.#announcePhases(r, now);
    if (r.spec.kind === 'open') this.#pump(now);
    this.#sweep(now);
    this.#maybeFinish(now);
  }

  /** Calls onPhase for every phase whose start the schedule has reached. */
  #announcePhases(r: RunState, now: number): void {
    const p = r.phases as PhasePlan;
    while (r.nextPhase - 1 < p.boundariesMs.length && !r.aborted && now >= r.t0 + (p.boundariesMs[r.nextPhase - 1] as number)) {
      const i = r.nextPhase++;
      let pending: void | Promise<unknown> = undefined;
      try {
        pending = p.onPhase(i, now - (r.t0 + (p.boundariesMs[i - 1] as number)));
      } catch {
        /* the caller's problem; the run goes on */
      }
      if (pending instanceof Promise) {
        r.held = true;
        const release = (): void => {
          r.held = false;
          if (this.#run === r) this.#pump(performance.now());
        };
        pending.then(release, release);
        return;
      }
    }
  }

  /** Open loop: start every lookup that is due. */
  #pump(now: number): void {
    const r = this.#run;
    if (r === null || r.stopped) return;
    // Before any lookup of a new phase goes out, its state change is asked for (and awaited).
    if (r.phases !== null) {
      if (!r.held) this.#announcePhases(r, now);
      if (r.held) return;
    }
    let n = 0;
    while (r.scheduled < r.total && n < MAX_BURST) {
      const intended = r.t0 + r.scheduled * r.intervalMs;
      if (intended > now) break;
      r.scheduled++;
      n++;
      const plan = (r.workload as Workload).next();
      if (!this.#startLookup(plan, intended, now)) r.out.queries.overflow += plan.steps[0]?.length ?? 1;
      r.lastStart = now;
    }
    if (r.scheduled >= r.total) r.stopped = true;
    else this.#ticker.arm(r.t0 + r.scheduled * r.intervalMs, now);
  }

  /** Closed loop / list: start the next lookup now. Returns false when there is nothing more to start. */
  #startNext(now: number): boolean {
    const r = this.#run;
    if (r === null || r.stopped) return false;
    let plan: LookupPlan;
    if (r.spec.kind === 'list') {
      const p = r.list[r.listPos++];
      if (p === undefined) {
        r.stopped = true;
        return false;
      }
      plan = p;
    } else {
      if (now >= r.endAt) {
        r.stopped = true;
        return false;
      }
      plan = (r.workload as Workload).next();
    }
    r.scheduled++;
    r.lastStart = now;
    if (!this.#startLookup(plan, now, now)) {
      r.out.queries.overflow += plan.steps[0]?.length ?? 1;
      return false;
    }
    return true;
  }

  #startLookup(plan: LookupPlan, intended: number, now: number): boolean {
    const r = this.#run as RunState;
    if (this.#freeTop === 0) return false;
    const l = this.#free[--this.#freeTop] as number;
    this.#lPlan[l] = plan;
    this.#lStep[l] = 0;
    this.#lIntended[l] = intended;
    this.#lUnique[l] = plan.unique ? this.#opts.counter.next() : 0;
    this.#lFailed[l] = 0;
    this.#lSock[l] = this.#rr = (this.#rr + 1) % this.#routeSocks[0].length;
    if (r.phases !== null) {
      const cell = r.phases.tally.cell(phaseAt(r.phases.boundariesMs, intended - r.t0), plan.cls);
      this.#lCell[l] = cell;
      r.phases.tally.started(cell);
    }
    r.inflight++;
    r.out.lookups.started++;
    if (r.spec.kind === 'open') r.out.sendLag.recordValue(Math.max(0, Math.round((now - intended) * 1000)));
    this.#sendStep(l, now);
    return true;
  }

  #sendStep(l: number, now: number): void {
    const plan = this.#lPlan[l] as LookupPlan;
    const step = plan.steps[this.#lStep[l] as number] ?? [];
    this.#lPending[l] = step.length;
    for (let k = 0; k < step.length; k++) this.#sendQuery(l, 2 * l + k, step[k] as QueryTemplate, now);
  }

  #sendQuery(l: number, q: number, t: QueryTemplate, now: number): void {
    const r = this.#run as RunState;
    const pool = this.#routeSocks[t.zone];
    const s = pool[(this.#lSock[l] as number) % pool.length] as SockState;
    const id = this.#allocId(s, now);
    if (id < 0) {
      // 65536 ids in flight or tombstoned on this socket: the generator is overloaded.
      r.out.queries.overflow++;
      this.#lFailed[l] = 2;
      this.#queryDone(l, now);
      return;
    }
    const len = t.wire.length;
    let buf: Buffer;
    if (s.sock.getSendQueueCount() === 0 && len <= SLOT_BYTES) {
      // Sends completed synchronously so far: ring slots are free to reuse.
      buf = s.ring.subarray(s.ringPos * SLOT_BYTES, s.ringPos * SLOT_BYTES + len);
      s.ringPos = (s.ringPos + 1) % RING_SLOTS;
    } else {
      buf = Buffer.allocUnsafe(len);
    }
    t.wire.copy(buf, 0, 0, len);
    buf[0] = id >>> 8;
    buf[1] = id & 0xff;
    if (t.uniqueOffset >= 0) writeUnique(buf, t.uniqueOffset, this.#lUnique[l] as number);
    s.table[id] = q;
    this.#qTmpl[q] = t;
    this.#qSock[q] = s.idx;
    this.#qId[q] = id;
    this.#qSent[q] = now;
    const gen = ((this.#qGen[q] as number) + 1) | 0;
    this.#qGen[q] = gen;
    this.#pushDeadline(q, gen, now + this.#timeoutMs);
    r.out.queries.sent++;
    r.phases?.tally.sent(this.#lCell[l] as number);
    s.sock.send(buf);
  }

  #allocId(s: SockState, now: number): number {
    const table = s.table;
    for (let k = 0; k < 65536; k++) {
      const id = (s.nextId + k) & 0xffff;
      const v = table[id] as number;
      if (v === FREE || (v === TOMB && (s.tombUntil[id] as number) <= now)) {
        s.nextId = (id + 1) & 0xffff;
        return id;
      }
    }
    return -1;
  }

  // ---- answers and deadlines ---------------------------------------------------------------------

  #onMessage(sockIdx: number, msg: Buffer): void {
    const r = this.#run;
    if (r === null || msg.length < 12) return;
    const now = performance.now();
    const s = this.#socks[sockIdx] as SockState;
    const id = ((msg[0] as number) << 8) | (msg[1] as number);
    const q = s.table[id] as number;
    if (q < 0) {
      r.out.queries.late++;
      if (q === TOMB) {
        s.table[id] = FREE;
        const cell = s.tombCell[id] as number;
        if (r.phases !== null && cell >= 0) r.phases.tally.late(cell);
        s.tombCell[id] = -1;
      }
    } else {
      s.table[id] = FREE;
      const l = q >> 1;
      const t = this.#qTmpl[q] as QueryTemplate;
      this.#qTmpl[q] = null;
      r.out.queries.answered++;
      r.out.serviceLatency.recordValue(Math.max(0, Math.round((now - (this.#qSent[q] as number)) * 1000)));
      const v = checkResponse(msg, t, this.#lUnique[l] as number);
      if (r.phases !== null) {
        const tally = r.phases.tally;
        tally.answered(this.#lCell[l] as number, v, v === Verdict.OK && tally.wantsTtl ? answerTtl(msg, t.questionEnd) : -1);
      }
      if (v !== Verdict.OK) {
        r.out.queries.wrong++;
        const reason = VERDICT_NAMES[v] as WrongReason;
        r.out.wrongByReason[reason]++;
        if (r.out.wrongSamples.length < MAX_WRONG_SAMPLES) {
          r.out.wrongSamples.push(`${reason}: ${t.name} type ${t.qtype} rcode ${(msg[3] as number) & 15} (expected ${t.rcode})`);
        }
        this.#lFailed[l] = 1;
      }
      this.#queryDone(l, now);
    }
    if (r.spec.kind === 'open') this.#pump(now);
  }

  /** One query of lookup `l`'s current step is settled (answered, timed out or not sendable). */
  #queryDone(l: number, now: number): void {
    const pending = (this.#lPending[l] as number) - 1;
    this.#lPending[l] = pending;
    if (pending > 0) return;
    const r = this.#run as RunState;
    const plan = this.#lPlan[l] as LookupPlan;
    if (this.#lFailed[l] === 0) {
      const next = (this.#lStep[l] as number) + 1;
      if (next < plan.steps.length) {
        this.#lStep[l] = next;
        this.#sendStep(l, now);
        return;
      }
      const us = Math.max(0, Math.round((now - (this.#lIntended[l] as number)) * 1000));
      r.out.latency.recordValue(us);
      r.out.classLatency[plan.cls]?.recordValue(us);
      r.out.lookups.completed++;
      r.phases?.tally.completed(this.#lCell[l] as number, us);
    } else {
      r.out.lookups.failed++;
      r.phases?.tally.failed(this.#lCell[l] as number);
    }
    this.#lPlan[l] = null;
    this.#free[this.#freeTop++] = l;
    r.inflight--;
    if (r.spec.kind !== 'open') this.#startNext(now);
    this.#maybeFinish(now);
  }

  #pushDeadline(q: number, gen: number, at: number): void {
    if (this.#dlLen === this.#dlSlot.length) this.#growDeadlines();
    const cap = this.#dlSlot.length;
    const i = (this.#dlHead + this.#dlLen) & (cap - 1);
    this.#dlSlot[i] = q;
    this.#dlGen[i] = gen;
    this.#dlTime[i] = at;
    this.#dlLen++;
  }

  #growDeadlines(): void {
    const cap = this.#dlSlot.length;
    const ncap = Math.max(4096, cap * 2);
    const slot = new Int32Array(ncap);
    const gen = new Int32Array(ncap);
    const time = new Float64Array(ncap);
    for (let k = 0; k < this.#dlLen; k++) {
      const i = (this.#dlHead + k) & (cap - 1);
      slot[k] = this.#dlSlot[i] as number;
      gen[k] = this.#dlGen[i] as number;
      time[k] = this.#dlTime[i] as number;
    }
    this.#dlSlot = slot;
    this.#dlGen = gen;
    this.#dlTime = time;
    this.#dlHead = 0;
  }

  #sweep(now: number): void {
    const r = this.#run as RunState;
    const cap = this.#dlSlot.length;
    while (this.#dlLen > 0) {
      const i = this.#dlHead;
      if ((this.#dlTime[i] as number) > now) break;
      this.#dlHead = (i + 1) & (cap - 1);
      this.#dlLen--;
      const q = this.#dlSlot[i] as number;
      if (this.#qGen[q] !== this.#dlGen[i] || this.#qTmpl[q] === null) continue;
      // Still unanswered at its deadline.
      this.#qTmpl[q] = null;
      const s = this.#socks[this.#qSock[q] as number] as SockState;
      const id = this.#qId[q] as number;
      s.table[id] = TOMB;
      s.tombUntil[id] = now + 2 * this.#timeoutMs + 1000;
      r.out.queries.timeouts++;
      const l = q >> 1;
      if (r.phases !== null) {
        const cell = this.#lCell[l] as number;
        s.tombCell[id] = cell;
        r.phases.tally.timeout(cell);
      }
      this.#lFailed[l] = 2;
      this.#queryDone(l, now);
    }
  }

  #maybeFinish(now: number): void {
    const r = this.#run;
    if (r === null) return;
    if (r.spec.kind === 'closed' && now >= r.endAt) r.stopped = true;
    const drained = r.stopped && r.inflight === 0;
    const cut = r.stopped && now > Math.max(r.endAt === Number.POSITIVE_INFINITY ? 0 : r.endAt, r.lastStart) + this.#timeoutMs + DRAIN_GRACE_MS;
    if (!drained && !cut) return;
    if (r.timer !== null) clearInterval(r.timer);
    this.#ticker.disarm();
    r.detach();
    this.#run = null;
    if (!drained) this.#abandonInflight(r, now);
    const cpu = process.cpuUsage(r.cpu0);
    const o = r.out;
    o.aborted = r.aborted;
    o.wallMs = now - r.t0;
    const window = Math.max(r.lastStart - r.t0, 0) + (r.intervalMs > 0 ? r.intervalMs : 0);
    o.sendWindowMs = window;
    o.achievedLookupRate = window > 0 ? (o.lookups.started * 1000) / window : 0;
    o.generatorCpuMs = (cpu.user + cpu.system) / 1000;
    r.done(o);
  }

  /** Cut at the drain limit: whatever is still in flight counts as timed out, and every slot is released. */
  #abandonInflight(r: RunState, now: number): void {
    for (let q = 0; q < this.#qTmpl.length; q++) {
      if (this.#qTmpl[q] === null) continue;
      this.#qTmpl[q] = null;
      const s = this.#socks[this.#qSock[q] as number];
      const cell = this.#lCell[q >> 1] as number;
      if (s !== undefined) {
        s.table[this.#qId[q] as number] = TOMB;
        s.tombUntil[this.#qId[q] as number] = now + 2 * this.#timeoutMs + 1000;
        s.tombCell[this.#qId[q] as number] = r.phases === null ? -1 : cell;
      }
      r.out.queries.timeouts++;
      r.phases?.tally.timeout(cell);
    }
    for (let l = 0; l < this.#lPlan.length; l++) {
      if (this.#lPlan[l] === null) continue;
      this.#lPlan[l] = null;
      r.out.lookups.failed++;
      r.phases?.tally.failed(this.#lCell[l] as number);
    }
    this.#resetSlots();
  }

  #ensureCapacity(lookups: number): void {
    if (lookups <= this.#capacity) {
      this.#resetSlots();
      return;
    }
    this.#capacity = lookups;
    this.#lPlan = new Array<LookupPlan | null>(lookups).fill(null);
    this.#lStep = new Int32Array(lookups);
    this.#lPending = new Int32Array(lookups);
    this.#lIntended = new Float64Array(lookups);
    this.#lUnique = new Float64Array(lookups);
    this.#lFailed = new Uint8Array(lookups);
    this.#lSock = new Int32Array(lookups);
    this.#lCell = new Int32Array(lookups);
    this.#free = new Int32Array(lookups);
    this.#qTmpl = new Array<QueryTemplate | null>(2 * lookups).fill(null);
    this.#qSock = new Int32Array(2 * lookups);
    this.#qId = new Int32Array(2 * lookups);
    this.#qSent = new Float64Array(2 * lookups);
    this.#qGen = new Int32Array(2 * lookups);
    this.#resetSlots();
  }

  #resetSlots(): void {
    this.#freeTop = 0;
    for (let l = this.#capacity - 1; l >= 0; l--) this.#free[this.#freeTop++] = l;
    this.#dlHead = 0;
    this.#dlLen = 0;
  }
}
