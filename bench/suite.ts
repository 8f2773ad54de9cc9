/**
 * One benchmark invocation, start to end: simulator, targets, the run
 * matrix (workload → rate → target, so targets are interleaved and drift
 * hits them alike), the max-throughput runs, then stop everything and write
 * the results. Everything started is registered in `live` so the CLI can kill
 * it synchronously if the process is about to exit abnormally.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { DNSPERF_CEILING_QPS, LOOPED_LINES, MAX_UNIQUE_LINES, runDnsperf, splitByRcode, writeDataFile, type DataFile } from './dnsperf.js';
import { LoadGenerator, UniqueCounter, type RunOutcome } from './loadgen.js';
import { AGENT_VARIANTS, UsageError, type BenchOptions } from './options.js';
import { repoRoot } from './repo-root.js';
import { PhaseTally, boundaries, parsePhases, totalMs, type Phase } from './phases.js';
import { environment, memoryOf, pinProcess, treeCpuSeconds, which } from './proc-stats.js';
import { writeReports, wrongCell, type WrittenReports } from './report.js';
import {
  GENERATOR_BEHIND_SHARE, GENERATOR_BUSY_CORES, SATURATION_FAILURE_SHARE, SCHEMA, SEND_LAG_WARN_US,
  percentiles, type BenchResults, type DnsperfStats, type FallbackRecord, type Percentiles, type PhaseRecord, type RunRecord, type TargetRecord,
} from './results.js';
import { writeKubeconfig } from './sim/api.js';
import { SimProcess, type ClusterChange, type SimTotals } from './sim/control.js';
import { DEFAULT_ZONES, type ZoneConfig } from './sim/zones.js';
import { addressTarget, directTarget, formatEndpoint, startAgent, startPeerCmd, type Target } from './targets.js';
import { buildWorkload, fallbackWorkload, type Workload, type WorkloadParams } from './workloads.js';

export interface SuiteIo {
  readonly log: (line: string) => void;
  readonly signal: AbortSignal;
  /** The command line as typed (for results.json). */
  readonly argv: readonly string[];
}

export interface SuiteOutcome {
  readonly results: BenchResults;
  readonly reports: WrittenReports;
  /** 0 ok, 3 some answers were wrong, 130 interrupted. */
  readonly exitCode: number;
}

/** Things that must die with this process; the CLI kills them synchronously on an abnormal exit. */
export const live = new Set<{ killNow(): void }>();

const MAX_RAMP_STAGES = 16;
const WARMUP_CONCURRENCY = 32;
/** Watches an agent opens once its view has synced: Services, EndpointSlices, Namespaces. */
const WATCHED_KINDS = 3;
const SYNC_POLL_MS = 100;
/** The agent's --local-ttl default: answers from its view carry at most this TTL. */
const AGENT_LOCAL_TTL_S = 5;


