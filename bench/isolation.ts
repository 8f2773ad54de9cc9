/**
 * `npm run isolation -- [options]`: misses cannot slow hits (issue 16).
 *
 * Cached answers at a fixed rate, their latency measured one by one, with
 * and without a miss flood that saturates the agent's main thread, in one
 * run, for each UDP backend. Pinned per thread, on CPUs 0 and 1:
 *
 * - CPU 1: the batched backend's worker thread (udp-worker-0), alone;
 * - CPU 0: every other thread of the agent (the main thread, which forwards
 *   misses, and V8's and libuv's), the upstream simulator (cluster-zone
 *   misses over TCP, external ones over UDP), dnsperf sending the flood,
 *   this process, and the hit probe at real-time priority (chrt -f 50) so
 *   its own wait behind the flood does not count as the agent's latency.
 *
 * With `--io dgram` (the contrast) the main thread answers hits too, so they
 * queue behind the misses. The main thread's share of CPU 0 (utime, stime,
 * and "busy": running or runnable, from schedstat) shows it was saturated.
 *
 * Where a batched hit waited, per phase: the hit thread's wait for its CPU
 * (schedstat: runnable, not running) and the kernel queue wait of every
 * datagram its worker read (nodelocal_udp_queue_wait_seconds, from the
 * datagrams' receive timestamps), next to the probe's round trips. On a
 * machine shared with other work, CPU 1 is not the worker's alone: beside
 * the flood the worker needs several times the CPU it needs for the hits
 * alone, and the hits' p99 follows how long it waited for CPU 1 (measured:
 * README). `--worker-rt-priority N` (a diagnostic, off by default) runs the
 * worker at SCHED_FIFO N, so it has CPU 1 whenever it wants it, as on a core
 * of its own: the figures then are the agent's, not the neighbours'. The
 * report says which was used. NODELOCAL_RX_TRACE and HIT_PROBE_TRACE in the
 * environment (src/server/batched/rx-trace.ts, hit-probe.ts) record each
 * query's times for bench/rx-trace-join.ts.
 *
 * Know what the default placement measures: V8's platform threads serve
 * both isolates, and they are on CPU 0 with the flood. The worker's garbage
 * collections wait for their helper jobs there (DefaultJobHandle::Join), and
 * its mmap/munmap wait for the address-space lock the main thread holds
 * there: measured with `perf record -e sched:sched_switch -g` on CPU 1, the
 * worker (at SCHED_FIFO, never waiting for its CPU) slept ~0.5 s of an 8 s
 * flooded window in futex and mmap_lock waits, up to 21 ms at a time, while
 * the flood's datagrams queued ahead of the hits. That is part of what the
 * flooded p99 shows; `--others-cpu 0-1` lets those threads run on either
 * CPU, as an unpinned pod's would.
 *
 * `npm run isolation -- scaling`: saturating hit throughput and agent CPU
 * per hit with --workers 1 and 2 (see scaling.ts).
 *
 * Loopback only; the simulator is the only upstream. Prints a table and
 * (with --json FILE) writes the report.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProbeResult } from './hit-probe.js';
import { scrapeLines } from './agent-proc.js';
import { EXIT_INTERRUPTED, handleInterrupts } from './interrupt.js';
import { runDnsperfRate, runProbe, running, type AgentRun, type DnsperfRun, type ProbeSpawn, startBenchAgent, startSim, stopStarted, udpDrops, writeMissFile } from './isolation-stack.js';
import { pinProcess, treeCpuSeconds, which } from './proc-stats.js';
import { runScaling, formatScaling, type BenchMachine, type ScalingOptions } from './scaling.js';
import type { SimProcess } from './sim/control.js';
import { repoRoot } from './repo-root.js';
import { isLoopback } from './targets.js';
import { findWorkerThreads, pinThread, threadStat, threadUse, threadsOf, type ThreadStat, type ThreadUse } from './threads.js';

export type Backend = 'batched' | 'dgram';

export interface IsolationOptions {
  readonly host: string;
  readonly backends: readonly Backend[];
  /** Probe window per phase, seconds. */
  readonly seconds: number;
  /** Hits per second the probe sends. */
  readonly rate: number;
  /** Distinct cached names the probe asks (round robin). */
  readonly names: number;
  /** Misses per second dnsperf offers (open loop). */
  readonly floodQps: number;
  readonly floodMix: 'cluster' | 'external' | 'both';
  /** Flood running before the probe starts, seconds. */
  readonly floodRampS: number;
  /** SCHED_FIFO priority of the probe; 0: none. */
  readonly rtPriority: number;
  /** SCHED_FIFO priority of the batched worker thread (a diagnostic: a CPU of its own, in effect); 0: none, the default. */
  readonly workerRtPriority: number;
  readonly mainCpu: string;
  readonly workerCpu: string;
  /** CPUs of the agent's other threads (V8's and libuv's helpers); null: the main thread's. */
  readonly othersCpu: string | null;
  readonly agentPath: string;
  /** More agent flags (--agent-arg, repeatable), after the bench's own. */
  readonly agentArgs: readonly string[];
  /** Flags for node before the agent's path (--agent-node-arg, repeatable): V8's GC flags, for one. */
  readonly nodeArgs: readonly string[];
  readonly readyTimeoutMs: number;
}

