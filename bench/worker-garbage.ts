/**
 * `npm run worker-garbage -- [--seconds 8] [--hit-rate 2000] [--cross-qps 3000] [--flood-qps 20000] [--agent dist/src/main.js]`: what a batched worker
 * allocates per hit and per miss, and how often it collects, in figures
 * that do not depend on timing (README, "Hits beside a miss flood": the
 * worker's own scavenges are what hits wait behind beside a flood).
 *
 * Four runs of a fresh agent (--io batched, one worker, pinned as the
 * isolation bench pins it: worker on CPU 1, the rest on CPU 0), each with
 * NODELOCAL_HEAP_TRACE (src/server/batched/heap-trace.ts) set:
 *
 *   base   start, warm the probe's names (misses), stop
 *   hits   the same, then cached names at --hit-rate for --seconds
 *   cross  the same, then unique names at --cross-qps (default 3000), a rate
 *          the main thread keeps up with: nearly every miss crosses to it
 *   flood  the same, then unique names (misses) at --flood-qps for --seconds
 *
 * Per hit: (hits - base) bytes over the hits received. Per crossing miss:
 * (cross - base) over the misses that crossed. Per shed miss (answered by
 * the worker itself while the main thread refuses: shed-gate.ts): the flood
 * run's bytes less its crossed misses at the cross run's rate, over the shed
 * ones. How many cross beside a flood depends on how fast the main thread
 * is (the machine's load), so the flood's bytes per datagram move with it;
 * the two per-miss figures much less. Per-turn and per-report garbage is
 * spread over however many misses a turn takes, which timing decides: expect
 * some tens of percent between runs. Scavenges likewise. Also the top allocation sites of the flood run.
 * Loopback only; the simulator is the only upstream.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runDnsperfRate, runProbe, running, startBenchAgent, startSim, stopStarted, writeMissFile } from './isolation-stack.js';
import { pinProcess } from './proc-stats.js';
import { repoRoot } from './repo-root.js';
import { findWorkerThreads, pinThread } from './threads.js';

interface Trace {
  readonly allocatedBytes: number;
  readonly gcs: Record<string, { count: number; ms: number }>;
  readonly counters: Record<string, number>;
  readonly sites: readonly { site: string; bytes: number; callers: string }[];
}

type Kind = 'base' | 'hits' | 'cross' | 'flood';

const HOST = '127.0.0.1';
const NAMES = 1000;

async function runOnce(kind: Kind, o: { agentPath: string; seconds: number; hitRate: number; floodQps: number; crossQps: number; dir: string; missFile: string }): Promise<Trace> {
  const prefix = path.join(o.dir, kind);
  process.env['NODELOCAL_HEAP_TRACE'] = prefix;
  const sim = await startSim(HOST);
  try {
    const agent = await startBenchAgent({ agentPath: o.agentPath, sim, host: HOST, io: 'batched', workers: 1, workDir: o.dir, name: kind, readyTimeoutMs: 60_000 });
    try {
      const [worker] = await findWorkerThreads(agent.pid, 1, 10_000);
      pinProcess(agent.pid, '0');
      if (worker !== undefined) pinThread(worker.tid, '1');
      const probe = { host: HOST, port: agent.port, names: NAMES, cpu: '0', rtPriority: 0 };
      await runProbe({ ...probe, mode: 'warm' });
      if (kind === 'hits') await runProbe({ ...probe, mode: 'probe', rate: o.hitRate, seconds: o.seconds });
      const qps = kind === 'flood' ? o.floodQps : kind === 'cross' ? o.crossQps : 0;
      if (qps > 0) await runDnsperfRate({ host: HOST, port: agent.port, dataFile: o.missFile, seconds: o.seconds, outstanding: 10_000, qps, cpu: '0' });
    } finally {
      await stopStarted(agent.target);
    }
  } finally {
    await stopStarted(sim);
  }
  const file = readdirSync(o.dir).find((f) => f.startsWith(`${kind}.`) && f.endsWith('.json'));
  if (file === undefined) throw new Error(`${kind}: the worker wrote no trace (did it leave its loop?)`);
  return JSON.parse(readFileSync(path.join(o.dir, file), 'utf8')) as Trace;
}

const scavenges = (t: Trace): number => t.gcs['Scavenge']?.count ?? 0;
const counter = (t: Trace, k: string): number => t.counters[k] ?? 0;

/** What a run added to the base run: datagrams received, misses that crossed, misses shed, bytes, scavenges. */
function added(t: Trace, base: Trace): { datagrams: number; crossed: number; shed: number; bytes: number; scavenges: number } {
  // Misses that crossed to the main thread: forwarded, less those the worker refused at its own limit.
  const crossing = (x: Trace): number => counter(x, 'misses') - counter(x, 'overloaded');
  return {
    datagrams: counter(t, 'datagrams') - counter(base, 'datagrams'),
    crossed: crossing(t) - crossing(base),
    shed: counter(t, 'shedBusy') - counter(base, 'shedBusy'),
    bytes: t.allocatedBytes - base.allocatedBytes,
    scavenges: scavenges(t) - scavenges(base),
  };
}

