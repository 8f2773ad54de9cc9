/**
 * `npm run isolation -- scaling`: hits from 1 to N batched workers (issue 16).
 *
 * For each --workers value, in turn and for --rounds rounds (the order
 * rotates so no value always runs first): the agent (--io batched, nothing
 * pinned) in front of the simulator, its caches warmed (dnsperf over the
 * names for 2 s: each worker has a cache of its own and SO_REUSEPORT spreads
 * dnsperf's 16 sockets over them), then dnsperf closed loop over the same
 * names. Reported: hits/s; the agent's CPU per hit, split by thread (main
 * thread, the udp-worker-<i> threads, the rest) from /proc/PID/task stats;
 * how busy each worker thread was (running or runnable); and the whole
 * machine's busy CPUs from /proc/stat, because the generator shares the
 * cores: on a 2-core machine two workers and dnsperf compete, so CPU per
 * hit is the figure that carries to bigger machines, not hits/s.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scrape } from './agent-proc.js';
import { probeNames } from './hit-probe.js';
import { runDnsperfRate, runProbe, startBenchAgent, startSim, stopStarted, writeHitFile } from './isolation-stack.js';
import { which } from './proc-stats.js';
import { isLoopback } from './targets.js';
import { findWorkerThreads, threadStat, threadsOf, type ThreadStat } from './threads.js';

export interface ScalingOptions {
  readonly host: string;
  readonly workers: readonly number[];
  readonly rounds: number;
  readonly seconds: number;
  /** dnsperf -q: queries outstanding (closed loop). */
  readonly outstanding: number;
  readonly names: number;
  readonly agentPath: string;
  readonly readyTimeoutMs: number;
}

export interface ScalingSample {
  readonly workers: number;
  readonly round: number;
  /** NOERROR answers per second of dnsperf's run: a SERVFAIL or REFUSED is an answer, not a hit. */
  readonly hitsPerS: number;
  /** NOERROR answers. */
  readonly completed: number;
  readonly lost: number;
  /** Answers with another rcode. */
  readonly failed: number;
  /** Agent CPU over the run, in CPUs (1 = one whole CPU). */
  readonly agentCpus: number;
  /** CPU per answered hit, microseconds: every thread, the main thread, all worker threads, the rest (V8, libuv). */
  readonly usPerHit: { readonly total: number; readonly main: number; readonly workers: number; readonly other: number };
  /** Per worker thread: share of the run it was running or runnable (1 = never idle), and CPU per hit it answered overall. */
  readonly workerBusy: readonly number[];
  /** Busy CPUs of the whole machine over the run (/proc/stat): agent + dnsperf + simulator + anything else. */
  readonly machineBusyCpus: number;
  /**
   * Softirq time of the whole machine over the run, in CPUs: with IRQ time
   * accounting the kernel's loopback delivery lands here and in no thread's
   * stime, so the per-thread CPU per hit leaves it out.
   */
  readonly softirqCpus: number;
  /** dnsperf's CPU over the run, in CPUs. */
  readonly generatorCpus: number;
  /** Datagrams per recvmmsg call that returned any (the workers' mean batch), from the agent's /metrics; null if the scrape failed. */
  readonly batch: number | null;
  /** Queries the simulator received during the run: near 0 when every query was a hit. */
  readonly upstreamQueries: number;
}

/** The machine a report was taken on: its cores and CPU, and the load before and after the run. */
export interface BenchMachine {
  readonly cores: number;
  readonly loadBefore: readonly number[];
  readonly loadAfter: readonly number[];
  readonly cpuModel: string;
}

export interface ScalingReport {
  readonly kind: 'scaling';
  readonly startedAt: string;
  readonly machine: BenchMachine;
  readonly options: Omit<ScalingOptions, 'agentPath'>;
  readonly samples: readonly ScalingSample[];
}

/** Busy and total jiffies of the whole machine ("cpu" line of /proc/stat). */
function machineTicks(): { busy: number; softirq: number; total: number } {
  // user nice system idle iowait irq softirq steal
  const f = (/^cpu\s+(.+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1] ?? '').trim().split(/\s+/).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), softirq: f[6] ?? 0, total };
}

interface Snapshot {
  readonly main: ThreadStat | null;
  readonly workers: ReadonlyArray<ThreadStat | null>;
  /** utime+stime of every thread alive, seconds. */
  readonly all: number;
}

function snapshot(pid: number, workerTids: readonly number[]): Snapshot {
  let all = 0;
  for (const t of threadsOf(pid)) {
    const s = threadStat(pid, t.tid);
    if (s !== null) all += s.utime + s.stime;
  }
  return { main: threadStat(pid, pid), workers: workerTids.map((tid) => threadStat(pid, tid)), all };
}

