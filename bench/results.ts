/**
 * The shape of results.json (schema `nodelocal-dns-bench/1`) and the
 * conversions from generator outcomes into it. Latencies are microseconds.
 */
import type { Histogram } from 'hdr-histogram-js';
import type { WrongReason } from './check.js';
import type { RunOutcome } from './loadgen.js';
import type { BenchOptions } from './options.js';
import type { Environment } from './proc-stats.js';
import type { TargetKind } from './targets.js';
import type { WorkloadName } from './workloads.js';
import type { ZoneConfig } from './sim/zones.js';

export const SCHEMA = 'nodelocal-dns-bench/1';

/** More than this share of timeouts (or wrong answers) means the target did not keep up. */
export const SATURATION_FAILURE_SHARE = 0.01;
/** Starting fewer lookups than this share of the schedule means the generator fell behind. */
export const GENERATOR_BEHIND_SHARE = 0.97;
/** Using this much of one core means the generator itself may be the bottleneck. */
export const GENERATOR_BUSY_CORES = 0.9;
/** Sends later than this (p99 of intended-to-actual) are flagged. */
export const SEND_LAG_WARN_US = 10_000;

export interface Percentiles {
  readonly count: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

export function percentiles(h: Histogram): Percentiles {
  if (h.totalCount === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
  // A percentile is reported as the top of its HDR bucket, which can exceed the exact maximum by the
  // bucket's width (0.1% here); no recorded value is above the maximum, so clamp to it.
  const max = h.maxValue;
  const at = (p: number): number => Math.min(h.getValueAtPercentile(p), max);
  return { count: h.totalCount, mean: Math.round(h.mean * 10) / 10, p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max };
}

export interface ProcessUsage {
  /** utime+stime of the process tree during the measured run. */
  readonly cpuSeconds: number | null;
  readonly cpuUsPerQuery: number | null;
  readonly cpuSecondsPer1kQueries: number | null;
  /** Resident set right after the run, and the peak so far. */
  readonly rssBytes: number | null;
  readonly peakRssBytes: number | null;
}

export interface UpstreamCount {
  readonly cluster: number;
  readonly external: number;
}

export interface DnsperfStats {
  readonly queriesSent: number;
  readonly queriesCompleted: number;
  readonly queriesLost: number;
  readonly qps: number;
  readonly avgLatencyUs: number;
  readonly minLatencyUs: number;
  readonly maxLatencyUs: number;
  readonly stddevUs: number | null;
  readonly rcodes: Record<string, number>;
  /** dnsperf's "Run time (s)": how long it ran, a little past its -l limit (null: not printed). */
  readonly runTimeS: number | null;
  /** Why it stopped, as it said: "time limit", "end of file" (-n 1), "interruption"; null: not said. */
  readonly ended: string | null;
  readonly command: string;
}

export interface PhaseQueries {
  readonly sent: number;
  /** ok + servfail + wrong. */
  readonly answered: number;
  /** Right answers (the checker's verdict). */
  readonly ok: number;
  /** SERVFAIL where the zone has an answer: the target gave up. */
  readonly servfail: number;
  /** Any other wrong answer (wrong rcode, data, question...). */
  readonly wrong: number;
  /** No answer within the client timeout. */
  readonly timeouts: number;
  /** Answers that came after the client timeout (the client had given up). */
  readonly late: number;
}

export interface PhaseClassRecord {
  readonly lookups: { readonly started: number; readonly completed: number; readonly failed: number };
  readonly queries: PhaseQueries;
  /** Right answers with a TTL at most the agent's --local-ttl: answered from its view (null: not counted). */
  readonly fromView: number | null;
  /** Completed lookups, from the intended start. */
  readonly latencyUs: Percentiles;
}

/** One phase of a fallback run: kube-dns up or down for a while. */
export interface PhaseRecord extends PhaseClassRecord {
  readonly index: number;
  readonly state: 'up' | 'down';
  readonly startS: number;
  readonly durationS: number;
  readonly classes: Record<string, PhaseClassRecord>;
  /** What the simulated kube-dns received and answered during the phase (from one state change to the next). */
  readonly upstream: { readonly clusterQueries: number; readonly clusterAnswered: number; readonly clusterDropped: number } | null;
  /** How long after the phase's scheduled start the simulator had changed state (null for the first phase). */
  readonly changeLagMs: number | null;
}

export interface FallbackRecord {
  /** 'stop': kube-dns not listening (connections refused); 'blackhole': listening, answering nothing. */
  readonly outage: 'stop' | 'blackhole';
  readonly phasesS: readonly number[];
  readonly clientTimeoutMs: number;
  /** Share of lookups of never-asked names (cold). */
  readonly coldShare: number;
  /** Distinct never-asked names available, and how many lookups needed one; past the pool they repeat (then they may be cache hits). */
  readonly coldPool: number;
  readonly coldLookups: number;
  /** The TTL at or under which a right answer counts as from the view (the agent's --local-ttl), or null. */
  readonly viewTtlMax: number | null;
  readonly phases: readonly PhaseRecord[];
}

export interface RunRecord {
  readonly target: string;
  readonly targetKind: TargetKind;
  readonly workload: WorkloadName;
  readonly mode: 'open' | 'closed';
  readonly driver: 'node' | 'dnsperf';
  readonly offeredQps: number | null;
  readonly offeredLookupRate: number | null;
  readonly concurrency: number | null;
  readonly durationS: number;
  readonly wallS: number;
  readonly lookups: { readonly started: number; readonly completed: number; readonly failed: number };
  readonly queries: RunOutcome['queries'];
  /** Answers were checked against the simulator's zones (false for dnsperf runs: only their rcodes are). */
  readonly checked: boolean;
  readonly wrongByReason: Record<WrongReason, number>;
  readonly wrongSamples: readonly string[];
  /** Queries sent per second over the send window. */
  readonly sentQps: number;
  /** Answered queries per second over the run. */
  readonly throughputQps: number;
  readonly achievedLookupRate: number;
  /** Per lookup: from the intended start (open loop) or the actual start (closed loop). Null for dnsperf. */
  readonly latencyUs: Percentiles | null;
  /** Per query, from its actual send. */
  readonly serviceLatencyUs: Percentiles | null;
  /** Open loop: how late lookups started against the schedule. */
  readonly sendLagUs: Percentiles | null;
  readonly classes: Record<string, Percentiles>;
  readonly queriesPerLookup: number;
  /** Queries that reached the simulator during the run (what the cache did not absorb). */
  readonly upstreamQueries: UpstreamCount | null;
  readonly targetUsage: ProcessUsage;
  readonly simulatorCpuSeconds: number | null;
  readonly generator: { readonly cpuSeconds: number; readonly cores: number };
  readonly saturated: boolean;
  readonly generatorBound: boolean;
  readonly warnings: readonly string[];
  readonly warmup: { readonly lookups: number; readonly wrong: number; readonly timeouts: number } | null;
  readonly dnsperf: DnsperfStats | null;
  /** The fallback workload's phases (null for every other workload). */
  readonly fallback: FallbackRecord | null;
}

export interface TargetRecord {
  readonly name: string;
  readonly kind: TargetKind;
  readonly address: string;
  readonly pid: number | null;
  readonly command: string | null;
  readonly logFile: string | null;
  readonly pinnedTo: string | null;
  readonly peakRssBytes: number | null;
}

export interface SimulatorRecord {
  readonly pid: number;
  readonly cluster: string;
  readonly external: string;
  /** The fake Kubernetes API server the agents watch (null when no agent was started). */
  readonly api: string | null;
  readonly pinnedTo: string | null;
  readonly zones: ZoneConfig;
  readonly clusterFaults: { readonly latencyMs: number; readonly jitterMs: number; readonly lossRate: number };
  readonly externalFaults: { readonly latencyMs: number; readonly jitterMs: number; readonly lossRate: number };
}

export interface BenchResults {
  readonly schema: typeof SCHEMA;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly aborted: boolean;
  readonly quick: boolean;
  readonly command: { readonly argv: readonly string[]; readonly line: string; readonly cwd: string };
  readonly environment: Environment;
  readonly generator: { readonly pid: number; readonly pinnedTo: string | null; readonly sockets: number; readonly timeoutMs: number };
  readonly options: BenchOptions;
  readonly simulator: SimulatorRecord;
  readonly targets: readonly TargetRecord[];
  readonly runs: readonly RunRecord[];
  readonly warnings: readonly string[];
}