function report(base: Trace, hits: Trace, cross: Trace, flood: Trace, seconds: number): string {
  const h = added(hits, base);
  const c = added(cross, base);
  const f = added(flood, base);
  const perCross = c.bytes / Math.max(c.crossed, 1);
  const lines = [
    `hits:  ${h.datagrams} received, ${(h.bytes / h.datagrams).toFixed(1)} bytes each, ${h.scavenges} scavenges`,
    `cross: ${c.datagrams} received, ${c.crossed} crossed, ${c.shed} shed: ${perCross.toFixed(0)} bytes per crossed miss, ` +
      `${c.scavenges} scavenges (${((c.scavenges / Math.max(c.crossed, 1)) * 1e4).toFixed(1)} per 10k crossed)`,
    `flood: ${f.datagrams} received, ${f.crossed} crossed, ${f.shed} shed (upstream_busy), ${counter(flood, 'overloaded')} refused (worker_limit)`,
    `       ${(f.bytes / f.datagrams).toFixed(0)} bytes per datagram; less the crossed at ${perCross.toFixed(0)} each: ` +
      `${((f.bytes - f.crossed * perCross) / Math.max(f.shed, 1)).toFixed(0)} bytes per shed miss`,
    `       ${f.scavenges} scavenges (${(f.scavenges / seconds).toFixed(1)}/s, ${((f.scavenges / f.datagrams) * 1e4).toFixed(1)} per 10k datagrams), ` +
      `${(flood.gcs['MarkSweepCompact']?.count ?? 0) - (base.gcs['MarkSweepCompact']?.count ?? 0)} mark-sweeps`,
    '',
    'flood: top allocation sites (sampled bytes, flood run less base run)',
  ];
  const baseBy = new Map(base.sites.map((s) => [s.site, s.bytes]));
  const sites = flood.sites.map((s) => ({ ...s, bytes: s.bytes - (baseBy.get(s.site) ?? 0) })).sort((a, b) => b.bytes - a.bytes).slice(0, 20);
  for (const s of sites) lines.push(`  ${(s.bytes / f.datagrams).toFixed(1).padStart(7)} B/datagram  ${s.site}   via ${s.callers}`);
  return lines.join('\n');
}

function parseArgs(argv: readonly string[]): { agentPath: string; seconds: number; hitRate: number; floodQps: number; crossQps: number } {
  const o = { agentPath: path.join(repoRoot(), 'dist', 'src', 'main.js'), seconds: 8, hitRate: 2000, floodQps: 20_000, crossQps: 3000 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${argv[i]} needs a value`);
    if (argv[i] === '--agent') o.agentPath = path.resolve(v);
    else if (argv[i] === '--seconds') o.seconds = Number(v);
    else if (argv[i] === '--hit-rate') o.hitRate = Number(v);
    else if (argv[i] === '--flood-qps') o.floodQps = Number(v);
    else if (argv[i] === '--cross-qps') o.crossQps = Number(v);
    else throw new Error(`unknown option ${argv[i]} (--agent PATH --seconds N --hit-rate N --cross-qps N --flood-qps N)`);
  }
  return o;
}

const o = parseArgs(process.argv.slice(2));
const dir = mkdtempSync(path.join(os.tmpdir(), 'worker-garbage-'));
const missFile = path.join(dir, 'misses.txt');
writeMissFile(missFile, Math.ceil(o.floodQps * (o.seconds + 5)), 'both');
try {
  const run = { ...o, dir, missFile };
  const base = await runOnce('base', run);
  const hits = await runOnce('hits', run);
  const cross = await runOnce('cross', run);
  const flood = await runOnce('flood', run);
  process.stdout.write(`${report(base, hits, cross, flood, o.seconds)}\n(traces in ${dir})\n`);
} finally {
  for (const r of running) r.killNow();
  rmSync(missFile, { force: true });
}