export const ISOLATION_DEFAULTS: Omit<IsolationOptions, 'agentPath'> = {
  host: '127.0.0.1',
  backends: ['batched', 'dgram'],
  seconds: 10,
  rate: 2000,
  names: 1000,
  floodQps: 30_000,
  floodMix: 'both',
  floodRampS: 1,
  rtPriority: 50,
  workerRtPriority: 0,
  mainCpu: '0',
  workerCpu: '1',
  othersCpu: null,
  agentArgs: [],
  nodeArgs: [],
  readyTimeoutMs: 60_000,
};

/** Where each thread of the agent ended up (Cpus_allowed_list after pinning). */
export interface Placement {
  readonly mainTid: number;
  readonly mainCpus: string;
  readonly workers: ReadonlyArray<{ readonly tid: number; readonly name: string; readonly cpus: string }>;
  /** Cpus_allowed_list of the other threads, distinct values. */
  readonly otherCpus: readonly string[];
  readonly threads: number;
}

export interface Phase {
  readonly probe: ProbeResult;
  readonly wallS: number;
  readonly main: ThreadUse;
  /** The thread that answers hits: udp-worker-0 (batched) or the main thread (dgram). */
  readonly serving: ThreadUse;
  /** Share of the window the serving thread was runnable but not running (schedstat): waiting for its CPU. */
  readonly servingWaited: number;
  /** Kernel queue wait of the datagrams the workers read in the window (batched; null: no timestamps or no scrape): quantiles, us. */
  readonly queueWait: { readonly count: number; readonly p50Us: number; readonly p99Us: number; readonly p999Us: number } | null;
  /** Every thread of the agent, in CPUs (1 = one CPU). */
  readonly agentCpu: number;
  readonly simCpu: number;
  /** Datagrams the kernel dropped at the agent's UDP sockets (queue full), over the phase. */
  readonly socketDrops: number;
  /** Misses the agent answered at once without forwarding (its in-flight limits), over the phase; null if the scrape failed. */
  readonly refusedMisses: number | null;
  /** Upstream exchanges that failed over the phase, by reason (timeout, network, overloaded, closed, servfail): SERVFAILs the flood got. */
  readonly upstreamFailures: Readonly<Record<string, number>>;
  /** How the agent dealt with what it could not answer from a worker's read (DIAGNOSTIC_SERIES), increase over the phase by series. */
  readonly diagnostics: Readonly<Record<string, number>>;
  /** dnsperf's account of the flood (null: no flood). */
  readonly flood: (DnsperfRun & { readonly offeredQps: number; readonly noerrorQps: number }) | null;
}

export interface BackendRun {
  readonly backend: Backend;
  readonly workers: number;
  readonly placement: Placement;
  readonly warm: { readonly names: number; readonly answered: number; readonly wrong: number };
  readonly alone: Phase;
  readonly flooded: Phase;
}

export interface IsolationReport {
  readonly kind: 'isolation';
  readonly startedAt: string;
  readonly machine: BenchMachine;
  readonly options: Omit<IsolationOptions, 'agentPath'>;
  readonly probeRealtime: boolean;
  readonly notes: readonly string[];
  readonly runs: readonly BackendRun[];
}

function selfCpus(): string {
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? `0-${os.cpus().length - 1}`;
}