function timestampDir(root: string): string {
  const base = new Date().toISOString().replace(/\.[0-9]+Z$/, 'Z').replace(/:/g, '-');
  let dir = path.join(root, base);
  for (let i = 2; existsSync(dir); i++) dir = path.join(root, `${base}-${i}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

interface Snapshot {
  readonly targetCpu: number | null;
  readonly simCpu: number | null;
  readonly sim: SimTotals | null;
}

interface Pins {
  readonly agent: string | null;
  readonly generator: string | null;
  readonly sim: string | null;
}

function resolvePins(opts: BenchOptions, cores: number, hasTaskset: boolean, warnings: string[]): Pins {
  const explicit = opts.pinAgent !== null || opts.pinGenerator !== null || opts.pinSim !== null;
  if (explicit && !hasTaskset) throw new UsageError('--pin-agent/--pin-generator/--pin-sim need taskset (util-linux), which is not on PATH');
  if (explicit) return { agent: opts.pinAgent, generator: opts.pinGenerator, sim: opts.pinSim };
  if (!opts.pinAuto) return { agent: null, generator: null, sim: null };
  if (!hasTaskset || cores < 2) {
    warnings.push(!hasTaskset ? '--pin: taskset is not on PATH; nothing pinned' : '--pin: one CPU only; nothing pinned');
    return { agent: null, generator: null, sim: null };
  }
  const rest = cores === 2 ? '0' : `0-${cores - 2}`;
  return { agent: String(cores - 1), generator: rest, sim: rest };
}

export async function runBench(opts: BenchOptions, io: SuiteIo): Promise<SuiteOutcome> {
  const startedAt = new Date().toISOString();
  const env = environment();
  // Notes from the options (a --peers binary not installed) are warnings of the run.
  const warnings: string[] = [...opts.notes];
  const say = (s: string): void => {
    if (!opts.quiet) io.log(s);
  };
  for (const n of opts.notes) say(`bench: warning: ${n}`);
  if (opts.driver === 'dnsperf' && env.dnsperf === null) {
    throw new UsageError('--driver dnsperf: dnsperf is not installed (not found on PATH). Install it (e.g. apt-get install dnsperf) or use --driver node.');
  }
  const pins = resolvePins(opts, env.cores, env.taskset, warnings);
  const root = repoRoot();
  const agentPath = path.resolve(opts.agentPath ?? path.join(root, 'dist', 'src', 'main.js'));
  const wantAgent = opts.builtinTargets.some((b) => b !== 'direct');
  if (wantAgent && !existsSync(agentPath)) {
    throw new Error(`the agent is not built: ${agentPath} does not exist (run \`npm run build\`, or measure something else with --targets direct / --target ADDR:PORT)`);
  }
  const outRoot = path.resolve(opts.outDir ?? path.join(root, 'bench', 'results'));
  const dir = timestampDir(outRoot);
  if (pins.generator !== null) pinProcess(process.pid, pins.generator);

  const zones: ZoneConfig = {
    ...DEFAULT_ZONES,
    clusterDomain: opts.clusterDomain,
    namespaces: opts.namespaces,
    servicesPerNamespace: opts.services,
    fallbackServices: opts.fallbackServices,
    clusterTtl: opts.clusterTtl,
    externalTtl: opts.externalTtl,
    negativeTtl: opts.negativeTtl,
  };
  const faults = (u: BenchOptions['cluster']): { latencyMs: number; jitterMs: number; lossRate: number } => ({ latencyMs: u.latencyMs, jitterMs: u.jitterMs, lossRate: u.loss });

  const targets: Target[] = [];
  const generators = new Map<string, LoadGenerator>();
  let sim: SimProcess | null = null;
  const runs: RunRecord[] = [];
  let aborted = false;
  /** Agents started with --local-negative (they deny names the API lacks). */
  const localNegative = new Set<string>();
  /** Right answers at or under this TTL came from the target's view (agents only). */
  const viewTtl = new Map<string, number | null>();

  const stopAll = async (): Promise<void> => {
    for (const g of generators.values()) g.close();
    for (const t of [...targets].reverse()) {
      try {
        await t.stop();
      } catch (err) {
        warnings.push(`stopping ${t.name}: ${(err as Error).message}`);
      }
      live.delete(t);
    }
    if (sim !== null) {
      await sim.stop();
      live.delete(sim);
    }
  };

  const targetRecords: TargetRecord[] = [];
  const apiToken = wantAgent ? randomBytes(16).toString('hex') : null;
  try {
    say(`bench: results in ${dir}`);
    sim = await SimProcess.start({
      host: opts.host,
      zones,
      cluster: { ...faults(opts.cluster), port: opts.cluster.port },
      external: { ...faults(opts.external), port: opts.external.port },
      // The agent's watch gets the same cluster from a fake API server (sim/api.ts).
      api: apiToken === null ? null : { token: apiToken },
    });
    live.add(sim);
    if (pins.sim !== null) pinProcess(sim.pid, pins.sim);
    say(`bench: simulator pid ${sim.pid}: cluster zone on ${formatEndpoint(sim.cluster)}, external on ${formatEndpoint(sim.external)}${sim.apiUrl === null ? '' : `, Kubernetes API on ${sim.apiUrl}`}`);
    const simStarted = sim;
    let kubeconfig: string | null = null;
    if (sim.apiUrl !== null) {
      kubeconfig = path.join(dir, 'kubeconfig');
      writeKubeconfig(kubeconfig, sim.apiUrl, apiToken ?? '');
    }

    if (opts.target !== null) targets.push(addressTarget('target', 'target', opts.target, opts.targetPid));
    for (const b of opts.builtinTargets) {
      if (io.signal.aborted) break;
      if (b === 'direct') {
        targets.push(directTarget(sim));
        continue;
      }
      const extraArgs = [...AGENT_VARIANTS[b], ...opts.agentArgs];
      say(`bench: starting ${b} (${path.relative(process.cwd(), agentPath) || agentPath}${extraArgs.length === 0 ? '' : ` ${extraArgs.join(' ')}`})`);
      const watchesBefore = (await sim.stats())?.api?.openWatches ?? 0;
      const t = await startAgent({ name: b, agentPath, extraArgs, nodeArgs: opts.agentNodeArgs, kubeconfig, clusterDomain: opts.clusterDomain, host: opts.host, sim, workDir: dir, pin: pins.agent, readyTimeoutMs: opts.readyTimeoutMs });
      targets.push(t);
      live.add(t);
      if (extraArgs.includes('--local-negative')) localNegative.add(b);
      viewTtl.set(b, localTtlOf(extraArgs));
      if (kubeconfig !== null && !extraArgs.includes('--no-kube')) {
        const synced = await waitForWatches(simStarted, watchesBefore + WATCHED_KINDS, opts.readyTimeoutMs, io.signal);
        if (!synced) warnings.push(`${b}: its cluster view did not sync within ${opts.readyTimeoutMs / 1000} s (fewer than ${WATCHED_KINDS} watches on the fake API server); answers from the view may be missing`);
        else say(`bench: ${b}: cluster view synced`);
      }
    }
    for (const p of opts.peers) targets.push(addressTarget(p.name, 'peer', p.endpoint, null));
    for (const p of opts.peerCmds) {
      if (io.signal.aborted) break;
      say(`bench: starting peer ${p.name}`);
      const t = await startPeerCmd({ name: p.name, template: p.command, host: opts.host, sim, workDir: dir, pin: pins.agent, readyTimeoutMs: opts.readyTimeoutMs });
      targets.push(t);
      live.add(t);
    }
    const counter = new UniqueCounter();
    /** One dnsperf data file per workload, shared by the targets (each has a cache of its own). */
    const dataFiles = new Map<string, DataFile>();
    for (const t of targets) {
      generators.set(t.name, await LoadGenerator.open({ routes: t.routes, sockets: opts.sockets, timeoutMs: opts.timeoutMs, counter }));
      const pinnedTo = t.kind === 'agent' || (t.kind === 'peer' && t.command !== null) ? pins.agent : t.kind === 'direct' ? pins.sim : null;
      targetRecords.push({
        name: t.name,
        kind: t.kind,
        address: t.routes[0] === t.routes[1] ? formatEndpoint(t.routes[0]) : `cluster ${formatEndpoint(t.routes[0])}, external ${formatEndpoint(t.routes[1])}`,
        pid: t.pid,
        command: t.command,
        logFile: t.logFile,
        pinnedTo,
        peakRssBytes: null,
      });
    }

    const params: WorkloadParams = {
      zones,
      seed: opts.seed,
      zipfExponent: opts.zipf,
      hitNames: opts.hitNames,
      externalNames: opts.externalNames,
      negativeNames: opts.negativeNames,
      negativeUniqueShare: opts.negativeUniqueShare,
      missExternalShare: opts.missExternalShare,
      podmixExternalShare: opts.podmixExternalShare,
      podmixSameNamespace: opts.podmixSameNs,
      podmixWarmupLookups: opts.podmixWarmup,
      missWarmupLookups: opts.missWarmup,
      ndots: opts.ndots,
      fallbackColdShare: opts.fallbackColdShare,
      uniqueTag: Math.floor(Math.random() * 36 ** 4).toString(36).padStart(4, '0'),
    };
    const simRef = sim;
    const snapshot = async (t: Target): Promise<Snapshot> => ({
      targetCpu: t.pid === null ? null : treeCpuSeconds(t.pid),
      simCpu: treeCpuSeconds(simRef.pid),
      sim: await simRef.stats(),
    });
    const warm = async (t: Target, wl: Workload): Promise<RunOutcome | null> => {
      const plans = wl.warmup();
      if (plans.length === 0) return null;
      return (generators.get(t.name) as LoadGenerator).run(null, { kind: 'list', plans, concurrency: Math.min(WARMUP_CONCURRENCY, opts.concurrency * 4) }, io.signal);
    };
    const skipNoted = new Set<string>();
    /** miss asks unique u-… services that kube-dns has and the API does not (custom records): --local-negative denies them by design. */
    const skipped = (wname: string, t: Target): boolean => {
      if (wname !== 'miss' || !localNegative.has(t.name)) return false;
      if (!skipNoted.has(t.name)) {
        skipNoted.add(t.name);
        warnings.push(`miss/${t.name}: skipped: its unique cluster names (u-…) exist in the simulated kube-dns but not in the API, like custom records, which --local-negative denies by design`);
      }
      return true;
    };
    const checkAlive = (t: Target): void => {
      if (!t.alive()) throw new Error(`${t.name} is no longer running${t.logFile === null ? '' : ` (see ${t.logFile})`}`);
    };

    const fallbackRun = async (t: Target, phases: readonly Phase[]): Promise<RunRecord> => {
      const wl = fallbackWorkload(params);
      const gen = generators.get(t.name) as LoadGenerator;
      // Whatever the run before left, kube-dns is up for the warm-up.
      const restored = await simRef.setCluster('up');
      if (restored.error !== null) throw new Error(`the simulator could not restart the cluster server: ${restored.error}`);
      const w = await warm(t, wl);
      let ttlMax = t.kind === 'agent' ? (viewTtl.get(t.name) ?? null) : null;
      const notes: string[] = [];
      if (ttlMax !== null && ttlMax >= opts.clusterTtl) {
        notes.push(`--cluster-ttl ${opts.clusterTtl} is not above the agent's --local-ttl ${ttlMax}: answers from the view cannot be told apart, "from view" is not counted`);
        ttlMax = null;
      }
      const tally = new PhaseTally(phases.length, wl.classes.length, ttlMax);
      const changes: Array<Promise<{ index: number; change: ClusterChange; lagMs: number }>> = [];
      const before = await snapshot(t);
      const o = await gen.run(wl, {
        kind: 'open',
        rateQps: opts.fallbackRate,
        durationMs: totalMs(phases),
        timeoutMs: opts.fallbackTimeoutMs,
        phases: {
          boundariesMs: boundaries(phases),
          tally,
          // The generator holds the phase's sends until the simulator has changed state.
          onPhase: (index, lateMs) => {
            const at = performance.now();
            const state = phases[index]?.state === 'down' ? opts.fallbackOutage : 'up';
            const change = simRef.setCluster(state).then((c) => ({ index, change: c, lagMs: lateMs + performance.now() - at }));
            changes.push(change);
            return change;
          },
        },
      }, io.signal);
      const settled = (await Promise.all(changes)).sort((a, b) => a.index - b.index);
      const restore = await simRef.setCluster('up');
      const after = await snapshot(t);
      for (const c of [...settled.map((x) => x.change), restore]) if (c.error !== null) notes.push(`simulator state change failed: ${c.error}`);
      const records = tally.summary(phases, wl.classes);
      // Counters at each state change: phase k got what kube-dns counted between marks k and k+1.
      const marks: Array<SimTotals | null> = [before.sim, ...phases.slice(1).map((_, i) => settled.find((x) => x.index === i + 1)?.change.totals ?? null), restore.totals ?? after.sim];
      const phaseRecords: PhaseRecord[] = records.map((p, k) => {
        const a = marks[k] ?? null;
        const b = marks[k + 1] ?? null;
        const upstream = a === null || b === null ? null : {
          clusterQueries: b.cluster.udpQueries + b.cluster.tcpQueries - a.cluster.udpQueries - a.cluster.tcpQueries,
          clusterAnswered: b.cluster.answered - a.cluster.answered,
          clusterDropped: b.cluster.dropped - a.cluster.dropped,
        };
        const lag = settled.find((x) => x.index === k)?.lagMs;
        return { ...p, upstream, changeLagMs: lag === undefined ? null : Math.round(lag * 10) / 10 };
      });
      notes.push(...fallbackNotes(phaseRecords, wl.coldLookups(), wl.coldPool, opts.fallbackOutage, ttlMax));
      const fallback: FallbackRecord = {
        outage: opts.fallbackOutage,
        phasesS: phases.map((p) => p.durationMs / 1000),
        clientTimeoutMs: opts.fallbackTimeoutMs,
        coldShare: opts.fallbackColdShare,
        coldPool: wl.coldPool,
        coldLookups: wl.coldLookups(),
        viewTtlMax: ttlMax,
        phases: phaseRecords,
      };
      const rec = toRecord(t, wl, o, before, after, w, fallback);
      return { ...rec, warnings: [...rec.warnings, ...notes] };
    };

    for (const wname of opts.workloads) {
      if (io.signal.aborted) break;
      if (wname === 'fallback') {
        // A scenario, not a rate sweep: one run per target at --fallback-rate, kube-dns going down and up on the phase schedule.
        const phases = parsePhases(opts.fallbackPhases.join(','));
        for (const t of targets) {
          if (io.signal.aborted) break;
          if (t.kind === 'direct') {
            warnings.push('fallback/direct: skipped: straight to a stopped kube-dns every miss fails by construction; the workload measures what stands in front of it');
            continue;
          }
          checkAlive(t);
          const rec = await fallbackRun(t, phases);
          runs.push(rec);
          say(runLine(rec));
          for (const line of phaseLines(rec)) say(line);
        }
        continue;
      }
      const wl = buildWorkload(wname, params);
      const saturated = new Set<string>();
      let generatorLimited = false;
      const rates = opts.rates ?? [];
      for (let stage = 0; stage < (opts.ramp === null ? rates.length : MAX_RAMP_STAGES); stage++) {
        const rate = opts.ramp === null ? (rates[stage] as number) : opts.ramp.start * Math.pow(opts.ramp.factor, stage);
        if (opts.ramp !== null && rate > opts.ramp.max * 1.0001) break;
        for (const t of targets) {
          if (io.signal.aborted) break;
          if (opts.ramp !== null && saturated.has(t.name)) continue;
          if (skipped(wname, t)) continue;
          checkAlive(t);
          const w = await warm(t, wl);
          const before = await snapshot(t);
          const o = await (generators.get(t.name) as LoadGenerator).run(wl, { kind: 'open', rateQps: rate, durationMs: opts.durationMs }, io.signal);
          const after = await snapshot(t);
          const rec = toRecord(t, wl, o, before, after, w);
          runs.push(rec);
          say(runLine(rec));
          if (rec.saturated) saturated.add(t.name);
          if (rec.generatorBound) generatorLimited = true;
        }
        if (io.signal.aborted) break;
        if (opts.ramp !== null) {
          if (generatorLimited) {
            warnings.push(`${wname}: ramp stopped at ${rate} q/s because the generator became the bottleneck`);
            break;
          }
          if (targets.every((t) => saturated.has(t.name))) break;
        }
      }
      if (!opts.max) continue;
      for (const t of targets) {
        if (io.signal.aborted) break;
        if (skipped(wname, t)) continue;
        checkAlive(t);
        const w = await warm(t, wl);
        const before = await snapshot(t);
        let rec: RunRecord;
        if (opts.driver === 'dnsperf' && t.routes[0] === t.routes[1]) {
          const file = path.join(dir, `dnsperf-${wname}.txt`);
          let data = dataFiles.get(wname);
          if (data === undefined) {
            const lasting = Math.ceil(DNSPERF_CEILING_QPS * (opts.maxDurationMs / 1000));
            const size = opts.dnsperfLines === null ? { looped: LOOPED_LINES, unique: Math.min(MAX_UNIQUE_LINES, lasting) } : { looped: opts.dnsperfLines, unique: opts.dnsperfLines };
            data = writeDataFile(file, wl, size, () => counter.next());
            dataFiles.set(wname, data);
            if (data.unique && opts.dnsperfLines === null && lasting > MAX_UNIQUE_LINES) {
              warnings.push(`${wname}: dnsperf's data file holds ${data.lines} unique names, fewer than ${DNSPERF_CEILING_QPS} q/s for ${opts.maxDurationMs / 1000} s: a target that fast runs through them before the limit (--dnsperf-lines)`);
            }
          }
          const d = await runDnsperf({
            dnsperf: env.dnsperf ?? which('dnsperf') ?? 'dnsperf',
            target: t.routes[0],
            dataFile: file,
            // Fractional: dnsperf takes -l 0.3 (--quick), and the record states what it was given.
            durationS: opts.maxDurationMs / 1000,
            once: data.unique,
            outstanding: opts.concurrency,
            timeoutS: Math.max(1, opts.timeoutMs / 1000),
            pin: pins.generator,
            signal: io.signal,
          });
          const after = await snapshot(t);
          rec = dnsperfRecord(t, wl, d, data, before, after, w, opts);
        } else {
          if (opts.driver === 'dnsperf') warnings.push(`${wname}/${t.name}: dnsperf sends to one address; the direct target splits by zone, so the Node generator measured it`);
          const o = await (generators.get(t.name) as LoadGenerator).run(wl, { kind: 'closed', concurrency: opts.concurrency, durationMs: opts.maxDurationMs }, io.signal);
          const after = await snapshot(t);
          rec = toRecord(t, wl, o, before, after, w);
        }
        runs.push(rec);
        say(runLine(rec));
      }
    }
    aborted = io.signal.aborted;
    for (const r of targetRecords) {
      const t = targets.find((x) => x.name === r.name);
      const mem = t?.pid == null ? null : memoryOf(t.pid);
      Object.assign(r, { peakRssBytes: mem?.peakRssBytes ?? null });
    }
  } finally {
    await stopAll();
  }

  const simRec = sim as SimProcess | null;
  const results: BenchResults = {
    schema: SCHEMA,
    startedAt,
    finishedAt: new Date().toISOString(),
    aborted,
    quick: opts.quick,
    command: { argv: io.argv, line: commandLine(io.argv), cwd: process.cwd() },
    environment: env,
    generator: { pid: process.pid, pinnedTo: pins.generator, sockets: opts.sockets, timeoutMs: opts.timeoutMs },
    options: opts,
    simulator: {
      pid: simRec?.pid ?? 0,
      cluster: simRec === null ? '' : formatEndpoint(simRec.cluster),
      external: simRec === null ? '' : formatEndpoint(simRec.external),
      api: simRec?.apiUrl ?? null,
      pinnedTo: pins.sim,
      zones: {
        clusterDomain: zones.clusterDomain,
        namespaces: zones.namespaces,
        servicesPerNamespace: zones.servicesPerNamespace,
        fallbackServices: zones.fallbackServices,
        clusterTtl: zones.clusterTtl,
        externalTtl: zones.externalTtl,
        negativeTtl: zones.negativeTtl,
      },
      clusterFaults: faults(opts.cluster),
      externalFaults: faults(opts.external),
    },
    targets: targetRecords,
    runs,
    warnings: [...warnings, ...runs.flatMap((r) => r.warnings.map((w) => `${r.workload}/${r.target}/${r.mode}${r.offeredQps === null ? '' : `@${r.offeredQps}`}: ${w}`))],
  };
  const reports = writeReports(dir, results, opts.summary ? path.join(outRoot, 'summary') : null);
  const wrong = runs.some((r) => r.queries.wrong > 0 || (r.warmup?.wrong ?? 0) > 0);
  return { results, reports, exitCode: aborted ? 130 : wrong ? 3 : 0 };
}

