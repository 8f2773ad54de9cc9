/**
 * Human-readable output: the terminal table, results.md, the compact summary
 * for the main README, and writing results.json and the plot.
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fmtQps, fmtUs, summaryRate } from './format.js';
import { renderPlot } from './plot.js';
import type { BenchResults, Percentiles, PhaseRecord, RunRecord } from './results.js';

export interface WrittenReports {
  readonly dir: string;
  readonly json: string;
  readonly markdown: string;
  readonly plot: string;
  readonly summary: string;
  /** Copy in <out>/summary/ (full runs only). */
  readonly publishedSummary: string | null;
}

function fmtMb(b: number | null | undefined): string {
  return b === null || b === undefined ? '-' : `${(b / 1048576).toFixed(0)} MB`;
}

function fmtCpu(r: RunRecord): string {
  const v = r.targetUsage.cpuUsPerQuery;
  return v === null ? '-' : v.toFixed(1);
}

function load(r: RunRecord): string {
  return r.mode === 'open' ? fmtQps(r.offeredQps) : `c=${r.concurrency}${r.driver === 'dnsperf' ? ' dnsperf' : ''}`;
}

/** Wrong answers of a run; dnsperf's are wrong rcodes only (it checks no records). */
export function wrongCell(r: RunRecord): string {
  return r.checked ? String(r.queries.wrong) : `${r.queries.wrong} (rcodes)`;
}

function flags(r: RunRecord): string {
  return [r.saturated ? 'saturated' : '', r.generatorBound ? 'generator-bound' : ''].filter((s) => s !== '').join(', ');
}