function mustStat(pid: number, tid: number): ThreadStat {
  const s = threadStat(pid, tid);
  if (s === null) throw new Error(`thread ${tid} of ${pid} is gone (did the agent crash?)`);
  return s;
}

/**
 * Misses answered at once without an upstream query: past a worker's limit
 * waiting on the main thread, and past the in-flight caps (--max-concurrent
 * is the to="all" series; per-upstream caps have their own): every series
 * summed, each refusal is counted by one cap only. Null if the scrape failed.
 */
const REFUSALS = ['nodelocal_worker_misses_refused_total', 'coredns_forward_max_concurrent_rejects_total'];

/** Series whose increase over a phase says where hits and misses went when a worker could not answer them itself. */
const DIAGNOSTIC_SERIES = [
  'nodelocal_cache_reads_given_up_total', 'nodelocal_worker_misses_refused_total', 'nodelocal_shared_cache_hits_total',
  'coredns_forward_max_concurrent_rejects_total', 'coredns_cache_evictions_total',
];

async function diagnosticCounters(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const name of DIAGNOSTIC_SERIES) {
    for (const line of await scrapeLines(url, name)) {
      const m = /^(\S+) ([0-9.e+-]+)$/.exec(line);
      if (m !== null) out.set(m[1]!, Number(m[2]));
    }
  }
  return out;
}

async function refused(url: string): Promise<number | null> {
  let sum = 0;
  let seen = false;
  for (const name of REFUSALS) {
    for (const line of await scrapeLines(url, name)) {
      const v = Number(/ ([0-9.e+-]+)$/.exec(line)?.[1]);
      if (!Number.isFinite(v)) continue;
      sum += v;
      seen = true;
    }
  }
  return seen ? sum : null;
}

/**
 * A counter once it stops moving (two equal readings 500 ms apart, 10 s at
 * most): a flooded main thread is still working through queued misses, and
 * counts them, after the flood has stopped.
 */
async function settled(read: () => Promise<number | null>, signal: AbortSignal): Promise<number | null> {
  let last = await read();
  for (let i = 0; i < 20 && !signal.aborted; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const now = await read();
    if (now === last) return now;
    last = now;
  }
  return last;
}

/** nodelocal_udp_queue_wait_seconds buckets now: upper bound (s, Infinity for +Inf) -> cumulative count. */
async function queueWaitBuckets(url: string): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const line of await scrapeLines(url, 'nodelocal_udp_queue_wait_seconds_bucket{')) {
    const m = /le="([^"]+)"[^}]*\} ([0-9.e+-]+)/.exec(line);
    if (m !== null) out.set(m[1] === '+Inf' ? Infinity : Number(m[1]), (out.get(m[1] === '+Inf' ? Infinity : Number(m[1])) ?? 0) + Number(m[2]));
  }
  return out;
}

/** Quantiles of the datagrams observed between two bucket readings: the bucket's upper bound (us) where each falls. */
function queueWaitBetween(a: Map<number, number>, b: Map<number, number>): Phase['queueWait'] {
  const bounds = [...b.keys()].sort((x, y) => x - y);
  const total = (b.get(Infinity) ?? 0) - (a.get(Infinity) ?? 0);
  if (bounds.length === 0 || total <= 0) return null;
  const q = (p: number): number => {
    for (const le of bounds) if ((b.get(le) ?? 0) - (a.get(le) ?? 0) >= p * total) return le * 1e6;
    return Infinity;
  };
  return { count: total, p50Us: q(0.5), p99Us: q(0.99), p999Us: q(0.999) };
}

/** nodelocal_upstream_failures_total per reason, now. */
async function upstreamFailures(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of await scrapeLines(url, 'nodelocal_upstream_failures_total{')) {
    const m = /reason="([^"]+)"[^}]*\} ([0-9.e+-]+)/.exec(line);
    if (m !== null) out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return out;
}

function placementOf(pid: number, workerTids: readonly number[]): Placement {
  const threads = threadsOf(pid);
  const others = new Set<string>();
  for (const t of threads) if (t.tid !== pid && !workerTids.includes(t.tid)) others.add(threadStat(pid, t.tid)?.cpus ?? '?');
  return {
    mainTid: pid,
    mainCpus: mustStat(pid, pid).cpus,
    workers: workerTids.map((tid) => ({ tid, name: threads.find((t) => t.tid === tid)?.name ?? '?', cpus: mustStat(pid, tid).cpus })),
    otherCpus: [...others].sort(),
    threads: threads.length,
  };
}