function commandLine(argv: readonly string[]): string {
  const q = (s: string): string => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const viaNpm = process.env.npm_lifecycle_event === 'bench';
  return viaNpm ? `npm run bench -- ${argv.map(q).join(' ')}`.trim() : [process.execPath, process.argv[1] ?? '', ...argv].map(q).join(' ');
}

function deltaCpu(a: number | null, b: number | null): number | null {
  return a === null || b === null ? null : Math.max(0, b - a);
}

function upstreamDelta(a: SimTotals | null, b: SimTotals | null): RunRecord['upstreamQueries'] {
  if (a === null || b === null) return null;
  const q = (t: SimTotals, k: 'cluster' | 'external'): number => t[k].udpQueries + t[k].tcpQueries;
  return { cluster: q(b, 'cluster') - q(a, 'cluster'), external: q(b, 'external') - q(a, 'external') };
}

function usage(t: Target, cpu: number | null, answered: number): RunRecord['targetUsage'] {
  const mem = t.pid === null ? null : memoryOf(t.pid);
  return {
    cpuSeconds: cpu,
    cpuUsPerQuery: cpu === null || answered === 0 ? null : (cpu * 1e6) / answered,
    cpuSecondsPer1kQueries: cpu === null || answered === 0 ? null : (cpu * 1000) / answered,
    rssBytes: mem?.rssBytes ?? null,
    peakRssBytes: mem?.peakRssBytes ?? null,
  };
}