const BATCH_METRICS = ['nodelocal_udp_batched_datagrams_total', 'nodelocal_udp_batches_total'];

const cpuS = (s: ThreadStat | null): number => (s === null ? NaN : s.utime + s.stime);

/** `signal` stops the run: dnsperf and the probe are interrupted, what was started is stopped, and it rejects. */
export async function runScaling(o: ScalingOptions, log: (line: string) => void, signal: AbortSignal = new AbortController().signal): Promise<ScalingReport> {
  if (!isLoopback(o.host)) throw new Error(`--host ${o.host}: loopback only`);
  if (which('dnsperf') === null) throw new Error('dnsperf is not installed (apt-get install dnsperf): it drives the hits');
  const startedAt = new Date().toISOString();
  const loadBefore = os.loadavg();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nldns-scaling-'));
  const hitFile = path.join(dir, 'hits.txt');
  const names = probeNames(o.names);
  writeHitFile(hitFile, names);
  const sim = await startSim(o.host);
  const samples: ScalingSample[] = [];
  log(SCALING_HEAD);
  try {
    for (let round = 1; round <= o.rounds; round++) {
      const order = o.workers.map((_, k) => o.workers[(k + round - 1) % o.workers.length]!);
      for (const workers of order) {
        signal.throwIfAborted();
        const agent = await startBenchAgent({ agentPath: o.agentPath, sim, host: o.host, io: 'batched', workers, workDir: dir, name: `w${workers}-r${round}`, readyTimeoutMs: o.readyTimeoutMs });
        try {
          const found = await findWorkerThreads(agent.pid, workers, 10_000);
          const tids = found.map((t) => t.tid);
          await runProbe({ host: o.host, port: agent.port, names: names.length, cpu: null, rtPriority: 0, mode: 'warm', signal });
          await runDnsperfRate({ host: o.host, port: agent.port, dataFile: hitFile, seconds: 2, outstanding: o.outstanding, qps: null, cpu: null, signal });
          signal.throwIfAborted();
          const up0 = await sim.stats();
          const b0 = await scrape(agent.metricsUrl, BATCH_METRICS);
          const m0 = machineTicks();
          const s0 = snapshot(agent.pid, tids);
          const t0 = performance.now();
          const r = await runDnsperfRate({ host: o.host, port: agent.port, dataFile: hitFile, seconds: o.seconds, outstanding: o.outstanding, qps: null, cpu: null, signal });
          signal.throwIfAborted();
          const wallS = (performance.now() - t0) / 1000;
          const s1 = snapshot(agent.pid, tids);
          const m1 = machineTicks();
          const up1 = await sim.stats();
          const b1 = await scrape(agent.metricsUrl, BATCH_METRICS);
          const delta = (k: string): number => (b1.get(k) ?? NaN) - (b0.get(k) ?? NaN);
          const batch = delta(BATCH_METRICS[0]!) / delta(BATCH_METRICS[1]!);
          const hits = r.rcodes['NOERROR'] ?? 0;
          const n = Math.max(1, hits);
          const main = cpuS(s1.main) - cpuS(s0.main);
          const perWorker = tids.map((_, i) => cpuS(s1.workers[i] ?? null) - cpuS(s0.workers[i] ?? null));
          const workerSum = perWorker.reduce((a, b) => a + b, 0);
          const total = s1.all - s0.all;
          const upstream = (c: typeof up0): number => (c === null ? NaN : c.cluster.udpQueries + c.cluster.tcpQueries + c.external.udpQueries + c.external.tcpQueries);
          const sample: ScalingSample = {
            workers, round, hitsPerS: hits / (r.runTimeS > 0 ? r.runTimeS : wallS), completed: hits, lost: r.queriesLost, failed: r.queriesCompleted - hits,
            agentCpus: total / wallS,
            usPerHit: { total: (total * 1e6) / n, main: (main * 1e6) / n, workers: (workerSum * 1e6) / n, other: ((total - main - workerSum) * 1e6) / n },
            workerBusy: tids.map((_, i) => {
              const a = s0.workers[i];
              const b = s1.workers[i];
              return a == null || b == null ? NaN : (b.run - a.run + b.wait - a.wait) / wallS;
            }),
            machineBusyCpus: ((m1.busy - m0.busy) / Math.max(1, m1.total - m0.total)) * os.cpus().length,
            generatorCpus: r.cpuS / wallS,
            softirqCpus: ((m1.softirq - m0.softirq) / Math.max(1, m1.total - m0.total)) * os.cpus().length,
            batch: Number.isFinite(batch) ? batch : null,
            upstreamQueries: upstream(up1) - upstream(up0),
          };
          samples.push(sample);
          log(formatSample(sample));
        } finally {
          await stopStarted(agent.target);
        }
      }
    }
  } finally {
    await stopStarted(sim);
  }
  const { agentPath: _agentPath, ...options } = o;
  return {
    kind: 'scaling', startedAt,
    machine: { cores: os.cpus().length, loadBefore, loadAfter: os.loadavg(), cpuModel: os.cpus()[0]?.model ?? '?' },
    options, samples,
  };
}