interface PhaseContext {
  readonly o: IsolationOptions;
  readonly agent: AgentRun;
  readonly sim: SimProcess;
  readonly servingTid: number;
  readonly missFile: string;
  readonly floodLimitS: number;
  /** The probe's spawn, with the run's abort signal. */
  readonly probeBase: ProbeSpawn & { readonly signal: AbortSignal };
}

/**
 * One probe window, alone or beside the flood. The flood starts --flood-ramp
 * seconds before the probe and is interrupted when the probe is done, so it
 * covers the probe's start-up, window and answer grace whatever they take.
 */
async function measurePhase(c: PhaseContext, flood: boolean): Promise<Phase> {
  const { o, agent, sim } = c;
  const drops0 = udpDrops(agent.port);
  const refused0 = await refused(agent.metricsUrl);
  const failed0 = await upstreamFailures(agent.metricsUrl);
  const diag0 = await diagnosticCounters(agent.metricsUrl);
  let waits0 = new Map<number, number>();
  let probeDone = (): void => {};
  const stopOn = new Promise<void>((resolve) => (probeDone = resolve));
  const floodRun = flood
    ? runDnsperfRate({ host: o.host, port: agent.port, dataFile: c.missFile, seconds: c.floodLimitS, outstanding: 10_000, qps: o.floodQps, cpu: o.mainCpu, stopOn, signal: c.probeBase.signal })
    : null;
  // A failed flood must not leave an unhandled rejection while the probe runs.
  floodRun?.catch(() => {});
  try {
    if (flood) await new Promise((r) => setTimeout(r, o.floodRampS * 1000));
    const m0 = mustStat(agent.pid, agent.pid);
    const s0 = mustStat(agent.pid, c.servingTid);
    const a0 = treeCpuSeconds(agent.pid) ?? NaN;
    const sim0 = treeCpuSeconds(sim.pid) ?? NaN;
    waits0 = await queueWaitBuckets(agent.metricsUrl);
    const t0 = performance.now();
    const probe = await runProbe({ ...c.probeBase, mode: 'probe', rate: o.rate, seconds: o.seconds });
    const wallS = (performance.now() - t0) / 1000;
    const m1 = mustStat(agent.pid, agent.pid);
    const s1 = mustStat(agent.pid, c.servingTid);
    const agentCpu = ((treeCpuSeconds(agent.pid) ?? NaN) - a0) / wallS;
    const simCpu = ((treeCpuSeconds(sim.pid) ?? NaN) - sim0) / wallS;
    // Includes the flood's datagrams read in the window (the hits are a tenth of them beside the flood).
    const queueWait = queueWaitBetween(waits0, await queueWaitBuckets(agent.metricsUrl));
    probeDone();
    const fr = floodRun === null ? null : await floodRun;
    const refused1 = await settled(() => refused(agent.metricsUrl), c.probeBase.signal);
    c.probeBase.signal.throwIfAborted();
    const failed1 = await upstreamFailures(agent.metricsUrl);
    const failures: Record<string, number> = {};
    for (const [k, v] of failed1) if (v - (failed0.get(k) ?? 0) > 0) failures[k] = v - (failed0.get(k) ?? 0);
    const diagnostics: Record<string, number> = {};
    for (const [k, v] of await diagnosticCounters(agent.metricsUrl)) if (v - (diag0.get(k) ?? 0) > 0) diagnostics[k] = v - (diag0.get(k) ?? 0);
    return {
      upstreamFailures: failures,
      diagnostics,
      probe, wallS, agentCpu, simCpu,
      socketDrops: udpDrops(agent.port) - drops0,
      refusedMisses: refused0 === null || refused1 === null ? null : refused1 - refused0,
      main: threadUse(m0, m1, wallS),
      serving: threadUse(s0, s1, wallS),
      servingWaited: (s1.wait - s0.wait) / wallS,
      queueWait,
      flood: fr === null ? null : { ...fr, offeredQps: o.floodQps, noerrorQps: (fr.rcodes['NOERROR'] ?? 0) / fr.runTimeS },
    };
  } finally {
    probeDone();
  }
}