function warmupSummary(w: RunOutcome | null): RunRecord['warmup'] {
  return w === null ? null : { lookups: w.lookups.started, wrong: w.queries.wrong, timeouts: w.queries.timeouts };
}

/** The TTL the agent gives answers from its view: --local-ttl if given as whole seconds, else its default; null when unknown. */
export function localTtlOf(args: readonly string[]): number | null {
  let v: string | null = null;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--local-ttl') v = args[i + 1] ?? '';
    else if (a.startsWith('--local-ttl=')) v = a.slice('--local-ttl='.length);
  }
  if (v === null) return AGENT_LOCAL_TTL_S;
  const m = /^([0-9]+)(s?)$/.exec(v);
  return m === null ? null : Number(m[1]);
}

/** Polls the fake API server until `want` watches are open (each agent opens one per kind once its list is applied). */
async function waitForWatches(sim: SimProcess, want: number, timeoutMs: number, signal: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !signal.aborted) {
    const s = await sim.stats();
    if ((s?.api?.openWatches ?? 0) >= want) return true;
    await new Promise((r) => setTimeout(r, SYNC_POLL_MS));
  }
  return false;
}

/** What a fallback run's phases say beyond their numbers: a cold pool too small, answers in an outage that did not come from the view. */
export function fallbackNotes(phases: readonly PhaseRecord[], coldLookups: number, coldPool: number, outage: 'stop' | 'blackhole', ttlMax: number | null): string[] {
  const out: string[] = [];
  if (coldLookups > coldPool) out.push(`${coldLookups} cold lookups for ${coldPool} never-asked names: ${coldLookups - coldPool} repeated one (and may have been cache hits); raise --fallback-services or lower --fallback-rate/--fallback-cold-share`);
  for (const p of phases) {
    if (p.state !== 'down') continue;
    const cold = p.classes['cold'];
    if (ttlMax !== null && cold !== undefined && cold.fromView !== null && cold.queries.ok > cold.fromView) {
      out.push(`phase ${p.index + 1} (down): ${cold.queries.ok - cold.fromView} right answers to never-asked names carried a TTL above ${ttlMax} s, so not from the view`);
    }
    if (outage === 'stop' && p.upstream !== null && p.upstream.clusterAnswered > 0) {
      out.push(`phase ${p.index + 1} (down): kube-dns answered ${p.upstream.clusterAnswered} queries (the stop came ${p.changeLagMs ?? '?'} ms after the phase began)`);
    }
  }
  return out;
}