function table(head: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

/** Aligned plain-text columns. */
function aligned(head: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function phaseName(p: PhaseRecord): string {
  return `${p.index + 1} ${p.state} ${p.durationS}s`;
}

const PHASE_HEAD = ['target', 'phase', 'lookups', 'ok', 'servfail', 'wrong', 'timeouts', 'late', 'from view', 'p50', 'p99', 'max', 'kube-dns got/answered', 'change lag'];

/** One row per phase of every fallback run. */
export function phaseRows(res: BenchResults): string[][] {
  const rows: string[][] = [];
  for (const r of res.runs) {
    for (const p of r.fallback?.phases ?? []) {
      const q = p.queries;
      rows.push([
        r.target, phaseName(p), String(p.lookups.started), String(q.ok), String(q.servfail), String(q.wrong), String(q.timeouts), String(q.late),
        p.fromView === null ? '-' : String(p.fromView), fmtUs(p.latencyUs.p50), fmtUs(p.latencyUs.p99), fmtUs(p.latencyUs.max),
        p.upstream === null ? '-' : `${p.upstream.clusterQueries} / ${p.upstream.clusterAnswered}`,
        p.changeLagMs === null ? '-' : `${p.changeLagMs} ms`,
      ]);
    }
  }
  return rows;
}

function phaseClassRows(res: BenchResults): string[][] {
  const rows: string[][] = [];
  for (const r of res.runs) {
    for (const p of r.fallback?.phases ?? []) {
      for (const [c, x] of Object.entries(p.classes)) {
        rows.push([
          r.target, phaseName(p), c, String(x.lookups.started), String(x.queries.ok), String(x.queries.servfail), String(x.queries.wrong), String(x.queries.timeouts),
          x.fromView === null ? '-' : String(x.fromView), fmtUs(x.latencyUs.p50), fmtUs(x.latencyUs.p99), fmtUs(x.latencyUs.max),
        ]);
      }
    }
  }
  return rows;
}

const PODMIX_HEAD = ['target', 'load', 'lookups', 'kube-dns queries', 'kube-dns q/lookup', 'vs agent', 'host resolvers q/lookup', 'p50', 'p99'];

/** Queries that reached the simulated kube-dns per podmix lookup, and the saving of each target against the plain agent at the same load. */
export function podmixUpstreamRows(res: BenchResults): string[][] {
  const rows: string[][] = [];
  const perLookup = (r: RunRecord): number | null => (r.upstreamQueries === null || r.lookups.started === 0 ? null : r.upstreamQueries.cluster / r.lookups.started);
  for (const r of res.runs) {
    if (r.workload !== 'podmix' || r.upstreamQueries === null) continue;
    const mine = perLookup(r);
    const base = res.runs.find((x) => x.workload === 'podmix' && x.target === 'agent' && x.mode === r.mode && x.offeredQps === r.offeredQps && x.concurrency === r.concurrency && x.driver === r.driver);
    const b = base === undefined || base === r ? null : perLookup(base);
    rows.push([
      r.target, load(r), String(r.lookups.started), String(r.upstreamQueries.cluster), mine === null ? '-' : mine.toFixed(3),
      mine === null || b === null || b === 0 ? '-' : `${mine <= b ? '−' : '+'}${(Math.abs(1 - mine / b) * 100).toFixed(0)}%`,
      r.lookups.started === 0 ? '-' : (r.upstreamQueries.external / r.lookups.started).toFixed(3),
      r.latencyUs === null ? '-' : fmtUs(r.latencyUs.p50), fmtUs(r.latencyUs?.p99),
    ]);
  }
  return rows;
}

/** The fallback phases and the podmix upstream traffic, for the terminal (empty when neither ran). */
export function terminalExtras(res: BenchResults): string {
  const out: string[] = [];
  const phases = phaseRows(res);
  if (phases.length > 0) out.push('fallback, per phase (kube-dns up/down):', aligned(PHASE_HEAD, phases));
  const pm = podmixUpstreamRows(res);
  if (pm.length > 0 && res.runs.some((r) => r.workload === 'podmix' && r.targetKind === 'agent')) {
    if (out.length > 0) out.push('');
    out.push('podmix, queries that reached the simulated kube-dns:', aligned(PODMIX_HEAD, pm));
  }
  return out.join('\n');
}

/** Aligned plain-text table for the terminal. */
export function terminalTable(res: BenchResults): string {
  const head = ['workload', 'target', 'load', 'answered/s', 'p50', 'p99', 'p99.9', 'max', 'timeouts', 'wrong', 'upstream', 'cpu us/q', 'rss', 'gen', 'flags'];
  const rows = res.runs.map((r) => {
    const l: Percentiles | null = r.latencyUs;
    return [
      r.workload, r.target, load(r), fmtQps(r.throughputQps),
      l === null ? (r.dnsperf === null ? '-' : `avg ${fmtUs(r.dnsperf.avgLatencyUs)}`) : fmtUs(l.p50), fmtUs(l?.p99), fmtUs(l?.p999), fmtUs(l?.max ?? r.dnsperf?.maxLatencyUs),
      String(r.queries.timeouts), wrongCell(r),
      r.upstreamQueries === null ? '-' : String(r.upstreamQueries.cluster + r.upstreamQueries.external),
      fmtCpu(r), fmtMb(r.targetUsage.rssBytes), `${(r.generator.cores * 100).toFixed(0)}%`, flags(r),
    ];
  });
  return aligned(head, rows);
}

function workloads(res: BenchResults): string[] {
  return [...new Set(res.runs.map((r) => r.workload))];
}

function envLine(res: BenchResults): string {
  const e = res.environment;
  return `${e.cpuModel}, ${e.cores} cores${e.cpusAllowed === null ? '' : ` (allowed ${e.cpusAllowed})`}, Node ${e.node}, Linux ${e.kernel}`;
}

function ratio(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined || b === 0) return '-';
  return `${(a / b).toFixed(2)}x`;
}

export function markdownReport(res: BenchResults, plotFile: string): string {
  const o = res.options;
  const out: string[] = [];
  out.push(`# DNS cache benchmark, ${res.startedAt}${res.quick ? ' (quick smoke run: numbers are not meaningful)' : ''}${res.aborted ? ' (INTERRUPTED)' : ''}`, '');
  out.push(`- Command: \`${res.command.line}\``);
  out.push(`- Machine: ${envLine(res)}`);
  out.push(`- Generator: pid ${res.generator.pid}, ${res.generator.sockets} sockets per destination, timeout ${res.generator.timeoutMs} ms${res.generator.pinnedTo === null ? ', not pinned' : `, pinned to CPU ${res.generator.pinnedTo}`}`);
  const s = res.simulator;
  out.push(`- Simulator: pid ${s.pid}${s.pinnedTo === null ? '' : ` (CPU ${s.pinnedTo})`}; cluster zone on ${s.cluster} (+${s.clusterFaults.latencyMs} ms ± ${s.clusterFaults.jitterMs} ms, loss ${s.clusterFaults.lossRate}); external on ${s.external} (+${s.externalFaults.latencyMs} ms ± ${s.externalFaults.jitterMs} ms, loss ${s.externalFaults.lossRate}); ${s.zones.namespaces} namespaces × ${s.zones.servicesPerNamespace} services; TTLs ${s.zones.clusterTtl}/${s.zones.externalTtl}/${s.zones.negativeTtl} s`);
  out.push(`- Open-loop runs: ${o.durationMs / 1000} s each; max-throughput runs: ${o.max ? `${o.maxDurationMs / 1000} s, ${o.concurrency} outstanding lookups, driver ${o.driver}` : 'off'}`);
  out.push('', table(['target', 'kind', 'address', 'pid', 'CPU', 'peak RSS', 'command'], res.targets.map((t) => [t.name, t.kind, t.address, t.pid === null ? '-' : String(t.pid), t.pinnedTo ?? '-', fmtMb(t.peakRssBytes), t.command === null ? '-' : `\`${t.command}\``])));
  out.push('', `![latency plot](${plotFile})`, '');
  out.push('Latency is per lookup, measured from the time the schedule intended to send it (open loop), in µs or ms. A podmix lookup is the whole search-list expansion a pod sends for one getaddrinfo call. "service" latency is per query from its actual send; "lag" is how late the generator sent against its schedule. "upstream" counts queries that reached the simulator during the run: what the cache did not absorb. CPU is the target\'s own user+system time per answered query.', '');

  for (const w of workloads(res)) {
    out.push(`## ${w}`, '');
    const open = res.runs.filter((r) => r.workload === w && r.mode === 'open');
    if (open.length > 0) {
      out.push('Open loop:', '');
      out.push(table(
        ['target', 'offered q/s', 'sent q/s', 'answered q/s', 'p50', 'p90', 'p99', 'p99.9', 'max', 'service p50 / p99', 'lag p99', 'timeouts', 'wrong', 'upstream', 'CPU µs/q', 'RSS', 'gen CPU', 'flags'],
        open.map((r) => [
          r.target, fmtQps(r.offeredQps), fmtQps(r.sentQps), fmtQps(r.throughputQps),
          fmtUs(r.latencyUs?.p50), fmtUs(r.latencyUs?.p90), fmtUs(r.latencyUs?.p99), fmtUs(r.latencyUs?.p999), fmtUs(r.latencyUs?.max),
          `${fmtUs(r.serviceLatencyUs?.p50)} / ${fmtUs(r.serviceLatencyUs?.p99)}`, fmtUs(r.sendLagUs?.p99),
          String(r.queries.timeouts), String(r.queries.wrong),
          r.upstreamQueries === null ? '-' : `${r.upstreamQueries.cluster} + ${r.upstreamQueries.external}`,
          fmtCpu(r), fmtMb(r.targetUsage.rssBytes), `${(r.generator.cores * 100).toFixed(0)}%`, flags(r),
        ]),
      ), '');
      const classRows: string[][] = [];
      for (const r of open) for (const [c, p] of Object.entries(r.classes)) classRows.push([r.target, fmtQps(r.offeredQps), c, String(p.count), fmtUs(p.p50), fmtUs(p.p99), fmtUs(p.p999)]);
      if (classRows.length > 0) out.push('By class:', '', table(['target', 'offered q/s', 'class', 'lookups', 'p50', 'p99', 'p99.9'], classRows), '');
    }
    const fb = res.runs.filter((r) => r.workload === w && r.fallback !== null);
    const f = fb[0]?.fallback;
    if (f !== undefined && f !== null) {
      out.push(`Per phase: kube-dns ${f.outage === 'stop' ? 'stopped (not listening: connections refused)' : 'black-holed (listening, answering nothing)'} in the "down" phases; phases ${f.phasesS.join(', ')} s; client timeout ${f.clientTimeoutMs} ms; ${(f.coldShare * 100).toFixed(0)}% of lookups ask a never-asked name ("cold", ${f.coldLookups} of ${f.coldPool} available), the rest warmed Zipf-popular services ("hot"). A lookup is A+AAAA and belongs to the phase its intended start falls in. "ok" counts right answers (checked like every workload), "from view" those with a TTL ≤ ${f.viewTtlMax ?? '-'} s (the agent's --local-ttl: kube-dns's answers carry ${res.simulator.zones.clusterTtl} s). "kube-dns got / answered" is what the simulated kube-dns counted between the state changes; "change lag" how long after the phase's scheduled start the simulator had changed state.`, '');
      out.push(table(PHASE_HEAD, phaseRows(res).filter((row) => fb.some((r) => r.target === row[0]))), '');
      out.push('By class:', '', table(['target', 'phase', 'class', 'lookups', 'ok', 'servfail', 'wrong', 'timeouts', 'from view', 'p50', 'p99', 'max'], phaseClassRows(res)), '');
    }
    if (w === 'podmix') {
      const pm = podmixUpstreamRows(res);
      if (pm.length > 0) {
        out.push('Queries that reached the simulated kube-dns per lookup (a lookup is the whole ndots:5 expansion); "vs agent" compares with the plain agent at the same load (agent+localneg answers search-path junk from its view with `--local-negative`):', '');
        out.push(table(PODMIX_HEAD, pm), '');
      }
    }
    const closed = res.runs.filter((r) => r.workload === w && r.mode === 'closed');
    if (closed.length > 0) {
      out.push('Max throughput (closed loop; latency from the actual send, so queuing is understated by design):', '');
      out.push(table(
        ['target', 'load', 'answered q/s', 'p50', 'p99', 'p99.9', 'timeouts', 'wrong', 'upstream', 'CPU µs/q', 'CPU s / 1k q', 'RSS', 'gen CPU', 'flags'],
        closed.map((r) => [
          r.target, load(r), fmtQps(r.throughputQps),
          r.latencyUs === null ? `avg ${fmtUs(r.dnsperf?.avgLatencyUs)}` : fmtUs(r.latencyUs.p50), fmtUs(r.latencyUs?.p99), fmtUs(r.latencyUs?.p999),
          String(r.queries.timeouts), wrongCell(r),
          r.upstreamQueries === null ? '-' : `${r.upstreamQueries.cluster} + ${r.upstreamQueries.external}`,
          fmtCpu(r), r.targetUsage.cpuSecondsPer1kQueries === null ? '-' : r.targetUsage.cpuSecondsPer1kQueries.toFixed(4),
          fmtMb(r.targetUsage.rssBytes), `${(r.generator.cores * 100).toFixed(0)}%`, flags(r),
        ]),
      ), '');
    }
  }

  const cmp = comparisons(res);
  if (cmp.length > 0) {
    out.push('## What the cache buys (each target vs direct, same rate)', '');
    out.push(table(['workload', 'offered q/s', 'target', 'p50 vs direct', 'p99 vs direct', 'p99.9 vs direct', 'upstream queries vs direct'], cmp), '');
  }
  if (res.warnings.length > 0) {
    out.push('## Warnings', '');
    for (const w of res.warnings) out.push(`- ${w}`);
    out.push('');
  }
  out.push('## Caveats', '');
  out.push('- One machine, loopback only: no NIC, no conntrack, no pod network. Generator, simulator and targets share the CPUs; compare targets within one run, not absolute numbers across runs or machines.');
  out.push('- If the generator shows ≥ 90% CPU or is flagged generator-bound, the numbers describe the generator, not the target. Pin with `--pin` (taskset) or use `--driver dnsperf` for max throughput.');
  out.push('- The generator wakes every 1 ms (and on every answer); at low rates a lookup may start up to ~1 ms after its intended time, and that lag is part of the open-loop latency (see "lag p99").');
  return out.join('\n') + '\n';
}

function comparisons(res: BenchResults): string[][] {
  const rows: string[][] = [];
  for (const r of res.runs) {
    if (r.mode !== 'open' || r.targetKind === 'direct') continue;
    const d = res.runs.find((x) => x.mode === 'open' && x.targetKind === 'direct' && x.workload === r.workload && x.offeredQps === r.offeredQps);
    if (d === undefined) continue;
    const up = (x: RunRecord): number | null => (x.upstreamQueries === null ? null : x.upstreamQueries.cluster + x.upstreamQueries.external);
    rows.push([r.workload, fmtQps(r.offeredQps), r.target, ratio(r.latencyUs?.p50, d.latencyUs?.p50), ratio(r.latencyUs?.p99, d.latencyUs?.p99), ratio(r.latencyUs?.p999, d.latencyUs?.p999), ratio(up(r), up(d))]);
  }
  return rows;
}

/** Compact markdown for the main README: one row per workload and target. */
export function summaryMarkdown(res: BenchResults, plotFile: string | null): string {
  const out: string[] = [];
  out.push(`Measured ${res.startedAt.slice(0, 10)} on ${envLine(res)}; loopback, one machine.`);
  out.push(`Command: \`${res.command.line}\``, '');
  const rows: string[][] = [];
  for (const w of workloads(res)) {
    const rate = summaryRate(res, w);
    const targets = [...new Set(res.runs.filter((r) => r.workload === w).map((r) => r.target))];
    for (const t of targets) {
      const o = res.runs.find((r) => r.workload === w && r.target === t && r.mode === 'open' && r.offeredQps === rate);
      const c = res.runs.find((r) => r.workload === w && r.target === t && r.mode === 'closed');
      rows.push([
        w, t, rate === null ? '-' : fmtQps(rate),
        fmtUs(o?.latencyUs?.p50), fmtUs(o?.latencyUs?.p99), fmtUs(o?.latencyUs?.p999),
        c === undefined ? '-' : `${fmtQps(c.throughputQps)}${c.generatorBound ? '*' : ''}`,
        c === undefined || c.targetUsage.cpuUsPerQuery === null ? (o === undefined ? '-' : fmtCpu(o)) : fmtCpu(c),
      ]);
    }
  }
  out.push(table(['workload', 'target', 'at q/s', 'p50', 'p99', 'p99.9', 'max q/s', 'CPU µs/query'], rows));
  out.push('', 'Latency is per lookup from its intended send time (open loop; podmix = the whole ndots:5 expansion). "max q/s" is the closed-loop throughput' + (res.runs.some((r) => r.generatorBound && r.mode === 'closed') ? ' (* = the generator was the bottleneck)' : '') + '; CPU is the target\'s own, from /proc. "direct" is the upstream simulator without a cache in front.');
  const fbRows: string[][] = [];
  for (const r of res.runs) {
    for (const p of r.fallback?.phases ?? []) {
      fbRows.push([r.target, phaseName(p), `${p.queries.ok} / ${p.queries.sent}`, String(p.queries.servfail + p.queries.wrong), String(p.queries.timeouts), p.fromView === null ? '-' : String(p.fromView), fmtUs(p.latencyUs.p50), fmtUs(p.latencyUs.p99), fmtUs(p.latencyUs.max)]);
    }
  }
  const fb = res.runs.find((r) => r.fallback !== null)?.fallback;
  if (fb !== undefined && fb !== null) {
    out.push('', `Fallback: kube-dns ${fb.outage === 'stop' ? 'stopped' : 'black-holed'} in the down phases, at ${fmtQps(res.options.fallbackRate)} q/s (A+AAAA lookups, ${(fb.coldShare * 100).toFixed(0)}% of never-asked names); "from view" = right answers carrying the agent's view TTL.`, '');
    out.push(table(['target', 'phase', 'right / sent', 'wrong or SERVFAIL', 'timeouts', 'from view', 'p50', 'p99', 'max'], fbRows));
  }
  const pm = podmixUpstreamRows(res).filter((row) => !row[1]?.startsWith('c='));
  if (pm.length > 0 && res.runs.some((r) => r.workload === 'podmix' && r.target === 'agent+localneg')) {
    out.push('', 'podmix: queries that reached the simulated kube-dns per lookup (open loop):', '');
    out.push(table(PODMIX_HEAD, pm));
  }
  if (plotFile !== null) out.push('', `![latency by workload and target](${plotFile})`);
  return out.join('\n') + '\n';
}

export function writeReports(dir: string, res: BenchResults, summaryDir: string | null): WrittenReports {
  mkdirSync(dir, { recursive: true });
  const json = path.join(dir, 'results.json');
  const markdown = path.join(dir, 'results.md');
  const plot = path.join(dir, 'plot.svg');
  const summary = path.join(dir, 'summary.md');
  writeFileSync(json, JSON.stringify(res, null, 2) + '\n');
  writeFileSync(plot, renderPlot(res));
  writeFileSync(markdown, markdownReport(res, 'plot.svg'));
  writeFileSync(summary, summaryMarkdown(res, 'plot.svg'));
  let publishedSummary: string | null = null;
  if (summaryDir !== null && !res.aborted) {
    mkdirSync(summaryDir, { recursive: true });
    publishedSummary = path.join(summaryDir, 'latest.md');
    copyFileSync(plot, path.join(summaryDir, 'latest.svg'));
    writeFileSync(publishedSummary, summaryMarkdown(res, 'latest.svg'));
  }
  return { dir, json, markdown, plot, summary, publishedSummary };
}