/** `signal` stops the run: the probe and dnsperf are killed, what was started is stopped, and it rejects. */
export async function runIsolation(o: IsolationOptions, log: (line: string) => void, signal: AbortSignal = new AbortController().signal): Promise<IsolationReport> {
  if (!isLoopback(o.host)) throw new Error(`--host ${o.host}: loopback only`);
  if (!existsSync(o.agentPath)) throw new Error(`the agent is not built: ${o.agentPath} (npm run build)`);
  if (which('dnsperf') === null) throw new Error('dnsperf is not installed (apt-get install dnsperf): it sends the miss flood');
  if (which('taskset') === null) throw new Error('taskset is not installed (util-linux): the bench pins threads');
  const notes: string[] = [];
  const realtime = o.rtPriority > 0 && which('chrt') !== null;
  if (o.rtPriority > 0 && !realtime) notes.push('chrt not found: the probe runs at normal priority, its own wait behind the flood counts in its latencies');
  const startedAt = new Date().toISOString();
  const loadBefore = os.loadavg();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nldns-isolation-'));
  const missFile = path.join(dir, 'misses.txt');
  // The flood runs until the probe is done (dnsperf interrupted then); this only bounds it.
  const floodLimitS = o.floodRampS + o.seconds + 120;
  // Enough unique names that dnsperf never wraps around to names it asked (those would be hits): ramp, probe start-up, window, answer grace.
  const floodS = o.floodRampS + o.seconds + 5;
  const missLines = Math.min(3_000_000, Math.ceil(o.floodQps * floodS * 1.1) + 1000);
  if (missLines < o.floodQps * floodS) notes.push(`the flood's ${missLines} names may repeat within ${floodS} s (repeats are hits)`);
  writeMissFile(missFile, missLines, o.floodMix);

  const ownCpus = selfCpus();
  const runs: BackendRun[] = [];
  // Started unpinned (its start-up is not measured, and a busy CPU 0 could make it slow), then pinned with us.
  const sim = await startSim(o.host);
  try {
    pinProcess(process.pid, o.mainCpu);
    pinProcess(sim.pid, o.mainCpu);
    for (const backend of o.backends) {
      signal.throwIfAborted();
      const workers = backend === 'batched' ? 1 : 0;
      const agent = await startBenchAgent({ agentPath: o.agentPath, sim, host: o.host, io: backend, workers, workDir: dir, name: backend, readyTimeoutMs: o.readyTimeoutMs, agentArgs: o.agentArgs, nodeArgs: o.nodeArgs });
      try {
        // Every thread to --others-cpu (default the main CPU; threads made later inherit it), the main thread to the main CPU, the worker alone on its own.
        const found = backend === 'batched' ? await findWorkerThreads(agent.pid, workers, 10_000) : [];
        pinProcess(agent.pid, o.othersCpu ?? o.mainCpu);
        pinThread(agent.pid, o.mainCpu);
        for (const w of found) pinThread(w.tid, o.workerCpu);
        if (o.workerRtPriority > 0) for (const w of found) realtimeThread(w.tid, o.workerRtPriority);
        const placement = placementOf(agent.pid, found.map((w) => w.tid));
        log(`${backend}: pid ${agent.pid}, ${placement.threads} threads; main thread on CPU ${placement.mainCpus}` +
          (found.length > 0 ? `, ${placement.workers.map((w) => `${w.name} (tid ${w.tid}) on CPU ${w.cpus}`).join(', ')}` : '') +
          `, the rest on CPU ${placement.otherCpus.join('/')}`);
        signal.throwIfAborted();
        const probeBase = { host: o.host, port: agent.port, names: o.names, cpu: o.mainCpu, rtPriority: o.rtPriority, signal };
        const warm = await runProbe({ ...probeBase, rtPriority: 0, mode: 'warm' });
        if (warm.answered < warm.names || warm.wrong > 0) notes.push(`${backend}: warm-up answered ${warm.answered} of ${warm.names} names, ${warm.wrong} of them wrong`);
        // Untimed pass: JIT and the probe path warm (skipped by sub-second runs: the test's).
        if (o.seconds >= 1) await runProbe({ ...probeBase, mode: 'probe', rate: o.rate, seconds: Math.min(2, o.seconds) });
        const servingTid = found[0]?.tid ?? agent.pid;
        const ctx: PhaseContext = { o, agent, sim, servingTid, missFile, floodLimitS, probeBase };
        const alone = await measurePhase(ctx, false);
        const flooded = await measurePhase(ctx, true);
        if (!agent.target.alive()) throw new Error(`${backend}: the agent exited during the run (log ${agent.target.logFile ?? '-'})`);
        runs.push({ backend, workers, placement, warm, alone, flooded });
        log(formatRun(runs[runs.length - 1]!));
      } finally {
        await stopStarted(agent.target);
      }
    }
  } finally {
    await stopStarted(sim);
    pinProcess(process.pid, ownCpus);
    // The name list is big and of no use afterwards; the agents' logs stay in the folder.
    rmSync(missFile, { force: true });
  }
  const { agentPath: _agentPath, ...options } = o;
  return {
    kind: 'isolation', startedAt,
    machine: { cores: os.cpus().length, loadBefore, loadAfter: os.loadavg(), cpuModel: os.cpus()[0]?.model ?? '?' },
    options, probeRealtime: realtime, notes, runs,
  };
}