function toRecord(t: Target, wl: Workload, o: RunOutcome, before: Snapshot, after: Snapshot, w: RunOutcome | null, fallback: FallbackRecord | null = null): RunRecord {
  const open = o.spec.kind === 'open';
  const durationS = (o.spec.durationMs ?? 0) / 1000;
  const wallS = o.wallMs / 1000;
  const sendWindowS = Math.max(o.sendWindowMs / 1000, 1e-3);
  const q = o.queries;
  const cores = o.wallMs > 0 ? o.generatorCpuMs / o.wallMs : 0;
  const lag = open ? percentiles(o.sendLag) : null;
  const warnings: string[] = [];
  let generatorBound = false;
  if (cores >= GENERATOR_BUSY_CORES) {
    generatorBound = true;
    warnings.push(`the generator used ${(cores * 100).toFixed(0)}% of a core: it may be the bottleneck`);
  }
  if (open && o.lookupRate !== null && o.achievedLookupRate < GENERATOR_BEHIND_SHARE * o.lookupRate) {
    generatorBound = true;
    warnings.push(`the generator started lookups at ${((100 * o.achievedLookupRate) / o.lookupRate).toFixed(1)}% of the offered rate`);
  }
  if (q.overflow > 0) {
    generatorBound = true;
    warnings.push(`${q.overflow} queries not sent: the generator ran out of in-flight slots or ids`);
  }
  if (lag !== null && lag.p99 > SEND_LAG_WARN_US) warnings.push(`sends ran late (p99 ${(lag.p99 / 1000).toFixed(1)} ms behind schedule; counted in the latency)`);
  if (q.wrong > 0) warnings.push(`${q.wrong} wrong answers: ${o.wrongSamples.join('; ')}`);
  if (w !== null && (w.queries.wrong > 0 || w.queries.timeouts > 0)) warnings.push(`warm-up: ${w.queries.wrong} wrong, ${w.queries.timeouts} timeouts`);
  if (o.aborted) warnings.push('interrupted: this run was cut short');
  if (q.sendErrors > 0) warnings.push(`${q.sendErrors} socket errors (e.g. ICMP port unreachable)`);
  const failures = q.timeouts + q.wrong + q.overflow;
  const saturated = q.sent === 0 || failures > SATURATION_FAILURE_SHARE * q.sent || o.lookups.failed > SATURATION_FAILURE_SHARE * Math.max(1, o.lookups.started);
  const classes: Record<string, Percentiles> = {};
  wl.classes.forEach((c, i) => {
    const h = o.classLatency[i];
    if (h !== undefined && h.totalCount > 0) classes[c] = percentiles(h);
  });
  const cpu = deltaCpu(before.targetCpu, after.targetCpu);
  return {
    target: t.name,
    targetKind: t.kind,
    workload: wl.name,
    mode: open ? 'open' : 'closed',
    driver: 'node',
    offeredQps: o.spec.rateQps,
    offeredLookupRate: o.lookupRate,
    concurrency: o.spec.concurrency,
    durationS,
    wallS,
    lookups: { ...o.lookups },
    queries: { ...q },
    checked: true,
    wrongByReason: { ...o.wrongByReason },
    wrongSamples: [...o.wrongSamples],
    sentQps: q.sent / sendWindowS,
    throughputQps: open && !o.aborted ? q.answered / Math.max(durationS, sendWindowS) : q.answered / Math.max(wallS, 1e-3),
    achievedLookupRate: o.achievedLookupRate,
    latencyUs: percentiles(o.latency),
    serviceLatencyUs: percentiles(o.serviceLatency),
    sendLagUs: lag,
    classes,
    queriesPerLookup: o.lookups.started > 0 ? q.sent / o.lookups.started : 0,
    upstreamQueries: upstreamDelta(before.sim, after.sim),
    targetUsage: usage(t, cpu, q.answered),
    simulatorCpuSeconds: deltaCpu(before.simCpu, after.simCpu),
    generator: { cpuSeconds: o.generatorCpuMs / 1000, cores },
    saturated,
    generatorBound,
    warnings,
    warmup: warmupSummary(w),
    dnsperf: null,
    fallback,
  };
}