const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-');
const pc = (x: number): string => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '-');

export const SCALING_HEAD =
  '| workers | round | hits/s | lost / not NOERROR | agent CPUs | us CPU per hit: all / main / workers / other | worker threads busy | datagrams per recvmmsg | dnsperf CPUs | machine busy CPUs (softirq) | upstream queries |\n' +
  '|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|';

function formatSample(s: ScalingSample): string {
  const u = s.usPerHit;
  return `| ${s.workers} | ${s.round} | ${Math.round(s.hitsPerS)} | ${s.lost} / ${s.failed} | ${s.agentCpus.toFixed(2)} | ${f1(u.total)} / ${f1(u.main)} / ${f1(u.workers)} / ${f1(u.other)} | ` +
    `${s.workerBusy.map(pc).join(', ')} | ${s.batch === null ? '-' : s.batch.toFixed(1)} | ${s.generatorCpus.toFixed(2)} | ${s.machineBusyCpus.toFixed(2)} (${s.softirqCpus.toFixed(2)}) | ${s.upstreamQueries} |`;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export function formatScaling(rep: ScalingReport): string {
  const o = rep.options;
  const lines = [
    `batched workers ${o.workers.join(', ')}, ${o.rounds} round(s) of ${o.seconds} s, dnsperf closed loop (${o.outstanding} outstanding, 16 sockets) over ${o.names} cached names; nothing pinned`,
    `machine: ${rep.machine.cores} CPUs, load average ${rep.machine.loadBefore.map((x) => x.toFixed(2)).join(' ')} before, ${rep.machine.loadAfter.map((x) => x.toFixed(2)).join(' ')} after`,
    '',
    SCALING_HEAD,
    ...rep.samples.map(formatSample),
    '',
    '| workers | hits/s (median) | us CPU per hit (median): all / main / workers | hits/s vs the first |',
    '|--:|--:|--:|--:|',
  ];
  const first = rep.samples.filter((s) => s.workers === o.workers[0]);
  for (const w of o.workers) {
    const ss = rep.samples.filter((s) => s.workers === w);
    // Ratios within each round (same load on the machine), then their median.
    const ratio = median(ss.map((s) => s.hitsPerS / (first.find((x) => x.round === s.round)?.hitsPerS ?? NaN)));
    lines.push(`| ${w} | ${Math.round(median(ss.map((s) => s.hitsPerS)))} | ${f1(median(ss.map((s) => s.usPerHit.total)))} / ${f1(median(ss.map((s) => s.usPerHit.main)))} / ${f1(median(ss.map((s) => s.usPerHit.workers)))} | ${ratio.toFixed(2)}x |`);
  }
  // What a worker with a core of its own would answer: its CPU per hit (the kernel's recvmmsg/sendmmsg included, as stime).
  lines.push('');
  for (const w of o.workers) {
    const ss = rep.samples.filter((s) => s.workers === w);
    const perHit = median(ss.map((s) => s.usPerHit.workers));
    if (!Number.isFinite(perHit) || perHit <= 0) continue;
    const core = 1e6 / perHit;
    lines.push(
      `--workers ${w}: ${f1(perHit)} us of worker CPU per hit (main thread ${f1(median(ss.map((s) => s.usPerHit.main)))} us), so a worker with a core of its own answers about ${Math.round(core)} hits/s; ` +
        `with the clients elsewhere and a core left to the main thread, 8 cores (7 workers) about ${Math.round(7 * core)} and 16 cores (15 workers) about ${Math.round(15 * core)} hits/s.`,
    );
  }
  lines.push('(An upper bound: it assumes nothing else binds first: the NIC and its queues, the kernel\'s socket locks, memory bandwidth; CPU per hit grows as batches shrink, and softirq time, charged to no thread, is not in it. --workers 0 takes at most 4, so such a node needs --workers set.)');
  return lines.join('\n');
}