/** SCHED_FIFO for one thread (chrt -p): --worker-rt-priority. */
function realtimeThread(tid: number, priority: number): void {
  execFileSync('chrt', ['-f', '-p', String(priority), String(tid)], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 });
}

const us = (x: number): string => (Number.isFinite(x) ? (x >= 10_000 ? `${(x / 1000).toFixed(1)} ms` : `${Math.round(x)} us`) : '-');
const pc = (x: number): string => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '-');

function phaseRow(backend: string, load: string, p: Phase): string {
  const f = p.flood;
  const hitThread = backend === 'dgram' ? `(main) ${p.serving.preempted}` : `${pc(p.serving.user)} / ${pc(p.serving.system)} / ${pc(p.serving.busy)}, ${p.serving.preempted}`;
  return `| ${backend} | ${load} | ${p.probe.answered}/${p.probe.sent} | ${us(p.probe.p50Us)} | ${us(p.probe.p99Us)} | ${us(p.probe.p999Us)} | ${us(p.probe.maxUs)} | ` +
    `${pc(p.main.user)} / ${pc(p.main.system)} / ${pc(p.main.busy)} | ${hitThread} | ${pc(p.agentCpu)} | ${pc(p.simCpu)} | ` +
    `${f === null ? '-' : `${Math.round(f.offeredQps)} / ${Math.round(f.qps)} / ${Math.round(f.noerrorQps)}`} | ${p.refusedMisses ?? '-'} | ${p.socketDrops} |`;
}

function formatRun(r: BackendRun): string {
  return `${phaseRow(r.backend, 'hits alone', r.alone)}\n${phaseRow(r.backend, 'hits + miss flood', r.flooded)}`;
}

export const TABLE_HEAD =
  '| backend | load | hits answered/sent | p50 | p99 | p99.9 | max | main thread user / sys / busy | hit thread user / sys / busy, preempted | agent CPU | simulator CPU | misses offered / answered / NOERROR per s | misses refused | kernel drops at the agent |\n' +
  '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|';