function dnsperfRecord(t: Target, wl: Workload, d: DnsperfStats, data: DataFile, before: Snapshot, after: Snapshot, w: RunOutcome | null, opts: BenchOptions): RunRecord {
  const cpu = deltaCpu(before.targetCpu, after.targetCpu);
  const limitS = opts.maxDurationMs / 1000;
  // Sends stop at the limit; the last answers come in during the run time dnsperf states, a little past it.
  const runS = d.runTimeS ?? limitS;
  // Unique names are asked once each (-n 1): past the file's end dnsperf stops rather than ask one again, before the limit.
  const ranOut = d.ended === 'end of file';
  const durationS = ranOut ? runS : limitS;
  // dnsperf counts every response as completed whatever its rcode: only the rcodes the names have are answers served.
  const { right, wrong: byRcode } = splitByRcode(d, data.expectedRcodes);
  const wrong = Math.max(0, d.queriesCompleted - right);
  const expected = [...data.expectedRcodes].join(' or ');
  const wrongSamples = Object.entries(byRcode).map(([rcode, n]) => `rcode: ${n} ${rcode} (expected ${expected})`);
  const warnings: string[] = ['dnsperf checks rcodes only, not the records; podmix is flattened into independent queries'];
  if (wrong > 0) warnings.push(`${wrong} wrong answers: ${wrongSamples.join('; ')}`);
  if (ranOut) warnings.push(`dnsperf asked each of the ${data.lines} names of its data file once in ${runS} s, before the ${limitS} s limit; the run lasted that (more lines: --dnsperf-lines)`);
  const saturated = d.queriesSent === 0 || d.queriesLost + wrong > SATURATION_FAILURE_SHARE * d.queriesSent;
  const servfail = byRcode['SERVFAIL'] ?? 0;
  return {
    target: t.name,
    targetKind: t.kind,
    workload: wl.name,
    mode: 'closed',
    driver: 'dnsperf',
    offeredQps: null,
    offeredLookupRate: null,
    concurrency: opts.concurrency,
    durationS,
    wallS: runS,
    lookups: { started: d.queriesSent, completed: right, failed: d.queriesLost + wrong },
    queries: { sent: d.queriesSent, answered: d.queriesCompleted, timeouts: d.queriesLost, wrong, late: 0, sendErrors: 0, overflow: 0 },
    checked: false,
    wrongByReason: { malformed: 0, truncated: 0, question: 0, servfail, rcode: wrong - servfail, data: 0 },
    wrongSamples,
    sentQps: d.queriesSent / durationS,
    throughputQps: right / Math.max(runS, 1e-3),
    achievedLookupRate: right / Math.max(runS, 1e-3),
    latencyUs: null,
    serviceLatencyUs: null,
    sendLagUs: null,
    classes: {},
    queriesPerLookup: 1,
    upstreamQueries: upstreamDelta(before.sim, after.sim),
    targetUsage: usage(t, cpu, right),
    simulatorCpuSeconds: deltaCpu(before.simCpu, after.simCpu),
    generator: { cpuSeconds: 0, cores: 0 },
    saturated,
    generatorBound: false,
    warnings,
    warmup: warmupSummary(w),
    dnsperf: d,
    fallback: null,
  };
}