export function formatIsolation(rep: IsolationReport): string {
  const o = rep.options;
  const lines = [
    `hits: ${o.rate}/s over ${o.names} cached names, ${o.seconds} s per phase, probe on CPU ${o.mainCpu}${rep.probeRealtime ? ` at SCHED_FIFO ${o.rtPriority}` : ' (not real-time)'}; ` +
      `flood: dnsperf open loop ${o.floodQps} misses/s (${o.floodMix}) on CPU ${o.mainCpu}; main thread and simulator on CPU ${o.mainCpu}; batched worker on CPU ${o.workerCpu}`,
    `machine: ${rep.machine.cores} CPUs, load average ${rep.machine.loadBefore.map((x) => x.toFixed(2)).join(' ')} before, ${rep.machine.loadAfter.map((x) => x.toFixed(2)).join(' ')} after`,
    '',
    TABLE_HEAD,
    ...rep.runs.map(formatRun),
  ];
  for (const r of rep.runs) {
    lines.push(`${r.backend}: main thread tid ${r.placement.mainTid} on CPU ${r.placement.mainCpus}; ` +
      (r.placement.workers.map((w) => `${w.name} tid ${w.tid} on CPU ${w.cpus}`).join(', ') || 'no worker threads') + `; other threads on CPU ${r.placement.otherCpus.join('/')}`);
  }
  for (const r of rep.runs) {
    const f = r.flooded.flood;
    const fails = Object.entries(r.flooded.upstreamFailures).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
    if (f !== null) lines.push(`${r.backend}: flood answers by rcode ${Object.entries(f.rcodes).map(([k, v]) => `${k} ${v}`).join(', ')}; upstream failures ${fails}; sent ${f.queriesSent}, lost ${f.queriesLost}; ran ${f.runTimeS.toFixed(1)} s, dnsperf used ${pc(f.cpuS / f.runTimeS)} of a CPU (${f.command})`);
    lines.push(`${r.backend}: the probe's own send lag p99 ${us(r.alone.probe.sendLagP99Us)} alone, ${us(r.flooded.probe.sendLagP99Us)} beside the flood`);
    lines.push(`${r.backend}: the hit thread waited for its CPU ${pc(r.alone.servingWaited)} of the window alone, ${pc(r.flooded.servingWaited)} beside the flood` +
      (o.workerRtPriority > 0 && r.backend === 'batched' ? ` (worker at SCHED_FIFO ${o.workerRtPriority})` : ''));
    const qw = (p: Phase): string => (p.queueWait === null ? '-' : `p50 <= ${us(p.queueWait.p50Us)}, p99 <= ${us(p.queueWait.p99Us)}, p99.9 <= ${us(p.queueWait.p999Us)} of ${p.queueWait.count}`);
    if (r.backend === 'batched') lines.push(`${r.backend}: kernel queue wait of the datagrams read (bucket bounds): alone ${qw(r.alone)}; beside the flood ${qw(r.flooded)}`);
  }
  for (const n of rep.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}

// ---------------------------------------------------------------- command line

function usage(): string {
  return [
    'npm run isolation -- [--seconds 10] [--rate 2000] [--names 1000] [--flood-qps 30000] [--flood both|cluster|external]',
    '                     [--backends batched,dgram] [--rt-priority 50] [--worker-rt-priority 0] [--main-cpu 0] [--worker-cpu 1] [--others-cpu LIST] [--host 127.0.0.1] [--json FILE]',
    '                     [--agent-arg ARG]... [--agent-node-arg ARG]...   (agent flags after the bench\'s own; node/V8 flags before the agent\'s path, e.g. --single-threaded-gc)',
    '                     [--agent dist/src/main.js] [--autogroup-nice -20]   (both modes; a machine shared with other sessions; run under setsid: the whole session\'s group changes)',
    'npm run isolation -- scaling [--workers 1,2] [--rounds 2] [--seconds 10] [--outstanding 500] [--names 1000] [--json FILE]',
  ].join('\n');
}

function parseArgs(argv: readonly string[]): { mode: 'isolation' | 'scaling'; iso: IsolationOptions; scaling: ScalingOptions; json: string | null; autogroupNice: number | null } {
  const agentPath = path.join(repoRoot(), 'dist', 'src', 'main.js');
  const iso: { -readonly [K in keyof IsolationOptions]: IsolationOptions[K] } = { ...ISOLATION_DEFAULTS, agentPath };
  const sc: { -readonly [K in keyof ScalingOptions]: ScalingOptions[K] } = { host: iso.host, workers: [1, 2], rounds: 2, seconds: 10, outstanding: 500, names: 1000, agentPath, readyTimeoutMs: 60_000 };
  let mode: 'isolation' | 'scaling' = 'isolation';
  let json: string | null = null;
  let autogroupNice: number | null = null;
  let i = 0;
  if (argv[0] === 'scaling') {
    mode = 'scaling';
    i = 1;
  }
  const num = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < 0) throw new Error(`${flag}: expected a number, got ${String(v)}\n${usage()}`);
    return n;
  };
  for (; i < argv.length; i++) {
    const flag = argv[i]!;
    const v = argv[i + 1];
    i++;
    switch (flag) {
      case '--seconds': iso.seconds = sc.seconds = num(flag, v); break;
      case '--rate': iso.rate = num(flag, v); break;
      case '--names': iso.names = sc.names = num(flag, v); break;
      case '--flood-qps': iso.floodQps = num(flag, v); break;
      case '--flood':
        if (v !== 'both' && v !== 'cluster' && v !== 'external') throw new Error(`--flood: both, cluster or external\n${usage()}`);
        iso.floodMix = v;
        break;
      case '--backends': {
        const list = String(v).split(',');
        if (list.some((b) => b !== 'batched' && b !== 'dgram')) throw new Error(`--backends: batched and/or dgram\n${usage()}`);
        iso.backends = list as Backend[];
        break;
      }
      case '--rt-priority': iso.rtPriority = num(flag, v); break;
      case '--worker-rt-priority': iso.workerRtPriority = num(flag, v); break;
      case '--main-cpu': iso.mainCpu = String(v); break;
      case '--worker-cpu': iso.workerCpu = String(v); break;
      case '--others-cpu': iso.othersCpu = String(v); break;
      case '--agent-arg': iso.agentArgs = [...iso.agentArgs, String(v)]; break;
      case '--agent-node-arg': iso.nodeArgs = [...iso.nodeArgs, String(v)]; break;
      case '--autogroup-nice': {
        const n = Number(v);
        if (!Number.isInteger(n) || n < -20 || n > 19) throw new Error(`--autogroup-nice: -20..19\n${usage()}`);
        autogroupNice = n;
        break;
      }
      case '--host': iso.host = sc.host = String(v); break;
      case '--json': json = String(v); break;
      case '--agent': iso.agentPath = sc.agentPath = path.resolve(String(v)); break;
      case '--workers': sc.workers = String(v).split(',').map((w) => num(flag, w)); break;
      case '--rounds': sc.rounds = num(flag, v); break;
      case '--outstanding': sc.outstanding = num(flag, v); break;
      default: throw new Error(`unknown argument ${flag}\n${usage()}`);
    }
  }
  return { mode, iso, scaling: sc, json, autogroupNice };
}

/** Sets this process's scheduler autogroup nice value (see --autogroup-nice) and returns the one it had. */
function setAutogroupNice(nice: number): number {
  const file = '/proc/self/autogroup';
  const before = Number(/nice (-?\d+)/.exec(readFileSync(file, 'utf8'))?.[1] ?? 0);
  writeFileSync(file, String(nice));
  return before;
}

async function main(): Promise<number> {
  const { mode, iso, scaling, json, autogroupNice } = parseArgs(process.argv.slice(2));
  const log = (l: string): void => console.log(l);
  let report: unknown;
  // --autogroup-nice: the nice value of the bench's scheduler autogroup
  // (/proc/self/autogroup: this process, the agent, the simulator, dnsperf),
  // restored at the end. With autogroups on (kernel.sched_autogroup_enabled), a
  // group's weight is spread over the CPUs by its load, so on a machine
  // shared with other sessions the worker, the only thing of ours on its CPU,
  // gets a small share of it (measured: running 10% of the time, runnable
  // and waiting 90%). -20 gives it what a CPU of its own would.
  const ownNice = autogroupNice === null ? null : setAutogroupNice(autogroupNice);
  if (autogroupNice !== null) log(`the bench's scheduler autogroup at nice ${autogroupNice} (was ${ownNice}): a machine shared with other sessions`);
  const restoreNice = (): void => {
    if (ownNice !== null) setAutogroupNice(ownNice);
  };
  // SIGTERM/SIGINT: stop the run and what it started (the agent, the simulator, the probe, dnsperf), then restore the nice value.
  const interrupts = handleInterrupts('isolation', running, restoreNice);
  try {
    if (mode === 'scaling') {
      const rep = await runScaling(scaling, log, interrupts.signal);
      console.log(`\n${formatScaling(rep)}`);
      report = { ...rep, autogroupNice };
    } else {
      log(TABLE_HEAD);
      const rep = await runIsolation(iso, log, interrupts.signal);
      console.log(`\n${formatIsolation(rep)}`);
      report = { ...rep, autogroupNice };
    }
  } catch (err) {
    if (!interrupts.signal.aborted) throw err;
    process.stderr.write('isolation: interrupted; everything it started is stopped\n');
    return EXIT_INTERRUPTED;
  } finally {
    restoreNice();
  }
  if (json !== null) writeFileSync(json, JSON.stringify(report, null, 2) + '\n');
  return 0;
}

if (path.resolve(process.argv[1] ?? '') === fileURLToPath(import.meta.url)) {
  main().then((code) => {
    process.exitCode = code;
  }, (err: unknown) => {
    process.stderr.write(`isolation: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