function fmtUs(us: number): string {
  return us >= 10_000 ? `${(us / 1000).toFixed(0)}ms` : us >= 1000 ? `${(us / 1000).toFixed(1)}ms` : `${us}us`;
}

function runLine(r: RunRecord): string {
  const load = r.mode === 'open' ? `${r.offeredQps} q/s` : `closed c=${r.concurrency}${r.driver === 'dnsperf' ? ' (dnsperf)' : ''}`;
  const lat = r.latencyUs === null ? (r.dnsperf === null ? '' : `avg ${fmtUs(Math.round(r.dnsperf.avgLatencyUs))}`) : `p50 ${fmtUs(r.latencyUs.p50)} p99 ${fmtUs(r.latencyUs.p99)} p99.9 ${fmtUs(r.latencyUs.p999)}`;
  const cpu = r.targetUsage.cpuUsPerQuery === null ? '' : ` cpu ${r.targetUsage.cpuUsPerQuery.toFixed(1)}us/q`;
  const flags = `${r.saturated ? ' SATURATED' : ''}${r.generatorBound ? ' GENERATOR-BOUND' : ''}`;
  const up = r.workload === 'podmix' && r.upstreamQueries !== null && r.lookups.started > 0 ? `, kube-dns ${(r.upstreamQueries.cluster / r.lookups.started).toFixed(2)} q/lookup` : '';
  return `  ${r.workload.padEnd(8)} ${r.target.padEnd(14)} ${load.padEnd(16)} ${Math.round(r.throughputQps)} q/s answered, ${lat}, timeouts ${r.queries.timeouts}, wrong ${wrongCell(r)}${up}${cpu}${flags}`;
}

/** One line per phase of a fallback run, for the progress output. */
export function phaseLines(r: RunRecord): string[] {
  if (r.fallback === null) return [];
  return r.fallback.phases.map((p) => {
    const q = p.queries;
    const view = p.fromView === null ? '' : `, from view ${p.fromView}`;
    const up = p.upstream === null ? '' : `; kube-dns got ${p.upstream.clusterQueries}, answered ${p.upstream.clusterAnswered}`;
    return `      phase ${p.index + 1} ${p.state.padEnd(4)} ${p.durationS}s: ${p.lookups.started} lookups, ok ${q.ok}, servfail ${q.servfail}, wrong ${q.wrong}, timeouts ${q.timeouts}, late ${q.late}${view}; p50 ${fmtUs(p.latencyUs.p50)} p99 ${fmtUs(p.latencyUs.p99)} max ${fmtUs(p.latencyUs.max)}${up}`;
  });
}
